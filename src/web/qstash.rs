//! The QStash-compatible API under `/v2` (design §11): what `@upstash/qstash`'s `Client` calls,
//! with QStash's answers and `{"error": …}` bodies, so that an app keeps its publishing code
//! and points `QSTASH_URL` and `QSTASH_TOKEN` at runner. A message is a run of the built-in
//! `qstash` workflow (its id is the message id), a QStash schedule a programmatic schedule of
//! it, the dead-letter queue its failed runs.
//!
//! Handlers parse and answer; the work is `ops`.

use super::auth;
use super::state::{AppState, DaemonParts, Shared};
use crate::engine::message::Message;
use crate::engine::{AttemptResult, Run, RunStatus};
use crate::ops::publish::{self, Kind, PublishError};
use crate::ops::schedules::{PutSchedule, ScheduleError};
use crate::store::{ApiSchedule, RunFilter, StoreError};
use crate::workflow::builtin::QSTASH;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::{Map, Value, json};

/// An error as QStash answers it: `{"error": "…"}`.
struct QError(StatusCode, String);

impl QError {
    fn bad(message: impl Into<String>) -> QError {
        QError(StatusCode::BAD_REQUEST, message.into())
    }
    fn not_found(message: impl Into<String>) -> QError {
        QError(StatusCode::NOT_FOUND, message.into())
    }
    fn store(e: StoreError) -> QError {
        if e.is_unavailable() {
            return QError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the database cannot take this now, try again: {e}"),
            );
        }
        tracing::error!(error = %e, "QStash API request failed");
        QError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {e}"),
        )
    }
}

impl IntoResponse for QError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<ScheduleError> for QError {
    fn from(e: ScheduleError) -> QError {
        match e {
            ScheduleError::NotFound(id) => QError::not_found(format!("schedule {id} not found")),
            ScheduleError::InvalidCron(e) => QError::bad(format!("Invalid cron expression {e}")),
            ScheduleError::Store(e) => QError::store(e),
            e => QError::bad(e.to_string()),
        }
    }
}

type QResult = Result<Response, QError>;

fn ok(status: StatusCode, v: Value) -> QResult {
    Ok((status, Json(v)).into_response())
}

/// The routes under `/v2`.
pub fn routes(state: Shared) -> Router<Shared> {
    Router::new()
        .route("/publish/{*destination}", post(publish_one))
        .route("/batch", post(batch))
        .route("/messages", axum::routing::delete(cancel_messages))
        .route("/messages/{id}", get(get_message).delete(cancel_message))
        .route("/schedules", get(list_schedules))
        .route("/schedules/{*rest}", any(schedules))
        .route("/dlq", get(list_dlq).delete(delete_dlq_many))
        .route("/dlq/retry", post(retry_dlq))
        .route("/dlq/retry/{id}", post(retry_dlq_one))
        .route("/dlq/{id}", get(get_dlq).delete(delete_dlq_one))
        .route("/events", get(list_events))
        .route("/keys", get(get_keys))
        .route("/keys/rotate", post(rotate_keys))
        .route("/notify/{event}", post(notify))
        .fallback(|| async {
            QError::not_found("no such endpoint of runner's QStash API; see README.md")
        })
        .layer(middleware::from_fn_with_state(state, auth_layer))
        .layer(middleware::from_fn(super::api_v1::errors_as_json))
}

/// `Authorization: Bearer $RUNNER_API_TOKEN`, or `?qstash_token=` as QStash accepts.
async fn auth_layer(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let ok = state.token.as_ref().is_none_or(|token| {
        auth::bearer(req.headers().get(header::AUTHORIZATION)).is_some_and(|t| token.matches(t))
            || query_pairs(req.uri().query())
                .into_iter()
                .any(|(k, v)| k == "qstash_token" && token.matches(&v))
    });
    if !ok {
        return QError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send `Authorization: Bearer $QSTASH_TOKEN` (runner's RUNNER_API_TOKEN)".into(),
        )
        .into_response();
    }
    next.run(req).await
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn query_all(query: Option<&str>, name: &str) -> Vec<String> {
    query_pairs(query)
        .into_iter()
        .filter(|(k, _)| k == name)
        .flat_map(|(_, v)| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn query_one(query: Option<&str>, name: &str) -> Option<String> {
    query_pairs(query)
        .into_iter()
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v)
}

fn daemon(state: &AppState) -> Result<&DaemonParts, QError> {
    state.daemon.as_ref().ok_or_else(|| {
        QError(
            StatusCode::NOT_IMPLEMENTED,
            "the QStash API is served by `runner serve`".into(),
        )
    })
}

/// The destination as the client wrote it: the raw path after `prefix` and the request's own
/// query (the destination's), without `qstash_token`.
fn destination(uri: &axum::http::Uri, prefix: &str) -> String {
    let path = uri.path();
    let dest = path.find(prefix).map_or("", |i| &path[i + prefix.len()..]);
    let query: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| {
            !p.is_empty()
                && url::form_urlencoded::parse(p.as_bytes())
                    .next()
                    .is_none_or(|(k, _)| k != "qstash_token")
        })
        .collect();
    if query.is_empty() {
        dest.to_string()
    } else {
        format!("{dest}?{}", query.join("&"))
    }
}

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// A body over runner's limit: 413, before anything is stored.
fn too_large(len: usize) -> Result<(), QError> {
    let limit = crate::engine::request::MAX_BODY_BYTES;
    if len > limit {
        return Err(QError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the message body is {len} bytes, over runner's limit of {} KiB",
                limit / 1024
            ),
        ));
    }
    Ok(())
}

/// `POST /v2/publish/{destination}`.
async fn publish_one(
    State(state): State<Shared>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> QResult {
    let parts = daemon(&state)?;
    too_large(body.len())?;
    let dest = destination(&uri, "/publish/");
    let parsed = publish::parse(
        &dest,
        &header_pairs(&headers),
        &body,
        Kind::Publish,
        chrono::Utc::now(),
    )
    .map_err(QError::bad)?;
    let answer = publish_parsed(&state, parts, parsed).await?;
    ok(StatusCode::CREATED, answer)
}

async fn publish_parsed(
    state: &AppState,
    parts: &DaemonParts,
    parsed: publish::Parsed,
) -> Result<Value, QError> {
    let url = parsed.message.url.clone();
    let p = publish::publish(&state.exec, &*parts.registry, parsed)
        .await
        .map_err(|e| match e {
            PublishError::Invalid(m) => QError::bad(m),
            PublishError::Store(e) => QError::store(e),
        })?;
    let mut answer = json!({ "messageId": p.run.id, "url": url });
    if p.deduplicated {
        answer["deduplicated"] = json!(true);
    }
    Ok(answer)
}

/// One message of `POST /v2/batch`.
#[derive(serde::Deserialize)]
struct BatchEntry {
    destination: String,
    #[serde(default)]
    headers: Map<String, Value>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    queue: Option<String>,
}

/// `POST /v2/batch`: every message is checked before any is published, so a bad one
/// publishes none.
async fn batch(State(state): State<Shared>, body: Bytes) -> QResult {
    let parts = daemon(&state)?;
    let entries: Vec<BatchEntry> = serde_json::from_slice(&body).map_err(|e| {
        QError::bad(format!(
            "the body must be a JSON array of {{destination, headers, body}}: {e}"
        ))
    })?;
    if entries.len() > 1000 {
        return Err(QError::bad("a batch has at most 1000 messages"));
    }
    let now = chrono::Utc::now();
    let mut parsed = Vec::new();
    for (i, e) in entries.into_iter().enumerate() {
        if e.queue.is_some() {
            return Err(QError::bad(format!(
                "message {i}: runner does not have QStash queues; publish without `queue`"
            )));
        }
        let headers: Vec<(String, String)> = e
            .headers
            .iter()
            .map(|(k, v)| {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                (k.clone(), v)
            })
            .collect();
        let body = match e.body {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s.into_bytes(),
            Some(other) => other.to_string().into_bytes(),
        };
        parsed.push(
            publish::parse(&e.destination, &headers, &body, Kind::Publish, now)
                .map_err(|m| QError::bad(format!("message {i}: {m}")))?,
        );
    }
    let mut answers = Vec::new();
    for p in parsed {
        answers.push(publish_parsed(&state, parts, p).await?);
    }
    ok(StatusCode::CREATED, Value::Array(answers))
}

/// A message's run, if `id` is one.
async fn message_run(state: &AppState, id: &str) -> Result<Run, QError> {
    match state
        .exec
        .store()
        .get_run(id)
        .await
        .map_err(QError::store)?
    {
        Some(run) if run.workflow == QSTASH => Ok(run),
        _ => Err(QError::not_found(format!("message {id} not found"))),
    }
}

/// A message as QStash shows it.
fn message_json(run: &Run) -> Value {
    let Ok(m) = Message::of(run) else {
        return json!({ "messageId": run.id, "createdAt": run.created_at.timestamp_millis() });
    };
    let mut v = Map::new();
    v.insert("messageId".into(), json!(run.id));
    v.insert("url".into(), json!(m.url));
    v.insert("method".into(), json!(m.method));
    v.insert("header".into(), Value::Object(m.header_lists()));
    body_fields(&mut v, "body", &m);
    v.insert("maxRetries".into(), json!(m.retries));
    let not_before = chrono::DateTime::parse_from_rfc3339(&m.not_before)
        .map(|d| d.timestamp_millis())
        .unwrap_or(run.created_at.timestamp_millis());
    v.insert("notBefore".into(), json!(not_before));
    v.insert("createdAt".into(), json!(run.created_at.timestamp_millis()));
    if !m.callback.is_empty() {
        v.insert("callback".into(), json!(m.callback));
    }
    if !m.failure_callback.is_empty() {
        v.insert("failureCallback".into(), json!(m.failure_callback));
    }
    if let Some(s) = &run.schedule_id {
        v.insert("scheduleId".into(), json!(s));
    }
    flow_fields(&mut v, &m);
    v.insert("callerIp".into(), json!(""));
    v.insert("callerIP".into(), json!(""));
    // runner's own: where the message's run is.
    v.insert("state".into(), json!(state_of(run)));
    Value::Object(v)
}

fn body_fields(v: &mut Map<String, Value>, name: &str, m: &Message) {
    match m.body_bytes().map(String::from_utf8) {
        Ok(Ok(text)) => {
            v.insert(name.into(), json!(text));
        }
        _ => {
            v.insert(format!("{name}Base64"), json!(m.body));
        }
    }
}

fn flow_fields(v: &mut Map<String, Value>, m: &Message) {
    let f = &m.flow_control;
    if f.key.is_empty() {
        return;
    }
    v.insert("flowControlKey".into(), json!(f.key));
    if let Some(p) = f.parallelism {
        v.insert("parallelism".into(), json!(p));
    }
    if let Some(r) = f.rate {
        v.insert("rate".into(), json!(r));
        v.insert("period".into(), json!(f.period.max(1)));
    }
}

/// QStash's state name for where a message's run is.
fn state_of(run: &Run) -> &'static str {
    match run.status {
        RunStatus::Pending => "CREATED",
        RunStatus::Sleeping => match run.step("deliver").map(|s| s.attempts) {
            Some(n) if n > 0 => "RETRY",
            _ => "CREATED",
        },
        RunStatus::Running
            if run
                .step("deliver")
                .is_some_and(|s| s.status == crate::engine::StepStatus::Retrying) =>
        {
            "RETRY"
        }
        RunStatus::Running | RunStatus::WaitingApproval | RunStatus::WaitingEvent => "ACTIVE",
        RunStatus::Succeeded => "DELIVERED",
        RunStatus::Failed | RunStatus::Rejected => "FAILED",
        RunStatus::Cancelled => "CANCELLED",
    }
}

/// `GET /v2/messages/{id}`.
async fn get_message(State(state): State<Shared>, Path(id): Path<String>) -> QResult {
    let run = message_run(&state, &id).await?;
    ok(StatusCode::OK, message_json(&run))
}

/// Cancels messages' runs; answers how many it stopped (one that had ended counts none).
async fn cancel_runs(state: &AppState, ids: &[String]) -> Result<u64, QError> {
    let mut n = 0;
    for id in ids {
        match crate::ops::cancel::cancel(&state.exec, id, "cancelled through the QStash API").await
        {
            Ok(_) => n += 1,
            Err(crate::ops::cancel::CancelError::Store(e)) => return Err(QError::store(e)),
            Err(_) => {}
        }
    }
    Ok(n)
}

/// `DELETE /v2/messages/{id}`: `{"cancelled": 1}`, or 0 when it had already ended.
async fn cancel_message(State(state): State<Shared>, Path(id): Path<String>) -> QResult {
    message_run(&state, &id).await?;
    let n = cancel_runs(&state, &[id]).await?;
    ok(StatusCode::OK, json!({ "cancelled": n }))
}

/// `DELETE /v2/messages?messageIds=…`, or with QStash's filters (`url`, `flowControlKey`,
/// `scheduleId`, …: only the messages they match), or every message not yet delivered.
async fn cancel_messages(State(state): State<Shared>, OriginalUri(uri): OriginalUri) -> QResult {
    let ids = query_all(uri.query(), "messageIds");
    let ids = if ids.is_empty() {
        let filter = Filter::of(uri.query(), MESSAGE_FILTERS)?;
        let base = RunFilter {
            workflow: Some(QSTASH.into()),
            ..Default::default()
        };
        select(&state, base, &filter, None, usize::MAX)
            .await?
            .0
            .into_iter()
            .filter(|r| !r.status.is_terminal())
            .map(|r| r.id)
            .collect()
    } else {
        let mut mine = Vec::new();
        for id in ids {
            if message_run(&state, &id).await.is_ok() {
                mine.push(id);
            }
        }
        mine
    };
    let n = cancel_runs(&state, &ids).await?;
    ok(StatusCode::OK, json!({ "cancelled": n }))
}

/// QStash's filter query keys that runner can answer; the others are refused, not ignored (a
/// cancel or delete that ignored its filter would take every message).
const MESSAGE_FILTERS: &[&str] = &[
    "messageId",
    "url",
    "topicName",
    "urlGroup",
    "queueName",
    "scheduleId",
    "label",
    "flowControlKey",
    "callerIp",
    "host",
    "path",
    "api",
    "fromDate",
    "toDate",
];
const DLQ_FILTERS: &[&str] = &[
    "messageId",
    "url",
    "topicName",
    "urlGroup",
    "queueName",
    "scheduleId",
    "label",
    "flowControlKey",
    "callerIp",
    "api",
    "fromDate",
    "toDate",
    "responseStatus",
];
const LOG_FILTERS: &[&str] = &[
    "messageId",
    "url",
    "topicName",
    "urlGroup",
    "queueName",
    "scheduleId",
    "label",
    "flowControlKey",
    "callerIp",
    "host",
    "path",
    "api",
    "fromDate",
    "toDate",
    "state",
];
/// Query keys that are not filters.
const NOT_FILTERS: &[&str] = &[
    "count",
    "cursor",
    "messageIds",
    "dlqIds",
    "qstash_token",
    "order",
    "trimBody",
];

/// QStash's filters of a list, cancel, delete or retry: each key's values (repeated, or
/// comma-separated) are alternatives, the keys all apply.
struct Filter(Vec<(String, Vec<String>)>);

impl Filter {
    fn of(query: Option<&str>, known: &[&str]) -> Result<Filter, QError> {
        let mut keys: Vec<(String, Vec<String>)> = Vec::new();
        for (k, v) in query_pairs(query) {
            if NOT_FILTERS.contains(&k.as_str()) || v.is_empty() {
                continue;
            }
            if !known.contains(&k.as_str()) {
                return Err(QError::bad(format!(
                    "unknown filter `{k}`: use {}",
                    known.join(", ")
                )));
            }
            let values = v
                .split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty());
            match keys.iter_mut().find(|(name, _)| *name == k) {
                Some((_, vs)) => vs.extend(values),
                None => keys.push((k, values.collect())),
            }
        }
        for (k, vs) in &keys {
            if matches!(k.as_str(), "fromDate" | "toDate" | "responseStatus")
                && vs.iter().any(|v| v.parse::<i64>().is_err())
            {
                return Err(QError::bad(format!("filter `{k}` must be a number")));
            }
        }
        Ok(Filter(keys))
    }

    /// Whether a message's run matches (`state`, which applies to log entries, is left out).
    fn matches(&self, run: &Run) -> bool {
        let m = Message::of(run).ok();
        let url = m.as_ref().map(|m| m.url.as_str()).unwrap_or("");
        let parsed = reqwest::Url::parse(url).ok();
        let created = run.created_at.timestamp_millis();
        self.0.iter().all(|(key, values)| {
            let any = |f: &dyn Fn(&str) -> bool| values.iter().any(|v| f(v));
            match key.as_str() {
                "messageId" => any(&|v| v == run.id),
                "url" => any(&|v| v == url),
                "scheduleId" => any(&|v| run.schedule_id.as_deref() == Some(v)),
                "flowControlKey" => any(&|v| {
                    m.as_ref()
                        .is_some_and(|m| !m.flow_control.key.is_empty() && m.flow_control.key == v)
                }),
                "host" => any(&|v| parsed.as_ref().and_then(|u| u.host_str()) == Some(v)),
                "path" => any(&|v| parsed.as_ref().map(|u| u.path()) == Some(v)),
                "fromDate" => any(&|v| v.parse::<i64>().is_ok_and(|t| created >= t)),
                "toDate" => any(&|v| v.parse::<i64>().is_ok_and(|t| created <= t)),
                "responseStatus" => any(&|v| {
                    run.failure
                        .as_ref()
                        .and_then(|f| f.status)
                        .is_some_and(|s| v.parse::<u16>() == Ok(s))
                }),
                "state" => true,
                // Runner has no URL groups, queues, labels or caller addresses: nothing matches.
                _ => false,
            }
        })
    }
}

/// Messages' runs under `base`, newest first, that `filter` matches: up to `count` of them,
/// from before the run `cursor`; and the cursor of the next page, when more may follow. Reads
/// at most 100,000 runs.
async fn select(
    state: &AppState,
    base: RunFilter,
    filter: &Filter,
    cursor: Option<String>,
    count: usize,
) -> Result<(Vec<Run>, Option<String>), QError> {
    const PAGE: usize = 500;
    const SCAN: usize = 100_000;
    let store = state.exec.store();
    if let Some(c) = &cursor
        && store.get_run(c).await.map_err(QError::store)?.is_none()
    {
        return Err(QError::bad(format!("`{c}` is not a cursor this list gave")));
    }
    let mut before = cursor;
    let mut out = Vec::new();
    let mut scanned = 0;
    loop {
        let page = store
            .list_runs(&RunFilter {
                before: before.clone(),
                limit: PAGE,
                ..base.clone()
            })
            .await
            .map_err(QError::store)?;
        let full = page.len() == PAGE;
        for r in page {
            scanned += 1;
            before = Some(r.id.clone());
            let Some(run) = store.get_run(&r.id).await.map_err(QError::store)? else {
                continue;
            };
            if filter.matches(&run) {
                out.push(run);
                if out.len() >= count {
                    return Ok((out, before));
                }
            }
        }
        if !full {
            return Ok((out, None));
        }
        if scanned >= SCAN {
            return Ok((out, before));
        }
    }
}

// --- schedules -----------------------------------------------------------------------------

/// A QStash schedule as the Client reads it.
fn schedule_json(s: &ApiSchedule) -> Value {
    let m: Message = serde_json::from_value(s.input.clone()).unwrap_or_else(|_| Message {
        url: String::new(),
        method: "POST".into(),
        headers: Map::new(),
        body: String::new(),
        retries: 3,
        timeout: 0,
        not_before: String::new(),
        callback: String::new(),
        failure_callback: String::new(),
        flow_control: Default::default(),
        published_at: String::new(),
    });
    let mut v = Map::new();
    v.insert("scheduleId".into(), json!(s.id));
    v.insert("cron".into(), json!(s.cron));
    v.insert("createdAt".into(), json!(s.created_at.timestamp_millis()));
    v.insert("destination".into(), json!(m.url));
    v.insert("method".into(), json!(m.method));
    v.insert("header".into(), Value::Object(m.header_lists()));
    body_fields(&mut v, "body", &m);
    v.insert("retries".into(), json!(m.retries));
    if m.timeout > 0 {
        v.insert("timeout".into(), json!(m.timeout));
    }
    if !m.callback.is_empty() {
        v.insert("callback".into(), json!(m.callback));
    }
    if !m.failure_callback.is_empty() {
        v.insert("failureCallback".into(), json!(m.failure_callback));
    }
    flow_fields(&mut v, &m);
    v.insert("isPaused".into(), json!(s.paused));
    v.insert("callerIp".into(), json!(""));
    v.insert("callerIP".into(), json!(""));
    if let Ok(c) = crate::cron::CronSchedule::parse(&s.cron, s.timezone.as_deref())
        && let Some(next) = c.next_after(chrono::Utc::now())
    {
        v.insert("nextScheduleTime".into(), json!(next.at.timestamp_millis()));
    }
    Value::Object(v)
}

async fn qstash_schedule(state: &AppState, id: &str) -> Result<ApiSchedule, QError> {
    match crate::ops::schedules::get(state.exec.store(), id).await {
        Ok(s) if s.workflow == QSTASH => Ok(s),
        Ok(_) | Err(ScheduleError::NotFound(_)) => {
            Err(QError::not_found(format!("schedule {id} not found")))
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET /v2/schedules`: a bare array.
async fn list_schedules(State(state): State<Shared>) -> QResult {
    let all = state
        .exec
        .store()
        .api_schedules()
        .await
        .map_err(QError::store)?;
    let list: Vec<Value> = all
        .iter()
        .filter(|s| s.workflow == QSTASH)
        .map(schedule_json)
        .collect();
    ok(StatusCode::OK, Value::Array(list))
}

/// Everything under `/v2/schedules/`: create (`POST /v2/schedules/{destination}`), get,
/// delete, and pause or resume (`PATCH`, or `POST` as QStash's docs say). One route, because a
/// destination is a path of its own.
async fn schedules(
    State(state): State<Shared>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> QResult {
    let rest = destination(&uri, "/schedules/");
    let is_url = rest.starts_with("http://") || rest.starts_with("https://");
    if method == Method::POST && is_url {
        return create_schedule(&state, &rest, &headers, &body).await;
    }
    let path = uri.path();
    let id_part = path
        .find("/schedules/")
        .map_or("", |i| &path[i + "/schedules/".len()..]);
    let (id, action) = match id_part.rsplit_once('/') {
        Some((id, a @ ("pause" | "resume"))) => (id, Some(a)),
        _ => (id_part, None),
    };
    let id = percent_decode(id);
    match (method.as_str(), action) {
        ("GET", None) => ok(
            StatusCode::OK,
            schedule_json(&qstash_schedule(&state, &id).await?),
        ),
        ("DELETE", None) => {
            qstash_schedule(&state, &id).await?;
            daemon(&state)?.schedules(&state.exec).delete(&id).await?;
            ok(StatusCode::OK, json!({}))
        }
        ("PATCH" | "POST", Some(action)) => {
            qstash_schedule(&state, &id).await?;
            daemon(&state)?
                .schedules(&state.exec)
                .set_paused(&id, action == "pause")
                .await?;
            ok(StatusCode::OK, json!({}))
        }
        ("POST", None) => Err(QError::bad(
            "invalid destination url: endpoint has invalid scheme, add http:// or https://",
        )),
        _ => Err(QError(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
        )),
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

async fn create_schedule(
    state: &AppState,
    destination: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> QResult {
    let parts = daemon(state)?;
    let pairs = header_pairs(headers);
    let cron = headers
        .get("upstash-cron")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    if cron.is_empty() {
        return Err(QError::bad("Invalid cron expression empty spec string"));
    }
    let parsed = publish::parse(
        destination,
        &pairs,
        body,
        Kind::Schedule,
        chrono::Utc::now(),
    )
    .map_err(QError::bad)?;
    if parsed.dedup.is_some() {
        return Err(QError::bad(
            "a schedule's messages cannot carry a deduplication id: each fire is a new message",
        ));
    }
    let mut message = parsed.message;
    message.published_at = String::new();
    let id = match headers
        .get("upstash-schedule-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => format!("scd_{}", uuid::Uuid::now_v7().simple()),
    };
    let existing = state
        .exec
        .store()
        .api_schedule(&id)
        .await
        .map_err(QError::store)?;
    if existing.as_ref().is_some_and(|s| s.workflow != QSTASH) {
        return Err(QError::bad(format!(
            "schedule id `{id}` is taken by a schedule of workflow `{}`",
            existing.map(|s| s.workflow).unwrap_or_default()
        )));
    }
    let (saved, _) = parts
        .schedules(&state.exec)
        .put(PutSchedule {
            id,
            workflow: QSTASH.into(),
            cron: cron.to_string(),
            timezone: None,
            input: Some(serde_json::to_value(&message).expect("a message serializes")),
            paused: None,
        })
        .await?;
    ok(StatusCode::CREATED, json!({ "scheduleId": saved.id }))
}

// --- the dead-letter queue -----------------------------------------------------------------

/// A message that failed for good, as QStash's DLQ shows it.
fn dlq_json(run: &Run) -> Value {
    let mut v = match message_json(run) {
        Value::Object(v) => v,
        _ => Map::new(),
    };
    v.insert("dlqId".into(), json!(run.id));
    if let Some(f) = &run.failure {
        if let Some(s) = f.status {
            v.insert("responseStatus".into(), json!(s));
        }
        v.insert("responseHeader".into(), json!({}));
        match &f.body {
            Some(Value::String(s)) => {
                v.insert("responseBody".into(), json!(s));
            }
            Some(Value::Null) | None => {}
            Some(other) => {
                v.insert("responseBody".into(), json!(other.to_string()));
            }
        }
        v.insert("error".into(), json!(f.error));
    }
    Value::Object(v)
}

/// `GET /v2/dlq?count=&cursor=&dlqIds=` and QStash's filters: newest first; `cursor` only when
/// more may follow.
async fn list_dlq(State(state): State<Shared>, OriginalUri(uri): OriginalUri) -> QResult {
    let q = uri.query();
    let ids = query_all(q, "dlqIds");
    let mut runs = Vec::new();
    let mut cursor = None;
    if ids.is_empty() {
        let count = count_of(q)?;
        let filter = Filter::of(q, DLQ_FILTERS)?;
        (runs, cursor) = select(&state, dlq_base(), &filter, query_one(q, "cursor"), count).await?;
    } else {
        for id in ids {
            if let Ok(run) = message_run(&state, &id).await
                && run.status == RunStatus::Failed
            {
                runs.push(run);
            }
        }
    }
    let mut answer = json!({ "messages": runs.iter().map(dlq_json).collect::<Vec<_>>() });
    if let Some(c) = cursor {
        answer["cursor"] = json!(c);
    }
    ok(StatusCode::OK, answer)
}

fn dlq_base() -> RunFilter {
    RunFilter {
        workflow: Some(QSTASH.into()),
        in_dlq: true,
        ..Default::default()
    }
}

/// `?count=`: 1 to 1000, default 100.
fn count_of(q: Option<&str>) -> Result<usize, QError> {
    match query_one(q, "count") {
        None => Ok(100),
        Some(c) => c
            .parse::<usize>()
            .map(|n| n.clamp(1, 1000))
            .map_err(|_| QError::bad(format!("`count` must be a number, not `{c}`"))),
    }
}

/// `GET /v2/dlq/{id}`.
async fn get_dlq(State(state): State<Shared>, Path(id): Path<String>) -> QResult {
    let run = message_run(&state, &id).await?;
    if run.status != RunStatus::Failed {
        return Err(QError::not_found(format!("message {id} is not in the DLQ")));
    }
    ok(StatusCode::OK, dlq_json(&run))
}

async fn remove_from_dlq(state: &AppState, ids: &[String]) -> Result<u64, QError> {
    state
        .exec
        .store()
        .remove_from_dlq(QSTASH, ids, chrono::Utc::now())
        .await
        .map_err(QError::store)
}

/// `DELETE /v2/dlq/{id}`.
async fn delete_dlq_one(State(state): State<Shared>, Path(id): Path<String>) -> QResult {
    if remove_from_dlq(&state, std::slice::from_ref(&id)).await? == 0 {
        return Err(QError::not_found(format!("message {id} is not in the DLQ")));
    }
    ok(StatusCode::OK, json!({ "deleted": 1 }))
}

/// `DELETE /v2/dlq?dlqIds=…`, or with QStash's filters, or every message in it.
async fn delete_dlq_many(State(state): State<Shared>, OriginalUri(uri): OriginalUri) -> QResult {
    let ids = dlq_ids(&state, uri.query()).await?;
    let n = remove_from_dlq(&state, &ids).await?;
    ok(StatusCode::OK, json!({ "deleted": n }))
}

/// The DLQ's messages a bulk delete or retry names: `dlqIds`, else those its filters match.
async fn dlq_ids(state: &AppState, q: Option<&str>) -> Result<Vec<String>, QError> {
    let ids = query_all(q, "dlqIds");
    if !ids.is_empty() {
        return Ok(ids);
    }
    let filter = Filter::of(q, DLQ_FILTERS)?;
    let (runs, _) = select(state, dlq_base(), &filter, None, usize::MAX).await?;
    Ok(runs.into_iter().map(|r| r.id).collect())
}

/// Retries failed messages' runs from their failed step; the message keeps its id.
async fn retry_runs(state: &AppState, ids: &[String]) -> Result<Vec<Value>, QError> {
    let mut responses = Vec::new();
    for id in ids {
        message_run(state, id).await?;
        match crate::ops::retry::retry(&state.exec, id).await {
            Ok(run) => responses.push(json!({ "messageId": run.id })),
            Err(crate::ops::retry::RetryError::Store(e)) => return Err(QError::store(e)),
            Err(e) => {
                return Err(QError::not_found(format!(
                    "message {id} is not in the DLQ: {e}"
                )));
            }
        }
    }
    Ok(responses)
}

/// `POST /v2/dlq/retry?dlqIds=…`, or with QStash's filters, or every message in it.
async fn retry_dlq(State(state): State<Shared>, OriginalUri(uri): OriginalUri) -> QResult {
    let ids = dlq_ids(&state, uri.query()).await?;
    let responses = retry_runs(&state, &ids).await?;
    ok(StatusCode::CREATED, json!({ "responses": responses }))
}

/// `POST /v2/dlq/retry/{id}`.
async fn retry_dlq_one(State(state): State<Shared>, Path(id): Path<String>) -> QResult {
    let mut responses = retry_runs(&state, std::slice::from_ref(&id)).await?;
    ok(StatusCode::CREATED, responses.pop().unwrap_or(json!({})))
}

// --- logs ----------------------------------------------------------------------------------

/// `GET /v2/events?count=&cursor=&messageIds=` and QStash's filters (`state` among them): what
/// happened to messages, newest first, from their runs and attempts (`events` and, as QStash's
/// docs name it, `logs`). A page holds whole messages: at least `count` entries when there
/// are, and the last message's others.
async fn list_events(State(state): State<Shared>, OriginalUri(uri): OriginalUri) -> QResult {
    let q = uri.query();
    let count = count_of(q)?;
    let filter = Filter::of(q, LOG_FILTERS)?;
    let states: Vec<String> = filter
        .0
        .iter()
        .filter(|(k, _)| k == "state")
        .flat_map(|(_, v)| v.clone())
        .collect();
    let wanted = |e: &Value| states.is_empty() || states.iter().any(|s| e["state"] == json!(s));
    let ids = query_all(q, "messageIds");
    let mut events = Vec::new();
    let mut cursor = None;
    if ids.is_empty() {
        let base = RunFilter {
            workflow: Some(QSTASH.into()),
            ..Default::default()
        };
        let mut before = query_one(q, "cursor");
        loop {
            let (runs, next) = select(&state, base.clone(), &filter, before, 50).await?;
            for run in &runs {
                let attempts = state
                    .exec
                    .store()
                    .attempts(&run.id)
                    .await
                    .map_err(QError::store)?;
                events.extend(run_events(run, &attempts).into_iter().filter(|e| wanted(e)));
                if events.len() >= count {
                    cursor = next.as_ref().map(|_| run.id.clone());
                    break;
                }
            }
            if events.len() >= count || next.is_none() {
                break;
            }
            before = next;
        }
    } else {
        for id in ids {
            let Ok(run) = message_run(&state, &id).await else {
                continue;
            };
            let attempts = state
                .exec
                .store()
                .attempts(&id)
                .await
                .map_err(QError::store)?;
            events.extend(
                run_events(&run, &attempts)
                    .into_iter()
                    .filter(|e| wanted(e)),
            );
        }
    }
    events.sort_by_key(|e| std::cmp::Reverse(e["time"].as_i64().unwrap_or(0)));
    let mut answer = json!({ "events": events, "logs": events });
    if let Some(c) = cursor {
        answer["cursor"] = json!(c);
    }
    ok(StatusCode::OK, answer)
}

fn run_events(run: &Run, attempts: &[crate::store::AttemptRecord]) -> Vec<Value> {
    let url = Message::of(run).map(|m| m.url).unwrap_or_default();
    let event = |time: chrono::DateTime<chrono::Utc>, state: &str| json!({ "time": time.timestamp_millis(), "state": state, "messageId": run.id, "url": url });
    let mut out = vec![event(run.created_at, "CREATED")];
    for a in attempts.iter().filter(|a| a.step == "deliver") {
        if let Some(t) = a.started_at {
            out.push(event(t, "ACTIVE"));
        }
        let Some(t) = a.finished_at else { continue };
        let mut e = match a.outcome {
            AttemptResult::Succeeded => event(t, "DELIVERED"),
            AttemptResult::Retry => event(t, "RETRY"),
            AttemptResult::Failed | AttemptResult::Interrupted => event(t, "ERROR"),
        };
        if let Some(s) = a.status {
            e["responseStatus"] = json!(s);
        }
        if let Some(err) = &a.error {
            e["error"] = json!(err);
        }
        out.push(e);
    }
    if let Some(t) = run.finished_at {
        match run.status {
            RunStatus::Failed => out.push(event(t, "FAILED")),
            RunStatus::Cancelled => out.push(event(t, "CANCELLED")),
            _ => {}
        }
    }
    out
}

// --- keys and notify -----------------------------------------------------------------------

/// `GET /v2/keys`: the signing keys receivers verify with.
async fn get_keys(State(state): State<Shared>) -> QResult {
    let (keys, _) = crate::runtime::keys::resolve(state.exec.store())
        .await
        .map_err(QError::store)?;
    ok(
        StatusCode::OK,
        json!({ "current": keys.current, "next": keys.next }),
    )
}

/// `POST /v2/keys/rotate`: the next key becomes current (daemons take it up within seconds).
async fn rotate_keys(State(state): State<Shared>) -> QResult {
    let keys = crate::runtime::keys::rotate(state.exec.store())
        .await
        .map_err(QError::bad)?;
    ok(
        StatusCode::OK,
        json!({ "current": keys.current, "next": keys.next }),
    )
}

/// `POST /v2/notify/{eventId}`: the body is the event's data (JSON, or else text), delivered
/// to the runs waiting for an event of that name sent without a key. 201 with one entry per
/// run it reached.
async fn notify(State(state): State<Shared>, Path(event): Path<String>, body: Bytes) -> QResult {
    let parts = daemon(&state)?;
    let data = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    use crate::ops::notify::{NotifyError, notify};
    let n = notify(&state.exec, &*parts.registry, &event, None, data, None)
        .await
        .map_err(|e| match e {
            NotifyError::Store(e) => QError::store(e),
            e => QError::bad(e.to_string()),
        })?;
    let waiters: Vec<Value> = n
        .delivered
        .iter()
        .map(|run| {
            json!({
                "waiter": { "url": "", "headers": {}, "deadline": 0 },
                "messageId": n.id,
                "workflowRunId": run,
            })
        })
        .collect();
    ok(StatusCode::CREATED, Value::Array(waiters))
}
