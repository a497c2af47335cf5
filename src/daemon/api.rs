//! The JSON HTTP API (bearer token), `/healthz` and `/metrics`.
//!
//! Every bad request gets a 4xx with `{"error": "...", "details": [...]}` saying what is wrong;
//! nothing a client sends can crash the daemon.

use super::registry::Registry;
use super::scheduler::{self, ApiSchedule, Msg};
use crate::engine::executor::{Engine, EngineError};
use crate::engine::machine::{Event, RunStatus, StepStatus};
use crate::metrics::Metrics;
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
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc;

pub struct AppState {
    pub engine: Engine,
    pub registry: Arc<RwLock<Registry>>,
    pub scheduler: mpsc::Sender<Msg>,
    pub token: Option<String>,
    pub metrics: Arc<Metrics>,
    pub public_url: String,
}

pub type Shared = Arc<AppState>;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    details: Vec<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            details: Vec::new(),
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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if !self.details.is_empty() {
            body["details"] = json!(self.details);
        }
        (self.status, Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/workflows", get(list_workflows))
        .route("/workflows/{name}", get(get_workflow))
        .route("/workflows/{name}/runs", post(start_run))
        .route("/runs", get(list_runs))
        .route("/runs/{id}", get(get_run))
        .route("/runs/{id}/cancel", post(cancel_run))
        .route("/runs/{id}/retry", post(retry_run))
        .route("/runs/{id}/steps/{step}/approve", post(approve))
        .route("/runs/{id}/steps/{step}/reject", post(reject))
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
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn(errors_as_json));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(
            "/approvals/{token}",
            get(super::pages::show).post(super::pages::decide),
        )
        .nest("/api/v1", api)
        .with_state(state)
}

/// Every API error is `{"error": …}`, also those axum answers before a handler runs (a body
/// over the limit, a query or path that does not parse, a method the route does not have),
/// which come as plain text or with no body.
async fn errors_as_json(req: Request, next: Next) -> Response {
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

async fn auth(State(state): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token: send `Authorization: Bearer $RUNNER_API_TOKEN`",
            )
            .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn metrics(State(state): State<Shared>) -> Response {
    let (active, invalid) = {
        let reg = state.registry.read().expect("registry lock");
        let active = reg.active().len() as f64;
        let invalid = reg.files().filter(|f| !f.diagnostics.is_empty()).count() as f64;
        (active, invalid)
    };
    let unfinished = state
        .engine
        .store()
        .unfinished_runs()
        .map(|v| v.len() as f64)
        .unwrap_or(-1.0);
    let text = state.metrics.render(&[
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
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

fn parse_json(body: &Bytes, empty: Value) -> Result<Value, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(empty);
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the request body is not valid JSON: {e}"),
        )
    })
}

fn json_ok(status: StatusCode, v: Value) -> ApiResult {
    Ok((status, Json(v)).into_response())
}

fn workflow_json(f: &super::registry::FileState, with_source: bool) -> Value {
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
        v["schedules"] = json!(wf
            .schedules
            .iter()
            .map(|s| json!({
                "cron": s.cron.expression(),
                "timezone": s.cron.timezone().name(),
                "input": s.input,
                "next": s.cron.slots_after(now).take(3).map(|sl| sl.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).collect::<Vec<_>>(),
            }))
            .collect::<Vec<_>>());
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

async fn list_workflows(State(state): State<Shared>) -> ApiResult {
    let reg = state.registry.read().expect("registry lock");
    let items: Vec<Value> = reg.files().map(|f| workflow_json(f, false)).collect();
    json_ok(StatusCode::OK, json!(items))
}

async fn get_workflow(State(state): State<Shared>, Path(name): Path<String>) -> ApiResult {
    let reg = state.registry.read().expect("registry lock");
    let found = reg.files().find(|f| {
        f.active.as_ref().is_some_and(|v| v.workflow.name == name)
            || crate::workflow::file_stem(&f.path) == name
    });
    match found {
        Some(f) => json_ok(StatusCode::OK, workflow_json(f, true)),
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
    let version = state
        .registry
        .read()
        .expect("registry lock")
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
    match state
        .engine
        .start_run(version, input, "api", None, key)
        .await
    {
        Ok((run, created)) => json_ok(
            if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            json!({"id": run.id, "workflow": run.workflow, "status": run.status.as_str(), "created": created}),
        ),
        Err(EngineError::Input(errors)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the input does not match the inputs of `{name}`"),
        )
        .details(errors)),
        Err(e) => Err(ApiError::internal(e)),
    }
}

#[derive(Deserialize)]
struct RunQuery {
    workflow: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

async fn list_runs(State(state): State<Shared>, Query(q): Query<RunQuery>) -> ApiResult {
    let status = match &q.status {
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("`{s}` is not a run status; use pending, running, sleeping, waiting_approval, succeeded, failed, rejected or cancelled"))
        })?),
        None => None,
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let list = state
        .engine
        .store()
        .list_runs(&crate::store::RunFilter {
            workflow: q.workflow,
            status,
            limit,
        })
        .map_err(ApiError::internal)?;
    json_ok(StatusCode::OK, json!(list))
}

fn load_run(state: &AppState, id: &str) -> Result<crate::engine::machine::Run, ApiError> {
    state
        .engine
        .store()
        .get_run(id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no run `{id}`")))
}

async fn get_run(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let run = load_run(&state, &id)?;
    let v = crate::store::run_json(state.engine.store(), &run).map_err(ApiError::internal)?;
    json_ok(StatusCode::OK, v)
}

/// Held while an API call checks a run and changes it (cancel, retry, a decision), so that two
/// calls at once cannot both pass the check: the second sees what the first did. Changes made
/// meanwhile by the engine or an approval link are caught by checking the result.
static RUN_CHANGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn cancel_run(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let _one_at_a_time = RUN_CHANGES.lock().await;
    let run = load_run(&state, &id)?;
    if run.status.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("run `{id}` is already {}", run.status.as_str()),
        ));
    }
    let run = state
        .engine
        .apply(
            &id,
            Event::CancelRequested {
                reason: Some("cancelled over the API".into()),
            },
            None,
            None,
        )
        .await
        .map_err(ApiError::internal)?;
    if run.status != RunStatus::Cancelled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "run `{id}` ended as {} before the cancel",
                run.status.as_str()
            ),
        ));
    }
    json_ok(
        StatusCode::OK,
        json!({"id": run.id, "status": run.status.as_str()}),
    )
}

async fn retry_run(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let _one_at_a_time = RUN_CHANGES.lock().await;
    let run = load_run(&state, &id)?;
    if run.status != RunStatus::Failed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "only failed runs can be retried; run `{id}` is {}",
                run.status.as_str()
            ),
        ));
    }
    let run = state
        .engine
        .apply(&id, Event::RetryRequested, None, None)
        .await
        .map_err(ApiError::internal)?;
    json_ok(
        StatusCode::OK,
        json!({"id": run.id, "status": run.status.as_str()}),
    )
}

async fn approve(state: State<Shared>, path: Path<(String, String)>, body: Bytes) -> ApiResult {
    decide(state, path, body, Decision::Approved).await
}

async fn reject(state: State<Shared>, path: Path<(String, String)>, body: Bytes) -> ApiResult {
    decide(state, path, body, Decision::Rejected).await
}

async fn decide(
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
    let _one_at_a_time = RUN_CHANGES.lock().await;
    let run = load_run(&state, &id)?;
    let Some(s) = run.step(&step) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("run `{id}` has no step `{step}`"),
        ));
    };
    if s.kind != "approval" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("step `{step}` is not an approval step"),
        ));
    }
    if s.status != StepStatus::WaitingApproval {
        let already = s.output.as_ref().map(|o| {
            format!(
                " ({} by {} at {})",
                o["decision"].as_str().unwrap_or("?"),
                o["approver"].as_str().unwrap_or("?"),
                o["decided_at"].as_str().unwrap_or("?")
            )
        });
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "step `{step}` is not waiting for a decision; it is {}{}",
                s.status.as_str(),
                already.unwrap_or_default()
            ),
        ));
    }
    let approver = format!("{approver} (api)");
    let run = state
        .engine
        .apply(
            &id,
            Event::ApprovalDecided {
                step: step.clone(),
                decision,
                approver: approver.clone(),
                comment,
            },
            None,
            None,
        )
        .await
        .map_err(ApiError::internal)?;
    // Another decision may have been recorded between the check above and this one (the
    // machine absorbs the later one): then this one did not count.
    let recorded = run.step(&step).and_then(|s| s.output.as_ref());
    if !recorded.is_some_and(|o| o["decision"] == decision.as_str() && o["approver"] == approver) {
        let o = recorded.cloned().unwrap_or_default();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "step `{step}` was decided in the meantime: {} by {} at {}",
                o["decision"].as_str().unwrap_or("?"),
                o["approver"].as_str().unwrap_or("?"),
                o["decided_at"].as_str().unwrap_or("?")
            ),
        ));
    }
    json_ok(
        StatusCode::OK,
        json!({"id": run.id, "status": run.status.as_str(), "step": step, "decision": decision.as_str()}),
    )
}

fn valid_schedule_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b))
}

/// A schedule as the API shows it. `next` is empty while it cannot fire: paused, or its workflow
/// is not active (deleted or never valid; its slots are skipped until it is).
fn schedule_json(state: &AppState, s: &ApiSchedule) -> Value {
    let now = chrono::Utc::now();
    let parsed = crate::cron::CronSchedule::parse(&s.cron, s.timezone.as_deref()).ok();
    let workflow_active = state
        .registry
        .read()
        .expect("registry lock")
        .get(&s.workflow)
        .is_some();
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
        "input": s.input, "paused": s.paused, "created_at": s.created_at, "updated_at": s.updated_at, "next": next,
    })
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
    if !valid_schedule_id(&id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{id}` is not a valid schedule id: use 1 to 128 letters, digits and `-_.:@`"),
        ));
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
    let version = state
        .registry
        .read()
        .expect("registry lock")
        .get(&body.workflow)
        .cloned();
    let Some(version) = version else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("no active workflow named `{}`", body.workflow),
        ));
    };
    if let Err(e) = crate::cron::CronSchedule::parse(&body.cron, body.timezone.as_deref()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid schedule: {e}"),
        ));
    }
    let input = body.input.unwrap_or_else(|| json!({}));
    if let Err(errors) = crate::workflow::resolve_input(&version.workflow, &input) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the input does not match the inputs of `{}`", body.workflow),
        )
        .details(errors));
    }
    let previous =
        scheduler::get_api_schedule(state.engine.store(), &id).map_err(ApiError::internal)?;
    let schedule = ApiSchedule {
        id: id.clone(),
        workflow: body.workflow,
        cron: body.cron,
        timezone: body.timezone,
        input,
        paused: body
            .paused
            .unwrap_or_else(|| previous.as_ref().is_some_and(|p| p.paused)),
        created_at: String::new(),
        updated_at: String::new(),
    };
    let unchanged = previous.as_ref().is_some_and(|p| {
        p.workflow == schedule.workflow
            && p.cron == schedule.cron
            && p.timezone == schedule.timezone
            && p.input == schedule.input
            && p.paused == schedule.paused
    });
    if unchanged {
        let p = previous.expect("checked above");
        return json_ok(StatusCode::OK, schedule_json(&state, &p));
    }
    let (saved, created) = scheduler::save_api_schedule(state.engine.store(), schedule)
        .await
        .map_err(ApiError::internal)?;
    let _ = state.scheduler.send(Msg::Upsert(saved.clone())).await;
    json_ok(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        schedule_json(&state, &saved),
    )
}

async fn get_schedule(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult {
    match scheduler::get_api_schedule(state.engine.store(), &id).map_err(ApiError::internal)? {
        Some(s) => json_ok(StatusCode::OK, schedule_json(&state, &s)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no schedule `{id}`"),
        )),
    }
}

#[derive(Deserialize)]
struct ScheduleQuery {
    workflow: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

async fn list_schedules(State(state): State<Shared>, Query(q): Query<ScheduleQuery>) -> ApiResult {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let all = scheduler::load_api_schedules(state.engine.store()).map_err(ApiError::internal)?;
    let items: Vec<Value> = all
        .iter()
        .filter(|s| q.workflow.as_ref().is_none_or(|w| &s.workflow == w))
        .filter(|s| q.after.as_ref().is_none_or(|a| &s.id > a))
        .take(limit)
        .map(|s| schedule_json(&state, s))
        .collect();
    json_ok(StatusCode::OK, json!(items))
}

async fn delete_schedule(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult {
    if scheduler::delete_api_schedule(state.engine.store(), &id)
        .await
        .map_err(ApiError::internal)?
    {
        let _ = state.scheduler.send(Msg::Delete(id)).await;
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no schedule `{id}`"),
        ))
    }
}

async fn set_paused(state: &AppState, id: &str, paused: bool) -> ApiResult {
    let Some(mut s) =
        scheduler::get_api_schedule(state.engine.store(), id).map_err(ApiError::internal)?
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no schedule `{id}`"),
        ));
    };
    if s.paused != paused {
        s.paused = paused;
        let (saved, _) = scheduler::save_api_schedule(state.engine.store(), s)
            .await
            .map_err(ApiError::internal)?;
        let _ = state.scheduler.send(Msg::Upsert(saved.clone())).await;
        s = saved;
    }
    json_ok(StatusCode::OK, schedule_json(state, &s))
}

async fn pause_schedule(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult {
    set_paused(&state, &id, true).await
}

async fn resume_schedule(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult {
    set_paused(&state, &id, false).await
}
