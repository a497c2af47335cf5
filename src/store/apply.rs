//! A state change, written once for every backend: create a run, or apply an event to one,
//! in one transaction.
//!
//! I/O shell, but no SQL: the steps are written against [`RunTx`], the few operations a backend's
//! transaction offers (read a run, write its row, append an event, queue and close effects).
//! `decide` runs here, inside the transaction, on the state the transaction read, so two changes
//! to one run never both pass on a stale state, and whether an event was absorbed is known
//! before the commit. Each backend keeps its own SQL and its own way of batching transactions.

use super::StoreError;
use super::types::{Applied, AttemptRecord, InboundEvent, NewRunRequest, SlotClaim, Version};
use crate::engine::run_key::Admission;
use crate::engine::{self, Effect, Event, Run, StepStatus};
use crate::workflow::Workflow;
use crate::workflow::output::ItemOutput;
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// Outbox ids are `event seq × EFFECTS_PER_EVENT + index`: unique within a run and never reused
/// (a late "done" for an old effect cannot delete a new one).
pub(crate) const EFFECTS_PER_EVENT: i64 = 1024;

/// A run as a transaction read it: its state, stored revision, and the number of its next event
/// when known (a backend's cache knows it; otherwise [`RunTx::next_seq`] looks it up).
pub(crate) struct Loaded {
    pub run: Arc<Run>,
    pub rev: i64,
    pub next_seq: Option<i64>,
}

/// What a change writes to a run's row.
pub(crate) enum RunWrite<'a> {
    /// A new run, at revision 0.
    Insert {
        run: &'a Run,
        state: &'a str,
        idempotency_key: Option<&'a str>,
        schedule: Option<&'a str>,
    },
    /// The new state of a run. `status_changed`: its status or `finished_at` moved (they are
    /// indexed; a backend may leave them out of the update when they did not).
    Update {
        run: &'a Run,
        state: &'a str,
        rev_before: i64,
        at: DateTime<Utc>,
        status_changed: bool,
    },
    /// Only the revision moves: an absorbed event grew the run's log.
    Touch { id: &'a str, rev_before: i64 },
}

/// One event appended to a run's log.
pub(crate) struct EventWrite<'a> {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub kind: &'a str,
    pub data: &'a str,
    /// The attempt record kept with an attempt's outcome, as stored (JSON).
    pub attempt: Option<&'a str>,
}

/// The operations of one backend transaction that a change needs. SQLite's never wait (its
/// futures are ready when first polled); PostgreSQL's do.
#[allow(async_fn_in_trait)]
pub(crate) trait RunTx {
    async fn load_run(&mut self, id: &str) -> Result<Option<Loaded>, StoreError>;
    /// The number of the run's next event, looked up (the cache did not know it).
    async fn next_seq(&mut self, id: &str) -> Result<i64, StoreError>;
    async fn version(&mut self, hash: &str) -> Result<Arc<Workflow>, StoreError>;
    async fn insert_version(&mut self, v: &Version, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// Claims a schedule slot for `run_id` and moves the schedule's mark; false when the slot
    /// was claimed before.
    async fn claim_slot(
        &mut self,
        claim: &SlotClaim,
        run_id: &str,
        outcome: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    async fn find_idempotent(
        &mut self,
        workflow: &str,
        key: &str,
    ) -> Result<Option<Run>, StoreError>;
    async fn write_run(&mut self, w: &RunWrite<'_>) -> Result<(), StoreError>;
    async fn append_event(&mut self, run_id: &str, e: &EventWrite<'_>) -> Result<(), StoreError>;
    async fn delete_effect(&mut self, run_id: &str, id: i64) -> Result<(), StoreError>;
    /// Deletes every effect still queued for a run (it finished).
    async fn close_outbox(&mut self, run_id: &str) -> Result<(), StoreError>;
    async fn enqueue(
        &mut self,
        run_id: &str,
        id: i64,
        effect: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// A `foreach` step's items as its list rendered (any rows of an earlier list go).
    async fn save_items(
        &mut self,
        run_id: &str,
        step: &str,
        items: &[engine::NewItem],
    ) -> Result<(), StoreError>;
    /// One item ended.
    async fn finish_item(
        &mut self,
        run_id: &str,
        step: &str,
        item: &engine::ItemResult,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Every item of a `foreach` step with its result, in order (this change's writes included).
    async fn load_items(&mut self, run_id: &str, step: &str)
    -> Result<Vec<ItemOutput>, StoreError>;
    /// Keeps a run's wait for an event (replacing the step's earlier one) and answers the
    /// first event of that name and key received since `since`, if any (lookback). On a shared
    /// database the wait and the recording of an event of the same name and key are
    /// serialized, so that one of them always sees the other.
    async fn await_event(
        &mut self,
        run_id: &str,
        step: &str,
        event: &str,
        key: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<InboundEvent>, StoreError>;
    async fn end_await(&mut self, run_id: &str, step: &str) -> Result<(), StoreError>;
    /// Serializes, on a shared database, the transactions that count and start the runs of a
    /// workflow with one `concurrency.key` (until the commit).
    async fn lock_run_key(&mut self, workflow: &str, key: &str) -> Result<(), StoreError>;
    /// The unfinished runs of a workflow with a `concurrency.key`, oldest first.
    async fn runs_with_key(&mut self, workflow: &str, key: &str) -> Result<KeyedRuns, StoreError>;
    /// Deletes every wait of a run (it finished).
    async fn close_waits(&mut self, run_id: &str) -> Result<(), StoreError>;
    /// The run's state after this change, for the backend's cache (kept only if it commits).
    fn remember(&mut self, run: &Arc<Run>, rev: i64, next_seq: i64);
    fn forget(&mut self, id: &str);
}

/// The unfinished runs of a workflow with one `concurrency.key`.
#[derive(Debug, Default)]
pub(crate) struct KeyedRuns {
    /// Started and not finished, oldest first.
    pub going: Vec<String>,
    /// Created `pending`: waiting to start.
    pub queued: usize,
}

impl KeyedRuns {
    pub(crate) fn add(&mut self, id: String, status: &str) {
        if status == engine::RunStatus::Pending.as_str() {
            self.queued += 1;
        } else {
            self.going.push(id);
        }
    }
}

/// An event for a run, with what is stored beside it, serialized by the caller (the writer is
/// what every change waits for, so it does no work a caller can do).
pub(crate) struct ApplyEvent {
    pub run_id: String,
    pub event: Event,
    /// The event as stored (JSON).
    pub data: String,
    pub attempt: Option<RecordedAttempt>,
    /// The outbox row of the effect whose outcome this is.
    pub done_effect: Option<i64>,
}

/// An attempt record as stored, with what says which attempt it belongs to.
pub(crate) struct RecordedAttempt {
    pub step: String,
    pub attempt: u32,
    /// The item of a `foreach` step.
    pub item: Option<u32>,
    pub json: String,
}

impl RecordedAttempt {
    pub(crate) fn new(record: &AttemptRecord) -> RecordedAttempt {
        RecordedAttempt {
            step: record.step.clone(),
            attempt: record.attempt,
            item: record.item,
            json: serde_json::to_string(record).expect("an attempt record serializes"),
        }
    }

    /// Whether the run is waiting for this attempt's outcome (so the record is taken).
    fn current(&self, run: &Run) -> bool {
        let Some(s) = run.step(&self.step) else {
            return false;
        };
        if s.status != StepStatus::Running {
            return false;
        }
        match self.item {
            None => s.attempts == self.attempt,
            Some(i) => s.fan.as_ref().is_some_and(|f| {
                f.active.iter().any(|a| {
                    a.index == i && a.status == StepStatus::Running && a.attempts == self.attempt
                })
            }),
        }
    }
}

/// The most item collections one change may run (each ends a `foreach` step or resumes one).
const MAX_COLLECTIONS: usize = 1024;

/// Carries out the store's orders among a change's effects in its transaction (items saved,
/// an item's end, items read back and handed to the machine as `ItemsCollected`), and returns
/// the run as they leave it with the effects left to perform.
async fn store_orders<T: RunTx>(
    tx: &mut T,
    wf: &Workflow,
    mut run: Run,
    effects: Vec<Effect>,
    now: DateTime<Utc>,
) -> Result<(Run, Vec<Effect>), StoreError> {
    if !effects.iter().any(Effect::is_store) {
        return Ok((run, effects));
    }
    let mut queue: std::collections::VecDeque<Effect> = effects.into();
    let mut out = Vec::new();
    let mut collections = 0;
    while let Some(effect) = queue.pop_front() {
        match effect {
            Effect::SaveItems { step, items } => {
                tx.save_items(&run.id, &step, &items).await?;
                // The executor keeps them for the items' attempts.
                out.push(Effect::SaveItems { step, items });
            }
            Effect::ItemDone { step, item } => tx.finish_item(&run.id, &step, &item, now).await?,
            Effect::CollectItems { step } => {
                collections += 1;
                if collections > MAX_COLLECTIONS {
                    return Err(StoreError::Corrupt {
                        id: run.id.clone(),
                        message:
                            "a change collected the items of `foreach` steps more than 1024 times"
                                .into(),
                    });
                }
                let items = tx.load_items(&run.id, &step).await?;
                let (next, more) =
                    engine::decide(wf, &run, &Event::ItemsCollected { step, items }, now);
                run = next;
                queue.extend(more);
            }
            Effect::AwaitEvent { step, event, key } => {
                let Some(got) = tx
                    .await_event(&run.id, &step, &event, &key, run.created_at)
                    .await?
                else {
                    continue;
                };
                let (next, more) = engine::decide(wf, &run, &received(step, got), now);
                run = next;
                queue.extend(more);
            }
            Effect::EndAwait { step } => tx.end_await(&run.id, &step).await?,
            other => out.push(other),
        }
    }
    // A run that finished absorbs a later `ItemsCollected`: `Finished` is among these once.
    Ok((run, out))
}

/// The event a waiting step (or a `cancel_on` wait) receives for an event sent to runner.
pub(crate) fn received(step: String, e: InboundEvent) -> Event {
    Event::EventReceived {
        step,
        event: e.name,
        key: e.key,
        id: e.id,
        data: e.data,
        received_at: e.received_at,
    }
}

/// Whether runs of this workflow ever wait for events (their waits are deleted when they end).
fn waits(wf: &Workflow) -> bool {
    !wf.cancel_on.is_empty()
        || wf
            .steps
            .iter()
            .any(|s| matches!(s.kind, crate::workflow::StepKind::WaitForEvent(_)))
}

fn state_json(run: &Run) -> String {
    serde_json::to_string(run).expect("a run serializes")
}

/// Creates a run pinned to its version and, unless it is queued, starts it.
pub(crate) async fn start<T: RunTx>(
    tx: &mut T,
    req: &NewRunRequest,
    now: DateTime<Utc>,
) -> Result<Applied, StoreError> {
    let wf = req.version.workflow.clone();
    if let Some(claim) = &req.slot {
        let outcome = if req.start { "started" } else { "queued" };
        if !tx.claim_slot(claim, &req.new.id, outcome, now).await? {
            return Ok(Applied {
                run: Arc::new(Run::new(&wf, req.new.clone(), now)),
                effects: vec![],
                created: false,
                slot_taken: true,
                absorbed: false,
                displaced: vec![],
            });
        }
    }
    if let Some(key) = &req.idempotency_key
        && let Some(run) = tx.find_idempotent(&wf.name, key).await?
    {
        return Ok(Applied {
            run: Arc::new(run),
            effects: vec![],
            created: false,
            slot_taken: false,
            absorbed: false,
            displaced: vec![],
        });
    }
    tx.insert_version(&req.version, now).await?;
    let mut run = Run::new(&wf, req.new.clone(), now);
    run.concurrency_key = req.concurrency_key.clone();
    run.parent = req.parent.clone();
    let (first, displaced) = first_event(tx, &wf, &run, req.start).await?;
    // A run that starts now is stored as its first event leaves it: one row written once,
    // instead of a pending row updated in the same transaction.
    let (run, started) = match &first {
        Some(event) => {
            let (next, effects) = engine::decide(&wf, &run, event, now);
            let (next, effects) = store_orders(tx, &wf, next, effects, now).await?;
            (next, Some(effects))
        }
        None => (run, None),
    };
    let state = state_json(&run);
    tx.write_run(&RunWrite::Insert {
        run: &run,
        state: &state,
        idempotency_key: req.idempotency_key.as_deref(),
        schedule: req.slot.as_ref().map(|c| c.schedule.as_str()),
    })
    .await?;
    let created = serde_json::json!({"trigger": run.trigger, "version": run.version}).to_string();
    tx.append_event(
        &run.id,
        &EventWrite {
            seq: 1,
            at: now,
            kind: "created",
            data: &created,
            attempt: None,
        },
    )
    .await?;
    let run = Arc::new(run);
    let (Some(effects), Some(event)) = (started, first) else {
        tx.remember(&run, 0, 2);
        return Ok(Applied {
            run,
            effects: vec![],
            created: true,
            slot_taken: false,
            absorbed: false,
            displaced: vec![],
        });
    };
    let data = serde_json::to_string(&event).expect("an event serializes");
    let change = Change {
        rev: 0,
        seq: 2,
        kind: event.name(),
        data: &data,
        attempt: None,
    };
    let mut applied = record_change(tx, run, change, effects, waits(&wf), now).await?;
    applied.created = true;
    applied.displaced = displaced;
    Ok(applied)
}

/// A new run's first event: `Started`; none when it waits (queued behind the runs of its
/// schedule, or of its `concurrency.key`); a cancel when it gives way to the runs of its key
/// (`on_limit: skip`). With `on_limit: cancel_running`, also the runs it displaces, oldest
/// first, for the caller to cancel once this commits.
async fn first_event<T: RunTx>(
    tx: &mut T,
    wf: &Workflow,
    run: &Run,
    start: bool,
) -> Result<(Option<Event>, Vec<String>), StoreError> {
    let (Some(key), Some(per_key), true) = (&run.concurrency_key, &wf.concurrency.per_key, start)
    else {
        return Ok((start.then_some(Event::Started), vec![]));
    };
    tx.lock_run_key(&wf.name, key).await?;
    let held = tx.runs_with_key(&wf.name, key).await?;
    let (limit, on_limit) = (per_key.limit, per_key.on_limit);
    Ok(
        match engine::run_key::admit(limit, on_limit, &held.going, held.queued) {
            Admission::Start => (Some(Event::Started), vec![]),
            Admission::Queue => (None, vec![]),
            Admission::Skip { behind } => (
                Some(Event::CancelRequested {
                    reason: Some(format!(
                        "skipped: run {behind} has the concurrency key `{key}` (limit {limit}, on_limit: {})",
                        on_limit.as_str()
                    )),
                }),
                vec![],
            ),
            Admission::StartDisplacing(runs) => (Some(Event::Started), runs),
        },
    )
}

/// Whether a queued run with a `concurrency.key` must go on waiting: `limit` runs with its key
/// are going.
async fn held_back<T: RunTx>(
    tx: &mut T,
    wf: &Workflow,
    run: &Run,
    event: &Event,
) -> Result<bool, StoreError> {
    let (Event::Started, engine::RunStatus::Pending, Some(key), Some(per_key)) = (
        event,
        run.status,
        &run.concurrency_key,
        &wf.concurrency.per_key,
    ) else {
        return Ok(false);
    };
    tx.lock_run_key(&wf.name, key).await?;
    let held = tx.runs_with_key(&wf.name, key).await?;
    Ok(!engine::run_key::may_start(per_key.limit, held.going.len()))
}

/// Applies an event to a run, with its attempt record and the outbox row it closes.
pub(crate) async fn apply<T: RunTx>(
    tx: &mut T,
    cmd: &ApplyEvent,
    now: DateTime<Utc>,
) -> Result<Applied, StoreError> {
    let loaded = tx
        .load_run(&cmd.run_id)
        .await?
        .ok_or_else(|| StoreError::NoSuchRun(cmd.run_id.clone()))?;
    let wf = tx.version(&loaded.run.version).await?;
    // An attempt is recorded only when the machine takes its outcome: the step is running that
    // attempt. A stale result (a duplicate of an attempt already decided, one that ends after a
    // cancel) leaves the record alone; after a manual retry the step runs attempt 1 again, and
    // its result replaces the previous round's (which the run's `failure` no longer shows either).
    let attempt = cmd.attempt.as_ref().filter(|a| a.current(&loaded.run));
    if let Some(id) = cmd.done_effect {
        tx.delete_effect(&cmd.run_id, id).await?;
    }
    let Loaded { run, rev, next_seq } = loaded;
    let seq = match next_seq {
        Some(seq) => seq,
        None => tx.next_seq(&run.id).await?,
    };
    let (next, effects) = if held_back(tx, &wf, &run, &cmd.event).await? {
        (Run::clone(&run), vec![])
    } else {
        let (next, effects) = engine::decide(&wf, &run, &cmd.event, now);
        store_orders(tx, &wf, next, effects, now).await?
    };
    let attempt = attempt.map(|a| a.json.as_str());
    if effects.is_empty() && next == *run {
        // Absorbed (late, duplicate or not applicable): nothing changes, but keep the event for
        // the record. The log grew, so the revision moves too: another process's cached next
        // event number is then known to be stale.
        let kind = format!("{} (absorbed)", cmd.event.name());
        tx.append_event(
            &run.id,
            &EventWrite {
                seq,
                at: now,
                kind: &kind,
                data: &cmd.data,
                attempt,
            },
        )
        .await?;
        tx.write_run(&RunWrite::Touch {
            id: &run.id,
            rev_before: rev,
        })
        .await?;
        if !run.status.is_terminal() {
            tx.remember(&run, rev + 1, seq + 1);
        }
        return Ok(Applied {
            run,
            effects: vec![],
            created: false,
            slot_taken: false,
            absorbed: true,
            displaced: vec![],
        });
    }
    let state = state_json(&next);
    tx.write_run(&RunWrite::Update {
        run: &next,
        state: &state,
        rev_before: rev,
        at: now,
        status_changed: next.status != run.status || next.finished_at != run.finished_at,
    })
    .await?;
    let change = Change {
        rev: rev + 1,
        seq,
        kind: cmd.event.name(),
        data: &cmd.data,
        attempt,
    };
    record_change(tx, Arc::new(next), change, effects, waits(&wf), now).await
}

/// The event of a change whose new run state is already written, as stored.
struct Change<'a> {
    /// The run row's revision after the change.
    rev: i64,
    seq: i64,
    kind: &'a str,
    data: &'a str,
    attempt: Option<&'a str>,
}

/// The rest of a change once the run's row is written: its event, the outbox (closed when the
/// run finished, then each external effect queued under an id derived from the event's
/// number) and the backend's cache.
async fn record_change<T: RunTx>(
    tx: &mut T,
    run: Arc<Run>,
    change: Change<'_>,
    effects: Vec<Effect>,
    waits: bool,
    now: DateTime<Utc>,
) -> Result<Applied, StoreError> {
    tx.append_event(
        &run.id,
        &EventWrite {
            seq: change.seq,
            at: now,
            kind: change.kind,
            data: change.data,
            attempt: change.attempt,
        },
    )
    .await?;
    if run.status.is_terminal() {
        // Nothing that was queued for a finished run may run after a restart.
        tx.close_outbox(&run.id).await?;
        if waits {
            tx.close_waits(&run.id).await?;
        }
    }
    let mut out = Vec::with_capacity(effects.len());
    for (k, effect) in (0..).zip(effects) {
        if effect.is_external() {
            let id = change.seq * EFFECTS_PER_EVENT + k.min(EFFECTS_PER_EVENT - 1);
            let json = serde_json::to_string(&effect).expect("an effect serializes");
            tx.enqueue(&run.id, id, &json, now).await?;
            out.push((Some(id), effect));
        } else {
            out.push((None, effect));
        }
    }
    if run.status.is_terminal() {
        tx.forget(&run.id);
    } else {
        tx.remember(&run, change.rev, change.seq + 1);
    }
    Ok(Applied {
        run,
        effects: out,
        created: false,
        slot_taken: false,
        absorbed: false,
        displaced: vec![],
    })
}

/// Polls a future that cannot wait (a SQLite transaction's steps) to its end.
pub(crate) fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => {
            unreachable!("a SQLite transaction's steps never wait")
        }
    }
}
