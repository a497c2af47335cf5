//! The editor schema, `schemas/workflow.schema.json`, generated from these types.
//!
//! Part of the pure core: no I/O. These types describe the YAML shape only; each comes with the
//! list of its keys (`TOP_KEYS`, `STEP_KEYS`, …), which the checker in `check/` enforces, plus
//! everything a JSON schema cannot say (cron, zones, template references). Run `runner schema`
//! to print it.

#![allow(dead_code)]

use schemars::JsonSchema;
use std::collections::BTreeMap;

/// Declares a YAML-shaped struct for the schema and, beside it, the list of its keys in order
/// (`pub const`), which the checker uses: the schema and the checker's keys cannot drift apart,
/// and the lists cost nothing at run time.
macro_rules! shape {
    (
        $(#[$attr:meta])*
        struct $name:ident, keys $keys:ident {
            $( $(#[$field_attr:meta])* $key:literal => $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$attr])*
        struct $name {
            $( $(#[$field_attr])* #[serde(rename = $key)] $field: $ty, )*
        }

        #[doc = concat!("The keys of `", stringify!($name), "`, in order.")]
        pub const $keys: &[&str] = &[$($key),*];
    };
}

shape! {
    /// A runner workflow: one per file in `workflows/`.
    #[derive(JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(title = "runner workflow")]
    struct WorkflowFile, keys TOP_KEYS {
        /// Unique in the directory; defaults to the file name without extension.
        #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"))]
        "name" => name: Option<String>,
        "description" => description: Option<String>,
        /// What starts a run.
        "on" => on: Option<Triggers>,
        /// The shape of a run's input, checked when a run starts.
        "inputs" => inputs: Option<BTreeMap<String, InputDecl>>,
        /// Environment variable names read by the daemon at dispatch time, never stored.
        "secrets" => secrets: Option<Vec<String>>,
        "concurrency" => concurrency: Option<ConcurrencyDecl>,
        /// Apply to every step unless the step overrides them.
        "defaults" => defaults: Option<DefaultsDecl>,
        /// How long a run may take from its start, sleeps and approvals included (`2h`, `3d`);
        /// then it fails, calls in flight are abandoned and `on_failure` runs.
        "timeout" => timeout: Option<DurationText>,
        /// Running runs whose key matches an event of this name are cancelled.
        "cancel_on" => cancel_on: Option<Vec<CancelOnDecl>>,
        /// How long finished runs of this workflow are kept, instead of the daemon's
        /// `--retention`: deleted once `days` old, and beyond the newest `runs`.
        "retention" => retention: Option<RetentionDecl>,
        /// Each waits for the one before it unless it says what it `needs`; each has exactly one of `http`, `approval`, `sleep`, `sleep_until`, `email`, `wait_for_event`, `call`.
        #[schemars(length(min = 1))]
        "steps" => steps: Vec<StepDecl>,
        /// Run once when a run fails; each has `http` or `email`.
        "on_failure" => on_failure: Option<Vec<HookDecl>>,
        /// The run's result, rendered when it succeeds (strings are templates over `steps`,
        /// `input` and `run`): what a `call` step of another workflow sees as `.output`.
        "output" => output: Option<serde_json::Value>,
    }
}

shape! {
    #[derive(JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Triggers, keys ON_KEYS {
        "schedule" => schedule: Option<Vec<ScheduleDecl>>,
        /// Runs may be started over the HTTP API.
        "webhook" => webhook: Option<bool>,
        /// A run starts for each event of these names (`POST /api/v1/events/{event}`); the
        /// event's data is the input, its id the idempotency key.
        "event" => event: Option<Vec<EventName>>,
    }
}

/// An event name: letters, digits, `.`, `_`, `-`, `:`, `/`.
#[derive(JsonSchema)]
struct EventName(#[schemars(regex(pattern = r"^[A-Za-z0-9._:/-]{1,200}$"))] String);

shape! {
    #[derive(JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct CancelOnDecl, keys CANCEL_ON_KEYS {
        "event" => event: EventName,
        /// A template over `input` and `run`, rendered when the run starts; an event with an
        /// equal key cancels the run.
        "key" => key: String,
    }
}

shape! {
    #[derive(JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct ScheduleDecl, keys SCHEDULE_KEYS {
        /// 5 fields (minute hour day-of-month month day-of-week) or @hourly @daily @weekly @monthly @yearly; an optional `CRON_TZ=Zone ` prefix.
        "cron" => cron: String,
        /// IANA zone name, default UTC.
        "timezone" => timezone: Option<String>,
        /// The run's input when this schedule fires.
        "input" => input: Option<BTreeMap<String, serde_json::Value>>,
    }
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

shape! {
    #[derive(JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct InputDecl, keys INPUT_KEYS {
        "type" => ty: InputTypeDecl,
        "required" => required: Option<bool>,
        "default" => default: Option<serde_json::Value>,
        "description" => description: Option<String>,
    }
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

shape! {
    #[derive(JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct RetentionDecl, keys RETENTION_KEYS {
        /// Finished runs older than this many days are deleted.
        #[schemars(range(min = 1, max = 1000000))]
        "days" => days: Option<u32>,
        /// Only the newest this many finished runs are kept.
        #[schemars(range(min = 1, max = 1000000))]
        "runs" => runs: Option<u32>,
    }
}

shape! {
    #[derive(JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct ConcurrencyDecl, keys CONCURRENCY_KEYS {
        /// What a scheduled fire does while a run of this workflow is still going (default `skip`).
        "overlap" => overlap: Option<OverlapDecl>,
        /// After downtime, run missed slots younger than this (default: none).
        "catchup_window" => catchup_window: Option<DurationText>,
        /// A random delay up to this added to every scheduled fire.
        "jitter" => jitter: Option<DurationText>,
        /// Runs of this workflow with the same key (a template over `input` and `run`,
        /// `sync-{{ input.userId }}`) are limited to `limit` at once.
        "key" => key: Option<String>,
        /// Runs with the same key going at once (default 1).
        #[schemars(range(min = 1, max = 10000))]
        "limit" => limit: Option<u32>,
        /// What a run over the limit does (default `queue`).
        "on_limit" => on_limit: Option<OnLimitDecl>,
        /// How long a queued run (behind `overlap: buffer_*` or its `key`) may wait for its
        /// turn; then it is cancelled instead of started. Default: no limit.
        "queue_timeout" => queue_timeout: Option<DurationText>,
    }
}

#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
enum OnLimitDecl {
    Queue,
    Skip,
    CancelRunning,
}

shape! {
    #[derive(JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct DefaultsDecl, keys DEFAULTS_KEYS {
        "timeout" => timeout: Option<DurationText>,
        "retry" => retry: Option<RetryDecl>,
        /// For every `http` step without its own.
        "flow_control" => flow_control: Option<FlowControlDecl>,
    }
}

shape! {
    /// Calls of every run and workflow naming the same `key` share these limits; calls over
    /// them wait their turn (they never fail for it).
    #[derive(JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct FlowControlDecl, keys FLOW_CONTROL_KEYS {
        /// A template (`crm-{{ input.tenant }}`), rendered with the call.
        "key" => key: String,
        /// Calls of the key in flight at once.
        #[schemars(range(min = 1, max = 10000))]
        "parallelism" => parallelism: Option<u32>,
        /// Calls of the key started per `period`.
        #[schemars(range(min = 1, max = 1000000))]
        "rate" => rate: Option<u32>,
        /// Default 1s.
        "period" => period: Option<DurationText>,
    }
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
enum BackoffDecl {
    Exponential,
    Fixed,
    Linear,
}

shape! {
    #[derive(JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct RetryDecl, keys RETRY_KEYS {
        /// Retries after the first attempt (default 3).
        #[schemars(range(min = 0, max = 100))]
        "limit" => limit: Option<u32>,
        "backoff" => backoff: Option<BackoffDecl>,
        "initial" => initial: Option<DurationText>,
        "max" => max: Option<DurationText>,
    }
}

shape! {
    #[derive(JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct StepDecl, keys STEP_KEYS {
        #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_-]*$"))]
        "id" => id: String,
        /// A condition; the step is skipped when it is false.
        "if" => condition: Option<String>,
        "http" => http: Option<HttpDecl>,
        "approval" => approval: Option<ApprovalDecl>,
        "sleep" => sleep: Option<DurationText>,
        /// An RFC 3339 time or a template that renders one.
        "sleep_until" => sleep_until: Option<String>,
        "email" => email: Option<EmailDecl>,
        /// Wait until an event of this name and key arrives (or arrived since the run was
        /// created).
        "wait_for_event" => wait_for_event: Option<WaitForEventDecl>,
        /// Start a run of another workflow and wait for it to end.
        "call" => call: Option<CallDecl>,
        "timeout" => timeout: Option<DurationText>,
        "retry" => retry: Option<RetryDecl>,
        /// The steps this one waits for (earlier ones only). Without it, the step before it;
        /// `[]` starts with the run.
        "needs" => needs: Option<Vec<String>>,
        /// When the step runs once its needs are done (default `all_success`; a need skipped
        /// by its `if` counts as done).
        "when" => when: Option<JoinDecl>,
        /// A failure of this step is recorded and the run goes on.
        "continue_on_error" => continue_on_error: Option<bool>,
        /// `http` and `email` steps: one call per item of this list (a template that renders
        /// one, or a list), at most 10,000.
        "foreach" => foreach: Option<ForeachItems>,
        /// The item's name in templates (default `item`); `loop.index` counts from 0.
        "as" => as_name: Option<String>,
        /// The item's identity in its dedup id (run/step/key); default its index.
        "key" => key: Option<String>,
        /// Items in flight at once (default 10).
        #[schemars(range(min = 1, max = 1000))]
        "max_parallel" => max_parallel: Option<u32>,
        /// Default true: after an item fails for good no new item starts (in-flight ones finish).
        "fail_fast" => fail_fast: Option<bool>,
        /// `http` steps: a flow-control key shared with every call naming it, and its limits.
        "flow_control" => flow_control: Option<FlowControlDecl>,
    }
}

#[derive(JsonSchema)]
#[serde(untagged)]
enum ForeachItems {
    Template(String),
    List(Vec<serde_json::Value>),
}

#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
enum JoinDecl {
    AllSuccess,
    AllDone,
    AnyFailed,
}

shape! {
    #[derive(JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct HookDecl, keys HOOK_KEYS {
        #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_-]*$"))]
        "id" => id: Option<String>,
        "if" => condition: Option<String>,
        "http" => http: Option<HttpDecl>,
        "approval" => approval: Option<ApprovalDecl>,
        "sleep" => sleep: Option<DurationText>,
        "sleep_until" => sleep_until: Option<String>,
        "email" => email: Option<EmailDecl>,
        "wait_for_event" => wait_for_event: Option<WaitForEventDecl>,
        "call" => call: Option<CallDecl>,
        "timeout" => timeout: Option<DurationText>,
        "retry" => retry: Option<RetryDecl>,
    }
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

shape! {
    #[derive(JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct HttpDecl, keys HTTP_KEYS {
        "url" => url: String,
        /// Default POST.
        "method" => method: Option<MethodDecl>,
        "headers" => headers: Option<BTreeMap<String, HeaderValue>>,
        /// Any JSON value; strings inside are templates.
        "body" => body: Option<serde_json::Value>,
        /// Your own deduplication id (a template, such as `weekly-{{ input.user }}-2026-W12`),
        /// sent as `Upstash-Message-Id` and `Idempotency-Key` on every attempt.
        "dedup_id" => dedup_id: Option<String>,
    }
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
#[serde(rename_all = "lowercase")]
enum OnRejectDecl {
    End,
    Continue,
}

shape! {
    #[derive(JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct ApprovalDecl, keys APPROVAL_KEYS {
        "to" => to: Recipients,
        "subject" => subject: String,
        "body" => body: Option<String>,
        /// Default 7d; when it passes the decision is `rejected` unless `on_timeout: approve`.
        "timeout" => timeout: Option<DurationText>,
        "on_timeout" => on_timeout: Option<OnTimeoutDecl>,
        /// `end` (default): a rejection ends the run, `rejected`. `continue`: the run goes on
        /// and later steps see `decision == 'rejected'`.
        "on_reject" => on_reject: Option<OnRejectDecl>,
    }
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
enum OnEventTimeoutDecl {
    Fail,
    Continue,
}

shape! {
    /// A run of another workflow, started with `input` and waited for; templates see
    /// `steps.<id>.run_id`, `.status` and `.output` (the called workflow's `output:`).
    #[derive(JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct CallDecl, keys CALL_KEYS {
        /// The called workflow's `name`.
        "workflow" => workflow: String,
        /// Its input (strings are templates), checked against its `inputs` when it starts.
        "input" => input: Option<serde_json::Value>,
    }
}

shape! {
    #[derive(JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct WaitForEventDecl, keys WAIT_FOR_EVENT_KEYS {
        "event" => event: EventName,
        /// The correlation key (a template); an event with an equal key is received. Without
        /// it, an event sent without a key.
        "key" => key: Option<String>,
        /// Default 7d.
        "timeout" => timeout: Option<DurationText>,
        /// `fail` (default) or `continue` (then `steps.<id>.timed_out` is true).
        "on_timeout" => on_timeout: Option<OnEventTimeoutDecl>,
    }
}

shape! {
    #[derive(JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct EmailDecl, keys EMAIL_KEYS {
        "to" => to: Recipients,
        "subject" => subject: String,
        "body" => body: Option<String>,
    }
}

/// The schema as pretty JSON with a trailing newline, as committed in `schemas/`.
pub fn generate() -> String {
    let schema = schemars::schema_for!(WorkflowFile);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serializes to JSON");
    text.push('\n');
    text
}
