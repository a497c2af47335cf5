//! Steps as a graph (`needs`, joins), against the real QStash Receiver on 127.0.0.1: branches
//! overlap in time, a join waits for all of them, a branch's failure abandons its siblings and
//! runs `on_failure` once, `runner show` says what each step needs and waits for, and a
//! `kill -9` with branches in flight is resumed without sending a finished branch again.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    KillOnDrop, QstashReceiver, receiver_log, runner_cmd, temp_dir, wait_for, write,
};

fn runner(args: &[&str], receiver: &QstashReceiver) -> std::process::Output {
    let mut cmd = runner_cmd();
    cmd.args(args)
        .env("RUNNER_SIGNING_KEY", &receiver.current_key)
        .stdin(Stdio::null());
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn runner");
    wait_output(child, Duration::from_secs(60))
}

fn wait_output(child: Child, limit: Duration) -> std::process::Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("runner's output"),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            panic!("runner did not finish within {limit:?}");
        }
    }
}

fn file(dir: &Path, name: &str, receiver: &QstashReceiver, yaml: &str) -> String {
    write(
        dir,
        &format!("{name}.yaml"),
        &format!("name: {name}\n{}", yaml.replace("BASE", &receiver.base)),
    )
    .display()
    .to_string()
}

fn show_json(db: &str, id: &str, receiver: &QstashReceiver) -> Value {
    let out = runner(&["show", id, "--json", "--db", db], receiver);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("show --json")
}

fn run_id(stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(stdout);
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("run "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run id in {text}"))
        .to_string()
}

fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == id))
        .unwrap_or_else(|| panic!("no step `{id}` in {run:#}"))
}

/// The receiver's records of one run's calls to `path`.
fn calls_to(receiver: &QstashReceiver, run: &str, path: &str) -> Vec<Value> {
    receiver_log(receiver)
        .into_iter()
        .filter(|r| r["headers"]["runner-run-id"] == run && r["path"] == path)
        .collect()
}

fn ms(r: &Value, field: &str) -> i64 {
    r[field]
        .as_i64()
        .unwrap_or_else(|| panic!("no `{field}` in {r:#}"))
}

const DIAMOND: &str = r#"
steps:
  - id: a
    http: { url: BASE/ok }
  - id: b
    needs: [a]
    http: { url: BASE/slow/700, body: { side: b } }
  - id: c
    needs: [a]
    http: { url: BASE/slow/701, body: { side: c } }
  - id: d
    needs: [b, c]
    http: { url: BASE/echo, body: { b: "{{ steps.b.status }}", c: "{{ steps.c.status }}" } }
"#;

#[test]
fn a_diamonds_branches_overlap_in_time_and_the_join_waits_for_both() {
    let receiver = QstashReceiver::start();
    let dir = temp_dir();
    let db = dir.path().join("runner.db").display().to_string();
    let wf = file(dir.path(), "diamond", &receiver, DIAMOND);
    let out = runner(&["run", &wf, "--db", &db], &receiver);
    assert!(out.status.success(), "{out:?}");
    let id = run_id(&out.stdout);
    let b = calls_to(&receiver, &id, "/slow/700");
    let c = calls_to(&receiver, &id, "/slow/701");
    let d = calls_to(&receiver, &id, "/echo");
    assert_eq!(
        (b.len(), c.len(), d.len()),
        (1, 1, 1),
        "each step called once"
    );
    let (b, c, d) = (&b[0], &c[0], &d[0]);
    assert!(
        ms(b, "time") < ms(c, "answered") && ms(c, "time") < ms(b, "answered"),
        "b and c ran side by side: b {}..{}, c {}..{}",
        ms(b, "time"),
        ms(b, "answered"),
        ms(c, "time"),
        ms(c, "answered")
    );
    assert!(
        ms(d, "time") >= ms(b, "answered").max(ms(c, "answered")),
        "d starts after both branches answered"
    );
    for r in [b, c, d] {
        assert_eq!(r["valid"], true, "the Receiver verified every call: {r:#}");
    }
    let body: Value = serde_json::from_str(d["body"].as_str().expect("body")).expect("JSON");
    assert_eq!(body, serde_json::json!({ "b": 200, "c": 200 }));
    // Each branch has its own dedup id.
    assert_ne!(
        b["headers"]["upstash-message-id"],
        c["headers"]["upstash-message-id"]
    );

    let view = show_json(&db, &id, &receiver);
    assert_eq!(view["status"], "succeeded");
    assert_eq!(step(&view, "d")["needs"], serde_json::json!(["b", "c"]));
    assert_eq!(step(&view, "b")["needs"], serde_json::json!(["a"]));
    assert_eq!(step(&view, "d")["when"], "all_success");
    let text = runner(&["show", &id, "--db", &db], &receiver);
    let text = String::from_utf8_lossy(&text.stdout);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("d "))
        .unwrap_or_else(|| panic!("no line for d in {text}"));
    assert!(line.contains("needs [b, c]"), "{text}");
}

#[test]
fn a_failing_branch_abandons_its_sibling_and_on_failure_runs_once() {
    let receiver = QstashReceiver::start();
    let dir = temp_dir();
    let db = dir.path().join("runner.db").display().to_string();
    let strict = file(dir.path(), "strict", &receiver, FAILING_BRANCH);
    let started = Instant::now();
    let out = runner(&["run", &strict, "--db", &db], &receiver);
    let id = run_id(&out.stdout);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the run failed without waiting for the 20 s branch"
    );
    let view = show_json(&db, &id, &receiver);
    assert_eq!(view["status"], "failed");
    assert_eq!(view["failure"]["step"], "doomed");
    assert_eq!(step(&view, "long")["status"], "cancelled");
    assert_eq!(step(&view, "after")["status"], "skipped");
    let hooks = calls_to(&receiver, &id, "/echo");
    assert_eq!(hooks.len(), 1, "on_failure ran once");
    assert_eq!(hooks[0]["body"], r#"{"step":"doomed"}"#);
    let long = calls_to(&receiver, &id, "/slow/20000");
    assert_eq!(long.len(), 1);
    // The abandoned call was cut off (the Receiver saw its connection close).
    wait_for(
        Duration::from_secs(10),
        "the abandoned call to be closed",
        || {
            calls_to(&receiver, &id, "/slow/20000")[0]["aborted"]
                .as_bool()
                .filter(|a| *a)
        },
    );
}

const FAILING_BRANCH: &str = r#"
steps:
  - id: doomed
    needs: []
    http: { url: BASE/nonretryable }
  - id: long
    needs: []
    http: { url: BASE/slow/20000 }
    timeout: 60s
  - id: after
    needs: [doomed, long]
    http: { url: BASE/ok }
on_failure:
  - http: { url: BASE/echo, body: { step: "{{ failure.step }}" } }
"#;

#[test]
fn a_failure_taken_up_downstream_lets_the_run_go_on_and_continue_on_error_is_recorded() {
    let receiver = QstashReceiver::start();
    let dir = temp_dir();
    let db = dir.path().join("runner.db").display().to_string();
    let wf = file(
        dir.path(),
        "handled",
        &receiver,
        r#"
steps:
  - id: charge
    http: { url: BASE/nonretryable }
  - id: receipt
    http: { url: BASE/ok }
  - id: refund-note
    needs: [charge]
    when: any_failed
    http: { url: BASE/echo, body: { failed: "{{ steps.charge is defined }}" } }
  - id: optional
    needs: []
    http: { url: BASE/nonretryable }
    continue_on_error: true
  - id: report
    needs: [optional]
    http: { url: BASE/ok }
"#,
    );
    let out = runner(&["run", &wf, "--db", &db], &receiver);
    let id = run_id(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let view = show_json(&db, &id, &receiver);
    assert_eq!(view["status"], "succeeded");
    assert_eq!(step(&view, "charge")["status"], "failed");
    assert_eq!(step(&view, "receipt")["status"], "skipped");
    assert_eq!(step(&view, "refund-note")["status"], "succeeded");
    assert_eq!(step(&view, "optional")["status"], "failed");
    assert_eq!(step(&view, "report")["status"], "succeeded");
}

#[test]
fn kill_9_with_branches_in_flight_then_resume_sends_each_unfinished_branch_again_once() {
    let receiver = QstashReceiver::start();
    let dir = temp_dir();
    let db = dir.path().join("runner.db").display().to_string();
    let wf = file(
        dir.path(),
        "crashy",
        &receiver,
        r#"
steps:
  - id: quick
    needs: []
    http: { url: BASE/ok }
  - id: b
    needs: []
    http: { url: BASE/slow/3000 }
  - id: c
    needs: []
    http: { url: BASE/slow/3001 }
  - id: d
    needs: [quick, b, c]
    http: { url: BASE/echo }
"#,
    );
    let mut cmd = runner_cmd();
    cmd.args(["run", &wf, "--db", &db])
        .env("RUNNER_SIGNING_KEY", &receiver.current_key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = KillOnDrop(cmd.spawn().expect("spawn runner run"));
    let id = wait_for(
        Duration::from_secs(20),
        "both slow branches in flight",
        || {
            let log = receiver_log(&receiver);
            let b = log.iter().find(|r| r["path"] == "/slow/3000")?;
            log.iter().find(|r| r["path"] == "/slow/3001")?;
            log.iter()
                .find(|r| r["path"] == "/ok" && r["status"] == 200)?;
            b["headers"]["runner-run-id"].as_str().map(str::to_string)
        },
    );
    // Let the quick branch's outcome be committed, then kill while b and c are out.
    std::thread::sleep(Duration::from_millis(300));
    child.0.kill().expect("kill -9");
    let _ = child.0.wait();
    let out = runner(&["resume", "--db", &db], &receiver);
    assert!(out.status.success(), "{out:?}");
    let view = show_json(&db, &id, &receiver);
    assert_eq!(view["status"], "succeeded", "{view:#}");
    assert_eq!(
        calls_to(&receiver, &id, "/ok").len(),
        1,
        "the finished branch is not sent again"
    );
    for path in ["/slow/3000", "/slow/3001"] {
        let calls = calls_to(&receiver, &id, path);
        assert_eq!(
            calls.len(),
            2,
            "{path}: sent, then sent again after the crash"
        );
        assert_eq!(
            calls[0]["headers"]["upstash-message-id"], calls[1]["headers"]["upstash-message-id"],
            "the same dedup id"
        );
        assert_eq!(calls[1]["headers"]["upstash-retried"], "1");
    }
    assert_eq!(
        calls_to(&receiver, &id, "/echo").len(),
        1,
        "the join ran once"
    );
}

// ---------------------------------------------------------------------------------------------
// foreach

/// `[{id: 0}, {id: 1}, …]` as a YAML flow list.
fn ids(n: usize) -> String {
    let items: Vec<String> = (0..n).map(|i| format!("{{id: u{i}}}")).collect();
    format!("[{}]", items.join(", "))
}

#[test]
fn a_1000_item_fan_out_keeps_max_parallel_reaches_it_and_each_item_has_its_own_dedup_id() {
    let receiver = QstashReceiver::start();
    let dir = temp_dir();
    let db = dir.path().join("runner.db").display().to_string();
    let yaml = format!(
        r#"
inputs:
  users: {{ type: array, default: {} }}
steps:
  - id: notify
    foreach: "{{{{ input.users }}}}"
    as: user
    key: "{{{{ user.id }}}}"
    max_parallel: 8
    http: {{ url: "BASE/slow/15", body: {{ id: "{{{{ user.id }}}}", n: "{{{{ loop.index }}}}" }} }}
  - id: report
    http: {{ url: BASE/echo, body: {{ sent: "{{{{ steps.notify.items | length }}}}", ok: "{{{{ steps.notify.succeeded }}}}", first: "{{{{ steps.notify.items[0].key }}}}" }} }}
"#,
        ids(1000)
    );
    let wf = file(dir.path(), "fan", &receiver, &yaml);
    let out = runner(&["run", &wf, "--db", &db], &receiver);
    assert!(out.status.success(), "{out:?}");
    let id = run_id(&out.stdout);
    let calls = calls_to(&receiver, &id, "/slow/15");
    assert_eq!(calls.len(), 1000, "one call per item");
    let most = calls.iter().map(|r| ms(r, "in_flight")).max().unwrap_or(0);
    assert_eq!(
        most, 8,
        "never more than max_parallel in flight, and it reaches it"
    );
    let dedup: std::collections::HashSet<&str> = calls
        .iter()
        .map(|r| r["headers"]["upstash-message-id"].as_str().expect("id"))
        .collect();
    assert_eq!(dedup.len(), 1000, "each item has its own dedup id");
    // Items start in order: the first eight to arrive are u0..u7 (in any order among them).
    let mut first: Vec<&str> = calls[..8]
        .iter()
        .map(|r| r["headers"]["runner-item"].as_str().expect("Runner-Item"))
        .collect();
    first.sort_unstable();
    assert_eq!(first, ["u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"]);
    let u3 = calls
        .iter()
        .find(|r| r["headers"]["runner-item"] == "u3")
        .expect("u3");
    let body: Value = serde_json::from_str(u3["body"].as_str().expect("body")).expect("JSON");
    assert_eq!(
        body,
        serde_json::json!({ "id": "u3", "n": 3 }),
        "the item and loop.index"
    );
    let report = calls_to(&receiver, &id, "/echo");
    let body: Value =
        serde_json::from_str(report[0]["body"].as_str().expect("body")).expect("JSON");
    assert_eq!(
        body,
        serde_json::json!({ "sent": 1000, "ok": 1000, "first": "u0" })
    );

    let view = show_json(&db, &id, &receiver);
    let items = &step(&view, "notify")["items"];
    assert_eq!(items["total"], 1000);
    assert_eq!(items["succeeded"], 1000);
    assert_eq!(items["list"].as_array().map(Vec::len), Some(1000));
    assert_eq!(items["list"][7]["key"], "u7");
    assert_eq!(
        items["list"][7]["attempt_log"].as_array().map(Vec::len),
        Some(1)
    );
    let text = runner(&["show", &id, "--db", &db], &receiver);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("items 1000: 1000 succeeded, 0 failed, 0 in flight, 0 waiting"),
        "{text}"
    );
}

#[test]
fn an_item_answered_429_with_retry_after_is_retried_alone_with_its_dedup_id() {
    let receiver = QstashReceiver::start();
    let dir = temp_dir();
    let db = dir.path().join("runner.db").display().to_string();
    let wf = file(
        dir.path(),
        "items-retry",
        &receiver,
        r#"
steps:
  - id: send
    foreach: ["/ok", "/retry-after/1", "/echo"]
    as: path
    http: { url: "BASE{{ path }}" }
    retry: { limit: 2, backoff: fixed, initial: 30s }
"#,
    );
    let out = runner(&["run", &wf, "--db", &db], &receiver);
    assert!(out.status.success(), "{out:?}");
    let id = run_id(&out.stdout);
    let retried = calls_to(&receiver, &id, "/retry-after/1");
    assert_eq!(
        retried.len(),
        2,
        "429, then 200 after Retry-After (not the 30 s backoff)"
    );
    assert_eq!(
        retried[0]["headers"]["upstash-message-id"],
        retried[1]["headers"]["upstash-message-id"]
    );
    assert_eq!(retried[0]["headers"]["upstash-retried"], "0");
    assert_eq!(retried[1]["headers"]["upstash-retried"], "1");
    let gap = ms(&retried[1], "time") - ms(&retried[0], "time");
    assert!(
        (900..20_000).contains(&gap),
        "Retry-After: 1 was honoured ({gap} ms)"
    );
    assert_eq!(calls_to(&receiver, &id, "/ok").len(), 1);
    assert_eq!(calls_to(&receiver, &id, "/echo").len(), 1);
    let view = show_json(&db, &id, &receiver);
    let item = &step(&view, "send")["items"]["list"][1];
    assert_eq!(item["attempts"], 2);
    assert_eq!(item["attempt_log"][0]["outcome"], "retry");
    assert_eq!(item["attempt_log"][1]["outcome"], "succeeded");
}

#[test]
fn fail_fast_starts_no_new_item_after_one_fails_and_the_run_fails_once() {
    let receiver = QstashReceiver::start();
    let dir = temp_dir();
    let db = dir.path().join("runner.db").display().to_string();
    let wf = file(
        dir.path(),
        "items-fail",
        &receiver,
        r#"
steps:
  - id: send
    foreach: ["/ok", "/nonretryable", "/ok", "/ok"]
    as: path
    max_parallel: 1
    http: { url: "BASE{{ path }}" }
on_failure:
  - http: { url: BASE/echo, body: { error: "{{ failure.error }}" } }
"#,
    );
    let out = runner(&["run", &wf, "--db", &db], &receiver);
    assert!(!out.status.success(), "{out:?}");
    let id = run_id(&out.stdout);
    assert_eq!(
        calls_to(&receiver, &id, "/ok").len(),
        1,
        "items after the failure never start"
    );
    let view = show_json(&db, &id, &receiver);
    assert_eq!(view["status"], "failed");
    let send = step(&view, "send");
    assert_eq!(send["status"], "failed");
    let error = send["error"].as_str().expect("error");
    assert!(
        error.starts_with("1 of 4 items failed (2 not started: `fail_fast`); item `1`"),
        "{error}"
    );
    let hooks = calls_to(&receiver, &id, "/echo");
    assert_eq!(hooks.len(), 1, "on_failure ran once");
    let statuses: Vec<&str> = send["items"]["list"]
        .as_array()
        .expect("list")
        .iter()
        .map(|i| i["status"].as_str().expect("status"))
        .collect();
    assert_eq!(statuses, ["succeeded", "failed", "pending", "pending"]);
}

#[test]
fn kill_9_in_the_middle_of_a_fan_out_then_resume_does_every_item_once() {
    let receiver = QstashReceiver::start();
    let dir = temp_dir();
    let db = dir.path().join("runner.db").display().to_string();
    let yaml = format!(
        r#"
steps:
  - id: notify
    foreach: {}
    key: "{{{{ item.id }}}}"
    max_parallel: 4
    http: {{ url: "BASE/slow/150", body: {{ id: "{{{{ item.id }}}}" }} }}
  - id: after
    http: {{ url: BASE/echo }}
"#,
        ids(40)
    );
    let wf = file(dir.path(), "fan-crash", &receiver, &yaml);
    let mut cmd = runner_cmd();
    cmd.args(["run", &wf, "--db", &db])
        .env("RUNNER_SIGNING_KEY", &receiver.current_key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = KillOnDrop(cmd.spawn().expect("spawn runner run"));
    wait_for(Duration::from_secs(30), "a dozen items answered", || {
        let n = receiver_log(&receiver)
            .iter()
            .filter(|r| r["path"] == "/slow/150" && r["status"] == 200)
            .count();
        (n >= 12).then_some(())
    });
    child.0.kill().expect("kill -9");
    let _ = child.0.wait();
    let id = receiver_log(&receiver)[0]["headers"]["runner-run-id"]
        .as_str()
        .expect("run id")
        .to_string();
    let out = runner(&["resume", "--db", &db], &receiver);
    assert!(out.status.success(), "{out:?}");
    let view = show_json(&db, &id, &receiver);
    assert_eq!(view["status"], "succeeded", "{view:#}");
    let calls = calls_to(&receiver, &id, "/slow/150");
    let list = step(&view, "notify")["items"]["list"]
        .as_array()
        .expect("items")
        .clone();
    assert_eq!(list.len(), 40);
    let mut resent = 0;
    for item in &list {
        let key = item["key"].as_str().expect("key");
        let mine: Vec<&Value> = calls
            .iter()
            .filter(|r| r["headers"]["runner-item"] == key)
            .collect();
        assert_eq!(item["status"], "succeeded", "{item:#}");
        // Sent once; or in flight at the kill, recorded `interrupted` and sent again as the
        // next attempt (the interrupted one may not have gone out before the kill).
        let attempts = item["attempts"].as_u64().expect("attempts");
        let interrupted = item["attempt_log"]
            .as_array()
            .expect("attempt log")
            .iter()
            .filter(|a| a["outcome"] == "interrupted")
            .count() as u64;
        assert!(
            (attempts - interrupted..=attempts).contains(&(mine.len() as u64)),
            "{} calls: {item:#}",
            mine.len()
        );
        if interrupted == 0 {
            assert_eq!(mine.len(), 1, "a finished item is not sent again: {item:#}");
        }
        if mine.len() > 1 {
            resent += 1;
            assert_eq!(item["attempt_log"][0]["outcome"], "interrupted", "{item:#}");
            assert_eq!(
                mine[0]["headers"]["upstash-message-id"],
                mine[1]["headers"]["upstash-message-id"]
            );
        }
    }
    assert!(
        resent <= 4,
        "only the items in flight at the kill were sent again ({resent})"
    );
    assert_eq!(calls_to(&receiver, &id, "/echo").len(), 1);
}
