//! Runs per key (`concurrency.key` / `limit` / `on_limit`) against the real daemon and the real
//! QStash Receiver on 127.0.0.1: runs with one key never overlap beyond the limit while runs
//! with other keys go at once; queued runs start in order of creation; `skip` records the run
//! as cancelled with the reason; `cancel_running` cancels the run going; a `kill -9` with runs
//! queued loses none.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::support::{Daemon, QstashReceiver, receiver_and_workflows, runner_cmd, wait_for, write};

fn file(dir: &Path, receiver: &QstashReceiver, limit: u32, on_limit: &str, ms: u32) {
    write(
        dir,
        "sync.yaml",
        &format!(
            r#"name: sync
on: {{ webhook: true }}
inputs:
  user: {{ type: string, required: true }}
  n: {{ type: integer, default: 0 }}
concurrency:
  key: "sync-{{{{ input.user }}}}"
  limit: {limit}
  on_limit: {on_limit}
steps:
  - id: call
    http: {{ url: "{}/slow/{ms}?user={{{{ input.user }}}}&n={{{{ input.n }}}}" }}
"#,
            receiver.base
        ),
    );
}

fn time(v: &Value, field: &str) -> DateTime<Utc> {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("`{field}` of {v:#}"))
        .parse()
        .expect("an RFC 3339 time")
}

/// Waits (at most `secs`) for run `id` to end, and asserts it succeeded.
fn succeeded(api: &crate::support::Api, id: &str, secs: u64) {
    let done = api.wait_run(id, Duration::from_secs(secs));
    assert_eq!(done["status"], "succeeded", "{done:#}");
}

/// The most runs of `runs` going at one moment (from their start and finish times).
fn most_at_once(runs: &[Value]) -> usize {
    let mut edges: Vec<(DateTime<Utc>, i32)> = runs
        .iter()
        .flat_map(|r| [(time(r, "started_at"), 1), (time(r, "finished_at"), -1)])
        .collect();
    // A finish and a start at the same millisecond do not overlap.
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

#[test]
fn runs_with_one_key_queue_in_order_and_other_keys_go_at_once() {
    let (receiver, dir, wf) = receiver_and_workflows();
    file(&wf, &receiver, 1, "queue", 300);
    let daemon = Daemon::start(&wf, &dir.path().join("queue.db"), None);
    let api = daemon.api();
    let a: Vec<String> = (0..3)
        .map(|n| api.start_run("sync", &format!(r#"{{"user": "a", "n": {n}}}"#)))
        .collect();
    let b = api.start_run("sync", r#"{"user": "b"}"#);
    // The second and third of `a` wait, and say so.
    let (_, queued) = api.get(&format!("/runs/{}", a[2]));
    assert_eq!(queued["status"], "pending", "{queued:#}");
    assert_eq!(queued["concurrency_key"], "sync-a", "{queued:#}");
    assert!(
        queued["waiting_for"]
            .as_str()
            .unwrap()
            .contains("concurrency key `sync-a`"),
        "{queued:#}"
    );
    let runs_a: Vec<Value> = a
        .iter()
        .map(|id| api.wait_run(id, Duration::from_secs(30)))
        .collect();
    let run_b = api.wait_run(&b, Duration::from_secs(30));
    for r in runs_a.iter().chain([&run_b]) {
        assert_eq!(r["status"], "succeeded", "{r:#}");
    }
    assert_eq!(most_at_once(&runs_a), 1, "runs of key sync-a overlapped");
    for pair in runs_a.windows(2) {
        let (end, next) = (time(&pair[0], "finished_at"), time(&pair[1], "started_at"));
        assert!(
            end <= next,
            "queued runs start in order of creation: {pair:#?}"
        );
        // Started by the finish itself, not found later by the daemon's 5-second sweep.
        assert!(
            next - end < chrono::Duration::milliseconds(2500),
            "the next run started {} ms after the key was free",
            (next - end).num_milliseconds()
        );
    }
    let mut all = runs_a.clone();
    all.push(run_b);
    assert_eq!(most_at_once(&all), 2, "key sync-b waited for sync-a");
    // `/metrics` counts them by workflow (and the attempts by step).
    let metrics = crate::support::ureq_get(&format!("{}/metrics", daemon.base));
    for line in [
        "runner_runs_started_total{workflow=\"sync\"} 4",
        "runner_runs_finished_total{workflow=\"sync\",status=\"succeeded\"} 4",
        "runner_step_attempt_seconds_count{workflow=\"sync\",step=\"call\"} 4",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[test]
fn a_limit_of_two_lets_two_go_and_never_three() {
    let (receiver, dir, wf) = receiver_and_workflows();
    file(&wf, &receiver, 2, "queue", 400);
    let daemon = Daemon::start(&wf, &dir.path().join("two.db"), None);
    let api = daemon.api();
    let ids: Vec<String> = (0..6)
        .map(|n| api.start_run("sync", &format!(r#"{{"user": "a", "n": {n}}}"#)))
        .collect();
    let runs: Vec<Value> = ids
        .iter()
        .map(|id| api.wait_run(id, Duration::from_secs(30)))
        .collect();
    assert!(runs.iter().all(|r| r["status"] == "succeeded"), "{runs:#?}");
    assert_eq!(most_at_once(&runs), 2, "{runs:#?}");
}

#[test]
fn skip_records_the_run_as_cancelled_with_the_run_it_gave_way_to() {
    let (receiver, dir, wf) = receiver_and_workflows();
    file(&wf, &receiver, 1, "skip", 500);
    let daemon = Daemon::start(&wf, &dir.path().join("skip.db"), None);
    let api = daemon.api();
    let first = api.start_run("sync", r#"{"user": "a"}"#);
    let (status, second) = api.post("/workflows/sync/runs", r#"{"user": "a"}"#);
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["status"], "cancelled", "{second:#}");
    let reason = second["cancel_reason"].as_str().expect("a reason");
    assert!(
        reason.contains(&first) && reason.contains("sync-a") && reason.contains("skip"),
        "{reason}"
    );
    // Another key is not held back, and once the first ended the key is free again.
    let other = api.start_run("sync", r#"{"user": "b"}"#);
    succeeded(&api, &first, 30);
    succeeded(&api, &other, 30);
    let third = api.start_run("sync", r#"{"user": "a"}"#);
    succeeded(&api, &third, 30);
}

#[test]
fn cancel_running_cancels_the_run_going_and_starts_the_new_one() {
    let (receiver, dir, wf) = receiver_and_workflows();
    file(&wf, &receiver, 1, "cancel_running", 1500);
    let daemon = Daemon::start(&wf, &dir.path().join("cancel.db"), None);
    let api = daemon.api();
    let first = api.start_run("sync", r#"{"user": "a", "n": 1}"#);
    wait_for(Duration::from_secs(10), "the first run's call", || {
        let (_, v) = api.get(&format!("/runs/{first}"));
        (v["steps"][0]["status"] == "running").then_some(())
    });
    let second = api.start_run("sync", r#"{"user": "a", "n": 2}"#);
    let done = api.wait_run(&first, Duration::from_secs(10));
    assert_eq!(done["status"], "cancelled", "{done:#}");
    assert!(
        done["cancel_reason"].as_str().unwrap().contains(&second),
        "{done:#}"
    );
    let done = api.wait_run(&second, Duration::from_secs(30));
    assert_eq!(done["status"], "succeeded", "{done:#}");
}

#[test]
fn kill_9_with_runs_queued_behind_a_key_loses_none() {
    let (receiver, dir, wf) = receiver_and_workflows();
    file(&wf, &receiver, 1, "queue", 800);
    let db = dir.path().join("kill.db");
    let mut daemon = Daemon::start(&wf, &db, None);
    let ids: Vec<String> = (0..3)
        .map(|n| {
            daemon
                .api()
                .start_run("sync", &format!(r#"{{"user": "a", "n": {n}}}"#))
        })
        .collect();
    wait_for(Duration::from_secs(10), "the first run's call", || {
        let (_, v) = daemon.api().get(&format!("/runs/{}", ids[0]));
        (v["steps"][0]["status"] == "running").then_some(())
    });
    daemon.kill9();
    let daemon = Daemon::start(&wf, &db, None);
    let runs: Vec<Value> = ids
        .iter()
        .map(|id| daemon.api().wait_run(id, Duration::from_secs(30)))
        .collect();
    assert!(runs.iter().all(|r| r["status"] == "succeeded"), "{runs:#?}");
    assert_eq!(most_at_once(&runs), 1, "{runs:#?}");
}

#[test]
fn two_daemons_on_one_postgresql_share_a_keys_limit() {
    if !crate::pg::enabled() {
        // Several daemons share a database only on PostgreSQL; this runs in the suite's
        // PostgreSQL pass (`RUNNER_TEST_BACKEND=postgres`).
        return;
    }
    let (receiver, dir, wf) = receiver_and_workflows();
    file(&wf, &receiver, 1, "queue", 300);
    let db = dir.path().join("shared.db");
    let daemons = [Daemon::start(&wf, &db, None), Daemon::start(&wf, &db, None)];
    // Started from both at once: each start counts and queues under the key's lock.
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|n| {
                let api = daemons[n % 2].api();
                s.spawn(move || api.start_run("sync", &format!(r#"{{"user": "a", "n": {n}}}"#)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let runs: Vec<Value> = ids
        .iter()
        .map(|id| daemons[0].api().wait_run(id, Duration::from_secs(30)))
        .collect();
    assert!(runs.iter().all(|r| r["status"] == "succeeded"), "{runs:#?}");
    assert_eq!(most_at_once(&runs), 1, "{runs:#?}");
}

#[test]
fn a_run_queued_longer_than_its_queue_timeout_is_cancelled_and_the_queue_moves_on() {
    let (receiver, dir, wf) = receiver_and_workflows();
    write(
        &wf,
        "sync.yaml",
        &format!(
            r#"name: sync
on: {{ webhook: true }}
inputs:
  user: {{ type: string, required: true }}
concurrency:
  key: "sync-{{{{ input.user }}}}"
  queue_timeout: 1s
steps:
  - id: call
    http: {{ url: "{}/slow/2500" }}
"#,
            receiver.base
        ),
    );
    let daemon = Daemon::start(&wf, &dir.path().join("timeout.db"), None);
    let api = daemon.api();
    let first = api.start_run("sync", r#"{"user": "a"}"#);
    let second = api.start_run("sync", r#"{"user": "a"}"#);
    let gone = api.wait_run(&second, Duration::from_secs(10));
    assert_eq!(gone["status"], "cancelled", "{gone:#}");
    assert!(
        gone["cancel_reason"]
            .as_str()
            .unwrap()
            .contains("did not start within its queue_timeout of 1s"),
        "{gone:#}"
    );
    assert!(gone["started_at"].is_null(), "it never started: {gone:#}");
    succeeded(&api, &first, 10);
    // The key is free again: a new run starts at once.
    let third = api.start_run("sync", r#"{"user": "a"}"#);
    succeeded(&api, &third, 10);
}

#[test]
fn the_retry_metric_counts_the_attempts_scheduled_again_not_the_last_failure() {
    let (receiver, dir, wf) = receiver_and_workflows();
    write(
        &wf,
        "flaky.yaml",
        &format!(
            "name: flaky\non: {{ webhook: true }}\nsteps:\n  - id: call\n    http: {{ url: \"{}/flaky/5\" }}\n    retry: {{ limit: 2, backoff: fixed, initial: 100ms }}\n",
            receiver.base
        ),
    );
    let daemon = Daemon::start(&wf, &dir.path().join("retries.db"), None);
    let id = daemon.api().start_run("flaky", "{}");
    let done = daemon.api().wait_run(&id, Duration::from_secs(20));
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(done["steps"][0]["attempts"], 3);
    let metrics = crate::support::ureq_get(&format!("{}/metrics", daemon.base));
    assert!(
        metrics.contains("runner_step_retries_total{workflow=\"flaky\",step=\"call\"} 2"),
        "3 attempts are 2 retries:\n{metrics}"
    );
}

#[test]
fn runner_run_queued_behind_a_key_waits_its_turn_and_ends() {
    let (receiver, dir, wf) = receiver_and_workflows();
    file(&wf, &receiver, 1, "queue", 1500);
    let db = dir.path().join("fg.db");
    let (current, next) = crate::support::test_keys();
    let run = |n: u32| {
        runner_cmd()
            .env("RUNNER_SIGNING_KEY", &current)
            .env("RUNNER_NEXT_SIGNING_KEY", &next)
            .args(["run", "sync", "--input"])
            .arg(format!(r#"{{"user": "a", "n": {n}}}"#))
            .arg("--db")
            .arg(&db)
            .arg("--dir")
            .arg(&wf)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("runner run")
    };
    let first = run(1);
    wait_for(Duration::from_secs(10), "the first run's call", || {
        crate::support::receiver_log(&receiver)
            .iter()
            .any(|r| r["url"].as_str().unwrap_or("").ends_with("n=1"))
            .then_some(())
    });
    // Two processes, no daemon: the second waits for the first, then runs.
    let second = run(2);
    // Bounded: a `runner run` that never ends is killed, and the test fails below.
    let ended = |mut child: std::process::Child| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait_with_output().unwrap()
    };
    let (a, b) = (ended(first), ended(second));
    let out = String::from_utf8_lossy(&b.stdout).into_owned();
    assert!(a.status.success(), "{a:?}");
    assert!(
        b.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&b.stderr)
    );
    assert!(
        out.contains("queued behind the runs with concurrency key `sync-a`"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("succeeded"), "{out}");
}
