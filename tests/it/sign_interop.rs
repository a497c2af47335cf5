//! Interop: requests signed by `runner::sign` are accepted, and tampered ones refused, by the real
//! `Receiver` of `@upstash/qstash`, running in `tests/qstash/receiver.mjs`.
//!
//! Needs Node.js 18+ and `npm ci --prefix tests/qstash`; without them these tests fail, they do not skip.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use runner::sign::{jti_from_random, key_from_random, sign};
use serde_json::{Value, json};

use crate::support::QstashReceiver;

fn client() -> reqwest::Client {
    // runner's reqwest uses rustls without a built-in provider; building any client needs one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn unix_now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    i64::try_from(secs).expect("seconds fit in i64")
}

fn new_jti(n: u8) -> String {
    jti_from_random([n; 16])
}

struct Sent {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    json: Value,
}

/// POSTs `body` to `url` with the given signature and message id.
async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    message_id: &str,
    body: &[u8],
) -> Sent {
    let response = client
        .post(url)
        .header("Upstash-Signature", token)
        .header("Upstash-Message-Id", message_id)
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("response body");
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{url} answered {status} {text:?}: {e}"));
    Sent {
        status,
        headers,
        json,
    }
}

async fn log(client: &reqwest::Client, receiver: &QstashReceiver) -> Vec<Value> {
    let response = client
        .get(receiver.url("/__log"))
        .send()
        .await
        .expect("GET /__log");
    let text = response.text().await.expect("GET /__log body");
    match serde_json::from_str(&text).expect("/__log answers JSON") {
        Value::Array(records) => records,
        other => panic!("/__log answered {other}"),
    }
}

#[tokio::test]
async fn real_receiver_accepts_runner_signatures_and_refuses_tampering() {
    let receiver = QstashReceiver::start();
    let client = client();
    let url = receiver.url("/ok");
    let body = br#"{"hello":"world"}"#;
    let now = unix_now();
    let current = receiver.current_key.as_str();
    let next = receiver.next_key.as_str();

    // Accepted: the current key, the next key (during a rotation), a query string in the URL.
    let sent = post(
        &client,
        &url,
        &sign(current, &url, body, now, &new_jti(1)),
        "msg_1",
        body,
    )
    .await;
    assert_eq!(
        (sent.status, &sent.json),
        (StatusCode::OK, &json!({"ok": true, "n": 1}))
    );
    let sent = post(
        &client,
        &url,
        &sign(next, &url, body, now, &new_jti(2)),
        "msg_2",
        body,
    )
    .await;
    assert_eq!(
        (sent.status, &sent.json),
        (StatusCode::OK, &json!({"ok": true, "n": 2}))
    );
    let query_url = receiver.url("/ok?user=a%20b&days=7");
    let sent = post(
        &client,
        &query_url,
        &sign(current, &query_url, body, now, &new_jti(3)),
        "msg_3",
        body,
    )
    .await;
    assert_eq!(sent.status, StatusCode::OK, "query string: {}", sent.json);

    // Refused, each with the Receiver's own reason.
    let cases: [(&str, String, &[u8], &str); 6] = [
        (
            "tampered body",
            sign(current, &url, body, now, &new_jti(4)),
            br#"{"hello":"world!"}"#,
            "body hash does not match",
        ),
        (
            "token for another URL (trailing slash)",
            sign(current, &format!("{url}/"), body, now, &new_jti(5)),
            body,
            "invalid subject",
        ),
        (
            "unrelated key",
            sign(&key_from_random([3; 32]), &url, body, now, &new_jti(6)),
            body,
            "signature verification failed",
        ),
        (
            "expired",
            sign(current, &url, body, now - 400, &new_jti(7)),
            body,
            // The Receiver reports the next key's failure after the current key's `exp` check failed.
            "signature verification failed",
        ),
        (
            "not yet valid",
            sign(current, &url, body, now + 120, &new_jti(8)),
            body,
            "signature verification failed",
        ),
        ("no signature", String::new(), body, "Invalid Compact JWS"),
    ];
    for (i, (name, token, sent_body, reason)) in cases.iter().enumerate() {
        let sent = post(&client, &url, token, &format!("msg_bad_{i}"), sent_body).await;
        assert_eq!(
            sent.status,
            StatusCode::UNAUTHORIZED,
            "{name}: {}",
            sent.json
        );
        let error = sent.json["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(reason),
            "{name}: error {error:?} should contain {reason:?}"
        );
    }

    // The receiver saw what was sent, headers included.
    let records = log(&client, &receiver).await;
    let valid: Vec<bool> = records.iter().map(|r| r["valid"] == true).collect();
    assert_eq!(
        valid,
        [true, true, true, false, false, false, false, false, false]
    );
    assert_eq!(records[0]["headers"]["upstash-message-id"], "msg_1");
    assert_eq!(records[0]["body"], r#"{"hello":"world"}"#);
    assert_eq!(records[2]["url"], "/ok?user=a%20b&days=7");
}

#[tokio::test]
async fn real_receiver_verifies_utf8_bodies_and_empty_bodies() {
    let receiver = QstashReceiver::start();
    let client = client();
    let url = receiver.url("/echo");
    let now = unix_now();
    let body = r#"{"name":"Zoë","note":"naïve ☃ 𝄞","escaped":"\u00e9"}"#.as_bytes();
    let token = sign(&receiver.current_key, &url, body, now, &new_jti(1));
    let sent = post(&client, &url, &token, "msg_1", body).await;
    assert_eq!(sent.status, StatusCode::OK, "{}", sent.json);
    assert_eq!(
        sent.json,
        json!({"received": {"name": "Zoë", "note": "naïve ☃ 𝄞", "escaped": "é"}})
    );

    let token = sign(&receiver.current_key, &url, b"", now, &new_jti(2));
    let sent = post(&client, &url, &token, "msg_2", b"").await;
    assert_eq!(
        (sent.status, &sent.json),
        (StatusCode::OK, &json!({"received": ""}))
    );
}

#[tokio::test]
async fn receiver_behaviours_for_retry_tests() {
    let receiver = QstashReceiver::start();
    let client = client();
    let now = unix_now();
    let key = receiver.current_key.clone();
    let body = b"{}";
    let signed = |path: &str, n: u8| {
        let url = receiver.url(path);
        let token = sign(&key, &url, body, now, &new_jti(n));
        (url, token)
    };

    // `/flaky/2`: 500, 500, then 200, counted per message id.
    let (url, token) = signed("/flaky/2", 1);
    let statuses = [
        post(&client, &url, &token, "msg_a", body).await.status,
        post(&client, &url, &token, "msg_a", body).await.status,
        post(&client, &url, &token, "msg_b", body).await.status,
        post(&client, &url, &token, "msg_a", body).await.status,
    ];
    assert_eq!(statuses.map(|s| s.as_u16()), [500, 500, 500, 200]);

    // `/retry-after/7`: 429 with `Retry-After: 7` once per message id, then 200.
    let (url, token) = signed("/retry-after/7", 2);
    let first = post(&client, &url, &token, "msg_c", body).await;
    assert_eq!(first.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(first.headers["retry-after"], "7");
    assert_eq!(
        post(&client, &url, &token, "msg_c", body).await.status,
        StatusCode::OK
    );

    // `/nonretryable`: 489 with `Upstash-NonRetryable-Error: true`.
    let (url, token) = signed("/nonretryable", 3);
    let sent = post(&client, &url, &token, "msg_d", body).await;
    assert_eq!(sent.status.as_u16(), 489);
    assert_eq!(sent.headers["upstash-nonretryable-error"], "true");

    // `/slow/300`: answers after 300 ms.
    let (url, token) = signed("/slow/300", 4);
    let started = Instant::now();
    assert_eq!(
        post(&client, &url, &token, "msg_e", body).await.status,
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    // Anything else: 200 `{}`.
    let (url, token) = signed("/anything", 5);
    let sent = post(&client, &url, &token, "msg_f", body).await;
    assert_eq!((sent.status, &sent.json), (StatusCode::OK, &json!({})));

    let records = log(&client, &receiver).await;
    assert_eq!(records.len(), 9);
    assert!(records.iter().all(|r| r["valid"] == true), "{records:?}");
    let statuses: Vec<_> = records
        .iter()
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(statuses, [500, 500, 500, 200, 429, 200, 489, 200, 200]);

    // `POST /__reset` forgets records and counters.
    let reset = client
        .post(receiver.url("/__reset"))
        .send()
        .await
        .expect("POST /__reset");
    assert_eq!(reset.status(), StatusCode::OK);
    assert!(log(&client, &receiver).await.is_empty());
    let (url, token) = signed("/flaky/1", 6);
    assert_eq!(
        post(&client, &url, &token, "msg_a", body)
            .await
            .status
            .as_u16(),
        500
    );
}
