//! Cancelling a run: calls in flight are abandoned, timers cleared, the outbox closed.

use crate::engine::{Event, Run, RunStatus};
use crate::runtime::Executor;
use crate::store::StoreError;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no run `{0}`")]
    NoSuchRun(String),
    /// The run had finished before the cancel was applied (so it did not count).
    #[error("run `{id}` is already {}", .status.as_str())]
    Finished { id: String, status: RunStatus },
    #[error(transparent)]
    Store(StoreError),
}

/// Cancels a run; `reason` is recorded on the steps it stopped.
pub async fn cancel(exec: &Executor, run_id: &str, reason: &str) -> Result<Arc<Run>, CancelError> {
    let event = Event::CancelRequested {
        reason: Some(reason.to_string()),
    };
    let applied = exec.apply(run_id, event).await.map_err(|e| match e {
        StoreError::NoSuchRun(id) => CancelError::NoSuchRun(id),
        e => CancelError::Store(e),
    })?;
    if applied.absorbed {
        return Err(CancelError::Finished {
            id: run_id.to_string(),
            status: applied.run.status,
        });
    }
    Ok(applied.run)
}
