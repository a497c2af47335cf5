//! Which steps start next: the order of a workflow's steps, one at a time, and what starting a
//! step does (an attempt, a sleep, an approval). The one place that knows the run's shape.
//!
//! Part of the pure core: no I/O.

use super::context::context;
use super::decide::{attempt_effect, later, skip_pending_hooks, step_failed, woke};
use super::effect::Effect;
use super::run::{Failure, Run, RunStatus, StepState, StepStatus};
use crate::workflow::{StepKind, Workflow, template};
use chrono::{DateTime, Utc};

/// Starts steps until one has to wait, or the run (or its hooks) is done.
pub(super) fn advance(wf: &Workflow, run: &mut Run, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
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
            StepKind::SleepUntil(t) => match template::render_engine_text(t.as_str(), &ctx())
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
