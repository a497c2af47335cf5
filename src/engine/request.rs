//! Rendering a step's HTTP request from the workflow, the run and the secrets.
//!
//! Part of the pure core: no I/O. Secrets are passed in by the shell, never stored.

use super::Run;
use crate::workflow::{StepKind, Template, Workflow, template};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The largest request body runner sends (QStash's own message limit is 1 MB on its free plan).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The longest URL runner sends (common servers refuse longer ones with 414).
pub const MAX_URL_BYTES: usize = 8 * 1024;
/// The longest value of one header (common servers limit a request's headers to 8–16 KiB).
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// The longest `dedup_id` (it is sent in two headers).
pub const MAX_DEDUP_ID_BYTES: usize = 1024;
/// The longest e-mail subject (RFC 5322 allows 998 characters on a line before folding).
pub const MAX_SUBJECT_BYTES: usize = 998;
/// The largest e-mail body (approval bodies are also stored and shown on the approval page).
pub const MAX_MAIL_BODY_BYTES: usize = 1024 * 1024;

/// `what` is over its limit: a step error that names both.
fn over_limit(what: &str, len: usize, limit: usize) -> String {
    let limit_text = if limit >= 1024 && limit.is_multiple_of(1024) {
        format!("{} KiB", limit / 1024)
    } else {
        format!("{limit} bytes")
    };
    format!("{what} renders to {len} bytes, over runner's limit of {limit_text}")
}

/// A request ready to be signed and sent.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The step's own `dedup_id`, rendered.
    pub dedup_id: Option<String>,
    /// The step's flow-control key, rendered, and its limits.
    pub flow: Option<FlowTicket>,
    /// How long the attempt may take when the request says (a published message's
    /// `Upstash-Timeout`); else the step's `timeout`.
    pub timeout: Option<std::time::Duration>,
}

/// A call's flow-control key and limits: it starts when the key has room for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowTicket {
    pub key: String,
    pub limits: crate::flow::Limits,
}

/// The most bytes of a rendered flow-control key.
pub const MAX_FLOW_KEY_BYTES: usize = 256;

/// The message id and `Upstash-Retried` of an attempt: the step's [`dedup_id`], and the
/// attempts before this one. An `on_failure` hook that runs again after the run was retried and
/// failed again sends a new message (a new id, retried from 0): its first alert was delivered,
/// and a receiver that deduplicates would drop the second. A step retried with the run keeps
/// its id and count: its earlier attempts failed, so nothing was taken.
pub fn message_id(run: &Run, step_id: &str, attempt: u32) -> (String, u32) {
    let retried = attempt.saturating_sub(1);
    match run.hooks.iter().find(|h| h.id == step_id) {
        Some(h) if h.round_start > 0 => (
            dedup_id(&run.id, &format!("{step_id}\u{0}round:{}", h.round_start)),
            retried.saturating_sub(h.round_start),
        ),
        _ => (dedup_id(&run.id, step_id), retried),
    }
}

/// One item of a `foreach` step, as its attempts render it.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemInput {
    pub index: u32,
    pub key: String,
    pub value: Value,
}

/// The message id and `Upstash-Retried` of an attempt of one item of a `foreach` step: the
/// item's own dedup id (run, step and the item's key), the same for all its attempts.
pub fn item_message_id(run: &Run, step_id: &str, key: &str, attempt: u32) -> (String, u32) {
    (
        dedup_id(&run.id, &format!("{step_id}\u{0}item:{key}")),
        attempt.saturating_sub(1),
    )
}

/// The template context of a step's request: the run's, with the item of a `foreach` step.
fn step_context(
    wf: &Workflow,
    run: &Run,
    step: &crate::workflow::Step,
    secrets: &serde_json::Map<String, Value>,
    item: Option<&ItemInput>,
) -> minijinja::Value {
    // Only the steps its texts name (a step id in them, as `steps.x` or `steps['x']`); all of
    // them when a text reads `steps` otherwise (`steps | tojson`, `steps[input.which]`).
    let texts = step_texts(step);
    let dynamic = texts.iter().any(|t| reads_steps_dynamically(t));
    let named = |id: &str| dynamic || texts.iter().any(|t| t.contains(id));
    let ctx = template::context(&super::context::context_with(wf, run, Some(secrets), named));
    match (item, &step.foreach) {
        (Some(i), Some(fe)) => template::with_item(&ctx, &fe.as_name, &i.value, i.index),
        _ => ctx,
    }
}

/// Whether a text reads `steps` other than by a written name (`steps.x`, `steps['x']`).
fn reads_steps_dynamically(text: &str) -> bool {
    text.match_indices("steps").any(|(i, _)| {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.') {
            return false; // part of another name (`my_steps`, `x.steps`)
        }
        let rest = &text[i + "steps".len()..];
        !(rest.starts_with('.') || rest.starts_with("['") || rest.starts_with("[\""))
    })
}

/// The message id and `Upstash-Retried` an attempt carries: the step's own `dedup_id` when it
/// has one, else its item's, else the step's.
pub fn attempt_message_id(
    req: &HttpRequest,
    run: &Run,
    step_id: &str,
    attempt: u32,
    item: Option<&ItemInput>,
) -> (String, u32) {
    match (&req.dedup_id, item) {
        (Some(own), _) => (own.clone(), attempt.saturating_sub(1)),
        (None, Some(i)) => item_message_id(run, step_id, &i.key, attempt),
        (None, None) => message_id(run, step_id, attempt),
    }
}

/// The headers runner sets on an attempt, after the step's own: the signature, the message id
/// (also as `Idempotency-Key`), `Upstash-Retried`, the `Runner-*` headers, and a scheduled run's
/// `Upstash-Schedule-Id`.
pub fn runner_headers(
    workflow: &str,
    run: &Run,
    step_id: &str,
    attempt: u32,
    item: Option<&ItemInput>,
    (message_id, retried): (&str, u32),
    signature: &str,
) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("Upstash-Signature", signature.to_string()),
        ("Upstash-Message-Id", message_id.to_string()),
        ("Idempotency-Key", message_id.to_string()),
        ("Upstash-Retried", retried.to_string()),
        ("Runner-Workflow", workflow.to_string()),
        ("Runner-Run-Id", run.id.clone()),
        ("Runner-Step", step_id.to_string()),
        ("Runner-Attempt", attempt.to_string()),
    ];
    if let Some(i) = item {
        h.push(("Runner-Item", i.key.clone()));
    }
    // The schedule's own id, the same at every fire (as QStash sends it). A scheduled run
    // stored before runs kept it has none, and is sent without.
    if let Some(id) = &run.schedule_id {
        h.push(("Upstash-Schedule-Id", id.clone()));
    }
    h
}

/// The deduplication id of one step of one run: the same for every attempt and after restarts,
/// different for every other run and step.
pub fn dedup_id(run_id: &str, step_id: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hasher = Sha256::new();
    hasher.update(run_id.as_bytes());
    hasher.update([0]);
    hasher.update(step_id.as_bytes());
    let mut out = String::with_capacity(36);
    out.push_str("msg_");
    for b in hasher.finalize().iter().take(16) {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

fn find_step<'w>(wf: &'w Workflow, step_id: &str) -> Result<&'w crate::workflow::Step, String> {
    wf.steps
        .iter()
        .chain(wf.on_failure.iter())
        .find(|s| s.id == step_id)
        .ok_or_else(|| format!("step `{step_id}` is not in this workflow version"))
}

/// Every text of a step that is rendered when it is sent (URL, headers, body strings;
/// recipients, subject, body).
fn step_texts(step: &crate::workflow::Step) -> Vec<&str> {
    let mut texts: Vec<&str> = Vec::new();
    match &step.kind {
        StepKind::Http(h) => {
            texts.push(h.url.as_str());
            texts.extend(h.dedup_id.iter().map(Template::as_str));
            texts.extend(step.flow_control.iter().map(|f| f.key.as_str()));
            texts.extend(h.headers.iter().map(|(_, v)| v.as_str()));
            let mut stack: Vec<&Value> = h.body.iter().collect();
            while let Some(v) = stack.pop() {
                match v {
                    Value::String(s) => texts.push(s),
                    Value::Array(items) => stack.extend(items),
                    Value::Object(map) => stack.extend(map.values()),
                    _ => {}
                }
            }
        }
        StepKind::Email(crate::workflow::Email { to, subject, body })
        | StepKind::Approval(crate::workflow::Approval {
            to, subject, body, ..
        }) => {
            texts.extend(to.iter().map(Template::as_str));
            texts.push(subject.as_str());
            texts.extend(body.iter().map(Template::as_str));
        }
        _ => {}
    }
    texts
}

/// Whether sending the step renders a template at all (a static request is only copied).
pub fn has_templates(wf: &Workflow, step_id: &str) -> bool {
    find_step(wf, step_id).is_ok_and(|step| {
        super::message::published(step).is_none()
            && step_texts(step).into_iter().any(template::is_template)
    })
}

/// The secrets a step's templates name (`secrets.X`, `secrets['X']`).
pub fn secrets_used(wf: &Workflow, step_id: &str) -> std::collections::BTreeSet<String> {
    let Ok(step) = find_step(wf, step_id) else {
        return Default::default();
    };
    step_texts(step)
        .into_iter()
        .filter(|t| template::is_template(t))
        .filter_map(|t| template::analyze(t).ok())
        .flat_map(|a| a.references)
        .filter(|r| r.root == "secrets")
        .filter_map(|r| r.path.first().map(|s| s.name.clone()))
        .collect()
}

/// The `timeout` of a step (an attempt's limit), if the step is in this workflow version.
pub fn step_timeout(wf: &Workflow, step_id: &str) -> Option<std::time::Duration> {
    find_step(wf, step_id).ok().map(|s| s.timeout)
}

/// Renders the URL, headers and body of an `http` step.
pub fn render_http(
    wf: &Workflow,
    run: &Run,
    step_id: &str,
    secrets: &serde_json::Map<String, Value>,
    item: Option<&ItemInput>,
) -> Result<HttpRequest, String> {
    let step = find_step(wf, step_id)?;
    let StepKind::Http(call) = &step.kind else {
        return Err(format!("step `{step_id}` is not an http step"));
    };
    if let Some(kind) = call.published {
        return super::message::render(kind, run);
    }
    // Static requests (no template anywhere) skip building the context and minijinja.
    let templated = template::is_template(call.url.as_str())
        || call
            .headers
            .iter()
            .any(|(_, v)| template::is_template(v.as_str()))
        || call.body.as_ref().is_some_and(json_has_template)
        || call
            .dedup_id
            .as_ref()
            .is_some_and(|d| template::is_template(d.as_str()))
        || step
            .flow_control
            .as_ref()
            .is_some_and(|f| template::is_template(f.key.as_str()));
    let ctx = if templated {
        step_context(wf, run, step, secrets, item)
    } else {
        minijinja::Value::UNDEFINED
    };
    let url = template::render_text(call.url.as_str(), &ctx)
        .map_err(|e| format!("rendering `url`: {e}"))?;
    if url.len() > MAX_URL_BYTES {
        return Err(over_limit("`url`", url.len(), MAX_URL_BYTES));
    }
    let mut headers = Vec::new();
    for (name, value) in &call.headers {
        let v = template::render_text(value.as_str(), &ctx)
            .map_err(|e| format!("rendering header `{name}`: {e}"))?;
        if v.len() > MAX_HEADER_BYTES {
            return Err(over_limit(
                &format!("header `{name}`"),
                v.len(),
                MAX_HEADER_BYTES,
            ));
        }
        headers.push((name.clone(), v));
    }
    let has_content_type = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    let body = match &call.body {
        None => Vec::new(),
        Some(b) => {
            match template::render_json(b, &ctx).map_err(|e| format!("rendering `body`: {e}"))? {
                Value::String(s) => {
                    if !has_content_type {
                        headers.push(("Content-Type".into(), "text/plain; charset=utf-8".into()));
                    }
                    s.into_bytes()
                }
                other => {
                    if !has_content_type {
                        headers.push(("Content-Type".into(), "application/json".into()));
                    }
                    serde_json::to_vec(&other).expect("a JSON value serializes")
                }
            }
        }
    };
    if body.len() > MAX_BODY_BYTES {
        return Err(over_limit("`body`", body.len(), MAX_BODY_BYTES));
    }
    let dedup_id = match &call.dedup_id {
        None => None,
        Some(t) => {
            let d = template::render_text(t.as_str(), &ctx)
                .map_err(|e| format!("rendering `dedup_id`: {e}"))?;
            if d.trim().is_empty() {
                return Err("`dedup_id` rendered to nothing".into());
            }
            if d.len() > MAX_DEDUP_ID_BYTES {
                return Err(over_limit("`dedup_id`", d.len(), MAX_DEDUP_ID_BYTES));
            }
            if d.chars().any(|c| c.is_control()) {
                return Err(format!(
                    "`dedup_id` rendered to {d:?}, which has a control character (it is sent in a header)"
                ));
            }
            Some(d)
        }
    };
    let flow = match &step.flow_control {
        None => None,
        Some(f) => {
            let key = template::render_text(f.key.as_str(), &ctx)
                .map_err(|e| format!("rendering the `flow_control` key: {e}"))?;
            if key.trim().is_empty() {
                return Err("the `flow_control` key rendered to nothing".into());
            }
            if key.len() > MAX_FLOW_KEY_BYTES {
                return Err(over_limit(
                    "the `flow_control` key",
                    key.len(),
                    MAX_FLOW_KEY_BYTES,
                ));
            }
            Some(FlowTicket {
                key,
                limits: f.limits(),
            })
        }
    };
    Ok(HttpRequest {
        method: call.method.clone(),
        url,
        headers,
        body,
        dedup_id,
        flow,
        timeout: None,
    })
}

fn json_has_template(v: &Value) -> bool {
    match v {
        Value::String(s) => template::is_template(s),
        Value::Array(items) => items.iter().any(json_has_template),
        Value::Object(map) => map.values().any(json_has_template),
        _ => false,
    }
}

/// Secrets shorter than this are not redacted: replacing every `42` of a response would redact
/// numbers, not secrets (and say which digits the secret is). The README says so.
pub const MIN_REDACTED_LEN: usize = 3;

/// Replaces every secret value in `text` by `[redacted:NAME]`, for what is stored and logged
/// (see [`Redactor`]; build one when redacting several texts of a step).
pub fn redact(text: &str, secrets: &serde_json::Map<String, Value>) -> String {
    Redactor::new(secrets).redact(text)
}

/// The forms of a step's secrets to redact, worked out once: the value as it is, and the forms
/// runner's own rendering makes of it — upper- and lower-case (`| upper`, `| lower`),
/// percent-encoded (`| urlencode`, a URL), each also JSON-escaped once (a string in a body) and
/// twice (`| tojson` inside a body). Longest first, so a longer form is not cut by a shorter one.
pub struct Redactor {
    forms: Vec<(String, String)>,
}

impl Redactor {
    pub fn new(secrets: &serde_json::Map<String, Value>) -> Redactor {
        let mut forms: Vec<(String, String)> = Vec::new();
        for (name, v) in secrets {
            let Some(value) = v.as_str().filter(|s| s.len() >= MIN_REDACTED_LEN) else {
                continue;
            };
            let base = [
                value.to_string(),
                value.to_uppercase(),
                value.to_lowercase(),
                percent_encoded(value, "/"),
                percent_encoded(value, ""),
                percent_encoded(value, " ").replace(' ', "+"),
            ];
            for form in base {
                let once = json_escaped(&form);
                let twice = json_escaped(&once);
                for f in [form, once, twice] {
                    if f.len() >= MIN_REDACTED_LEN && !forms.iter().any(|(_, g)| *g == f) {
                        forms.push((format!("[redacted:{name}]"), f));
                    }
                }
            }
        }
        forms.sort_by_key(|(_, f)| std::cmp::Reverse(f.len()));
        Redactor { forms }
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (mark, form) in &self.forms {
            if out.contains(form.as_str()) {
                out = out.replace(form.as_str(), mark);
            }
        }
        out
    }

    /// [`Redactor::redact`] applied to every string (and key) of a JSON value.
    pub fn redact_value(&self, value: Value) -> Value {
        if self.forms.is_empty() {
            return value;
        }
        match value {
            Value::String(s) => Value::String(self.redact(&s)),
            Value::Array(items) => {
                Value::Array(items.into_iter().map(|v| self.redact_value(v)).collect())
            }
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (self.redact(&k), self.redact_value(v)))
                    .collect(),
            ),
            other => other,
        }
    }
}

/// Every byte but the unreserved ones (RFC 3986 §2.3) and those in `keep` as `%XX`, upper-case
/// as minijinja's `urlencode` writes it (which keeps `/`).
fn percent_encoded(value: &str, keep: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b));
            }
            _ if keep.as_bytes().contains(&b) => out.push(char::from(b)),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `value` as it is inside a JSON string (without the quotes).
fn json_escaped(value: &str) -> String {
    let quoted = serde_json::to_string(value).unwrap_or_default();
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or(&quoted)
        .to_string()
}

/// `redact` applied to every string (and key) of a JSON value.
pub fn redact_value(value: Value, secrets: &serde_json::Map<String, Value>) -> Value {
    Redactor::new(secrets).redact_value(value)
}

/// A templated `to` entry's value as one address: refused when it holds several (commas
/// outside quotes and `<…>`), since each rendered entry (or list item) is one recipient.
fn one_address(entry: &str, value: String) -> Result<String, String> {
    let parts = crate::workflow::address::split_addresses(&value);
    if parts.len() > 1 {
        return Err(format!(
            "`to` entry `{entry}` rendered to {} addresses (`{value}`); a templated entry is one \
             recipient: render a list (one address per item) to send to several, and quote a \
             display name that has a comma (`\"Doe, John\" <john@example.com>`)",
            parts.len()
        ));
    }
    Ok(value.trim().to_string())
}

/// An e-mail ready to send: recipients, subject and plain-text body, all rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct Mail {
    pub to: Vec<String>,
    pub subject: String,
    pub body: String,
}

/// Renders the recipients, subject and body of an `email` or `approval` step.
pub fn render_mail(
    wf: &Workflow,
    run: &Run,
    step_id: &str,
    secrets: &serde_json::Map<String, Value>,
    item: Option<&ItemInput>,
) -> Result<Mail, String> {
    let step = find_step(wf, step_id)?;
    let (to, subject, body) = match &step.kind {
        StepKind::Email(e) => (&e.to, &e.subject, &e.body),
        StepKind::Approval(a) => (&a.to, &a.subject, &a.body),
        _ => return Err(format!("step `{step_id}` does not send e-mail")),
    };
    let ctx = step_context(wf, run, step, secrets, item);
    let mut recipients = Vec::new();
    for t in to {
        let rendered =
            template::render_str(t.as_str(), &ctx).map_err(|e| format!("rendering `to`: {e}"))?;
        if !template::is_template(t.as_str()) {
            // Written in the file: a comma list, as `runner validate` reads it.
            if let Value::String(s) = &rendered {
                recipients.extend(
                    crate::workflow::address::split_addresses(s)
                        .into_iter()
                        .map(str::to_string),
                );
                continue;
            }
        }
        // Rendered from a template: one address, or one per item of a list, never a comma list,
        // so that a value from an input or a response cannot add recipients.
        match rendered {
            Value::Array(items) => {
                for item in items {
                    let text = item
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| item.to_string());
                    recipients.push(one_address(t.as_str(), text)?);
                }
            }
            Value::String(s) => recipients.push(one_address(t.as_str(), s)?),
            other => recipients.push(one_address(t.as_str(), other.to_string())?),
        }
    }
    for r in &recipients {
        crate::workflow::address::check_address(r)
            .map_err(|why| format!("`{r}` is not a valid e-mail address: {why}"))?;
    }
    if recipients.is_empty() {
        return Err("`to` rendered to no recipients".into());
    }
    let subject = template::render_text(subject.as_str(), &ctx)
        .map_err(|e| format!("rendering `subject`: {e}"))?;
    let body = match body {
        Some(b) => {
            template::render_text(b.as_str(), &ctx).map_err(|e| format!("rendering `body`: {e}"))?
        }
        None => String::new(),
    };
    // An approval's subject and body are stored with the run and shown on its page to anyone
    // with the link: `runner validate` refuses `secrets` there, and a secret's value that
    // arrives another way (in an input, say) is redacted here.
    let (subject, body) = if matches!(step.kind, StepKind::Approval(_)) {
        (redact(&subject, secrets), redact(&body, secrets))
    } else {
        (subject, body)
    };
    if subject.len() > MAX_SUBJECT_BYTES {
        return Err(over_limit("`subject`", subject.len(), MAX_SUBJECT_BYTES));
    }
    if body.len() > MAX_MAIL_BODY_BYTES {
        return Err(over_limit("`body`", body.len(), MAX_MAIL_BODY_BYTES));
    }
    Ok(Mail {
        to: recipients,
        subject: subject.replace(['\r', '\n'], " "),
        body,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_text_that_reads_steps_by_name_is_told_from_one_that_reads_them_all() {
        assert!(!reads_steps_dynamically(
            "{{ steps.users.body }} {{ steps['fetch-user'].status }}"
        ));
        assert!(!reads_steps_dynamically("{{ my_steps }} {{ input.steps }}"));
        // Conservative: a word `steps` in plain text reads them all (it only costs a copy).
        assert!(reads_steps_dynamically("the next steps"));
        assert!(reads_steps_dynamically("{{ steps | tojson }}"));
        assert!(reads_steps_dynamically("{{ steps[input.which].body }}"));
    }

    #[test]
    fn redaction_covers_the_forms_rendering_makes_of_a_secret() {
        let secrets: serde_json::Map<String, Value> = serde_json::from_value(
            serde_json::json!({ "TOKEN": "s3cr\"et/ v\\al", "PIN": "42", "KEY": "abc-Def" }),
        )
        .expect("a map");
        let cases = [
            (
                r#"{"auth":"s3cr\"et/ v\\al"}"#,
                r#"{"auth":"[redacted:TOKEN]"}"#,
            ),
            (
                "https://x.example/?t=s3cr%22et%2F%20v%5Cal",
                "https://x.example/?t=[redacted:TOKEN]",
            ),
            ("t=s3cr%22et%2F+v%5Cal", "t=[redacted:TOKEN]"),
            ("raw s3cr\"et/ v\\al here", "raw [redacted:TOKEN] here"),
            (
                "ABC-DEF and abc-def and abc-Def",
                "[redacted:KEY] and [redacted:KEY] and [redacted:KEY]",
            ),
            ("PIN=42", "PIN=42"),
        ];
        for (text, want) in cases {
            assert_eq!(redact(text, &secrets), want, "{text}");
        }
    }

    use super::*;
    use crate::engine::{NewRun, Trigger};
    use serde_json::json;

    const MAIL: &str = r#"
name: mail
inputs:
  email: { type: string, required: true }
  emails: { type: array, default: [] }
steps:
  - id: tell
    email:
      to: ["{{ input.email }}", "ops@example.com, \"Doe, Jane\" <jane@example.com>"]
      subject: hi
  - id: many
    email: { to: ["{{ input.emails }}"], subject: hi }
"#;

    fn recipients(step: &str, input: serde_json::Value) -> Result<Vec<String>, String> {
        let wf = crate::workflow::check_file("workflows/mail.yaml", MAIL).expect("checks");
        let new = NewRun {
            id: "run-1".into(),
            version: "v1".into(),
            trigger: Trigger::Api,
            input: crate::workflow::resolve_input(&wf, &input).expect("input"),
            scheduled_for: None,
            schedule_id: None,
        };
        let run = Run::new(&wf, new, chrono::DateTime::UNIX_EPOCH);
        render_mail(&wf, &run, step, &serde_json::Map::new(), None).map(|m| m.to)
    }

    /// A templated entry is one recipient: a value with a comma list in it (from an input, say)
    /// is a step error, not extra recipients. Entries written in the file stay comma lists, as
    /// `runner validate` reads them, and a rendered list is one recipient per item.
    #[test]
    fn a_templated_recipient_renders_to_exactly_one_address() {
        let literal = ["ops@example.com", "\"Doe, Jane\" <jane@example.com>"];
        assert_eq!(
            recipients("tell", json!({ "email": "Zoë <zoe@example.com>" })).expect("one"),
            [&["Zoë <zoe@example.com>"][..], &literal].concat()
        );
        assert_eq!(
            recipients("tell", json!({ "email": "\"Zoë, Z\" <zoe@example.com>" })).expect("quoted"),
            [&["\"Zoë, Z\" <zoe@example.com>"][..], &literal].concat()
        );
        for injected in [
            "Zoë <zoe@example.com>, evil@example.com",
            "zoe@example.com,evil@example.com",
        ] {
            let err = recipients("tell", json!({ "email": injected })).expect_err(injected);
            assert!(
                err.contains("rendered to 2 addresses") && err.contains("is one recipient"),
                "{err}"
            );
        }
        assert_eq!(
            recipients(
                "many",
                json!({ "email": "x@example.com", "emails": ["a@example.com", "B <b@example.com>"] })
            )
            .expect("a list"),
            ["a@example.com", "B <b@example.com>"]
        );
        let err = recipients(
            "many",
            json!({ "email": "x@example.com", "emails": ["a@example.com, evil@example.com"] }),
        )
        .expect_err("a list item with two addresses");
        assert!(err.contains("rendered to 2 addresses"), "{err}");
    }

    /// What reaches the network is bounded: a body over 1 MiB (the issue's was 300 MB), a URL or
    /// a header over 8 KiB, a subject over 998 bytes fail the step, naming what and the limit.
    #[test]
    fn rendered_requests_and_mails_are_capped() {
        let wf = crate::workflow::check_file(
            "workflows/big.yaml",
            r#"
name: big
inputs:
  n: { type: integer, required: true }
steps:
  - id: body
    http:
      url: https://example.com/
      body: { a: "{{ 'x' * input.n }}", b: "{{ 'y' * input.n }}" }
  - id: url
    http: { url: "https://example.com/?q={{ 'x' * input.n }}" }
  - id: header
    http: { url: "https://example.com/", headers: { X-Big: "{{ 'x' * input.n }}" } }
  - id: subject
    email: { to: [ops@example.com], subject: "{{ 'x' * input.n }}" }
"#,
        )
        .expect("checks");
        let run = |n: u64| {
            let new = NewRun {
                id: "run-1".into(),
                version: "v1".into(),
                trigger: Trigger::Api,
                input: json!({ "n": n }),
                scheduled_for: None,
                schedule_id: None,
            };
            Run::new(&wf, new, chrono::DateTime::UNIX_EPOCH)
        };
        let none = serde_json::Map::new();
        let http = |n, step| render_http(&wf, &run(n), step, &none, None).map(|r| r.body.len());
        assert!(http(500_000, "body").is_ok());
        let err = http(600_000, "body").expect_err("two halves over 1 MiB");
        assert!(
            err.contains("`body` renders to 1200015 bytes, over runner's limit of 1024 KiB"),
            "{err}"
        );
        assert!(http(8000, "url").is_ok());
        let err = http(9000, "url").expect_err("URL");
        assert!(
            err.contains("`url` renders to 9023 bytes, over runner's limit of 8 KiB"),
            "{err}"
        );
        let err = http(9000, "header").expect_err("header");
        assert!(
            err.contains("header `X-Big` renders to 9000 bytes"),
            "{err}"
        );
        let err = render_mail(&wf, &run(999), "subject", &none, None).expect_err("subject");
        assert!(
            err.contains("`subject` renders to 999 bytes, over runner's limit of 998 bytes"),
            "{err}"
        );
    }

    /// An approval's text never holds a secret's value, however it got there (validate refuses
    /// `secrets` in it; an input can still carry the value). An `email` step's text is the
    /// author's to choose and is not stored: it is left as rendered.
    #[test]
    fn an_approvals_text_is_redacted() {
        let wf = crate::workflow::check_file(
            "workflows/ask.yaml",
            r#"
name: ask
secrets: [TOKEN]
inputs:
  note: { type: string, required: true }
steps:
  - id: ask
    approval: { to: [lead@example.com], subject: "Ship {{ input.note }}?", body: "{{ input.note }}" }
  - id: tell
    email: { to: [lead@example.com], subject: "{{ input.note }}", body: "{{ input.note }}" }
"#,
        )
        .expect("checks");
        let new = NewRun {
            id: "run-1".into(),
            version: "v1".into(),
            trigger: Trigger::Api,
            input: json!({ "note": "with tok-3141592" }),
            scheduled_for: None,
            schedule_id: None,
        };
        let run = Run::new(&wf, new, chrono::DateTime::UNIX_EPOCH);
        let mut secrets = serde_json::Map::new();
        secrets.insert("TOKEN".into(), json!("tok-3141592"));
        let ask = render_mail(&wf, &run, "ask", &secrets, None).expect("renders");
        assert_eq!(ask.subject, "Ship with [redacted:TOKEN]?");
        assert_eq!(ask.body, "with [redacted:TOKEN]");
        let tell = render_mail(&wf, &run, "tell", &secrets, None).expect("renders");
        assert_eq!(tell.body, "with tok-3141592");
    }

    /// Dedup ids are kept by endpoints across runner upgrades: the value for a given run and
    /// step must never change (this one was computed independently, with Python's hashlib).
    #[test]
    fn the_dedup_id_of_a_run_and_step_is_fixed() {
        assert_eq!(
            super::dedup_id("0190a5d2-7c4e-7000-8000-000000000001", "publish"),
            "msg_1bcf3be2488fc0f9fe8ece992d1bfff4"
        );
    }
}
