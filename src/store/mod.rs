//! Durable state: runs, events, the effect outbox, attempts, workflow versions, schedules,
//! approval links, settings.
//!
//! I/O shell. [`Store`] is the one door every other module uses; no SQL and no backend type
//! leaves this folder. What is shared by every backend: the values that cross the door
//! (`types`), the errors (`error`), and how a state change is made inside one transaction
//! (`apply`: `decide` runs there, on the state the transaction read). What is SQLite's: the
//! `sqlite` folder (group commit, the run cache checked by `PRAGMA data_version`, the lock files
//! of `owner`, migrations in `migrations/sqlite`).

pub(crate) mod apply;
mod error;
pub mod postgres;
pub mod sqlite;
mod types;

pub use error::{DbError, DbErrorKind, StoreError};
pub use postgres::NodeRow;
pub use sqlite::OutcomePending;
pub use types::*;

/// The event a run's wait receives for an event sent to runner.
pub fn received_event(step: String, e: InboundEvent) -> Event {
    apply::received(step, e)
}

use crate::engine::{Event, Run, RunStatus};
use crate::workflow::Workflow;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// Whether `db` (a `--db` value) names a PostgreSQL database rather than a SQLite file.
pub fn is_postgres(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

impl Store {
    /// Opens (creating if needed) a SQLite database file.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Sqlite(sqlite::SqliteStore::open(path)?),
        })
    }

    /// Opens the database `db` names: a `postgres://…` connection string, or a SQLite file.
    pub async fn connect(db: &str) -> Result<Store, StoreError> {
        if is_postgres(db) {
            Ok(Store {
                backend: Backend::Postgres(postgres::PgStore::open(db).await?),
            })
        } else {
            Store::open(Path::new(db))
        }
    }

    /// Where the database is, for messages (never with a password).
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Sqlite(s) => s.path().display().to_string(),
            Backend::Postgres(p) => p.describe().to_string(),
        }
    }

    /// True when several processes may share the database's work (PostgreSQL): work is then
    /// claimed through leases, timers through claims on their runs.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    pub fn versions(&self) -> &Versions {
        match &self.backend {
            Backend::Sqlite(s) => s.versions(),
            Backend::Postgres(p) => p.versions(),
        }
    }

    /// Ids of programmatic schedules changed by any node (a shared database); an empty id says
    /// some may have been missed (reload them all). SQLite: nothing, ever.
    pub fn schedule_changes(&self) -> tokio::sync::mpsc::UnboundedReceiver<String> {
        match &self.backend {
            Backend::Sqlite(_) => tokio::sync::mpsc::unbounded_channel().1,
            Backend::Postgres(p) => p.listen("runner_schedules"),
        }
    }

    /// Whether the database answers now (`/healthz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(p) => p.ping().await,
        }
    }

    // --- nodes (a shared database) -------------------------------------------------------------

    /// Registers this process as a node with a lease of `ttl` (a shared database; SQLite has
    /// one process, which its lock files enforce).
    pub async fn register_node(
        &self,
        name: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(p) => p.register_node(name, ttl).await.map(Some),
        }
    }

    /// Renews this node's lease; false when it had lapsed.
    pub async fn heartbeat(
        &self,
        ttl: std::time::Duration,
        defs_hash: &str,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(true),
            Backend::Postgres(p) => p.heartbeat(ttl, defs_hash).await,
        }
    }

    /// On a graceful stop, after the drain: marks the effects left in the outbox as not started
    /// (but those in `performing`, abandoned at the end of the drain), and on a shared database
    /// gives them back for another node and removes this node.
    pub async fn release_node(&self, performing: &[(String, i64)]) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.hand_back(performing.to_vec()).await,
            Backend::Postgres(p) => p.release_node(performing).await,
        }
    }

    /// After a start has read the outbox (SQLite): none of it counts as not started any more.
    pub async fn clear_fresh(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.clear_fresh().await,
            Backend::Postgres(_) => Ok(()),
        }
    }

    /// Gives these effects (run, outbox id) back for another node to perform.
    pub async fn release_effects(&self, effects: &[(String, i64)]) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(p) => p.release_effects(effects).await,
        }
    }

    /// The nodes sharing the database (empty for SQLite).
    pub async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(vec![]),
            Backend::Postgres(p) => p.nodes().await,
        }
    }

    /// Holds the role `role` for `ttl` if no other node does; answers the term while held.
    /// SQLite: the one process always leads.
    pub async fn lead(
        &self,
        role: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<i64>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(Some(1)),
            Backend::Postgres(p) => p.lead(role, ttl).await,
        }
    }

    pub async fn resign(&self, role: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(p) => p.resign(role).await,
        }
    }

    /// Takes over the work of nodes whose lease lapsed `grace` ago: answers their names and the
    /// effects claimed for this node.
    pub async fn rescue(
        &self,
        grace: std::time::Duration,
        limit: i64,
    ) -> Result<(Vec<String>, Vec<PendingEffect>), StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok((vec![], vec![])),
            Backend::Postgres(p) => p.rescue(grace, limit).await,
        }
    }

    /// This node's own pending effects older than `age`.
    pub async fn own_effects(
        &self,
        age: std::time::Duration,
    ) -> Result<Vec<PendingEffect>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(vec![]),
            Backend::Postgres(p) => p.own_effects(age).await,
        }
    }

    /// Claims runs whose timer is due by `upto` (a shared database: one node fires each).
    pub async fn claim_timers(
        &self,
        upto: DateTime<Utc>,
        hold: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(vec![]),
            Backend::Postgres(p) => p.claim_timers(upto, hold, limit).await,
        }
    }

    // --- run changes (each one transaction) --------------------------------------------------

    /// Creates a run pinned to its version and starts it (or queues it), in one transaction.
    /// With an idempotency key used before for this workflow, answers that run instead. With a
    /// slot, the slot is claimed in the same transaction; if it was claimed before, the answer
    /// has `slot_taken` and nothing is created.
    pub async fn start_run(
        &self,
        request: NewRunRequest,
        now: DateTime<Utc>,
    ) -> Result<Applied, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.start_run(request, now).await,
            Backend::Postgres(p) => p.start_run(request, now).await,
        }
    }

    /// Applies an event to a run in one transaction with the attempt record and the closing of
    /// the effect whose outcome it is.
    pub async fn apply(
        &self,
        run_id: &str,
        event: Event,
        now: DateTime<Utc>,
        attempt: Option<AttemptRecord>,
        done_effect: Option<i64>,
    ) -> Result<Applied, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.apply(run_id, event, now, attempt, done_effect).await,
            Backend::Postgres(p) => p.apply(run_id, event, now, attempt, done_effect).await,
        }
    }

    /// Says that a call is in flight whose outcome will be applied when it ends (until the guard
    /// is dropped): other changes meanwhile are left to the writer to batch, so that concurrent
    /// outcomes share commits.
    pub fn outcome_pending(&self) -> OutcomePending {
        match &self.backend {
            Backend::Sqlite(s) => s.outcome_pending(),
            Backend::Postgres(_) => OutcomePending::none(),
        }
    }

    /// Closes an outbox row whose effect produced no event (done, or abandoned).
    pub async fn mark_done(&self, run_id: &str, effect: i64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.mark_done(run_id, effect).await,
            Backend::Postgres(p) => p.mark_done(run_id, effect).await,
        }
    }

    // --- runs --------------------------------------------------------------------------------

    pub async fn get_run(&self, id: &str) -> Result<Option<Run>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.get_run(id),
            Backend::Postgres(p) => p.get_run(id).await,
        }
    }

    /// A run's status alone, without reading its state.
    pub async fn run_status(&self, id: &str) -> Result<Option<RunStatus>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.run_status(id),
            Backend::Postgres(p) => p.run_status(id).await,
        }
    }

    /// The workflow version a run is pinned to (parsed once, then cached).
    pub async fn workflow_for(&self, run: &Run) -> Result<Arc<Workflow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.workflow_for(run),
            Backend::Postgres(p) => p.workflow_for(run).await,
        }
    }

    /// The stored (path, source) of a workflow version.
    pub async fn version_source(&self, hash: &str) -> Result<Option<(String, String)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.version_source(hash),
            Backend::Postgres(p) => p.version_source(hash).await,
        }
    }

    /// Runs, newest first.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.list_runs(filter),
            Backend::Postgres(p) => p.list_runs(filter).await,
        }
    }

    /// Ids of runs that have not finished, oldest first.
    pub async fn unfinished_runs(&self) -> Result<Vec<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.unfinished_runs(),
            Backend::Postgres(p) => p.unfinished_runs().await,
        }
    }

    /// Effects that were committed but not yet done (to perform again after a restart).
    pub async fn pending_effects(&self) -> Result<Vec<PendingEffect>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.pending_effects(),
            Backend::Postgres(p) => p.pending_effects().await,
        }
    }

    /// Every attempt of a run, ordered by start time.
    pub async fn attempts(&self, run_id: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.attempts(run_id),
            Backend::Postgres(p) => p.attempts(run_id).await,
        }
    }

    /// The items of a `foreach` step, in order, with their results so far.
    pub async fn items(&self, run_id: &str, step: &str) -> Result<Vec<ItemRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.items(run_id, step),
            Backend::Postgres(p) => p.items(run_id, step).await,
        }
    }

    /// One item's key and value, for its attempts.
    pub async fn item(
        &self,
        run_id: &str,
        step: &str,
        index: u32,
    ) -> Result<Option<(String, serde_json::Value)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.item(run_id, step, index),
            Backend::Postgres(p) => p.item(run_id, step, index).await,
        }
    }

    pub async fn events(&self, run_id: &str) -> Result<Vec<EventRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.events(run_id),
            Backend::Postgres(p) => p.events(run_id).await,
        }
    }

    // --- settings and workflow versions in force ---------------------------------------------

    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.setting(key),
            Backend::Postgres(p) => p.setting(key).await,
        }
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.set_setting(key, value).await,
            Backend::Postgres(p) => p.set_setting(key, value).await,
        }
    }

    /// Keeps each workflow file's version in force (stored, and named per path), so that after
    /// a restart a file that no longer checks still has its last good version; a path with
    /// `None` (the file is gone) is forgotten.
    pub async fn remember_active(&self, files: Vec<ActiveFile>) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.remember_active(files).await,
            Backend::Postgres(p) => p.remember_active(files).await,
        }
    }

    /// The last good version of a workflow file, as (path, source), if one was remembered.
    pub async fn last_good_version(
        &self,
        path: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.last_good_version(path),
            Backend::Postgres(p) => p.last_good_version(path).await,
        }
    }

    // --- schedules ---------------------------------------------------------------------------

    /// Records a slot that was skipped (overlap), so it is not fired again after a restart.
    /// Answers false when the slot had been handled before.
    pub async fn skip_slot(
        &self,
        claim: SlotClaim,
        reason: &'static str,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.skip_slot(claim, reason).await,
            Backend::Postgres(p) => p.skip_slot(claim, reason).await,
        }
    }

    /// Remembers that these schedules were first seen at `at` (catch-up never goes further
    /// back); a schedule seen before keeps its mark.
    pub async fn mark_schedules_seen(
        &self,
        ids: Vec<String>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.mark_schedules_seen(ids, at).await,
            Backend::Postgres(p) => p.mark_schedules_seen(ids, at).await,
        }
    }

    /// How far every schedule has been handled.
    pub async fn schedule_marks(&self) -> Result<HashMap<String, DateTime<Utc>>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.schedule_marks(),
            Backend::Postgres(p) => p.schedule_marks().await,
        }
    }

    /// (started and unfinished, queued) runs of a schedule: overlap is decided per schedule,
    /// as Temporal does, so one user's weekly report never waits for another's.
    pub async fn run_counts(&self, schedule: &str) -> Result<(usize, usize), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.run_counts(schedule),
            Backend::Postgres(p) => p.run_counts(schedule).await,
        }
    }

    /// Ids of the started, unfinished runs of a schedule.
    pub async fn active_runs(&self, schedule: &str) -> Result<Vec<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.active_runs(schedule),
            Backend::Postgres(p) => p.active_runs(schedule).await,
        }
    }

    /// The oldest queued (created, not started) run of a schedule.
    pub async fn oldest_queued(&self, schedule: &str) -> Result<Option<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.oldest_queued(schedule),
            Backend::Postgres(p) => p.oldest_queued(schedule).await,
        }
    }

    /// The queued runs of a workflow with a `concurrency.key`, oldest first, at most `limit`.
    pub async fn queued_with_key(
        &self,
        workflow: &str,
        key: &str,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.queued_with_key(workflow, key, limit),
            Backend::Postgres(p) => p.queued_with_key(workflow, key, limit).await,
        }
    }

    /// The workflows and concurrency keys that have queued runs.
    pub async fn keys_with_queued_runs(&self) -> Result<Vec<(String, String)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.keys_with_queued_runs(),
            Backend::Postgres(p) => p.keys_with_queued_runs().await,
        }
    }

    /// Schedules that have queued runs.
    pub async fn schedules_with_queued_runs(&self) -> Result<Vec<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.schedules_with_queued_runs(),
            Backend::Postgres(p) => p.schedules_with_queued_runs().await,
        }
    }

    /// The schedule a run was fired by, if any.
    pub async fn schedule_of(&self, run_id: &str) -> Result<Option<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.schedule_of(run_id),
            Backend::Postgres(p) => p.schedule_of(run_id).await,
        }
    }

    /// Programmatic schedules, by id.
    pub async fn api_schedules(&self) -> Result<Vec<ApiSchedule>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.api_schedules(),
            Backend::Postgres(p) => p.api_schedules().await,
        }
    }

    pub async fn api_schedule(&self, id: &str) -> Result<Option<ApiSchedule>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.api_schedule(id),
            Backend::Postgres(p) => p.api_schedule(id).await,
        }
    }

    /// Creates or replaces a programmatic schedule; answers it and whether it was created.
    pub async fn save_api_schedule(
        &self,
        spec: ScheduleSpec,
    ) -> Result<(ApiSchedule, bool), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.save_api_schedule(spec).await,
            Backend::Postgres(p) => p.save_api_schedule(spec).await,
        }
    }

    /// Deletes a programmatic schedule; answers whether it existed.
    pub async fn delete_api_schedule(&self, id: &str) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.delete_api_schedule(id).await,
            Backend::Postgres(p) => p.delete_api_schedule(id).await,
        }
    }

    /// Pauses or resumes a YAML schedule of `workflow` (its `Schedule::signature`); a resume
    /// also moves the mark of the scheduler's `key` for it to now, so that the slots passed
    /// while it was paused are not due. On a shared database the leader's scheduler is told.
    pub async fn set_yaml_paused(
        &self,
        pause: YamlPause<'_>,
        paused: bool,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.set_yaml_paused(pause, paused, now).await,
            Backend::Postgres(p) => p.set_yaml_paused(pause, paused, now).await,
        }
    }

    /// The YAML schedules paused: (workflow, signature).
    pub async fn paused_yaml(
        &self,
    ) -> Result<std::collections::HashSet<(String, String)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.paused_yaml(),
            Backend::Postgres(p) => p.paused_yaml().await,
        }
    }

    /// Takes failed runs out of the QStash API's dead-letter queue (those of `workflow` that are
    /// failed and still in it); answers how many it took.
    pub async fn remove_from_dlq(
        &self,
        workflow: &str,
        ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.remove_from_dlq(workflow, ids, now).await,
            Backend::Postgres(p) => p.remove_from_dlq(workflow, ids, now).await,
        }
    }

    /// Finished runs a prune would delete, oldest first, at most `limit`. A run with an effect
    /// still to perform (a called run's report to its caller) is not one of them.
    pub async fn prunable_runs(
        &self,
        q: &PruneQuery,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.prunable_runs(q, limit),
            Backend::Postgres(p) => p.prunable_runs(q, limit).await,
        }
    }

    /// Deletes these runs and everything kept for them (events, attempts, items, waits,
    /// approval links), in one transaction (a schedule's slots stay: they say it fired); a run that is not finished, or
    /// has an effect still to perform, is kept. Answers how many it deleted.
    pub async fn delete_runs(&self, ids: &[String]) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.delete_runs(ids).await,
            Backend::Postgres(p) => p.delete_runs(ids).await,
        }
    }

    // --- events sent to runner ----------------------------------------------------------------

    /// Records an event sent to runner, or answers the one recorded before with its name and
    /// id (`duplicate`). On a shared database this is serialized with any wait for the same
    /// name and key, so that either the wait sees the event or the delivery sees the wait.
    pub async fn record_event(
        &self,
        e: NewInboundEvent,
        now: DateTime<Utc>,
    ) -> Result<RecordedEvent, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.record_event(e, now).await,
            Backend::Postgres(p) => p.record_event(e, now).await,
        }
    }

    /// The runs waiting for an event of this name and key that arrived at `at`.
    pub async fn event_waits(
        &self,
        name: &str,
        key: &str,
        at: DateTime<Utc>,
    ) -> Result<Vec<EventWait>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.event_waits(name, key, at),
            Backend::Postgres(p) => p.event_waits(name, key, at).await,
        }
    }

    /// An event's delivery ended: it reached these runs.
    pub async fn mark_event_delivered(
        &self,
        seq: i64,
        runs: Vec<String>,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.mark_event_delivered(seq, runs).await,
            Backend::Postgres(p) => p.mark_event_delivered(seq, runs).await,
        }
    }

    /// Events received before `before` whose delivery never ended (a crash cut it short).
    pub async fn undelivered_events(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<InboundEvent>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.undelivered_events(before, limit),
            Backend::Postgres(p) => p.undelivered_events(before, limit).await,
        }
    }

    /// Events, newest first, optionally of one name.
    pub async fn list_events(
        &self,
        name: Option<&str>,
        limit: i64,
    ) -> Result<Vec<InboundEvent>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.list_events(name, limit),
            Backend::Postgres(p) => p.list_events(name, limit).await,
        }
    }

    /// Deletes up to `limit` delivered events received before `before`; answers how many.
    pub async fn prune_events(&self, before: DateTime<Utc>, limit: i64) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.prune_events(before, limit).await,
            Backend::Postgres(p) => p.prune_events(before, limit).await,
        }
    }

    // --- flow control ------------------------------------------------------------------------

    /// Whether a call with a flow-control key may start now (its row then counts as in flight
    /// until the effect's row goes), counted from the rows of every node.
    pub async fn flow_admit(
        &self,
        ask: FlowAsk,
        now: DateTime<Utc>,
    ) -> Result<FlowAnswer, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.flow_admit(ask, now).await,
            Backend::Postgres(p) => p.flow_admit(ask, now).await,
        }
    }

    /// Closes a flow-control key until `until` (a 429 or 503 with `Retry-After`).
    pub async fn flow_close(&self, key: &str, until: DateTime<Utc>) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.flow_close(key, until).await,
            Backend::Postgres(p) => p.flow_close(key, until).await,
        }
    }

    /// Forgets flow-control keys no call has asked for since `before` (none in flight or
    /// waiting, not closed); answers how many.
    pub async fn prune_flow_keys(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.prune_flow_keys(before, now).await,
            Backend::Postgres(p) => p.prune_flow_keys(before, now).await,
        }
    }

    /// Every flow-control key with its limits, calls in flight and waiting.
    pub async fn flow_keys(&self, now: DateTime<Utc>) -> Result<Vec<FlowKeyRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.flow_keys(now),
            Backend::Postgres(p) => p.flow_keys(now).await,
        }
    }

    // --- approval links ----------------------------------------------------------------------

    /// The link whose token has this hash.
    pub async fn approval_link(&self, hash: &str) -> Result<Option<ApprovalLink>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.approval_link(hash),
            Backend::Postgres(p) => p.approval_link(hash).await,
        }
    }

    pub async fn use_approval_link(&self, hash: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.use_approval_link(hash).await,
            Backend::Postgres(p) => p.use_approval_link(hash).await,
        }
    }

    /// Whether `recipient` was already mailed this step's links for this deadline.
    pub async fn approval_mailed(
        &self,
        run_id: &str,
        step: &str,
        recipient: &str,
        deadline: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.approval_mailed(run_id, step, recipient, deadline),
            Backend::Postgres(p) => p.approval_mailed(run_id, step, recipient, deadline).await,
        }
    }

    pub async fn store_approval_links(&self, links: NewApprovalLinks) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.store_approval_links(links).await,
            Backend::Postgres(p) => p.store_approval_links(links).await,
        }
    }

    pub async fn mark_approval_mailed(
        &self,
        run_id: &str,
        step: &str,
        recipient: &str,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.mark_approval_mailed(run_id, step, recipient).await,
            Backend::Postgres(p) => p.mark_approval_mailed(run_id, step, recipient).await,
        }
    }

    /// The approval e-mails of a run, oldest first.
    pub async fn approval_emails(&self, run_id: &str) -> Result<Vec<ApprovalEmail>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.approval_emails(run_id),
            Backend::Postgres(p) => p.approval_emails(run_id).await,
        }
    }

    /// `PRAGMA synchronous` of a SQLite database (2 = FULL), for benchmarks; None elsewhere.
    pub async fn synchronous(&self) -> Result<Option<i64>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.synchronous().map(Some),
            Backend::Postgres(_) => Ok(None),
        }
    }
}
