//! Publishing a message as QStash does (`POST /v2/publish/{url}`, `/v2/batch`): the request's
//! `Upstash-*` headers read into a [`Message`], which starts a run of the built-in `qstash`
//! workflow. Its deduplication id (`Upstash-Deduplication-Id`, or a hash of the message with
//! `Upstash-Content-Based-Deduplication`) is the run's idempotency key, so the same id again
//! answers the first message.
//!
//! I/O shell: the header rules are pure functions here, the start goes through `ops::start`.

use super::Workflows;
use super::start::{self, StartError};
use crate::engine::message::{FlowSpec, Message};
use crate::engine::{Run, Trigger};
use crate::runtime::Executor;
use crate::store::StoreError;
use crate::workflow::builtin::QSTASH;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// The most retries a message may ask for.
pub const MAX_RETRIES: u32 = 100;
/// The longest `Upstash-Timeout` (the built-in workflow's step timeout).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(2 * 3600);
/// QStash's own words for a flow-control value it cannot read.
pub const BAD_FLOW_VALUE: &str = "Upstash-Flow-Control-Value should be either rate=X or parallelism=Y, or both as comma-separated values";

/// A message read from a request, and the idempotency key it deduplicates by.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub message: Message,
    pub dedup: Option<String>,
}

/// What kind of request the headers come with: a schedule keeps no not-before time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Publish,
    Schedule,
}

/// Reads a message published to `destination` from the request's headers (names in any case,
/// a name given twice joined with `, `) and body. Headers runner does not know are ignored, as
/// QStash ignores them; what it cannot honour is refused with QStash's kind of error text.
pub fn parse(
    destination: &str,
    headers: &[(String, String)],
    body: &[u8],
    kind: Kind,
    now: DateTime<Utc>,
) -> Result<Parsed, String> {
    if !destination.contains("://") {
        return Err(format!(
            "invalid destination url: endpoint has invalid scheme, add http:// or https:// (runner has no URL groups or topics: `{destination}` is not a URL)"
        ));
    }
    check_url(destination, "destination")?;
    if body.len() > crate::engine::request::MAX_BODY_BYTES {
        return Err(format!(
            "the message body is {} bytes, over runner's limit of {} KiB",
            body.len(),
            crate::engine::request::MAX_BODY_BYTES / 1024
        ));
    }
    // What runner reads or forwards must be a header value a request can carry as it is.
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if (lower.starts_with("upstash-") || lower == "content-type")
            && value
                .chars()
                .any(|c| !(c == ' ' || c == '\t' || c.is_ascii_graphic()))
        {
            return Err(format!(
                "header `{name}` has a character that is not printable ASCII; runner neither reads nor forwards such a value"
            ));
        }
    }
    let get = |name: &str| -> Option<String> {
        let values: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    };
    let method = get("upstash-method").unwrap_or_else(|| "POST".into());
    let method = method.to_ascii_uppercase();
    if !matches!(
        method.as_str(),
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS"
    ) {
        return Err(format!(
            "invalid Upstash-Method `{method}`: use GET, POST, PUT, PATCH, DELETE, HEAD or OPTIONS"
        ));
    }
    let retries = match get("upstash-retries") {
        None => 3,
        Some(r) => r
            .parse::<u32>()
            .ok()
            .filter(|n| *n <= MAX_RETRIES)
            .ok_or_else(|| {
                format!("invalid Upstash-Retries `{r}`: use a whole number from 0 to {MAX_RETRIES}")
            })?,
    };
    let timeout = match get("upstash-timeout") {
        None => 0,
        Some(t) => {
            let d = seconds_or_duration(&t)
                .filter(|d| !d.is_zero() && *d <= MAX_TIMEOUT)
                .ok_or_else(|| {
                    format!("invalid Upstash-Timeout `{t}`: use seconds (`30`, `30s`) or a duration (`5m`), at most 2h")
                })?;
            d.as_secs_f64().ceil() as u64
        }
    };
    let not_before = match (get("upstash-not-before"), get("upstash-delay")) {
        (Some(nb), _) => {
            let secs: i64 = nb.parse().map_err(|_| {
                format!("invalid Upstash-Not-Before `{nb}`: use a unix time in seconds")
            })?;
            // 9999-12-31: a larger number is milliseconds, or nothing a time can be.
            let at = DateTime::from_timestamp(secs, 0)
                .filter(|_| secs <= 253_402_300_799)
                .ok_or_else(|| {
                    format!("invalid Upstash-Not-Before `{nb}`: use a unix time in seconds (not milliseconds)")
                })?;
            (at > now).then_some(at)
        }
        (None, Some(d)) => {
            let delay = seconds_or_duration(&d).ok_or_else(|| {
                format!("invalid Upstash-Delay `{d}`: use a duration such as `10s`, `5m`, `1d`")
            })?;
            let delay = chrono::Duration::from_std(delay)
                .map_err(|_| format!("invalid Upstash-Delay `{d}`: too long"))?;
            (!delay.is_zero()).then(|| now + delay)
        }
        (None, None) => None,
    };
    if kind == Kind::Schedule && not_before.is_some() {
        return Err("runner does not support Upstash-Delay or Upstash-Not-Before on a schedule yet: publish from the destination instead, or leave it out".into());
    }
    let callback = get("upstash-callback").unwrap_or_default();
    if !callback.is_empty() {
        check_url(&callback, "Upstash-Callback")?;
    }
    let failure_callback = get("upstash-failure-callback").unwrap_or_default();
    if !failure_callback.is_empty() {
        check_url(&failure_callback, "Upstash-Failure-Callback")?;
    }
    let flow_control = match (
        get("upstash-flow-control-key"),
        get("upstash-flow-control-value"),
    ) {
        (None, None) => FlowSpec::default(),
        (Some(key), value) => flow_spec(key, value.as_deref())?,
        (None, Some(_)) => {
            return Err("Upstash-Flow-Control-Value needs an Upstash-Flow-Control-Key".into());
        }
    };
    let mut forwarded = serde_json::Map::new();
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        let target = if let Some(rest) = lower.strip_prefix("upstash-forward-") {
            if rest.is_empty() {
                continue;
            }
            if owned_header(rest) {
                return Err(format!(
                    "`{name}` cannot be forwarded: runner sets `{}` itself (or it describes the connection, not the message)",
                    canonical(rest)
                ));
            }
            canonical(&name["upstash-forward-".len()..])
        } else if lower == "content-type" {
            "Content-Type".to_string()
        } else {
            continue;
        };
        let value = value.trim().to_string();
        match forwarded.get_mut(&target) {
            Some(serde_json::Value::String(v)) => {
                v.push_str(", ");
                v.push_str(&value);
            }
            _ => {
                forwarded.insert(target, serde_json::Value::String(value));
            }
        }
    }
    let message = Message {
        url: destination.to_string(),
        method,
        headers: forwarded,
        body: base64::engine::general_purpose::STANDARD.encode(body),
        retries,
        timeout,
        not_before: not_before.map_or_else(String::new, |t| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        }),
        callback,
        failure_callback,
        flow_control,
        published_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    };
    let dedup = match get("upstash-deduplication-id") {
        Some(id) if !id.is_empty() => {
            if id.len() > 256 || id.chars().any(char::is_control) {
                return Err("invalid Upstash-Deduplication-Id: use at most 256 characters, no control characters".into());
            }
            Some(format!("qstash-dedup:{id}"))
        }
        _ if get("upstash-content-based-deduplication")
            .is_some_and(|v| v.eq_ignore_ascii_case("true")) =>
        {
            Some(format!("qstash-content:{}", content_hash(&message)))
        }
        _ => None,
    };
    Ok(Parsed { message, dedup })
}

/// The headers a message cannot set on its delivery: runner's own (the signature, the message
/// id) and those of the connection.
fn owned_header(lower: &str) -> bool {
    lower.starts_with("upstash-")
        || lower.starts_with("runner-")
        || lower.starts_with("proxy-")
        || matches!(
            lower,
            "idempotency-key"
                | "content-length"
                | "transfer-encoding"
                | "connection"
                | "keep-alive"
                | "host"
                | "te"
                | "trailer"
                | "upgrade"
        )
}

/// `http(s)://…`, as QStash says when it is not.
fn check_url(url: &str, what: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(_) => Err(format!(
            "invalid {what} url: endpoint has invalid scheme, add http:// or https://"
        )),
        Err(url::ParseError::RelativeUrlWithoutBase) => Err(format!(
            "invalid {what} url: endpoint has invalid scheme, add http:// or https://"
        )),
        Err(e) => Err(format!("invalid {what} url `{url}`: {e}")),
    }
}

/// `30`, `1.5s`, `5m`, `1d10h30m`.
fn seconds_or_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let number = t.strip_suffix('s').unwrap_or(t);
    if let Ok(secs) = number.parse::<f64>() {
        return (0.0..1e10)
            .contains(&secs)
            .then(|| Duration::from_secs_f64(secs));
    }
    crate::workflow::duration::parse(t).ok()
}

/// `parallelism=1, rate=2, period=1m`: each part optional, in any order, one at least.
fn flow_spec(key: String, value: Option<&str>) -> Result<FlowSpec, String> {
    if key.is_empty() || key.len() > crate::engine::request::MAX_FLOW_KEY_BYTES {
        return Err("invalid Upstash-Flow-Control-Key: use 1 to 256 bytes".into());
    }
    let mut spec = FlowSpec {
        key,
        ..FlowSpec::default()
    };
    let value = value.ok_or_else(|| BAD_FLOW_VALUE.to_string())?;
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| BAD_FLOW_VALUE.to_string())?;
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        let count = || v.parse::<u32>().ok().filter(|n| *n > 0);
        match k.as_str() {
            "parallelism" => spec.parallelism = Some(count().ok_or(BAD_FLOW_VALUE)?),
            "rate" => spec.rate = Some(count().ok_or(BAD_FLOW_VALUE)?),
            "period" => {
                let d = seconds_or_duration(v)
                    .filter(|d| d.as_secs() >= 1)
                    .ok_or(BAD_FLOW_VALUE)?;
                spec.period = d.as_secs();
            }
            _ => return Err(BAD_FLOW_VALUE.into()),
        }
    }
    if spec.parallelism.is_none() && spec.rate.is_none() {
        return Err(BAD_FLOW_VALUE.into());
    }
    Ok(spec)
}

/// `x-custom` → `X-Custom`, as QStash shows forwarded header names.
fn canonical(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// What content-based deduplication compares: destination, method, forwarded headers, body.
fn content_hash(m: &Message) -> String {
    let mut h = Sha256::new();
    for part in [m.url.as_str(), m.method.as_str(), m.body.as_str()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(serde_json::to_vec(&m.headers).expect("a JSON map serializes"));
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A published message's run, and whether an earlier one had its deduplication id.
#[derive(Debug)]
pub struct PublishedRun {
    pub run: Arc<Run>,
    pub deduplicated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Starts the run of a message.
pub async fn publish(
    exec: &Executor,
    workflows: &dyn Workflows,
    parsed: Parsed,
) -> Result<PublishedRun, PublishError> {
    let version = workflows
        .active(QSTASH)
        .ok_or_else(|| PublishError::Invalid("the built-in qstash workflow is missing".into()))?;
    let input = serde_json::to_value(&parsed.message).expect("a message serializes");
    match start::start(exec, version, input, Trigger::Api, parsed.dedup).await {
        Ok(s) => Ok(PublishedRun {
            run: s.run,
            deduplicated: !s.created,
        }),
        // The same deduplication id with another message: QStash answers the first.
        Err(StartError::KeyReused { run_id, .. }) => {
            let run = exec
                .store()
                .get_run(&run_id)
                .await?
                .ok_or(StoreError::NoSuchRun(run_id))?;
            Ok(PublishedRun {
                run: Arc::new(run),
                deduplicated: true,
            })
        }
        Err(StartError::Input(errors)) => Err(PublishError::Invalid(errors.join("; "))),
        Err(StartError::Store(e)) => Err(PublishError::Store(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn now() -> DateTime<Utc> {
        "2026-12-03T10:00:00Z".parse().expect("time")
    }

    #[test]
    fn headers_become_the_message() {
        let p = parse(
            "http://127.0.0.1:9/hook?a=1",
            &h(&[
                ("Content-Type", "application/json"),
                ("Upstash-Method", "put"),
                ("Upstash-Retries", "2"),
                ("Upstash-Timeout", "1.5s"),
                ("Upstash-Delay", "3s"),
                ("Upstash-Callback", "http://127.0.0.1:9/cb"),
                ("upstash-forward-x-custom", "v1"),
                ("Upstash-Forward-X-Custom", "v2"),
                ("Upstash-Telemetry-Sdk", "upstash-qstash-js@2.12.0"),
                ("Authorization", "Bearer secret"),
                ("Upstash-Flow-Control-Key", "k"),
                (
                    "Upstash-Flow-Control-Value",
                    "parallelism=1, rate=2, period=1m",
                ),
            ]),
            b"{\"hi\":1}",
            Kind::Publish,
            now(),
        )
        .expect("parses");
        let m = p.message;
        assert_eq!(m.method, "PUT");
        assert_eq!(m.retries, 2);
        assert_eq!(m.timeout, 2, "rounded up to whole seconds");
        assert_eq!(m.not_before, "2026-12-03T10:00:03.000Z");
        assert_eq!(m.callback, "http://127.0.0.1:9/cb");
        assert_eq!(
            serde_json::Value::Object(m.headers.clone()),
            serde_json::json!({"Content-Type": "application/json", "X-Custom": "v1, v2"}),
            "only forwarded headers and the content type reach the destination"
        );
        assert_eq!(
            m.flow_control,
            FlowSpec {
                key: "k".into(),
                parallelism: Some(1),
                rate: Some(2),
                period: 60
            }
        );
        assert_eq!(m.body_bytes().expect("base64"), b"{\"hi\":1}");
        assert_eq!(p.dedup, None);
    }

    #[test]
    fn deduplication_ids() {
        let parse_with = |headers: &[(&str, &str)], body: &[u8]| {
            parse(
                "http://h.example/x",
                &h(headers),
                body,
                Kind::Publish,
                now(),
            )
            .expect("parses")
            .dedup
        };
        assert_eq!(
            parse_with(&[("Upstash-Deduplication-Id", "d1")], b"a"),
            Some("qstash-dedup:d1".into())
        );
        let content = [("Upstash-Content-Based-Deduplication", "true")];
        assert_eq!(parse_with(&content, b"a"), parse_with(&content, b"a"));
        assert_ne!(parse_with(&content, b"a"), parse_with(&content, b"b"));
        assert!(parse_with(&content, b"a").is_some());
    }

    #[test]
    fn what_cannot_be_honoured_is_refused() {
        for (headers, says) in [
            (
                vec![
                    ("Upstash-Flow-Control-Key", "k"),
                    ("Upstash-Flow-Control-Value", "rate=fast"),
                ],
                BAD_FLOW_VALUE,
            ),
            (
                vec![
                    ("Upstash-Flow-Control-Key", "k"),
                    ("Upstash-Flow-Control-Value", "burst=3"),
                ],
                BAD_FLOW_VALUE,
            ),
            (vec![("Upstash-Flow-Control-Key", "k")], BAD_FLOW_VALUE),
            (
                vec![
                    ("Upstash-Flow-Control-Key", "k"),
                    ("Upstash-Flow-Control-Value", "period=1s"),
                ],
                BAD_FLOW_VALUE,
            ),
            (
                vec![("Upstash-Flow-Control-Value", "rate=1")],
                "needs an Upstash-Flow-Control-Key",
            ),
            (vec![("Upstash-Retries", "-1")], "invalid Upstash-Retries"),
            (vec![("Upstash-Retries", "101")], "invalid Upstash-Retries"),
            (vec![("Upstash-Delay", "soon")], "invalid Upstash-Delay"),
            (vec![("Upstash-Timeout", "0")], "invalid Upstash-Timeout"),
            (
                vec![("Upstash-Not-Before", "tomorrow")],
                "invalid Upstash-Not-Before",
            ),
            (vec![("Upstash-Method", "BREW")], "invalid Upstash-Method"),
            (
                vec![("Upstash-Not-Before", "1796290000000")],
                "not milliseconds",
            ),
            (
                vec![("Upstash-Delay", "60s\u{20ac}")],
                "not printable ASCII",
            ),
            (
                vec![("Upstash-Forward-X-Name", "caf\u{e9}")],
                "not printable ASCII",
            ),
            (
                vec![("Upstash-Forward-Upstash-Signature", "forged")],
                "runner sets `Upstash-Signature` itself",
            ),
            (
                vec![("Upstash-Forward-Upstash-Message-Id", "spoof")],
                "cannot be forwarded",
            ),
            (
                vec![("Upstash-Forward-Content-Length", "999")],
                "cannot be forwarded",
            ),
            (
                vec![("upstash-forward-idempotency-key", "k")],
                "cannot be forwarded",
            ),
            (
                vec![("Upstash-Callback", "ftp://x")],
                "invalid Upstash-Callback url",
            ),
        ] {
            let e = parse(
                "http://h.example/x",
                &h(&headers),
                b"",
                Kind::Publish,
                now(),
            )
            .expect_err(&format!("{headers:?}"));
            assert!(e.contains(says), "{headers:?}: {e}");
        }
        let e = parse("example.com/x", &[], b"", Kind::Publish, now()).expect_err("no scheme");
        assert!(e.contains("add http:// or https://"), "{e}");
        let e = parse("my-url-group", &[], b"", Kind::Publish, now()).expect_err("a URL group");
        assert!(e.contains("no URL groups"), "{e}");
        let big = vec![b'x'; crate::engine::request::MAX_BODY_BYTES + 1];
        let e = parse("http://h.example/x", &[], &big, Kind::Publish, now()).expect_err("too big");
        assert!(e.contains("over runner's limit"), "{e}");
        let e = parse(
            "http://h.example/x",
            &h(&[("Upstash-Delay", "10s")]),
            b"",
            Kind::Schedule,
            now(),
        )
        .expect_err("no delay on schedules");
        assert!(e.contains("on a schedule"), "{e}");
    }

    #[test]
    fn a_not_before_in_the_past_is_now() {
        let p = parse(
            "http://h.example/x",
            &h(&[("Upstash-Not-Before", "1700000000")]),
            b"",
            Kind::Publish,
            now(),
        )
        .expect("parses");
        assert_eq!(p.message.not_before, "");
    }
}
