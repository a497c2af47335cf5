//! The editor schema, `schemas/workflow.schema.json`, generated from these types.
//!
//! Part of the pure core: no I/O. These types describe the YAML shape only; the checker in
//! `check/` enforces the same keys (a test compares the two) plus everything a JSON schema
//! cannot say (cron, zones, template references). Run `runner schema` to print it.

#![allow(dead_code)]

use schemars::JsonSchema;
use std::collections::BTreeMap;

/// A runner workflow: one per file in `workflows/`.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "runner workflow")]
struct WorkflowFile {
    /// Unique in the directory; defaults to the file name without extension.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"))]
    name: Option<String>,
    description: Option<String>,
    /// What starts a run.
    on: Option<Triggers>,
    /// The shape of a run's input, checked when a run starts.
    inputs: Option<BTreeMap<String, InputDecl>>,
    /// Environment variable names read by the daemon at dispatch time, never stored.
    secrets: Option<Vec<String>>,
    concurrency: Option<ConcurrencyDecl>,
    /// Apply to every step unless the step overrides them.
    defaults: Option<DefaultsDecl>,
    /// Run in order; each has exactly one of `http`, `approval`, `sleep`, `sleep_until`, `email`.
    #[schemars(length(min = 1))]
    steps: Vec<StepDecl>,
    /// Run once when a run fails; each has `http` or `email`.
    on_failure: Option<Vec<HookDecl>>,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Triggers {
    schedule: Option<Vec<ScheduleDecl>>,
    /// Runs may be started over the HTTP API.
    webhook: Option<bool>,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct ScheduleDecl {
    /// 5 fields (minute hour day-of-month month day-of-week) or @hourly @daily @weekly @monthly @yearly; an optional `CRON_TZ=Zone ` prefix.
    cron: String,
    /// IANA zone name, default UTC.
    timezone: Option<String>,
    /// The run's input when this schedule fires.
    input: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
enum InputTypeDecl {
    String,
    Integer,
    Number,
    Boolean,
    Object,
    Array,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct InputDecl {
    #[serde(rename = "type")]
    ty: InputTypeDecl,
    required: Option<bool>,
    default: Option<serde_json::Value>,
    description: Option<String>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
enum OverlapDecl {
    Skip,
    BufferOne,
    BufferAll,
    CancelOther,
    AllowAll,
}

/// A duration: `30s`, `15m`, `2h`, `3d`, `1d12h`.
#[derive(JsonSchema)]
struct DurationText(#[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d|w))+$"))] String);

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct ConcurrencyDecl {
    /// What a scheduled fire does while a run of this workflow is still going (default `skip`).
    overlap: Option<OverlapDecl>,
    /// After downtime, run missed slots younger than this (default: none).
    catchup_window: Option<DurationText>,
    /// A random delay up to this added to every scheduled fire.
    jitter: Option<DurationText>,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct DefaultsDecl {
    timeout: Option<DurationText>,
    retry: Option<RetryDecl>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
enum BackoffDecl {
    Exponential,
    Fixed,
    Linear,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct RetryDecl {
    /// Retries after the first attempt (default 3).
    #[schemars(range(min = 0, max = 100))]
    limit: Option<u32>,
    backoff: Option<BackoffDecl>,
    initial: Option<DurationText>,
    max: Option<DurationText>,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct StepDecl {
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_-]*$"))]
    id: String,
    /// A condition; the step is skipped when it is false.
    #[serde(rename = "if")]
    condition: Option<String>,
    http: Option<HttpDecl>,
    approval: Option<ApprovalDecl>,
    sleep: Option<DurationText>,
    /// An RFC 3339 time or a template that renders one.
    sleep_until: Option<String>,
    email: Option<EmailDecl>,
    timeout: Option<DurationText>,
    retry: Option<RetryDecl>,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct HookDecl {
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_-]*$"))]
    id: Option<String>,
    #[serde(rename = "if")]
    condition: Option<String>,
    http: Option<HttpDecl>,
    approval: Option<ApprovalDecl>,
    sleep: Option<DurationText>,
    sleep_until: Option<String>,
    email: Option<EmailDecl>,
    timeout: Option<DurationText>,
    retry: Option<RetryDecl>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
enum MethodDecl {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
    Options,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct HttpDecl {
    url: String,
    /// Default POST.
    method: Option<MethodDecl>,
    headers: Option<BTreeMap<String, HeaderValue>>,
    /// Any JSON value; strings inside are templates.
    body: Option<serde_json::Value>,
}

/// A header value: a string template (numbers and booleans are written as text).
#[derive(JsonSchema)]
#[serde(untagged)]
enum HeaderValue {
    Text(String),
    Integer(i64),
    Boolean(bool),
}

#[derive(JsonSchema)]
#[serde(untagged)]
enum Recipients {
    One(String),
    Many(Vec<String>),
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
enum OnTimeoutDecl {
    Approve,
    Reject,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct ApprovalDecl {
    to: Recipients,
    subject: String,
    body: Option<String>,
    /// Default 7d; when it passes the decision is `rejected` unless `on_timeout: approve`.
    timeout: Option<DurationText>,
    on_timeout: Option<OnTimeoutDecl>,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct EmailDecl {
    to: Recipients,
    subject: String,
    body: Option<String>,
}

/// The schema as pretty JSON with a trailing newline, as committed in `schemas/`.
pub fn generate() -> String {
    let schema = schemars::schema_for!(WorkflowFile);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serializes to JSON");
    text.push('\n');
    text
}
