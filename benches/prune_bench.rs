//! What deleting old runs costs the runs going on: sequential one-step runs' latency (start to
//! finished, p50 and p99) while `ops::prune` deletes a large backlog of finished runs, against the
//! same runs with nothing being deleted, alternating (quiet, pruning, quiet, pruning…); each
//! pair's p99 ratio and their median (aim ≤ 2). SQLite in a temporary folder.
//!
//! cargo bench --bench prune_bench                    # 1,000,000 finished runs, 3 pairs of 10 s
//! cargo bench --bench prune_bench -- --runs 200000   # a smaller backlog
//! cargo bench --bench prune_bench -- --quick         # 100,000 runs, 2 pairs of 4 s
//!
//! The backlog is copies of one real finished run (its `runs`, `events` and `attempts` rows),
//! inserted with SQL, finished 60 days ago, so every deleted run is the size a real one is. Also
//! printed: runs deleted per second while pruning, and each batch's transaction time (p50, p99,
//! max): how long the writer is held. A program, not a test: it fails only when something is
//! wrong (a run not succeeding, a backlog run left over).

#[allow(dead_code)]
mod common;

use anyhow::{Context, Result, anyhow, bail};
use runner::engine::machine::{RunStatus, Trigger};
use runner::runtime::Executor;
use runner::sign::Keys;
use runner::store::{PruneQuery, Store, Version};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn main() -> Result<()> {
    let mut backlog: u64 = 1_000_000;
    let mut pairs = 3;
    let mut phase = Duration::from_secs(10);
    let mut args = common::args();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => backlog = args.next().context("--runs takes a number")?.parse()?,
            "--quick" => {
                backlog = 100_000;
                pairs = 2;
                phase = Duration::from_secs(4);
            }
            other => bail!("unknown argument `{other}`"),
        }
    }
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("prune.db");
    let endpoint = endpoint()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        runner::install_crypto_provider();
        let store = Store::open(&db)?;
        let keys = Keys {
            current: runner::sign::key_from_random(rand::random()),
            next: runner::sign::key_from_random(rand::random()),
        };
        let exec = runner::testing::executor(store, keys, dir.path().join("outbox"));
        tokio::spawn(exec.clone().timer_loop());
        let yaml = format!(
            "name: one\nsteps:\n  - id: post\n    http: {{ url: \"{endpoint}/x\", body: {{ payload: \"0123456789abcdef0123456789abcdef0123456789abcdef\" }} }}\n"
        );
        let wf = runner::workflow::check_file("one.yaml", &yaml).map_err(|d| anyhow!("{d:?}"))?;
        let version = Version::new("one.yaml", &yaml, wf);
        let model = one_run(&exec, &version).await?;

        let t = Instant::now();
        fill(&db, &model, backlog)?;
        println!(
            "prune_bench: {backlog} finished runs copied from {model} in {:.1} s; db {} MB; load {}",
            t.elapsed().as_secs_f64(),
            std::fs::metadata(&db).map(|m| m.len() / 1_000_000).unwrap_or(0),
            std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
        );
        // Warm-up.
        latencies(&exec, &version, Duration::from_secs(1)).await?;

        let query = PruneQuery {
            finished_before: Some(chrono::Utc::now() - chrono::Duration::days(30)),
            ..PruneQuery::default()
        };
        let deleted = Arc::new(AtomicU64::new(0));
        let mut batches = Vec::new();
        let mut ratios = Vec::new();
        let mut prune_secs = 0.0;
        for pair in 1..=pairs {
            let quiet = latencies(&exec, &version, phase).await?;
            let stop = Arc::new(AtomicBool::new(false));
            let pruner = {
                let (store, q, stop, deleted) =
                    (exec.store().clone(), query.clone(), stop.clone(), deleted.clone());
                tokio::spawn(async move { prune_until(&store, &q, &stop, &deleted).await })
            };
            let before = deleted.load(Ordering::Relaxed);
            let t = Instant::now();
            let busy = latencies(&exec, &version, phase).await?;
            stop.store(true, Ordering::Relaxed);
            let (times, finished) = pruner.await??;
            prune_secs += t.elapsed().as_secs_f64();
            batches.extend(times);
            let gone = deleted.load(Ordering::Relaxed) - before;
            let (q50, q99) = (p(&quiet, 50.0), p(&quiet, 99.0));
            let (b50, b99) = (p(&busy, 50.0), p(&busy, 99.0));
            println!(
                "pair {pair}: quiet p50 {q50:.2} ms p99 {q99:.2} ms ({} runs) | pruning p50 {b50:.2} ms p99 {b99:.2} ms ({} runs; {gone} deleted{}) | p99 ratio {:.2}",
                quiet.len(),
                busy.len(),
                if finished { ", backlog empty" } else { "" },
                b99 / q99
            );
            ratios.push(b99 / q99);
            if finished {
                break;
            }
        }
        let total = deleted.load(Ordering::Relaxed);
        println!(
            "pruning: {total} runs deleted at {:.0} runs/s; batch transactions p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} batches of up to {})",
            total as f64 / prune_secs.max(1e-9),
            p(&batches, 50.0),
            p(&batches, 99.0),
            batches.iter().copied().fold(0.0, f64::max),
            batches.len(),
            runner::ops::prune::BATCH
        );
        println!(
            "p99 pruning / quiet: median {:.2} over {} pairs (aim <= 2: {})",
            p(&ratios, 50.0),
            ratios.len(),
            if p(&ratios, 50.0) <= 2.0 { "met" } else { "not met" }
        );
        // Finish the backlog, then check nothing of it is left and the real runs are.
        let stop = AtomicBool::new(false);
        prune_until(exec.store(), &query, &stop, &deleted).await?;
        let left = exec.store().prunable_runs(&query, 10).await?;
        if !left.is_empty() {
            bail!("{} backlog runs left after pruning", left.len());
        }
        anyhow::Ok(())
    })
}

fn p(v: &[f64], q: f64) -> f64 {
    common::percentile(v, q)
}

/// The loop of `ops::prune::prune`, timed per batch, until `stop` or nothing is left.
async fn prune_until(
    store: &Store,
    q: &PruneQuery,
    stop: &AtomicBool,
    deleted: &AtomicU64,
) -> Result<(Vec<f64>, bool)> {
    let mut times = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let ids = store.prunable_runs(q, runner::ops::prune::BATCH).await?;
        if ids.is_empty() {
            return Ok((times, true));
        }
        let t = Instant::now();
        let n = store.delete_runs(&ids).await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        deleted.fetch_add(n, Ordering::Relaxed);
        tokio::time::sleep(runner::ops::prune::PAUSE).await;
    }
    Ok((times, false))
}

async fn one_run(exec: &Executor, version: &Version) -> Result<String> {
    let run = runner::ops::start::start(exec, version.clone(), json!({}), Trigger::Api, None)
        .await?
        .run;
    let status = tokio::time::timeout(Duration::from_secs(30), exec.wait(&run.id)).await??;
    if status != RunStatus::Succeeded {
        bail!("run {} ended {status:?}", run.id);
    }
    Ok(run.id.clone())
}

/// Sequential runs for `length`: each one's start to finished, in ms.
async fn latencies(exec: &Executor, version: &Version, length: Duration) -> Result<Vec<f64>> {
    let end = Instant::now() + length;
    let mut out = Vec::new();
    while Instant::now() < end && out.len() < 100_000 {
        let t = Instant::now();
        one_run(exec, version).await?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

/// `n` copies of run `model`'s rows, finished 60 days ago, in transactions of 50,000.
fn fill(db: &std::path::Path, model: &str, n: u64) -> Result<()> {
    let c = rusqlite::Connection::open(db)?;
    c.busy_timeout(Duration::from_secs(30))?;
    let old = (chrono::Utc::now() - chrono::Duration::days(60)).timestamp_millis();
    let mut done = 0;
    while done < n {
        let chunk = (n - done).min(50_000);
        let tx = c.unchecked_transaction()?;
        let range = "WITH RECURSIVE c(x) AS (SELECT ?2 UNION ALL SELECT x + 1 FROM c WHERE x < ?3)";
        tx.execute(
            &format!(
                "{range} INSERT INTO runs(id, workflow, version, status, trigger, idempotency_key, created_at, updated_at, finished_at, wake_at, state, schedule, rev, concurrency_key)
                 SELECT 'backlog-' || x, workflow, version, status, trigger, NULL, ?4, ?4, ?4, NULL, state, schedule, rev, NULL FROM c, runs WHERE runs.id = ?1"
            ),
            rusqlite::params![model, done as i64, (done + chunk - 1) as i64, old],
        )?;
        tx.execute(
            &format!(
                "{range} INSERT INTO events(run_id, seq, at, kind, data, attempt)
                 SELECT 'backlog-' || x, seq, ?4, kind, data, attempt FROM c, events WHERE events.run_id = ?1"
            ),
            rusqlite::params![model, done as i64, (done + chunk - 1) as i64, old],
        )?;
        tx.execute(
            &format!(
                "{range} INSERT INTO attempts(run_id, step, attempt, started_at, finished_at, status, outcome, error, request, response)
                 SELECT 'backlog-' || x, step, attempt, started_at, finished_at, status, outcome, error, request, response FROM c, attempts WHERE attempts.run_id = ?1"
            ),
            rusqlite::params![model, done as i64, (done + chunk - 1) as i64],
        )?;
        tx.commit()?;
        done += chunk;
    }
    Ok(())
}

/// A local endpoint answering every POST with 200 on its own runtime.
fn endpoint() -> Result<String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-endpoint")
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/{*path}",
        axum::routing::post(|| async { axum::Json(json!({"ok": true})) }),
    );
    std::thread::spawn(move || {
        rt.block_on(async move {
            let _ = axum::serve(listener, app).await;
        })
    });
    Ok(format!("http://{addr}"))
}
