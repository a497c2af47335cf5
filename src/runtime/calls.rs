//! `call` steps: starting the called run, telling the calling run how it ended, and cancelling a
//! called run whose caller stopped. Each is an effect kept in the outbox until done, so a crash
//! between a change and its effect loses neither: the called run is started under an
//! idempotency key of the calling step's attempt (started twice, it is found the second time),
//! and a report or cancel that arrives twice is absorbed by the run it reaches.
//!
//! I/O shell.

use super::Executor;
use crate::engine::{
    Effect, Event, MAX_CALL_DEPTH, NewRun, ParentRef, Run, RunStatus, StepStatus, Trigger,
};
use crate::store::{NewRunRequest, StoreError, Version};
use crate::workflow::StepKind;
use std::sync::Arc;
use tracing::{info, warn};

/// The active workflows, by name: what a `call` step starts.
pub trait Versions: Send + Sync {
    fn active(&self, name: &str) -> Option<Version>;
}

impl Executor {
    pub(super) async fn perform_call(&self, run: Arc<Run>, effect: Effect, effect_id: Option<i64>) {
        match effect {
            Effect::StartChild { step, attempt } => {
                let (event, started) = self.start_child(&run, &step, attempt).await;
                match self.record_durably(&run.id, event, None, effect_id).await {
                    Ok(applied) if applied.absorbed && applied.run.status.is_terminal() => {
                        // The caller ended while its run was being started: that run stops too.
                        if let Some(child) = started {
                            self.cancel_child(
                                &child,
                                &format!("cancelled: the run that called it ({}) ended", run.id),
                            )
                            .await;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(run_id = %run.id, step, error = %e, "cannot record the start of a called run")
                    }
                }
            }
            Effect::ReportToParent {
                parent,
                status,
                output,
                error,
            } => {
                let event = Event::ChildFinished {
                    step: parent.step.clone(),
                    attempt: parent.attempt,
                    run_id: Some(run.id.clone()),
                    status,
                    output,
                    error,
                };
                match self.apply(&parent.run_id, event).await {
                    Ok(_) | Err(StoreError::NoSuchRun(_)) => self.done(&run.id, effect_id).await,
                    // Left in the outbox: the next start reports it.
                    Err(e) => {
                        warn!(run_id = %run.id, parent = %parent.run_id, error = %e, "cannot report a called run's end to its caller")
                    }
                }
            }
            Effect::CancelChild { run_id, reason } if self.cancel_child(&run_id, &reason).await => {
                self.done(&run.id, effect_id).await;
            }
            _ => {}
        }
    }

    async fn done(&self, run_id: &str, effect_id: Option<i64>) {
        if let Some(id) = effect_id
            && let Err(e) = self.store().mark_done(run_id, id).await
        {
            warn!(run_id, error = %e, "cannot close a done effect; it is done again later");
        }
    }

    /// Cancels a called run; false when that could not be stored (try again later).
    async fn cancel_child(&self, run_id: &str, reason: &str) -> bool {
        let event = Event::CancelRequested {
            reason: Some(reason.to_string()),
        };
        match self.apply(run_id, event).await {
            Ok(_) | Err(StoreError::NoSuchRun(_)) => true,
            Err(e) => {
                warn!(run_id, error = %e, "cannot cancel a called run");
                false
            }
        }
    }

    /// Starts (or finds) the run of attempt `attempt` of `call` step `step`: the event for the
    /// calling run, and the called run's id when there is one.
    async fn start_child(&self, run: &Run, step: &str, attempt: u32) -> (Event, Option<String>) {
        let failed = |error: String| {
            (
                Event::ChildFinished {
                    step: step.to_string(),
                    attempt,
                    run_id: None,
                    status: RunStatus::Failed,
                    output: None,
                    error: Some(error),
                },
                None,
            )
        };
        let wf = match self.store().workflow_for(run).await {
            Ok(wf) => wf,
            Err(e) => return failed(format!("cannot read the calling workflow: {e}")),
        };
        let Some((def, call)) = wf.find_step(step).and_then(|d| match &d.kind {
            StepKind::Call(c) => Some((d, c)),
            _ => None,
        }) else {
            return failed(format!(
                "step `{step}` is not a `call` step of this version"
            ));
        };
        if run
            .step(step)
            .is_none_or(|s| s.status != StepStatus::Running || s.attempts != attempt)
        {
            // A late effect of an attempt the run is past: the report is absorbed anyway.
            return failed("the step is no longer waiting for this attempt".into());
        }
        let depth = run.parent.as_ref().map_or(0, |p| p.depth) + 1;
        if depth > MAX_CALL_DEPTH {
            return failed(format!(
                "calls nest deeper than {MAX_CALL_DEPTH} runs (does `{}` call itself, directly or through others?)",
                call.workflow
            ));
        }
        let input = match crate::engine::call_input(&wf, run, def, call) {
            Ok(i) => i,
            Err(e) => return failed(e),
        };
        let Some(workflows) = self.workflows() else {
            return failed(
                "this process cannot start other workflows' runs (`runner run`): run the workflow under `runner serve`".into(),
            );
        };
        let Some(version) = workflows.active(&call.workflow) else {
            return failed(format!("no active workflow named `{}`", call.workflow));
        };
        let (new, concurrency_key) = match NewRun::prepare(
            &version.workflow,
            uuid::Uuid::now_v7().to_string(),
            version.hash.clone(),
            Trigger::Call,
            &input,
            chrono::Utc::now(),
        ) {
            Ok(parts) => parts,
            Err(errors) => {
                return failed(format!(
                    "the input does not match the inputs of `{}`: {}",
                    call.workflow,
                    errors.join("; ")
                ));
            }
        };
        let request = NewRunRequest {
            version,
            new,
            // One called run per attempt of the step, however often this is performed.
            idempotency_key: Some(format!("call:{}:{step}:{attempt}", run.id)),
            slot: None,
            start: true,
            concurrency_key,
            parent: Some(ParentRef {
                run_id: run.id.clone(),
                step: step.to_string(),
                attempt,
                depth,
            }),
        };
        match self.start(request).await {
            Ok(applied) => {
                let child = applied.run.id.clone();
                info!(run_id = %run.id, step, child = %child, workflow = %call.workflow, "started a called run");
                (
                    Event::ChildStarted {
                        step: step.to_string(),
                        attempt,
                        run_id: child.clone(),
                    },
                    Some(child),
                )
            }
            Err(e) => failed(format!("cannot start a run of `{}`: {e}", call.workflow)),
        }
    }
}
