//! Sending an event to runner (`POST /api/v1/events/{event}`, `runner notify`): it is recorded
//! (kept for lookback; a retried send with the same id is the same event), then delivered to the
//! runs waiting for its name and key (`wait_for_event` steps, `cancel_on` entries), and starts a
//! run of each workflow that starts on it (`on.event`, the event id being the idempotency key).
//!
//! I/O shell. The delivery is done after the event's commit and ends by recording which runs it
//! reached; a delivery that a crash cut short is done again (`redeliver`), which is harmless:
//! a run that already took the event absorbs it, a start with the same key answers the run it
//! started.

use super::Workflows;
use crate::engine::{Trigger, is_cancel_wait};
use crate::runtime::Executor;
use crate::store::{InboundEvent, NewInboundEvent, StoreError};
use chrono::Utc;
use serde::Serialize;

/// What an event reached.
#[derive(Debug, Clone, Serialize)]
pub struct Notified {
    /// The event's id (the sender's, or the one runner gave it).
    pub id: String,
    /// The same name and id had been sent before: this is that event, delivered then.
    pub duplicate: bool,
    /// Runs whose `wait_for_event` step took it.
    pub delivered: Vec<String>,
    /// Runs it cancelled (`cancel_on`).
    pub cancelled: Vec<String>,
    /// Runs it started (`on.event`).
    pub started: Vec<String>,
    /// Workflows that start on it but refused its data as their input.
    pub refused: Vec<Refused>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Refused {
    pub workflow: String,
    pub errors: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(
        "`{0}` is not a valid event name: use letters, digits and `.`, `_`, `-`, `:`, `/`, at most 200"
    )]
    Name(String),
    #[error("the key must be at most 1,000 bytes")]
    Key,
    #[error("the id must be 1 to 256 visible ASCII characters")]
    Id,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Records an event and delivers it.
pub async fn notify(
    exec: &Executor,
    workflows: &dyn Workflows,
    name: &str,
    key: Option<String>,
    data: serde_json::Value,
    id: Option<String>,
) -> Result<Notified, NotifyError> {
    if !crate::workflow::valid_event_name(name) {
        return Err(NotifyError::Name(name.to_string()));
    }
    let key = key.unwrap_or_default();
    if key.len() > 1000 {
        return Err(NotifyError::Key);
    }
    let id = match id {
        Some(id)
            if id.is_empty() || id.len() > 256 || !id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            return Err(NotifyError::Id);
        }
        Some(id) => id,
        None => format!("evt_{}", uuid::Uuid::now_v7().simple()),
    };
    let recorded = exec
        .store()
        .record_event(
            NewInboundEvent {
                name: name.to_string(),
                id,
                key,
                data,
            },
            Utc::now(),
        )
        .await?;
    let event = recorded.event;
    if recorded.duplicate
        && let Some(runs) = &event.delivered
    {
        // Delivered the first time: answer what it reached then (each list is kept whole).
        return Ok(Notified {
            id: event.id.clone(),
            duplicate: true,
            delivered: runs.clone(),
            cancelled: vec![],
            started: vec![],
            refused: vec![],
        });
    }
    let mut out = deliver(exec, workflows, &event).await?;
    out.duplicate = recorded.duplicate;
    Ok(out)
}

/// Delivers a recorded event to the runs waiting for it and starts the runs it starts, then
/// records that its delivery ended.
async fn deliver(
    exec: &Executor,
    workflows: &dyn Workflows,
    event: &InboundEvent,
) -> Result<Notified, NotifyError> {
    let mut out = Notified {
        id: event.id.clone(),
        duplicate: false,
        delivered: vec![],
        cancelled: vec![],
        started: vec![],
        refused: vec![],
    };
    let waits = exec
        .store()
        .event_waits(&event.name, &event.key, event.received_at)
        .await?;
    for w in waits {
        let cancels = is_cancel_wait(&w.step);
        let received = crate::store::received_event(w.step, event.clone());
        match exec.apply(&w.run_id, received).await {
            Ok(applied) if !applied.absorbed => {
                if cancels {
                    out.cancelled.push(w.run_id);
                } else {
                    out.delivered.push(w.run_id);
                }
            }
            Ok(_) | Err(StoreError::NoSuchRun(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for version in workflows.on_event(&event.name) {
        let name = version.workflow.name.clone();
        let key = format!("event:{}:{}", event.name, event.id);
        match super::start::start(exec, version, event.data.clone(), Trigger::Event, Some(key))
            .await
        {
            Ok(started) => out.started.push(started.run.id.clone()),
            Err(super::start::StartError::Input(errors)) => out.refused.push(Refused {
                workflow: name,
                errors,
            }),
            Err(super::start::StartError::KeyReused { run_id, .. }) => out.started.push(run_id),
            Err(super::start::StartError::Store(e)) => return Err(e.into()),
        }
    }
    let reached: Vec<String> = out
        .delivered
        .iter()
        .chain(&out.cancelled)
        .chain(&out.started)
        .cloned()
        .collect();
    exec.store()
        .mark_event_delivered(event.seq, reached)
        .await?;
    Ok(out)
}

/// Delivers again the events whose delivery a crash cut short (received more than `age` ago,
/// so a delivery in progress is left alone); answers how many.
pub async fn redeliver(
    exec: &Executor,
    workflows: &dyn Workflows,
    age: std::time::Duration,
) -> Result<usize, NotifyError> {
    let before = Utc::now() - chrono::Duration::from_std(age).unwrap_or_default();
    let events = exec.store().undelivered_events(before, 100).await?;
    let n = events.len();
    for e in events {
        deliver(exec, workflows, &e).await?;
    }
    Ok(n)
}

/// Deletes delivered events older than the retention, in batches; answers how many.
pub async fn prune(exec: &Executor, retention: std::time::Duration) -> Result<u64, StoreError> {
    let before = Utc::now() - chrono::Duration::from_std(retention).unwrap_or_default();
    let mut total = 0;
    for _ in 0..100 {
        let n = exec.store().prune_events(before, 1000).await?;
        total += n;
        if n < 1000 {
            break;
        }
    }
    Ok(total)
}
