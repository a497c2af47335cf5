//! The JSON form of a run for people and clients: `runner show --json` and the HTTP API.
//!
//! I/O shell (reads the attempts of the run).

use super::Store;

/// The JSON form of a run used by `runner show --json` and the HTTP API.
pub fn run_json(
    store: &Store,
    run: &crate::engine::machine::Run,
) -> anyhow::Result<serde_json::Value> {
    let attempts = store.attempts(&run.id)?;
    // Only a run with an approval step has approval e-mails to read.
    let emails = if run.steps.iter().any(|s| s.kind == "approval") {
        store.approval_emails(&run.id)?
    } else {
        Vec::new()
    };
    let step_json = |s: &crate::engine::machine::StepState| {
        let mine: Vec<serde_json::Value> = attempts
            .iter()
            .filter(|a| a.step == s.id)
            .map(|a| {
                serde_json::json!({
                    "attempt": a.attempt,
                    "started_at": a.started_at,
                    "finished_at": a.finished_at,
                    "duration_ms": match (a.started_at, a.finished_at) { (Some(x), Some(y)) => Some((y - x).num_milliseconds()), _ => None },
                    "status": a.status,
                    "outcome": a.outcome,
                    "error": a.error,
                    "request": a.request,
                    "response": a.response,
                })
            })
            .collect();
        let mut step = serde_json::json!({
            "id": s.id,
            "kind": s.kind,
            "status": s.status.as_str(),
            "attempts": s.attempts,
            "started_at": s.started_at,
            "finished_at": s.finished_at,
            "wake_at": s.wake_at,
            "error": s.error,
            "output": s.output,
            "dedup_id": crate::engine::request::message_id(run, &s.id, s.attempts.max(1)).0,
            "attempt_log": mine,
        });
        // Whom an approval step asked, and whether each e-mail got out (delivery is retried
        // until the deadline; until then only the daemon's log said why not).
        if s.kind == "approval" {
            step["emails"] = serde_json::json!(
                emails
                    .iter()
                    .filter(|e| e.step == s.id)
                    .map(|e| serde_json::json!({
                        "to": e.recipient,
                        "sent_at": e.mailed_at,
                        "expires_at": e.expires_at,
                        "current": s.wake_at.map(|w| w.timestamp_millis()) == Some(e.expires_at.timestamp_millis()),
                    }))
                    .collect::<Vec<_>>()
            );
        }
        step
    };
    Ok(serde_json::json!({
        "id": run.id,
        "workflow": run.workflow,
        "version": run.version,
        "status": run.status.as_str(),
        "trigger": run.trigger,
        "input": run.input,
        "scheduled_for": run.scheduled_for,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "waiting_for": run.waiting_for(),
        "wake_at": run.wake_at,
        "failure": run.failure,
        "steps": run.steps.iter().map(step_json).collect::<Vec<_>>(),
        "on_failure": run.hooks.iter().map(step_json).collect::<Vec<_>>(),
    }))
}
