//! The durable engine end to end: the real `runner` binary (`runner run` in the foreground) against
//! the real `@upstash/qstash` Receiver in `tests/qstash/receiver.mjs` on 127.0.0.1, with a real SQLite
//! file in a temporary directory. Every request the receiver gets is verified with the URL check.
//!
//! Every wait is bounded: `runner` commands are killed after `LIMIT`, receivers when dropped (also on
//! panic). The only timing assertion is the `Retry-After` gap, with a wide upper bound.
//!
//! Needs Node.js 18+ and `npm ci --prefix tests/qstash`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{KillOnDrop, QstashReceiver, receiver_log, runner_cmd, temp_dir, write};

/// The longest any one `runner` command may take before the test fails.
const LIMIT: Duration = Duration::from_secs(90);

/// A child process that is killed when dropped (also when the test panics).

#[derive(Debug)]
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `runner` with `args` and extra environment variables, to its end, within `LIMIT`.
fn runner(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = runner_cmd();
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The secrets of these tests come only from `envs`, never from the test's own environment.
    cmd.env_remove("ENGINE_IT_TOKEN")
        .env_remove("ENGINE_IT_MISSING_SECRET");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = KillOnDrop(cmd.spawn().expect("spawn runner"));
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let out = reader(Box::new(child.0.stdout.take().expect("piped")));
    let err = reader(Box::new(child.0.stderr.take().expect("piped")));
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait for runner") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.0.kill();
            let _ = child.0.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let output = Output {
        code: status.and_then(|s| s.code()),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    };
    assert!(
        status.is_some(),
        "`runner {}` did not finish within {LIMIT:?}: {output:#?}",
        args.join(" ")
    );
    output
}

/// `runner run FILE --db DB [extra…]`; returns the output and the run id from its first line.
fn run(db: &Path, file: &Path, extra: &[&str], envs: &[(&str, &str)]) -> (Output, String) {
    let mut args = vec![
        "run",
        file.to_str().expect("UTF-8 path"),
        "--db",
        db.to_str().expect("UTF-8 path"),
    ];
    args.extend_from_slice(extra);
    let out = runner(&args, envs);
    let id = out
        .stdout
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("run "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("`runner run` printed no run id: {out:#?}"))
        .to_string();
    (out, id)
}

/// Asserts the run ended with `status` (last stdout line and exit code).
fn assert_ended(out: &Output, id: &str, status: &str) {
    let last = out.stdout.lines().last().unwrap_or_default();
    assert_eq!(last, format!("run {id} {status}"), "{out:#?}");
    let code = if status == "succeeded" { 0 } else { 1 };
    assert_eq!(out.code, Some(code), "exit code for `{status}`: {out:#?}");
}

/// `runner show ID --json`.
fn show(db: &Path, id: &str) -> Value {
    let out = runner(
        &[
            "show",
            id,
            "--json",
            "--db",
            db.to_str().expect("UTF-8 path"),
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{out:#?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("show --json: {e}: {out:#?}"))
}

fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == id))
        .unwrap_or_else(|| panic!("no step `{id}` in {run:#}"))
}

/// `runner keys --db DB` → (current, next).
fn keys(db: &Path, action: Option<&str>, envs: &[(&str, &str)]) -> (String, String) {
    let mut args = vec!["keys"];
    args.extend(action);
    args.extend(["--db", db.to_str().expect("UTF-8 path")]);
    let out = runner(&args, envs);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let get = |name: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {out:#?}"))
            .to_string()
    };
    (
        get("QSTASH_CURRENT_SIGNING_KEY"),
        get("QSTASH_NEXT_SIGNING_KEY"),
    )
}

/// Writes `<name>.yaml` with every `BASE` replaced by the receiver's base URL (no `format!`, so the
/// YAML's braces and the templates' `{{ }}` stay as written).
fn workflow(dir: &Path, name: &str, receiver: &QstashReceiver, yaml: &str) -> PathBuf {
    write(
        dir,
        &format!("{name}.yaml"),
        &format!("name: {name}\n{}", yaml.replace("BASE", &receiver.base)),
    )
}

/// Environment that makes runner sign with the key a default `QstashReceiver::start()` expects.
fn signing(receiver: &QstashReceiver) -> [(&'static str, &str); 1] {
    [("RUNNER_SIGNING_KEY", receiver.current_key.as_str())]
}

/// The receiver's records of one run, oldest first.
fn records_of(receiver: &QstashReceiver, run_id: &str) -> Vec<Value> {
    receiver_log(receiver)
        .into_iter()
        .filter(|r| r["headers"]["runner-run-id"] == run_id)
        .collect()
}

fn header<'a>(record: &'a Value, name: &str) -> &'a str {
    record["headers"][name]
        .as_str()
        .unwrap_or_else(|| panic!("no header `{name}` in {record:#}"))
}

fn assert_all_valid(records: &[Value]) {
    for r in records {
        assert_eq!(r["valid"], true, "the Receiver refused a request: {r:#}");
    }
}

fn body_json(record: &Value) -> Value {
    let text = record["body"].as_str().expect("body is text");
    serde_json::from_str(text).unwrap_or_else(|e| panic!("body {text:?} is not JSON: {e}"))
}

// ---------------------------------------------------------------------------------------------
// 1. Interop with the real Receiver

#[test]
fn interop_every_call_verifies_with_the_database_keys() {
    let dir = temp_dir();
    let db = dir.path().join("runner.db");
    let (current, next) = keys(&db, None, &[]);
    assert_ne!(current, next);
    // The keys are kept: asking again gives the same pair.
    assert_eq!(keys(&db, None, &[]), (current.clone(), next.clone()));
    let receiver = QstashReceiver::start_with_keys(&current, &next);
    let file = workflow(
        dir.path(),
        "interop",
        &receiver,
        r#"
inputs:
  who: { type: string, required: true }
steps:
  - id: first
    http: { url: "BASE/ok" }
  - id: second
    http:
      url: "BASE/echo"
      body: { who: "{{ input.who }}", n: "{{ steps.first.body.n }}" }
  - id: query
    http:
      url: "BASE/ok?x=1&y=a%20b&z=%C3%A9#a-fragment-is-not-sent"
      method: GET
  - id: templated-query
    http:
      url: "BASE/echo?who={{ input.who }}&page=2"
      method: PUT
      body: "plain text ü"
"#,
    );
    let (out, id) = run(&db, &file, &["--input", r#"{"who": "ann lee"}"#], &[]);
    assert_ended(&out, &id, "succeeded");

    let records = records_of(&receiver, &id);
    assert_eq!(records.len(), 4, "{records:#?}");
    assert_all_valid(&records);
    let urls: Vec<&str> = records.iter().map(|r| r["url"].as_str().unwrap()).collect();
    assert_eq!(urls[0], "/ok");
    assert_eq!(urls[1], "/echo");
    assert_eq!(urls[2], "/ok?x=1&y=a%20b&z=%C3%A9");
    assert_eq!(urls[3], "/echo?who=ann%20lee&page=2");
    let methods: Vec<&str> = records
        .iter()
        .map(|r| r["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["POST", "POST", "GET", "PUT"]);
    assert_eq!(body_json(&records[1]), json!({"who": "ann lee", "n": 1}));
    assert_eq!(records[3]["body"], "plain text ü");
    for r in &records {
        assert_eq!(r["status"], 200, "{r:#}");
    }
}

#[test]
fn interop_signing_with_the_receivers_next_key_still_verifies() {
    let dir = temp_dir();
    let db = dir.path().join("runner.db");
    let current = runner::sign::key_from_random([11; 32]);
    let next = runner::sign::key_from_random([12; 32]);
    // Receiver configured with current + next; runner already signs with the next key (rotated).
    let receiver = QstashReceiver::start_with_keys(&current, &next);
    let env = [("RUNNER_SIGNING_KEY", next.as_str())];
    assert_eq!(
        keys(&db, None, &env).0,
        next,
        "runner keys shows the key in use"
    );
    let file = workflow(
        dir.path(),
        "next-key",
        &receiver,
        r#"
steps:
  - id: a
    http: { url: "BASE/ok" }
  - id: b
    http: { url: "BASE/echo", body: { a: "{{ steps.a.body.ok }}" } }
"#,
    );
    let (out, id) = run(&db, &file, &[], &env);
    assert_ended(&out, &id, "succeeded");
    let records = records_of(&receiver, &id);
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_all_valid(&records);
}

#[test]
fn interop_after_keys_rotate_old_and_updated_receivers_verify() {
    let dir = temp_dir();
    let db = dir.path().join("runner.db");
    let (old_current, old_next) = keys(&db, None, &[]);
    let (current, next) = keys(&db, Some("rotate"), &[]);
    assert_eq!(current, old_next, "rotate promotes the next key");
    assert_ne!(next, old_next);
    assert_ne!(next, old_current);
    assert_eq!(
        keys(&db, None, &[]),
        (current.clone(), next.clone()),
        "kept"
    );

    // A receiver not yet updated (old current + old next) and one updated after the rotation.
    let not_updated = QstashReceiver::start_with_keys(&old_current, &old_next);
    let updated = QstashReceiver::start_with_keys(&current, &next);
    let file = write(
        dir.path(),
        "rotated.yaml",
        &format!(
            "name: rotated\nsteps:\n  - id: old\n    http: {{ url: \"{}\" }}\n  - id: new\n    http: {{ url: \"{}\" }}\n",
            not_updated.url("/ok"),
            updated.url("/ok")
        ),
    );
    let (out, id) = run(&db, &file, &[], &[]);
    assert_ended(&out, &id, "succeeded");
    for receiver in [&not_updated, &updated] {
        let records = records_of(receiver, &id);
        assert_eq!(records.len(), 1, "{records:#?}");
        assert_all_valid(&records);
    }

    // `rotate` refuses when the keys come from the environment.
    let env_key = runner::sign::key_from_random([13; 32]);
    let out = runner(
        &["keys", "rotate", "--db", db.to_str().unwrap()],
        &[("RUNNER_SIGNING_KEY", env_key.as_str())],
    );
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert!(out.stderr.contains("RUNNER_SIGNING_KEY"), "{out:#?}");
}

#[test]
fn interop_a_receiver_with_unrelated_keys_rejects_and_the_run_fails() {
    let dir = temp_dir();
    let db = dir.path().join("runner.db");
    let receiver = QstashReceiver::start_with_keys(
        &runner::sign::key_from_random([21; 32]),
        &runner::sign::key_from_random([22; 32]),
    );
    let file = workflow(
        dir.path(),
        "unrelated",
        &receiver,
        r#"
steps:
  - id: call
    retry: { limit: 1, backoff: fixed, initial: 1s }
    http: { url: "BASE/ok" }
"#,
    );
    let (out, id) = run(&db, &file, &[], &[]);
    assert_ended(&out, &id, "failed");
    let records = records_of(&receiver, &id);
    assert_eq!(records.len(), 2, "one attempt and one retry: {records:#?}");
    for r in &records {
        assert_eq!(r["valid"], false, "{r:#}");
        assert_eq!(r["status"], 401, "{r:#}");
    }
    let shown = show(&db, &id);
    assert_eq!(shown["status"], "failed");
    let call = step(&shown, "call");
    assert_eq!(call["status"], "failed");
    assert_eq!(call["attempts"], 2);
    let error = call["error"].as_str().unwrap();
    assert!(error.contains("401"), "{error}");
    assert!(error.contains("gave up after 2 attempts"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// 2. Headers, and 3. retries of a flaky endpoint

#[test]
fn headers_are_stable_per_step_and_flaky_steps_retry_to_success() {
    let dir = temp_dir();
    let db = dir.path().join("runner.db");
    let receiver = QstashReceiver::start();
    let file = workflow(
        dir.path(),
        "headers",
        &receiver,
        r#"
steps:
  - id: flaky
    retry: { limit: 3, backoff: fixed, initial: 1s }
    http: { url: "BASE/flaky/2" }
  - id: echo
    http: { url: "BASE/echo", body: { a: 1 } }
"#,
    );
    let mut ids_per_run = Vec::new();
    for _ in 0..2 {
        let (out, id) = run(&db, &file, &[], &signing(&receiver));
        assert_ended(&out, &id, "succeeded");
        let records = records_of(&receiver, &id);
        assert_eq!(records.len(), 4, "3 flaky attempts + 1 echo: {records:#?}");
        assert_all_valid(&records);
        let (flaky, echo) = records.split_at(3);
        let echo = &echo[0];

        let flaky_id = header(&flaky[0], "upstash-message-id").to_string();
        assert!(flaky_id.starts_with("msg_"), "{flaky_id}");
        for (n, r) in flaky.iter().enumerate() {
            assert_eq!(r["path"], "/flaky/2");
            assert_eq!(
                header(r, "upstash-message-id"),
                flaky_id,
                "same id every attempt"
            );
            assert_eq!(header(r, "idempotency-key"), flaky_id);
            assert_eq!(header(r, "upstash-retried"), n.to_string());
            assert_eq!(header(r, "runner-attempt"), (n + 1).to_string());
            assert_eq!(header(r, "runner-step"), "flaky");
            assert_eq!(header(r, "runner-workflow"), "headers");
            assert_eq!(header(r, "runner-run-id"), id);
        }
        let statuses: Vec<&Value> = flaky.iter().map(|r| &r["status"]).collect();
        assert_eq!(statuses, [500, 500, 200]);

        let echo_id = header(echo, "upstash-message-id").to_string();
        assert_ne!(echo_id, flaky_id, "another step, another id");
        assert_eq!(header(echo, "idempotency-key"), echo_id);
        assert_eq!(header(echo, "upstash-retried"), "0");
        assert_eq!(header(echo, "runner-step"), "echo");
        assert_eq!(header(echo, "runner-workflow"), "headers");
        assert_eq!(header(echo, "content-type"), "application/json");
        assert_eq!(body_json(echo), json!({"a": 1}));

        // What `runner show` reports matches what was sent.
        let shown = show(&db, &id);
        let s = step(&shown, "flaky");
        assert_eq!(s["status"], "succeeded");
        assert_eq!(s["attempts"], 3);
        assert_eq!(s["dedup_id"], flaky_id.as_str());
        let log = s["attempt_log"].as_array().unwrap();
        let got: Vec<(Value, Value, Value)> = log
            .iter()
            .map(|a| {
                (
                    a["attempt"].clone(),
                    a["status"].clone(),
                    a["outcome"].clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (json!(1), json!(500), json!("retry")),
                (json!(2), json!(500), json!("retry")),
                (json!(3), json!(200), json!("succeeded")),
            ]
        );
        assert_eq!(step(&shown, "echo")["dedup_id"], echo_id.as_str());
        ids_per_run.push((flaky_id, echo_id));
    }
    assert_ne!(
        ids_per_run[0].0, ids_per_run[1].0,
        "another run, another id"
    );
    assert_ne!(
        ids_per_run[0].1, ids_per_run[1].1,
        "another run, another id"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Retries

#[test]
fn a_run_that_times_out_during_a_sleep_fails_and_runs_on_failure() {
    let dir = temp_dir();
    let db = dir.path().join("runner.db");
    let receiver = QstashReceiver::start();
    let file = workflow(
        dir.path(),
        "deadline",
        &receiver,
        r#"
timeout: 2s
steps:
  - id: nap
    sleep: 1h
  - id: never
    http: { url: "BASE/ok" }
on_failure:
  - http: { url: "BASE/echo", body: { step: "{{ failure.step }}", error: "{{ failure.error }}" } }
"#,
    );
    let (out, id) = run(&db, &file, &[], &signing(&receiver));
    assert_ended(&out, &id, "failed");
    let records = records_of(&receiver, &id);
    assert_eq!(records.len(), 1, "only the hook was called: {records:#?}");
    let body = body_json(&records[0]);
    assert_eq!(body["step"], "nap");
    let error = body["error"].as_str().expect("error");
    assert!(
        error.starts_with("the run's timeout of 2s passed"),
        "{error}"
    );
    let shown = show(&db, &id);
    assert_eq!(step(&shown, "nap")["status"], "cancelled");
    assert_eq!(step(&shown, "never")["status"], "skipped");
}

#[test]
fn a_steps_own_dedup_id_is_sent_on_every_attempt_and_shown() {
    let dir = temp_dir();
    let db = dir.path().join("runner.db");
    let receiver = QstashReceiver::start();
    let file = workflow(
        dir.path(),
        "weekly-report",
        &receiver,
        r#"
inputs:
  user: { type: string, required: true }
steps:
  - id: report
    retry: { limit: 3, backoff: fixed, initial: 1s }
    http:
      url: "BASE/flaky/1"
      dedup_id: "weekly-report-{{ input.user }}-2026-W12"
"#,
    );
    let (out, id) = run(
        &db,
        &file,
        &["--input", r#"{"user": "user_123"}"#],
        &signing(&receiver),
    );
    assert_ended(&out, &id, "succeeded");
    let records = records_of(&receiver, &id);
    assert_eq!(records.len(), 2, "500, then 200: {records:#?}");
    assert_all_valid(&records);
    for (n, r) in records.iter().enumerate() {
        assert_eq!(
            header(r, "upstash-message-id"),
            "weekly-report-user_123-2026-W12"
        );
        assert_eq!(
            header(r, "idempotency-key"),
            "weekly-report-user_123-2026-W12"
        );
        assert_eq!(header(r, "upstash-retried"), n.to_string());
    }
    let shown = show(&db, &id);
    assert_eq!(
        step(&shown, "report")["dedup_id"],
        "weekly-report-user_123-2026-W12"
    );
}

#[test]
fn retry_after_is_honoured_over_the_steps_own_backoff() {
    let dir = temp_dir();
    let db = dir.path().join("runner.db");
    let receiver = QstashReceiver::start();
    let file = workflow(
        dir.path(),
        "retry-after",
        &receiver,
        r#"
steps:
  - id: limited
    retry: { limit: 2, backoff: fixed, initial: 1s }
    http: { url: "BASE/retry-after/2" }
"#,
    );
    let (out, id) = run(&db, &file, &[], &signing(&receiver));
    assert_ended(&out, &id, "succeeded");
    let records = records_of(&receiver, &id);
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_all_valid(&records);
    assert_eq!(records[0]["status"], 429);
    assert_eq!(records[1]["status"], 200);
    let gap = records[1]["time"].as_i64().unwrap() - records[0]["time"].as_i64().unwrap();
    assert!(
        (2000..4000).contains(&gap),
        "Retry-After: 2 should put about 2 s between the attempts (the step's backoff is 1 s), got {gap} ms"
    );
}

#[test]
fn a_489_non_retryable_answer_fails_the_run_at_once() {
    let dir = temp_dir();
    let db = dir.path().join("runner.db");
    let receiver = QstashReceiver::start();
    let file = workflow(
        dir.path(),
        "nonretryable",
        &receiver,
        r#"
steps:
  - id: refuse
    retry: { limit: 3, backoff: fixed, initial: 1s }
    http: { url: "BASE/nonretryable" }
  - id: never
    http: { url: "BASE/ok" }
"#,
    );
    let (out, id) = run(&db, &file, &[], &signing(&receiver));
    assert_ended(&out, &id, "failed");
    assert_eq!(out.code, Some(1));
    let records = records_of(&receiver, &id);
    assert_eq!(
        records.len(),
        1,
        "not retried, next step not run: {records:#?}"
    );
    assert_all_valid(&records);
    assert_eq!(records[0]["status"], 489);
    let shown = show(&db, &id);
    assert_eq!(shown["status"], "failed");
    let s = step(&shown, "refuse");
    assert_eq!(s["status"], "failed");
    assert_eq!(s["attempts"], 1);
    assert!(s["error"].as_str().unwrap().contains("489"), "{s:#}");
    assert_eq!(s["attempt_log"][0]["outcome"], "failed");
    assert_eq!(shown["failure"]["step"], "refuse");
    assert_eq!(shown["failure"]["attempts"], 1);
    assert_ne!(step(&shown, "never")["status"], "succeeded");
}

#[test]
fn a_timeout_is_retried_and_every_attempt_recorded() {
    let dir = temp_dir();
    let db = dir.path().join("runner.db");
    let receiver = QstashReceiver::start();
    let file = workflow(
        dir.path(),
        "timeout",
        &receiver,
        r#"
steps:
  - id: slow
    timeout: 1s
    retry: { limit: 1, backoff: fixed, initial: 1s }
    http: { url: "BASE/slow/3000" }
"#,
    );
    let (out, id) = run(&db, &file, &[], &signing(&receiver));
    assert_ended(&out, &id, "failed");
    let records = records_of(&receiver, &id);
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_all_valid(&records);
    assert_eq!(header(&records[0], "upstash-retried"), "0");
    assert_eq!(header(&records[1], "upstash-retried"), "1");
    let shown = show(&db, &id);
    let s = step(&shown, "slow");
    assert_eq!(s["status"], "failed");
    assert_eq!(s["attempts"], 2);
    let log = s["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 2, "{s:#}");
    for (n, a) in log.iter().enumerate() {
        assert_eq!(a["attempt"], n + 1);
        assert_eq!(a["status"], Value::Null, "no answer, no status: {a:#}");
        assert_eq!(a["error"], "no answer within 1s", "{a:#}");
        assert!(a["finished_at"].is_string(), "{a:#}");
    }
    assert_eq!(log[0]["outcome"], "retry");
    assert_eq!(
        log[1]["outcome"], "failed",
        "the last attempt the limit allows"
    );
    let error = s["error"].as_str().unwrap();
    assert!(
        error.contains("no answer within 1s") && error.contains("gave up after 2 attempts"),
        "{error}"
    );
}

#[test]
fn exhausted_retries_fail_the_run_and_on_failure_sees_the_failure() {
    let dir = temp_dir();
    let db = dir.path().join("runner.db");
    let receiver = QstashReceiver::start();
    let file = workflow(
        dir.path(),
        "exhausted",
        &receiver,
        r#"
steps:
  - id: charge
    retry: { limit: 1, backoff: fixed, initial: 1s }
    http: { url: "BASE/flaky/9" }
  - id: never
    http: { url: "BASE/ok" }
on_failure:
  - http:
      url: "BASE/echo"
      body:
        run: "{{ run.id }}"
        workflow: "{{ workflow.name }}"
        step: "{{ failure.step }}"
        attempts: "{{ failure.attempts }}"
        status: "{{ failure.status }}"
        error: "{{ failure.error }}"
        answer: "{{ failure.body.error }}"
"#,
    );
    let (out, id) = run(&db, &file, &[], &signing(&receiver));
    assert_ended(&out, &id, "failed");
    let records = records_of(&receiver, &id);
    assert_all_valid(&records);
    let paths: Vec<&str> = records
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/flaky/9", "/flaky/9", "/echo"], "{records:#?}");
    let hook = body_json(&records[2]);
    assert_eq!(hook["run"], id.as_str());
    assert_eq!(hook["workflow"], "exhausted");
    assert_eq!(hook["step"], "charge");
    assert_eq!(hook["attempts"], 2, "a number: {hook}");
    assert_eq!(hook["status"], 500, "a number: {hook}");
    assert_eq!(hook["answer"], "flaky");
    let error = hook["error"].as_str().unwrap();
    assert!(
        error.contains("500") && error.contains("gave up after 2 attempts"),
        "{error}"
    );
    assert_eq!(header(&records[2], "runner-step"), "on_failure-1");

    let shown = show(&db, &id);
    assert_eq!(shown["status"], "failed");
    assert_eq!(shown["failure"]["step"], "charge");
    assert_eq!(shown["on_failure"][0]["status"], "succeeded");
    assert_eq!(
        shown["on_failure"][0]["output"]["body"]["received"]["step"],
        "charge"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Templates and secrets

#[test]
fn body_templates_render_native_types() {
    let dir = temp_dir();
    let db = dir.path().join("runner.db");
    let receiver = QstashReceiver::start();
    let file = workflow(
        dir.path(),
        "templates",
        &receiver,
        r#"
inputs:
  userId: { type: string, required: true }
  days: { type: integer, default: 7 }
  ratio: { type: number, default: 0.5 }
  dry: { type: boolean, default: false }
steps:
  - id: post
    http:
      url: "BASE/echo"
      body:
        days: "{{ input.days }}"
        user: "{{ input.userId }}"
        ratio: "{{ input.ratio }}"
        dry: "{{ input.dry }}"
        label: "{{ input.userId }}/{{ input.days }}"
        list: ["{{ input.days }}", "x"]
        nested: { twice: "{{ input.days * 2 }}" }
"#,
    );
    let (out, id) = run(
        &db,
        &file,
        &["--input", r#"{"userId": "u42", "days": 3}"#],
        &signing(&receiver),
    );
    assert_ended(&out, &id, "succeeded");
    let records = records_of(&receiver, &id);
    assert_eq!(records.len(), 1);
    assert_all_valid(&records);
    assert_eq!(header(&records[0], "content-type"), "application/json");
    assert_eq!(
        body_json(&records[0]),
        json!({
            "days": 3,
            "user": "u42",
            "ratio": 0.5,
            "dry": false,
            "label": "u42/3",
            "list": [3, "x"],
            "nested": { "twice": 6 },
        })
    );
}

/// A number no earlier test run used (nanoseconds since the epoch): secrets that occur nowhere else.
fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn a_secret_reaches_the_endpoint_but_is_never_stored() {
    let dir = temp_dir();
    let db = dir.path().join("runner.db");
    let receiver = QstashReceiver::start();
    let nanos = unique();
    let secret = format!("S3cr3t{nanos:x}");
    // Attempt records keep the first 16 KiB of a body: the `echo` step's body is padded so that its
    // cut falls 8 bytes into the secret (`{"pad":"` + pad + `","echo":"` = 16384 - 8 bytes).
    let pad = "p".repeat(16384 - 8 - 8 - 10);
    let file = workflow(
        dir.path(),
        "secrets",
        &receiver,
        &r#"
secrets: [ENGINE_IT_TOKEN]
steps:
  - id: call
    http:
      url: "BASE/ok?key={{ secrets.ENGINE_IT_TOKEN }}"
      headers: { Authorization: "Bearer {{ secrets.ENGINE_IT_TOKEN }}" }
      body: { token: "{{ secrets.ENGINE_IT_TOKEN }}", other: 1 }
  - id: echo
    http:
      url: "BASE/echo"
      body: { pad: "PAD", echo: "{{ secrets.ENGINE_IT_TOKEN }}", previous: "{{ steps.call.body.ok }}" }
  - id: after
    http:
      url: "BASE/echo"
      body: { echoed: "{{ steps.echo.body.received.echo }}" }
"#
        .replace("PAD", &pad),
    );
    let mut env = signing(&receiver).to_vec();
    env.push(("ENGINE_IT_TOKEN", &secret));
    let (out, id) = run(&db, &file, &[], &env);
    assert_ended(&out, &id, "succeeded");
    assert!(
        !out.stdout.contains(&secret) && !out.stderr.contains(&secret),
        "{out:#?}"
    );

    let records = records_of(&receiver, &id);
    assert_eq!(records.len(), 3);
    assert_all_valid(&records);
    assert_eq!(
        header(&records[0], "authorization"),
        format!("Bearer {secret}")
    );
    assert_eq!(records[0]["url"], format!("/ok?key={secret}"));
    assert_eq!(body_json(&records[0])["token"], secret.as_str());
    assert_eq!(body_json(&records[1])["echo"], secret.as_str());
    assert_eq!(
        body_json(&records[1])["pad"].as_str().map(str::len),
        Some(pad.len())
    );
    // The endpoint sent the secret back: what later steps see of it is redacted too.
    assert_eq!(
        body_json(&records[2]),
        json!({ "echoed": "[redacted:ENGINE_IT_TOKEN]" })
    );

    let shown = show(&db, &id);
    let text = shown.to_string();
    assert!(
        !text.contains(&secret),
        "runner show leaks the secret: {text}"
    );
    let request = &step(&shown, "call")["attempt_log"][0]["request"];
    assert_eq!(
        request["headers"]["Authorization"],
        "Bearer [redacted:ENGINE_IT_TOKEN]"
    );
    assert!(
        request["url"]
            .as_str()
            .unwrap()
            .ends_with("/ok?key=[redacted:ENGINE_IT_TOKEN]"),
        "{request:#}"
    );
    assert!(
        request["body"]
            .as_str()
            .unwrap()
            .contains("[redacted:ENGINE_IT_TOKEN]"),
        "{request:#}"
    );

    // Not in the database file, its WAL or anything else runner left in the directory; not even the
    // part of it before a 16 KiB cut.
    let needle = &secret.as_bytes()[..8];
    let mut checked = 0;
    let mut paths: Vec<std::path::PathBuf> = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        // A folder (`runner.db.owners/`): the files in it.
        if path.is_dir() {
            paths.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            paths.push(path);
        }
    }
    for path in paths {
        let bytes = std::fs::read(&path).unwrap();
        checked += usize::from(path.to_string_lossy().contains("runner.db"));
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "the secret is stored in {}",
            path.display()
        );
    }
    if crate::pg::enabled() {
        let url = crate::pg::db_arg(&dir.path().join("runner.db"));
        let dump = crate::pg::dump(&url);
        assert!(
            !dump.windows(needle.len()).any(|w| w == needle),
            "the secret is stored in the PostgreSQL database {url}"
        );
        checked += 1;
    }
    assert!(checked >= 1, "the database file was checked");
}

#[test]
fn escaped_encoded_and_filtered_forms_of_a_secret_are_never_stored() {
    let dir = temp_dir();
    let db = dir.path().join("runner.db");
    let receiver = QstashReceiver::start();
    let nanos = unique();
    // A quote, a slash, a backslash and a space: each has an escaped or encoded form.
    let secret = format!("Tk\"q/ \\{nanos:x}zz");
    let file = workflow(
        dir.path(),
        "forms",
        &receiver,
        r#"
secrets: [ENGINE_IT_FORMS]
steps:
  - id: call
    http:
      url: "BASE/ok?key={{ secrets.ENGINE_IT_FORMS | urlencode }}"
      body: { token: "{{ secrets.ENGINE_IT_FORMS }}", up: "{{ secrets.ENGINE_IT_FORMS | upper }}", j: "{{ secrets.ENGINE_IT_FORMS | tojson }}" }
"#,
    );
    let mut env = signing(&receiver).to_vec();
    env.push(("ENGINE_IT_FORMS", &secret));
    let (out, id) = run(&db, &file, &[], &env);
    assert_ended(&out, &id, "succeeded");
    let records = records_of(&receiver, &id);
    assert_eq!(body_json(&records[0])["token"], secret.as_str());

    let json_escaped = serde_json::to_string(&secret).unwrap();
    let json_escaped = &json_escaped[1..json_escaped.len() - 1];
    let forms = [
        secret.clone(),
        json_escaped.to_string(),
        secret.to_uppercase(),
        format!("{nanos:x}zz"), // the tail every form shares, in any case
        format!("{nanos:X}ZZ"),
    ];
    let shown = show(&db, &id).to_string();
    for form in &forms {
        assert!(
            !shown.contains(form.as_str()),
            "runner show has `{form}`: {shown}"
        );
    }
    let view = show(&db, &id);
    let request = &step(&view, "call")["attempt_log"][0]["request"];
    assert!(
        request["url"]
            .as_str()
            .unwrap()
            .ends_with("?key=[redacted:ENGINE_IT_FORMS]"),
        "{request:#}"
    );
    let needle = format!("{nanos:x}zz");
    let stored: Vec<u8> = if crate::pg::enabled() {
        crate::pg::dump(&crate::pg::db_arg(&db))
    } else {
        let mut all = std::fs::read(&db).unwrap();
        if let Ok(wal) = std::fs::read(dir.path().join("runner.db-wal")) {
            all.extend(wal);
        }
        all
    };
    let lower = String::from_utf8_lossy(&stored).to_lowercase();
    assert!(
        !lower.contains(&needle),
        "a form of the secret is stored in the database"
    );
}

#[test]
fn a_missing_secret_fails_the_step_naming_it() {
    let dir = temp_dir();
    let db = dir.path().join("runner.db");
    let receiver = QstashReceiver::start();
    let file = workflow(
        dir.path(),
        "missing-secret",
        &receiver,
        r#"
secrets: [ENGINE_IT_MISSING_SECRET]
steps:
  - id: first
    http: { url: "BASE/ok" }
  - id: call
    retry: { limit: 2, backoff: fixed, initial: 1s }
    http:
      url: "BASE/ok"
      headers: { Authorization: "Bearer {{ secrets.ENGINE_IT_MISSING_SECRET }}" }
on_failure:
  - id: alert
    http: { url: "BASE/ok", body: { failed: "{{ failure.step }}" } }
"#,
    );
    let (out, id) = run(&db, &file, &[], &signing(&receiver));
    assert_ended(&out, &id, "failed");
    // Only the step that uses the secret fails: the one before it and the failure hook, which
    // do not, are sent (the hook is what tells someone).
    let steps: Vec<String> = records_of(&receiver, &id)
        .iter()
        .map(|r| header(r, "runner-step").to_string())
        .collect();
    assert_eq!(steps, ["first", "alert"], "`call` was not sent");
    let shown = show(&db, &id);
    let s = step(&shown, "call");
    assert_eq!(s["status"], "failed");
    assert_eq!(s["attempts"], 1, "a missing secret is not retried: {s:#}");
    let error = s["error"].as_str().unwrap();
    assert!(
        error.contains("`ENGINE_IT_MISSING_SECRET`") && error.contains("not set"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Responses

#[test]
fn a_json_response_reaches_the_next_step() {
    let dir = temp_dir();
    let db = dir.path().join("runner.db");
    let receiver = QstashReceiver::start();
    let file = workflow(
        dir.path(),
        "responses",
        &receiver,
        r#"
steps:
  - id: first
    http: { url: "BASE/ok" }
  - id: fetch-it
    http: { url: "BASE/echo", body: { k: [1, 2] } }
  - id: third
    http:
      url: "BASE/echo?n={{ steps.first.body.n }}"
      body:
        n: "{{ steps.first.body.n }}"
        ok: "{{ steps.first.body.ok }}"
        status: "{{ steps.first.status }}"
        ctype: "{{ steps.first.headers['content-type'] }}"
        k: "{{ steps['fetch-it'].body.received.k }}"
"#,
    );
    let (out, id) = run(&db, &file, &[], &signing(&receiver));
    assert_ended(&out, &id, "succeeded");
    let records = records_of(&receiver, &id);
    assert_eq!(records.len(), 3);
    assert_all_valid(&records);
    assert_eq!(records[2]["url"], "/echo?n=1");
    assert_eq!(
        body_json(&records[2]),
        json!({ "n": 1, "ok": true, "status": 200, "ctype": "application/json", "k": [1, 2] })
    );
    let shown = show(&db, &id);
    assert_eq!(
        step(&shown, "first")["output"]["body"],
        json!({"ok": true, "n": 1})
    );
}

#[test]
fn a_response_over_one_mebibyte_fails_the_step_clearly() {
    let dir = temp_dir();
    let db = dir.path().join("runner.db");
    let receiver = QstashReceiver::start();
    let file = workflow(
        dir.path(),
        "big",
        &receiver,
        r#"
steps:
  - id: at-limit
    http: { url: "BASE/big/1048576" }
  - id: over
    retry: { limit: 3, backoff: fixed, initial: 1s }
    http: { url: "BASE/big/1048577" }
"#,
    );
    let (out, id) = run(&db, &file, &[], &signing(&receiver));
    assert_ended(&out, &id, "failed");
    let records = records_of(&receiver, &id);
    assert_all_valid(&records);
    let paths: Vec<&str> = records
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["/big/1048576", "/big/1048577"],
        "exactly 1 MiB is accepted; one byte more fails without retries"
    );
    let shown = show(&db, &id);
    let at_limit = step(&shown, "at-limit");
    assert_eq!(at_limit["status"], "succeeded");
    assert_eq!(
        at_limit["output"]["body"]["data"].as_str().map(str::len),
        Some(1_048_576 - 11)
    );
    let over = step(&shown, "over");
    assert_eq!(over["status"], "failed");
    assert_eq!(over["attempts"], 1);
    let error = over["error"].as_str().unwrap();
    assert!(error.contains("larger than 1024 KiB"), "{error}");
    assert_eq!(shown["failure"]["step"], "over");
}

// ---------------------------------------------------------------------------------------------
// 6. Input

#[test]
fn bad_input_exits_2_with_the_message_and_creates_no_run() {
    let dir = temp_dir();
    let db = dir.path().join("runner.db");
    let file = write(
        dir.path(),
        "typed.yaml",
        r#"
name: typed
inputs:
  userId: { type: string, required: true }
  days: { type: integer, default: 7 }
steps:
  - id: call
    http: { url: "http://127.0.0.1:9/never" }
"#,
    );
    let file = file.to_str().unwrap();
    let db_arg = db.to_str().unwrap();
    for (input, message) in [
        (
            r#"{"userId": 5}"#,
            "input `userId` must be a string, not an integer",
        ),
        (
            r#"{"userId": "u", "days": "7"}"#,
            "input `days` must be an integer, not a string",
        ),
        (
            r#"{"userId": "u", "dayz": 7}"#,
            "unknown input `dayz`; did you mean `days`?",
        ),
        (r#"{"days": 7}"#, "input `userId` is required"),
        ("[1]", "the input must be a JSON object"),
    ] {
        let out = runner(&["run", file, "--db", db_arg, "--input", input], &[]);
        assert_eq!(out.code, Some(2), "--input {input}: {out:#?}");
        assert!(
            out.stderr.contains(message),
            "--input {input}: expected {message:?} in {out:#?}"
        );
        assert!(!out.stdout.contains("started"), "{out:#?}");
    }
    let out = runner(&["run", file, "--db", db_arg, "--input", "{not json"], &[]);
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stderr.contains("--input is not valid JSON"), "{out:#?}");

    let out = runner(&["runs", "--json", "--db", db_arg], &[]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).unwrap(),
        json!([]),
        "{out:#?}"
    );
}

#[test]
fn run_by_a_name_that_two_files_share_is_refused_and_names_both() {
    let dir = temp_dir();
    let db = dir.path().join("runner.db");
    let wf = dir.path().join("wf");
    std::fs::create_dir(&wf).unwrap();
    for file in ["a.yaml", "b.yaml"] {
        std::fs::write(wf.join(file), "name: dup\nsteps: [{ id: s, sleep: 1s }]\n").unwrap();
    }
    let db_arg = db.to_str().unwrap();
    let out = runner(
        &["run", "dup", "--dir", wf.to_str().unwrap(), "--db", db_arg],
        &[],
    );
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(
        out.stderr.contains("2 workflows in")
            && out.stderr.contains("a.yaml")
            && out.stderr.contains("b.yaml"),
        "{out:#?}"
    );
    assert!(!out.stdout.contains("started"), "{out:#?}");
}

// ---------------------------------------------------------------------------------------------
// 7. Idempotency

#[test]
fn the_same_idempotency_key_returns_the_same_run_without_new_requests() {
    let dir = temp_dir();
    let db = dir.path().join("runner.db");
    let receiver = QstashReceiver::start();
    let file = workflow(
        dir.path(),
        "idem",
        &receiver,
        r#"
steps:
  - id: a
    http: { url: "BASE/ok" }
  - id: b
    http: { url: "BASE/echo", body: { n: "{{ steps.a.body.n }}" } }
"#,
    );
    let env = signing(&receiver);
    let (first, id) = run(&db, &file, &["--idempotency-key", "K-1"], &env);
    assert_ended(&first, &id, "succeeded");
    assert!(
        first.stdout.starts_with(&format!("run {id} started: idem")),
        "{first:#?}"
    );
    let sent = receiver_log(&receiver).len();
    assert_eq!(sent, 2);

    let (second, again) = run(&db, &file, &["--idempotency-key", "K-1"], &env);
    assert_eq!(again, id, "same key, same run: {second:#?}");
    assert!(second.stdout.contains("already exists"), "{second:#?}");
    assert_ended(&second, &id, "succeeded");
    assert_eq!(receiver_log(&receiver).len(), sent, "no new requests");

    let (third, other) = run(&db, &file, &["--idempotency-key", "K-2"], &env);
    assert_ended(&third, &other, "succeeded");
    assert_ne!(other, id, "another key, another run");
    assert_eq!(receiver_log(&receiver).len(), sent + 2);

    let out = runner(&["runs", "--json", "--db", db.to_str().unwrap()], &[]);
    let runs: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(runs.as_array().map(Vec::len), Some(2), "{runs:#}");
}
