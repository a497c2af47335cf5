//! Starting a run: check the input against the workflow's `inputs`, create the run pinned to
//! its version, and start it; or fire a schedule slot (the same, with the slot claimed in the
//! transaction that creates the run).

use crate::engine::{NewRun, Run, Trigger};
use crate::runtime::Executor;
use crate::store::{NewRunRequest, SlotClaim, StoreError, Version};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the input does not match the workflow's `inputs`: {}", .0.join("; "))]
    Input(Vec<String>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A started run, and whether it is new (false: an idempotency key matched an earlier run).
#[derive(Debug)]
pub struct Started {
    pub run: Arc<Run>,
    pub created: bool,
}

/// A new run id: UUID v7, so ids sort by creation time.
pub fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn new_run(
    version: &Version,
    input: &serde_json::Value,
    trigger: Trigger,
    slot: Option<&SlotClaim>,
) -> Result<NewRun, StartError> {
    let input =
        crate::workflow::resolve_input(&version.workflow, input).map_err(StartError::Input)?;
    Ok(NewRun {
        id: new_run_id(),
        version: version.hash.clone(),
        trigger,
        input,
        scheduled_for: slot.map(|s| s.at),
        schedule_id: slot.and_then(|s| crate::schedule::id::public_of_key(&s.schedule)),
    })
}

/// Starts a run of `version` with `input`.
pub async fn start(
    exec: &Executor,
    version: Version,
    input: serde_json::Value,
    trigger: Trigger,
    idempotency_key: Option<String>,
) -> Result<Started, StartError> {
    let new = new_run(&version, &input, trigger, None)?;
    let applied = exec
        .start(NewRunRequest {
            version,
            new,
            idempotency_key,
            slot: None,
            start: true,
        })
        .await?;
    Ok(Started {
        run: applied.run,
        created: applied.created,
    })
}

/// Fires a schedule slot: claims it and creates the run (started, or queued when `start_now` is
/// false) in one transaction. Answers None when the slot had already been handled.
pub async fn fire(
    exec: &Executor,
    version: Version,
    input: serde_json::Value,
    slot: SlotClaim,
    start_now: bool,
) -> Result<Option<Arc<Run>>, StartError> {
    let new = new_run(&version, &input, Trigger::Schedule, Some(&slot))?;
    let applied = exec
        .start(NewRunRequest {
            version,
            new,
            idempotency_key: None,
            slot: Some(slot),
            start: start_now,
        })
        .await?;
    Ok((!applied.slot_taken).then_some(applied.run))
}
