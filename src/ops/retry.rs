//! Retrying a failed run from its failed step: that step starts again with the same dedup id and
//! the next attempt number.

use crate::engine::{Event, Run, RunStatus};
use crate::runtime::Executor;
use crate::store::StoreError;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("no run `{0}`")]
    NoSuchRun(String),
    #[error("only failed runs can be retried; run `{id}` is {}", .status.as_str())]
    NotFailed { id: String, status: RunStatus },
    #[error(transparent)]
    Store(StoreError),
}

pub async fn retry(exec: &Executor, run_id: &str) -> Result<Arc<Run>, RetryError> {
    let applied = exec
        .apply(run_id, Event::RetryRequested)
        .await
        .map_err(|e| match e {
            StoreError::NoSuchRun(id) => RetryError::NoSuchRun(id),
            e => RetryError::Store(e),
        })?;
    if applied.absorbed {
        return Err(RetryError::NotFailed {
            id: run_id.to_string(),
            status: applied.run.status,
        });
    }
    Ok(applied.run)
}
