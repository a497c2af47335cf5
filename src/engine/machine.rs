//! The run state machine: `decide(workflow, run, event, now) -> (run', effects)`.
//!
//! Part of the pure core: no I/O, no clock, no randomness. Events are facts in the past tense
//! (`AttemptSucceeded`); effects are orders in the imperative (`CallHttp`). The store writes the
//! new run, the event and the effects in one transaction; the shell performs the effects after
//! commit and reports their outcome as new events. Terminal runs absorb late or duplicate events.

use crate::time::rfc3339;
use crate::workflow::output::{self, ApprovalOutput, SleepOutput};
use crate::workflow::{Decision, Step, StepKind, StepKindName, Workflow, template};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Pending,
    Running,
    Sleeping,
    WaitingApproval,
    Succeeded,
    Failed,
    Rejected,
    Cancelled,
}

impl RunStatus {
    pub const ALL: [RunStatus; 8] = [
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Sleeping,
        RunStatus::WaitingApproval,
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
}

impl Trigger {
    pub const ALL: [Trigger; 3] = [Trigger::Cli, Trigger::Api, Trigger::Schedule];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Cli => "cli",
            Trigger::Api => "api",
            Trigger::Schedule => "schedule",
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
}

impl StepState {
    fn new(step: &Step) -> StepState {
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
    #[serde(serialize_with = "rfc3339::one")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339::option")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339::option")]
    pub finished_at: Option<DateTime<Utc>>,
    pub steps: Vec<StepState>,
    pub hooks: Vec<StepState>,
    pub failure: Option<Failure>,
    /// The earliest pending timer of any step (denormalized for the timer index).
    #[serde(serialize_with = "rfc3339::option")]
    pub wake_at: Option<DateTime<Utc>>,
}

/// The parts of a new run that the shell chooses (ids and times come from outside the core).
#[derive(Debug, Clone)]
pub struct NewRun {
    pub id: String,
    pub version: String,
    pub trigger: Trigger,
    pub input: Value,
    pub scheduled_for: Option<DateTime<Utc>>,
}

impl Run {
    pub fn new(wf: &Workflow, new: NewRun, now: DateTime<Utc>) -> Run {
        Run {
            id: new.id,
            workflow: wf.name.clone(),
            version: new.version,
            status: RunStatus::Pending,
            trigger: new.trigger,
            input: new.input,
            scheduled_for: new.scheduled_for,
            created_at: now,
            started_at: None,
            finished_at: None,
            steps: wf.steps.iter().map(StepState::new).collect(),
            hooks: wf.on_failure.iter().map(StepState::new).collect(),
            failure: None,
            wake_at: None,
        }
    }

    pub fn step(&self, id: &str) -> Option<&StepState> {
        self.steps
            .iter()
            .chain(self.hooks.iter())
            .find(|s| s.id == id)
    }

    fn step_mut(&mut self, id: &str) -> Option<&mut StepState> {
        self.steps
            .iter_mut()
            .chain(self.hooks.iter_mut())
            .find(|s| s.id == id)
    }

    /// The step the run is at: the first unfinished one of the active phase.
    pub fn current(&self) -> Option<&StepState> {
        let list = if self.failure.is_some() {
            &self.hooks
        } else {
            &self.steps
        };
        list.iter().find(|s| !s.status.is_done())
    }

    /// A sentence for `runner show`: what the run is waiting for now.
    pub fn waiting_for(&self) -> Option<String> {
        if self.status.is_terminal() {
            return None;
        }
        let s = self.current()?;
        let at = |t: Option<DateTime<Utc>>| {
            t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default()
        };
        Some(match s.status {
            StepStatus::Pending => format!("step `{}` to start", s.id),
            StepStatus::Running => format!("attempt {} of step `{}` to answer", s.attempts, s.id),
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
            _ => return None,
        })
    }
}

/// How a failed attempt should be treated. A failed step is an outcome, not a Rust error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Try again after `after`, or after the step's backoff when None.
    Retryable { after: Option<Duration> },
    /// Do not try again.
    Permanent,
}

impl Outcome {
    /// The outcome of a failed attempt of `step_id` (its current attempt in `run`) as the
    /// attempt's record names it: `retry` when the step will be tried again, else `failed` (a
    /// retryable failure of the last attempt the retry limit allows is a failure).
    pub fn attempt_result(&self, wf: &Workflow, run: &Run, step_id: &str) -> AttemptResult {
        let retried = matches!(self, Outcome::Retryable { .. })
            && find_step(wf, step_id)
                .zip(run.step(step_id))
                .is_none_or(|(def, s)| retries_left(def, s));
        if retried {
            AttemptResult::Retry
        } else {
            AttemptResult::Failed
        }
    }
}

/// What one attempt of a step came to, as its record names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AttemptResult {
    Succeeded,
    /// It failed and the step will be tried again.
    Retry,
    /// It failed and the step will not be tried again (a permanent error, or no retries left).
    #[default]
    Failed,
}

impl AttemptResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::Succeeded => "succeeded",
            AttemptResult::Retry => "retry",
            AttemptResult::Failed => "failed",
        }
    }
}

/// Whether a step whose current attempt failed may be tried again: its retry limit counts the
/// attempts of this round (a retried run starts a new one).
fn retries_left(def: &Step, s: &StepState) -> bool {
    let round_attempts = s.attempts - s.round_start.min(s.attempts);
    round_attempts <= def.retry.limit
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Started,
    AttemptSucceeded {
        step: String,
        attempt: u32,
        output: Value,
    },
    AttemptFailed {
        step: String,
        attempt: u32,
        error: String,
        status: Option<u16>,
        body: Option<Value>,
        outcome: Outcome,
    },
    TimerFired {
        step: String,
    },
    ApprovalDecided {
        step: String,
        decision: Decision,
        approver: String,
        comment: Option<String>,
    },
    CancelRequested {
        reason: Option<String>,
    },
    RetryRequested,
    /// The approval e-mails of a waiting step could not be delivered (a permanent error).
    ApprovalDeliveryFailed {
        step: String,
        error: String,
    },
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::Started => "started",
            Event::AttemptSucceeded { .. } => "attempt_succeeded",
            Event::AttemptFailed { .. } => "attempt_failed",
            Event::TimerFired { .. } => "timer_fired",
            Event::ApprovalDecided { .. } => "approval_decided",
            Event::CancelRequested { .. } => "cancel_requested",
            Event::RetryRequested => "retry_requested",
            Event::ApprovalDeliveryFailed { .. } => "approval_delivery_failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Effect {
    /// Send attempt `attempt` of an `http` step.
    CallHttp { step: String, attempt: u32 },
    /// Send attempt `attempt` of an `email` step.
    SendEmail { step: String, attempt: u32 },
    /// Mail the approval links of an `approval` step; they expire at `deadline`.
    RequestApproval {
        step: String,
        deadline: DateTime<Utc>,
    },
    /// Abandon whatever is in flight for this run (it was cancelled).
    AbandonInFlight,
    /// The run reached a terminal status (wake whoever waits for it).
    Finished { status: RunStatus },
}

impl Effect {
    /// Effects that touch the outside world are kept in the outbox until done.
    pub fn is_external(&self) -> bool {
        matches!(
            self,
            Effect::CallHttp { .. } | Effect::SendEmail { .. } | Effect::RequestApproval { .. }
        )
    }
}

/// The context templates see, without secrets (the dispatcher adds them for requests).
pub fn context(
    wf: &Workflow,
    run: &Run,
    secrets: Option<&serde_json::Map<String, Value>>,
) -> Value {
    let mut steps = serde_json::Map::new();
    for s in run.steps.iter().chain(run.hooks.iter()) {
        if let Some(out) = &s.output {
            steps.insert(s.id.clone(), out.clone());
        }
    }
    let time = |t: Option<DateTime<Utc>>| {
        t.map_or(Value::Null, |t| {
            Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        })
    };
    let mut ctx = json!({
        "input": run.input,
        "steps": steps,
        "run": {
            "id": run.id,
            "trigger": run.trigger,
            "scheduled_for": time(run.scheduled_for),
            "started_at": time(run.started_at),
        },
        "workflow": { "name": wf.name },
        "secrets": secrets.cloned().unwrap_or_default(),
    });
    if let Some(f) = &run.failure {
        ctx["failure"] = json!({
            "step": f.step,
            "error": f.error,
            "status": f.status,
            "body": f.body,
            "attempts": f.attempts,
        });
    }
    ctx
}

/// Applies one event. Returns the new run and the effects to perform after it is stored.
pub fn decide(wf: &Workflow, run: &Run, event: &Event, now: DateTime<Utc>) -> (Run, Vec<Effect>) {
    let mut run = run.clone();
    let mut effects = Vec::new();
    if run.status.is_terminal() {
        if matches!(event, Event::RetryRequested) && run.status == RunStatus::Failed {
            retry_failed(wf, &mut run, now, &mut effects);
            finish(&mut run, now, &mut effects);
        }
        return (run, effects);
    }
    match event {
        Event::Started => {
            if run.status == RunStatus::Pending {
                run.status = RunStatus::Running;
                run.started_at = Some(now);
                advance(wf, &mut run, now, &mut effects);
            }
        }
        Event::AttemptSucceeded {
            step,
            attempt,
            output,
        } => {
            let Some(s) = run.step_mut(step) else {
                return (run, effects);
            };
            if s.status != StepStatus::Running || s.attempts != *attempt {
                return (run, effects);
            }
            s.status = StepStatus::Succeeded;
            s.finished_at = Some(now);
            s.last_status = output
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|v| u16::try_from(v).ok());
            s.output = Some(output.clone());
            s.error = None;
            advance(wf, &mut run, now, &mut effects);
        }
        Event::AttemptFailed {
            step,
            attempt,
            error,
            status,
            body,
            outcome,
        } => {
            let Some(def) = find_step(wf, step) else {
                return (run, effects);
            };
            let Some(s) = run.step_mut(step) else {
                return (run, effects);
            };
            if s.status != StepStatus::Running || s.attempts != *attempt {
                return (run, effects);
            }
            s.error = Some(error.clone());
            s.last_status = *status;
            let round_attempts = s.attempts - s.round_start.min(s.attempts);
            match outcome {
                Outcome::Retryable { after } if retries_left(def, s) => {
                    let delay = after.unwrap_or_else(|| def.retry.delay(s.attempts));
                    s.status = StepStatus::Retrying;
                    s.wake_at = Some(later(now, delay));
                }
                _ => {
                    s.status = StepStatus::Failed;
                    s.finished_at = Some(now);
                    let why = if matches!(outcome, Outcome::Permanent) || def.retry.limit == 0 {
                        error.clone()
                    } else {
                        format!("{error} (gave up after {round_attempts} attempts)")
                    };
                    s.error = Some(why.clone());
                    let failure = Failure {
                        step: step.clone(),
                        error: why,
                        status: *status,
                        body: body.clone(),
                        attempts: round_attempts,
                    };
                    step_failed(wf, &mut run, failure, now, &mut effects);
                }
            }
        }
        Event::TimerFired { step } => {
            let Some(def) = find_step(wf, step) else {
                return (run, effects);
            };
            let Some(s) = run.step_mut(step) else {
                return (run, effects);
            };
            let due = s.wake_at.is_some_and(|w| w <= now);
            match s.status {
                StepStatus::Retrying if due => {
                    s.wake_at = None;
                    s.status = StepStatus::Running;
                    s.attempts += 1;
                    effects.push(attempt_effect(def, s.attempts));
                }
                StepStatus::Sleeping if due => {
                    s.wake_at = None;
                    s.status = StepStatus::Succeeded;
                    s.finished_at = Some(now);
                    s.output = Some(woke(now));
                    advance(wf, &mut run, now, &mut effects);
                }
                StepStatus::WaitingApproval if due => {
                    let decision = match &def.kind {
                        StepKind::Approval(a) => a.on_timeout,
                        _ => Decision::Rejected,
                    };
                    decided(
                        wf,
                        &mut run,
                        step,
                        decision,
                        "timeout",
                        Some("no decision before the deadline"),
                        now,
                        &mut effects,
                    );
                }
                _ => {}
            }
        }
        Event::ApprovalDecided {
            step,
            decision,
            approver,
            comment,
        } => {
            if run
                .step(step)
                .is_some_and(|s| s.status == StepStatus::WaitingApproval)
            {
                decided(
                    wf,
                    &mut run,
                    step,
                    *decision,
                    approver,
                    comment.as_deref(),
                    now,
                    &mut effects,
                );
            }
        }
        Event::CancelRequested { reason } => {
            let reason = reason.clone().unwrap_or_else(|| "cancelled".into());
            for s in run.steps.iter_mut().chain(run.hooks.iter_mut()) {
                if s.status == StepStatus::Pending {
                    // Never started: it will not run.
                    s.status = StepStatus::Cancelled;
                } else if !s.status.is_done() {
                    s.status = StepStatus::Cancelled;
                    s.finished_at = Some(now);
                    s.wake_at = None;
                    s.error = Some(reason.clone());
                }
            }
            run.status = RunStatus::Cancelled;
            effects.push(Effect::AbandonInFlight);
        }
        Event::RetryRequested => {}
        Event::ApprovalDeliveryFailed { step, error } => {
            if let Some(s) = run.step_mut(step)
                && s.status == StepStatus::WaitingApproval
            {
                s.status = StepStatus::Failed;
                s.finished_at = Some(now);
                s.wake_at = None;
                s.error = Some(error.clone());
                let failure = Failure {
                    step: step.clone(),
                    error: error.clone(),
                    status: None,
                    body: None,
                    attempts: 1,
                };
                step_failed(wf, &mut run, failure, now, &mut effects);
            }
        }
    }
    finish(&mut run, now, &mut effects);
    (run, effects)
}

/// What a sleep step shows when it woke.
fn woke(now: DateTime<Utc>) -> Value {
    output::to_value(&SleepOutput {
        woke_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

/// `now + d`, saturating at the latest representable time (`now + Duration::MAX` panics).
fn later(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn find_step<'w>(wf: &'w Workflow, id: &str) -> Option<&'w Step> {
    wf.steps
        .iter()
        .chain(wf.on_failure.iter())
        .find(|s| s.id == id)
}

fn attempt_effect(def: &Step, attempt: u32) -> Effect {
    match def.kind {
        StepKind::Email(_) => Effect::SendEmail {
            step: def.id.clone(),
            attempt,
        },
        _ => Effect::CallHttp {
            step: def.id.clone(),
            attempt,
        },
    }
}

#[allow(clippy::too_many_arguments)]
fn decided(
    wf: &Workflow,
    run: &mut Run,
    step: &str,
    decision: Decision,
    approver: &str,
    comment: Option<&str>,
    now: DateTime<Utc>,
    effects: &mut Vec<Effect>,
) {
    let Some(s) = run.step_mut(step) else { return };
    s.status = StepStatus::Succeeded;
    s.finished_at = Some(now);
    s.wake_at = None;
    s.output = Some(output::to_value(&ApprovalOutput {
        decision,
        approver: approver.to_string(),
        comment: comment.map(str::to_string),
        decided_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }));
    if decision == Decision::Rejected {
        s.error = Some(format!("rejected by {approver}"));
        run.status = RunStatus::Rejected;
        for later in run
            .steps
            .iter_mut()
            .filter(|s| s.status == StepStatus::Pending)
        {
            later.status = StepStatus::Skipped;
        }
        skip_pending_hooks(run);
    } else {
        advance(wf, run, now, effects);
    }
}

/// A run that ends without failing does not run its `on_failure` hooks: they are skipped, not
/// left pending as if they still might run.
fn skip_pending_hooks(run: &mut Run) {
    for h in run
        .hooks
        .iter_mut()
        .filter(|h| h.status == StepStatus::Pending)
    {
        h.status = StepStatus::Skipped;
    }
}

/// A step failed for good: remember why and start the `on_failure` hooks, or end the run.
fn step_failed(
    wf: &Workflow,
    run: &mut Run,
    failure: Failure,
    now: DateTime<Utc>,
    effects: &mut Vec<Effect>,
) {
    let in_hook = run.hooks.iter().any(|h| h.id == failure.step);
    if in_hook {
        // A failing hook does not stop the other hooks.
        advance(wf, run, now, effects);
        return;
    }
    for later in run
        .steps
        .iter_mut()
        .filter(|s| s.status == StepStatus::Pending)
    {
        later.status = StepStatus::Skipped;
    }
    run.failure = Some(failure);
    advance(wf, run, now, effects);
}

/// Starts steps until one has to wait, or the run (or its hooks) is done.
fn advance(wf: &Workflow, run: &mut Run, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
    loop {
        let hooks = run.failure.is_some();
        let defs = if hooks { &wf.on_failure } else { &wf.steps };
        let list = if hooks { &run.hooks } else { &run.steps };
        let Some(index) = list.iter().position(|s| !s.status.is_done()) else {
            run.status = if hooks {
                RunStatus::Failed
            } else {
                skip_pending_hooks(run);
                RunStatus::Succeeded
            };
            return;
        };
        if list[index].status != StepStatus::Pending {
            return; // already in flight or waiting
        }
        let Some(def) = defs.iter().find(|d| d.id == list[index].id) else {
            // The stored run and its workflow version disagree: fail loudly, never loop.
            let id = list[index].id.clone();
            let failure = Failure {
                step: id.clone(),
                error: format!("step `{id}` is not in workflow version {}", run.version),
                status: None,
                body: None,
                attempts: 0,
            };
            mark(run, hooks, index, |s| {
                s.status = StepStatus::Failed;
                s.error = Some(failure.error.clone());
            });
            if hooks {
                continue;
            }
            step_failed(wf, run, failure, now, effects);
            return;
        };
        // The template context is built only for steps that need one (it copies every output).
        let ctx = || template::context(&context(wf, run, None));
        if let Some(cond) = &def.condition {
            match template::eval_condition(cond.as_str(), &ctx()) {
                Ok(true) => {}
                Ok(false) => {
                    mark(run, hooks, index, |s| {
                        s.status = StepStatus::Skipped;
                        s.finished_at = Some(now);
                    });
                    continue;
                }
                Err(e) => {
                    let error = format!("the `if` condition of step `{}` failed: {e}", def.id);
                    if start_failed(wf, run, hooks, index, error, now, effects) {
                        continue;
                    }
                    return;
                }
            }
        }
        match &def.kind {
            StepKind::Http(_) | StepKind::Email(_) => {
                let mut attempt = 1;
                mark(run, hooks, index, |s| {
                    s.status = StepStatus::Running;
                    s.attempts += 1;
                    attempt = s.attempts;
                    s.started_at = Some(now);
                });
                effects.push(attempt_effect(def, attempt));
                return;
            }
            StepKind::Sleep(d) => {
                let until = later(now, *d);
                sleep_until(run, hooks, index, until, now);
                if run_step(run, hooks, index).status.is_done() {
                    continue;
                }
                return;
            }
            StepKind::SleepUntil(t) => match template::render_text(t.as_str(), &ctx())
                .map_err(|e| e.to_string())
                .and_then(|s| {
                    DateTime::parse_from_rfc3339(s.trim())
                        .map(|d| d.with_timezone(&Utc))
                        .map_err(|e| format!("`{s}` is not an RFC 3339 time: {e}"))
                }) {
                Ok(until) => {
                    sleep_until(run, hooks, index, until, now);
                    if run_step(run, hooks, index).status.is_done() {
                        continue;
                    }
                    return;
                }
                Err(e) => {
                    let error = format!("`sleep_until` of step `{}`: {e}", def.id);
                    if start_failed(wf, run, hooks, index, error, now, effects) {
                        continue;
                    }
                    return;
                }
            },
            StepKind::Approval(a) => {
                let deadline = later(now, a.timeout);
                mark(run, hooks, index, |s| {
                    s.status = StepStatus::WaitingApproval;
                    s.started_at = Some(now);
                    s.wake_at = Some(deadline);
                });
                effects.push(Effect::RequestApproval {
                    step: def.id.clone(),
                    deadline,
                });
                return;
            }
        }
    }
}

fn run_step(run: &Run, hooks: bool, index: usize) -> &StepState {
    if hooks {
        &run.hooks[index]
    } else {
        &run.steps[index]
    }
}

fn mark(run: &mut Run, hooks: bool, index: usize, f: impl FnOnce(&mut StepState)) {
    let list = if hooks {
        &mut run.hooks
    } else {
        &mut run.steps
    };
    f(&mut list[index]);
}

fn sleep_until(run: &mut Run, hooks: bool, index: usize, until: DateTime<Utc>, now: DateTime<Utc>) {
    mark(run, hooks, index, |s| {
        s.started_at = Some(now);
        if until <= now {
            s.status = StepStatus::Succeeded;
            s.finished_at = Some(now);
            s.output = Some(woke(now));
        } else {
            s.status = StepStatus::Sleeping;
            s.wake_at = Some(until);
        }
    });
}

/// A step could not even start (bad condition or template). Returns true when advancing may go on.
#[allow(clippy::too_many_arguments)]
fn start_failed(
    wf: &Workflow,
    run: &mut Run,
    hooks: bool,
    index: usize,
    error: String,
    now: DateTime<Utc>,
    effects: &mut Vec<Effect>,
) -> bool {
    mark(run, hooks, index, |s| {
        s.status = StepStatus::Failed;
        s.started_at = Some(now);
        s.finished_at = Some(now);
        s.error = Some(error.clone());
    });
    if hooks {
        return true;
    }
    let step = run.steps[index].id.clone();
    step_failed(
        wf,
        run,
        Failure {
            step,
            error,
            status: None,
            body: None,
            attempts: 0,
        },
        now,
        effects,
    );
    false
}

/// Recomputes the derived fields once an event has been applied.
fn finish(run: &mut Run, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
    run.wake_at = run
        .steps
        .iter()
        .chain(run.hooks.iter())
        .filter(|s| {
            matches!(
                s.status,
                StepStatus::Retrying | StepStatus::Sleeping | StepStatus::WaitingApproval
            )
        })
        .filter_map(|s| s.wake_at)
        .min();
    if run.status.is_terminal() {
        if run.finished_at.is_none() {
            run.finished_at = Some(now);
            run.wake_at = None;
            effects.push(Effect::Finished { status: run.status });
        }
        return;
    }
    if run.status == RunStatus::Pending {
        return;
    }
    run.status = match run.current().map(|s| s.status) {
        Some(StepStatus::Sleeping) => RunStatus::Sleeping,
        Some(StepStatus::WaitingApproval) => RunStatus::WaitingApproval,
        _ => RunStatus::Running,
    };
}

/// Retry a failed run from its failed step: that step starts again, with the same dedup id and
/// the next attempt number.
fn retry_failed(wf: &Workflow, run: &mut Run, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
    let Some(failed) = run
        .steps
        .iter()
        .position(|s| s.status == StepStatus::Failed)
    else {
        return;
    };
    for s in run.steps[failed..].iter_mut() {
        *s = StepState::new_from(s);
    }
    for h in run.hooks.iter_mut() {
        *h = StepState::new_from(h);
    }
    run.failure = None;
    run.finished_at = None;
    run.status = RunStatus::Running;
    advance(wf, run, now, effects);
}

impl StepState {
    /// The step again, pending, for a new round: attempt numbers continue (so every attempt
    /// keeps its own record) and the retry limit counts from `round_start`.
    fn new_from(s: &StepState) -> StepState {
        StepState {
            id: s.id.clone(),
            kind: s.kind,
            status: StepStatus::Pending,
            attempts: s.attempts,
            round_start: s.attempts,
            started_at: None,
            finished_at: None,
            wake_at: None,
            output: None,
            error: None,
            last_status: None,
        }
    }
}
