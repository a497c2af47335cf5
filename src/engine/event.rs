//! Events: facts in the past tense that the machine applies to a run; and how a failed attempt
//! is to be treated (an outcome, not a Rust error).
//!
//! Part of the pure core: no I/O.

use super::run::{Run, retries_left};
use crate::workflow::{Decision, Workflow};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

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
    pub fn attempt_result(
        &self,
        wf: &Workflow,
        run: &Run,
        step_id: &str,
        item: Option<u32>,
    ) -> AttemptResult {
        let retried = matches!(self, Outcome::Retryable { .. })
            && wf
                .find_step(step_id)
                .zip(run.step(step_id))
                .is_none_or(|(def, s)| match item {
                    None => retries_left(def, run, s),
                    Some(i) => s
                        .fan
                        .as_ref()
                        .and_then(|f| f.active.iter().find(|a| a.index == i))
                        .is_none_or(|a| a.round_attempts() <= def.retry.limit),
                });
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
    /// The process performing it stopped before its outcome was stored; it was sent again.
    Interrupted,
}

impl AttemptResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::Succeeded => "succeeded",
            AttemptResult::Retry => "retry",
            AttemptResult::Failed => "failed",
            AttemptResult::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Started,
    /// An attempt of a step (or, with `item`, of one item of a `foreach` step) succeeded.
    AttemptSucceeded {
        step: String,
        attempt: u32,
        output: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<u32>,
    },
    AttemptFailed {
        step: String,
        attempt: u32,
        error: String,
        status: Option<u16>,
        body: Option<Value>,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<u32>,
    },
    /// A step's timer is due (a retry, a sleep, an approval's deadline; for a `foreach` step,
    /// the retries of its items that are due).
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
    /// An attempt in flight was cut short: the process performing it stopped (a crash, or its
    /// node was taken over) before its outcome was stored. It is sent again as the next attempt
    /// (same dedup id, `Upstash-Retried` one higher).
    AttemptInterrupted {
        step: String,
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<u32>,
    },
    /// The run's deadline (the workflow's `timeout`) is due.
    DeadlinePassed,
    /// A `call` step's run was created (or found, created before).
    ChildStarted {
        step: String,
        attempt: u32,
        run_id: String,
    },
    /// A `call` step's run ended (`run_id` None: it could not be started, `error` says why).
    ChildFinished {
        step: String,
        attempt: u32,
        run_id: Option<String>,
        status: super::run::RunStatus,
        output: Option<Value>,
        error: Option<String>,
    },
    /// A `foreach` step's items all ended: their results, read back by the store in the same
    /// transaction (the machine asked for them with `Effect::CollectItems`).
    ItemsCollected {
        step: String,
        items: Vec<crate::workflow::output::ItemOutput>,
    },
    /// An event a `wait_for_event` step (or the workflow's `cancel_on`, `step` then being a
    /// [`cancel_wait`] name) waited for: sent while it waited, or before (lookback).
    EventReceived {
        step: String,
        event: String,
        key: String,
        id: String,
        data: Value,
        received_at: chrono::DateTime<chrono::Utc>,
    },
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
            Event::AttemptInterrupted { .. } => "attempt_interrupted",
            Event::ItemsCollected { .. } => "items_collected",
            Event::DeadlinePassed => "deadline_passed",
            Event::ApprovalDeliveryFailed { .. } => "approval_delivery_failed",
            Event::EventReceived { .. } => "event_received",
            Event::ChildStarted { .. } => "child_started",
            Event::ChildFinished { .. } => "child_finished",
        }
    }
}

/// The name under which a run waits for the `index`-th event of its workflow's `cancel_on` (not a
/// valid step id, so it never collides with one).
pub fn cancel_wait(index: usize) -> String {
    format!("#cancel_on.{index}")
}

/// Whether a wait's step name is a `cancel_on` entry's.
pub fn is_cancel_wait(step: &str) -> bool {
    step.starts_with("#cancel_on.")
}
