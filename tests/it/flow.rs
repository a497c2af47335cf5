//! Flow control against the real daemon and the real QStash Receiver on 127.0.0.1, which
//! records how many calls are in flight when each arrives: a key's `parallelism` is never
//! exceeded and is reached, also by two workflows sharing the key; `rate` spreads calls; a 429
//! with `Retry-After` holds back every call of the key; a `kill -9` with calls waiting loses
//! none and leaks no slot.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Daemon, QstashReceiver, receiver_and_workflows, receiver_log, wait_for, write,
};

fn file(dir: &Path, name: &str, receiver: &QstashReceiver, yaml: &str) {
    write(
        dir,
        &format!("{name}.yaml"),
        &format!(
            "name: {name}\non: {{ webhook: true }}\n{}",
            yaml.replace("BASE", &receiver.base)
        ),
    );
}

fn calls(receiver: &QstashReceiver, path_prefix: &str) -> Vec<Value> {
    receiver_log(receiver)
        .into_iter()
        .filter(|r| r["path"].as_str().unwrap_or("").starts_with(path_prefix))
        .collect()
}

fn keys(daemon: &Daemon) -> Value {
    let (status, v) = daemon.api().get("/flow-control");
    assert_eq!(status, 200, "{v}");
    v
}

#[test]
fn parallelism_is_never_exceeded_and_is_reached_across_workflows() {
    let (receiver, dir, wf) = receiver_and_workflows();
    file(
        &wf,
        "fan",
        &receiver,
        r#"
steps:
  - id: each
    foreach: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    max_parallel: 10
    flow_control: { key: slow-api, parallelism: 3 }
    http: { url: "BASE/slow/300?i={{ item }}" }
"#,
    );
    file(
        &wf,
        "single",
        &receiver,
        r#"
defaults:
  flow_control: { key: slow-api, parallelism: 3 }
steps:
  - id: one
    http: { url: BASE/slow/300?single }
"#,
    );
    let daemon = Daemon::start(&wf, &dir.path().join("parallel.db"), None);
    let api = daemon.api();
    let fan = api.start_run("fan", "{}");
    let singles: Vec<String> = (0..3).map(|_| api.start_run("single", "{}")).collect();
    // While they run the key shows its calls in flight and waiting.
    let seen = wait_for(
        Duration::from_secs(10),
        "the key to have waiting calls",
        || {
            let v = keys(&daemon);
            let k = v
                .as_array()?
                .iter()
                .find(|k| k["key"] == "slow-api")?
                .clone();
            (k["waiting"].as_i64()? > 0).then_some(k)
        },
    );
    assert_eq!(seen["parallelism"], 3, "{seen}");
    assert!(seen["in_flight"].as_i64().unwrap() <= 3, "{seen}");
    for id in std::iter::once(&fan).chain(&singles) {
        let done = api.wait_run(id, Duration::from_secs(30));
        assert_eq!(done["status"], "succeeded", "{done:#}");
    }
    let log = calls(&receiver, "/slow/");
    assert_eq!(log.len(), 13, "{log:#?}");
    let most = log
        .iter()
        .map(|r| r["in_flight"].as_u64().unwrap())
        .max()
        .unwrap();
    assert_eq!(
        most, 3,
        "parallelism 3 is reached and never exceeded: {log:#?}"
    );
    assert!(log.iter().all(|r| r["valid"] == true));
    let after = keys(&daemon);
    assert_eq!(after[0]["in_flight"], 0, "{after}");
    assert_eq!(after[0]["waiting"], 0, "{after}");
    // `/metrics` has the key's gauges.
    let metrics = crate::support::ureq_get(&format!("{}/metrics", daemon.base));
    assert!(
        metrics.contains("runner_flow_in_flight{key=\"slow-api\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("runner_flow_waiting{key=\"slow-api\"} 0"),
        "{metrics}"
    );
}

#[test]
fn a_rate_spreads_the_calls_of_a_key_over_its_period() {
    let (receiver, dir, wf) = receiver_and_workflows();
    file(
        &wf,
        "rated",
        &receiver,
        r#"
steps:
  - id: each
    foreach: [a, b, c, d, e, f]
    max_parallel: 6
    flow_control: { key: "rated-{{ input.tenant }}", rate: 2, period: 1s }
    http: { url: "BASE/ok?i={{ item }}" }
inputs:
  tenant: { type: string, required: true }
"#,
    );
    let daemon = Daemon::start(&wf, &dir.path().join("rate.db"), None);
    let api = daemon.api();
    let id = api.start_run("rated", r#"{"tenant": "t1"}"#);
    let done = api.wait_run(&id, Duration::from_secs(30));
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let mut times: Vec<i64> = calls(&receiver, "/ok")
        .iter()
        .map(|r| r["time"].as_i64().unwrap())
        .collect();
    times.sort();
    assert_eq!(times.len(), 6);
    // No more than 2 in any second: the third after a pair comes a period later (arrival
    // times, so a little slack for the way from admission to the endpoint).
    for w in times.windows(3) {
        assert!(w[2] - w[0] >= 900, "3 calls within a second: {times:?}");
    }
    let (_, v) = api.get("/flow-control");
    assert_eq!(
        v[0]["key"], "rated-t1",
        "the key is rendered from the input: {v}"
    );
    assert_eq!(v[0]["rate"], 2);
    assert_eq!(v[0]["period_ms"], 1000);
}

#[test]
fn a_429_with_retry_after_holds_back_every_call_of_the_key() {
    let (receiver, dir, wf) = receiver_and_workflows();
    file(
        &wf,
        "busy",
        &receiver,
        r#"
inputs:
  path: { type: string, required: true }
steps:
  - id: call
    flow_control: { key: crm, parallelism: 10 }
    retry: { limit: 2, backoff: fixed, initial: 1s }
    http: { url: "BASE{{ input.path }}" }
"#,
    );
    let daemon = Daemon::start(&wf, &dir.path().join("retry-after.db"), None);
    let api = daemon.api();
    let first = api.start_run("busy", r#"{"path": "/retry-after/2"}"#);
    let answered = wait_for(Duration::from_secs(10), "the 429", || {
        calls(&receiver, "/retry-after/")
            .first()
            .and_then(|r| r["answered"].as_i64())
    });
    let (_, v) = api.get("/flow-control");
    assert!(v[0]["closed_until"].is_string(), "the key is closed: {v}");
    // Calls of the key started now wait until the key opens again, though it has room.
    let others: Vec<String> = (0..3)
        .map(|_| api.start_run("busy", r#"{"path": "/ok"}"#))
        .collect();
    for id in std::iter::once(&first).chain(&others) {
        assert_eq!(
            api.wait_run(id, Duration::from_secs(20))["status"],
            "succeeded"
        );
    }
    let ok_times: Vec<i64> = calls(&receiver, "/ok")
        .iter()
        .map(|r| r["time"].as_i64().unwrap())
        .collect();
    assert_eq!(ok_times.len(), 3);
    for t in &ok_times {
        assert!(
            t - answered >= 1_900,
            "a call of the closed key arrived {} ms after the 429 with Retry-After: 2",
            t - answered
        );
    }
    let retried = calls(&receiver, "/retry-after/");
    assert_eq!(
        retried.len(),
        2,
        "the 429'd call itself, once more: {retried:#?}"
    );
    assert!(retried[1]["time"].as_i64().unwrap() - answered >= 1_900);
}

#[test]
fn kill_9_with_calls_waiting_for_a_key_loses_none_and_leaks_no_slot() {
    let (receiver, dir, wf) = receiver_and_workflows();
    file(
        &wf,
        "queue",
        &receiver,
        r#"
steps:
  - id: each
    foreach: [1, 2, 3, 4]
    max_parallel: 4
    flow_control: { key: one-at-a-time, parallelism: 1 }
    http: { url: "BASE/slow/700?i={{ item }}" }
"#,
    );
    let db = dir.path().join("kill.db");
    let mut daemon = Daemon::start(&wf, &db, None);
    let id = daemon.api().start_run("queue", "{}");
    wait_for(
        Duration::from_secs(10),
        "a call in flight and three waiting",
        || {
            let v = keys(&daemon);
            (v[0]["in_flight"] == 1 && v[0]["waiting"] == 3).then_some(())
        },
    );
    daemon.kill9();
    let daemon = Daemon::start(&wf, &db, None);
    let done = daemon.api().wait_run(&id, Duration::from_secs(30));
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let log = calls(&receiver, "/slow/");
    for i in 1..=4 {
        assert!(
            log.iter()
                .any(|r| r["url"].as_str().unwrap().ends_with(&format!("i={i}"))
                    && r["status"] == 200),
            "item {i} was delivered: {log:#?}"
        );
    }
    let after = keys(&daemon);
    assert_eq!(
        (after[0]["in_flight"].clone(), after[0]["waiting"].clone()),
        (json!(0), json!(0)),
        "{after}"
    );
}

/// On PostgreSQL: two daemons share a key's limit (counted from the rows of both).
#[test]
fn two_daemons_on_one_postgresql_share_a_keys_parallelism() {
    if !crate::pg::enabled() {
        // Several daemons share a database only on PostgreSQL; this runs in the suite's
        // PostgreSQL pass (`RUNNER_TEST_BACKEND=postgres`).
        return;
    }
    let (receiver, dir, wf) = receiver_and_workflows();
    file(
        &wf,
        "shared",
        &receiver,
        r#"
steps:
  - id: each
    foreach: [1, 2, 3, 4, 5, 6]
    max_parallel: 6
    flow_control: { key: shared-api, parallelism: 3 }
    http: { url: "BASE/slow/300?i={{ item }}" }
"#,
    );
    let db = dir.path().join("shared.db");
    let a = Daemon::start(&wf, &db, None);
    let b = Daemon::start(&wf, &db, None);
    let runs = [
        a.api().start_run("shared", "{}"),
        b.api().start_run("shared", "{}"),
        a.api().start_run("shared", "{}"),
        b.api().start_run("shared", "{}"),
    ];
    for id in &runs {
        assert_eq!(
            a.api().wait_run(id, Duration::from_secs(60))["status"],
            "succeeded"
        );
    }
    let log = calls(&receiver, "/slow/");
    assert_eq!(log.len(), 24);
    let most = log
        .iter()
        .map(|r| r["in_flight"].as_u64().unwrap())
        .max()
        .unwrap();
    assert_eq!(
        most, 3,
        "two daemons together keep the key at 3 in flight: {log:#?}"
    );
}
