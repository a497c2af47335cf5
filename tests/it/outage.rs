//! The database going away: unreachable at start (a clear error, exit 2), down for a few seconds
//! and down for longer than a node's lease while runs are in flight (the API answers 503 with
//! `Retry-After`, `/healthz` fails, and when the database is back every run finishes with no
//! completed step sent again); and a node stopped with SIGTERM hands its work over at once.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Daemon, QstashReceiver, receiver_log, temp_dir, write};

const TOKEN: &str = "outage-test-token-0123456789";

#[test]
fn a_database_that_cannot_be_reached_at_start_is_a_clear_error_without_the_password() {
    let dir = temp_dir();
    std::fs::create_dir(dir.path().join("wf")).expect("dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    // Nothing listens on `port` any more.
    let url = format!("postgres://runner:s3cret-pw@127.0.0.1:{port}/nowhere");
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir.path().join("wf"))
        .args(["--db", &url])
        .env_remove("RUNNER_DB")
        .stdin(Stdio::null())
        .output()
        .expect("run runner");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    for part in ["127.0.0.1", &port.to_string(), "nowhere"] {
        assert!(err.contains(part), "the error does not name {part}: {err}");
    }
    assert!(
        !err.contains("s3cret-pw"),
        "the password is in the error: {err}"
    );
}

fn start_chaos_runs(api: &crate::support::Api, n: usize) -> Vec<String> {
    (0..n).map(|_| api.start_run("flow", "{}")).collect()
}

/// Every run succeeded, each http step once, and no attempt was sent twice.
fn check(api: &crate::support::Api, ids: &[String], receiver: &QstashReceiver) {
    let log = receiver_log(receiver);
    for id in ids {
        let run = api.wait_run(id, Duration::from_secs(90));
        assert_eq!(run["status"], "succeeded", "{run:#}");
        for s in run["steps"].as_array().expect("steps") {
            if s["kind"] != "http" {
                continue;
            }
            let wins = s["attempt_log"]
                .as_array()
                .expect("log")
                .iter()
                .filter(|a| a["outcome"] == "succeeded")
                .count();
            assert_eq!(wins, 1, "{s:#}");
            let mut seen: HashMap<String, usize> = HashMap::new();
            for r in log.iter().filter(|r| {
                r["headers"]["runner-run-id"] == *id && r["headers"]["runner-step"] == s["id"]
            }) {
                *seen
                    .entry(
                        r["headers"]["upstash-retried"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                    )
                    .or_default() += 1;
            }
            assert!(
                seen.values().all(|n| *n == 1),
                "an attempt sent twice: {seen:?} {s:#}"
            );
        }
    }
}

fn flow_workflow(dir: &std::path::Path, receiver: &QstashReceiver) {
    write(
        dir,
        "flow.yaml",
        &format!(
            "name: flow\non: {{ webhook: true }}\nsteps:\n  - id: a\n    http: {{ url: \"{}\" }}\n  - id: nap\n    sleep: 1s\n  - id: b\n    http: {{ url: \"{}\" }}\n",
            receiver.url("/slow/1500"),
            receiver.url("/ok")
        ),
    );
}

#[test]
fn runs_in_flight_survive_the_database_going_away_briefly_and_for_longer_than_the_lease() {
    if !crate::pg::enabled() {
        eprintln!("skipped: restarts the tests' PostgreSQL server (RUNNER_TEST_BACKEND=postgres)");
        return;
    }
    let receiver = QstashReceiver::start();
    let tmp = temp_dir();
    let wf = tmp.path().join("wf");
    std::fs::create_dir(&wf).expect("dir");
    flow_workflow(&wf, &receiver);
    // A server of its own: stopping the shared one would fail the tests running beside.
    let server: &'static crate::pg::Server = Box::leak(Box::new(crate::pg::Server::own()));
    let db = tmp.path().join("outage.db");
    let mut cmd = crate::support::runner_cmd();
    cmd.arg("serve")
        .arg("--dir")
        .arg(&wf)
        .arg("--db")
        .arg(&db)
        .args(["--listen", "127.0.0.1:0", "--api-token", TOKEN])
        .env("RUNNER_TEST_PG", &server.base);
    let daemon = Daemon::spawn(cmd, tmp.path().join("daemon.stderr"), Some(TOKEN));
    let api = daemon.api();
    for down in [Duration::from_secs(5), Duration::from_secs(14)] {
        let ids = start_chaos_runs(&api, 8);
        std::thread::sleep(Duration::from_millis(700));
        // Stop the server in a thread: the daemon is probed while it is down.
        let restart = std::thread::spawn(move || server.restart("fast", down));
        std::thread::sleep(Duration::from_millis(1500));
        let health =
            crate::support::http_request("GET", &format!("{}/healthz", daemon.base), &[], None)
                .expect("healthz answers");
        assert_eq!(
            health.status, 503,
            "/healthz while the database is down: {}",
            health.body
        );
        let auth = format!("Bearer {TOKEN}");
        let started = crate::support::http_request(
            "POST",
            &format!("{}/api/v1/workflows/flow/runs", daemon.base),
            &[("Authorization", &auth)],
            Some("{}"),
        )
        .expect("the API answers");
        assert_eq!(started.status, 503, "{}", started.body);
        assert!(started.header("retry-after").is_some(), "{started:?}");
        assert!(started.json()["error"].is_string(), "{}", started.body);
        restart.join().expect("restart");
        check(&api, &ids, &receiver);
        let (status, _) = api.get("/runs?limit=1");
        assert_eq!(status, 200, "the API answers again after a {down:?} outage");
    }
    let logs = daemon.logs();
    assert!(
        logs.contains("lease lapsed"),
        "a 14 s outage outlasts the 10 s lease: the node must have started over\n{logs}"
    );
}

#[test]
fn a_node_stopped_with_sigterm_hands_its_work_over_at_once() {
    if !crate::pg::enabled() {
        eprintln!("skipped: several daemons share a database on PostgreSQL only");
        return;
    }
    let receiver = QstashReceiver::start();
    let tmp = temp_dir();
    let wf = tmp.path().join("wf");
    std::fs::create_dir(&wf).expect("dir");
    write(
        &wf,
        "two.yaml",
        &format!(
            "name: two\non: {{ webhook: true }}\nsteps:\n  - id: a\n    http: {{ url: \"{}\" }}\n  - id: b\n    http: {{ url: \"{}\" }}\n",
            receiver.url("/slow/2000"),
            receiver.url("/ok")
        ),
    );
    let db = tmp.path().join("handover.db");
    let mut a = Daemon::start(&wf, &db, Some(TOKEN));
    let b = Daemon::start(&wf, &db, Some(TOKEN));
    let ids: Vec<String> = (0..6).map(|_| a.api().start_run("two", "{}")).collect();
    std::thread::sleep(Duration::from_millis(500));
    // Stopping, `a` finishes its calls in flight; what they lead to (step `b`) it does not start
    // but gives back, and `b` performs it within about a second of `a`'s end.
    a.signal("TERM");
    a.wait_exit(Duration::from_secs(20));
    let stopped = crate::support::now_ms();
    for id in &ids {
        let run = b.api().wait_run(id, Duration::from_secs(30));
        assert_eq!(run["status"], "succeeded", "{run:#}");
    }
    let log = receiver_log(&receiver);
    let late: Vec<i64> = log
        .iter()
        .filter(|r| r["path"] == "/ok")
        .filter_map(|r| r["time"].as_i64())
        .map(|t| t - stopped)
        .collect();
    assert_eq!(late.len(), ids.len(), "{log:#?}");
    let worst = late.iter().copied().max().unwrap_or(0);
    eprintln!("handover: step `b` sent at most {worst} ms after the stopped node exited");
    assert!(
        worst <= 1_500,
        "step `b` was sent {worst} ms after the node stopped: {late:?}"
    );
    let _: Value = Value::Null;
}
