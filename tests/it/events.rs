//! Waiting for events, against the real daemon and the real QStash Receiver on 127.0.0.1: an
//! event sent while a run waits reaches it; one sent after the run was created but before its
//! wait began reaches it too (lookback, the race in which a notify overtakes its wait); one sent
//! before the run was created does not; a retried send with the same id is delivered once;
//! timeouts fail or continue; `on.event` starts runs (the event id as idempotency key) and
//! `cancel_on` cancels them; a wait survives `kill -9`, and `runner notify` sends from the shell.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Api, Daemon, QstashReceiver, receiver_and_workflows, receiver_log, runner_cmd, wait_for, write,
};

fn file(dir: &Path, name: &str, receiver: &QstashReceiver, yaml: &str) {
    write(
        dir,
        &format!("{name}.yaml"),
        &format!("name: {name}\n{}", yaml.replace("BASE", &receiver.base)),
    );
}

const ORDER: &str = r#"
on: { webhook: true }
inputs:
  order: { type: string, required: true }
steps:
  - id: paid
    wait_for_event:
      event: payment.succeeded
      key: "{{ input.order }}"
      timeout: 1h
  - id: ship
    http:
      url: BASE/echo
      body: { order: "{{ input.order }}", amount: "{{ steps.paid.data.amount }}", event: "{{ steps.paid.id }}" }
"#;

/// A workflow whose wait starts 2 s after the run is created (a sleep before it).
const LATE_WAIT: &str = r#"
on: { webhook: true }
inputs:
  order: { type: string, required: true }
steps:
  - id: nap
    sleep: 2s
  - id: paid
    wait_for_event:
      event: payment.succeeded
      key: "{{ input.order }}"
      timeout: 1h
  - id: ship
    http: { url: BASE/echo, body: { amount: "{{ steps.paid.data.amount }}" } }
"#;

fn notify(api: &Api, event: &str, body: Value) -> Value {
    let (status, v) = api.post(&format!("/events/{event}"), &body.to_string());
    assert_eq!(status, 200, "POST /events/{event}: {v}");
    v
}

fn status(api: &Api, id: &str) -> String {
    let (_, v) = api.get(&format!("/runs/{id}"));
    v["status"].as_str().unwrap_or_default().to_string()
}

fn wait_status(api: &Api, id: &str, want: &str) {
    wait_for(
        Duration::from_secs(20),
        &format!("run {id} to be {want}"),
        || (status(api, id) == want).then_some(()),
    );
}

#[test]
fn events_reach_the_runs_waiting_for_them_and_those_whose_wait_began_later() {
    let (receiver, dir, wf) = receiver_and_workflows();
    file(&wf, "order", &receiver, ORDER);
    file(&wf, "late", &receiver, LATE_WAIT);
    let daemon = Daemon::start(&wf, &dir.path().join("events.db"), None);
    let api = daemon.api();

    // Sent while the run waits: it takes it, and the answer names it.
    let a = api.start_run("order", r#"{"order": "A"}"#);
    wait_status(&api, &a, "waiting_event");
    let (_, v) = api.get(&format!("/runs/{a}"));
    let paid = &v["steps"][0];
    assert_eq!(
        paid["awaiting"],
        json!({"event": "payment.succeeded", "key": "A"}),
        "{v:#}"
    );
    assert!(
        v["waiting_for"]
            .as_str()
            .unwrap()
            .contains("`payment.succeeded` with key `A`"),
        "{v:#}"
    );
    let sent = notify(
        &api,
        "payment.succeeded",
        json!({"key": "A", "data": {"amount": 12}, "id": "pay-A"}),
    );
    assert_eq!(sent["delivered"], json!([a]), "{sent}");
    assert_eq!(sent["duplicate"], json!(false));
    let done = api.wait_run(&a, Duration::from_secs(20));
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["steps"][0]["output"]["data"], json!({"amount": 12}));
    assert_eq!(done["steps"][0]["output"]["id"], "pay-A");
    let shipped: Vec<Value> = receiver_log(&receiver)
        .into_iter()
        .filter(|r| r["path"] == "/echo")
        .collect();
    assert_eq!(shipped.len(), 1, "{shipped:#?}");
    assert!(shipped[0]["valid"].as_bool().unwrap(), "{shipped:#?}");
    let body: Value = serde_json::from_str(shipped[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"order": "A", "amount": 12, "event": "pay-A"}));

    // The same id again: the same event, delivered once; the answer is the first delivery's.
    let again = notify(
        &api,
        "payment.succeeded",
        json!({"key": "A", "data": {"amount": 99}, "id": "pay-A"}),
    );
    assert_eq!(again["duplicate"], json!(true), "{again}");
    assert_eq!(again["delivered"], json!([a]), "{again}");

    // Sent after the run was created but before its wait began (it sleeps 2 s first): the
    // notify overtakes the wait, and the wait still receives it.
    let b = api.start_run("late", r#"{"order": "B"}"#);
    let early = notify(
        &api,
        "payment.succeeded",
        json!({"key": "B", "data": {"amount": 5}}),
    );
    assert_eq!(early["delivered"], json!([]), "nobody waits yet: {early}");
    assert!(early["id"].as_str().unwrap().starts_with("evt_"), "{early}");
    let done = api.wait_run(&b, Duration::from_secs(20));
    assert_eq!(done["status"], "succeeded", "lookback: {done:#}");
    assert_eq!(done["steps"][1]["output"]["data"], json!({"amount": 5}));
    assert_eq!(done["steps"][1]["output"]["id"], early["id"]);

    // Sent before the run was created: not this run's (lookback is scoped to the run's life).
    notify(
        &api,
        "payment.succeeded",
        json!({"key": "C", "data": {"amount": 1}}),
    );
    let c = api.start_run("order", r#"{"order": "C"}"#);
    wait_status(&api, &c, "waiting_event");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status(&api, &c), "waiting_event");
    // Another key reaches nobody; the right one from the shell with `runner notify`.
    let other = notify(
        &api,
        "payment.succeeded",
        json!({"key": "not-C", "data": null}),
    );
    assert_eq!(other["delivered"], json!([]));
    let out = runner_cmd()
        .args([
            "notify",
            "payment.succeeded",
            "--key",
            "C",
            "--data",
            r#"{"amount": 3}"#,
            "--id",
            "pay-C",
        ])
        .args(["--server", &daemon.base])
        .output()
        .expect("runner notify");
    assert!(out.status.success(), "{out:?}");
    let printed: Value = serde_json::from_slice(&out.stdout).expect("runner notify prints JSON");
    assert_eq!(printed["delivered"], json!([c]), "{printed}");
    assert_eq!(
        api.wait_run(&c, Duration::from_secs(20))["status"],
        "succeeded"
    );

    // The events are kept (lookback), newest first.
    let (_, list) = api.get("/events?name=payment.succeeded");
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5, "{list:#}");
    assert_eq!(ids[0], "pay-C");
    assert_eq!(list[0]["delivered"], json!([c]));

    // Bad input: a clear 400, nothing recorded.
    let (code, v) = api.post("/events/bad%20name", "{}");
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("not a valid event name"),
        "{v}"
    );
    let (code, v) = api.post("/events/x", r#"{"key": "k", "extra": 1}"#);
    assert_eq!(code, 400, "{v}");
    let (code, v) = api.post("/events/x", "[1]");
    assert_eq!(code, 400, "{v}");
}

#[test]
fn a_wait_times_out_failing_its_step_or_going_on() {
    let (receiver, dir, wf) = receiver_and_workflows();
    let waits = |on_timeout: &str| {
        format!(
            r#"
on: {{ webhook: true }}
steps:
  - id: paid
    wait_for_event: {{ event: payment.succeeded, key: k, timeout: 1s, on_timeout: {on_timeout} }}
  - id: after
    http: {{ url: BASE/echo, body: {{ timed_out: "{{{{ steps.paid.timed_out }}}}" }} }}
on_failure:
  - http: {{ url: BASE/alert, body: {{ error: "{{{{ failure.error }}}}" }} }}
"#
        )
    };
    file(&wf, "strict", &receiver, &waits("fail"));
    file(&wf, "lenient", &receiver, &waits("continue"));
    let daemon = Daemon::start(&wf, &dir.path().join("timeouts.db"), None);
    let api = daemon.api();
    let strict = api.start_run("strict", "{}");
    let lenient = api.start_run("lenient", "{}");
    let s = api.wait_run(&strict, Duration::from_secs(20));
    assert_eq!(s["status"], "failed", "{s:#}");
    assert_eq!(
        s["failure"]["error"],
        "no event `payment.succeeded` with key `k` arrived within 1s"
    );
    let l = api.wait_run(&lenient, Duration::from_secs(20));
    assert_eq!(l["status"], "succeeded", "{l:#}");
    assert_eq!(l["steps"][0]["output"]["timed_out"], json!(true));
    let log = receiver_log(&receiver);
    let bodies: Vec<Value> = log
        .iter()
        .map(|r| serde_json::from_str(r["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null))
        .collect();
    assert!(bodies.contains(&json!({"timed_out": true})), "{log:#?}");
    assert!(
        bodies.contains(
            &json!({"error": "no event `payment.succeeded` with key `k` arrived within 1s"})
        ),
        "{log:#?}"
    );
    // A late event reaches nobody: the waits ended with their runs.
    let late = notify(&api, "payment.succeeded", json!({"key": "k"}));
    assert_eq!(late["delivered"], json!([]), "{late}");
}

#[test]
fn on_event_starts_a_run_per_event_and_cancel_on_cancels_it() {
    let (receiver, dir, wf) = receiver_and_workflows();
    file(
        &wf,
        "onboarding",
        &receiver,
        r#"
on: { event: [user.created] }
inputs:
  user: { type: string, required: true }
cancel_on:
  - event: user.deleted
    key: "{{ input.user }}"
steps:
  - id: hello
    http: { url: BASE/echo, body: { user: "{{ input.user }}", trigger: "{{ run.trigger }}" } }
  - id: verified
    wait_for_event: { event: email.verified, key: "{{ input.user }}", timeout: 1h }
"#,
    );
    let daemon = Daemon::start(&wf, &dir.path().join("on-event.db"), None);
    let api = daemon.api();

    let sent = notify(
        &api,
        "user.created",
        json!({"data": {"user": "u1"}, "id": "signup-u1"}),
    );
    let started = sent["started"].as_array().expect("started").clone();
    assert_eq!(started.len(), 1, "{sent}");
    let run = started[0].as_str().unwrap().to_string();
    wait_status(&api, &run, "waiting_event");
    let (_, v) = api.get(&format!("/runs/{run}"));
    assert_eq!(v["trigger"], "event");
    assert_eq!(v["input"], json!({"user": "u1"}));

    // A retried send starts nothing new.
    let again = notify(
        &api,
        "user.created",
        json!({"data": {"user": "u1"}, "id": "signup-u1"}),
    );
    assert_eq!(again["duplicate"], json!(true), "{again}");
    assert_eq!(again["delivered"], json!([run]), "{again}");
    let (_, runs) = api.get("/runs?workflow=onboarding");
    assert_eq!(
        runs["runs"]
            .as_array()
            .map(Vec::len)
            .or(runs.as_array().map(Vec::len)),
        Some(1),
        "{runs:#}"
    );

    // Data that does not match `inputs` is refused, with the reason.
    let bad = notify(&api, "user.created", json!({"data": {"nobody": 1}}));
    assert_eq!(bad["started"], json!([]), "{bad}");
    assert_eq!(bad["refused"][0]["workflow"], "onboarding", "{bad}");

    // Another user's deletion leaves the run alone; its own cancels it.
    let other = notify(&api, "user.deleted", json!({"key": "u2"}));
    assert_eq!(other["cancelled"], json!([]), "{other}");
    let gone = notify(&api, "user.deleted", json!({"key": "u1", "id": "del-u1"}));
    assert_eq!(gone["cancelled"], json!([run]), "{gone}");
    let done = api.wait_run(&run, Duration::from_secs(20));
    assert_eq!(done["status"], "cancelled", "{done:#}");
    assert!(
        done["steps"][1]["error"]
            .as_str()
            .unwrap()
            .contains("cancelled by event `user.deleted` with key `u1` (id del-u1)"),
        "{done:#}"
    );
    let hello: Vec<Value> = receiver_log(&receiver)
        .into_iter()
        .filter(|r| r["path"] == "/echo")
        .collect();
    assert_eq!(hello.len(), 1);
    let body: Value = serde_json::from_str(hello[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"user": "u1", "trigger": "event"}));
}

#[test]
fn a_wait_survives_kill_9_and_takes_the_event_sent_after_the_restart() {
    let (receiver, dir, wf) = receiver_and_workflows();
    file(&wf, "order", &receiver, ORDER);
    let db = dir.path().join("restart.db");
    let mut daemon = Daemon::start(&wf, &db, None);
    let api = daemon.api();
    let id = api.start_run("order", r#"{"order": "K"}"#);
    wait_status(&api, &id, "waiting_event");
    daemon.kill9();
    let daemon = Daemon::start(&wf, &db, None);
    let api = daemon.api();
    let sent = notify(
        &api,
        "payment.succeeded",
        json!({"key": "K", "data": {"amount": 7}}),
    );
    assert_eq!(sent["delivered"], json!([id]), "{sent}");
    let done = api.wait_run(&id, Duration::from_secs(20));
    assert_eq!(done["status"], "succeeded", "{done:#}");
}

#[test]
fn events_racing_the_start_of_their_waits_are_never_lost() {
    // Each run sleeps 300 ms, then waits; its event is sent somewhere between 0 and 600 ms
    // after the run was created, so some arrive before the wait, some while it is being
    // stored, some after. Every one must be delivered exactly once.
    const RUNS: usize = 30;
    let (receiver, dir, wf) = receiver_and_workflows();
    file(
        &wf,
        "race",
        &receiver,
        r#"
on: { webhook: true }
inputs:
  n: { type: string, required: true }
steps:
  - id: nap
    sleep: 300ms
  - id: paid
    wait_for_event: { event: race.paid, key: "{{ input.n }}", timeout: 1h }
  - id: ship
    http: { url: BASE/echo, body: { n: "{{ input.n }}", got: "{{ steps.paid.data }}" } }
"#,
    );
    let daemon = Daemon::start(&wf, &dir.path().join("race.db"), None);
    let api = daemon.api();
    let threads: Vec<_> = (0..RUNS)
        .map(|i| {
            let api = api.clone();
            std::thread::spawn(move || {
                let id = api.start_run("race", &json!({"n": i.to_string()}).to_string());
                std::thread::sleep(Duration::from_millis((i as u64 * 20) % 600));
                let sent = notify(&api, "race.paid", json!({"key": i.to_string(), "data": i}));
                (id, sent)
            })
        })
        .collect();
    let results: Vec<(String, Value)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (id, _) in &results {
        let done = api.wait_run(id, Duration::from_secs(30));
        assert_eq!(done["status"], "succeeded", "{done:#}");
    }
    // Each event reached its run once: by its delivery, or by the run's look back (then the
    // delivery found no one waiting yet).
    let delivered_directly = results
        .iter()
        .filter(|(id, sent)| sent["delivered"] == json!([id]))
        .count();
    let shipped: Vec<Value> = receiver_log(&receiver)
        .into_iter()
        .filter(|r| r["path"] == "/echo")
        .collect();
    assert_eq!(shipped.len(), RUNS, "one call per run, none twice");
    eprintln!(
        "{delivered_directly} of {RUNS} events were delivered to a waiting run, the rest by lookback"
    );
}
