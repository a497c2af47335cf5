//! What templates see of a run: `input`, `steps`, `run`, `workflow`, `secrets`, `failure`.
//!
//! Part of the pure core: no I/O.

use super::run::Run;
use crate::workflow::Workflow;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// The context templates see, without secrets (the dispatcher adds them for requests).
pub fn context(
    wf: &Workflow,
    run: &Run,
    secrets: Option<&serde_json::Map<String, Value>>,
) -> Value {
    context_with(wf, run, secrets, |_| true)
}

/// [`context`] with only the outputs of the steps `wanted` names: a step's templates read few
/// steps, and copying every earlier output (a fan-out's items, a large body) for each of a
/// fan-out's items would cost their size each time.
pub(super) fn context_with(
    wf: &Workflow,
    run: &Run,
    secrets: Option<&serde_json::Map<String, Value>>,
    wanted: impl Fn(&str) -> bool,
) -> Value {
    let mut steps = serde_json::Map::new();
    for s in run.steps.iter().chain(run.hooks.iter()) {
        if let Some(out) = &s.output
            && wanted(&s.id)
        {
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
