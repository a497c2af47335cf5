//! Starting a run: check the input against the workflow's `inputs`, create the run pinned to
//! its version, and start it; or fire a schedule slot (the same, with the slot claimed in the
//! transaction that creates the run).
//!
//! A start with an idempotency key used before for the workflow answers that run, when its input
//! is the same (compared after defaults are filled in, as the run keeps it); a different input
//! under the same key is refused (`KeyReused`), as Stripe does, instead of silently answering a
//! run that is not what was asked for.

use crate::engine::{NewRun, Run, Trigger};
use crate::runtime::Executor;
use crate::store::{NewRunRequest, SlotClaim, StoreError, Version};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the input does not match the workflow's `inputs`: {}", .0.join("; "))]
    Input(Vec<String>),
    #[error(
        "the idempotency key `{key}` was used for run `{run_id}` with a different input; use a new key to start another run"
    )]
    KeyReused { key: String, run_id: String },
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

/// A new run's parts, and its `concurrency.key` rendered (a key that cannot be rendered from
/// the input is the input's fault).
fn new_run(
    version: &Version,
    input: &serde_json::Value,
    trigger: Trigger,
    slot: Option<&SlotClaim>,
) -> Result<(NewRun, Option<String>), StartError> {
    let (mut new, key) = NewRun::prepare(
        &version.workflow,
        new_run_id(),
        version.hash.clone(),
        trigger,
        input,
        chrono::Utc::now(),
    )
    .map_err(StartError::Input)?;
    new.scheduled_for = slot.map(|s| s.at);
    new.schedule_id = slot.and_then(|s| crate::schedule::id::public_of_key(&s.schedule));
    Ok((new, key))
}

/// Most queued runs one pass over a key tries to start.
const DEQUEUE_BATCH: u32 = 256;

/// Starts the runs queued behind a workflow's `concurrency.key`, oldest first, while the key
/// has room (the start of each is checked against the limit in its own transaction; the first
/// held back ends the pass).
pub async fn dequeue_key(exec: &Executor, workflow: &str, key: &str) {
    let Ok(queued) = exec
        .store()
        .queued_with_key(workflow, key, DEQUEUE_BATCH)
        .await
    else {
        return;
    };
    for id in queued {
        match exec.apply(&id, crate::engine::Event::Started).await {
            Ok(a) if a.absorbed => return,
            Ok(_) => {
                tracing::info!(run_id = %id, workflow, key, "starting a run queued behind its concurrency key")
            }
            Err(e) => {
                tracing::warn!(run_id = %id, error = %e, "cannot start a queued run");
                return;
            }
        }
    }
}

/// Starts a run of `version` with `input`, a JSON object (`null` is refused: a client that
/// means no input sends `{}`).
pub async fn start(
    exec: &Executor,
    version: Version,
    input: serde_json::Value,
    trigger: Trigger,
    idempotency_key: Option<String>,
) -> Result<Started, StartError> {
    if input.is_null() {
        return Err(StartError::Input(vec![
            "the input must be a JSON object, not null; send `{}` for none".into(),
        ]));
    }
    let (new, concurrency_key) = new_run(&version, &input, trigger, None)?;
    let asked = new.input.clone();
    let applied = exec
        .start(NewRunRequest {
            version,
            new,
            idempotency_key: idempotency_key.clone(),
            slot: None,
            start: true,
            concurrency_key,
            parent: None,
        })
        .await?;
    if !applied.created
        && applied.run.input != asked
        && let Some(key) = idempotency_key
    {
        return Err(StartError::KeyReused {
            key,
            run_id: applied.run.id.clone(),
        });
    }
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
    let (new, concurrency_key) = new_run(&version, &input, Trigger::Schedule, Some(&slot))?;
    let applied = exec
        .start(NewRunRequest {
            version,
            new,
            idempotency_key: None,
            slot: Some(slot),
            start: start_now,
            concurrency_key,
            parent: None,
        })
        .await?;
    Ok((!applied.slot_taken).then_some(applied.run))
}
