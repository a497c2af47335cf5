//! Deciding a step that waits for an approval, over the API or the CLI. (A link from the e-mail
//! decides through `approval_link`.)

use crate::engine::{Event, Run, StepStatus};
use crate::runtime::Executor;
use crate::store::StoreError;
use crate::workflow::output::ApprovalOutput;
use crate::workflow::{Decision, StepKindName};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("no run `{0}`")]
    NoSuchRun(String),
    #[error("run `{run}` has no step `{step}`")]
    NoSuchStep { run: String, step: String },
    #[error("step `{0}` is not an approval step")]
    NotApproval(String),
    /// The step was not waiting when the decision was applied: decided before (`decided`), or
    /// failed, cancelled, skipped.
    #[error("{}", not_waiting(.step, *.status, .decided.as_ref()))]
    NotWaiting {
        step: String,
        status: StepStatus,
        decided: Option<ApprovalOutput>,
    },
    #[error(transparent)]
    Store(StoreError),
}

fn not_waiting(step: &str, status: StepStatus, decided: Option<&ApprovalOutput>) -> String {
    let decided = decided.map_or_else(String::new, |d| format!(" ({})", d.describe()));
    format!(
        "step `{step}` is not waiting for a decision; it is {}{decided}",
        status.as_str()
    )
}

/// Records `decision` on step `step` of run `run_id`, made by `approver`.
pub async fn decide_step(
    exec: &Executor,
    run_id: &str,
    step: &str,
    decision: Decision,
    approver: &str,
    comment: Option<String>,
) -> Result<Arc<Run>, DecideError> {
    let store_err = |e: StoreError| match e {
        StoreError::NoSuchRun(id) => DecideError::NoSuchRun(id),
        e => DecideError::Store(e),
    };
    let run = exec
        .store()
        .get_run(run_id)
        .await
        .map_err(store_err)?
        .ok_or_else(|| DecideError::NoSuchRun(run_id.to_string()))?;
    let Some(s) = run.step(step) else {
        return Err(DecideError::NoSuchStep {
            run: run_id.to_string(),
            step: step.to_string(),
        });
    };
    if s.kind != StepKindName::Approval {
        return Err(DecideError::NotApproval(step.to_string()));
    }
    let event = Event::ApprovalDecided {
        step: step.to_string(),
        decision,
        approver: approver.to_string(),
        comment,
    };
    let applied = exec.apply(run_id, event).await.map_err(store_err)?;
    if applied.absorbed {
        let s = applied.run.step(step);
        return Err(DecideError::NotWaiting {
            step: step.to_string(),
            status: s.map_or(StepStatus::Pending, |s| s.status),
            decided: s
                .and_then(|s| s.output.as_ref())
                .and_then(ApprovalOutput::from_value),
        });
    }
    Ok(applied.run)
}
