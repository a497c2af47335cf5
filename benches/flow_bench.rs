//! What flow control and events cost, measured against runner without them in the same run.
//!
//! cargo bench --bench flow_bench                  # SQLite in a temporary folder
//! cargo bench --bench flow_bench -- --db postgres://USER@HOST:PORT/DB
//! cargo bench --bench flow_bench -- --quick
//!
//! 1. Admission cost: steps/s of three-step runs, 16 in flight, with a flow-control key whose
//!    limits are never reached (`parallelism: 10000`), against the same runs without a key,
//!    alternating plain/keyed phases; each pair's ratio and their median (aim ≥ 0.9).
//! 2. Events: N runs wait for an event each (`wait_for_event`, a key per run), then events are
//!    sent, 16 at a time, through `ops::notify` (what `POST /api/v1/events/{event}` calls, without
//!    the HTTP layer); events/s, and every run must have taken its event (aim ≥ 2,000/s with
//!    10,000 waiting).
//!
//! A program, not a test: it prints figures and fails only when something is wrong (a run not
//! succeeding, an event not delivered).

// Each program uses only some of the shared helpers.
#[allow(dead_code)]
mod common;

use anyhow::{Context, Result, anyhow, bail};
use runner::engine::machine::{RunStatus, Trigger};
use runner::runtime::Executor;
use runner::sign::Keys;
use runner::store::{Store, Version};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const IN_FLIGHT: usize = 16;

fn main() -> Result<()> {
    let mut db: Option<String> = None;
    let mut quick = false;
    let mut args = common::args();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--db" => db = Some(args.next().context("--db takes a database")?),
            "--quick" => quick = true,
            other => {
                bail!("unknown argument `{other}`; usage: flow_bench [--quick] [--db postgres://…]")
            }
        }
    }
    let (runs_per_phase, pairs, waiting) = if quick {
        (150, 2, 1_000)
    } else {
        (600, 3, 10_000)
    };
    let dir = tempfile::tempdir()?;
    let endpoint = Endpoint::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        runner::install_crypto_provider();
        let store = match &db {
            Some(url) => Store::connect(url).await?,
            None => Store::open(&dir.path().join("flow.db"))?,
        };
        let keys = Keys {
            current: runner::sign::key_from_random(rand::random()),
            next: runner::sign::key_from_random(rand::random()),
        };
        let exec = runner::testing::executor(store, keys, dir.path().join("outbox"));
        tokio::spawn(exec.clone().timer_loop());
        println!("runner flow_bench on {}", exec.store().describe());

        // 1. Admission cost.
        let plain = version("plain", &endpoint.base, "")?;
        let keyed = version(
            "keyed",
            &endpoint.base,
            "defaults:\n  flow_control: { key: bench, parallelism: 10000 }\n",
        )?;
        phase(&exec, &plain, 40).await?; // warm-up
        phase(&exec, &keyed, 40).await?;
        let mut ratios = Vec::new();
        for pair in 1..=pairs {
            let a = phase(&exec, &plain, runs_per_phase).await?;
            let b = phase(&exec, &keyed, runs_per_phase).await?;
            println!(
                "pair {pair}: without a key {a:>7.0} steps/s, with a key {b:>7.0} steps/s, ratio {:.2}",
                b / a
            );
            ratios.push(b / a);
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "admission: median ratio keyed / plain {:.2} over {pairs} pairs (aim ≥ 0.9)",
            ratios[ratios.len() / 2]
        );

        // 2. Events with `waiting` runs waiting.
        let wait = checked(
            "wait",
            "name: wait\ninputs:\n  n: { type: string, required: true }\nsteps:\n  - id: paid\n    wait_for_event: { event: bench.paid, key: \"{{ input.n }}\", timeout: 1h }\n",
        )?;
        let t = Instant::now();
        let ids = start_waiting(&exec, &wait, waiting).await?;
        println!(
            "events: {waiting} runs started and waiting in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..IN_FLIGHT {
            let (exec, next) = (exec.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let mut delivered = 0usize;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= waiting {
                        return anyhow::Ok(delivered);
                    }
                    let n = runner::ops::notify::notify(
                        &exec,
                        &NoWorkflows,
                        "bench.paid",
                        Some(i.to_string()),
                        json!({"amount": i}),
                        Some(format!("pay-{i}")),
                    )
                    .await
                    .map_err(|e| anyhow!("notify: {e}"))?;
                    delivered += n.delivered.len();
                }
            }));
        }
        let mut delivered = 0;
        for task in tasks {
            delivered += task.await??;
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "events: {waiting} events sent in {secs:.1} s = {:.0} events/s with {waiting} runs waiting (aim ≥ 2000), {delivered} delivered",
            waiting as f64 / secs
        );
        if delivered != waiting {
            bail!("{delivered} of {waiting} events reached their run");
        }
        for id in ids {
            let status = tokio::time::timeout(Duration::from_secs(60), exec.wait(&id)).await??;
            if status != RunStatus::Succeeded {
                bail!("run {id} ended {status:?}");
            }
        }
        anyhow::Ok(())
    })
}

/// Three signed POSTs of about 100 bytes, with `extra` at the top of the file.
fn version(name: &str, base: &str, extra: &str) -> Result<Version> {
    let mut yaml = format!("name: {name}\n{extra}steps:\n");
    for id in ["one", "two", "three"] {
        yaml.push_str(&format!(
            "  - id: {id}\n    http:\n      url: {base}/runner/{id}\n      body: {{ step: {id}, payload: \"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\" }}\n"
        ));
    }
    let v = checked(name, &yaml)?;
    let keyed = v.workflow.steps.iter().all(|s| s.flow_control.is_some());
    if keyed == extra.is_empty() {
        bail!("workflow {name}: flow_control is not where the bench means it");
    }
    Ok(v)
}

fn checked(name: &str, yaml: &str) -> Result<Version> {
    let path = format!("{name}.yaml");
    let wf = runner::workflow::check_file(&path, yaml).map_err(|d| anyhow!("{name}: {d:?}"))?;
    Ok(Version::new(&path, yaml, wf))
}

/// `n` runs, 16 in flight; answers steps/s.
async fn phase(exec: &Executor, version: &Version, n: usize) -> Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (exec, version, next) = (exec.clone(), version.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let run = runner::ops::start::start(
                    &exec,
                    version.clone(),
                    json!({}),
                    Trigger::Api,
                    None,
                )
                .await?
                .run;
                let status =
                    tokio::time::timeout(Duration::from_secs(60), exec.wait(&run.id)).await??;
                if status != RunStatus::Succeeded {
                    bail!("run {} ended {status:?}", run.id);
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((3 * n) as f64 / start.elapsed().as_secs_f64())
}

/// Starts `n` runs of `wait` (16 at a time) and answers their ids once every one waits.
async fn start_waiting(exec: &Executor, wait: &Version, n: usize) -> Result<Vec<String>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (exec, wait, next) = (exec.clone(), wait.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(ids);
                }
                let run = runner::ops::start::start(
                    &exec,
                    wait.clone(),
                    json!({"n": i.to_string()}),
                    Trigger::Api,
                    None,
                )
                .await?
                .run;
                if run.status != RunStatus::WaitingEvent {
                    bail!("run {} is {:?}, not waiting", run.id, run.status);
                }
                ids.push(run.id.clone());
            }
        }));
    }
    let mut ids = Vec::with_capacity(n);
    for t in tasks {
        ids.extend(t.await??);
    }
    Ok(ids)
}

/// No workflow starts on the bench's events.
struct NoWorkflows;

impl runner::ops::Workflows for NoWorkflows {
    fn active(&self, _: &str) -> Option<Version> {
        None
    }
    fn on_event(&self, _: &str) -> Vec<Version> {
        Vec::new()
    }
}

/// A local endpoint answering every POST with 200 on its own runtime.
struct Endpoint {
    base: String,
}

impl Endpoint {
    fn start() -> Result<Endpoint> {
        let count = Arc::new(AtomicU64::new(0));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
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
            .with_state(count);
        std::thread::spawn(move || {
            rt.block_on(async move {
                let _ = axum::serve(listener, app).await;
            })
        });
        Ok(Endpoint {
            base: format!("http://{addr}"),
        })
    }
}
