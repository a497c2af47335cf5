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
pub mod sqlite;
mod types;

pub use error::{DbError, DbErrorKind, StoreError};
pub use sqlite::OutcomePending;
pub use types::*;

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
}

impl Store {
    /// Opens (creating if needed) a SQLite database file.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Sqlite(sqlite::SqliteStore::open(path)?),
        })
    }

    /// Where the database is, for messages (never with a password).
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Sqlite(s) => s.path().display().to_string(),
        }
    }

    pub fn versions(&self) -> &Versions {
        match &self.backend {
            Backend::Sqlite(s) => s.versions(),
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
        }
    }

    /// Says that a call is in flight whose outcome will be applied when it ends (until the guard
    /// is dropped): other changes meanwhile are left to the writer to batch, so that concurrent
    /// outcomes share commits.
    pub fn outcome_pending(&self) -> OutcomePending {
        match &self.backend {
            Backend::Sqlite(s) => s.outcome_pending(),
        }
    }

    /// Closes an outbox row whose effect produced no event (done, or abandoned).
    pub async fn mark_done(&self, run_id: &str, effect: i64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.mark_done(run_id, effect).await,
        }
    }

    // --- runs --------------------------------------------------------------------------------

    pub async fn get_run(&self, id: &str) -> Result<Option<Run>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.get_run(id),
        }
    }

    /// A run's status alone, without reading its state.
    pub async fn run_status(&self, id: &str) -> Result<Option<RunStatus>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.run_status(id),
        }
    }

    /// The workflow version a run is pinned to (parsed once, then cached).
    pub async fn workflow_for(&self, run: &Run) -> Result<Arc<Workflow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.workflow_for(run),
        }
    }

    /// The stored (path, source) of a workflow version.
    pub async fn version_source(&self, hash: &str) -> Result<Option<(String, String)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.version_source(hash),
        }
    }

    /// Runs, newest first.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.list_runs(filter),
        }
    }

    /// Ids of runs that have not finished, oldest first.
    pub async fn unfinished_runs(&self) -> Result<Vec<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.unfinished_runs(),
        }
    }

    /// Effects that were committed but not yet done (to perform again after a restart).
    pub async fn pending_effects(&self) -> Result<Vec<PendingEffect>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.pending_effects(),
        }
    }

    /// Every attempt of a run, ordered by start time.
    pub async fn attempts(&self, run_id: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.attempts(run_id),
        }
    }

    pub async fn events(&self, run_id: &str) -> Result<Vec<EventRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.events(run_id),
        }
    }

    // --- settings and workflow versions in force ---------------------------------------------

    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.setting(key),
        }
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.set_setting(key, value).await,
        }
    }

    /// Keeps each workflow file's version in force (stored, and named per path), so that after
    /// a restart a file that no longer checks still has its last good version; a path with
    /// `None` (the file is gone) is forgotten.
    pub async fn remember_active(&self, files: Vec<ActiveFile>) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.remember_active(files).await,
        }
    }

    /// The last good version of a workflow file, as (path, source), if one was remembered.
    pub async fn last_good_version(
        &self,
        path: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.last_good_version(path),
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
        }
    }

    /// How far every schedule has been handled.
    pub async fn schedule_marks(&self) -> Result<HashMap<String, DateTime<Utc>>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.schedule_marks(),
        }
    }

    /// (started and unfinished, queued) runs of a schedule: overlap is decided per schedule,
    /// as Temporal does, so one user's weekly report never waits for another's.
    pub async fn run_counts(&self, schedule: &str) -> Result<(usize, usize), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.run_counts(schedule),
        }
    }

    /// Ids of the started, unfinished runs of a schedule.
    pub async fn active_runs(&self, schedule: &str) -> Result<Vec<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.active_runs(schedule),
        }
    }

    /// The oldest queued (created, not started) run of a schedule.
    pub async fn oldest_queued(&self, schedule: &str) -> Result<Option<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.oldest_queued(schedule),
        }
    }

    /// Schedules that have queued runs.
    pub async fn schedules_with_queued_runs(&self) -> Result<Vec<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.schedules_with_queued_runs(),
        }
    }

    /// The schedule a run was fired by, if any.
    pub async fn schedule_of(&self, run_id: &str) -> Result<Option<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.schedule_of(run_id),
        }
    }

    /// Programmatic schedules, by id.
    pub async fn api_schedules(&self) -> Result<Vec<ApiSchedule>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.api_schedules(),
        }
    }

    pub async fn api_schedule(&self, id: &str) -> Result<Option<ApiSchedule>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.api_schedule(id),
        }
    }

    /// Creates or replaces a programmatic schedule; answers it and whether it was created.
    pub async fn save_api_schedule(
        &self,
        spec: ScheduleSpec,
    ) -> Result<(ApiSchedule, bool), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.save_api_schedule(spec).await,
        }
    }

    /// Deletes a programmatic schedule; answers whether it existed.
    pub async fn delete_api_schedule(&self, id: &str) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.delete_api_schedule(id).await,
        }
    }

    // --- approval links ----------------------------------------------------------------------

    /// The link whose token has this hash.
    pub async fn approval_link(&self, hash: &str) -> Result<Option<ApprovalLink>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.approval_link(hash),
        }
    }

    pub async fn use_approval_link(&self, hash: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.use_approval_link(hash).await,
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
        }
    }

    pub async fn store_approval_links(&self, links: NewApprovalLinks) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.store_approval_links(links).await,
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
        }
    }

    /// The approval e-mails of a run, oldest first.
    pub async fn approval_emails(&self, run_id: &str) -> Result<Vec<ApprovalEmail>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.approval_emails(run_id),
        }
    }

    /// `PRAGMA synchronous` of a SQLite database (2 = FULL), for benchmarks; None elsewhere.
    pub async fn synchronous(&self) -> Result<Option<i64>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.synchronous().map(Some),
        }
    }
}
