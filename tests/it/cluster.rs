//! Several daemons on one PostgreSQL database (`RUNNER_TEST_BACKEND=postgres`): three nodes share
//! runs of http → sleep → http and a per-minute schedule while they are killed with `kill -9` and
//! started again at seeded random moments, one is paused (SIGSTOP) for longer than its lease, and
//! the database is restarted once. Afterwards: every run succeeded, each schedule slot fired once,
//! no completed step was sent again, every attempt was sent at most once, and an attempt that a
//! death cut short was sent again (same dedup id, `Upstash-Retried` one higher) within 15 s. And an
//! approval link clicked on two nodes at once decides once.
//!
//! The seed is printed; `CLUSTER_SEED=<n>` replays the kill schedule.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::Value;

use crate::support::{
    Daemon, QstashReceiver, chaos_rng, now_ms, receiver_log, runner_cmd, temp_dir, wait_for, write,
};

const TOKEN: &str = "cluster-test-token-0123456789";
const NODES: usize = 3;
const KILLS: usize = 30;
/// A kill every this long, on average.
const KILL_EVERY_MS: u64 = 2_500;
/// How long a paused node stays stopped: longer than the lease (10 s) and its grace (2 s).
const PAUSE: Duration = Duration::from_secs(15);
/// Re-sent within 15 s of the death, and the original request may have started up to its own
/// duration (the endpoint answers after 0.8 s) before; plus the receiver's stamping slack.
const RESEND_LIMIT_MS: i64 = 15_000 + 800 + 1_500;

fn ms(v: &Value) -> Option<i64> {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.timestamp_millis())
}

fn serve(pg: &str, dir: &Path, db: &Path, outbox: &Path, n: usize) -> Daemon {
    let mut cmd = runner_cmd();
    cmd.env("RUNNER_TEST_PG", pg);
    cmd.arg("serve")
        .arg("--dir")
        .arg(dir)
        .arg("--db")
        .arg(db)
        .arg("--outbox")
        .arg(outbox)
        .args(["--listen", "127.0.0.1:0", "--api-token", TOKEN]);
    Daemon::spawn(
        cmd,
        db.with_extension(format!("node-{n}.stderr")),
        Some(TOKEN),
    )
}

fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -s {name} {pid}");
}

/// The records of the receiver for one step of one run.
fn requests_of(log: &[Value], run: &str, step: &str) -> Vec<Value> {
    log.iter()
        .filter(|r| r["headers"]["runner-run-id"] == run && r["headers"]["runner-step"] == step)
        .cloned()
        .collect()
}

#[test]
fn three_daemons_share_the_work_and_survive_kills_a_pause_and_a_database_restart() {
    if !crate::pg::enabled() {
        eprintln!(
            "skipped: several daemons share a database on PostgreSQL only (RUNNER_TEST_BACKEND=postgres)"
        );
        return;
    }
    let receiver = QstashReceiver::start();
    let tmp = temp_dir();
    // `CLUSTER_KEEP=1` keeps the nodes' logs (and prints where) to look into a failure.
    let tmp_path = tmp.path().to_path_buf();
    let _tmp = if std::env::var("CLUSTER_KEEP").is_ok() {
        eprintln!("cluster test: files kept in {}", tmp_path.display());
        let _ = tmp.keep();
        None
    } else {
        Some(tmp)
    };
    let wf = tmp_path.join("workflows");
    std::fs::create_dir(&wf).expect("dir");
    write(
        &wf,
        "chaos.yaml",
        &format!(
            "name: chaos\non: {{ webhook: true }}\nsteps:\n  - id: a\n    http: {{ url: \"{0}\" }}\n  - id: nap\n    sleep: 1s\n  - id: b\n    http: {{ url: \"{1}\" }}\n",
            receiver.url("/slow/300"),
            receiver.url("/slow/800")
        ),
    );
    write(
        &wf,
        "tick.yaml",
        &format!(
            "name: tick\non:\n  schedule:\n    - cron: \"* * * * *\"\nconcurrency: {{ overlap: allow_all }}\nsteps:\n  - id: t\n    http: {{ url: \"{}\" }}\n",
            receiver.url("/ok")
        ),
    );
    write(
        &wf,
        "gate.yaml",
        "name: gate\non: { webhook: true }\nsteps:\n  - id: review\n    approval: { to: [ed@example.com], subject: Go? }\n",
    );
    // A server of its own: it is restarted, which would fail the tests running beside.
    let server = crate::pg::Server::own();
    let db = tmp_path.join("cluster.db");
    let outbox = tmp_path.join("outbox");
    let mut nodes: Vec<Daemon> = (0..NODES)
        .map(|n| serve(&server.base, &wf, &db, &outbox, n))
        .collect();
    let mut started = NODES;
    let api = |nodes: &[Daemon], i: usize| nodes[i % nodes.len()].api();

    // An approval link clicked on two nodes at once decides once.
    let gate = api(&nodes, 0).start_run("gate", "{}");
    let token = wait_for(Duration::from_secs(20), "the approval e-mail", || {
        let files = std::fs::read_dir(&outbox).ok()?;
        for f in files.flatten() {
            let raw = std::fs::read(f.path()).ok()?;
            let parsed = mailparse::parse_mail(&raw).ok()?;
            let text = parsed
                .subparts
                .iter()
                .find(|p| p.ctype.mimetype == "text/plain")
                .unwrap_or(&parsed)
                .get_body()
                .ok()?;
            if let Some(i) = text.find("/approvals/") {
                let rest = &text[i + "/approvals/".len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                    .unwrap_or(rest.len());
                // The first link is the Approve one.
                return Some(rest[..end].to_string());
            }
        }
        None
    });
    let clicks: Vec<_> = [0, 1]
        .into_iter()
        .map(|i| {
            let url = format!("{}/approvals/{token}", nodes[i].base);
            std::thread::spawn(move || {
                crate::support::http_request(
                    "POST",
                    &url,
                    &[("Content-Type", "application/x-www-form-urlencoded")],
                    Some("comment=both"),
                )
                .expect("click")
                .status
            })
        })
        .collect();
    let mut statuses: Vec<u16> = clicks
        .into_iter()
        .map(|t| t.join().expect("click"))
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "two clicks on two nodes: one decides");
    let run = api(&nodes, 2).wait_run(&gate, Duration::from_secs(20));
    assert_eq!(run["status"], "succeeded", "{run:#}");

    // Runs started at a steady pace on every node, while nodes die and come back.
    let (mut rng, seed) = chaos_rng("CLUSTER_SEED", "cluster test");
    let mut ids: Vec<String> = Vec::new();
    let mut deaths: Vec<(i64, String)> = Vec::new();
    let mut kills = 0;
    let mut paused = false;
    let mut restarted_db = false;
    let began = Instant::now();
    let mut next_kill = Instant::now() + Duration::from_millis(KILL_EVERY_MS);
    while kills < KILLS {
        // Start runs on a live node (a node being killed may refuse: try the next).
        for _ in 0..2 {
            let i = rng.random_range(0..nodes.len());
            let (status, v) = api(&nodes, i)
                .try_call("POST", "/workflows/chaos/runs", &[], Some("{}"))
                .unwrap_or((0, Value::Null));
            if status == 201 {
                ids.push(v["id"].as_str().expect("id").to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(250));
        if Instant::now() < next_kill {
            continue;
        }
        next_kill = Instant::now()
            + Duration::from_millis(rng.random_range(KILL_EVERY_MS / 2..KILL_EVERY_MS * 3 / 2));
        let i = rng.random_range(0..nodes.len());
        if kills == KILLS / 3 && !paused {
            // Paused past its lease: another node takes its work; when it resumes it must not
            // commit what it had in flight, and starts over as a new node.
            paused = true;
            let pid = nodes[i].pid();
            signal(pid, "STOP");
            deaths.push((now_ms(), format!("pause of node {i}")));
            std::thread::sleep(PAUSE);
            signal(pid, "CONT");
            continue;
        }
        if kills == 2 * KILLS / 3 && !restarted_db {
            restarted_db = true;
            deaths.push((now_ms(), "database restart".into()));
            server.restart("fast", Duration::from_secs(2));
            continue;
        }
        let at = nodes[i].kill9();
        deaths.push((at, format!("kill -9 of node {i}")));
        kills += 1;
        nodes[i] = serve(&server.base, &wf, &db, &outbox, started);
        started += 1;
    }
    let chaos = began.elapsed();
    eprintln!(
        "cluster test: seed {seed}, {kills} kills, {} runs started, chaos {:.0} s",
        ids.len(),
        chaos.as_secs_f64()
    );

    // Every run finishes.
    let mut runs = BTreeMap::new();
    for id in &ids {
        runs.insert(
            id.clone(),
            api(&nodes, 0).wait_run(id, Duration::from_secs(120)),
        );
    }
    let log = receiver_log(&receiver);
    let mut interrupted = 0usize;
    let mut gaps: Vec<i64> = Vec::new();
    for (id, run) in &runs {
        assert_eq!(run["status"], "succeeded", "run {id}:\n{run:#}");
        for s in run["steps"].as_array().expect("steps") {
            let sid = s["id"].as_str().expect("step id");
            if s["kind"] != "http" {
                continue;
            }
            let what = format!("step `{sid}` of run {id}");
            let log_of = s["attempt_log"].as_array().expect("attempt log");
            let wins: Vec<&Value> = log_of
                .iter()
                .filter(|a| a["outcome"] == "succeeded")
                .collect();
            assert_eq!(wins.len(), 1, "{what}: not exactly one success:\n{s:#}");
            let done_at = ms(&wins[0]["finished_at"]).expect("finished_at");
            let reqs = requests_of(&log, id, sid);
            let mut by_retried: HashMap<u64, i64> = HashMap::new();
            for r in &reqs {
                let h = &r["headers"];
                assert_eq!(r["valid"], true, "{what}: refused by the receiver: {r:#}");
                assert_eq!(h["upstash-message-id"], s["dedup_id"], "{what}: {r:#}");
                let retried: u64 = h["upstash-retried"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .expect("retried");
                let t = r["time"].as_i64().expect("time");
                assert!(
                    t <= done_at + 50,
                    "{what}: sent at {t}, after it completed at {done_at}"
                );
                assert!(
                    by_retried.insert(retried, t).is_none(),
                    "{what}: two requests with Upstash-Retried {retried}"
                );
            }
            for a in log_of.iter().filter(|a| a["outcome"] == "interrupted") {
                interrupted += 1;
                let n = a["attempt"].as_u64().expect("attempt");
                // The interrupted attempt n was sent as Upstash-Retried n-1 (or not at all, when
                // its node died between committing it and sending it); the next one as n.
                if let (Some(first), Some(again)) = (by_retried.get(&(n - 1)), by_retried.get(&n)) {
                    gaps.push(again - first);
                    assert!(
                        again - first <= RESEND_LIMIT_MS,
                        "{what}: attempt {n} was sent at {first} and again only at {again} ({} ms later; deaths: {deaths:?})",
                        again - first
                    );
                }
            }
        }
    }
    gaps.sort_unstable();
    eprintln!(
        "cluster test: {interrupted} attempts interrupted and sent again; re-send delay after the first send: median {} ms, max {} ms",
        gaps.get(gaps.len() / 2).copied().unwrap_or(0),
        gaps.last().copied().unwrap_or(0)
    );
    assert!(
        interrupted > 0,
        "no kill caught an attempt in flight: the test proved nothing"
    );

    // Each minute's slot fired once: one run per slot, one request per run.
    let url = crate::pg::db_arg_on(&server.base, &db);
    let slots = crate::pg::rows(
        &url,
        "SELECT slot, coalesce(run_id, '') FROM slots WHERE schedule LIKE 'yaml:tick:%'",
    );
    assert!(!slots.is_empty(), "the per-minute schedule never fired");
    let tick_runs = crate::pg::rows(&url, "SELECT id FROM runs WHERE workflow = 'tick'");
    assert_eq!(
        tick_runs.len(),
        slots.len(),
        "runs of the schedule: {tick_runs:?}, slots: {slots:?}"
    );
    let mut tick_requests: HashMap<String, usize> = HashMap::new();
    for r in log
        .iter()
        .filter(|r| r["headers"]["runner-workflow"] == "tick")
    {
        *tick_requests
            .entry(
                r["headers"]["upstash-message-id"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
            .or_default() += 1;
    }
    for run in &tick_runs {
        let v = api(&nodes, 1).wait_run(&run[0], Duration::from_secs(60));
        assert_eq!(v["status"], "succeeded", "{v:#}");
    }
    // The nodes that are alive are listed, and one leads.
    let (status, listed) = api(&nodes, 0).get("/nodes");
    assert_eq!(status, 200);
    let live = listed.as_array().expect("nodes");
    assert!(live.len() >= NODES, "{listed:#}");
    assert_eq!(
        live.iter().filter(|n| n["leader"] == true).count(),
        1,
        "{listed:#}"
    );
}
