//! Messages published through runner's QStash API: the run's input of the built-in `qstash`
//! workflow ([`Message`]), and the requests its [`Published`] steps send, taken from that input
//! (the message to its destination) and from the delivery's outcome (QStash's callback body).
//!
//! Part of the pure core: no I/O.

use super::Run;
use super::request::{FlowTicket, HttpRequest, MAX_BODY_BYTES};
use crate::workflow::{Published, Step, StepKind};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// A published message as a run of `qstash` keeps it (its input). Field names are the built-in
/// workflow's `inputs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub url: String,
    #[serde(default = "post")]
    pub method: String,
    /// The headers forwarded to the destination, in the order they were published.
    #[serde(default)]
    pub headers: Map<String, Value>,
    /// The body, base64 (standard, padded): a body need not be text.
    #[serde(default)]
    pub body: String,
    #[serde(default = "three")]
    pub retries: u32,
    /// Seconds one attempt may take; 0 is runner's default.
    #[serde(default)]
    pub timeout: u64,
    /// RFC 3339: delivered no earlier (`Upstash-Delay`, `Upstash-Not-Before`).
    #[serde(default)]
    pub not_before: String,
    #[serde(default)]
    pub callback: String,
    #[serde(default)]
    pub failure_callback: String,
    #[serde(default)]
    pub flow_control: FlowSpec,
    /// RFC 3339, when it was published (a schedule's messages: empty, the run's creation).
    #[serde(default)]
    pub published_at: String,
}

/// `Upstash-Flow-Control-Key` and `-Value`; an empty key is none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowSpec {
    #[serde(default)]
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
    /// Seconds; 0 is the default period.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub period: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn post() -> String {
    "POST".into()
}

fn three() -> u32 {
    3
}

impl Message {
    pub fn of(run: &Run) -> Result<Message, String> {
        serde_json::from_value(run.input.clone())
            .map_err(|e| format!("the run's input is not a published message: {e}"))
    }

    pub fn body_bytes(&self) -> Result<Vec<u8>, String> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.body)
            .map_err(|e| format!("the message body is not base64: {e}"))
    }

    /// The forwarded headers as QStash shows them: each name with a list of values.
    pub fn header_lists(&self) -> Map<String, Value> {
        header_lists(&self.headers)
    }
}

/// `{name: value}` as QStash shows headers, `{name: [value]}`.
pub fn header_lists(headers: &Map<String, Value>) -> Map<String, Value> {
    headers
        .iter()
        .map(|(k, v)| {
            let list = match v {
                Value::Array(a) => Value::Array(a.clone()),
                Value::String(s) => json!([s]),
                other => json!([other.to_string()]),
            };
            (k.clone(), list)
        })
        .collect()
}

/// Which request a step of the built-in workflow sends, if it is one.
pub fn published(def: &Step) -> Option<Published> {
    match &def.kind {
        StepKind::Http(call) => call.published,
        _ => None,
    }
}

/// How many times a failed attempt of `def` is tried again: a published message's own
/// `Upstash-Retries`, else the step's `retry.limit`.
pub fn retry_limit(def: &Step, run: &Run) -> u32 {
    match published(def) {
        Some(Published::Message) => run
            .input
            .get("retries")
            .and_then(Value::as_u64)
            .map_or(def.retry.limit, |n| n.min(u64::from(u32::MAX)) as u32),
        _ => def.retry.limit,
    }
}

/// The request of a [`Published`] step of `run`.
pub fn render(kind: Published, run: &Run) -> Result<HttpRequest, String> {
    let m = Message::of(run)?;
    match kind {
        Published::Message => {
            let body = m.body_bytes()?;
            if body.len() > MAX_BODY_BYTES {
                return Err(format!(
                    "the message body is {} bytes, over runner's limit of {} KiB",
                    body.len(),
                    MAX_BODY_BYTES / 1024
                ));
            }
            let headers = m
                .headers
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Array(a) => a
                            .iter()
                            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                            .collect::<Vec<_>>()
                            .join(", "),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect();
            let flow = (!m.flow_control.key.is_empty()).then(|| FlowTicket {
                key: m.flow_control.key.clone(),
                limits: crate::flow::Limits {
                    parallelism: m.flow_control.parallelism,
                    rate: m.flow_control.rate,
                    period: match m.flow_control.period {
                        0 => crate::flow::DEFAULT_PERIOD,
                        s => Duration::from_secs(s),
                    },
                },
            });
            Ok(HttpRequest {
                method: m.method.clone(),
                url: m.url.clone(),
                headers,
                body,
                // Receivers match `Upstash-Message-Id` with the id the publisher was answered.
                dedup_id: Some(run.id.clone()),
                flow,
                timeout: (m.timeout > 0).then(|| Duration::from_secs(m.timeout)),
            })
        }
        Published::Callback | Published::FailureCallback => {
            let (url, body) = if kind == Published::Callback {
                (m.callback.clone(), callback_body(&m, run))
            } else {
                (m.failure_callback.clone(), failure_callback_body(&m, run))
            };
            Ok(HttpRequest {
                method: "POST".into(),
                url,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: serde_json::to_vec(&body).expect("a JSON value serializes"),
                dedup_id: None,
                flow: None,
                timeout: None,
            })
        }
    }
}

/// A response body as the callback carries it: base64 of its bytes (a JSON body as runner
/// recorded it, re-serialized).
fn body_base64(body: Option<&Value>) -> String {
    let bytes = match body {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.as_bytes().to_vec(),
        Some(v) => serde_json::to_vec(v).expect("a JSON value serializes"),
    };
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// What QStash's callback bodies share: the message and when it was published.
fn source_fields(m: &Message, run: &Run, retried: u32) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("retried".into(), json!(retried));
    f.insert("maxRetries".into(), json!(m.retries));
    f.insert("sourceMessageId".into(), json!(run.id));
    f.insert("url".into(), json!(m.url));
    f.insert("method".into(), json!(m.method));
    f.insert("sourceHeader".into(), Value::Object(m.header_lists()));
    f.insert("sourceBody".into(), json!(m.body));
    f.insert("topicName".into(), json!(""));
    f.insert("endpointName".into(), json!(""));
    f.insert(
        "notBefore".into(),
        json!(millis(&m.not_before).unwrap_or(run.created_at.timestamp_millis())),
    );
    f.insert("createdAt".into(), json!(run.created_at.timestamp_millis()));
    f.insert(
        "scheduleId".into(),
        json!(run.schedule_id.clone().unwrap_or_default()),
    );
    f.insert("callerIP".into(), json!(""));
    f
}

fn millis(rfc3339: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .map(|d| d.timestamp_millis())
}

/// QStash's callback body: the destination's answer (status, headers, body base64), and the
/// message.
fn callback_body(m: &Message, run: &Run) -> Value {
    let deliver = run.step("deliver");
    let out = deliver.and_then(|s| s.output.as_ref());
    let status = out
        .and_then(|o| o.get("status"))
        .cloned()
        .unwrap_or(json!(0));
    // The answer's own headers, not those of its connection.
    let headers = out
        .and_then(|o| o.get("headers"))
        .and_then(Value::as_object)
        .map(|h| {
            let mut h = header_lists(h);
            h.retain(|k, _| {
                !matches!(
                    k.to_ascii_lowercase().as_str(),
                    "connection" | "keep-alive" | "transfer-encoding" | "content-length"
                )
            });
            h
        })
        .unwrap_or_default();
    let retried = deliver.map_or(0, |s| s.attempts.saturating_sub(1));
    let mut f = Map::new();
    f.insert("status".into(), status);
    f.insert("header".into(), Value::Object(headers));
    f.insert(
        "body".into(),
        json!(body_base64(out.and_then(|o| o.get("body")))),
    );
    f.extend(source_fields(m, run, retried));
    Value::Object(f)
}

/// QStash's failure callback body: the last answer (or error) of the delivery that failed for
/// good, and the message.
fn failure_callback_body(m: &Message, run: &Run) -> Value {
    let failure = run.failure.as_ref();
    let retried = failure.map_or(0, |f| f.attempts.saturating_sub(1));
    let mut f = Map::new();
    f.insert(
        "status".into(),
        json!(failure.and_then(|f| f.status).unwrap_or(0)),
    );
    f.insert("header".into(), json!({}));
    f.insert(
        "body".into(),
        json!(body_base64(failure.and_then(|f| f.body.as_ref()))),
    );
    f.insert(
        "error".into(),
        json!(failure.map(|f| f.error.clone()).unwrap_or_default()),
    );
    // The message is in the dead-letter queue under its own id.
    f.insert("dlqId".into(), json!(run.id));
    f.extend(source_fields(m, run, retried));
    Value::Object(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Event, NewRun, Outcome, Trigger, decide};
    use chrono::{DateTime, Utc};

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    fn message() -> Message {
        serde_json::from_value(json!({
            "url": "http://127.0.0.1:9/hook?a=1",
            "method": "PUT",
            "headers": {"Content-Type": "application/json", "X-Custom": "v"},
            "body": base64::engine::general_purpose::STANDARD.encode(b"{\"hi\":1}"),
            "retries": 1,
            "timeout": 5,
            "callback": "http://127.0.0.1:9/cb",
            "flow_control": {"key": "k", "parallelism": 2}
        }))
        .expect("a message")
    }

    fn run_of(m: &Message) -> (crate::workflow::Workflow, Run) {
        let wf = crate::workflow::builtin::qstash();
        let (new, _) = NewRun::prepare(
            &wf,
            "msg-1".into(),
            "v".into(),
            Trigger::Api,
            &serde_json::to_value(m).expect("json"),
            at("2026-12-03T10:00:00Z"),
        )
        .expect("the built-in workflow takes a message");
        let run = Run::new(&wf, new, at("2026-12-03T10:00:00Z"));
        (wf, run)
    }

    #[test]
    fn the_delivery_is_the_message_as_published() {
        let (wf, run) = run_of(&message());
        let req = crate::engine::request::render_http(&wf, &run, "deliver", &Map::new(), None)
            .expect("renders");
        assert_eq!(req.method, "PUT");
        assert_eq!(req.url, "http://127.0.0.1:9/hook?a=1");
        assert_eq!(req.body, b"{\"hi\":1}");
        assert_eq!(
            req.headers,
            [
                ("Content-Type".to_string(), "application/json".to_string()),
                ("X-Custom".to_string(), "v".to_string())
            ]
        );
        assert_eq!(req.dedup_id.as_deref(), Some("msg-1"), "the message id");
        assert_eq!(req.timeout, Some(Duration::from_secs(5)));
        let flow = req.flow.expect("keyed");
        assert_eq!((flow.key.as_str(), flow.limits.parallelism), ("k", Some(2)));
        assert!(
            !crate::engine::request::has_templates(&wf, "deliver"),
            "a message is copied, not rendered"
        );
    }

    #[test]
    fn the_message_says_how_often_it_is_retried_and_what_the_callback_gets() {
        let (wf, run) = run_of(&message());
        let t = at("2026-12-03T10:00:00Z");
        let (run, _) = decide(&wf, &run, &Event::Started, t);
        let fail = |run: &Run, attempt| {
            decide(
                &wf,
                run,
                &Event::AttemptFailed {
                    step: "deliver".into(),
                    attempt,
                    error: "HTTP 500".into(),
                    status: Some(500),
                    body: None,
                    outcome: Outcome::Retryable { after: None },
                    item: None,
                },
                t,
            )
            .0
        };
        let run = fail(&run, 1);
        assert_eq!(
            run.step("deliver").map(|s| s.status),
            Some(crate::engine::StepStatus::Retrying),
            "Upstash-Retries: 1 leaves one retry"
        );
        let (run, _) = decide(
            &wf,
            &run,
            &Event::TimerFired {
                step: "deliver".into(),
            },
            at("2026-12-03T11:00:00Z"),
        );
        let (run, _) = decide(
            &wf,
            &run,
            &Event::AttemptSucceeded {
                step: "deliver".into(),
                attempt: 2,
                output: json!({"status": 201, "headers": {"x-a": "b"}, "body": "done"}),
                item: None,
            },
            t,
        );
        let req = crate::engine::request::render_http(&wf, &run, "callback", &Map::new(), None)
            .expect("renders");
        assert_eq!(req.url, "http://127.0.0.1:9/cb");
        let body: Value = serde_json::from_slice(&req.body).expect("JSON");
        assert_eq!(body["status"], 201);
        assert_eq!(body["header"], json!({"x-a": ["b"]}));
        assert_eq!(body["body"], "ZG9uZQ==", "base64 of the answer");
        assert_eq!(body["retried"], 1);
        assert_eq!(body["maxRetries"], 1);
        assert_eq!(body["sourceMessageId"], "msg-1");
        assert_eq!(body["sourceBody"], message().body);
        assert_eq!(body["sourceHeader"]["X-Custom"], json!(["v"]));

        // With no retries left, the step fails for good.
        let (wf, run) = run_of(&Message {
            retries: 0,
            ..message()
        });
        let (run, _) = decide(&wf, &run, &Event::Started, t);
        let run = fail(&run, 1);
        assert_eq!(
            run.step("deliver").map(|s| s.status),
            Some(crate::engine::StepStatus::Failed)
        );
    }
}
