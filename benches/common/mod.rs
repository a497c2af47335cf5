//! Measuring helpers shared by the benchmark programs (`bench`, `sched_bench`, `store_bench`):
//! each includes this module with `mod common;`. Not an example itself (no `main.rs`).

/// The allocator `runner` itself uses (src/main.rs), so the programs' figures are the binary's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// Nearest-rank percentile.
pub(crate) fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// `n` × (4 KiB write at offset 0 + fdatasync), in µs; at most 10 s.
pub(crate) fn fsync_probe(path: &Path, n: usize) -> Result<Vec<f64>> {
    let mut f = std::fs::File::create(path).context("creating the fsync probe file")?;
    let block = [0x5au8; 4096];
    let mut lat = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(10);
    for _ in 0..n {
        if Instant::now() > deadline {
            break;
        }
        let t = Instant::now();
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&block)?;
        f.sync_data()?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(lat)
}

/// Every thread of this process: (name, on-CPU nanoseconds from `/proc/self/task/*/schedstat`).
/// Linux cuts thread names to 15 bytes.
pub(crate) fn thread_cpu() -> Vec<(String, u64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .map(|t| {
            let p = t.path();
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            let ns = std::fs::read_to_string(p.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
                .unwrap_or(0);
            (comm.trim().to_string(), ns)
        })
        .collect()
}

/// The bench's own arguments: without the program name, and without the `--bench` that
/// `cargo bench` hands every benchmark built with `harness = false`.
pub(crate) fn args() -> impl Iterator<Item = String> {
    std::env::args().skip(1).filter(|a| a != "--bench")
}
