//! runner as a QStash server: the real `Client` of `@upstash/qstash` (`tests/qstash/client.mjs`)
//! publishes, schedules and reads the dead-letter queue through the daemon's `/v2` API, and the
//! real `Receiver` (`tests/qstash/receiver.mjs`) verifies every delivery and callback.

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::{
    Daemon, QstashReceiver, now_ms, receiver_and_workflows, receiver_log, wait_for,
};

const TOKEN: &str = "qstash-api-test-token";

/// Runs the Client's `calls` against the daemon; answers one result per call.
fn client_with(daemon: &Daemon, token: &str, calls: Value) -> Vec<Value> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/qstash/client.mjs");
    let out = Command::new("node")
        .arg(script)
        .arg(calls.to_string())
        .env("QSTASH_URL", &daemon.base)
        .env("QSTASH_TOKEN", token)
        .env_remove("QSTASH_DEV")
        .env_remove("QSTASH_REGION")
        .env("UPSTASH_DISABLE_TELEMETRY", "")
        .output()
        .expect("run node tests/qstash/client.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client.mjs failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_str(stdout.trim()) {
        Ok(Value::Array(results)) => results,
        _ => panic!("client.mjs printed {stdout:?}"),
    }
}

fn client(daemon: &Daemon, calls: Value) -> Vec<Value> {
    client_with(daemon, TOKEN, calls)
}

/// The answer of a call that must have succeeded.
fn ok(result: &Value) -> &Value {
    assert!(
        result.get("ok").is_some(),
        "the Client's call failed: {result}"
    );
    &result["ok"]
}

fn start() -> (QstashReceiver, tempfile::TempDir, Daemon) {
    let (receiver, dir, wf) = receiver_and_workflows();
    let daemon = Daemon::start(&wf, &dir.path().join("runner.db"), Some(TOKEN));
    (receiver, dir, daemon)
}

/// The receiver's records of `path`, once there are `n` (20 s at most).
fn records_at(receiver: &QstashReceiver, path: &str, n: usize) -> Vec<Value> {
    wait_for(
        Duration::from_secs(20),
        &format!("{n} requests to {path}"),
        || {
            let r: Vec<Value> = receiver_log(receiver)
                .into_iter()
                .filter(|r| r["path"] == path)
                .collect();
            (r.len() >= n).then_some(r)
        },
    )
}

fn count_at(receiver: &QstashReceiver, path: &str) -> usize {
    receiver_log(receiver)
        .iter()
        .filter(|r| r["path"] == path)
        .count()
}

fn header<'a>(record: &'a Value, name: &str) -> &'a str {
    record["headers"][name].as_str().unwrap_or_default()
}

#[test]
fn the_client_publishes_and_each_message_is_delivered_once_and_verified() {
    let (receiver, _dir, daemon) = start();
    let url = |p: &str| receiver.url(p);
    let results = client(
        &daemon,
        json!([
            ["publishJSON", {"url": url("/echo"), "body": {"n": 1},
                "headers": {"X-Custom": "yes", "Upstash-Unknown-Thing": "ignored"}}],
            ["publishJSON", {"url": url("/dedup"), "body": {"n": 2}, "deduplicationId": "d-1"}],
            ["publishJSON", {"url": url("/dedup"), "body": {"n": 3}, "deduplicationId": "d-1"}],
            ["publishJSON", {"url": url("/content"), "body": {"n": 4}, "contentBasedDeduplication": true}],
            ["publishJSON", {"url": url("/content"), "body": {"n": 4}, "contentBasedDeduplication": true}],
            ["batchJSON", [{"url": url("/batch-a"), "body": {"b": 1}}, {"url": url("/batch-b"), "body": "text"}]],
            ["messages.get", {"$": 0, "at": "messageId"}],
            ["publishJSON", {"url": url("/never"), "body": {}, "flowControl": {"key": "k", "rate": "fast"}}],
        ]),
    );
    let first = ok(&results[0]);
    let id = first["messageId"].as_str().expect("messageId");
    assert_eq!(first["url"], url("/echo"));
    assert_eq!(
        ok(&results[1])["messageId"],
        ok(&results[2])["messageId"],
        "the same deduplication id answers the first message"
    );
    assert_eq!(ok(&results[2])["deduplicated"], true);
    assert_eq!(ok(&results[3])["messageId"], ok(&results[4])["messageId"]);
    assert_eq!(ok(&results[4])["deduplicated"], true);
    assert_eq!(ok(&results[5]).as_array().map(Vec::len), Some(2));
    let got = ok(&results[6]);
    assert_eq!(got["messageId"], id);
    assert_eq!(got["url"], url("/echo"));
    assert_eq!(got["method"], "POST");
    assert_eq!(got["header"]["X-Custom"], json!(["yes"]));
    assert_eq!(got["body"], "{\"n\":1}");
    assert_eq!(got["maxRetries"], 3);
    let bad = &results[7];
    assert_eq!(bad["status"], 400, "{bad}");
    assert!(
        bad["error"]
            .as_str()
            .is_some_and(|e| e
                .contains("Upstash-Flow-Control-Value should be either rate=X or parallelism=Y")),
        "QStash's error body: {bad}"
    );

    let echo = &records_at(&receiver, "/echo", 1)[0];
    assert_eq!(echo["valid"], true, "the Receiver verified it: {echo}");
    assert_eq!(echo["body"], "{\"n\":1}");
    assert_eq!(
        header(echo, "x-custom"),
        "yes",
        "forwarded without its prefix"
    );
    assert_eq!(header(echo, "content-type"), "application/json");
    assert_eq!(header(echo, "upstash-message-id"), id);
    assert!(echo["headers"].get("upstash-unknown-thing").is_none());
    assert!(echo["headers"].get("authorization").is_none());
    for (path, body) in [
        ("/dedup", "{\"n\":2}"),
        ("/content", "{\"n\":4}"),
        ("/batch-a", "{\"b\":1}"),
        ("/batch-b", "\"text\""),
    ] {
        let r = &records_at(&receiver, path, 1)[0];
        assert_eq!(r["valid"], true, "{r}");
        assert_eq!(r["body"], body);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count_at(&receiver, "/dedup"),
        1,
        "deduplicated: one delivery"
    );
    assert_eq!(
        count_at(&receiver, "/content"),
        1,
        "deduplicated by content"
    );
    assert_eq!(
        count_at(&receiver, "/never"),
        0,
        "a refused publish sends nothing"
    );

    // A message is a run of the built-in workflow, listed with the others.
    let (status, runs) = daemon.api().get("/runs?workflow=qstash");
    assert_eq!(status, 200);
    assert_eq!(runs.as_array().map(Vec::len), Some(5), "{runs}");

    // Without the token, nothing.
    let refused = client_with(&daemon, "wrong", json!([["messages.get", id]]));
    assert_eq!(refused[0]["status"], 401, "{refused:?}");
}

#[test]
fn a_delayed_message_waits_and_a_cancelled_one_is_never_sent() {
    let (receiver, _dir, daemon) = start();
    let published = now_ms();
    let results = client(
        &daemon,
        json!([
            ["publishJSON", {"url": receiver.url("/later"), "body": {}, "delay": 3}],
            ["publishJSON", {"url": receiver.url("/cancelled"), "body": {}, "delay": "60s"}],
            ["messages.cancel", {"$": 1, "at": "messageId"}],
            ["messages.get", {"$": 1, "at": "messageId"}],
            ["messages.get", {"$": 0, "at": "messageId"}],
        ]),
    );
    assert_eq!(ok(&results[2])["cancelled"], 1);
    assert_eq!(ok(&results[3])["state"], "CANCELLED");
    let waiting = ok(&results[4]);
    assert_eq!(waiting["state"], "CREATED", "{waiting}");
    assert!(
        waiting["notBefore"].as_i64().unwrap_or(0) >= published + 2_900,
        "notBefore is 3 s on: {waiting}"
    );
    let later = &records_at(&receiver, "/later", 1)[0];
    assert_eq!(later["valid"], true);
    let arrived = later["time"].as_i64().expect("time");
    assert!(
        arrived >= published + 3_000,
        "delivered {} ms after publishing, not before 3 s",
        arrived - published
    );
    assert_eq!(count_at(&receiver, "/cancelled"), 0);
}

#[test]
fn retries_callbacks_and_the_dead_letter_queue() {
    let (receiver, _dir, daemon) = start();
    let url = |p: &str| receiver.url(p);
    let results = client(
        &daemon,
        json!([
            ["publishJSON", {"url": url("/retry-after/1"), "body": {"r": 1}, "retries": 2,
                "callback": url("/cb")}],
            ["publishJSON", {"url": url("/flaky/1"), "body": {"f": 1}, "retries": 0,
                "failureCallback": url("/fcb")}],
            ["publishJSON", {"url": url("/nonretryable"), "body": {}, "retries": 0}],
        ]),
    );
    let retried_id = ok(&results[0])["messageId"]
        .as_str()
        .expect("id")
        .to_string();
    let flaky_id = ok(&results[1])["messageId"]
        .as_str()
        .expect("id")
        .to_string();
    let dead_id = ok(&results[2])["messageId"]
        .as_str()
        .expect("id")
        .to_string();

    // 429 with Retry-After: 1, then delivered, and the callback says so.
    let tries = records_at(&receiver, "/retry-after/1", 2);
    assert!(tries.iter().all(|r| r["valid"] == true));
    assert_eq!(header(&tries[1], "upstash-retried"), "1");
    let gap = tries[1]["time"].as_i64().unwrap_or(0) - tries[0]["time"].as_i64().unwrap_or(0);
    assert!(gap >= 950, "retried after Retry-After: 1 s, not {gap} ms");
    let cb = &records_at(&receiver, "/cb", 1)[0];
    assert_eq!(cb["valid"], true, "the callback is signed: {cb}");
    let body: Value = serde_json::from_str(cb["body"].as_str().unwrap_or("")).expect("JSON");
    assert_eq!(body["status"], 200);
    assert_eq!(body["sourceMessageId"], retried_id);
    assert_eq!(body["retried"], 1);
    assert_eq!(body["maxRetries"], 2);
    assert_eq!(body["url"], url("/retry-after/1"));
    let decode = |v: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or(""))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .expect("base64")
    };
    assert_eq!(decode(&body["sourceBody"]), "{\"r\":1}");
    assert!(
        !decode(&body["body"]).is_empty(),
        "the destination's answer: {body}"
    );

    // 500 with no retries: the failure callback, and the message in the DLQ.
    let fcb = &records_at(&receiver, "/fcb", 1)[0];
    assert_eq!(fcb["valid"], true);
    let body: Value = serde_json::from_str(fcb["body"].as_str().unwrap_or("")).expect("JSON");
    assert_eq!(body["status"], 500);
    assert_eq!(body["sourceMessageId"], flaky_id);
    records_at(&receiver, "/nonretryable", 1);
    let dlq = wait_for(Duration::from_secs(20), "two messages in the DLQ", || {
        let r = client(&daemon, json!([["dlq.listMessages"]]));
        let messages = ok(&r[0])["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (messages.len() == 2).then_some(messages)
    });
    let ids: Vec<&str> = dlq.iter().filter_map(|m| m["dlqId"].as_str()).collect();
    assert!(
        ids.contains(&flaky_id.as_str()) && ids.contains(&dead_id.as_str()),
        "{dlq:?}"
    );
    let flaky = dlq.iter().find(|m| m["dlqId"] == flaky_id).expect("listed");
    assert_eq!(flaky["responseStatus"], 500);
    assert_eq!(flaky["url"], url("/flaky/1"));

    // Retrying from the DLQ delivers it (the endpoint answers 200 the second time); deleting
    // takes the other out.
    let results = client(
        &daemon,
        json!([
            ["dlq.retry", flaky_id],
            ["dlq.delete", dead_id],
            ["dlq.listMessages"]
        ]),
    );
    assert_eq!(ok(&results[0])["responses"][0]["messageId"], flaky_id);
    let tries = records_at(&receiver, "/flaky/1", 2);
    assert_eq!(tries[1]["status"], 200);
    assert_eq!(header(&tries[1], "upstash-message-id"), flaky_id);
    let run = daemon.api().wait_run(&flaky_id, Duration::from_secs(20));
    assert_eq!(run["status"], "succeeded");
    let left = client(&daemon, json!([["dlq.listMessages"]]));
    assert_eq!(ok(&left[0])["messages"], json!([]), "{left:?}");
    assert!(
        ok(&left[0]).get("cursor").is_none(),
        "no cursor on the last page"
    );
}

#[test]
fn schedules_from_the_client_fire_and_pause_and_delete() {
    let (receiver, _dir, daemon) = start();
    let results = client(
        &daemon,
        json!([
            ["schedules.create", {"destination": receiver.url("/tick"), "cron": "* * * * *",
                "body": "{\"from\":\"schedule\"}", "scheduleId": "every-minute"}],
            ["schedules.create", {"destination": receiver.url("/paused"), "cron": "* * * * *"}],
            ["schedules.pause", {"schedule": {"$": 1, "at": "scheduleId"}}],
            ["schedules.list"],
            ["schedules.get", {"$": 1, "at": "scheduleId"}],
            ["schedules.create", {"destination": receiver.url("/bad"), "cron": "not a cron"}],
        ]),
    );
    assert_eq!(ok(&results[0])["scheduleId"], "every-minute");
    let paused_id = ok(&results[1])["scheduleId"]
        .as_str()
        .expect("id")
        .to_string();
    let list = ok(&results[3]).as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 2, "{list:?}");
    let tick = list
        .iter()
        .find(|s| s["scheduleId"] == "every-minute")
        .expect("listed");
    assert_eq!(tick["cron"], "* * * * *");
    assert_eq!(tick["destination"], receiver.url("/tick"));
    assert_eq!(tick["isPaused"], false);
    assert_eq!(ok(&results[4])["isPaused"], true);
    assert_eq!(results[5]["status"], 400, "{:?}", results[5]);
    assert!(
        results[5]["error"]
            .as_str()
            .is_some_and(|e| e.contains("Invalid cron expression"))
    );

    // The per-minute schedule fires within a minute, signed, with its schedule id.
    let fired = wait_for(Duration::from_secs(70), "the schedule to fire", || {
        receiver_log(&receiver)
            .into_iter()
            .find(|r| r["path"] == "/tick")
    });
    assert_eq!(fired["valid"], true);
    assert_eq!(fired["body"], "{\"from\":\"schedule\"}");
    assert_eq!(header(&fired, "upstash-schedule-id"), "every-minute");
    assert_eq!(
        count_at(&receiver, "/paused"),
        0,
        "a paused schedule does not fire"
    );

    let results = client(
        &daemon,
        json!([
            ["schedules.resume", {"schedule": paused_id}],
            ["schedules.get", paused_id],
            ["schedules.delete", "every-minute"],
            ["schedules.delete", paused_id],
            ["schedules.list"],
            ["schedules.get", "every-minute"],
        ]),
    );
    assert_eq!(ok(&results[1])["isPaused"], false);
    assert_eq!(ok(&results[4]), &json!([]));
    assert_eq!(results[5]["status"], 404);
}

#[test]
fn a_message_survives_kill_9_and_is_delivered_once() {
    let (receiver, dir, wf) = receiver_and_workflows();
    let db = dir.path().join("runner.db");
    let mut daemon = Daemon::start(&wf, &db, Some(TOKEN));
    let results = client(
        &daemon,
        json!([["publishJSON", {"url": receiver.url("/after-crash"), "body": {"k": 9}, "delay": 2}]]),
    );
    let id = ok(&results[0])["messageId"]
        .as_str()
        .expect("id")
        .to_string();
    daemon.kill9();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count_at(&receiver, "/after-crash"),
        0,
        "nothing ran while it was down"
    );
    let daemon = Daemon::start(&wf, &db, Some(TOKEN));
    let got = &records_at(&receiver, "/after-crash", 1)[0];
    assert_eq!(got["valid"], true);
    assert_eq!(header(got, "upstash-message-id"), id);
    let run = daemon.api().wait_run(&id, Duration::from_secs(20));
    assert_eq!(run["status"], "succeeded");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count_at(&receiver, "/after-crash"), 1, "delivered once");
}

#[test]
fn a_flow_control_key_holds_messages_to_its_parallelism() {
    let (receiver, _dir, daemon) = start();
    let calls: Vec<Value> = (0..4)
        .map(|i| {
            json!(["publishJSON", {"url": receiver.url("/slow/300"), "body": {"i": i},
                "flowControl": {"key": "one-at-a-time", "parallelism": 1}}])
        })
        .collect();
    let results = client(&daemon, Value::Array(calls));
    assert!(results.iter().all(|r| r.get("ok").is_some()), "{results:?}");
    let done = records_at(&receiver, "/slow/300", 4);
    let most = done
        .iter()
        .filter_map(|r| r["in_flight"].as_u64())
        .max()
        .unwrap_or(0);
    assert_eq!(most, 1, "one call of the key at a time: {done:?}");
}

#[test]
fn filters_choose_what_a_bulk_cancel_or_dlq_call_takes() {
    let (receiver, _dir, daemon) = start();
    let url = |p: &str| receiver.url(p);
    let results = client(
        &daemon,
        json!([
            ["publishJSON", {"url": url("/held"), "body": {}, "delay": 60,
                "flowControl": {"key": "fa", "parallelism": 10}}],
            ["publishJSON", {"url": url("/held"), "body": {}, "delay": 60}],
            ["messages.cancel", {"filter": {"flowControlKey": "fa"}}],
            ["messages.get", {"$": 0, "at": "messageId"}],
            ["messages.get", {"$": 1, "at": "messageId"}],
            ["publishJSON", {"url": url("/nonretryable?n=1"), "body": {}, "retries": 0}],
            ["publishJSON", {"url": url("/nonretryable?n=2"), "body": {}, "retries": 0}],
            ["publishJSON", {"url": url("/ok"), "body": {}, "callback": url("/nonretryable?cb=1")}],
        ]),
    );
    assert_eq!(
        ok(&results[2])["cancelled"],
        1,
        "only the keyed one: {results:?}"
    );
    assert_eq!(ok(&results[3])["state"], "CANCELLED");
    assert_eq!(
        ok(&results[4])["state"],
        "CREATED",
        "the other is untouched"
    );
    let with_callback = ok(&results[7])["messageId"]
        .as_str()
        .expect("id")
        .to_string();

    wait_for(Duration::from_secs(20), "two messages in the DLQ", || {
        let r = client(&daemon, json!([["dlq.listMessages"]]));
        (ok(&r[0])["messages"].as_array().map(Vec::len) == Some(2)).then_some(())
    });
    let results = client(
        &daemon,
        json!([
            ["dlq.listMessages", {"filter": {"url": url("/nonretryable?n=1")}}],
            ["dlq.retry", {"filter": {"url": "http://nothing.invalid/x"}}],
            ["dlq.delete", {"filter": {"url": url("/nonretryable?n=1")}}],
            ["dlq.listMessages"],
        ]),
    );
    assert_eq!(
        ok(&results[0])["messages"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        ok(&results[0])["messages"][0]["url"],
        url("/nonretryable?n=1")
    );
    assert_eq!(
        ok(&results[1])["responses"],
        json!([]),
        "a filter matching none retries none"
    );
    assert_eq!(ok(&results[2])["deleted"], 1);
    let left = ok(&results[3])["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["url"], url("/nonretryable?n=2"));

    // A callback that fails leaves the delivered message delivered, out of the DLQ.
    let run = daemon
        .api()
        .wait_run(&with_callback, Duration::from_secs(20));
    assert_eq!(run["status"], "succeeded", "{run}");

    // A filter runner does not know is refused, not ignored.
    let r = crate::support::http_request(
        "DELETE",
        &format!("{}/v2/messages?bogus=1", daemon.base),
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        None,
    )
    .expect("answered");
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown filter `bogus`"))
    );
    assert_eq!(
        ok(&client(
            &daemon,
            json!([["messages.get", ok(&results[3])["messages"][0]["messageId"]]])
        )[0])["state"],
        "FAILED"
    );
}

#[test]
fn a_message_runner_cannot_send_is_refused_when_published() {
    let (receiver, _dir, daemon) = start();
    let auth = format!("Bearer {TOKEN}");
    let publish = |headers: &[(&str, &str)], body: &str| {
        let mut all = vec![("Authorization", auth.as_str())];
        all.extend_from_slice(headers);
        crate::support::http_request(
            "POST",
            &format!("{}/v2/publish/{}", daemon.base, receiver.url("/never")),
            &all,
            Some(body),
        )
        .expect("answered")
    };
    for (size, status) in [(1024 * 1024 + 1, 413), (3 * 1024 * 1024 / 2, 413)] {
        let r = publish(&[], &"x".repeat(size));
        assert_eq!(r.status, status, "{size} bytes");
        assert!(
            r.json()["error"].is_string(),
            "QStash's error shape: {}",
            r.body
        );
    }
    for (headers, says) in [
        (
            vec![("Upstash-Not-Before", "1796290000000")],
            "not milliseconds",
        ),
        (
            vec![("Upstash-Forward-Upstash-Signature", "forged")],
            "cannot be forwarded",
        ),
        (
            vec![("Upstash-Forward-Content-Length", "999")],
            "cannot be forwarded",
        ),
    ] {
        let r = publish(&headers, "{}");
        assert_eq!(r.status, 400, "{headers:?}: {}", r.body);
        assert!(
            r.json()["error"].as_str().is_some_and(|e| e.contains(says)),
            "{}",
            r.body
        );
    }
    // The token given as ?qstash_token=, however encoded, is not part of the destination.
    let r = crate::support::http_request(
        "POST",
        &format!(
            "{}/v2/publish/{}?a=1&qstash%5Ftoken={TOKEN}",
            daemon.base,
            receiver.url("/echo")
        ),
        &[],
        Some("{}"),
    )
    .expect("answered");
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["url"], format!("{}?a=1", receiver.url("/echo")));
    let got = &records_at(&receiver, "/echo", 1)[0];
    assert_eq!(
        got["url"], "/echo?a=1",
        "the token never reaches the endpoint"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count_at(&receiver, "/never"), 0);
}
