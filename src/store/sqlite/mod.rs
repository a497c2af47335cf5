//! The SQLite backend: one file in WAL mode with `synchronous=FULL`, one writer with group
//! commit (`writer`), a cache of unfinished runs' state checked against other processes'
//! commits (`tx`), reads on a second connection, and the lock files that say which process may
//! run the database's runs (`owner`), and the file itself: its mode, its names, its identity
//! (`file`).
//!
//! I/O shell. The only place, with its submodules, that knows rusqlite.

mod events;
pub mod file;
mod flow;
pub mod owner;
mod queries;
mod tx;
mod writer;

pub use writer::OutcomePending;

use crate::engine::Event;
use crate::store::apply::{ApplyEvent, RecordedAttempt};
use crate::store::types::{Applied, AttemptRecord, NewRunRequest, Versions};
use crate::store::{DbError, DbErrorKind, StoreError};
use chrono::{DateTime, Utc};
use rusqlite::Connection;
use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use writer::{Command, Job, Reply, Writer, WriterHandle, WriterState};

/// The schema, one file per version; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/001_initial.sql"),
    include_str!("../migrations/sqlite/002_schedules.sql"),
    include_str!("../migrations/sqlite/003_approval_tokens.sql"),
    include_str!("../migrations/sqlite/004_runs_schedule.sql"),
    include_str!("../migrations/sqlite/005_clustered_events_outbox.sql"),
    include_str!("../migrations/sqlite/006_attempt_on_event.sql"),
    include_str!("../migrations/sqlite/007_events_in_global_order.sql"),
    include_str!("../migrations/sqlite/008_integer_times.sql"),
    include_str!("../migrations/sqlite/009_outbox_fresh.sql"),
    include_str!("../migrations/sqlite/010_items.sql"),
    include_str!("../migrations/sqlite/011_events.sql"),
    include_str!("../migrations/sqlite/012_flow_control.sql"),
    include_str!("../migrations/sqlite/013_runs_per_key.sql"),
    include_str!("../migrations/sqlite/014_schedule_pauses.sql"),
    include_str!("../migrations/sqlite/015_dlq.sql"),
    include_str!("../migrations/sqlite/016_retention.sql"),
];

/// Every time is stored as milliseconds since the epoch.
pub(super) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(super) fn from_ms(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(v).unwrap_or_default()
}

/// A rusqlite error as the store reports it: its kind (what callers act on) and its message.
pub(super) fn db(e: &rusqlite::Error) -> DbError {
    use rusqlite::ErrorCode;
    let kind = match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => DbErrorKind::Full,
        Some(ErrorCode::ReadOnly) => DbErrorKind::ReadOnly,
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen,
        ) => DbErrorKind::Unavailable,
        Some(ErrorCode::ConstraintViolation) => DbErrorKind::Conflict,
        _ => DbErrorKind::Other,
    };
    DbError {
        kind,
        message: e.to_string(),
    }
}

pub(super) fn sql(doing: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| StoreError::Db {
        doing,
        source: db(&e),
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_prepared_statement_cache_capacity(64);
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, m) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        let tx = conn.transaction()?;
        tx.execute_batch(m)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
    }
    Ok(())
}

/// The SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    writer: Arc<WriterHandle>,
    reader: Arc<Mutex<Connection>>,
    versions: Versions,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) the database and starts the writer thread.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let open_err = |e: rusqlite::Error| StoreError::Open {
            path: path.display().to_string(),
            source: db(&e),
        };
        file::prepare(path).map_err(|message| StoreError::Open {
            path: path.display().to_string(),
            source: DbError {
                kind: DbErrorKind::Other,
                message,
            },
        })?;
        let mut writer = Connection::open(path).map_err(open_err)?;
        configure(&writer).map_err(open_err)?;
        migrate(&mut writer).map_err(|e| StoreError::Migrate {
            path: path.display().to_string(),
            source: db(&e),
        })?;
        let reader = Connection::open(path).map_err(open_err)?;
        configure(&reader).map_err(open_err)?;
        let versions = Versions::default();
        let shared = Arc::new(Writer::new(WriterState {
            conn: writer,
            cache: tx::RunCache::default(),
            versions: versions.clone(),
        }));
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("runner-db-writer".into())
            .spawn(move || writer::writer_loop(&thread_shared))
            .map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                source: DbError {
                    kind: DbErrorKind::Other,
                    message: format!("cannot start the writer thread: {e}"),
                },
            })?;
        Ok(SqliteStore {
            writer: Arc::new(WriterHandle(shared)),
            reader: Arc::new(Mutex::new(reader)),
            versions,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn versions(&self) -> &Versions {
        &self.versions
    }

    fn submit(&self, job: Job, reply: Reply) {
        self.writer.0.submit(Command { job, reply });
    }

    pub async fn start_run(
        &self,
        request: NewRunRequest,
        now: DateTime<Utc>,
    ) -> Result<Applied, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.submit(
            Job::Start {
                request: Box::new(request),
                now,
            },
            Reply::Applied(reply),
        );
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    pub async fn apply(
        &self,
        run_id: &str,
        event: Event,
        now: DateTime<Utc>,
        attempt: Option<AttemptRecord>,
        done_effect: Option<i64>,
    ) -> Result<Applied, StoreError> {
        let (reply, rx) = oneshot::channel();
        let change = ApplyEvent {
            run_id: run_id.to_string(),
            data: serde_json::to_string(&event).expect("an event serializes"),
            event,
            attempt: attempt.as_ref().map(RecordedAttempt::new),
            done_effect,
        };
        self.submit(
            Job::Apply {
                change: Box::new(change),
                now,
            },
            Reply::Applied(reply),
        );
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    pub fn outcome_pending(&self) -> OutcomePending {
        self.writer.0.outcome_pending()
    }

    pub async fn mark_done(&self, run_id: &str, effect: i64) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.submit(
            Job::MarkDone {
                run_id: run_id.to_string(),
                effect,
            },
            Reply::Unit(reply),
        );
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Runs `job` inside a write transaction of the writer thread (it may run twice: once more
    /// if the batch it is in is rolled back and run again).
    async fn write<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_as(Job::Write, job).await
    }

    /// [`Self::write`] for a write a crash undoes anyway (see `Job::Light`).
    async fn write_light<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_as(Job::Light, job).await
    }

    async fn write_as<T, F>(
        &self,
        kind: fn(writer::WriteJob) -> Job,
        job: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.submit(
            kind(Box::new(move |c| {
                job(c).map(|v| Box::new(v) as Box<dyn Any + Send>)
            })),
            Reply::Any(reply),
        );
        let value = rx.await.map_err(|_| StoreError::WriterGone)??;
        Ok(*value
            .downcast::<T>()
            .expect("a write job answers the type it was given"))
    }

    /// Reads with the shared read connection.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        f(&conn)
    }
}

#[cfg(test)]
mod tests;
