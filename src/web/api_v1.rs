//! The JSON HTTP API under `/api/v1` (bearer token), `/healthz` and `/metrics`.
//!
//! Every bad request gets a 4xx with `{"error": "...", "details": [...]}` saying what is wrong;
//! nothing a client sends can crash the daemon. Handlers parse and answer; the work is `ops`.

use super::auth;
use super::state::{AppState, DaemonParts, Shared};
use crate::engine::{RunStatus, Trigger};
use crate::ops::cancel::CancelError;
use crate::ops::decide_step::DecideError;
use crate::ops::retry::RetryError;
use crate::ops::schedules::{PutSchedule, Saved, ScheduleError};
use crate::ops::start::StartError;
use crate::store::{ApiSchedule, StoreError};
use crate::views::RunView;
use crate::workflow::Decision;
use crate::workflow::json_kind;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    details: Vec<String>,
    retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
        }
    }
    fn details(mut self, details: Vec<String>) -> ApiError {
        self.details = details;
        self
    }
    fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "API request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {e}"),
        )
    }

    /// A store failure: 503 with `Retry-After` when the database cannot take it now (full,
    /// read-only, unreachable), else 500.
    fn store(e: StoreError) -> ApiError {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "API request refused: the database is not available");
            let mut err = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the database cannot take this now, try again: {e}"),
            );
            err.retry_after = Some(5);
            return err;
        }
        ApiError::internal(e)
    }

    /// What the page server of a foreground run does not do.
    fn not_here(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "{what} is not available here: this is the page server of a foreground `runner run` or `runner resume`; use `runner serve`"
            ),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if !self.details.is_empty() {
            body["details"] = json!(self.details);
        }
        let mut r = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(s));
        }
        r
    }
}

type ApiResult = Result<Response, ApiError>;

/// The routes under `/api/v1`.
pub fn routes(state: Shared) -> Router<Shared> {
    Router::new()
        .route("/workflows", get(list_workflows))
        .route("/workflows/{name}", get(get_workflow))
        .route("/workflows/{name}/runs", post(start_run))
        .route(
            "/workflows/{name}/schedules/{index}/pause",
            post(pause_yaml_schedule),
        )
        .route(
            "/workflows/{name}/schedules/{index}/resume",
            post(resume_yaml_schedule),
        )
        .route("/runs", get(list_runs))
        .route("/runs/{id}", get(get_run))
        .route("/runs/{id}/cancel", post(cancel_run))
        .route("/runs/{id}/retry", post(retry_run))
        .route("/runs/{id}/steps/{step}/approve", post(approve))
        .route("/runs/{id}/steps/{step}/reject", post(reject))
        .route("/events", get(list_events))
        .route("/events/{event}", post(send_event))
        .route("/flow-control", get(list_flow_keys))
        .route("/nodes", get(list_nodes))
        .route("/schedules", get(list_schedules))
        .route(
            "/schedules/{id}",
            get(get_schedule).put(put_schedule).delete(delete_schedule),
        )
        .route("/schedules/{id}/pause", post(pause_schedule))
        .route("/schedules/{id}/resume", post(resume_schedule))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such API endpoint; see README.md for the API",
            )
        })
        .layer(middleware::from_fn_with_state(state, auth))
        .layer(middleware::from_fn(errors_as_json))
}

/// Every API error is `{"error": …}`, also those axum answers before a handler runs (a body
/// over the limit, a query or path that does not parse, a method the route does not have),
/// which come as plain text or with no body. (What hyper answers before axum runs, a request
/// it cannot parse, is rewritten in `server::JsonCannedErrors`.)
pub(super) async fn errors_as_json(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let allow = response
        .headers()
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match (status, allow) {
        (StatusCode::METHOD_NOT_ALLOWED, allow) => format!(
            "{method} is not allowed on {path}{}; see README.md for the API",
            allow.map_or(String::new(), |a| format!(" (it takes {a})"))
        ),
        (StatusCode::PAYLOAD_TOO_LARGE, _) => {
            format!("the request body is larger than the limit ({text})")
        }
        _ if text.is_empty() => status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string(),
        _ => text,
    };
    ApiError::new(status, message).into_response()
}

/// Whether a request carries the API token (always true when none is set).
fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    state.token.as_ref().is_none_or(|token| {
        auth::bearer(headers.get(header::AUTHORIZATION)).is_some_and(|given| token.matches(given))
    })
}

fn unauthorized(message: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

async fn auth(State(state): State<Shared>, req: Request, next: Next) -> Response {
    if !authorized(&state, req.headers()) {
        return unauthorized(
            "missing or wrong bearer token: send `Authorization: Bearer $RUNNER_API_TOKEN`",
        );
    }
    next.run(req).await
}

/// 200 while the database answers; 503 (with `Retry-After`) while it does not.
pub async fn healthz(State(state): State<Shared>) -> Response {
    let ping =
        tokio::time::timeout(std::time::Duration::from_secs(2), state.exec.store().ping()).await;
    match ping {
        Ok(Ok(())) => Json(json!({"status": "ok"})).into_response(),
        Ok(Err(e)) => {
            let mut r = (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "error": e.to_string()})),
            )
                .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(5));
            r
        }
        Err(_) => {
            let mut r = (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "error": "the database did not answer within 2 s"})),
            )
                .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(5));
            r
        }
    }
}

/// The nodes sharing the database (PostgreSQL); on SQLite, this process alone.
async fn list_nodes(State(state): State<Shared>) -> ApiResult {
    let store = state.exec.store();
    if !store.is_shared() {
        return json_ok(
            StatusCode::OK,
            json!([{
                "name": crate::runtime::node::default_name(),
                "version": env!("CARGO_PKG_VERSION"),
                "leader": true,
                "this": true,
                "database": store.describe(),
            }]),
        );
    }
    let nodes = store.nodes().await.map_err(ApiError::store)?;
    json_ok(StatusCode::OK, json!(nodes))
}

/// Prometheus metrics; with an API token set they need it too, unless `--metrics-public`.
pub async fn metrics(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if !state.metrics_public && !authorized(&state, &headers) {
        return unauthorized(
            "missing or wrong bearer token: send `Authorization: Bearer $RUNNER_API_TOKEN` (Prometheus: `authorization: { credentials: … }`), or start the daemon with --metrics-public",
        );
    }
    let (active, invalid) = match &state.daemon {
        Some(d) => {
            let reg = d.registry();
            let active = reg.active().len() as f64;
            let invalid = reg.files().filter(|f| !f.diagnostics.is_empty()).count() as f64;
            (active, invalid)
        }
        None => (0.0, 0.0),
    };
    let unfinished = state
        .exec
        .store()
        .unfinished_runs()
        .await
        .map(|v| v.len() as f64)
        .unwrap_or(-1.0);
    let flow = state
        .exec
        .store()
        .flow_keys(chrono::Utc::now())
        .await
        .unwrap_or_default();
    let mut text = state.metrics.render(&[
        (
            "runner_workflows_active",
            "Workflows loaded and active.",
            active,
        ),
        (
            "runner_workflows_invalid",
            "Workflow files refused by the checker.",
            invalid,
        ),
        (
            "runner_runs_unfinished",
            "Runs that have not finished.",
            unfinished,
        ),
    ]);
    text.push_str(&crate::metrics::flow_text(&flow));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// A JSON body (`empty` when there is none), read strictly: a key twice in an object is refused.
fn parse_json(body: &Bytes, empty: Value) -> Result<Value, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(empty);
    }
    super::json::parse_strict(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the request body is not valid JSON: {e}"),
        )
    })
}

fn json_ok(status: StatusCode, v: Value) -> ApiResult {
    Ok((status, Json(v)).into_response())
}

fn workflow_json(
    f: &crate::registry::FileState,
    with_source: bool,
    paused: &std::collections::HashSet<(String, String)>,
) -> Value {
    let now = chrono::Utc::now();
    let mut v = json!({
        "path": f.path,
        "state": match (&f.active, f.diagnostics.is_empty()) {
            (Some(_), true) => "active",
            (Some(_), false) => "active_with_refused_edit",
            (None, _) => "invalid",
        },
        "diagnostics": f.diagnostics.iter().map(|d| json!({
            "line": d.pos.line, "column": d.pos.col, "code": d.code.as_str(), "message": d.message, "hint": d.hint,
        })).collect::<Vec<_>>(),
    });
    if !f.diagnostics.is_empty() {
        v["diagnostics_text"] = json!(f.rendered);
    }
    if let Some(ver) = &f.active {
        let wf = &ver.workflow;
        v["name"] = json!(wf.name);
        v["description"] = json!(wf.description);
        v["version"] = json!(ver.hash);
        v["webhook"] = json!(wf.webhook);
        v["schedules"] = json!(
            wf.schedules
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let is_paused = paused.contains(&(wf.name.clone(), s.signature()));
                    yaml_schedule_json(
                        &format!("{}/{i}", wf.name),
                        &s.cron,
                        &s.input,
                        is_paused,
                        now,
                    )
                })
                .collect::<Vec<_>>()
        );
        v["steps"] = json!(
            wf.steps
                .iter()
                .map(|s| json!({"id": s.id, "kind": s.kind.name()}))
                .collect::<Vec<_>>()
        );
        if with_source {
            v["source"] = json!(ver.source);
        }
    }
    v
}

fn daemon<'a>(state: &'a AppState, what: &str) -> Result<&'a DaemonParts, ApiError> {
    state
        .daemon
        .as_ref()
        .ok_or_else(|| ApiError::not_here(what))
}

/// A schedule of a workflow file: `next` is empty while it is paused.
fn yaml_schedule_json(
    id: &str,
    cron: &crate::cron::CronSchedule,
    input: &Value,
    paused: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Value {
    let next: Vec<String> = if paused {
        vec![]
    } else {
        cron.slots_after(now)
            .take(3)
            .map(|sl| sl.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .collect()
    };
    json!({
        "id": id,
        "cron": cron.expression(),
        "timezone": cron.timezone().name(),
        "input": input,
        "paused": paused,
        "next": next,
    })
}

/// The YAML schedules paused (read before the registry's lock is taken).
async fn paused_yaml(
    state: &AppState,
) -> Result<std::collections::HashSet<(String, String)>, ApiError> {
    state
        .exec
        .store()
        .paused_yaml()
        .await
        .map_err(ApiError::store)
}

async fn list_workflows(State(state): State<Shared>) -> ApiResult {
    let paused = paused_yaml(&state).await?;
    let reg = daemon(&state, "the list of workflows")?.registry();
    let items: Vec<Value> = reg
        .files()
        .map(|f| workflow_json(f, false, &paused))
        .collect();
    json_ok(StatusCode::OK, json!(items))
}

async fn set_yaml_paused(state: &AppState, name: &str, index: &str, paused: bool) -> ApiResult {
    let d = daemon(state, "schedules")?;
    let index: usize = index.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no schedule `{name}/{index}`: the index is a number from 0"),
        )
    })?;
    let s = d
        .schedules(&state.exec)
        .set_yaml_paused(name, index, paused)
        .await
        .map_err(|e| match e {
            // The workflow is part of the path here: not there is a 404, not a bad body.
            ScheduleError::NoWorkflow(w) => ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no active workflow named `{w}`"),
            ),
            e => schedule_error(e),
        })?;
    let mut v = yaml_schedule_json(&s.id, &s.cron, &s.input, s.paused, chrono::Utc::now());
    v["workflow"] = json!(s.workflow);
    json_ok(StatusCode::OK, v)
}

async fn pause_yaml_schedule(
    State(state): State<Shared>,
    Path((name, index)): Path<(String, String)>,
) -> ApiResult {
    set_yaml_paused(&state, &name, &index, true).await
}

async fn resume_yaml_schedule(
    State(state): State<Shared>,
    Path((name, index)): Path<(String, String)>,
) -> ApiResult {
    set_yaml_paused(&state, &name, &index, false).await
}

async fn get_workflow(State(state): State<Shared>, Path(name): Path<String>) -> ApiResult {
    let paused = paused_yaml(&state).await?;
    let reg = daemon(&state, "a workflow")?.registry();
    let found = reg.files().find(|f| {
        f.active.as_ref().is_some_and(|v| v.workflow.name == name)
            || crate::workflow::file_stem(&f.path) == name
    });
    match found {
        Some(f) => json_ok(StatusCode::OK, workflow_json(f, true, &paused)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no workflow named `{name}`"),
        )),
    }
}

async fn start_run(
    State(state): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let version = daemon(&state, "starting a run")?
        .registry()
        .get(&name)
        .cloned();
    let Some(version) = version else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no active workflow named `{name}`"),
        ));
    };
    if !version.workflow.webhook {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "workflow `{name}` does not accept runs over the API; add `on: {{ webhook: true }}` to it"
            ),
        ));
    }
    let input = parse_json(&body, json!({}))?;
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.len() <= 256)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "the Idempotency-Key header must be 1 to 256 visible ASCII characters",
                    )
                })?
                .to_string(),
        ),
        None => None,
    };
    match crate::ops::start::start(&state.exec, version, input, Trigger::Api, key).await {
        Ok(crate::ops::start::Started { run, created }) => {
            let mut answer = json!({"id": run.id, "workflow": run.workflow, "status": run.status.as_str(), "created": created});
            // A run over its key's limit says so at once (queued, or cancelled: `on_limit`).
            if let Some(key) = &run.concurrency_key {
                answer["concurrency_key"] = json!(key);
            }
            if let Some(reason) = &run.cancel_reason {
                answer["cancel_reason"] = json!(reason);
            }
            json_ok(
                if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                answer,
            )
        }
        Err(StartError::Input(errors)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the input does not match the inputs of `{name}`"),
        )
        .details(errors)),
        Err(e @ StartError::KeyReused { .. }) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.to_string(),
        )),
        Err(StartError::Store(e)) => Err(ApiError::store(e)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    key: Option<String>,
    #[serde(default)]
    data: Value,
    id: Option<String>,
}

/// `POST /api/v1/events/{event}` with `{"key", "data", "id"}`: the runs it reached.
async fn send_event(
    State(state): State<Shared>,
    Path(event): Path<String>,
    body: Bytes,
) -> ApiResult {
    let parts = daemon(&state, "sending an event")?;
    let body: EventBody = if body.iter().all(u8::is_ascii_whitespace) {
        EventBody {
            key: None,
            data: Value::Null,
            id: None,
        }
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the body must be a JSON object with `key`, `data` and `id` (each optional): {e}"),
            )
        })?
    };
    use crate::ops::notify::{NotifyError, notify};
    match notify(
        &state.exec,
        &*parts.registry,
        &event,
        body.key,
        body.data,
        body.id,
    )
    .await
    {
        Ok(n) => json_ok(StatusCode::OK, json!(n)),
        Err(NotifyError::Store(e)) => Err(ApiError::store(e)),
        Err(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, e.to_string())),
    }
}

/// `GET /api/v1/flow-control`: every key with its limits, calls in flight and waiting.
async fn list_flow_keys(State(state): State<Shared>) -> ApiResult {
    let keys = state
        .exec
        .store()
        .flow_keys(chrono::Utc::now())
        .await
        .map_err(ApiError::store)?;
    json_ok(StatusCode::OK, json!(keys))
}

#[derive(Deserialize)]
struct EventQuery {
    name: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/events?name=&limit=`: events kept for lookback, newest first.
async fn list_events(State(state): State<Shared>, Query(q): Query<EventQuery>) -> ApiResult {
    let limit = limit(q.limit, 100)?;
    let events = state
        .exec
        .store()
        .list_events(q.name.as_deref(), i64::try_from(limit).unwrap_or(100))
        .await
        .map_err(ApiError::store)?;
    json_ok(StatusCode::OK, json!(events))
}

/// The most items one list answers.
const MAX_LIMIT: usize = 1000;

/// `?limit=`: `default` when absent, else 1 to [`MAX_LIMIT`]; 0 or more than that is refused,
/// not silently changed.
fn limit(given: Option<usize>, default: usize) -> Result<usize, ApiError> {
    match given {
        None => Ok(default),
        Some(n @ 1..=MAX_LIMIT) => Ok(n),
        Some(n) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`limit` must be 1 to {MAX_LIMIT}, not {n}"),
        )),
    }
}

#[derive(Deserialize)]
struct RunQuery {
    workflow: Option<String>,
    status: Option<String>,
    /// A schedule's public id: `sum-u1`, or `{workflow}/{index}` for one in a workflow file.
    schedule: Option<String>,
    limit: Option<usize>,
}

async fn list_runs(State(state): State<Shared>, Query(q): Query<RunQuery>) -> ApiResult {
    let status = match &q.status {
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("`{s}` is not a run status; use pending, running, sleeping, waiting_approval, waiting_event, succeeded, failed, rejected or cancelled"))
        })?),
        None => None,
    };
    let limit = limit(q.limit, 50)?;
    let list = state
        .exec
        .store()
        .list_runs(&crate::store::RunFilter {
            workflow: q.workflow,
            status,
            schedule: q.schedule,
            limit,
            ..Default::default()
        })
        .await
        .map_err(ApiError::store)?;
    json_ok(StatusCode::OK, json!(list))
}

async fn get_run(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let store = state.exec.store();
    let run = store
        .get_run(&id)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no run `{id}`")))?;
    let view = RunView::load(store, &run).await.map_err(ApiError::store)?;
    json_ok(StatusCode::OK, json!(view))
}

async fn cancel_run(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult {
    match crate::ops::cancel::cancel(&state.exec, &id, "cancelled over the API").await {
        Ok(run) => json_ok(
            StatusCode::OK,
            json!({"id": run.id, "status": run.status.as_str()}),
        ),
        Err(e @ CancelError::NoSuchRun(_)) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e @ CancelError::Finished { .. }) => {
            Err(ApiError::new(StatusCode::CONFLICT, e.to_string()))
        }
        Err(CancelError::Store(e)) => Err(ApiError::store(e)),
    }
}

async fn retry_run(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult {
    match crate::ops::retry::retry(&state.exec, &id).await {
        Ok(run) => json_ok(
            StatusCode::OK,
            json!({"id": run.id, "status": run.status.as_str()}),
        ),
        Err(e @ RetryError::NoSuchRun(_)) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e @ RetryError::NotFailed { .. }) => {
            Err(ApiError::new(StatusCode::CONFLICT, e.to_string()))
        }
        Err(RetryError::Store(e)) => Err(ApiError::store(e)),
    }
}

async fn approve(state: State<Shared>, path: Path<(String, String)>, body: Bytes) -> ApiResult {
    post_decision(state, path, body, Decision::Approved).await
}

async fn reject(state: State<Shared>, path: Path<(String, String)>, body: Bytes) -> ApiResult {
    post_decision(state, path, body, Decision::Rejected).await
}

async fn post_decision(
    State(state): State<Shared>,
    Path((id, step)): Path<(String, String)>,
    body: Bytes,
    decision: Decision,
) -> ApiResult {
    let body = parse_json(&body, json!({}))?;
    let Value::Object(fields) = &body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the body must be an object such as {{\"comment\": \"…\", \"approver\": \"…\"}}, not {}",
                json_kind(&body)
            ),
        ));
    };
    // A decision cannot be taken back: a field of the wrong type is refused, not ignored.
    let text = |name: &str| match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{name}` must be a string, not {}", json_kind(other)),
        )),
    };
    let comment = text("comment")?.filter(|c| !c.trim().is_empty());
    let approver = text("approver")?.unwrap_or_else(|| "api".into());
    if let Some(unknown) = fields
        .keys()
        .find(|k| !["comment", "approver"].contains(&k.as_str()))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("unknown field `{unknown}`; a decision takes `comment` and `approver`"),
        ));
    }
    let approver = format!("{approver} (api)");
    match crate::ops::decide_step::decide_step(
        &state.exec,
        &id,
        &step,
        decision,
        &approver,
        comment,
    )
    .await
    {
        Ok(run) => json_ok(
            StatusCode::OK,
            json!({"id": run.id, "status": run.status.as_str(), "step": step, "decision": decision.as_str()}),
        ),
        Err(e @ (DecideError::NoSuchRun(_) | DecideError::NoSuchStep { .. })) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e @ (DecideError::NotApproval(_) | DecideError::NotWaiting { .. })) => {
            Err(ApiError::new(StatusCode::CONFLICT, e.to_string()))
        }
        Err(DecideError::Store(e)) => Err(ApiError::store(e)),
    }
}

/// A schedule as the API shows it. `next` is empty while it cannot fire: paused, or its workflow
/// is not active (deleted or never valid; its slots are skipped until it is).
fn schedule_json(d: &DaemonParts, s: &ApiSchedule) -> Value {
    let now = chrono::Utc::now();
    let parsed = crate::cron::CronSchedule::parse(&s.cron, s.timezone.as_deref()).ok();
    let workflow_active = d.registry().get(&s.workflow).is_some();
    let next: Vec<String> = match &parsed {
        Some(c) if !s.paused && workflow_active => c
            .slots_after(now)
            .take(3)
            .map(|sl| sl.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .collect(),
        _ => Vec::new(),
    };
    // The zone it fires in: `timezone`, or a `CRON_TZ=` prefix of the expression.
    let timezone = parsed.map_or_else(
        || s.timezone.clone().unwrap_or_else(|| "UTC".into()),
        |c| c.timezone().name().to_string(),
    );
    json!({
        "id": s.id, "workflow": s.workflow, "workflow_active": workflow_active, "cron": s.cron, "timezone": timezone,
        "input": s.input, "paused": s.paused, "created_at": s.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "updated_at": s.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "next": next,
    })
}

fn schedule_error(e: ScheduleError) -> ApiError {
    match e {
        ScheduleError::InvalidId(_) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
        ScheduleError::NoWorkflow(_) | ScheduleError::InvalidCron(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        ScheduleError::Input { ref errors, .. } => {
            let errors = errors.clone();
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).details(errors)
        }
        ScheduleError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
        ScheduleError::Store(e) => ApiError::store(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    workflow: String,
    cron: String,
    timezone: Option<String>,
    input: Option<Value>,
    paused: Option<bool>,
}

async fn put_schedule(
    State(state): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let d = daemon(&state, "programmatic schedules")?;
    if !crate::ops::schedules::valid_id(&id) {
        return Err(schedule_error(ScheduleError::InvalidId(id)));
    }
    let value = parse_json(&body, Value::Null)?;
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the schedule must be a JSON object {{\"workflow\", \"cron\", \"timezone\"?, \"input\"?, \"paused\"?}}, not {}",
                json_kind(&value)
            ),
        ));
    }
    let body: ScheduleBody = serde_json::from_value(value)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("the schedule must be {{\"workflow\", \"cron\", \"timezone\"?, \"input\"?, \"paused\"?}}: {e}")))?;
    let put = PutSchedule {
        id,
        workflow: body.workflow,
        cron: body.cron,
        timezone: body.timezone,
        input: body.input,
        paused: body.paused,
    };
    let (saved, how) = d
        .schedules(&state.exec)
        .put(put)
        .await
        .map_err(schedule_error)?;
    json_ok(
        if how == Saved::Created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        schedule_json(d, &saved),
    )
}

async fn get_schedule(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let d = daemon(&state, "programmatic schedules")?;
    let s = crate::ops::schedules::get(state.exec.store(), &id)
        .await
        .map_err(schedule_error)?;
    json_ok(StatusCode::OK, schedule_json(d, &s))
}

#[derive(Deserialize)]
struct ScheduleQuery {
    workflow: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

async fn list_schedules(State(state): State<Shared>, Query(q): Query<ScheduleQuery>) -> ApiResult {
    let d = daemon(&state, "programmatic schedules")?;
    let limit = limit(q.limit, 100)?;
    let list = crate::ops::schedules::list(
        state.exec.store(),
        q.workflow.as_deref(),
        q.after.as_deref(),
        limit,
    )
    .await
    .map_err(schedule_error)?;
    let items: Vec<Value> = list.iter().map(|s| schedule_json(d, s)).collect();
    json_ok(StatusCode::OK, json!(items))
}

async fn delete_schedule(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let d = daemon(&state, "programmatic schedules")?;
    d.schedules(&state.exec)
        .delete(&id)
        .await
        .map_err(schedule_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn set_paused(state: &AppState, id: &str, paused: bool) -> ApiResult {
    let d = daemon(state, "programmatic schedules")?;
    let s = d
        .schedules(&state.exec)
        .set_paused(id, paused)
        .await
        .map_err(schedule_error)?;
    json_ok(StatusCode::OK, schedule_json(d, &s))
}

async fn pause_schedule(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult {
    set_paused(&state, &id, true).await
}

async fn resume_schedule(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult {
    set_paused(&state, &id, false).await
}
