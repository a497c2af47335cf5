//! `bench --db postgres://USER@HOST:PORT` (a server the bench may create databases on) or
//! `bench --postgres` (a server of its own: Debian's `postgresql`, `initdb` into a temporary
//! folder, default durability settings): runner on PostgreSQL, and its floor on the same server.
//!
//! In one run:
//! - floor: HTTP round trips to the same endpoint (as the SQLite bench);
//! - floor: `pgbench` of the transaction runner commits for a step (lease check, run read
//!   `FOR UPDATE`, event insert, run update, outbox delete and insert, with rows of the sizes runner
//!   wrote in its warm-up), 16 clients and 1 client;
//! - runner, one node: runs of three signed POSTs one at a time (added latency per step) and 16
//!   in flight;
//! - runner, two nodes on one database (two executors in this process, each with its own pool,
//!   lease and writer lanes), 16 in flight shared between them.
//!
//! Gates (the program exits 1 when one fails): the endpoint counted 3N requests; each database
//! holds N succeeded runs with 3N succeeded attempts; every run succeeded.

use super::{
    Endpoint, IN_FLIGHT, Phase, Sizes, bench_version, http_sequential, run_parallel as parallel,
    run_sequential,
};
use crate::common::percentile;
use anyhow::{Context, Result, anyhow, bail};
use runner::runtime::Executor as Engine;
use runner::sign::Keys;
use runner::store::Store;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The aims of issue 13 on a 2-core machine with the database on the same machine.
const AIM_STEPS_PER_S: f64 = 3000.0;
const AIM_OF_FLOOR: f64 = 0.5;
const AIM_ADDED_MS: f64 = 1.5;

pub(crate) fn main(server: Option<String>, quick: bool, json_out: bool) -> Result<()> {
    let sizes = Sizes::new(quick);
    let progress = |what: &str| {
        if !json_out {
            eprintln!("… {what}");
        }
    };
    let own;
    let base = match server {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            progress("starting a PostgreSQL server of its own");
            own = OwnServer::start()?;
            own.base.clone()
        }
    };
    let endpoint = Endpoint::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bench-runner")
        .enable_all()
        .build()
        .context("building the runtime")?;
    let mut r = PgReport::default();
    let client = runner::dispatch::http::client();
    let floor_url = format!("{}/floor", endpoint.base);
    let mut total_runs = 0usize;

    rt.block_on(async {
        let one = create_database(&base, "runner_bench_one").await?;
        let two = create_database(&base, "runner_bench_two").await?;
        let floor = create_database(&base, "runner_bench_floor").await?;
        let version = bench_version(&endpoint.base)?;

        progress("floor: HTTP round trips");
        http_sequential(&client, &floor_url, 200, sizes.floor_time).await?;
        let seq = http_sequential(&client, &floor_url, sizes.http_seq, sizes.floor_time).await?;
        r.http_seq_mean_us = super::mean(&seq);
        let http_requests = endpoint.count();

        // One node.
        let a = node(&one, "bench-a").await?;
        progress("runner, one node: warm-up");
        let warm = run_sequential(&a, &version, 20, Duration::from_secs(10)).await?;
        total_runs += warm.runs;
        r.failed += warm.failed;
        let rows = row_sizes(&one).await?;
        r.row_sizes = rows;

        progress("floor: pgbench of a step's transaction, 16 clients and 1");
        let script = floor_script(&floor, rows).await?;
        let secs = sizes.floor_time.as_secs().max(3);
        let (tps16, _) = pgbench(&floor, &script, IN_FLIGHT, secs)?;
        let (tps1, lat1) = pgbench(&floor, &script, 1, secs)?;
        r.floor_tps_16 = tps16;
        r.floor_tps_1 = tps1;
        r.floor_lat_1_ms = lat1;

        progress("runner, one node: one run at a time");
        let p = run_sequential(&a, &version, sizes.seq_runs, sizes.seq_time).await?;
        total_runs += p.runs;
        r.failed += p.failed;
        r.seq = Some(Figures::new(&p));

        progress("runner, one node: 16 in flight");
        let commits0 = xact_commits(&one).await?;
        let p = parallel(
            std::slice::from_ref(&a),
            &version,
            sizes.par_runs,
            sizes.par_time,
        )
        .await?;
        let commits = xact_commits(&one).await? - commits0;
        total_runs += p.runs;
        r.failed += p.failed;
        r.commits_per_step = commits as f64 / (3 * p.runs).max(1) as f64;
        r.par_one = Some(Figures::new(&p));

        progress("runner, two nodes on one database: 16 in flight");
        let b1 = node(&two, "bench-b1").await?;
        let b2 = node(&two, "bench-b2").await?;
        let warm = parallel(&[b1.clone(), b2.clone()], &version, 32, sizes.par_time).await?;
        total_runs += warm.runs;
        r.failed += warm.failed;
        let p = parallel(&[b1, b2], &version, sizes.par_runs, sizes.par_time).await?;
        total_runs += p.runs;
        r.failed += p.failed;
        r.par_two = Some(Figures::new(&p));
        tokio::time::sleep(Duration::from_millis(200)).await;

        r.requests = endpoint.count() - http_requests;
        let (runs_one, attempts_one) = counts(&one).await?;
        let (runs_two, attempts_two) = counts(&two).await?;
        r.db_runs = runs_one + runs_two;
        r.db_attempts = attempts_one + attempts_two;
        anyhow::Ok(())
    })?;
    let n = total_runs.max(1) as u64;
    let gates = [
        (
            "endpoint counted exactly 3N requests",
            r.requests == 3 * n,
            format!("N = {n} runs, {} requests", r.requests),
        ),
        (
            "the databases hold N succeeded runs and 3N succeeded attempts",
            r.db_runs == n && r.db_attempts == 3 * n,
            format!("{} runs, {} attempts", r.db_runs, r.db_attempts),
        ),
        (
            "every run succeeded",
            r.failed == 0,
            format!("{} runs did not succeed", r.failed),
        ),
    ];
    drop(rt);
    if json_out {
        println!("{}", serde_json::to_string_pretty(&r.json(&gates))?);
    } else {
        print!("{}", r.text(&gates));
    }
    if gates.iter().any(|g| !g.1) {
        std::process::exit(1);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The server and its databases

/// A server of the bench's own, stopped when dropped.
struct OwnServer {
    base: String,
    data: PathBuf,
    bin: PathBuf,
    _dir: tempfile::TempDir,
}

fn pg_bin() -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .filter(|p| p.join("initdb").is_file())
        .context("PostgreSQL is not installed (apt-get install postgresql)")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program args…`, as the `postgres` user when this process is root (PostgreSQL refuses root).
fn as_postgres(program: &Path, args: &[&str]) -> Command {
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    c.args(args);
    c
}

impl OwnServer {
    fn start() -> Result<OwnServer> {
        let bin = pg_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("runner-bench-pg-")
            .tempdir()?;
        if is_root() {
            let ok = Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                bail!("cannot give {} to the postgres user", dir.path().display());
            }
        }
        let data = dir.path().join("data");
        let data_s = data.to_str().context("a UTF-8 path")?;
        let out = as_postgres(
            &bin.join("initdb"),
            &["-D", data_s, "-A", "trust", "-U", "postgres"],
        )
        .output()
        .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // Default durability (fsync, synchronous_commit on): every step is on disk when it
        // counts. Only the connection limit is raised.
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            dir.path().display()
        );
        let log = dir.path().join("postgres.log");
        let out = as_postgres(
            &bin.join("pg_ctl"),
            &[
                "-D",
                data_s,
                "-o",
                &opts,
                "-l",
                log.to_str().context("a UTF-8 path")?,
                "-w",
                "start",
            ],
        )
        .stdin(Stdio::null())
        .output()
        .context("running pg_ctl start")?;
        if !out.status.success() {
            bail!(
                "pg_ctl start: {}{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok(OwnServer {
            base: format!("postgres://postgres@127.0.0.1:{port}"),
            data,
            bin,
            _dir: dir,
        })
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        if let Some(data) = self.data.to_str() {
            let _ = as_postgres(
                &self.bin.join("pg_ctl"),
                &["-D", data, "-m", "fast", "stop"],
            )
            .stdout(Stdio::null())
            .status();
        }
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {}", without_password(url)))?;
    tokio::spawn(conn);
    Ok(client)
}

fn without_password(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if url[s + 3..at].contains(':') => {
            let user = &url[s + 3..s + 3 + url[s + 3..at].find(':').unwrap_or(0)];
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// A new, empty database `name` on the server (dropped first if a former bench left it).
async fn create_database(base: &str, name: &str) -> Result<String> {
    let admin = connect(&format!("{base}/postgres")).await?;
    // Two statements sent apart: together they would be one implicit transaction, which
    // CREATE DATABASE refuses.
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        admin
            .batch_execute(&sql)
            .await
            .with_context(|| sql.clone())?;
    }
    Ok(format!("{base}/{name}"))
}

/// An executor on `db` as a daemon builds it: a node with its lease and heartbeat, and the
/// timer loop.
async fn node(db: &str, name: &str) -> Result<Engine> {
    let store = Store::connect(db).await?;
    let keys = Keys {
        current: runner::sign::key_from_random(rand::random()),
        next: runner::sign::key_from_random(rand::random()),
    };
    let dir = tempfile::tempdir()?.keep();
    let engine = runner::testing::executor(store, keys, dir.join("outbox"));
    let info = runner::runtime::node::NodeInfo {
        name: name.into(),
        defs_hash: Default::default(),
    };
    if !runner::runtime::node::register(&engine, &info).await? {
        bail!("{db} is not a shared database");
    }
    tokio::spawn(runner::runtime::node::run(engine.clone(), info));
    tokio::spawn(engine.clone().timer_loop());
    Ok(engine)
}

async fn xact_commits(db: &str) -> Result<i64> {
    let c = connect(db).await?;
    let row = c
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?;
    // The statistics are sent by each backend when it goes idle; give them a moment.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let again = c
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?;
    Ok(row.get::<_, i64>(0).max(again.get(0)))
}

/// (succeeded runs, succeeded attempts) in a runner database.
async fn counts(db: &str) -> Result<(u64, u64)> {
    let c = connect(db).await?;
    let runs: i64 = c
        .query_one("SELECT count(*) FROM runs WHERE status = 'succeeded'", &[])
        .await?
        .get(0);
    let attempts: i64 = c
        .query_one(
            "SELECT count(*) FROM events WHERE attempt IS NOT NULL AND attempt::jsonb ->> 'outcome' = 'succeeded'",
            &[],
        )
        .await?
        .get(0);
    Ok((u64::try_from(runs)?, u64::try_from(attempts)?))
}

/// Mean bytes of what a step writes: (run state, event data, event attempt record).
async fn row_sizes(db: &str) -> Result<[i64; 3]> {
    let c = connect(db).await?;
    let row = c
        .query_one(
            "SELECT (SELECT avg(octet_length(state))::bigint FROM runs),
                    (SELECT avg(octet_length(data))::bigint FROM events),
                    (SELECT avg(octet_length(attempt))::bigint FROM events WHERE attempt IS NOT NULL)",
            &[],
        )
        .await?;
    let get = |i: usize| row.get::<_, Option<i64>>(i).unwrap_or(0);
    Ok([get(0), get(1), get(2)])
}

// ---------------------------------------------------------------------------------------------
// The floor

/// The floor database gets runner's schema, a node and one run per pgbench client; the script is
/// the transaction runner's writer lane commits for one step's outcome, one statement per round
/// trip (pgbench does not pipeline; runner does).
async fn floor_script(db: &str, sizes: [i64; 3]) -> Result<PathBuf> {
    drop(Store::connect(db).await?); // runner's migrations
    let c = connect(db).await?;
    let fill = |n: i64| "x".repeat(usize::try_from(n.max(2)).unwrap_or(2));
    let state = fill(sizes[0]);
    c.execute(
        "INSERT INTO nodes(id, name, version, started_at, heartbeat_at, lease_until) VALUES ('floor', 'floor', '', 0, 0, 9223372036854775807)",
        &[],
    )
    .await?;
    for client in 0..IN_FLIGHT {
        c.execute(
            "INSERT INTO runs(id, workflow, version, status, trigger, created_at, updated_at, state) VALUES ($1, 'floor', 'v', 'running', 'api', 0, 0, $2)",
            &[&format!("floor-{client}"), &state],
        )
        .await?;
    }
    let data = fill(sizes[1]);
    let attempt = fill(sizes[2]);
    let effect = r#"{"call_http":{"step":"two","attempt":1}}"#;
    let script = format!(
        "\\set seq random(1, 9000000000000000000)\n\
         BEGIN;\n\
         SELECT 1 FROM nodes WHERE id = 'floor' AND lease_until > 0 FOR SHARE;\n\
         SELECT rev FROM runs WHERE id = 'floor-' || :client_id FOR UPDATE;\n\
         INSERT INTO events(run_id, seq, at, kind, data, attempt) VALUES ('floor-' || :client_id, :seq, 0, 'step_succeeded', '{data}', '{attempt}');\n\
         UPDATE runs SET status = 'running', updated_at = 1, state = '{state}', rev = rev + 1 WHERE id = 'floor-' || :client_id;\n\
         DELETE FROM outbox WHERE run_id = 'floor-' || :client_id;\n\
         INSERT INTO outbox(run_id, id, effect, created_at, owner) VALUES ('floor-' || :client_id, :seq, '{effect}', 0, 'floor');\n\
         COMMIT;\n"
    );
    let path = tempfile::Builder::new()
        .prefix("runner-floor-")
        .suffix(".sql")
        .tempfile()?
        .into_temp_path()
        .keep()?;
    std::fs::write(&path, script)?;
    // pgbench may run as another user: the script must be readable.
    let _ = Command::new("chmod").arg("644").arg(&path).status();
    Ok(path)
}

/// `pgbench` of the script with `clients` clients for `secs`: (transactions/s, mean latency ms).
fn pgbench(db: &str, script: &Path, clients: usize, secs: u64) -> Result<(f64, f64)> {
    let bin = pg_bin()?.join("pgbench");
    let out = Command::new(&bin)
        .args(["-n", "-M", "prepared", "-j", "2"])
        .arg(format!("-c{clients}"))
        .arg(format!("-T{secs}"))
        .arg("-f")
        .arg(script)
        .arg(db)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("pgbench: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let find = |key: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("pgbench printed no `{key}`: {text}"))
    };
    Ok((find("tps = ")?, find("latency average = ")?))
}

// ---------------------------------------------------------------------------------------------
// runner

// ---------------------------------------------------------------------------------------------
// Report

struct Figures {
    runs: usize,
    steps_per_s: f64,
    ms_per_step: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Figures {
    fn new(p: &Phase) -> Figures {
        let steps = (3 * p.runs).max(1) as f64;
        Figures {
            runs: p.runs,
            steps_per_s: steps / p.secs,
            ms_per_step: p.secs * 1e3 / steps,
            p50_ms: percentile(&p.lat_ms, 50.0),
            p99_ms: percentile(&p.lat_ms, 99.0),
        }
    }

    fn json(&self) -> Value {
        json!({
            "runs": self.runs,
            "steps_per_s": self.steps_per_s,
            "ms_per_step": self.ms_per_step,
            "run_p50_ms": self.p50_ms,
            "run_p99_ms": self.p99_ms,
        })
    }
}

#[derive(Default)]
struct PgReport {
    http_seq_mean_us: f64,
    row_sizes: [i64; 3],
    floor_tps_16: f64,
    floor_tps_1: f64,
    floor_lat_1_ms: f64,
    commits_per_step: f64,
    seq: Option<Figures>,
    par_one: Option<Figures>,
    par_two: Option<Figures>,
    failed: usize,
    requests: u64,
    db_runs: u64,
    db_attempts: u64,
}

impl PgReport {
    fn added_ms(&self) -> f64 {
        self.seq
            .as_ref()
            .map_or(f64::NAN, |s| s.ms_per_step - self.http_seq_mean_us / 1e3)
    }

    fn par(&self, two: bool) -> f64 {
        let p = if two { &self.par_two } else { &self.par_one };
        p.as_ref().map_or(f64::NAN, |p| p.steps_per_s)
    }

    fn text(&self, gates: &[(&str, bool, String)]) -> String {
        let mut t = String::new();
        let line = |t: &mut String, s: String| {
            t.push_str(&s);
            t.push('\n');
        };
        line(
            &mut t,
            "runner bench on PostgreSQL (server on this machine)".into(),
        );
        line(&mut t, "floors".into());
        line(
            &mut t,
            format!(
                "  HTTP round trip (mean)                 {:>9.1} µs",
                self.http_seq_mean_us
            ),
        );
        line(
            &mut t,
            format!(
                "  a step's transaction, pgbench 16 clients {:>7.0} tx/s   (rows: state {} B, event {} B, attempt {} B)",
                self.floor_tps_16, self.row_sizes[0], self.row_sizes[1], self.row_sizes[2]
            ),
        );
        line(
            &mut t,
            format!(
                "  a step's transaction, pgbench 1 client {:>9.0} tx/s   ({:.3} ms each)",
                self.floor_tps_1, self.floor_lat_1_ms
            ),
        );
        line(&mut t, "runner".into());
        if let Some(s) = &self.seq {
            line(
                &mut t,
                format!(
                    "  one run at a time, one node            {:>9.3} ms/step  ({} runs; run p50 {:.2} ms, p99 {:.2} ms)",
                    s.ms_per_step, s.runs, s.p50_ms, s.p99_ms
                ),
            );
        }
        for (name, p) in [
            ("16 in flight, one node  ", &self.par_one),
            ("16 in flight, two nodes ", &self.par_two),
        ] {
            if let Some(p) = p {
                line(
                    &mut t,
                    format!(
                        "  {name}               {:>9.0} steps/s  ({} runs; run p50 {:.2} ms, p99 {:.2} ms)",
                        p.steps_per_s, p.runs, p.p50_ms, p.p99_ms
                    ),
                );
            }
        }
        line(
            &mut t,
            format!(
                "  commits per step (16 in flight, one node) {:.2} (group commit puts several steps in one)",
                self.commits_per_step
            ),
        );
        line(&mut t, "against the aims".into());
        let aim = |ok: bool| if ok { "met" } else { "MISSED" };
        let one = self.par(false);
        let ratio = one / self.floor_tps_16;
        line(
            &mut t,
            format!(
                "  steps/s, 16 in flight, one node        {one:>9.0}   aim ≥ {AIM_STEPS_PER_S:.0}: {}",
                aim(one >= AIM_STEPS_PER_S)
            ),
        );
        line(
            &mut t,
            format!(
                "  of the pgbench floor                   {ratio:>9.2}   aim ≥ {AIM_OF_FLOOR}: {}",
                aim(ratio >= AIM_OF_FLOOR)
            ),
        );
        let added = self.added_ms();
        line(
            &mut t,
            format!(
                "  added per sequential step              {added:>9.3} ms aim ≤ {AIM_ADDED_MS}: {}",
                aim(added <= AIM_ADDED_MS)
            ),
        );
        line(&mut t, "gates".into());
        for (name, ok, detail) in gates {
            line(
                &mut t,
                format!("  [{}] {name}: {detail}", if *ok { "ok" } else { "FAIL" }),
            );
        }
        t
    }

    fn json(&self, gates: &[(&str, bool, String)]) -> Value {
        json!({
            "backend": "postgres",
            "floor": {
                "http_seq_mean_us": self.http_seq_mean_us,
                "pgbench_step_tx_per_s_16": self.floor_tps_16,
                "pgbench_step_tx_per_s_1": self.floor_tps_1,
                "pgbench_step_tx_ms_1": self.floor_lat_1_ms,
                "row_bytes": { "state": self.row_sizes[0], "event": self.row_sizes[1], "attempt": self.row_sizes[2] },
            },
            "sequential": self.seq.as_ref().map(Figures::json),
            "in_flight_16_one_node": self.par_one.as_ref().map(Figures::json),
            "in_flight_16_two_nodes": self.par_two.as_ref().map(Figures::json),
            "commits_per_step": self.commits_per_step,
            "added_ms_per_sequential_step": self.added_ms(),
            "of_floor": self.par(false) / self.floor_tps_16,
            "gates": gates.iter().map(|(n, ok, d)| json!({"name": n, "ok": ok, "detail": d})).collect::<Vec<_>>(),
        })
    }
}
