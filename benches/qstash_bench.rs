//! What the QStash API costs: `POST /v2/publish/{url}` against `POST /api/v1/workflows/{name}/runs`
//! of a one-step workflow sending the same ~100-byte body to the same local endpoint, on the real
//! `runner serve` binary, with 16 clients each; phases alternate (runs, publish, runs, publish…)
//! and each pair's ratio is printed with their median (aim ≥ 0.8).
//!
//! cargo bench --bench qstash_bench                 # 2 pairs of 10 s phases, SQLite
//! cargo bench --bench qstash_bench -- --quick      # 2 pairs of 3 s phases
//! cargo bench --bench qstash_bench -- --pairs 3
//!
//! For each phase: requests accepted per second (201) over the phase, and deliveries per second
//! from the phase's start until the endpoint has received every accepted one. A program, not a
//! test: it fails only when something is wrong (a request refused, a delivery missing or extra).

#[allow(dead_code)]
mod common;

use anyhow::{Context, Result, bail};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CLIENTS: usize = 16;
const BODY: &str = r#"{"step":"bench","payload":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123"}"#;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> Result<()> {
    let mut quick = false;
    let mut pairs = 2;
    let mut args = common::args();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--pairs" => pairs = args.next().context("--pairs takes a number")?.parse()?,
            other => bail!("unknown argument `{other}`"),
        }
    }
    runner::install_crypto_provider();
    let phase = Duration::from_secs(if quick { 3 } else { 10 });
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "qstash_bench: {CLIENTS} clients, {pairs} pairs of {phase:?} phases; load {}",
        load.trim()
    );

    let (endpoint, count) = endpoint()?;
    let dir = tempfile::tempdir()?;
    let wf = dir.path().join("workflows");
    std::fs::create_dir_all(&wf)?;
    std::fs::write(
        wf.join("one.yaml"),
        format!(
            "name: one\non: {{ webhook: true }}\nsteps:\n  - id: post\n    http: {{ url: \"{endpoint}/run\", body: {BODY} }}\n"
        ),
    )?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&wf)
        .arg("--db")
        .arg(dir.path().join("runner.db"))
        .env(
            "RUNNER_SIGNING_KEY",
            "sig_bench_current_key_0123456789abcdef",
        )
        .env(
            "RUNNER_NEXT_SIGNING_KEY",
            "sig_bench_next_key_0123456789abcdef",
        )
        .env("RUNNER_LOG", "runner=warn")
        .env_remove("RUNNER_API_TOKEN")
        .env_remove("RUNNER_DB")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting runner serve")?;
    let stdout = child.stdout.take().context("stdout")?;
    let daemon = Daemon(child);
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(u) = l.strip_prefix("listening on ") {
                    break u.trim().to_string();
                }
            }
            _ => bail!("runner serve stopped before listening"),
        }
    };
    std::thread::spawn(move || for _ in lines {});

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-clients")
        .enable_all()
        .build()?;
    let runs_url = format!("{base}/api/v1/workflows/one/runs");
    let publish_url = format!("{base}/v2/publish/{endpoint}/message");
    let mut ratios = Vec::new();
    let mut publish_rates = Vec::new();
    for pair in 1..=pairs {
        let runs = rt.block_on(phase_of(&runs_url, "{}", phase, &count))?;
        let publish = rt.block_on(phase_of(&publish_url, BODY, phase, &count))?;
        let ratio = publish.accepted_per_s / runs.accepted_per_s;
        println!(
            "pair {pair}: runs {:.0}/s accepted, {:.0}/s delivered | publish {:.0}/s accepted, {:.0}/s delivered | publish/runs {ratio:.2}",
            runs.accepted_per_s,
            runs.delivered_per_s,
            publish.accepted_per_s,
            publish.delivered_per_s
        );
        ratios.push(ratio);
        publish_rates.push(publish.accepted_per_s);
    }
    let median = common::percentile(&ratios, 50.0);
    println!(
        "publish/runs median {median:.2} (aim >= 0.8: {}); publish median {:.0}/s",
        if median >= 0.8 { "met" } else { "not met" },
        common::percentile(&publish_rates, 50.0)
    );
    drop(daemon);
    Ok(())
}

struct Phase {
    accepted_per_s: f64,
    delivered_per_s: f64,
}

/// 16 clients POST `body` to `url` for `length`; then waits (60 s at most) until the endpoint
/// has every delivery.
async fn phase_of(url: &str, body: &str, length: Duration, count: &AtomicU64) -> Result<Phase> {
    let before = count.load(Ordering::Relaxed);
    let started = Instant::now();
    let deadline = started + length;
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (url, body) = (url.to_string(), body.to_string());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                if r.status() != 201 {
                    bail!("{url} answered {}: {}", r.status(), r.text().await?);
                }
                n += 1;
            }
            Ok::<u64, anyhow::Error>(n)
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await??;
    }
    let sent = started.elapsed();
    let wait_until = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::Relaxed) - before < accepted {
        if Instant::now() > wait_until {
            bail!(
                "{} of {accepted} deliveries after 60 s",
                count.load(Ordering::Relaxed) - before
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivered = started.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = count.load(Ordering::Relaxed) - before;
    if got != accepted {
        bail!("{got} deliveries for {accepted} accepted requests");
    }
    Ok(Phase {
        accepted_per_s: accepted as f64 / sent.as_secs_f64(),
        delivered_per_s: accepted as f64 / delivered.as_secs_f64(),
    })
}

/// A local endpoint answering every POST with 200 on its own runtime, counting them.
fn endpoint() -> Result<(String, Arc<AtomicU64>)> {
    let count = Arc::new(AtomicU64::new(0));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-endpoint")
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/{*path}",
            axum::routing::post(
                |axum::extract::State(c): axum::extract::State<Arc<AtomicU64>>| async move {
                    c.fetch_add(1, Ordering::Relaxed);
                    axum::Json(json!({"ok": true}))
                },
            ),
        )
        .with_state(count.clone());
    std::thread::spawn(move || {
        rt.block_on(async move {
            let _ = axum::serve(listener, app).await;
        })
    });
    Ok((format!("http://{addr}"), count))
}
