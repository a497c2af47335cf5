//! The validated workflow: what the rest of runner uses once `check` has accepted a file.
//!
//! Part of the pure core: no I/O.

use crate::cron::CronSchedule;
use serde::Serialize;
use std::time::Duration;

/// A checked workflow definition.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub name: String,
    pub description: Option<String>,
    pub schedules: Vec<Schedule>,
    pub webhook: bool,
    pub inputs: Vec<InputSpec>,
    pub secrets: Vec<String>,
    pub concurrency: Concurrency,
    pub steps: Vec<Step>,
    pub on_failure: Vec<Step>,
    /// How long a run may take from its start (sleeps and approvals included); then it fails.
    pub timeout: Option<Duration>,
    /// `on: { event: [...] }`: a run starts for each event of these names, its data the input.
    pub events: Vec<String>,
    /// `cancel_on`: an event of this name whose key equals the rendered `key` cancels the run.
    pub cancel_on: Vec<CancelOn>,
    /// `output`: a JSON value whose strings are templates over the steps, rendered when the run
    /// succeeds; the result a `call` step of another workflow sees as `.output`.
    pub output: Option<serde_json::Value>,
    /// `retention`: how long its finished runs are kept, instead of the daemon's `--retention`.
    pub retention: Retention,
}

/// A workflow's `retention`: finished runs are deleted once they are `days` old, and beyond the
/// newest `runs` finished ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub days: Option<u32>,
    pub runs: Option<u32>,
}

/// The most days or runs a `retention` may say.
pub const MAX_RETENTION: u32 = 1_000_000;

/// One entry of a workflow's `cancel_on`.
#[derive(Debug, Clone)]
pub struct CancelOn {
    pub event: String,
    /// A template over `input` and `run`, rendered when the run starts.
    pub key: Template,
}

impl Workflow {
    /// Whether a failure of step `id` is taken up downstream: some step that needs it (directly,
    /// or through steps its failure would skip) runs on a failure (`all_done`, `any_failed`).
    pub fn failure_accepted(&self, id: &str) -> bool {
        let mut seen = std::collections::HashSet::new();
        let mut todo = vec![id];
        while let Some(cur) = todo.pop() {
            if !seen.insert(cur) {
                continue;
            }
            for s in self
                .steps
                .iter()
                .filter(|s| s.needs.iter().any(|n| n == cur))
            {
                match s.when {
                    Join::AllSuccess => todo.push(&s.id),
                    Join::AllDone | Join::AnyFailed => return true,
                }
            }
        }
        false
    }

    /// A step or `on_failure` hook by id (ids are unique across both).
    pub fn find_step(&self, id: &str) -> Option<&Step> {
        self.steps
            .iter()
            .chain(self.on_failure.iter())
            .find(|s| s.id == id)
    }
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub cron: CronSchedule,
    /// The run's input when this schedule fires (an object).
    pub input: serde_json::Value,
}

impl Schedule {
    /// What the schedule is (cron, zone, input), whatever its place in the file: a pause is
    /// kept for it, so it follows the schedule when others are added or moved before it.
    pub fn signature(&self) -> String {
        format!(
            "{}|{}|{}",
            self.cron.expression(),
            self.cron.timezone().name(),
            self.input
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    String,
    Integer,
    Number,
    Boolean,
    Object,
    Array,
}

impl InputType {
    pub const NAMES: [&'static str; 6] =
        ["string", "integer", "number", "boolean", "object", "array"];

    pub fn parse(s: &str) -> Option<InputType> {
        Some(match s {
            "string" => InputType::String,
            "integer" => InputType::Integer,
            "number" => InputType::Number,
            "boolean" => InputType::Boolean,
            "object" => InputType::Object,
            "array" => InputType::Array,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            InputType::String => "string",
            InputType::Integer => "integer",
            InputType::Number => "number",
            InputType::Boolean => "boolean",
            InputType::Object => "object",
            InputType::Array => "array",
        }
    }

    pub fn accepts(self, v: &serde_json::Value) -> bool {
        match self {
            InputType::String => v.is_string(),
            InputType::Integer => v.is_i64() || v.is_u64(),
            InputType::Number => v.is_number(),
            InputType::Boolean => v.is_boolean(),
            InputType::Object => v.is_object(),
            InputType::Array => v.is_array(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: String,
    pub ty: InputType,
    pub required: bool,
    pub default: Option<serde_json::Value>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    #[default]
    Skip,
    BufferOne,
    BufferAll,
    CancelOther,
    AllowAll,
}

impl Overlap {
    pub const NAMES: [&'static str; 5] = [
        "skip",
        "buffer_one",
        "buffer_all",
        "cancel_other",
        "allow_all",
    ];

    pub fn parse(s: &str) -> Option<Overlap> {
        Some(match s {
            "skip" => Overlap::Skip,
            "buffer_one" => Overlap::BufferOne,
            "buffer_all" => Overlap::BufferAll,
            "cancel_other" => Overlap::CancelOther,
            "allow_all" => Overlap::AllowAll,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Concurrency {
    pub overlap: Overlap,
    pub catchup_window: Option<Duration>,
    pub jitter: Option<Duration>,
    /// `key` / `limit` / `on_limit`: runs of this workflow with the same rendered key.
    pub per_key: Option<RunKey>,
    /// How long a run may wait for its turn (queued behind its schedule's `overlap` or its
    /// `key`) before it is cancelled instead of started.
    pub queue_timeout: Option<Duration>,
}

/// Runs per key: at most `limit` runs of the workflow with the same key are going at once.
#[derive(Debug, Clone)]
pub struct RunKey {
    /// A template over `input` and `run`, rendered when the run is created.
    pub key: Template,
    pub limit: u32,
    pub on_limit: OnLimit,
}

/// What a new run does when `limit` runs with its key are going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    /// It waits, in order of creation, and starts when one of them ends.
    #[default]
    Queue,
    /// It is recorded as cancelled, with the run it gave way to.
    Skip,
    /// It starts, and the runs with its key that are going are cancelled.
    CancelRunning,
}

impl OnLimit {
    pub const NAMES: [&'static str; 3] = ["queue", "skip", "cancel_running"];

    pub fn parse(s: &str) -> Option<OnLimit> {
        Some(match s {
            "queue" => OnLimit::Queue,
            "skip" => OnLimit::Skip,
            "cancel_running" => OnLimit::CancelRunning,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        OnLimit::NAMES[self as usize]
    }
}

/// The most runs per key a workflow may allow at once.
pub const MAX_RUNS_PER_KEY: u32 = 10_000;

/// The backoff kinds of a step's `retry: { backoff: exponential | fixed | linear, initial, max }`
/// (the delays: `backoff::delay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackoffKind {
    /// `initial · 2^(retry − 1)`
    Exponential,
    /// `initial`
    Fixed,
    /// `initial · retry`
    Linear,
}

/// How a step retries. `limit` counts retries, so a step makes at most `limit + 1` attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub limit: u32,
    pub backoff: BackoffKind,
    /// None with exponential backoff means QStash's own curve, `min(86400, e^(2.5·n))` seconds.
    pub initial: Option<Duration>,
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            limit: 3,
            backoff: BackoffKind::Exponential,
            initial: None,
            max: Duration::from_secs(86_400),
        }
    }
}

impl Retry {
    /// The delay before retry `n` (1-based).
    pub fn delay(&self, n: u32) -> Duration {
        match (self.backoff, self.initial) {
            (BackoffKind::Exponential, None) => crate::backoff::qstash_default(n).min(self.max),
            (kind, initial) => crate::backoff::delay(
                kind,
                initial.unwrap_or(Duration::from_secs(10)),
                self.max,
                n,
            ),
        }
    }
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A template string as written; rendered at dispatch time (see `workflow::template`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Template(pub String);

impl Template {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    pub condition: Option<Template>,
    pub kind: StepKind,
    pub timeout: Duration,
    pub retry: Retry,
    /// The steps this one waits for (earlier ones only). Without `needs:` in the file it is the
    /// step before it, so a list of steps is a chain; `on_failure` hooks run in order and have none.
    pub needs: Vec<String>,
    /// When the step runs once its needs are done.
    pub when: Join,
    /// A failure of this step is recorded and the run goes on (joins see it as done, not failed).
    pub continue_on_error: bool,
    /// One call (or e-mail) per item of a list (`http` and `email` steps only).
    pub foreach: Option<Foreach>,
    /// `http` steps: the calls' flow-control key and its limits (the step's, or `defaults`').
    pub flow_control: Option<FlowControl>,
}

/// `flow_control`, with QStash's names: the calls of every run and workflow naming the same key
/// share its limits.
#[derive(Debug, Clone)]
pub struct FlowControl {
    /// A template, rendered with the call's request.
    pub key: Template,
    pub parallelism: Option<u32>,
    pub rate: Option<u32>,
    pub period: Duration,
}

impl FlowControl {
    pub fn limits(&self) -> crate::flow::Limits {
        crate::flow::Limits {
            parallelism: self.parallelism,
            rate: self.rate,
            period: self.period,
        }
    }
}

/// The largest `parallelism` and `rate` of `flow_control`.
pub const MAX_FLOW_PARALLELISM: u32 = 10_000;
pub const MAX_FLOW_RATE: u32 = 1_000_000;

/// A step's fan-out: its templates see the item as `as` (default `item`) and `loop.index`.
#[derive(Debug, Clone)]
pub struct Foreach {
    /// The list: a template that renders one (a single `{{ expression }}` keeps its type), or a
    /// list written in the file (its strings are templates).
    pub items: serde_json::Value,
    pub as_name: String,
    /// The item's identity (its dedup id is run/step/key); default its index.
    pub key: Option<Template>,
    pub max_parallel: u32,
    /// No new items after one failed for good (those in flight finish).
    pub fail_fast: bool,
}

/// The most items one `foreach` step may have.
pub const MAX_FOREACH_ITEMS: usize = 10_000;
/// The largest `max_parallel`.
pub const MAX_PARALLEL: u32 = 1_000;
pub const DEFAULT_MAX_PARALLEL: u32 = 10;

/// A step's join: whether it runs once every step it needs has finished. A need that was
/// skipped by its `if` counts as done; one skipped because its own join did not hold (an
/// upstream step failed) counts as failed, so a failure propagates down an `all_success` chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Join {
    /// Every need succeeded (or was skipped by its `if`).
    #[default]
    AllSuccess,
    /// Every need finished, however.
    AllDone,
    /// At least one need failed (or was skipped because of a failure upstream).
    AnyFailed,
}

impl Join {
    pub const NAMES: [&'static str; 3] = ["all_success", "all_done", "any_failed"];

    pub fn parse(s: &str) -> Option<Join> {
        Some(match s {
            "all_success" => Join::AllSuccess,
            "all_done" => Join::AllDone,
            "any_failed" => Join::AnyFailed,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Join::AllSuccess => "all_success",
            Join::AllDone => "all_done",
            Join::AnyFailed => "any_failed",
        }
    }
}

#[derive(Debug, Clone)]
pub enum StepKind {
    Http(HttpCall),
    Approval(Approval),
    Sleep(Duration),
    SleepUntil(Template),
    Email(Email),
    WaitForEvent(WaitForEvent),
    Call(Call),
}

/// A `call` step: it starts a run of another workflow and waits for it to end; templates see
/// `steps.<id>.run_id`, `.status` and `.output` (the called workflow's `output:`).
#[derive(Debug, Clone)]
pub struct Call {
    /// The called workflow's `name`.
    pub workflow: String,
    /// A JSON value whose strings are templates, rendered when the step starts: the child's input.
    pub input: Option<serde_json::Value>,
}

impl StepKind {
    pub fn kind_name(&self) -> StepKindName {
        match self {
            StepKind::Http(_) => StepKindName::Http,
            StepKind::Approval(_) => StepKindName::Approval,
            StepKind::Sleep(_) => StepKindName::Sleep,
            StepKind::SleepUntil(_) => StepKindName::SleepUntil,
            StepKind::Email(_) => StepKindName::Email,
            StepKind::WaitForEvent(_) => StepKindName::WaitForEvent,
            StepKind::Call(_) => StepKindName::Call,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind_name().as_str()
    }
}

/// The kind of a step by name: what a run's state and the views record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKindName {
    Http,
    Approval,
    Sleep,
    SleepUntil,
    Email,
    WaitForEvent,
    Call,
}

impl StepKindName {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKindName::Http => "http",
            StepKindName::Approval => "approval",
            StepKindName::Sleep => "sleep",
            StepKindName::SleepUntil => "sleep_until",
            StepKindName::Email => "email",
            StepKindName::WaitForEvent => "wait_for_event",
            StepKindName::Call => "call",
        }
    }
}

impl std::fmt::Display for StepKindName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct HttpCall {
    pub url: Template,
    pub method: String,
    pub headers: Vec<(String, Template)>,
    /// A JSON value whose strings are templates; None sends an empty body.
    pub body: Option<serde_json::Value>,
    /// The user's own deduplication id (a template), sent as `Upstash-Message-Id` and
    /// `Idempotency-Key` on every attempt instead of runner's.
    pub dedup_id: Option<Template>,
    /// Set only on the built-in `qstash` workflow's steps (`workflow::builtin`): the request
    /// is the message as published through the QStash API, taken from the run's input.
    pub published: Option<Published>,
}

/// Which request of a message published through runner's QStash API a step sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The message itself, to its destination.
    Message,
    /// QStash's callback body to `Upstash-Callback`, once the message was delivered.
    Callback,
    /// QStash's callback body to `Upstash-Failure-Callback`, once delivery failed for good.
    FailureCallback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Approved,
    Rejected,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approved => "approved",
            Decision::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Decision> {
        match s {
            "approved" => Some(Decision::Approved),
            "rejected" => Some(Decision::Rejected),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Approval {
    pub to: Vec<Template>,
    pub subject: Template,
    pub body: Option<Template>,
    pub timeout: Duration,
    pub on_timeout: Decision,
    /// `continue`: a rejection (or a timeout that rejects) is the step's result and the run goes
    /// on, later steps reading `decision`; by default it ends the run, `rejected`.
    pub on_reject_continue: bool,
}

pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(7 * 86_400);

/// A `wait_for_event` step: the run waits until an event of this name with this key arrives
/// (`POST /api/v1/events/{event}`), or one did after the run was created (lookback).
#[derive(Debug, Clone)]
pub struct WaitForEvent {
    pub event: String,
    /// The correlation key, a template rendered when the step starts; equality only. Without
    /// one the step takes an event sent without a key.
    pub key: Option<Template>,
    pub timeout: Duration,
    /// `continue`: a timeout is the step's result (`timed_out` is true) and the run goes on;
    /// by default the step fails.
    pub on_timeout_continue: bool,
}

pub const DEFAULT_EVENT_TIMEOUT: Duration = Duration::from_secs(7 * 86_400);

/// Whether `s` may name an event: letters, digits and `.`, `_`, `-`, `:`, `/`, at most 200.
pub fn valid_event_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'))
}

#[derive(Debug, Clone)]
pub struct Email {
    pub to: Vec<Template>,
    pub subject: Template,
    pub body: Option<Template>,
}

/// The fields a step of each kind makes visible to later templates as `steps.<id>.<field>`.
pub fn produced_fields(kind: &str) -> &'static [&'static str] {
    use super::output::*;
    match kind {
        "http" => HttpOutput::FIELDS,
        "approval" => ApprovalOutput::FIELDS,
        "sleep" | "sleep_until" => SleepOutput::FIELDS,
        "email" => EmailOutput::FIELDS,
        "wait_for_event" => EventOutput::FIELDS,
        "call" => CallOutput::FIELDS,
        "foreach" => FanOutput::FIELDS,
        _ => &[],
    }
}

pub const RUN_FIELDS: &[&str] = &["id", "trigger", "scheduled_for", "started_at"];
pub const WORKFLOW_FIELDS: &[&str] = &["name"];
pub const FAILURE_FIELDS: &[&str] = &["step", "error", "status", "body", "attempts"];
