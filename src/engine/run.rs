//! A run and its steps' states, as stored: what the machine reads and writes.
//!
//! Part of the pure core: no I/O.

use crate::time::rfc3339;
use crate::workflow::{Step, StepKindName, Workflow};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Pending,
    Running,
    Sleeping,
    WaitingApproval,
    WaitingEvent,
    Succeeded,
    Failed,
    Rejected,
    Cancelled,
}

impl RunStatus {
    pub const ALL: [RunStatus; 9] = [
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Sleeping,
        RunStatus::WaitingApproval,
        RunStatus::WaitingEvent,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Rejected,
        RunStatus::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Rejected | RunStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Sleeping => "sleeping",
            RunStatus::WaitingApproval => "waiting_approval",
            RunStatus::WaitingEvent => "waiting_event",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Rejected => "rejected",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    /// An attempt is in flight.
    Running,
    /// Waiting for the backoff before the next attempt.
    Retrying,
    Sleeping,
    WaitingApproval,
    /// A `wait_for_event` step waits for its event (or its timeout).
    WaitingEvent,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl StepStatus {
    pub fn is_done(self) -> bool {
        matches!(
            self,
            StepStatus::Succeeded
                | StepStatus::Failed
                | StepStatus::Skipped
                | StepStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Retrying => "retrying",
            StepStatus::Sleeping => "sleeping",
            StepStatus::WaitingApproval => "waiting_approval",
            StepStatus::WaitingEvent => "waiting_event",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Cancelled => "cancelled",
        }
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// `runner run` in the foreground.
    Cli,
    /// `POST /api/v1/workflows/{name}/runs` (also `runner trigger`).
    Api,
    /// A cron slot of a YAML or programmatic schedule.
    Schedule,
    /// An event the workflow starts on (`on.event`).
    Event,
    /// A `call` step of another run.
    Call,
}

impl Trigger {
    pub const ALL: [Trigger; 5] = [
        Trigger::Cli,
        Trigger::Api,
        Trigger::Schedule,
        Trigger::Event,
        Trigger::Call,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Cli => "cli",
            Trigger::Api => "api",
            Trigger::Schedule => "schedule",
            Trigger::Event => "event",
            Trigger::Call => "call",
        }
    }

    pub fn parse(s: &str) -> Option<Trigger> {
        Trigger::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub id: String,
    pub kind: StepKindName,
    pub status: StepStatus,
    pub attempts: u32,
    #[serde(serialize_with = "rfc3339::option")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339::option")]
    pub finished_at: Option<DateTime<Utc>>,
    /// When a retry, sleep or approval deadline is due.
    #[serde(serialize_with = "rfc3339::option")]
    pub wake_at: Option<DateTime<Utc>>,
    /// What later templates see as `steps.<id>`.
    pub output: Option<Value>,
    pub error: Option<String>,
    /// The HTTP status of the last attempt, if there was one.
    pub last_status: Option<u16>,
    /// Attempts made before the current round: retrying a failed run starts a new round, and the
    /// step's retry limit counts from here, while attempt numbers (and history) continue.
    #[serde(default)]
    pub round_start: u32,
    /// Attempts of this round cut short because the process performing them stopped (a crash, a
    /// take-over by another node): they were sent again as the next attempt, and do not count
    /// against the retry limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interrupted: u32,
    /// Skipped because its join did not hold after a step it needs failed: for the steps that
    /// need it, a failure (a skip by `if` counts as done instead).
    #[serde(default, skip_serializing_if = "is_false")]
    pub upstream_failed: bool,
    /// A `foreach` step: its items' progress. The items themselves (key, value, result) are
    /// rows of their own, so an item's outcome rewrites only these counters and the items in
    /// flight, never the whole list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fan: Option<Fan>,
    /// A `wait_for_event` step while it waits: the event and the key, as rendered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting: Option<Awaiting>,
    /// A `call` step: the run it started (`open` until that run ended or was told to stop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<ChildRef>,
}

/// The run a `call` step started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildRef {
    pub run_id: String,
    pub open: bool,
}

/// The `call` step whose run this is: told when the run ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParentRef {
    pub run_id: String,
    pub step: String,
    pub attempt: u32,
    /// How many runs call this one, up the chain (1: called by a run nobody called).
    #[serde(default = "one")]
    pub depth: u32,
}

fn one() -> u32 {
    1
}

/// The most runs one chain of `call` steps may hold below the first (a workflow that calls
/// itself, or a cycle of them, ends there instead of starting runs forever).
pub const MAX_CALL_DEPTH: u32 = 10;

/// What a `wait_for_event` step waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Awaiting {
    pub event: String,
    pub key: String,
}

/// The progress of a `foreach` step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fan {
    /// Items in the list.
    pub total: u32,
    /// The items this round goes through, in order, as index ranges `[start, end)`: every
    /// item at first; after the run was retried, those that had not succeeded.
    pub todo: Vec<(u32, u32)>,
    /// How many of `todo` have started.
    pub started: u32,
    /// Items that succeeded (earlier rounds' included) / failed for good in this round.
    pub succeeded: u32,
    pub failed: u32,
    /// Items started and not ended: at most `max_parallel`.
    pub active: Vec<Item>,
    /// `fail_fast`: an item failed for good, so no new item starts.
    #[serde(default, skip_serializing_if = "is_false")]
    pub halted: bool,
    /// Every item ended; their results are being read back (`ItemsCollected`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub collecting: bool,
    /// A retried run: the items are read back before this round starts (see `fan::retry`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub resume: bool,
    /// Attempts items made in earlier rounds (by index), so their attempt numbers go on.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub prior: std::collections::BTreeMap<u32, u32>,
}

impl Fan {
    pub fn todo_len(&self) -> u32 {
        self.todo.iter().map(|(a, b)| b - a).sum()
    }

    /// The `n`-th item of `todo`.
    pub fn nth(&self, mut n: u32) -> Option<u32> {
        for (a, b) in &self.todo {
            if n < b - a {
                return Some(a + n);
            }
            n -= b - a;
        }
        None
    }

    /// Items not started yet (that will start, unless `halted`).
    pub fn waiting(&self) -> u32 {
        if self.halted {
            0
        } else {
            self.todo_len() - self.started
        }
    }
}

/// One item of a `foreach` step in flight: an attempt out, or waiting for its retry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub index: u32,
    /// `running` or `retrying`.
    pub status: StepStatus,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub round_start: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interrupted: u32,
    #[serde(serialize_with = "rfc3339::option")]
    pub wake_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub last_status: Option<u16>,
}

impl Item {
    /// The attempts of this round that count against the retry limit.
    pub fn round_attempts(&self) -> u32 {
        self.attempts
            .saturating_sub(self.round_start)
            .saturating_sub(self.interrupted)
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl StepState {
    pub(super) fn new(step: &Step) -> StepState {
        StepState {
            id: step.id.clone(),
            kind: step.kind.kind_name(),
            status: StepStatus::Pending,
            attempts: 0,
            started_at: None,
            finished_at: None,
            wake_at: None,
            output: None,
            error: None,
            last_status: None,
            round_start: 0,
            interrupted: 0,
            upstream_failed: false,
            fan: None,
            awaiting: None,
            child: None,
        }
    }
}

/// What `on_failure` hooks see as `failure`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub step: String,
    pub error: String,
    pub status: Option<u16>,
    pub body: Option<Value>,
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub workflow: String,
    /// Hash of the workflow source this run started with.
    pub version: String,
    pub status: RunStatus,
    pub trigger: Trigger,
    pub input: Value,
    #[serde(serialize_with = "rfc3339::option")]
    pub scheduled_for: Option<DateTime<Utc>>,
    /// The public id of the schedule that started it (`schedule::id`), sent as
    /// `Upstash-Schedule-Id`. Runs stored before it was kept have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
    #[serde(serialize_with = "rfc3339::one")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339::option")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339::option")]
    pub finished_at: Option<DateTime<Utc>>,
    pub steps: Vec<StepState>,
    pub hooks: Vec<StepState>,
    pub failure: Option<Failure>,
    /// The earliest pending timer of any step, or the run's deadline (denormalized for the
    /// timer index).
    #[serde(serialize_with = "rfc3339::option")]
    pub wake_at: Option<DateTime<Utc>>,
    /// When the workflow's `timeout` ends the run, counted from its start.
    #[serde(
        default,
        serialize_with = "rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub deadline: Option<DateTime<Utc>>,
    /// The workflow's `concurrency.key` as rendered when the run was created: at most
    /// `concurrency.limit` runs of the workflow with this key are going at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    /// Why it was cancelled (the reason the cancel gave).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// Started by a `call` step of another run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
    /// The workflow's `output:` as rendered when the run succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
}

/// The parts of a new run that the shell chooses (ids and times come from outside the core).
#[derive(Debug, Clone)]
pub struct NewRun {
    pub id: String,
    pub version: String,
    pub trigger: Trigger,
    pub input: Value,
    pub scheduled_for: Option<DateTime<Utc>>,
    /// The public id of the schedule whose slot this is (`schedule::id`).
    pub schedule_id: Option<String>,
}

impl NewRun {
    /// A new run of `wf`: `input` checked against its `inputs` (defaults filled in), and its
    /// `concurrency.key` rendered over it. Err: what is wrong with the input (a key that cannot
    /// be rendered from it included).
    pub fn prepare(
        wf: &Workflow,
        id: String,
        version: String,
        trigger: Trigger,
        input: &Value,
        now: DateTime<Utc>,
    ) -> Result<(NewRun, Option<String>), Vec<String>> {
        let new = NewRun {
            id,
            version,
            trigger,
            input: crate::workflow::resolve_input(wf, input)?,
            scheduled_for: None,
            schedule_id: None,
        };
        let key = Run::new(wf, new.clone(), now)
            .render_concurrency_key(wf)
            .map_err(|e| vec![e])?;
        Ok((new, key))
    }
}

impl Run {
    pub fn new(wf: &Workflow, new: NewRun, now: DateTime<Utc>) -> Run {
        // Until it starts, its deadline is the end of its wait for its turn (if it is queued);
        // its start replaces it with the workflow's `timeout`.
        let queued_until = wf
            .concurrency
            .queue_timeout
            .map(|t| now + chrono::Duration::from_std(t).unwrap_or(chrono::Duration::MAX));
        Run {
            id: new.id,
            workflow: wf.name.clone(),
            version: new.version,
            status: RunStatus::Pending,
            trigger: new.trigger,
            input: new.input,
            scheduled_for: new.scheduled_for,
            schedule_id: new.schedule_id,
            created_at: now,
            started_at: None,
            finished_at: None,
            steps: wf.steps.iter().map(StepState::new).collect(),
            hooks: wf.on_failure.iter().map(StepState::new).collect(),
            failure: None,
            wake_at: queued_until,
            deadline: queued_until,
            concurrency_key: None,
            cancel_reason: None,
            parent: None,
            output: None,
        }
    }

    /// The workflow's `concurrency.key` rendered for this run (None: the workflow has none).
    pub fn render_concurrency_key(&self, wf: &Workflow) -> Result<Option<String>, String> {
        let Some(per_key) = &wf.concurrency.per_key else {
            return Ok(None);
        };
        let ctx = crate::workflow::template::context(&super::context::context(wf, self, None));
        crate::workflow::template::render_engine_text(per_key.key.as_str(), &ctx)
            .map(Some)
            .map_err(|e| format!("the concurrency `key` (`{}`): {e}", per_key.key.as_str()))
    }

    pub fn step(&self, id: &str) -> Option<&StepState> {
        self.steps
            .iter()
            .chain(self.hooks.iter())
            .find(|s| s.id == id)
    }

    pub(super) fn step_mut(&mut self, id: &str) -> Option<&mut StepState> {
        self.steps
            .iter_mut()
            .chain(self.hooks.iter_mut())
            .find(|s| s.id == id)
    }

    /// The step the run is at: the first unfinished one of the active phase.
    pub fn current(&self) -> Option<&StepState> {
        self.active().iter().find(|s| !s.status.is_done())
    }

    /// The steps of the active phase (the steps, or the hooks once the run failed).
    pub fn active(&self) -> &[StepState] {
        if self.failure.is_some() {
            &self.hooks
        } else {
            &self.steps
        }
    }

    /// A sentence for `runner show`: what the run is waiting for now (each step in flight,
    /// or the next step to start).
    pub fn waiting_for(&self) -> Option<String> {
        if self.status.is_terminal() {
            return None;
        }
        if let (RunStatus::Pending, Some(key)) = (self.status, &self.concurrency_key) {
            return Some(format!(
                "its turn: queued behind the runs with concurrency key `{key}`"
            ));
        }
        let at = |t: Option<DateTime<Utc>>| {
            t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default()
        };
        let what = |s: &StepState| -> Option<String> {
            if let (StepStatus::Running, Some(f)) = (s.status, &s.fan) {
                return Some(format!(
                    "{} of the {} items of step `{}` ({} in flight, {} waiting)",
                    f.total - f.succeeded - f.failed,
                    f.total,
                    s.id,
                    f.active.len(),
                    f.waiting()
                ));
            }
            Some(match s.status {
                StepStatus::Pending => format!("step `{}` to start", s.id),
                StepStatus::Running if s.kind == StepKindName::Call => match &s.child {
                    Some(c) => format!("the run {} that step `{}` called to end", c.run_id, s.id),
                    None => format!("step `{}` to start the run it calls", s.id),
                },
                StepStatus::Running => {
                    format!("attempt {} of step `{}` to answer", s.attempts, s.id)
                }
                StepStatus::Retrying => format!(
                    "attempt {} of step `{}` at {}",
                    s.attempts + 1,
                    s.id,
                    at(s.wake_at)
                ),
                StepStatus::Sleeping => format!("step `{}` to wake at {}", s.id, at(s.wake_at)),
                StepStatus::WaitingApproval => {
                    format!("a decision on step `{}` (deadline {})", s.id, at(s.wake_at))
                }
                StepStatus::WaitingEvent => match &s.awaiting {
                    Some(a) if a.key.is_empty() => format!(
                        "event `{}` for step `{}` (until {})",
                        a.event,
                        s.id,
                        at(s.wake_at)
                    ),
                    Some(a) => format!(
                        "event `{}` with key `{}` for step `{}` (until {})",
                        a.event,
                        a.key,
                        s.id,
                        at(s.wake_at)
                    ),
                    None => format!("an event for step `{}` (until {})", s.id, at(s.wake_at)),
                },
                _ => return None,
            })
        };
        let busy: Vec<String> = self
            .active()
            .iter()
            .filter(|s| !s.status.is_done() && s.status != StepStatus::Pending)
            .filter_map(what)
            .collect();
        if busy.is_empty() {
            self.current().and_then(what)
        } else {
            Some(busy.join("; "))
        }
    }
}

/// Whether a step whose current attempt failed may be tried again: its retry limit counts the
/// attempts of this round (a retried run starts a new one).
pub(crate) fn retries_left(def: &Step, run: &Run, s: &StepState) -> bool {
    s.round_attempts() <= super::message::retry_limit(def, run)
}

impl StepState {
    /// The attempts of this round that count against the retry limit.
    pub fn round_attempts(&self) -> u32 {
        self.attempts
            .saturating_sub(self.round_start)
            .saturating_sub(self.interrupted)
    }

    /// The step again, pending, for a new round: attempt numbers continue (so every attempt
    /// keeps its own record) and the retry limit counts from `round_start`.
    pub(super) fn new_from(s: &StepState) -> StepState {
        StepState {
            id: s.id.clone(),
            kind: s.kind,
            status: StepStatus::Pending,
            attempts: s.attempts,
            round_start: s.attempts,
            interrupted: 0,
            started_at: None,
            finished_at: None,
            wake_at: None,
            output: None,
            error: None,
            last_status: None,
            upstream_failed: false,
            fan: None,
            awaiting: None,
            child: None,
        }
    }
}
