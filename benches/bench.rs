//! runner's benchmark: the floors the hardware allows and runner itself, measured in one run,
//! against one local endpoint, with ratios beside the absolute figures
//! (method: `reference/benchmark.md`).
//!
//! ```text
//! cargo bench --bench bench                  # full run (about a minute)
//! cargo bench --bench bench -- --quick       # smaller counts (about 20 s)
//! cargo bench --bench bench -- --json        # machine-readable report on stdout
//! cargo bench --bench bench -- --runner-only # skip the floors (for profiling; does not count)
//! cargo bench --bench bench -- --runner-only --sequential-only # also skip 16 in flight
//! cargo bench --bench bench -- --workers 1    # runner's runtime with one worker (a one-core host)
//! cargo bench --bench bench -- --postgres     # on PostgreSQL: a server of its own (see bench/pg.rs)
//! cargo bench --bench bench -- --db postgres://postgres@127.0.0.1:5432  # on that server
//! ```
//!
//! The endpoint is an axum server on 127.0.0.1 on its own tokio runtime (threads named
//! `bench-endpoint`), answering every POST with `{"ok":true}` and counting requests. runner and
//! the floors run on a second runtime. CPU per step is the on-CPU time of every thread of this
//! process except the endpoint's, from `/proc/self/task/*/schedstat` (nanoseconds; the store's
//! writer thread is also shown alone: it commits only what callers could not commit inline, see
//! `store::sqlite::Writer`); `/proc/self/stat` utime+stime (CLK_TCK assumed 100) of the
//! whole process is printed beside it as a cross-check. Overhead per step subtracts the mean raw
//! sequential round trip from the mean sequential wall time per step.
//!
//! Every loop is bounded by a count and by a time. Nothing here asserts a speed: figures that miss
//! the aims are reported as "not met"; only the correctness gates make the run not count.

mod common;
#[path = "bench/pg.rs"]
mod pg;

use anyhow::{Context, Result, anyhow, bail};
use common::{fsync_probe, percentile};
use runner::engine::machine::RunStatus;
use runner::runtime::Executor as Engine;
use runner::sign::Keys;
use runner::store::{Store, Version};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Concurrency of the parallel phases.
const IN_FLIGHT: usize = 16;
/// Thread-name prefix of the endpoint's runtime (its CPU is not runner's).
const ENDPOINT_THREADS: &str = "bench-endpoint";
/// Thread-name prefix of the store's writer thread (`runner-db-writer`, cut to 15 bytes by Linux).
const WRITER_THREAD: &str = "runner-db-writ";
/// A step body of about 100 bytes.
const BODY: &str = r#"{"step":"bench","payload":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123"}"#;

/// How much each phase does, by count and by time (whichever ends first).
struct Sizes {
    fsync_probes: usize,
    commits: usize,
    group_txs: usize,
    http_seq: usize,
    http_par: usize,
    signs: usize,
    wf3_one: usize,
    wf3_many: usize,
    seq_runs: usize,
    par_runs: usize,
    /// Items of the fan-out phase's one run.
    fan_items: usize,
    floor_time: Duration,
    seq_time: Duration,
    par_time: Duration,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                fsync_probes: 200,
                commits: 500,
                group_txs: 50,
                http_seq: 1_000,
                http_par: 10_000,
                signs: 50_000,
                wf3_one: 300,
                wf3_many: 3_000,
                seq_runs: 100,
                par_runs: 500,
                fan_items: 500,
                floor_time: Duration::from_secs(2),
                seq_time: Duration::from_secs(20),
                par_time: Duration::from_secs(10),
            }
        } else {
            Sizes {
                fsync_probes: 200,
                commits: 2_000,
                group_txs: 200,
                http_seq: 5_000,
                http_par: 50_000,
                signs: 200_000,
                wf3_one: 1_500,
                wf3_many: 12_000,
                seq_runs: 500,
                par_runs: 2_000,
                fan_items: 2_000,
                floor_time: Duration::from_secs(4),
                seq_time: Duration::from_secs(120),
                par_time: Duration::from_secs(30),
            }
        }
    }
}

fn main() -> Result<()> {
    let mut quick = false;
    let mut json_out = false;
    let mut keep_db = false;
    let mut runner_only = false;
    let mut sequential_only = false;
    let mut workers: Option<usize> = None;
    let mut postgres: Option<Option<String>> = None;
    let mut fan_items: Option<usize> = None;
    let mut args = common::args().peekable();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--workers" => {
                workers = Some(
                    args.next()
                        .and_then(|n| n.parse().ok())
                        .filter(|n| *n > 0)
                        .context("--workers takes a number above 0")?,
                );
            }
            "--db" => {
                let url = args.next().context("--db takes a postgres:// URL")?;
                if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                    bail!(
                        "--db takes a postgres:// URL of a server (the SQLite bench needs no --db)"
                    );
                }
                postgres = Some(Some(url));
            }
            "--postgres" => postgres = Some(None),
            "--fan-items" => {
                fan_items = Some(
                    args.next()
                        .and_then(|n| n.parse().ok())
                        .filter(|n| (1..=10_000).contains(n))
                        .context("--fan-items takes a number from 1 to 10000")?,
                );
            }
            "--quick" => quick = true,
            "--json" => json_out = true,
            "--keep-db" => keep_db = true,
            "--runner-only" => runner_only = true,
            "--sequential-only" => {
                sequential_only = true;
                runner_only = true;
            }
            "-h" | "--help" => {
                println!(
                    "usage: cargo bench --bench bench [-- --quick] [--json] [--runner-only] [--sequential-only] [--workers N] [--fan-items N] [--keep-db] [--db postgres://USER@HOST:PORT | --postgres]"
                );
                return Ok(());
            }
            other => bail!("unknown argument `{other}` (see --help)"),
        }
    }
    if let Some(server) = postgres {
        return pg::main(server, quick, json_out);
    }
    let mut sizes = Sizes::new(quick);
    if let Some(n) = fan_items {
        sizes.fan_items = n;
    }
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let mut report = Report::default();
    let progress = |what: &str| {
        if !json_out {
            eprintln!("… {what}");
        }
    };

    // 1. Quiet check.
    progress("quiet check");
    report.load_start = load_average()?;
    let fsync = fsync_probe(&dir.path().join("fsync.probe"), sizes.fsync_probes)?;
    report.fsync_p50_us = percentile(&fsync, 50.0);
    report.fsync_p99_us = percentile(&fsync, 99.0);

    // The endpoint, on its own runtime.
    let endpoint = Endpoint::start()?;
    // runner's runtime as `runner serve` builds it (tokio's default: one worker per core),
    // unless --workers says otherwise.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    report.workers = workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let rt = builder
        .thread_name("bench-runner")
        .enable_all()
        .build()
        .context("building the runtime")?;

    // 2. Floors (skipped with --runner-only, which is for profiling runner alone).
    if !runner_only {
        floors(&mut report, &sizes, dir.path(), &endpoint, &rt, &progress)?;
    } else {
        report.floors_skipped = true;
    }

    // 3. runner itself.
    let db_path = dir.path().join("runner.db");
    let runner_requests_before = endpoint.count();
    let (mut total_runs, store_sync) = rt.block_on(async {
        let store = Store::open(&db_path)?;
        let store_sync = store.synchronous().await?.unwrap_or(-1);
        let keys = Keys {
            current: runner::sign::key_from_random(rand::random()),
            next: runner::sign::key_from_random(rand::random()),
        };
        let engine = runner::testing::executor(store, keys, dir.path().join("outbox"));
        tokio::spawn(engine.clone().timer_loop());
        let version = bench_version(&endpoint.base)?;

        progress("runner: warm-up");
        let warm = run_sequential(&engine, &version, 20, Duration::from_secs(10)).await?;
        let mut total = warm.runs;

        progress("runner: one run at a time");
        let cpu0 = cpu_now();
        let seq = run_sequential(&engine, &version, sizes.seq_runs, sizes.seq_time).await?;
        let cpu1 = cpu_now();
        total += seq.runs;
        report.seq = Some(PhaseReport::new(&seq, cpu1.since(&cpu0)));

        progress("runner: 16 in flight");
        let cpu0 = cpu_now();
        let par_runs = if sequential_only { 0 } else { sizes.par_runs };
        let written = io_write_bytes();
        let par = run_parallel(
            std::slice::from_ref(&engine),
            &version,
            par_runs,
            sizes.par_time,
        )
        .await?;
        let cpu1 = cpu_now();
        let par_bytes = io_write_bytes().saturating_sub(written);
        total += par.runs;
        report.par = Some(PhaseReport::new(&par, cpu1.since(&cpu0)));
        report.par_written_per_step = par_bytes as f64 / (3 * par.runs.max(1)) as f64;

        if !sequential_only {
            progress("runner: one run fanning out");
            report.fan = Some(fan_out(&engine, &endpoint.base, sizes.fan_items).await?);
        }
        report.failed_runs = warm.failed + seq.failed + par.failed;
        // Let any step still in flight land before counting (none should be).
        tokio::time::sleep(Duration::from_millis(200)).await;
        anyhow::Ok((total, store_sync))
    })?;
    report.runner_requests = endpoint.count() - runner_requests_before;
    report.load_end = load_average()?;
    if keep_db {
        // A copy for scripts/wal-pages.py, taken while the store is idle and still open: its
        // WAL holds the last transactions (the tail of the 16-in-flight phase).
        let kept = tempfile::Builder::new()
            .prefix("runner-bench-")
            .tempdir()
            .context("creating a directory for the kept database")?
            .keep();
        for file in ["runner.db", "runner.db-wal"] {
            std::fs::copy(dir.path().join(file), kept.join(file))
                .with_context(|| format!("keeping {file}"))?;
        }
        eprintln!("kept the database: {}", kept.join("runner.db").display());
    }

    // 4. Correctness gates.
    let (db_runs, db_steps, db_attempts) = db_counts(&db_path)?;
    if total_runs == 0 {
        total_runs = 1; // avoids a vacuous pass: 0 runs would satisfy every count.
    }
    let n = total_runs as u64;
    let fan_items = report.fan.as_ref().map_or(0, |f| f.items as u64);
    let mut gates = vec![
        Gate::new(
            "endpoint counted exactly 3N requests (and one per item of the fan-out)",
            report.runner_requests == 3 * n + fan_items,
            format!(
                "N = {n} runs, {fan_items} items, {} requests",
                report.runner_requests
            ),
        ),
        Gate::new(
            "the fan-out's run succeeded with every item",
            report.fan.as_ref().is_none_or(|f| f.succeeded),
            report.fan.as_ref().map_or_else(
                || "no fan-out phase".to_string(),
                |f| format!("{} items in {:.1} s", f.items, f.secs),
            ),
        ),
        Gate::new(
            "the database holds 3N succeeded steps (and the fan-out's run, its step and one attempt per item)",
            db_steps == 3 * n + u64::from(fan_items > 0)
                && db_runs == n + u64::from(fan_items > 0)
                && db_attempts == 3 * n + fan_items,
            format!(
                "{db_steps} succeeded steps in run states, {db_attempts} succeeded attempts, {db_runs} succeeded runs"
            ),
        ),
        Gate::new(
            "PRAGMA synchronous is 2 (FULL) on the store",
            store_sync == 2,
            format!("synchronous = {store_sync}"),
        ),
        Gate::new(
            "every run succeeded",
            report.failed_runs == 0,
            format!("{} runs did not succeed", report.failed_runs),
        ),
    ];
    for (name, phase) in [
        ("one at a time", &report.seq),
        ("16 in flight", &report.par),
    ] {
        if let Some(p) = phase {
            gates.push(Gate::new(
                "no run took more than 100× the median",
                p.max_ms <= 100.0 * p.p50_ms,
                format!("{name}: max {:.2} ms, median {:.2} ms", p.max_ms, p.p50_ms),
            ));
        }
    }
    report.gates = gates;

    drop(rt);
    if json_out {
        println!("{}", serde_json::to_string_pretty(&report.json(quick))?);
    } else {
        print!("{}", report.text(quick));
    }
    if report.gates.iter().any(|g| !g.ok) {
        std::process::exit(1);
    }
    Ok(())
}

/// The floors: what the hardware allows, measured in this run against the same endpoint.
fn floors(
    report: &mut Report,
    sizes: &Sizes,
    dir: &Path,
    endpoint: &Endpoint,
    rt: &tokio::runtime::Runtime,
    progress: &dyn Fn(&str),
) -> Result<()> {
    progress("floor: SQLite commits");
    let (commits, commit_lat, commit_cpu_us) = sqlite_commits(
        &dir.join("floor-commit.db"),
        sizes.commits,
        sizes.floor_time,
    )?;
    report.sqlite_commits_per_s = commits;
    report.sqlite_commit_p50_us = percentile(&commit_lat, 50.0);
    report.sqlite_commit_cpu_us = commit_cpu_us;
    progress("floor: SQLite group commit");
    report.sqlite_group_rows_per_s = sqlite_group(
        &dir.join("floor-group.db"),
        sizes.group_txs,
        sizes.floor_time,
    )?;
    progress("floor: HS256 signing");
    report.sign_ns = sign_cost(sizes.signs, sizes.floor_time);

    let floor_url = format!("{}/floor", endpoint.base);
    rt.block_on(async {
        let client = runner::dispatch::http::client();
        progress("floor: HTTP round trips");
        // Warm the pool.
        http_sequential(&client, &floor_url, 200, sizes.floor_time).await?;
        let seq = http_sequential(&client, &floor_url, sizes.http_seq, sizes.floor_time).await?;
        report.http_seq_p50_us = percentile(&seq, 50.0);
        report.http_seq_mean_us = mean(&seq);
        report.http_par_req_per_s =
            http_parallel(&client, &floor_url, sizes.http_par, sizes.floor_time).await?;

        progress("floor: wf3_floor");
        let one = Wf3Floor::new(&dir.join("floor-wf3-1.db"), &floor_url, false)?;
        let (steps, secs) = one.run(&client, 1, sizes.wf3_one, sizes.floor_time).await?;
        report.wf3_one_ms_per_step = secs * 1e3 / steps as f64;
        let many = Wf3Floor::new(&dir.join("floor-wf3-16.db"), &floor_url, false)?;
        let (steps, secs) = many
            .run(&client, IN_FLIGHT, sizes.wf3_many, sizes.floor_time)
            .await?;
        report.wf3_many_steps_per_s = steps as f64 / secs;
        let group = Wf3Floor::new(&dir.join("floor-wf3-g.db"), &floor_url, true)?;
        let (steps, secs) = group
            .run(&client, IN_FLIGHT, sizes.wf3_many, sizes.floor_time)
            .await?;
        report.wf3_group_steps_per_s = steps as f64 / secs;
        // The same writer thread with one chain: what handing each commit to another thread costs.
        let group_one = Wf3Floor::new(&dir.join("floor-wf3-g1.db"), &floor_url, true)?;
        let (steps, secs) = group_one
            .run(&client, 1, sizes.wf3_one, sizes.floor_time)
            .await?;
        report.wf3_group_one_ms_per_step = secs * 1e3 / steps as f64;
        anyhow::Ok(())
    })?;

    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Quiet check

fn load_average() -> Result<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
    let mut out = [0.0; 3];
    for (slot, field) in out.iter_mut().zip(text.split_whitespace()) {
        *slot = field.parse().context("parsing /proc/loadavg")?;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The endpoint

struct Endpoint {
    base: String,
    count: Arc<AtomicU64>,
}

impl Endpoint {
    fn start() -> Result<Endpoint> {
        let count = Arc::new(AtomicU64::new(0));
        let counter = count.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(ENDPOINT_THREADS)
            .enable_all()
            .build()
            .context("building the endpoint runtime")?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("binding 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(answer))
            .with_state(counter);
        std::thread::Builder::new()
            .name(ENDPOINT_THREADS.into())
            .spawn(move || {
                rt.block_on(async move {
                    let server = tokio::spawn(async move { axum::serve(listener, app).await });
                    match server.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => eprintln!("the endpoint stopped: {e}"),
                        Err(e) => eprintln!("the endpoint task ended: {e}"),
                    }
                });
            })
            .context("starting the endpoint thread")?;
        Ok(Endpoint {
            base: format!("http://{addr}"),
            count,
        })
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

async fn answer(
    axum::extract::State(count): axum::extract::State<Arc<AtomicU64>>,
    _body: axum::body::Bytes,
) -> axum::Json<Value> {
    count.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({ "ok": true }))
}

// ---------------------------------------------------------------------------------------------
// Floors

fn floor_db(path: &Path) -> Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
    if sync != 2 {
        bail!("the floor database is not synchronous=FULL ({sync})");
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS steps (id INTEGER PRIMARY KEY, run TEXT NOT NULL, step TEXT NOT NULL, body TEXT NOT NULL)",
    )?;
    Ok(conn)
}

/// Single-row autocommit inserts: (commits/s, latencies µs).
/// Also returns the CPU time of this thread per commit, in µs.
fn sqlite_commits(path: &Path, n: usize, limit: Duration) -> Result<(f64, Vec<f64>, f64)> {
    let conn = floor_db(path)?;
    let mut stmt = conn.prepare("INSERT INTO steps(run, step, body) VALUES (?1, ?2, ?3)")?;
    let mut lat = Vec::with_capacity(n);
    let cpu0 = thread_cpu_ns();
    let start = Instant::now();
    for i in 0..n {
        if start.elapsed() > limit {
            break;
        }
        let t = Instant::now();
        stmt.execute(rusqlite::params![format!("run-{i}"), "one", BODY])?;
        lat.push(us(t.elapsed()));
    }
    let cpu_us = thread_cpu_ns().saturating_sub(cpu0) as f64 / 1e3 / lat.len().max(1) as f64;
    Ok((
        lat.len() as f64 / start.elapsed().as_secs_f64(),
        lat,
        cpu_us,
    ))
}

/// On-CPU time of the calling thread in ns (`/proc/thread-self/schedstat`; 0 if unreadable).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// 100 rows per transaction: rows/s.
fn sqlite_group(path: &Path, txs: usize, limit: Duration) -> Result<f64> {
    let mut conn = floor_db(path)?;
    let start = Instant::now();
    let mut rows = 0usize;
    for t in 0..txs {
        if start.elapsed() > limit {
            break;
        }
        let tx = conn.transaction()?;
        {
            let mut stmt =
                tx.prepare_cached("INSERT INTO steps(run, step, body) VALUES (?1, ?2, ?3)")?;
            for i in 0..100 {
                stmt.execute(rusqlite::params![format!("run-{t}-{i}"), "one", BODY])?;
            }
        }
        tx.commit()?;
        rows += 100;
    }
    Ok(rows as f64 / start.elapsed().as_secs_f64())
}

/// ns per `runner::sign::sign`.
fn sign_cost(n: usize, limit: Duration) -> f64 {
    let key = runner::sign::key_from_random([7; 32]);
    let jti = runner::sign::jti_from_random([9; 16]);
    let start = Instant::now();
    let mut done = 0usize;
    let mut sink = 0usize;
    while done < n {
        for _ in 0..1_000 {
            let t = runner::sign::sign(
                std::hint::black_box(&key),
                "http://127.0.0.1:8080/floor",
                std::hint::black_box(BODY.as_bytes()),
                1_700_000_000,
                &jti,
            );
            sink = sink.wrapping_add(t.len());
        }
        done += 1_000;
        if start.elapsed() > limit {
            break;
        }
    }
    std::hint::black_box(sink);
    start.elapsed().as_nanos() as f64 / done as f64
}

async fn post(client: &reqwest::Client, url: &str, token: Option<String>) -> Result<()> {
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .body(BODY);
    if let Some(t) = token {
        req = req.header("Upstash-Signature", t);
    }
    let resp = req.send().await?;
    if !resp.status().is_success() {
        bail!("the endpoint answered {}", resp.status());
    }
    resp.bytes().await?;
    Ok(())
}

/// Sequential POSTs: latencies in µs.
async fn http_sequential(
    client: &reqwest::Client,
    url: &str,
    n: usize,
    limit: Duration,
) -> Result<Vec<f64>> {
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        if start.elapsed() > limit {
            break;
        }
        let t = Instant::now();
        post(client, url, None).await?;
        lat.push(us(t.elapsed()));
    }
    Ok(lat)
}

/// `IN_FLIGHT` concurrent POST loops: requests/s.
async fn http_parallel(
    client: &reqwest::Client,
    url: &str,
    n: usize,
    limit: Duration,
) -> Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + limit;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (client, url, next) = (client.clone(), url.to_string(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            while next.fetch_add(1, Ordering::Relaxed) < n && Instant::now() < deadline {
                post(&client, &url, None).await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

/// The minimal durable loop: sign, POST, commit one row (synchronous=FULL), then the next step.
/// With `group`, commits go through one writer thread that batches whatever is waiting.
struct Wf3Floor {
    url: String,
    key: String,
    commit: Committer,
}

#[derive(Clone)]
enum Committer {
    Each(Arc<Mutex<rusqlite::Connection>>),
    Group(mpsc::Sender<(String, tokio::sync::oneshot::Sender<()>)>),
}

impl Wf3Floor {
    fn new(path: &Path, url: &str, group: bool) -> Result<Wf3Floor> {
        let conn = floor_db(path)?;
        let commit = if group {
            let (tx, rx) = mpsc::channel::<(String, tokio::sync::oneshot::Sender<()>)>();
            std::thread::Builder::new()
                .name("bench-floor-writer".into())
                .spawn(move || group_writer(conn, rx))?;
            Committer::Group(tx)
        } else {
            Committer::Each(Arc::new(Mutex::new(conn)))
        };
        Ok(Wf3Floor {
            url: url.to_string(),
            key: runner::sign::key_from_random([3; 32]),
            commit,
        })
    }

    /// `chains` loops of steps, `n` steps in all: (steps done, seconds).
    async fn run(
        &self,
        client: &reqwest::Client,
        chains: usize,
        n: usize,
        limit: Duration,
    ) -> Result<(usize, f64)> {
        let next = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + limit;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for chain in 0..chains {
            let (client, next) = (client.clone(), next.clone());
            let (url, key, commit) = (self.url.clone(), self.key.clone(), self.commit.clone());
            tasks.push(tokio::spawn(async move {
                let mut done = 0usize;
                while next.fetch_add(1, Ordering::Relaxed) < n && Instant::now() < deadline {
                    let jti = runner::sign::jti_from_random(rand::random());
                    let token = runner::sign::sign(
                        &key,
                        &url,
                        BODY.as_bytes(),
                        chrono::Utc::now().timestamp(),
                        &jti,
                    );
                    post(&client, &url, Some(token)).await?;
                    let run = format!("chain-{chain}-{done}");
                    match &commit {
                        Committer::Each(conn) => {
                            let conn = conn.lock().map_err(|_| anyhow!("floor db lock"))?;
                            conn.prepare_cached(
                                "INSERT INTO steps(run, step, body) VALUES (?1, ?2, ?3)",
                            )?
                            .execute(rusqlite::params![
                                run,
                                "one",
                                r#"{"ok":true}"#
                            ])?;
                        }
                        Committer::Group(tx) => {
                            let (reply, rx) = tokio::sync::oneshot::channel();
                            tx.send((run, reply))
                                .map_err(|_| anyhow!("floor writer gone"))?;
                            rx.await?;
                        }
                    }
                    done += 1;
                }
                anyhow::Ok(done)
            }));
        }
        let mut done = 0;
        for t in tasks {
            done += t.await??;
        }
        Ok((done.max(1), start.elapsed().as_secs_f64()))
    }
}

fn group_writer(
    mut conn: rusqlite::Connection,
    rx: mpsc::Receiver<(String, tokio::sync::oneshot::Sender<()>)>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(x) => batch.push(x),
                Err(_) => break,
            }
        }
        let ok = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            {
                let mut stmt =
                    tx.prepare_cached("INSERT INTO steps(run, step, body) VALUES (?1, ?2, ?3)")?;
                for (run, _) in &batch {
                    stmt.execute(rusqlite::params![run, "one", r#"{"ok":true}"#])?;
                }
            }
            tx.commit()
        })();
        if let Err(e) = ok {
            eprintln!("floor group commit failed: {e}");
            return; // dropping the replies fails the waiting steps
        }
        for (_, reply) in batch {
            let _ = reply.send(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// runner

fn bench_version(base: &str) -> Result<Version> {
    let mut yaml =
        String::from("name: bench\ndescription: three signed POSTs of about 100 bytes\nsteps:\n");
    for id in ["one", "two", "three"] {
        yaml.push_str(&format!(
            "  - id: {id}\n    http:\n      url: {base}/runner/{id}\n      body: {{ step: {id}, payload: \"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\" }}\n"
        ));
    }
    let version = checked_version("bench.yaml", &yaml)?;
    if version.workflow.steps.len() != 3 {
        bail!(
            "the bench workflow has {} steps, not 3",
            version.workflow.steps.len()
        );
    }
    Ok(version)
}

/// A workflow version of the bench's own, checked as `runner validate` would.
fn checked_version(path: &str, yaml: &str) -> Result<Version> {
    let wf = runner::workflow::check_file(path, yaml).map_err(|diags| {
        anyhow!(
            "the bench workflow {path} does not check: {}",
            diags
                .iter()
                .map(|d| d.message.clone())
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    Ok(Version::new(path, yaml, wf))
}

struct Phase {
    runs: usize,
    failed: usize,
    secs: f64,
    lat_ms: Vec<f64>,
}

async fn one_run(engine: &Engine, version: &Version) -> Result<(bool, f64)> {
    let t = Instant::now();
    let run = runner::ops::start::start(
        engine,
        version.clone(),
        json!({}),
        runner::engine::machine::Trigger::Api,
        None,
    )
    .await?
    .run;
    let status = tokio::time::timeout(Duration::from_secs(60), engine.wait(&run.id))
        .await
        .map_err(|_| anyhow!("run {} did not finish within 60 s", run.id))??;
    Ok((status == RunStatus::Succeeded, ms(t.elapsed())))
}

async fn run_sequential(
    engine: &Engine,
    version: &Version,
    n: usize,
    limit: Duration,
) -> Result<Phase> {
    let start = Instant::now();
    let mut lat = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        if start.elapsed() > limit {
            break;
        }
        let (ok, l) = one_run(engine, version).await?;
        failed += usize::from(!ok);
        lat.push(l);
    }
    Ok(Phase {
        runs: lat.len(),
        failed,
        secs: start.elapsed().as_secs_f64(),
        lat_ms: lat,
    })
}

/// `IN_FLIGHT` runs at a time, spread over `engines` (one task in two on each of two nodes).
async fn run_parallel(
    engines: &[Engine],
    version: &Version,
    n: usize,
    limit: Duration,
) -> Result<Phase> {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + limit;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..IN_FLIGHT {
        let engine = engines[i % engines.len()].clone();
        let (version, next) = (version.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0usize;
            while next.fetch_add(1, Ordering::Relaxed) < n && Instant::now() < deadline {
                let (ok, l) = one_run(&engine, &version).await?;
                failed += usize::from(!ok);
                lat.push(l);
            }
            anyhow::Ok((lat, failed))
        }));
    }
    let mut lat = Vec::with_capacity(n);
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await??;
        lat.extend(l);
        failed += f;
    }
    Ok(Phase {
        runs: lat.len(),
        failed,
        secs: start.elapsed().as_secs_f64(),
        lat_ms: lat,
    })
}

/// Counts in the runner database, read with SQL on the file:
/// (succeeded runs, succeeded steps in run states, succeeded attempts).
fn db_counts(path: &Path) -> Result<(u64, u64, u64)> {
    let conn = rusqlite::Connection::open(path)?;
    let runs: i64 = conn.query_row(
        "SELECT count(*) FROM runs WHERE status = 'succeeded'",
        [],
        |r| r.get(0),
    )?;
    let steps: i64 = conn.query_row(
        "SELECT count(*) FROM runs, json_each(runs.state, '$.steps') AS s
         WHERE json_extract(s.value, '$.status') = 'succeeded'",
        [],
        |r| r.get(0),
    )?;
    let attempts: i64 = conn.query_row(
        "SELECT count(*) FROM events WHERE attempt IS NOT NULL AND attempt ->> '$.outcome' = 'succeeded'",
        [],
        |r| r.get(0),
    )?;
    Ok((
        u64::try_from(runs)?,
        u64::try_from(steps)?,
        u64::try_from(attempts)?,
    ))
}

// ---------------------------------------------------------------------------------------------
// CPU time

/// On-CPU time in ns of runner's threads (every thread but the endpoint's) and of the endpoint's,
/// from `/proc/self/task/*/schedstat`; and process utime+stime from `/proc/self/stat` in ticks
/// (CLK_TCK assumed 100).
struct Cpu {
    runner_ns: u64,
    /// The store's writer thread alone (part of `runner_ns`).
    writer_ns: u64,
    endpoint_ns: u64,
    process_ticks: u64,
    /// The whole machine, from the `cpu` line of /proc/stat (ticks summed over CPUs).
    machine_busy_ticks: u64,
    machine_steal_ticks: u64,
    machine_total_ticks: u64,
}

impl Cpu {
    fn since(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            runner_ns: self.runner_ns.saturating_sub(earlier.runner_ns),
            writer_ns: self.writer_ns.saturating_sub(earlier.writer_ns),
            endpoint_ns: self.endpoint_ns.saturating_sub(earlier.endpoint_ns),
            process_ticks: self.process_ticks.saturating_sub(earlier.process_ticks),
            machine_busy_ticks: self
                .machine_busy_ticks
                .saturating_sub(earlier.machine_busy_ticks),
            machine_steal_ticks: self
                .machine_steal_ticks
                .saturating_sub(earlier.machine_steal_ticks),
            machine_total_ticks: self
                .machine_total_ticks
                .saturating_sub(earlier.machine_total_ticks),
        }
    }
}

fn cpu_now() -> Cpu {
    let mut cpu = Cpu {
        runner_ns: 0,
        writer_ns: 0,
        endpoint_ns: 0,
        process_ticks: 0,
        machine_busy_ticks: 0,
        machine_steal_ticks: 0,
        machine_total_ticks: 0,
    };
    if let Ok(stat) = std::fs::read_to_string("/proc/stat")
        && let Some(line) = stat.lines().find(|l| l.starts_with("cpu "))
    {
        // user nice system idle iowait irq softirq steal (guest time is already in user).
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|v| v.parse().ok())
            .collect();
        if f.len() == 8 {
            cpu.machine_busy_ticks = f[0] + f[1] + f[2] + f[5] + f[6];
            cpu.machine_steal_ticks = f[7];
            cpu.machine_total_ticks = f.iter().sum();
        }
    }
    for (comm, ns) in common::thread_cpu() {
        if comm.starts_with(ENDPOINT_THREADS) {
            cpu.endpoint_ns += ns;
        } else {
            cpu.runner_ns += ns;
            if comm.starts_with(WRITER_THREAD) {
                cpu.writer_ns += ns;
            }
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
        if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let get = |i: usize| {
                f.get(i - 3)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            cpu.process_ticks = get(14) + get(15);
        }
    }
    cpu
}

// ---------------------------------------------------------------------------------------------
// Report

#[derive(Default)]
struct Report {
    floors_skipped: bool,
    /// Worker threads of runner's runtime.
    workers: usize,
    load_start: [f64; 3],
    load_end: [f64; 3],
    fsync_p50_us: f64,
    fsync_p99_us: f64,
    sqlite_commits_per_s: f64,
    sqlite_commit_p50_us: f64,
    sqlite_commit_cpu_us: f64,
    sqlite_group_rows_per_s: f64,
    http_seq_p50_us: f64,
    http_seq_mean_us: f64,
    http_par_req_per_s: f64,
    sign_ns: f64,
    wf3_one_ms_per_step: f64,
    wf3_many_steps_per_s: f64,
    wf3_group_steps_per_s: f64,
    wf3_group_one_ms_per_step: f64,
    seq: Option<PhaseReport>,
    par: Option<PhaseReport>,
    /// Bytes this process wrote to storage per step in the 16-in-flight phase (WAL, checkpoints).
    par_written_per_step: f64,
    fan: Option<FanReport>,
    failed_runs: usize,
    runner_requests: u64,
    gates: Vec<Gate>,
}

/// One run whose `foreach` step calls the endpoint once per item, 16 at a time.
struct FanReport {
    items: usize,
    secs: f64,
    succeeded: bool,
    /// Bytes this process wrote to storage per item (WAL, checkpoints).
    written_per_item: f64,
}

impl FanReport {
    fn items_per_s(&self) -> f64 {
        self.items as f64 / self.secs
    }
}

/// Bytes this process has caused to be written to storage (`write_bytes` of /proc/self/io).
fn io_write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn fan_version(base: &str) -> Result<Version> {
    let yaml = format!(
        "name: bench-fan\ndescription: one signed POST of about 100 bytes per item\ninputs:\n  n: {{ type: integer, required: true }}\nsteps:\n  - id: fan\n    foreach: \"{{{{ range(input.n) | list }}}}\"\n    max_parallel: {IN_FLIGHT}\n    http:\n      url: {base}/runner/fan\n      body: {{ item: \"{{{{ item }}}}\", payload: \"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\" }}\n"
    );
    checked_version("bench-fan.yaml", &yaml)
}

/// The fan-out phase: one run of `items` items at `max_parallel: 16`.
async fn fan_out(engine: &Engine, base: &str, items: usize) -> Result<FanReport> {
    let version = fan_version(base)?;
    let written = io_write_bytes();
    let t = Instant::now();
    let run = runner::ops::start::start(
        engine,
        version,
        json!({ "n": items }),
        runner::engine::machine::Trigger::Api,
        None,
    )
    .await?
    .run;
    let status = tokio::time::timeout(Duration::from_secs(300), engine.wait(&run.id))
        .await
        .map_err(|_| anyhow!("the fan-out run {} did not finish within 300 s", run.id))??;
    let secs = t.elapsed().as_secs_f64();
    Ok(FanReport {
        items,
        secs,
        succeeded: status == RunStatus::Succeeded,
        written_per_item: io_write_bytes().saturating_sub(written) as f64 / items.max(1) as f64,
    })
}

struct PhaseReport {
    runs: usize,
    secs: f64,
    ms_per_step: f64,
    steps_per_s: f64,
    cpu_ms_per_step: f64,
    writer_cpu_ms_per_step: f64,
    cpu_ms_per_step_ticks: f64,
    endpoint_cpu_ms_per_step: f64,
    /// Share of the machine's CPU time used by other processes during the phase, and stolen by the host.
    others_pct: f64,
    steal_pct: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Each run's latency (ms), for the per-step figures of the summary.
    lat_ms: Vec<f64>,
}

impl PhaseReport {
    fn new(p: &Phase, cpu: Cpu) -> PhaseReport {
        let steps = (3 * p.runs).max(1) as f64;
        PhaseReport {
            runs: p.runs,
            secs: p.secs,
            ms_per_step: p.secs * 1e3 / steps,
            steps_per_s: steps / p.secs,
            lat_ms: p.lat_ms.clone(),
            cpu_ms_per_step: cpu.runner_ns as f64 / 1e6 / steps,
            writer_cpu_ms_per_step: cpu.writer_ns as f64 / 1e6 / steps,
            // Whole process (endpoint included), 10 ms ticks.
            cpu_ms_per_step_ticks: cpu.process_ticks as f64 * 10.0 / steps,
            endpoint_cpu_ms_per_step: cpu.endpoint_ns as f64 / 1e6 / steps,
            others_pct: 100.0 * cpu.machine_busy_ticks.saturating_sub(cpu.process_ticks) as f64
                / cpu.machine_total_ticks.max(1) as f64,
            steal_pct: 100.0 * cpu.machine_steal_ticks as f64
                / cpu.machine_total_ticks.max(1) as f64,
            p50_ms: percentile(&p.lat_ms, 50.0),
            p99_ms: percentile(&p.lat_ms, 99.0),
            max_ms: p.lat_ms.iter().copied().fold(0.0, f64::max),
        }
    }

    fn json(&self) -> Value {
        json!({
            "runs": self.runs,
            "steps": 3 * self.runs,
            "seconds": self.secs,
            "ms_per_step": self.ms_per_step,
            "steps_per_s": self.steps_per_s,
            "cpu_ms_per_step": self.cpu_ms_per_step,
            "writer_cpu_ms_per_step": self.writer_cpu_ms_per_step,
            "cpu_ms_per_step_whole_process_ticks": self.cpu_ms_per_step_ticks,
            "endpoint_cpu_ms_per_step": self.endpoint_cpu_ms_per_step,
            "other_processes_cpu_pct": self.others_pct,
            "steal_pct": self.steal_pct,
            "run_latency_ms": { "p50": self.p50_ms, "p99": self.p99_ms, "max": self.max_ms },
        })
    }
}

struct Gate {
    name: &'static str,
    ok: bool,
    detail: String,
}

impl Gate {
    fn new(name: &'static str, ok: bool, detail: String) -> Gate {
        Gate { name, ok, detail }
    }
}

struct Aim {
    name: &'static str,
    value: f64,
    target: f64,
    unit: &'static str,
    met: bool,
}

/// Aims from reference/benchmark.md.
const AIM_OVERHEAD_MS: f64 = 0.5;
const AIM_STEPS_PER_S: f64 = 5_000.0;
const AIM_CPU_MS: f64 = 0.3;
const AIM_LATENCY_RATIO: f64 = 2.5;
const AIM_THROUGHPUT_RATIO: f64 = 1.0 / 3.0;

impl Report {
    fn invalid_reasons(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.floors_skipped {
            out.push("the floors were skipped (--runner-only)".to_string());
        }
        if self.load_start[0] > 1.5 {
            out.push(format!(
                "1-minute load {:.2} > 1.5 at the start",
                self.load_start[0]
            ));
        }
        if self.load_end[0] > 1.5 {
            out.push(format!(
                "1-minute load {:.2} > 1.5 at the end",
                self.load_end[0]
            ));
        }
        if self.fsync_p50_us > 500.0 {
            out.push(format!("fsync p50 {:.0} µs > 500 µs", self.fsync_p50_us));
        }
        out
    }

    fn overhead_ms(&self) -> f64 {
        self.seq
            .as_ref()
            .map_or(f64::NAN, |s| s.ms_per_step - self.http_seq_mean_us / 1e3)
    }

    /// CPU ms per step: (one run at a time, 16 in flight).
    fn cpu_ms(&self) -> (f64, f64) {
        let of = |p: &Option<PhaseReport>| p.as_ref().map_or(f64::NAN, |p| p.cpu_ms_per_step);
        (of(&self.seq), of(&self.par))
    }

    fn aims(&self) -> Vec<Aim> {
        let overhead = self.overhead_ms();
        let tput = self.par.as_ref().map_or(0.0, |p| p.steps_per_s);
        let cpu = self.cpu_ms();
        vec![
            Aim {
                name: "sequential overhead per step",
                value: overhead,
                target: AIM_OVERHEAD_MS,
                unit: "ms ≤",
                met: overhead <= AIM_OVERHEAD_MS,
            },
            Aim {
                name: "steps/s with 16 in flight",
                value: tput,
                target: AIM_STEPS_PER_S,
                unit: "≥",
                met: tput >= AIM_STEPS_PER_S,
            },
            Aim {
                name: "latency ratio runner / wf3_floor 1 chain",
                value: self.latency_ratio(),
                target: AIM_LATENCY_RATIO,
                unit: "≤",
                met: self.latency_ratio() <= AIM_LATENCY_RATIO,
            },
            Aim {
                name: "throughput ratio runner / wf3_floor 16 chains (commit per step)",
                value: self.throughput_ratio(),
                target: AIM_THROUGHPUT_RATIO,
                unit: "≥",
                met: self.throughput_ratio() >= AIM_THROUGHPUT_RATIO,
            },
            Aim {
                name: "CPU per step, one run at a time",
                value: cpu.0,
                target: AIM_CPU_MS,
                unit: "ms ≤",
                met: cpu.0 <= AIM_CPU_MS,
            },
            Aim {
                name: "CPU per step, 16 in flight",
                value: cpu.1,
                target: AIM_CPU_MS,
                unit: "ms ≤",
                met: cpu.1 <= AIM_CPU_MS,
            },
        ]
    }

    fn latency_ratio(&self) -> f64 {
        self.seq.as_ref().map_or(f64::NAN, |s| s.ms_per_step) / self.wf3_one_ms_per_step
    }

    fn throughput_ratio(&self) -> f64 {
        self.par.as_ref().map_or(f64::NAN, |p| p.steps_per_s) / self.wf3_many_steps_per_s
    }

    fn ratios(&self) -> Vec<(&'static str, f64)> {
        let seq = self.seq.as_ref().map_or(f64::NAN, |s| s.ms_per_step);
        let tput = self.par.as_ref().map_or(f64::NAN, |p| p.steps_per_s);
        vec![
            (
                "latency: runner ms/step ÷ wf3_floor 1 chain (aim ≤ 2.5)",
                self.latency_ratio(),
            ),
            (
                "latency: runner ms/step ÷ wf3_floor 1 chain with a writer thread",
                seq / self.wf3_group_one_ms_per_step,
            ),
            (
                "throughput: runner ÷ wf3_floor 16 chains, commit per step (aim ≥ 0.33)",
                self.throughput_ratio(),
            ),
            (
                "throughput: runner ÷ wf3_floor 16 chains, group commit",
                tput / self.wf3_group_steps_per_s,
            ),
            (
                "throughput: runner steps/s ÷ raw HTTP req/s, 16 in flight",
                tput / self.http_par_req_per_s,
            ),
        ]
    }

    fn text(&self, quick: bool) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let invalid = self.invalid_reasons();
        let failed: Vec<&Gate> = self.gates.iter().filter(|g| !g.ok).collect();
        let banner = |s: &mut String| {
            if !invalid.is_empty() {
                let _ = writeln!(
                    s,
                    "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                     !!! INVALID RUN: the machine was not quiet ({}).\n\
                     !!! The figures below are printed but do not count.\n\
                     !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
                    invalid.join("; ")
                );
            }
            if !failed.is_empty() {
                let _ = writeln!(
                    s,
                    "\nXXX FAIL: {} correctness gate(s) failed; this run does not count.",
                    failed.len()
                );
            }
        };
        let _ = writeln!(
            s,
            "runner benchmark{} — {} cores, same run, same endpoint",
            if quick { " (--quick)" } else { "" },
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        banner(&mut s);
        let _ = writeln!(s, "\n1. Quiet check");
        let _ = writeln!(
            s,
            "   load average        start {:.2} {:.2} {:.2}   end {:.2} {:.2} {:.2}   (limit 1-min ≤ 1.5)",
            self.load_start[0],
            self.load_start[1],
            self.load_start[2],
            self.load_end[0],
            self.load_end[1],
            self.load_end[2]
        );
        let _ = writeln!(
            s,
            "   fsync probe         p50 {:.0} µs, p99 {:.0} µs   (200 × 4 KiB write + fdatasync; limit p50 ≤ 500 µs)",
            self.fsync_p50_us, self.fsync_p99_us
        );
        let _ = writeln!(
            s,
            "   => {}",
            if invalid.is_empty() {
                "quiet: VALID"
            } else {
                "INVALID"
            }
        );

        let _ = writeln!(s, "\n2. Floors");
        let _ = writeln!(
            s,
            "   SQLite WAL FULL, 1 row/commit     {:>9.0} commits/s   p50 {:.0} µs   CPU {:.0} µs/commit",
            self.sqlite_commits_per_s, self.sqlite_commit_p50_us, self.sqlite_commit_cpu_us
        );
        let _ = writeln!(
            s,
            "   SQLite WAL FULL, 100 rows/commit  {:>9.0} rows/s",
            self.sqlite_group_rows_per_s
        );
        let _ = writeln!(
            s,
            "   reqwest POST, sequential          p50 {:.0} µs   mean {:.0} µs",
            self.http_seq_p50_us, self.http_seq_mean_us
        );
        let _ = writeln!(
            s,
            "   reqwest POST, 16 in flight        {:>9.0} req/s",
            self.http_par_req_per_s
        );
        let _ = writeln!(
            s,
            "   HS256 sign (runner::sign::sign)   {:>9.0} ns/op",
            self.sign_ns
        );
        let _ = writeln!(
            s,
            "   wf3_floor, 1 chain                {:>9.3} ms/step",
            self.wf3_one_ms_per_step
        );
        let _ = writeln!(
            s,
            "   wf3_floor, 16 chains, commit/step {:>9.0} steps/s",
            self.wf3_many_steps_per_s
        );
        let _ = writeln!(
            s,
            "   wf3_floor, 16 chains, group commit{:>9.0} steps/s",
            self.wf3_group_steps_per_s
        );
        let _ = writeln!(
            s,
            "   wf3_floor, 1 chain, writer thread {:>9.3} ms/step   (every commit handed to a thread)",
            self.wf3_group_one_ms_per_step
        );

        let _ = writeln!(
            s,
            "\n3. runner (3 signed POSTs of ~100 B per run, synchronous=FULL, runtime workers: {})",
            self.workers
        );
        for (name, p) in [
            ("one run at a time", &self.seq),
            ("16 in flight     ", &self.par),
        ] {
            if let Some(p) = p {
                let _ = writeln!(
                    s,
                    "   {name}  {:>5} runs in {:>5.1} s   {:.3} ms/step   {:>6.0} steps/s",
                    p.runs, p.secs, p.ms_per_step, p.steps_per_s
                );
                let _ = writeln!(
                    s,
                    "       run latency p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                    p.p50_ms, p.p99_ms, p.max_ms
                );
                let _ = writeln!(
                    s,
                    "       CPU {:.3} ms/step (runner's threads, schedstat), of which the DB writer thread {:.3} (commits not made inline)",
                    p.cpu_ms_per_step, p.writer_cpu_ms_per_step
                );
                let _ = writeln!(
                    s,
                    "       [cross-checks: whole process {:.3} ms/step from /proc/self/stat ticks; endpoint threads {:.3}]",
                    p.cpu_ms_per_step_ticks, p.endpoint_cpu_ms_per_step
                );
                let _ = writeln!(
                    s,
                    "       [machine during the phase: other processes {:.0}% of the CPUs, host steal {:.1}%]",
                    p.others_pct, p.steal_pct
                );
            }
        }

        if let Some(f) = &self.fan {
            let par = self.par.as_ref().map_or(0.0, |p| p.steps_per_s);
            let _ = writeln!(
                s,
                "   one run fanning out  {:>5} items in {:>5.1} s   {:>6.0} items/s = {:.2} of the 16-in-flight steps/s (aim ≥ 0.8)",
                f.items,
                f.secs,
                f.items_per_s(),
                f.items_per_s() / par
            );
            let _ = writeln!(
                s,
                "       written to storage {:.0} bytes/item (16 in flight: {:.0} bytes/step), WAL and checkpoints",
                f.written_per_item, self.par_written_per_step
            );
        }

        let _ = writeln!(s, "\n4. Correctness gates");
        for g in &self.gates {
            let _ = writeln!(
                s,
                "   [{}] {} — {}",
                if g.ok { " ok " } else { "FAIL" },
                g.name,
                g.detail
            );
        }

        let _ = writeln!(s, "\n5. Summary");
        let _ = writeln!(
            s,
            "   overhead per step = {:.3} ms/step (sequential) − {:.3} ms (raw round trip, mean) = {:.3} ms",
            self.seq.as_ref().map_or(f64::NAN, |p| p.ms_per_step),
            self.http_seq_mean_us / 1e3,
            self.overhead_ms()
        );
        if let Some(seq) = &self.seq {
            // Per run, what each of its 3 steps added over a raw round trip (the run's start
            // commit included): (run latency − 3 × raw p50) / 3.
            let added: Vec<f64> = seq
                .lat_ms
                .iter()
                .map(|l| (l - 3.0 * self.http_seq_p50_us / 1e3) / 3.0)
                .collect();
            let _ = writeln!(
                s,
                "   added per sequential step, per run ((run latency − 3 × raw p50) / 3): p50 {:.3} ms, p99 {:.3} ms",
                percentile(&added, 50.0),
                percentile(&added, 99.0)
            );
        }
        let _ = writeln!(
            s,
            "   steps/s with 16 in flight = {:.0}",
            self.par.as_ref().map_or(f64::NAN, |p| p.steps_per_s)
        );
        let _ = writeln!(
            s,
            "   CPU per step = {:.3} ms one run at a time, {:.3} ms with 16 in flight",
            self.cpu_ms().0,
            self.cpu_ms().1
        );
        let _ = writeln!(s, "   ratios runner / floor:");
        for (name, r) in self.ratios() {
            let _ = writeln!(s, "     {r:>7.2}  {name}");
        }
        let _ = writeln!(s, "   aims (reference/benchmark.md):");
        for a in self.aims() {
            let _ = writeln!(
                s,
                "     [{}] {}: {:.3} (aim {} {})",
                if a.met { "met" } else { "NOT MET" },
                a.name,
                a.value,
                a.unit,
                fmt_target(a.target)
            );
        }
        let _ = writeln!(
            s,
            "   cron lateness: not measured here (benches/sched_bench.rs measures the scheduler)"
        );
        banner(&mut s);
        s
    }

    fn json(&self, quick: bool) -> Value {
        let invalid = self.invalid_reasons();
        json!({
            "quick": quick,
            "valid": invalid.is_empty(),
            "invalid_reasons": invalid,
            "counts": self.gates.iter().all(|g| g.ok) && invalid.is_empty(),
            "quiet": {
                "load_start": self.load_start,
                "load_end": self.load_end,
                "fsync_p50_us": self.fsync_p50_us,
                "fsync_p99_us": self.fsync_p99_us,
            },
            "floor": {
                "sqlite_full_commits_per_s": self.sqlite_commits_per_s,
                "sqlite_full_commit_p50_us": self.sqlite_commit_p50_us,
                "sqlite_full_commit_cpu_us": self.sqlite_commit_cpu_us,
                "sqlite_group100_rows_per_s": self.sqlite_group_rows_per_s,
                "http_seq_p50_us": self.http_seq_p50_us,
                "http_seq_mean_us": self.http_seq_mean_us,
                "http_16_req_per_s": self.http_par_req_per_s,
                "sign_ns": self.sign_ns,
                "wf3_floor_1_chain_ms_per_step": self.wf3_one_ms_per_step,
                "wf3_floor_16_chains_steps_per_s": self.wf3_many_steps_per_s,
                "wf3_floor_16_chains_group_steps_per_s": self.wf3_group_steps_per_s,
                "wf3_floor_1_chain_writer_thread_ms_per_step": self.wf3_group_one_ms_per_step,
            },
            "runner": {
                "sequential": self.seq.as_ref().map(PhaseReport::json),
                "in_flight_16": self.par.as_ref().map(PhaseReport::json),
                "in_flight_16_written_bytes_per_step": self.par_written_per_step,
                "fan_out": self.fan.as_ref().map(|f| json!({
                    "items": f.items,
                    "seconds": f.secs,
                    "items_per_s": f.items_per_s(),
                    "of_in_flight_16_steps_per_s": self.par.as_ref().map(|p| f.items_per_s() / p.steps_per_s),
                    "written_bytes_per_item": f.written_per_item,
                })),
                "cpu_source": "/proc/self/task/*/schedstat, every thread except the endpoint's",
            },
            "gates": self.gates.iter().map(|g| json!({"name": g.name, "ok": g.ok, "detail": g.detail})).collect::<Vec<_>>(),
            "summary": {
                "overhead_ms_per_step": self.overhead_ms(),
                "steps_per_s_16": self.par.as_ref().map(|p| p.steps_per_s),
                "cpu_ms_per_step": { "sequential": self.cpu_ms().0, "in_flight_16": self.cpu_ms().1 },
                "ratios": self.ratios().into_iter().map(|(n, r)| json!({"name": n, "ratio": r})).collect::<Vec<_>>(),
                "aims": self.aims().into_iter().map(|a| json!({"name": a.name, "value": a.value, "target": a.target, "met": a.met})).collect::<Vec<_>>(),
            },
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Numbers

fn fmt_target(t: f64) -> String {
    if (t - 1.0 / 3.0).abs() < 1e-9 {
        "1/3".to_string()
    } else {
        format!("{t}")
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}
