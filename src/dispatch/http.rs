//! One attempt of an `http` step: render, sign as QStash does, send, classify the answer.
//!
//! I/O shell: the HTTP client. [`HttpPerformer`] performs `CallHttp` effects for the executor.

use super::flow_gate::FlowGate;
use crate::engine::request::{self, HttpRequest};
use crate::engine::{AttemptResult, Effect, Event, Outcome};
use crate::runtime::keys::KeyRing;
use crate::runtime::{Job, Perform, Performed};
use crate::sign::Keys;
use crate::store::AttemptRecord;
use crate::workflow::Workflow;
use chrono::Utc;
use serde_json::{Value, json};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Responses larger than this fail the step with a clear error (they are stored with the run).
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// How much of a request or failed response body is kept in the attempt record.
const KEPT_BODY_BYTES: usize = 16 * 1024;

/// Performs `CallHttp`: one signed attempt with the keys in use at the time.
pub struct HttpPerformer {
    client: reqwest::Client,
    keys: KeyRing,
    flow: Arc<FlowGate>,
}

impl HttpPerformer {
    pub fn new(keys: KeyRing, store: crate::store::Store) -> HttpPerformer {
        HttpPerformer {
            client: client(),
            keys,
            flow: Arc::new(FlowGate::new(store)),
        }
    }
}

impl Perform for HttpPerformer {
    fn perform(&self, job: Job) -> Pin<Box<dyn Future<Output = Performed> + Send + 'static>> {
        let client = self.client.clone();
        let keys = self.keys.get();
        let flow = self.flow.clone();
        Box::pin(async move {
            let outcome = attempt(&client, &keys, &job, &flow).await;
            let Some((event, record)) = outcome else {
                // Its run ended while the call waited for its flow-control key.
                return Performed::Done;
            };
            Performed::Outcome {
                event,
                record: Some(Box::new(record)),
            }
        })
    }

    fn settled(&self, run_id: &str, effect_id: i64) {
        self.flow.ended(run_id, effect_id);
    }
}

/// Certificates trusted besides the system's (`--ca-file`), set once at start.
static EXTRA_ROOTS: std::sync::OnceLock<Vec<reqwest::Certificate>> = std::sync::OnceLock::new();

/// Trusts the certificate authorities in a PEM file (`--ca-file`, `RUNNER_CA_FILE`), besides the
/// system's, for every HTTP client this process builds from now on. Call it once, before the
/// first [`client`].
pub fn trust_ca_file(path: &std::path::Path) -> Result<usize, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read the CA file `{}`: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        format!(
            "the CA file `{}` is not PEM certificates: {}",
            path.display(),
            root_cause(&e)
        )
    })?;
    if certs.is_empty() {
        return Err(format!(
            "the CA file `{}` has no certificate (`-----BEGIN CERTIFICATE-----`)",
            path.display()
        ));
    }
    let n = certs.len();
    EXTRA_ROOTS
        .set(certs)
        .map_err(|_| "the CA file was set twice".to_string())?;
    Ok(n)
}

/// Builds the HTTP client used for every step (one connection pool).
pub fn client() -> reqwest::Client {
    crate::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("runner/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(roots) = EXTRA_ROOTS.get() {
        builder = builder.tls_certs_merge(roots.iter().cloned());
    }
    builder
        .build()
        .expect("the HTTP client builds with static settings and parsed certificates")
}

/// A TLS failure that sending again cannot fix (the server's certificate is not trusted, not
/// valid for the host, expired; no protocol in common), said for a person. None for anything
/// else, which is retried.
fn tls_failure(e: &(dyn std::error::Error + 'static), host: &str) -> Option<String> {
    use rustls::CertificateError as C;
    let mut cur = Some(e);
    let tls = 'chain: loop {
        let err = cur?;
        // An `io::Error` hides the error it wraps from `source()` (the TLS error is two
        // `io::Error`s deep); `get_ref` reaches it.
        let mut inner: &(dyn std::error::Error + 'static) = err;
        loop {
            if let Some(t) = inner.downcast_ref::<rustls::Error>() {
                break 'chain t;
            }
            match inner
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
            {
                Some(wrapped) => inner = wrapped,
                None => break,
            }
        }
        cur = err.source();
    };
    let hint = "; trust a private certificate authority with --ca-file (RUNNER_CA_FILE)";
    let why = match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => format!(
                "is not issued by a certificate authority runner trusts (self-signed, or a private CA){hint}"
            ),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                format!("is not valid for the name `{host}` ({c})")
            }
            C::Expired | C::ExpiredContext { .. } => format!("has expired ({c})"),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                format!("is not valid yet; check this machine's clock ({c})")
            }
            C::Revoked => "has been revoked".to_string(),
            C::BadSignature => format!("has a signature that does not verify{hint}"),
            C::BadEncoding => "cannot be read (bad encoding)".to_string(),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                format!("is not meant for a TLS server ({c})")
            }
            C::Other(other) => format!("is refused: {other}"),
            other => format!("is refused ({other})"),
        },
        rustls::Error::PeerIncompatible(_) => {
            return Some(format!(
                "TLS with `{host}` failed: the server and runner have no TLS version or cipher suite in common"
            ));
        }
        _ => return None,
    };
    Some(format!("the TLS certificate of `{host}` {why}"))
}

/// Reads the declared secrets from the environment for one step (all that are set, which are
/// also what is redacted). A missing one is an error naming it when the step uses it; a step
/// that does not, an `on_failure` hook say, is sent without it.
pub fn secrets_for_step(
    wf: &Workflow,
    step_id: &str,
) -> Result<serde_json::Map<String, Value>, String> {
    let mut out = serde_json::Map::new();
    let mut missing = Vec::new();
    for name in &wf.secrets {
        match std::env::var(name) {
            Ok(v) => {
                out.insert(name.clone(), Value::String(v));
            }
            Err(_) => missing.push(name),
        }
    }
    if !missing.is_empty() {
        let used = request::secrets_used(wf, step_id);
        if let Some(name) = missing.into_iter().find(|n| used.contains(n.as_str())) {
            return Err(format!(
                "secret `{name}` is not set in the environment of the runner process"
            ));
        }
    }
    Ok(out)
}

fn truncate(bytes: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned();
    if bytes.len() > max {
        format!("{s}… ({} bytes in all)", bytes.len())
    } else {
        s
    }
}

/// Performs one attempt and returns the event to apply and the record to store; None when the
/// call waited for its flow-control key and its run ended meanwhile (nothing was sent).
/// A call with a flow-control key waits its turn at `gate`.
pub async fn attempt(
    client: &reqwest::Client,
    keys: &Keys,
    job: &Job,
    gate: &FlowGate,
) -> Option<(Event, AttemptRecord)> {
    let Effect::CallHttp {
        step: step_id,
        attempt,
        ..
    } = &job.effect
    else {
        unreachable!("the executor hands the HTTP performer only CallHttp effects")
    };
    let (wf, run, attempt, item) = (&job.workflow, &job.run, *attempt, job.item.as_ref());
    let started = Utc::now();
    let index = item.map(|i| i.index);
    let mut record = AttemptRecord {
        step: step_id.to_string(),
        attempt,
        item: index,
        started_at: Some(started),
        ..AttemptRecord::default()
    };
    let fail = |record: &mut AttemptRecord,
                error: String,
                status: Option<u16>,
                body: Option<Value>,
                outcome: Outcome| {
        record.finished_at = Some(Utc::now());
        record.status = status;
        record.error = Some(error.clone());
        record.outcome = outcome.attempt_result(wf, run, step_id, index);
        Event::AttemptFailed {
            step: step_id.to_string(),
            attempt,
            error,
            status,
            body,
            outcome,
            item: index,
        }
    };
    let secrets = match secrets_for_step(wf, step_id) {
        Ok(s) => s,
        Err(e) => {
            let ev = fail(&mut record, e, None, None, Outcome::Permanent);
            return Some((ev, record));
        }
    };
    let redactor = request::Redactor::new(&secrets);
    // Rendering counts in the step's timeout: what it leaves bounds the call.
    let limit = request::step_timeout(wf, step_id).unwrap_or(Duration::from_secs(30));
    let render = {
        let (wf, run, step, secrets, item) = (
            wf.clone(),
            run.clone(),
            step_id.to_string(),
            secrets.clone(),
            item.cloned(),
        );
        move || request::render_http(&wf, &run, &step, &secrets, item.as_ref())
    };
    let (req, timeout) = match super::render_within(wf, step_id, limit, render).await {
        Ok((req, left)) => {
            let timeout = req.timeout.map_or(left, |own| own.min(left));
            (req, timeout)
        }
        Err(e) => {
            let e = redactor.redact(&e);
            let ev = fail(&mut record, e, None, None, Outcome::Permanent);
            return Some((ev, record));
        }
    };
    let url = match reqwest::Url::parse(&req.url) {
        Ok(mut u) if matches!(u.scheme(), "http" | "https") => {
            // A fragment is never sent, so it must not be signed: receivers check `sub` against
            // the URL they were called at.
            u.set_fragment(None);
            u
        }
        Ok(u) => {
            let ev = fail(
                &mut record,
                format!("`{}` is not an http(s) URL", redactor.redact(u.as_str())),
                None,
                None,
                Outcome::Permanent,
            );
            return Some((ev, record));
        }
        Err(e) => {
            let ev = fail(
                &mut record,
                format!(
                    "the rendered URL `{}` is not valid: {e}",
                    redactor.redact(&req.url)
                ),
                None,
                None,
                Outcome::Permanent,
            );
            return Some((ev, record));
        }
    };
    let (dedup, retried) = request::attempt_message_id(&req, run, step_id, attempt, item);
    record.dedup_id = req.dedup_id.clone();
    // A call with a flow-control key waits its turn here, for as long as it takes: the wait is
    // not part of its `timeout`, and its attempt starts when it is let through.
    if let (Some(ticket), Some(effect_id)) = (&req.flow, job.effect_id) {
        if !gate.admit(ticket, &run.id, effect_id).await {
            return None;
        }
        record.started_at = Some(Utc::now());
    }
    let jti = crate::sign::jti_from_random(rand::random());
    let token = crate::sign::sign(
        &keys.current,
        url.as_str(),
        &req.body,
        Utc::now().timestamp(),
        &jti,
    );
    record.request = Some(request_record(&req, &url, &redactor));

    let method =
        reqwest::Method::from_bytes(req.method.as_bytes()).unwrap_or(reqwest::Method::POST);
    let mut builder = client.request(method, url.clone()).timeout(timeout);
    for (name, value) in &req.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let ours = request::runner_headers(
        &wf.name,
        run,
        step_id,
        attempt,
        item,
        (&dedup, retried),
        &token,
    );
    for (name, value) in ours {
        builder = builder.header(name, value);
    }
    let response = match builder.body(req.body.clone()).send().await {
        Ok(r) => r,
        Err(e) => {
            if let Some(error) = tls_failure(&e, url.host_str().unwrap_or("")) {
                // Sending again meets the same certificate: fail the step at once.
                let ev = fail(&mut record, error, None, None, Outcome::Permanent);
                return Some((ev, record));
            }
            let error = if e.is_timeout() {
                format!(
                    "no answer within {}",
                    crate::workflow::duration::format(req.timeout.map_or(limit, |t| t.min(limit)))
                )
            } else if e.is_connect() {
                format!(
                    "could not connect to {}: {}",
                    url.host_str().unwrap_or(""),
                    root_cause(&e)
                )
            } else {
                format!("request failed: {}", root_cause(&e))
            };
            let ev = fail(
                &mut record,
                error,
                None,
                None,
                Outcome::Retryable { after: None },
            );
            return Some((ev, record));
        }
    };
    let status = response.status();
    let headers = response.headers().clone();
    let is_json = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));
    // Read the body with a cap (the deadline covers the body too).
    let mut body: Vec<u8> = Vec::new();
    let mut too_large = false;
    let mut response = response;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    too_large = true;
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                let error = if e.is_timeout() {
                    format!(
                        "the response body did not arrive within {}",
                        crate::workflow::duration::format(limit)
                    )
                } else {
                    format!("reading the response failed: {}", root_cause(&e))
                };
                let ev = fail(
                    &mut record,
                    error,
                    Some(status.as_u16()),
                    None,
                    Outcome::Retryable { after: None },
                );
                return Some((ev, record));
            }
        }
    }
    // An endpoint may send a secret back (an echo, an error quoting the request): what is stored
    // and what later steps see has it redacted, like the request.
    let body_value: Value = redactor.redact_value(if is_json {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    } else {
        Value::String(String::from_utf8_lossy(&body).into_owned())
    });
    let header_map: serde_json::Map<String, Value> = headers
        .iter()
        .filter_map(|(k, v)| {
            v.to_str().ok().map(|v| {
                let v = redactor.redact(v);
                (k.as_str().to_string(), Value::String(v))
            })
        })
        .collect();
    record.response = Some(json!({
        "status": status.as_u16(),
        "headers": header_map,
        "body": if too_large { Value::String(format!("(over {MAX_RESPONSE_BYTES} bytes)")) } else { Value::String(truncate(redactor.redact(&String::from_utf8_lossy(&body)).as_bytes(), KEPT_BODY_BYTES)) },
    }));
    if status.is_success() {
        if too_large {
            let ev = fail(
                &mut record,
                format!(
                    "the response body is larger than {} KiB; runner stores step results and refuses larger ones",
                    MAX_RESPONSE_BYTES / 1024
                ),
                Some(status.as_u16()),
                None,
                Outcome::Permanent,
            );
            return Some((ev, record));
        }
        record.finished_at = Some(Utc::now());
        record.status = Some(status.as_u16());
        record.outcome = AttemptResult::Succeeded;
        let output = crate::workflow::output::to_value(&crate::workflow::output::HttpOutput {
            status: status.as_u16(),
            headers: header_map,
            body: body_value,
        });
        return Some((
            Event::AttemptSucceeded {
                step: step_id.to_string(),
                attempt,
                output,
                item: index,
            },
            record,
        ));
    }
    let non_retryable = status.as_u16() == 489
        && headers
            .get("upstash-nonretryable-error")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let snippet = truncate(
        redactor.redact(&String::from_utf8_lossy(&body)).as_bytes(),
        300,
    );
    let error = if snippet.trim().is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {}", snippet.trim())
    };
    let outcome = if non_retryable {
        Outcome::Permanent
    } else {
        let after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| crate::backoff::parse_retry_after(v, Utc::now()));
        // The endpoint says it is overloaded: every call of the key holds back until then.
        if let (Some(after), Some(ticket), 429 | 503) = (after, &req.flow, status.as_u16()) {
            let until = Utc::now() + chrono::Duration::from_std(after).unwrap_or_default();
            gate.close(&ticket.key, until).await;
        }
        Outcome::Retryable { after }
    };
    let failure_body = if too_large { None } else { Some(body_value) };
    let ev = fail(
        &mut record,
        error,
        Some(status.as_u16()),
        failure_body,
        outcome,
    );
    Some((ev, record))
}

fn request_record(req: &HttpRequest, url: &reqwest::Url, redactor: &request::Redactor) -> Value {
    let headers: serde_json::Map<String, Value> = req
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(redactor.redact(v))))
        .collect();
    json!({
        "method": req.method,
        "url": redactor.redact(url.as_str()),
        "headers": headers,
        // Redact before cutting, so that no part of a secret is kept at the cut.
        "body": truncate(redactor.redact(&String::from_utf8_lossy(&req.body)).as_bytes(), KEPT_BODY_BYTES),
    })
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
