//! The store alone: the state changes of a 3-step HTTP run (start, then three attempt results
//! with their records), applied straight to `Store` with no HTTP, to see what the writer costs.
//!
//! ```text
//! cargo bench --bench store_bench                 # 300 runs one at a time, then 2,000 with 16 in flight
//! cargo bench --bench store_bench -- --runs 200  # fewer runs (e.g. under callgrind)
//! valgrind --tool=callgrind $(cargo bench --bench store_bench --no-run 2>&1 | grep -o 'target/[^)]*') --runs 200 --seq-only
//! ```
//!
//! Prints transactions per second and the writer thread's CPU per state change (from
//! `/proc/self/task/*/schedstat`). This is a profiling aid, not the benchmark of record
//! (`benches/bench.rs` is): nothing here is compared with a floor.

// Each program uses only some of the shared helpers.
#[allow(dead_code)]
mod common;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use runner::engine::machine::{Event, NewRun};
use runner::store::{AttemptRecord, Store, Version};
use serde_json::json;
use std::time::Instant;

fn version() -> Result<Version> {
    let mut yaml = String::from("name: bench\nsteps:\n");
    for id in ["one", "two", "three"] {
        yaml.push_str(&format!(
            "  - id: {id}\n    http:\n      url: http://127.0.0.1:9/{id}\n      body: {{ step: {id} }}\n"
        ));
    }
    let wf = runner::workflow::check_file("bench.yaml", &yaml)
        .map_err(|d| anyhow::anyhow!("the workflow does not check: {d:?}"))?;
    Ok(Version::new("bench.yaml", &yaml, wf))
}

/// On-CPU time of the store's writer thread (`runner-db-writer`, cut to 15 bytes by Linux).
fn writer_cpu_ns() -> u64 {
    common::thread_cpu()
        .into_iter()
        .filter(|(comm, _)| comm.starts_with("runner-db-writ"))
        .map(|(_, ns)| ns)
        .sum()
}

async fn one_run(store: &Store, version: &Version) -> Result<()> {
    let new = NewRun {
        id: runner::ops::start::new_run_id(),
        version: version.hash.clone(),
        trigger: runner::engine::machine::Trigger::Api,
        input: json!({}),
        scheduled_for: None,
        schedule_id: None,
    };
    let request = runner::store::NewRunRequest {
        version: version.clone(),
        new,
        idempotency_key: None,
        slot: None,
        start: true,
        concurrency_key: None,
        parent: None,
    };
    let applied = store.start_run(request, Utc::now()).await?;
    let run_id = applied.run.id.clone();
    let mut effect = applied.effects.first().and_then(|(id, _)| *id);
    for step in ["one", "two", "three"] {
        let now = Utc::now();
        let record = AttemptRecord {
            step: step.into(),
            attempt: 1,
            item: None,
            dedup_id: None,
            started_at: Some(now),
            finished_at: Some(now),
            status: Some(200),
            outcome: runner::store::AttemptResult::Succeeded,
            error: None,
            request: Some(
                json!({"method": "POST", "url": format!("http://127.0.0.1:9/{step}"), "headers": {"content-type": "application/json", "upstash-signature": "[redacted]"}, "body": {"step": step}}),
            ),
            response: Some(
                json!({"status": 200, "headers": {"content-type": "application/json"}, "body": {"ok": true}}),
            ),
        };
        let event = Event::AttemptSucceeded {
            step: step.into(),
            attempt: 1,
            output: json!({"status": 200, "body": {"ok": true}}),
            item: None,
        };
        let applied = store
            .apply(&run_id, event, Utc::now(), Some(record), effect)
            .await?;
        effect = applied.effects.iter().find_map(|(id, _)| *id);
    }
    let run = store.get_run(&run_id).await?.context("the run vanished")?;
    if run.status.as_str() != "succeeded" {
        bail!("run {run_id} ended {}", run.status.as_str());
    }
    Ok(())
}

/// Prints a phase's transactions per second and the writer's CPU per transaction (a run is
/// four: its start and three attempt results).
fn report(label: &str, runs: usize, cpu0: u64, t0: Instant) {
    let (cpu, secs) = (writer_cpu_ns() - cpu0, t0.elapsed().as_secs_f64());
    let txs = runs * 4;
    println!(
        "{label} {runs} runs, {:.0} tx/s, writer CPU {:.1} µs/tx",
        txs as f64 / secs,
        cpu as f64 / 1e3 / txs as f64
    );
}

fn main() -> Result<()> {
    let args: Vec<String> = common::args().collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(300), |n| n.parse::<usize>())
        .context("--runs takes a number")?;
    let seq_only = args.iter().any(|a| a == "--seq-only");
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("store-bench.db"))?;
    let version = version()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        for _ in 0..20 {
            one_run(&store, &version).await?;
        }
        let (cpu0, t0) = (writer_cpu_ns(), Instant::now());
        for _ in 0..runs {
            one_run(&store, &version).await?;
        }
        report("one at a time:", runs, cpu0, t0);
        if seq_only {
            return anyhow::Ok(());
        }
        let many = runs.max(16) * 16 / 3;
        let (cpu0, t0) = (writer_cpu_ns(), Instant::now());
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (store, version, next) = (store.clone(), version.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < many {
                    one_run(&store, &version).await?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        report("16 in flight: ", many, cpu0, t0);
        anyhow::Ok(())
    })
}
