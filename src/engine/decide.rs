//! `decide(workflow, run, event, now) -> (run', effects)`: routes an event to the step it is
//! about, and recomputes what follows from the new state.
//!
//! Part of the pure core: no I/O, no clock, no randomness. Terminal runs absorb late or
//! duplicate events: the run comes back unchanged and no effects.

use super::effect::Effect;
use super::event::{Event, Outcome};
use super::fan;
use super::plan::advance;
use super::run::{ChildRef, Failure, Run, RunStatus, StepState, StepStatus};
use crate::workflow::output::{self, ApprovalOutput, CallOutput, EventOutput, SleepOutput};
use crate::workflow::{Decision, Step, StepKind, Workflow};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::time::Duration;

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
                run.deadline = wf.timeout.map(|t| later(now, t));
                if let Err(error) = await_cancel_events(wf, &run, &mut effects) {
                    run.failure = Some(Failure {
                        step: "cancel_on".into(),
                        error,
                        status: None,
                        body: None,
                        attempts: 0,
                    });
                    skip_steps(&mut run);
                }
                advance(wf, &mut run, now, &mut effects);
            }
        }
        Event::EventReceived {
            step,
            event,
            key,
            id,
            ..
        } if super::event::is_cancel_wait(step) => {
            let reason = if key.is_empty() {
                format!("cancelled by event `{event}` (id {id})")
            } else {
                format!("cancelled by event `{event}` with key `{key}` (id {id})")
            };
            cancel(&mut run, &reason, now, &mut effects);
        }
        Event::EventReceived {
            step,
            id,
            data,
            received_at,
            ..
        } => {
            if let Some(s) = run.step_mut(step)
                && s.status == StepStatus::WaitingEvent
            {
                s.status = StepStatus::Succeeded;
                s.finished_at = Some(now);
                s.wake_at = None;
                s.awaiting = None;
                s.output = Some(output::to_value(&EventOutput {
                    data: data.clone(),
                    id: Some(id.clone()),
                    received_at: Some(
                        received_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    ),
                    timed_out: false,
                }));
                effects.push(Effect::EndAwait { step: step.clone() });
                advance(wf, &mut run, now, &mut effects);
            }
        }
        Event::ChildStarted {
            step,
            attempt,
            run_id,
        } => {
            if let Some(s) = run.step_mut(step)
                && s.status == StepStatus::Running
                && s.attempts == *attempt
                && s.child.is_none()
            {
                s.child = Some(ChildRef {
                    run_id: run_id.clone(),
                    open: true,
                });
            }
        }
        Event::ChildFinished {
            step,
            attempt,
            run_id,
            status,
            output,
            error,
        } => child_finished(
            wf,
            &mut run,
            step,
            *attempt,
            run_id.as_deref(),
            *status,
            output.clone(),
            error.as_deref(),
            now,
            &mut effects,
        ),
        Event::AttemptSucceeded {
            step,
            attempt,
            output,
            item: Some(item),
        } => fan::succeeded(wf, &mut run, step, *item, *attempt, output, &mut effects),
        Event::AttemptFailed {
            step,
            attempt,
            error,
            status,
            outcome,
            item: Some(item),
            ..
        } => fan::failed(
            wf,
            &mut run,
            step,
            *item,
            *attempt,
            error,
            *status,
            outcome,
            now,
            &mut effects,
        ),
        Event::AttemptInterrupted {
            step,
            attempt,
            item: Some(item),
        } => fan::interrupted(wf, &mut run, step, *item, *attempt, &mut effects),
        Event::DeadlinePassed if run.status == RunStatus::Pending => {
            // Queued, and its wait for its turn is over: it does not start.
            if run.deadline.is_some_and(|d| d <= now) {
                run.deadline = None;
                let waited = wf.concurrency.queue_timeout.map_or_else(String::new, |t| {
                    format!(" of {}", crate::workflow::duration::format(t))
                });
                let behind = match &run.concurrency_key {
                    Some(k) => format!("the runs with concurrency key `{k}`"),
                    None => "a run of its schedule".to_string(),
                };
                let reason = format!(
                    "did not start within its queue_timeout{waited} (queued behind {behind})"
                );
                cancel(&mut run, &reason, now, &mut effects);
            }
        }
        Event::DeadlinePassed => {
            if run.failure.is_none() && run.deadline.is_some_and(|d| d <= now) {
                run.deadline = None;
                let timeout = wf.timeout.map_or_else(String::new, |t| {
                    format!(" of {}", crate::workflow::duration::format(t))
                });
                let error = format!(
                    "the run's timeout{timeout} passed (it started at {})",
                    run.started_at
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_default()
                );
                // The step it was at, for `failure.step`: the first one not finished.
                let step = run
                    .steps
                    .iter()
                    .find(|s| !s.status.is_done() && s.status != StepStatus::Pending)
                    .or_else(|| run.steps.iter().find(|s| !s.status.is_done()))
                    .map(|s| s.id.clone())
                    .unwrap_or_default();
                abandon(&mut run, &error, now, &mut effects);
                run.failure = Some(Failure {
                    step,
                    error,
                    status: None,
                    body: None,
                    attempts: 0,
                });
                advance(wf, &mut run, now, &mut effects);
            }
        }
        Event::ItemsCollected { step, items } => {
            fan::collected(wf, &mut run, step, items, now, &mut effects)
        }
        Event::AttemptSucceeded {
            step,
            attempt,
            output,
            item: None,
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
            item: None,
        } => {
            let Some(def) = wf.find_step(step) else {
                return (run, effects);
            };
            let limit = super::message::retry_limit(def, &run);
            let Some(s) = run.step_mut(step) else {
                return (run, effects);
            };
            if s.status != StepStatus::Running || s.attempts != *attempt {
                return (run, effects);
            }
            s.error = Some(error.clone());
            s.last_status = *status;
            let round_attempts = s.round_attempts();
            match after_failure(def, limit, outcome, s.attempts, round_attempts, error) {
                Ok(delay) => {
                    s.status = StepStatus::Retrying;
                    s.wake_at = Some(later(now, delay));
                }
                Err(why) => {
                    s.status = StepStatus::Failed;
                    s.finished_at = Some(now);
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
            let Some(def) = wf.find_step(step) else {
                return (run, effects);
            };
            if def.foreach.is_some() {
                if let Some(i) = run
                    .steps
                    .iter()
                    .position(|s| s.id == *step && s.status == StepStatus::Running)
                {
                    fan::timer(wf, &mut run, i, now, &mut effects);
                }
                finish(&mut run, now, &mut effects);
                return (run, effects);
            }
            let Some(s) = run.step_mut(step) else {
                return (run, effects);
            };
            let due = s.wake_at.is_some_and(|w| w <= now);
            match s.status {
                StepStatus::Retrying if due => {
                    s.wake_at = None;
                    s.status = StepStatus::Running;
                    s.attempts += 1;
                    effects.push(attempt_effect(def, s.attempts, None));
                }
                StepStatus::Sleeping if due => {
                    s.wake_at = None;
                    s.status = StepStatus::Succeeded;
                    s.finished_at = Some(now);
                    s.output = Some(woke(now));
                    advance(wf, &mut run, now, &mut effects);
                }
                StepStatus::WaitingEvent if due => {
                    s.wake_at = None;
                    s.finished_at = Some(now);
                    let awaiting = s.awaiting.take();
                    effects.push(Effect::EndAwait { step: step.clone() });
                    let go_on =
                        matches!(&def.kind, StepKind::WaitForEvent(w) if w.on_timeout_continue);
                    if go_on {
                        s.status = StepStatus::Succeeded;
                        s.output = Some(output::to_value(&EventOutput {
                            data: Value::Null,
                            id: None,
                            received_at: None,
                            timed_out: true,
                        }));
                        advance(wf, &mut run, now, &mut effects);
                    } else {
                        let timeout = match &def.kind {
                            StepKind::WaitForEvent(w) => {
                                crate::workflow::duration::format(w.timeout)
                            }
                            _ => String::new(),
                        };
                        let what = match awaiting {
                            Some(a) if !a.key.is_empty() => {
                                format!("event `{}` with key `{}`", a.event, a.key)
                            }
                            Some(a) => format!("event `{}`", a.event),
                            None => "the event".into(),
                        };
                        let error = format!("no {what} arrived within {timeout}");
                        s.status = StepStatus::Failed;
                        s.error = Some(error.clone());
                        let failure = Failure {
                            step: step.clone(),
                            error,
                            status: None,
                            body: None,
                            attempts: 0,
                        };
                        step_failed(wf, &mut run, failure, now, &mut effects);
                    }
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
            cancel(&mut run, &reason, now, &mut effects);
        }
        Event::RetryRequested => {}
        Event::AttemptInterrupted {
            step,
            attempt,
            item: None,
        } => {
            let Some(def) = wf.find_step(step) else {
                return (run, effects);
            };
            if let Some(s) = run.step_mut(step)
                && s.status == StepStatus::Running
                && s.attempts == *attempt
            {
                s.interrupted += 1;
                s.attempts += 1;
                s.error = Some(format!(
                    "attempt {attempt} was interrupted (the process performing it stopped); sent again as attempt {}",
                    s.attempts
                ));
                effects.push(attempt_effect(def, s.attempts, None));
            }
        }
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
    fan::top_up(wf, &mut run, &mut effects);
    finish(&mut run, now, &mut effects);
    (run, effects)
}

/// The run is cancelled: steps not started will not run, steps in flight stop.
fn cancel(run: &mut Run, reason: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
    for s in run.steps.iter_mut().chain(run.hooks.iter_mut()) {
        if s.status == StepStatus::Pending {
            // Never started: it will not run.
            s.status = StepStatus::Cancelled;
        } else if !s.status.is_done() {
            s.status = StepStatus::Cancelled;
            s.finished_at = Some(now);
            s.wake_at = None;
            s.awaiting = None;
            s.error = Some(reason.to_string());
            cancel_items(s, reason, effects);
            stop_child(s, reason, effects);
        }
    }
    run.status = RunStatus::Cancelled;
    run.cancel_reason = Some(reason.to_string());
    effects.push(Effect::AbandonInFlight);
}

/// A started run waits for the events of its workflow's `cancel_on`, each with its key
/// rendered over the run's input; Err when a key cannot be rendered.
fn await_cancel_events(wf: &Workflow, run: &Run, effects: &mut Vec<Effect>) -> Result<(), String> {
    if wf.cancel_on.is_empty() {
        return Ok(());
    }
    let ctx = crate::workflow::template::context(&super::context::context(wf, run, None));
    for (i, c) in wf.cancel_on.iter().enumerate() {
        let key =
            crate::workflow::template::render_engine_text(c.key.as_str(), &ctx).map_err(|e| {
                format!(
                    "the `key` of `cancel_on` entry {} (`{}`): {e}",
                    i + 1,
                    c.event
                )
            })?;
        effects.push(Effect::AwaitEvent {
            step: super::event::cancel_wait(i),
            event: c.event.clone(),
            key,
        });
    }
    Ok(())
}

/// Every step of a run that failed before any started is skipped.
fn skip_steps(run: &mut Run) {
    for s in run.steps.iter_mut() {
        s.status = StepStatus::Skipped;
        s.upstream_failed = true;
    }
}

/// What a sleep step shows when it woke: RFC 3339 in UTC with milliseconds (as every other
/// time runner shows), so a step after a 500 ms sleep can tell when it woke.
pub(super) fn woke(now: DateTime<Utc>) -> Value {
    output::to_value(&SleepOutput {
        woke_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

/// `now + d`, saturating at the latest representable time (`now + Duration::MAX` panics).
pub(super) fn later(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// An attempt of a step, or of one item of a `foreach` step.
pub(super) fn attempt_effect(def: &Step, attempt: u32, item: Option<u32>) -> Effect {
    match def.kind {
        StepKind::Email(_) => Effect::SendEmail {
            step: def.id.clone(),
            attempt,
            item,
        },
        _ => Effect::CallHttp {
            step: def.id.clone(),
            attempt,
            item,
        },
    }
}

/// What a failed attempt of a step (or of an item) leads to: the wait before the next attempt,
/// or why it failed for good. `round_attempts` counts against the retry limit.
pub(super) fn after_failure(
    def: &Step,
    limit: u32,
    outcome: &Outcome,
    attempts: u32,
    round_attempts: u32,
    error: &str,
) -> Result<Duration, String> {
    match outcome {
        Outcome::Retryable { after } if round_attempts <= limit => {
            Ok(after.unwrap_or_else(|| def.retry.delay(attempts)))
        }
        Outcome::Permanent => Err(error.to_string()),
        _ if limit == 0 => Err(error.to_string()),
        _ => Err(format!("{error} (gave up after {round_attempts} attempts)")),
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
    let go_on = matches!(wf.find_step(step).map(|d| &d.kind), Some(StepKind::Approval(a)) if a.on_reject_continue);
    if decision == Decision::Rejected && !go_on {
        s.error = Some(format!("rejected by {approver}"));
        run.status = RunStatus::Rejected;
        abandon(
            run,
            &format!("abandoned: step `{step}` was rejected"),
            now,
            effects,
        );
        skip_pending_hooks(run);
    } else {
        advance(wf, run, now, effects);
    }
}

/// A run that ends without failing does not run its `on_failure` hooks: they are skipped, not
/// left pending as if they still might run.
pub(super) fn skip_pending_hooks(run: &mut Run) {
    for h in run
        .hooks
        .iter_mut()
        .filter(|h| h.status == StepStatus::Pending)
    {
        h.status = StepStatus::Skipped;
    }
}

/// A step failed for good: remember why, then start what follows (the steps that accept it,
/// or the `on_failure` hooks).
pub(super) fn step_failed(
    wf: &Workflow,
    run: &mut Run,
    failure: Failure,
    now: DateTime<Utc>,
    effects: &mut Vec<Effect>,
) {
    fail_for_good(wf, run, failure, now, effects);
    advance(wf, run, now, effects);
}

/// A step failed for good. Unless it has `continue_on_error` or a step downstream runs on its
/// failure (`when: all_done | any_failed`), the run fails: no new step starts, the steps in
/// flight are abandoned (as on cancel) and the hooks start next. A failing hook changes nothing
/// here: the other hooks still run.
pub(super) fn fail_for_good(
    wf: &Workflow,
    run: &mut Run,
    failure: Failure,
    now: DateTime<Utc>,
    effects: &mut Vec<Effect>,
) {
    if run.hooks.iter().any(|h| h.id == failure.step) || run.failure.is_some() {
        return;
    }
    let def = wf.find_step(&failure.step);
    if def.is_some_and(|d| d.continue_on_error) || wf.failure_accepted(&failure.step) {
        return;
    }
    let why = format!("abandoned: step `{}` failed", failure.step);
    abandon(run, &why, now, effects);
    run.failure = Some(failure);
}

/// The run ends (it failed or was rejected): steps not started are skipped, steps in flight are
/// cancelled (their late outcomes are absorbed) and their calls abandoned.
fn abandon(run: &mut Run, why: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
    let mut in_flight = false;
    for s in run.steps.iter_mut() {
        if s.status == StepStatus::Pending {
            s.status = StepStatus::Skipped;
            s.upstream_failed = true;
        } else if !s.status.is_done() {
            s.status = StepStatus::Cancelled;
            s.finished_at = Some(now);
            s.wake_at = None;
            s.awaiting = None;
            s.error = Some(why.to_string());
            in_flight = true;
            cancel_items(s, why, effects);
            stop_child(s, why, effects);
        }
    }
    if in_flight {
        // Before any effect of the hooks, which must not be abandoned with them.
        effects.push(Effect::AbandonInFlight);
    }
}

/// What a called run's cancel says, before the first cause.
const CALLER_STOPPED: &str = "cancelled with the run that called it";

/// A `call` step that stops while its run goes on: that run is cancelled too, with the first
/// cause (down a chain of calls the reason is passed on as it is, not wrapped again).
fn stop_child(s: &mut StepState, why: &str, effects: &mut Vec<Effect>) {
    if let Some(child) = s.child.as_mut().filter(|c| c.open) {
        child.open = false;
        let reason = if why.starts_with(CALLER_STOPPED) {
            why.to_string()
        } else {
            format!("{CALLER_STOPPED}: {why}")
        };
        effects.push(Effect::CancelChild {
            run_id: child.run_id.clone(),
            reason,
        });
    }
}

/// A `call` step's run ended: the step succeeds with its output when the run succeeded, and
/// fails (for good: the called workflow retries its own steps) otherwise.
#[allow(clippy::too_many_arguments)]
fn child_finished(
    wf: &Workflow,
    run: &mut Run,
    step: &str,
    attempt: u32,
    run_id: Option<&str>,
    status: RunStatus,
    output: Option<Value>,
    error: Option<&str>,
    now: DateTime<Utc>,
    effects: &mut Vec<Effect>,
) {
    let Some(s) = run.step_mut(step) else { return };
    if s.status != StepStatus::Running || s.attempts != attempt {
        return;
    }
    if let Some(c) = s.child.as_mut() {
        c.open = false;
    }
    s.finished_at = Some(now);
    s.output = Some(output::to_value(&CallOutput {
        run_id: run_id.map(str::to_string),
        status: status.as_str().to_string(),
        output: output.unwrap_or(Value::Null),
    }));
    if status == RunStatus::Succeeded {
        s.status = StepStatus::Succeeded;
        advance(wf, run, now, effects);
        return;
    }
    let error = match (error, run_id) {
        (Some(e), _) => e.to_string(),
        (None, Some(id)) => format!("the called run {id} ended {}", status.as_str()),
        (None, None) => format!("the called run ended {}", status.as_str()),
    };
    s.status = StepStatus::Failed;
    s.error = Some(error.clone());
    let failure = Failure {
        step: step.to_string(),
        error,
        status: None,
        body: None,
        attempts: s.attempts,
    };
    step_failed(wf, run, failure, now, effects);
}

/// A `foreach` step that stops: the store records its items in flight as cancelled.
fn cancel_items(s: &mut StepState, why: &str, effects: &mut Vec<Effect>) {
    let Some(fan) = s.fan.as_mut() else { return };
    for a in fan.active.drain(..) {
        effects.push(Effect::ItemDone {
            step: s.id.clone(),
            item: super::effect::ItemResult {
                index: a.index,
                status: "cancelled".into(),
                attempts: a.attempts,
                output: None,
                error: Some(why.to_string()),
            },
        });
    }
    fan.collecting = false;
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
                StepStatus::Retrying
                    | StepStatus::Sleeping
                    | StepStatus::WaitingApproval
                    | StepStatus::WaitingEvent
            ) || (s.status == StepStatus::Running && s.fan.is_some())
        })
        .filter_map(|s| s.wake_at)
        .chain(run.deadline.filter(|_| run.failure.is_none()))
        .min();
    if run.status.is_terminal() {
        if run.finished_at.is_none() {
            run.finished_at = Some(now);
            run.wake_at = None;
            effects.push(Effect::Finished { status: run.status });
            if let Some(parent) = &run.parent {
                let error = match (&run.failure, run.status) {
                    (Some(f), _) => Some(format!(
                        "the called run {} failed at step `{}`: {}",
                        run.id, f.step, f.error
                    )),
                    (None, RunStatus::Succeeded) => None,
                    (None, status) => Some(match &run.cancel_reason {
                        Some(r) => {
                            format!("the called run {} was {}: {r}", run.id, status.as_str())
                        }
                        None => format!("the called run {} ended {}", run.id, status.as_str()),
                    }),
                };
                effects.push(Effect::ReportToParent {
                    parent: parent.clone(),
                    status: run.status,
                    output: run.output.clone(),
                    error,
                });
            }
        }
        return;
    }
    if run.status == RunStatus::Pending {
        return;
    }
    // Running while any step is (or is about to be) called; else what the rest wait for.
    let has = |st: StepStatus| run.active().iter().any(|s| s.status == st);
    run.status = if has(StepStatus::Running) || has(StepStatus::Retrying) {
        RunStatus::Running
    } else if has(StepStatus::WaitingApproval) {
        RunStatus::WaitingApproval
    } else if has(StepStatus::WaitingEvent) {
        RunStatus::WaitingEvent
    } else if has(StepStatus::Sleeping) {
        RunStatus::Sleeping
    } else {
        RunStatus::Running
    };
}

/// Retry a failed run: what failed or did not run starts again (a step with the same dedup id
/// and the next attempt number), and so does everything downstream of it; steps that succeeded
/// upstream stay done.
fn retry_failed(wf: &Workflow, run: &mut Run, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
    let mut again: Vec<bool> = run
        .steps
        .iter()
        .map(|s| match s.status {
            StepStatus::Succeeded => false,
            StepStatus::Skipped => s.upstream_failed,
            _ => true,
        })
        .collect();
    if !again.iter().any(|a| *a) {
        return;
    }
    // Downstream of a step that runs again: needs are earlier steps, so one pass in order.
    for i in 0..run.steps.len() {
        if again[i] {
            continue;
        }
        if let Some(def) = wf.steps.iter().find(|d| d.id == run.steps[i].id) {
            again[i] = def.needs.iter().any(|n| {
                run.steps[..i]
                    .iter()
                    .position(|s| s.id == *n)
                    .is_some_and(|j| again[j])
            });
        }
    }
    let reruns: Vec<bool> = again.clone();
    for (i, again) in again.into_iter().enumerate() {
        if !again {
            continue;
        }
        let def = wf.steps.iter().find(|d| d.id == run.steps[i].id);
        if def.is_some_and(|d| d.foreach.is_some()) {
            // Its list is rendered anew only when something upstream of it runs again.
            let fresh = def.is_some_and(|d| {
                d.needs.iter().any(|n| {
                    run.steps[..i]
                        .iter()
                        .position(|s| s.id == *n)
                        .is_some_and(|j| reruns[j])
                })
            });
            fan::retry(run, i, fresh);
        } else {
            run.steps[i] = StepState::new_from(&run.steps[i]);
        }
    }
    for h in run.hooks.iter_mut() {
        *h = StepState::new_from(h);
    }
    run.failure = None;
    run.finished_at = None;
    run.status = RunStatus::Running;
    // A retried run has its whole `timeout` again, from now.
    run.deadline = wf.timeout.map(|t| later(now, t));
    advance(wf, run, now, effects);
}
