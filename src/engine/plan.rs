//! Which steps start next: a run's steps form a graph (`needs`), a step starts once every step
//! it needs is done and its join (`when`) holds; `on_failure` hooks run one at a time. Also what
//! starting a step does (an attempt, a sleep, an approval). The one place that knows the run's
//! shape.
//!
//! Part of the pure core: no I/O.

use super::context::context;
use super::decide::{attempt_effect, fail_for_good, later, skip_pending_hooks, woke};
use super::effect::Effect;
use super::fan;
use super::run::{Awaiting, Failure, Run, RunStatus, StepState, StepStatus};
use crate::workflow::{Join, Step, StepKind, Workflow, template};
use chrono::{DateTime, Utc};

/// Starts every step that can start (or the next hook once the run failed), until the rest
/// have to wait, or the run is done.
pub(super) fn advance(wf: &Workflow, run: &mut Run, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
    if run.failure.is_none() {
        advance_steps(wf, run, now, effects);
    }
    if run.failure.is_some() {
        advance_hooks(wf, run, now, effects);
    }
}

/// Whether a finished step counts as failed for the joins of the steps that need it.
fn counts_as_failed(wf: &Workflow, s: &StepState) -> bool {
    match s.status {
        StepStatus::Failed => !wf.find_step(&s.id).is_some_and(|d| d.continue_on_error),
        StepStatus::Skipped => s.upstream_failed,
        StepStatus::Cancelled => true,
        _ => false,
    }
}

/// Whether the pending step at `index` may start: None while a step it needs is unfinished,
/// else whether its join holds, and whether a need failed.
fn join(wf: &Workflow, run: &Run, index: usize, def: &Step) -> Option<(bool, bool)> {
    let mut failed = false;
    for need in &def.needs {
        let found = run.steps[..index]
            .iter()
            .rev()
            .find(|s| s.id == *need)
            .or_else(|| run.steps.iter().find(|s| s.id == *need));
        match found {
            Some(s) if s.status.is_done() => failed |= counts_as_failed(wf, s),
            Some(_) => return None,
            None => {} // not in this version's run (never happens for a checked workflow)
        }
    }
    let holds = match def.when {
        Join::AllSuccess => !failed,
        Join::AllDone => true,
        Join::AnyFailed => failed,
    };
    Some((holds, failed))
}

fn advance_steps(wf: &Workflow, run: &mut Run, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
    // Needs are earlier steps, most often the one just before: looked for backwards from the
    // step, a pass over a chain costs the number of steps, not steps × steps. A run's steps are
    // its version's, in order, so a step's definition is at its own index.
    let def_of = |index: usize, id: &str| -> Option<&Step> {
        wf.steps
            .get(index)
            .filter(|d| d.id == id)
            .or_else(|| wf.steps.iter().find(|d| d.id == id))
    };
    // A pass starts what can start; another is needed only when a step finished on the spot
    // (skipped, a sleep already due, a step that could not start), which may free others.
    loop {
        let mut finished_one = false;
        for index in 0..run.steps.len() {
            if run.failure.is_some() || run.status.is_terminal() {
                return;
            }
            if run.steps[index].status != StepStatus::Pending {
                continue;
            }
            let Some(def) = def_of(index, &run.steps[index].id) else {
                // The stored run and its workflow version disagree: fail loudly, never loop.
                let id = run.steps[index].id.clone();
                let error = format!("step `{id}` is not in workflow version {}", run.version);
                start_failed(wf, run, false, index, error, now, effects);
                finished_one = true;
                continue;
            };
            let Some((holds, need_failed)) = join(wf, run, index, def) else {
                continue;
            };
            if !holds {
                let s = &mut run.steps[index];
                s.status = StepStatus::Skipped;
                s.finished_at = Some(now);
                s.upstream_failed = need_failed;
                finished_one = true;
                continue;
            }
            if start(wf, run, false, index, def, now, effects) {
                finished_one = true;
            }
        }
        if !finished_one {
            break;
        }
    }
    if run.failure.is_none()
        && !run.status.is_terminal()
        && run.steps.iter().all(|s| s.status.is_done())
    {
        skip_pending_hooks(run);
        match render_output(wf, run) {
            Ok(output) => {
                run.output = output;
                run.status = RunStatus::Succeeded;
            }
            Err(error) => {
                run.failure = Some(Failure {
                    step: "output".into(),
                    error,
                    status: None,
                    body: None,
                    attempts: 0,
                });
                run.status = RunStatus::Failed;
            }
        }
    }
}

/// The workflow's `output:` rendered over the finished steps (None: it has none).
fn render_output(wf: &Workflow, run: &Run) -> Result<Option<serde_json::Value>, String> {
    let Some(out) = &wf.output else {
        return Ok(None);
    };
    let ctx = template::context(&context(wf, run, None));
    template::render_engine_json(out, &ctx)
        .map(Some)
        .map_err(|e| format!("the workflow's `output` cannot be rendered: {e}"))
}

fn advance_hooks(wf: &Workflow, run: &mut Run, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
    loop {
        let Some(index) = run.hooks.iter().position(|s| !s.status.is_done()) else {
            run.status = RunStatus::Failed;
            return;
        };
        if run.hooks[index].status != StepStatus::Pending {
            return; // already in flight
        }
        let Some(def) = wf.on_failure.iter().find(|d| d.id == run.hooks[index].id) else {
            let id = run.hooks[index].id.clone();
            let error = format!("hook `{id}` is not in workflow version {}", run.version);
            start_failed(wf, run, true, index, error, now, effects);
            continue;
        };
        if !start(wf, run, true, index, def, now, effects) {
            return;
        }
    }
}

/// Starts a step whose turn it is. Returns true when it finished on the spot (skipped by its
/// `if`, a sleep already due, a step that could not start).
fn start(
    wf: &Workflow,
    run: &mut Run,
    hooks: bool,
    index: usize,
    def: &Step,
    now: DateTime<Utc>,
    effects: &mut Vec<Effect>,
) -> bool {
    // The template context is built only for steps that need one (it copies every output).
    let ctx = |run: &Run| template::context(&context(wf, run, None));
    if let Some(cond) = &def.condition {
        match template::eval_condition(cond.as_str(), &ctx(run)) {
            Ok(true) => {}
            Ok(false) => {
                mark(run, hooks, index, |s| {
                    s.status = StepStatus::Skipped;
                    s.finished_at = Some(now);
                });
                return true;
            }
            Err(e) => {
                let error = format!("the `if` condition of step `{}` failed: {e}", def.id);
                start_failed(wf, run, hooks, index, error, now, effects);
                return true;
            }
        }
    }
    match &def.kind {
        StepKind::Http(_) | StepKind::Email(_) if def.foreach.is_some() => {
            let fe = def.foreach.as_ref().expect("checked");
            if run.steps[index].fan.as_ref().is_some_and(|f| f.resume) {
                fan::resume(run, index, now, effects);
                return false;
            }
            match fan::start(wf, run, index, def, fe, now, effects) {
                Ok(()) => false,
                Err(error) => {
                    start_failed(wf, run, hooks, index, error, now, effects);
                    true
                }
            }
        }
        StepKind::Http(_) | StepKind::Email(_) => {
            let mut attempt = 1;
            mark(run, hooks, index, |s| {
                s.status = StepStatus::Running;
                s.attempts += 1;
                attempt = s.attempts;
                s.started_at = Some(now);
            });
            effects.push(attempt_effect(def, attempt, None));
            false
        }
        StepKind::Sleep(d) => {
            let until = later(now, *d);
            sleep_until(run, hooks, index, until, now)
        }
        StepKind::SleepUntil(t) => match template::render_engine_text(t.as_str(), &ctx(run))
            .map_err(|e| e.to_string())
            .and_then(|s| {
                DateTime::parse_from_rfc3339(s.trim())
                    .map(|d| d.with_timezone(&Utc))
                    .map_err(|e| format!("`{s}` is not an RFC 3339 time: {e}"))
            }) {
            Ok(until) => sleep_until(run, hooks, index, until, now),
            Err(e) => {
                let error = format!("`sleep_until` of step `{}`: {e}", def.id);
                start_failed(wf, run, hooks, index, error, now, effects);
                true
            }
        },
        StepKind::WaitForEvent(w) => {
            let key = match &w.key {
                None => Ok(String::new()),
                Some(t) => {
                    template::render_engine_text(t.as_str(), &ctx(run)).map_err(|e| e.to_string())
                }
            };
            match key {
                Ok(key) => {
                    let until = later(now, w.timeout);
                    mark(run, hooks, index, |s| {
                        s.status = StepStatus::WaitingEvent;
                        s.started_at = Some(now);
                        s.wake_at = Some(until);
                        s.awaiting = Some(Awaiting {
                            event: w.event.clone(),
                            key: key.clone(),
                        });
                    });
                    effects.push(Effect::AwaitEvent {
                        step: def.id.clone(),
                        event: w.event.clone(),
                        key,
                    });
                    false
                }
                Err(e) => {
                    let error = format!("the `key` of step `{}`: {e}", def.id);
                    start_failed(wf, run, hooks, index, error, now, effects);
                    true
                }
            }
        }
        StepKind::Call(c) => {
            // The input is rendered now, from what the steps before produced, and kept with
            // the effect's step and attempt: the shell renders the same again to start the run.
            if let Err(e) = call_input(wf, run, def, c) {
                start_failed(wf, run, hooks, index, e, now, effects);
                return true;
            }
            let mut attempt = 1;
            mark(run, hooks, index, |s| {
                s.status = StepStatus::Running;
                s.attempts += 1;
                attempt = s.attempts;
                s.started_at = Some(now);
                s.child = None;
            });
            effects.push(Effect::StartChild {
                step: def.id.clone(),
                attempt,
            });
            false
        }
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
            false
        }
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

/// Returns true when the sleep was already due (the step is done).
fn sleep_until(
    run: &mut Run,
    hooks: bool,
    index: usize,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
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
    until <= now
}

/// A step could not even start (bad condition or template): it failed for good.
fn start_failed(
    wf: &Workflow,
    run: &mut Run,
    hooks: bool,
    index: usize,
    error: String,
    now: DateTime<Utc>,
    effects: &mut Vec<Effect>,
) {
    mark(run, hooks, index, |s| {
        s.status = StepStatus::Failed;
        s.started_at = Some(now);
        s.finished_at = Some(now);
        s.error = Some(error.clone());
    });
    if hooks {
        return;
    }
    let step = run.steps[index].id.clone();
    fail_for_good(
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
}

/// The input a `call` step gives the run it starts: its `input` rendered over the run.
pub fn call_input(
    wf: &Workflow,
    run: &Run,
    def: &crate::workflow::Step,
    call: &crate::workflow::Call,
) -> Result<serde_json::Value, String> {
    let Some(input) = &call.input else {
        return Ok(serde_json::json!({}));
    };
    let ctx = template::context(&context(wf, run, None));
    template::render_engine_json(input, &ctx)
        .map_err(|e| format!("rendering the `input` of step `{}`: {e}", def.id))
}
