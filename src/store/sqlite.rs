use crate::engine::machine::{self, Effect, Event, NewRun, Run, RunStatus};
use crate::workflow::{self, Workflow};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the database `{path}`: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("migrating the database `{path}`: {source}")]
    Migrate {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database error while {doing}: {source}")]
    Sql {
        doing: &'static str,
        source: rusqlite::Error,
    },
    #[error("run `{0}` does not exist")]
    NoSuchRun(String),
    #[error("workflow version `{0}` is not in the database")]
    NoSuchVersion(String),
    #[error("stored workflow version `{hash}` no longer checks: {message}")]
    BadVersion { hash: String, message: String },
    #[error("stored state of run `{id}` is unreadable: {message}")]
    Corrupt { id: String, message: String },
    #[error("the database writer has stopped")]
    WriterGone,
}

fn sql(doing: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sql { doing, source }
}

/// What an attempt sent and got, stored beside the event it produced (secrets redacted).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AttemptRecord {
    pub step: String,
    pub attempt: u32,
    #[serde(serialize_with = "machine::rfc3339::option")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "machine::rfc3339::option")]
    pub finished_at: Option<DateTime<Utc>>,
    pub status: Option<u16>,
    /// `succeeded`, `retry`, `failed`
    pub outcome: String,
    pub error: Option<String>,
    pub request: Option<serde_json::Value>,
    pub response: Option<serde_json::Value>,
}

/// One approval e-mail: to whom, for which step and deadline, and when it was delivered.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalEmail {
    pub step: String,
    pub recipient: String,
    /// When the SMTP server (or the outbox folder) took it; None while delivery is retried.
    pub mailed_at: Option<String>,
    #[serde(serialize_with = "machine::rfc3339::one")]
    pub expires_at: DateTime<Utc>,
}

/// A workflow as loaded from a file: what a run pins when it starts.
#[derive(Debug, Clone)]
pub struct Version {
    pub hash: String,
    pub path: String,
    pub source: String,
    pub workflow: Arc<Workflow>,
}

impl Version {
    pub fn new(path: &str, source: &str, workflow: Workflow) -> Version {
        Version {
            hash: version_hash(source),
            path: path.to_string(),
            source: source.to_string(),
            workflow: Arc::new(workflow),
        }
    }
}

/// The content hash that names a workflow version.
pub fn version_hash(source: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(source.as_bytes());
    d.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// The outcome of one state change: the new run and the effects to perform, each with its
/// outbox row id when it is external.
#[derive(Debug, Clone)]
pub struct Applied {
    pub run: Arc<Run>,
    pub effects: Vec<(Option<i64>, Effect)>,
    /// False when a start with an idempotency key found an existing run.
    pub created: bool,
    /// True when the slot had already been handled: nothing was created.
    pub slot_taken: bool,
}

/// A schedule slot claimed in the same transaction that creates its run: the unique key
/// (schedule, slot) makes every slot fire at most once, across restarts and reloads.
#[derive(Debug, Clone)]
pub struct SlotClaim {
    pub schedule: String,
    pub slot: String,
    pub at: DateTime<Utc>,
}

/// A pending outbox row, read back after a restart.
#[derive(Debug, Clone)]
pub struct PendingEffect {
    pub id: i64,
    pub run_id: String,
    pub effect: Effect,
}

/// One stored event, for `runner show`.
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub seq: i64,
    pub at: String,
    pub kind: String,
    pub data: serde_json::Value,
}

/// Filters for listing runs.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub workflow: Option<String>,
    pub status: Option<RunStatus>,
    pub limit: usize,
}

/// A row of `runner runs`.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub id: String,
    pub workflow: String,
    pub status: String,
    pub trigger: String,
    pub created_at: String,
    pub finished_at: Option<String>,
}

/// A piece of work run inside a write transaction of the writer thread.
type WriteJob = Box<dyn FnOnce(&Connection) -> Result<serde_json::Value, StoreError> + Send>;

/// A change for the writer: what to do, and where its result goes.
struct Command {
    job: Job,
    reply: Reply,
}

enum Job {
    Start {
        version: Version,
        new: NewRun,
        idempotency_key: Option<String>,
        slot: Option<SlotClaim>,
        start: bool,
        now: DateTime<Utc>,
    },
    Apply {
        run_id: String,
        event: Event,
        now: DateTime<Utc>,
        /// The event and the attempt record as stored, serialized by the caller: the writer
        /// thread is the one every change waits for, so it does no work a caller can do.
        data: String,
        attempt: Option<Recorded>,
        done_effect: Option<i64>,
    },
    MarkDone {
        run_id: String,
        effect: i64,
    },
    SetKv {
        key: String,
        value: String,
    },
    /// Runs once (`None` after).
    Exec(Option<WriteJob>),
}

/// An attempt record as stored, with what says which attempt it belongs to.
struct Recorded {
    step: String,
    attempt: u32,
    json: String,
}

impl Recorded {
    fn new(record: &AttemptRecord) -> Recorded {
        Recorded {
            step: record.step.clone(),
            attempt: record.attempt,
            json: serde_json::to_string(record).expect("an attempt record serializes"),
        }
    }
}

/// Where a command's result goes.
enum Reply {
    Applied(oneshot::Sender<Result<Applied, StoreError>>),
    Unit(oneshot::Sender<Result<(), StoreError>>),
    Value(oneshot::Sender<Result<serde_json::Value, StoreError>>),
}

/// A command's result, before its transaction commits.
enum Outcome {
    Applied(Result<Applied, StoreError>),
    Unit(Result<(), StoreError>),
    Value(Result<serde_json::Value, StoreError>),
}

impl Outcome {
    fn is_ok(&self) -> bool {
        match self {
            Outcome::Applied(r) => r.is_ok(),
            Outcome::Unit(r) => r.is_ok(),
            Outcome::Value(r) => r.is_ok(),
        }
    }
}

impl Reply {
    fn fail(self, e: impl Fn() -> StoreError) {
        match self {
            Reply::Applied(tx) => drop(tx.send(Err(e()))),
            Reply::Unit(tx) => drop(tx.send(Err(e()))),
            Reply::Value(tx) => drop(tx.send(Err(e()))),
        }
    }

    fn send(self, outcome: Outcome) {
        match (self, outcome) {
            (Reply::Applied(tx), Outcome::Applied(r)) => drop(tx.send(r)),
            (Reply::Unit(tx), Outcome::Unit(r)) => drop(tx.send(r)),
            (Reply::Value(tx), Outcome::Value(r)) => drop(tx.send(r)),
            // Each job gives the outcome its reply takes (`run_job`).
            (reply, _) => reply.fail(|| StoreError::WriterGone),
        }
    }
}

/// Workflow versions by hash, parsed once.
#[derive(Default, Clone)]
pub struct Versions(Arc<RwLock<HashMap<String, Arc<Workflow>>>>);

impl Versions {
    pub fn get(&self, hash: &str) -> Option<Arc<Workflow>> {
        self.0.read().expect("versions lock").get(hash).cloned()
    }
    pub fn insert(&self, hash: &str, wf: Arc<Workflow>) {
        self.0
            .write()
            .expect("versions lock")
            .insert(hash.to_string(), wf);
    }
}

/// The SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    writer: Arc<WriterHandle>,
    reader: Arc<Mutex<Connection>>,
    versions: Versions,
    path: PathBuf,
}

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE workflow_versions (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    version TEXT NOT NULL REFERENCES workflow_versions(hash),
    status TEXT NOT NULL,
    trigger TEXT NOT NULL,
    idempotency_key TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    finished_at TEXT,
    wake_at INTEGER,
    state TEXT NOT NULL
);
CREATE UNIQUE INDEX runs_idempotency ON runs(workflow, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_unfinished ON runs(status) WHERE finished_at IS NULL;
CREATE INDEX runs_by_workflow ON runs(workflow, created_at);
CREATE INDEX runs_by_time ON runs(created_at);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX events_by_run ON events(run_id, seq);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    effect TEXT NOT NULL,
    created_at TEXT NOT NULL,
    done_at TEXT
);
CREATE INDEX outbox_pending ON outbox(id) WHERE done_at IS NULL;
CREATE TABLE attempts (
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    status INTEGER,
    outcome TEXT NOT NULL,
    error TEXT,
    request TEXT,
    response TEXT,
    PRIMARY KEY (run_id, step, attempt)
) WITHOUT ROWID;
CREATE TABLE kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE slots (
    schedule TEXT NOT NULL,
    slot TEXT NOT NULL,
    at INTEGER NOT NULL,
    run_id TEXT,
    outcome TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (schedule, slot)
);
CREATE TABLE schedule_marks (
    schedule TEXT PRIMARY KEY,
    since INTEGER NOT NULL
);
CREATE TABLE schedules (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT,
    input TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX runs_queued ON runs(workflow, created_at) WHERE status = 'pending';
"#,
    r#"
CREATE TABLE approval_tokens (
    hash TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    recipient TEXT NOT NULL,
    decision TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    mailed_at TEXT,
    used_at TEXT
);
CREATE INDEX approval_tokens_by_step ON approval_tokens(run_id, step, recipient);
"#,
    r#"
ALTER TABLE runs ADD COLUMN schedule TEXT;
CREATE INDEX runs_by_schedule_unfinished ON runs(schedule, status, created_at) WHERE finished_at IS NULL AND schedule IS NOT NULL;
"#,
    // Fewer pages per state change: events and the outbox are clustered by run (one B-tree each,
    // no second index), the outbox keeps only pending rows (done ones are deleted), and a run's
    // `rev` lets the writer reuse the state it already holds instead of parsing it again.
    // Event numbers become per run; outbox ids are derived from them (never reused), and rows
    // still pending from before are renumbered below zero so they cannot collide.
    r#"
CREATE TABLE events_v5 (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
INSERT INTO events_v5(run_id, seq, at, kind, data) SELECT run_id, seq, at, kind, data FROM events;
DROP TABLE events;
ALTER TABLE events_v5 RENAME TO events;
CREATE TABLE outbox_v5 (
    run_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    effect TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (run_id, id)
) WITHOUT ROWID;
INSERT INTO outbox_v5(run_id, id, effect, created_at) SELECT run_id, -id, effect, created_at FROM outbox WHERE done_at IS NULL;
DROP TABLE outbox;
ALTER TABLE outbox_v5 RENAME TO outbox;
ALTER TABLE runs ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
"#,
    // An attempt's record (what was sent and got, secrets redacted) is kept on the event of its
    // outcome instead of a table of its own: one B-tree fewer to write per step. Records written
    // before stay in `attempts`, which is read but no longer written.
    r#"
ALTER TABLE events ADD COLUMN attempt TEXT;
"#,
    // Events are appended in one global order, so the events of one batch share their pages.
    // Clustered by run (version 5) with rows this large (an attempt record is most of a page's
    // quarter), every change split a leaf page of its own and rewrote interior pages: 8 of the
    // ~20 pages a batch of 7 changes wrote. The (run, seq) index keeps reads by run.
    // Runs are listed newest first in rowid order, which is the order they were created in, so
    // the index on `created_at` (a page written for every new run) goes.
    r#"
CREATE TABLE events_v7 (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    attempt TEXT
);
INSERT INTO events_v7(run_id, seq, at, kind, data, attempt)
    SELECT run_id, seq, at, kind, data, attempt FROM events ORDER BY run_id, seq;
DROP TABLE events;
ALTER TABLE events_v7 RENAME TO events;
CREATE UNIQUE INDEX events_by_run ON events(run_id, seq);
DROP INDEX runs_by_time;
"#,
];

/// Outbox ids are `event seq × EFFECTS_PER_EVENT + index`: unique within a run and never reused.
const EFFECTS_PER_EVENT: i64 = 1024;

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_prepared_statement_cache_capacity(64);
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the database and starts the writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open = |p: &Path| {
            Connection::open(p).map_err(|source| StoreError::Open {
                path: p.to_path_buf(),
                source,
            })
        };
        let mut writer = open(path)?;
        configure(&writer).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        migrate(&mut writer).map_err(|source| StoreError::Migrate {
            path: path.to_path_buf(),
            source,
        })?;
        let reader = open(path)?;
        configure(&reader).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let versions = Versions::default();
        let shared = Arc::new(Writer {
            queue: Mutex::new(WriteQueue::default()),
            work: Condvar::new(),
            expected: std::sync::atomic::AtomicUsize::new(0),
            state: Mutex::new(WriterState {
                conn: writer,
                cache: RunCache::default(),
                versions: versions.clone(),
            }),
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("runner-db-writer".into())
            .spawn(move || writer_loop(&thread_shared))
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        Ok(Store {
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

    /// Creates a run pinned to `version` and starts it, in one transaction. With an
    /// idempotency key that was used before for this workflow, returns that run instead.
    /// With `slot`, the slot is claimed in the same transaction; if it was already claimed the
    /// result has `slot_taken` and nothing is created. With `start: false` the run is created
    /// `pending` (queued behind others) and started later with `Event::Started`.
    pub async fn start_run(
        &self,
        version: Version,
        new: NewRun,
        idempotency_key: Option<String>,
        slot: Option<SlotClaim>,
        start: bool,
        now: DateTime<Utc>,
    ) -> Result<Applied, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command {
            job: Job::Start {
                version,
                new,
                idempotency_key,
                slot,
                start,
                now,
            },
            reply: Reply::Applied(reply),
        })?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Applies an event to a run in one transaction with the attempt record and the outbox update.
    pub async fn apply(
        &self,
        run_id: &str,
        event: Event,
        now: DateTime<Utc>,
        attempt: Option<AttemptRecord>,
        done_effect: Option<i64>,
    ) -> Result<Applied, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command {
            job: Job::Apply {
                run_id: run_id.to_string(),
                data: serde_json::to_string(&event).expect("an event serializes"),
                event,
                now,
                attempt: attempt.as_ref().map(Recorded::new),
                done_effect,
            },
            reply: Reply::Applied(reply),
        })?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Says that a call is in flight whose outcome will be applied when it ends (until the guard
    /// is dropped): other changes meanwhile are left to the writer thread to batch, so that
    /// concurrent outcomes share commits.
    pub fn outcome_pending(&self) -> OutcomePending {
        self.writer
            .0
            .expected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        OutcomePending(self.writer.0.clone())
    }

    /// Marks an outbox row done when its effect produced no event (it was abandoned).
    pub async fn mark_done(&self, run_id: &str, effect: i64) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command {
            job: Job::MarkDone {
                run_id: run_id.to_string(),
                effect,
            },
            reply: Reply::Unit(reply),
        })?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    pub async fn set_kv(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command {
            job: Job::SetKv {
                key: key.to_string(),
                value: value.to_string(),
            },
            reply: Reply::Unit(reply),
        })?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Runs `job` inside a write transaction of the group-commit writer.
    pub async fn write<F>(&self, job: F) -> Result<serde_json::Value, StoreError>
    where
        F: FnOnce(&Connection) -> Result<serde_json::Value, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.send(Command {
            job: Job::Exec(Some(Box::new(job))),
            reply: Reply::Value(reply),
        })?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    fn send(&self, cmd: Command) -> Result<(), StoreError> {
        self.writer.0.submit(cmd);
        Ok(())
    }

    /// Reads with the shared read connection.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.reader.lock().expect("reader lock");
        f(&conn)
    }

    /// Keeps each workflow file's version in force (stored, and named per path in `kv`), so
    /// that after a restart a file that no longer checks still has its last good version; a
    /// path of `None` (the file is gone) is forgotten.
    pub async fn remember_active(
        &self,
        files: Vec<(String, Option<Version>)>,
    ) -> Result<(), StoreError> {
        let now = ts(Utc::now());
        self.write(move |c| {
            for (path, version) in &files {
                let key = format!("last_good:{path}");
                match version {
                    Some(v) => {
                        c.execute(
                            "INSERT INTO workflow_versions(hash, name, path, source, created_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(hash) DO NOTHING",
                            params![v.hash, v.workflow.name, v.path, v.source, now],
                        )
                        .map_err(sql("remembering the active workflow versions"))?;
                        c.execute(
                            "INSERT INTO kv(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                            params![key, v.hash],
                        )
                        .map_err(sql("remembering the active workflow versions"))?;
                    }
                    None => {
                        c.execute("DELETE FROM kv WHERE key = ?1", [&key]).map_err(sql("remembering the active workflow versions"))?;
                    }
                }
            }
            Ok(serde_json::Value::Null)
        })
        .await
        .map(drop)
    }

    /// The last good version of a workflow file, as (path, source), if one was remembered.
    pub fn last_good_version(&self, path: &str) -> Result<Option<(String, String)>, StoreError> {
        match self.get_kv(&format!("last_good:{path}"))? {
            Some(hash) => self.version_source(&hash),
            None => Ok(None),
        }
    }

    pub fn get_kv(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|c| {
            c.query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
                .optional()
                .map_err(sql("reading settings"))
        })
    }

    pub fn get_run(&self, id: &str) -> Result<Option<Run>, StoreError> {
        self.read(|c| load_run(c, id))
    }

    /// A run's status alone, without reading its state.
    pub fn run_status(&self, id: &str) -> Result<Option<RunStatus>, StoreError> {
        let status: Option<String> = self.read(|c| {
            c.row("SELECT status FROM runs WHERE id = ?1", [id], |r| r.get(0))
                .optional()
                .map_err(sql("reading a run's status"))
        })?;
        status
            .map(|s| {
                RunStatus::parse(&s).ok_or_else(|| StoreError::Corrupt {
                    id: id.to_string(),
                    message: format!("unknown status `{s}`"),
                })
            })
            .transpose()
    }

    pub fn workflow_for(&self, run: &Run) -> Result<Arc<Workflow>, StoreError> {
        self.read(|c| load_version(c, &self.versions, &run.version))
    }

    /// The stored source of a workflow version (for `runner show`).
    pub fn version_source(&self, hash: &str) -> Result<Option<(String, String)>, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT path, source FROM workflow_versions WHERE hash = ?1",
                [hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql("reading a workflow version"))
        })
    }

    pub fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare(
                    "SELECT id, workflow, status, trigger, created_at, finished_at FROM runs
                     WHERE (?1 IS NULL OR workflow = ?1) AND (?2 IS NULL OR status = ?2)
                     ORDER BY rowid DESC LIMIT ?3",
                )
                .map_err(sql("listing runs"))?;
            let limit =
                i64::try_from(if filter.limit == 0 { 50 } else { filter.limit }).unwrap_or(50);
            let rows = stmt
                .query_map(
                    params![filter.workflow, filter.status.map(|s| s.as_str()), limit],
                    |r| {
                        Ok(RunSummary {
                            id: r.get(0)?,
                            workflow: r.get(1)?,
                            status: r.get(2)?,
                            trigger: r.get(3)?,
                            created_at: r.get(4)?,
                            finished_at: r.get(5)?,
                        })
                    },
                )
                .map_err(sql("listing runs"))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(sql("listing runs"))
        })
    }

    /// Ids of runs that have not finished, oldest first.
    pub fn unfinished_runs(&self) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            strings(
                c,
                "SELECT id FROM runs WHERE finished_at IS NULL ORDER BY created_at, id",
                [],
                "listing unfinished runs",
            )
        })
    }

    /// Effects that were committed but not yet done (to perform again after a restart).
    pub fn pending_effects(&self) -> Result<Vec<PendingEffect>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare("SELECT id, run_id, effect FROM outbox ORDER BY created_at, run_id, id")
                .map_err(sql("reading the outbox"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(sql("reading the outbox"))?;
            let mut out = Vec::new();
            for row in rows {
                let (id, run_id, effect) = row.map_err(sql("reading the outbox"))?;
                let effect: Effect =
                    serde_json::from_str(&effect).map_err(|e| StoreError::Corrupt {
                        id: run_id.clone(),
                        message: format!("outbox row {id}: {e}"),
                    })?;
                out.push(PendingEffect { id, run_id, effect });
            }
            Ok(out)
        })
    }

    /// Every attempt of a run: the records kept on its events, and those written to the
    /// `attempts` table before schema version 6. The latest record of a (step, attempt) wins
    /// (after a manual retry the step runs attempt 1 again). Ordered by start time.
    /// The approval e-mails of a run: one per recipient and round (a retried step mails again),
    /// with when it was delivered (None: not yet), oldest first.
    pub fn approval_emails(&self, run_id: &str) -> Result<Vec<ApprovalEmail>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare(
                    "SELECT step, recipient, mailed_at, expires_at FROM approval_tokens
                     WHERE run_id = ?1 AND decision = 'approved' ORDER BY created_at, recipient",
                )
                .map_err(sql("reading approval e-mails"))?;
            let rows = stmt
                .query_map([run_id], |r| {
                    Ok(ApprovalEmail {
                        step: r.get(0)?,
                        recipient: r.get(1)?,
                        mailed_at: r.get(2)?,
                        expires_at: DateTime::from_timestamp_millis(r.get(3)?).unwrap_or_default(),
                    })
                })
                .map_err(sql("reading approval e-mails"))?;
            rows.collect::<Result<_, _>>()
                .map_err(sql("reading approval e-mails"))
        })
    }

    pub fn attempts(&self, run_id: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        self.read(|c| {
            let mut by_key: HashMap<(String, u32), AttemptRecord> = HashMap::new();
            let mut stmt = c
                .prepare(
                    "SELECT step, attempt, started_at, finished_at, status, outcome, error, request, response
                     FROM attempts WHERE run_id = ?1",
                )
                .map_err(sql("reading attempts"))?;
            let rows = stmt
                .query_map([run_id], |r| {
                    let parse_t = |s: Option<String>| s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok()).map(|d| d.with_timezone(&Utc));
                    let parse_j = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
                    Ok(AttemptRecord {
                        step: r.get(0)?,
                        attempt: r.get(1)?,
                        started_at: parse_t(r.get(2)?),
                        finished_at: parse_t(r.get(3)?),
                        status: r.get(4)?,
                        outcome: r.get(5)?,
                        error: r.get(6)?,
                        request: parse_j(r.get(7)?),
                        response: parse_j(r.get(8)?),
                    })
                })
                .map_err(sql("reading attempts"))?;
            for a in rows {
                let a = a.map_err(sql("reading attempts"))?;
                by_key.insert((a.step.clone(), a.attempt), a);
            }
            let mut stmt = c
                .prepare_cached(
                    "SELECT seq, attempt FROM events WHERE run_id = ?1 AND attempt IS NOT NULL ORDER BY seq",
                )
                .map_err(sql("reading attempts"))?;
            let rows = stmt
                .query_map([run_id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                .map_err(sql("reading attempts"))?;
            for row in rows {
                let (seq, json) = row.map_err(sql("reading attempts"))?;
                let a: AttemptRecord =
                    serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
                        id: run_id.to_string(),
                        message: format!("the attempt record of event {seq}: {e}"),
                    })?;
                by_key.insert((a.step.clone(), a.attempt), a);
            }
            let mut out: Vec<AttemptRecord> = by_key.into_values().collect();
            out.sort_by(|x, y| {
                (x.started_at, &x.step, x.attempt).cmp(&(y.started_at, &y.step, y.attempt))
            });
            Ok(out)
        })
    }

    pub fn events(&self, run_id: &str) -> Result<Vec<EventRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare("SELECT seq, at, kind, data FROM events WHERE run_id = ?1 ORDER BY seq")
                .map_err(sql("reading events"))?;
            let rows = stmt
                .query_map([run_id], |r| {
                    let data: String = r.get(3)?;
                    Ok(EventRow {
                        seq: r.get(0)?,
                        at: r.get(1)?,
                        kind: r.get(2)?,
                        data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
                    })
                })
                .map_err(sql("reading events"))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(sql("reading events"))
        })
    }

    /// Records a slot that was skipped (overlap), so it is not fired again after a restart.
    pub async fn skip_slot(
        &self,
        claim: SlotClaim,
        reason: &'static str,
    ) -> Result<bool, StoreError> {
        let v = self
            .write(move |c| {
                let n = c
                    .execute(
                        "INSERT INTO slots(schedule, slot, at, run_id, outcome, created_at) VALUES (?1, ?2, ?3, NULL, ?4, ?5) ON CONFLICT DO NOTHING",
                        params![claim.schedule, claim.slot, claim.at.timestamp_millis(), reason, ts(Utc::now())],
                    )
                    .map_err(sql("recording a skipped slot"))?;
                mark_schedule(c, &claim.schedule, claim.at)?;
                Ok(serde_json::Value::Bool(n > 0))
            })
            .await?;
        Ok(v.as_bool().unwrap_or(false))
    }

    /// Remembers that a schedule was first seen at `at` (catch-up never goes further back).
    pub async fn mark_schedule_seen(
        &self,
        schedule: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let schedule = schedule.to_string();
        self.write(move |c| {
            c.execute("INSERT INTO schedule_marks(schedule, since) VALUES (?1, ?2) ON CONFLICT DO NOTHING", params![schedule, at.timestamp_millis()])
                .map_err(sql("remembering a schedule"))?;
            Ok(serde_json::Value::Null)
        })
        .await
        .map(|_| ())
    }

    /// How far every schedule has been handled.
    pub fn schedule_marks(&self) -> Result<HashMap<String, DateTime<Utc>>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare("SELECT schedule, since FROM schedule_marks")
                .map_err(sql("reading schedule marks"))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(sql("reading schedule marks"))?;
            let mut out = HashMap::new();
            for row in rows {
                let (k, ms) = row.map_err(sql("reading schedule marks"))?;
                if let Some(t) = DateTime::from_timestamp_millis(ms) {
                    out.insert(k, t);
                }
            }
            Ok(out)
        })
    }

    /// (started and unfinished, queued) runs of a schedule: overlap is decided per schedule,
    /// as Temporal does, so one user's weekly report never waits for another's.
    pub fn run_counts(&self, schedule: &str) -> Result<(usize, usize), StoreError> {
        self.read(|c| {
            c.row(
                "SELECT COUNT(*) FILTER (WHERE status != 'pending'), COUNT(*) FILTER (WHERE status = 'pending') FROM runs WHERE schedule = ?1 AND finished_at IS NULL",
                [schedule],
                |r| Ok((r.get::<_, i64>(0)? as usize, r.get::<_, i64>(1)? as usize)),
            )
            .map_err(sql("counting runs"))
        })
    }

    /// Ids of the started, unfinished runs of a schedule.
    pub fn active_runs(&self, schedule: &str) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            strings(
                c,
                "SELECT id FROM runs WHERE schedule = ?1 AND finished_at IS NULL AND status != 'pending' ORDER BY created_at",
                [schedule],
                "listing active runs",
            )
        })
    }

    /// The oldest queued (created, not started) run of a schedule.
    pub fn oldest_queued(&self, schedule: &str) -> Result<Option<String>, StoreError> {
        self.read(|c| {
            c.row(
                "SELECT id FROM runs WHERE schedule = ?1 AND finished_at IS NULL AND status = 'pending' ORDER BY created_at, id LIMIT 1",
                [schedule],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("finding a queued run"))
        })
    }

    /// Schedules that have queued runs.
    pub fn schedules_with_queued_runs(&self) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            strings(
                c,
                "SELECT DISTINCT schedule FROM runs WHERE status = 'pending' AND schedule IS NOT NULL",
                [],
                "listing queued runs",
            )
        })
    }

    /// The schedule a run was fired by, if any.
    pub fn schedule_of(&self, run_id: &str) -> Result<Option<String>, StoreError> {
        self.read(|c| {
            c.row("SELECT schedule FROM runs WHERE id = ?1", [run_id], |r| {
                r.get::<_, Option<String>>(0)
            })
            .optional()
            .map(Option::flatten)
            .map_err(sql("reading a run's schedule"))
        })
    }

    /// The value of `PRAGMA synchronous` on the writer's settings (2 = FULL), for benchmarks.
    pub fn synchronous(&self) -> Result<i64, StoreError> {
        self.read(|c| {
            c.query_row("PRAGMA synchronous", [], |r| r.get(0))
                .map_err(sql("reading pragma"))
        })
    }
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

/// The writer runs the same few statements for every state change: each is prepared once per
/// connection (rusqlite's statement cache) instead of parsed again on every call.
trait Cached {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }
    fn row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// The first column of every row of `sql`, as strings.
fn strings<P: rusqlite::Params>(
    c: &Connection,
    sql_text: &str,
    params: P,
    doing: &'static str,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = c.prepare_cached(sql_text).map_err(sql(doing))?;
    let rows = stmt.query_map(params, |r| r.get(0)).map_err(sql(doing))?;
    rows.collect::<Result<Vec<String>, _>>().map_err(sql(doing))
}

fn load_run(c: &Connection, id: &str) -> Result<Option<Run>, StoreError> {
    let state: Option<String> = c
        .row("SELECT state FROM runs WHERE id = ?1", [id], |r| r.get(0))
        .optional()
        .map_err(sql("reading a run"))?;
    state
        .map(|s| {
            serde_json::from_str(&s).map_err(|e| StoreError::Corrupt {
                id: id.to_string(),
                message: e.to_string(),
            })
        })
        .transpose()
}

fn load_version(
    c: &Connection,
    versions: &Versions,
    hash: &str,
) -> Result<Arc<Workflow>, StoreError> {
    if let Some(wf) = versions.get(hash) {
        return Ok(wf);
    }
    let (path, source): (String, String) = c
        .row(
            "SELECT path, source FROM workflow_versions WHERE hash = ?1",
            [hash],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(sql("reading a workflow version"))?
        .ok_or_else(|| StoreError::NoSuchVersion(hash.to_string()))?;
    let wf = workflow::check_file(&path, &source).map_err(|diags| StoreError::BadVersion {
        hash: hash.to_string(),
        message: diags.first().map(|d| d.message.clone()).unwrap_or_default(),
    })?;
    let wf = Arc::new(wf);
    versions.insert(hash, wf.clone());
    Ok(wf)
}

/// The writer's copy of the state of unfinished runs, so a change does not read and parse the
/// stored state again. It holds only what this connection committed (or is committing), so it
/// is right as long as no other connection has committed since: each transaction starts by
/// reading `PRAGMA data_version`, which moves exactly when another connection (another
/// process: the daemon and a `runner run` may share a file) has committed, and the cache is
/// dropped when it moved. It is also cleared whenever a change is rolled back. Each entry keeps
/// the run's stored `rev` (every change to a run, its event log included, moves it).
#[derive(Default)]
struct RunCache {
    /// id → (stored rev, state, number of the run's next event)
    runs: HashMap<String, (i64, Arc<Run>, i64)>,
    /// `PRAGMA data_version` when the cache was last known to be right.
    data_version: Option<i64>,
}

/// A run as the writer read it: its state, stored revision, and its next event's number when
/// known (from the cache; otherwise it is looked up).
struct Loaded {
    run: Arc<Run>,
    rev: i64,
    next_seq: Option<i64>,
}

impl RunCache {
    /// At most this many runs are kept; beyond it the cache starts over.
    const CAPACITY: usize = 4096;

    /// Called at the start of every write transaction (the write lock is held, so nobody else
    /// commits until it ends): forgets everything if another connection has committed.
    fn check(&mut self, tx: &Connection) -> rusqlite::Result<()> {
        let version: i64 = tx.row("PRAGMA data_version", [], |r| r.get(0))?;
        if self.data_version != Some(version) {
            self.runs.clear();
            self.data_version = Some(version);
        }
        Ok(())
    }

    fn load(&mut self, tx: &Connection, id: &str) -> Result<Option<Loaded>, StoreError> {
        if let Some((rev, run, next_seq)) = self.runs.remove(id) {
            return Ok(Some(Loaded {
                run,
                rev,
                next_seq: Some(next_seq),
            }));
        }
        let row: Option<(i64, String)> = tx
            .row("SELECT rev, state FROM runs WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(sql("reading a run"))?;
        let Some((rev, state)) = row else {
            return Ok(None);
        };
        let run = serde_json::from_str(&state).map_err(|e| StoreError::Corrupt {
            id: id.to_string(),
            message: e.to_string(),
        })?;
        Ok(Some(Loaded {
            run: Arc::new(run),
            rev,
            next_seq: None,
        }))
    }

    fn put(&mut self, run: &Arc<Run>, rev: i64, next_seq: i64) {
        if self.runs.len() >= Self::CAPACITY {
            self.runs.clear();
        }
        self.runs
            .insert(run.id.clone(), (rev, run.clone(), next_seq));
    }

    fn remove(&mut self, id: &str) {
        self.runs.remove(id);
    }

    fn clear(&mut self) {
        self.runs.clear();
    }
}

/// How many commands one transaction takes at most.
const BATCH: usize = 512;

/// The single writer of the database, shared by every clone of a [`Store`].
///
/// Group commit without a hop when nobody else is writing: a caller that finds the writer
/// idle commits the queued changes itself, on its own thread, and so avoids waking another
/// thread and being woken back (on this VM each wake-up costs more than the statements of a
/// change). When the writer is busy, the caller leaves its change in the queue for the writer
/// thread, which commits everything queued in one transaction when the current one ends.
/// Long jobs (`Store::write`) always go to the thread.
struct Writer {
    queue: Mutex<WriteQueue>,
    work: Condvar,
    state: Mutex<WriterState>,
    /// Calls in flight whose outcome will be committed soon (`Store::outcome_pending`). While
    /// any is, a change waits for the thread's next batch instead of committing inline: a caller
    /// blocked in its own commit would keep the others (on a one-worker runtime, all of them)
    /// from queueing theirs, and every change would pay a commit of its own.
    expected: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct WriteQueue {
    commands: std::collections::VecDeque<Command>,
    closed: bool,
}

struct WriterState {
    conn: Connection,
    cache: RunCache,
    versions: Versions,
}

/// See [`Store::outcome_pending`].
pub struct OutcomePending(Arc<Writer>);

impl Drop for OutcomePending {
    fn drop(&mut self) {
        self.0
            .expected
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Dropped with the last clone of the store: the writer thread then finishes what is queued
/// and ends.
struct WriterHandle(Arc<Writer>);

impl Drop for WriterHandle {
    fn drop(&mut self) {
        unpoisoned(&self.0.queue).closed = true;
        self.0.work.notify_one();
    }
}

impl Writer {
    fn submit(&self, cmd: Command) {
        // Inline only when nothing else is coming: no other change waits and no call is in
        // flight. Under load the writer thread batches, and the callers' threads stay free for
        // their HTTP calls instead of waiting on an fsync. Long jobs always go to the thread.
        let inline = !matches!(cmd.job, Job::Exec(_))
            && self.expected.load(std::sync::atomic::Ordering::Relaxed) == 0;
        let mut queue = unpoisoned(&self.queue);
        if inline && queue.commands.is_empty() {
            // `try_lock` under the queue lock cannot deadlock: it never waits.
            let idle = match self.state.try_lock() {
                Ok(state) => Some(state),
                Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            };
            if let Some(mut state) = idle {
                drop(queue);
                let WriterState {
                    conn,
                    cache,
                    versions,
                } = &mut *state;
                // Changes queued meanwhile woke the thread, which commits them after this.
                process_batch(conn, vec![cmd], versions, cache);
                return;
            }
        }
        queue.commands.push_back(cmd);
        drop(queue);
        self.work.notify_one();
    }

    fn next_batch(&self) -> Option<Vec<Command>> {
        let mut q = unpoisoned(&self.queue);
        let n = q.commands.len().min(BATCH);
        (n > 0).then(|| q.commands.drain(..n).collect())
    }
}

/// A panic while a lock was held (a bug) must not stop every later change: the state the
/// lock guards stays usable (an open transaction is rolled back by the next batch).
fn unpoisoned<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn writer_loop(writer: &Writer) {
    loop {
        {
            let mut q = unpoisoned(&writer.queue);
            while q.commands.is_empty() {
                if q.closed {
                    return;
                }
                q = writer.work.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        }
        let mut state = unpoisoned(&writer.state);
        let WriterState {
            conn,
            cache,
            versions,
        } = &mut *state;
        while let Some(batch) = writer.next_batch() {
            process_batch(conn, batch, versions, cache);
        }
    }
}

/// Transaction control with cached statements: rusqlite's `Transaction` and `Savepoint` parse
/// `BEGIN`/`COMMIT`/`SAVEPOINT` text again on every use, two to three parses per state change.
fn control(conn: &Connection, statement: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(statement)?.execute([]).map(|_| ())
}

/// Starts a write transaction, and checks the writer's cache against other connections' commits.
fn begin(conn: &Connection, cache: &mut RunCache) -> rusqlite::Result<()> {
    control(conn, "BEGIN IMMEDIATE")?;
    let checked = cache.check(conn);
    if checked.is_err() {
        rollback(conn, cache);
    }
    checked
}

fn sql_failure(doing: &'static str, e: &rusqlite::Error) -> impl Fn() -> StoreError {
    let msg = e.to_string();
    move || StoreError::Sql {
        doing,
        source: rusqlite::Error::InvalidParameterName(msg.clone()),
    }
}

fn process_batch(
    conn: &Connection,
    mut batch: Vec<Command>,
    versions: &Versions,
    cache: &mut RunCache,
) {
    if !conn.is_autocommit() {
        // Left open by a batch that panicked.
        rollback(conn, cache);
    }
    if let Err(e) = begin(conn, cache) {
        fail_all(batch, sql_failure("starting a transaction", &e));
        return;
    }
    // First without savepoints: each costs two statements and a copy of every page it
    // changes (the sub-journal), and changes rarely fail. If one does, the transaction is
    // rolled back and the batch runs again, each change in its own savepoint, so that one
    // failing change does not undo the others. A job that can run only once (`Exec`) goes
    // straight to savepoints. A batch of one needs none: its failure undoes only itself.
    if batch.len() == 1 || batch.iter().all(|c| !matches!(c.job, Job::Exec(_))) {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut failed = None;
        for cmd in &mut batch {
            let outcome = run_job(conn, &mut cmd.job, versions, cache);
            if !outcome.is_ok() {
                failed = Some(outcome);
                break;
            }
            outcomes.push(outcome);
        }
        let Some(outcome) = failed else {
            let done = batch.into_iter().map(|c| c.reply).zip(outcomes).collect();
            commit(conn, cache, done);
            return;
        };
        rollback(conn, cache);
        if batch.len() == 1 {
            let cmd = batch.pop().expect("a batch of one");
            cmd.reply.send(outcome);
            return;
        }
        if let Err(e) = begin(conn, cache) {
            fail_all(batch, sql_failure("starting a transaction", &e));
            return;
        }
    }
    let mut done = Vec::with_capacity(batch.len());
    for mut cmd in batch {
        // Each command in its own savepoint: one failing change does not undo the others.
        if let Err(e) = control(conn, "SAVEPOINT change") {
            cmd.reply.fail(sql_failure("opening a savepoint", &e));
            continue;
        }
        let outcome = run_job(conn, &mut cmd.job, versions, cache);
        let end = if outcome.is_ok() {
            control(conn, "RELEASE change")
        } else {
            cache.clear();
            control(conn, "ROLLBACK TO change").and_then(|()| control(conn, "RELEASE change"))
        };
        if let Err(e) = end {
            cache.clear();
            cmd.reply.fail(sql_failure("closing a savepoint", &e));
            continue;
        }
        done.push((cmd.reply, outcome));
    }
    commit(conn, cache, done);
}

/// Commits the open transaction, then sends each outcome (or the commit's failure).
fn commit(conn: &Connection, cache: &mut RunCache, done: Vec<(Reply, Outcome)>) {
    match control(conn, "COMMIT") {
        Ok(()) => {
            for (reply, outcome) in done {
                reply.send(outcome);
            }
        }
        Err(e) => {
            rollback(conn, cache);
            let fail = sql_failure("committing", &e);
            for (reply, _) in done {
                reply.fail(&fail);
            }
        }
    }
}

/// Undoes the open transaction, if any, and what the cache learnt in it.
fn rollback(conn: &Connection, cache: &mut RunCache) {
    cache.clear();
    if !conn.is_autocommit() {
        drop(control(conn, "ROLLBACK"));
    }
}

fn fail_all(batch: Vec<Command>, fail: impl Fn() -> StoreError) {
    for cmd in batch {
        cmd.reply.fail(&fail);
    }
}

/// Runs one job inside the open transaction. Every job but `Exec` can run again (after a
/// rollback) with the same result.
fn run_job(tx: &Connection, job: &mut Job, versions: &Versions, cache: &mut RunCache) -> Outcome {
    match job {
        Job::Start {
            version,
            new,
            idempotency_key,
            slot,
            start: start_now,
            now,
        } => Outcome::Applied(start(tx, versions, cache, version, new, idempotency_key.as_deref(), slot.as_ref(), *start_now, *now)),
        Job::Apply {
            run_id,
            event,
            now,
            data,
            attempt,
            done_effect,
        } => Outcome::Applied(apply(tx, versions, cache, run_id, (event, data), *now, attempt.as_ref(), *done_effect)),
        Job::MarkDone { run_id, effect } => Outcome::Unit(
            tx.exec("DELETE FROM outbox WHERE run_id = ?1 AND id = ?2", params![*run_id, *effect])
                .map(|_| ())
                .map_err(sql("marking an effect done")),
        ),
        Job::SetKv { key, value } => Outcome::Unit(
            tx.exec("INSERT INTO kv(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value", params![*key, *value])
                .map(|_| ())
                .map_err(sql("writing settings")),
        ),
        Job::Exec(job) => Outcome::Value(match job.take() {
            Some(job) => job(tx),
            None => Err(StoreError::WriterGone),
        }),
    }
}

#[allow(clippy::too_many_arguments)]
fn start(
    tx: &Connection,
    versions: &Versions,
    cache: &mut RunCache,
    version: &Version,
    new: &NewRun,
    idempotency_key: Option<&str>,
    slot: Option<&SlotClaim>,
    start_now: bool,
    now: DateTime<Utc>,
) -> Result<Applied, StoreError> {
    let wf = version.workflow.clone();
    if let Some(claim) = slot {
        let claimed = tx
            .exec(
                "INSERT INTO slots(schedule, slot, at, run_id, outcome, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                params![claim.schedule, claim.slot, claim.at.timestamp_millis(), new.id, if start_now { "started" } else { "queued" }, ts(now)],
            )
            .map_err(sql("claiming a schedule slot"))?;
        mark_schedule(tx, &claim.schedule, claim.at)?;
        if claimed == 0 {
            let placeholder = Run::new(&wf, new.clone(), now);
            return Ok(Applied {
                run: Arc::new(placeholder),
                effects: vec![],
                created: false,
                slot_taken: true,
            });
        }
    }
    if let Some(key) = idempotency_key {
        let existing: Option<String> = tx
            .row(
                "SELECT id FROM runs WHERE workflow = ?1 AND idempotency_key = ?2",
                params![wf.name, key],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("looking up an idempotency key"))?;
        if let Some(id) = existing {
            let run = load_run(tx, &id)?.ok_or(StoreError::NoSuchRun(id))?;
            return Ok(Applied {
                run: Arc::new(run),
                effects: vec![],
                created: false,
                slot_taken: false,
            });
        }
    }
    tx.exec(
        "INSERT INTO workflow_versions(hash, name, path, source, created_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(hash) DO NOTHING",
        params![version.hash, wf.name, version.path, version.source, ts(now)],
    )
    .map_err(sql("storing a workflow version"))?;
    versions.insert(&version.hash, wf.clone());
    // A run that starts now is stored as the `Started` event leaves it: one row written once,
    // instead of a pending row updated in the same transaction (which wrote the row and its
    // status indexes twice).
    let run = Run::new(&wf, new.clone(), now);
    let (run, started) = if start_now {
        let (next, effects) = machine::decide(&wf, &run, &Event::Started, now);
        (next, Some(effects))
    } else {
        (run, None)
    };
    tx.exec(
        "INSERT INTO runs(id, workflow, version, status, trigger, idempotency_key, created_at, updated_at, finished_at, wake_at, state, schedule)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10, ?11)",
        params![
            run.id,
            run.workflow,
            run.version,
            run.status.as_str(),
            run.trigger,
            idempotency_key,
            ts(now),
            run.finished_at.map(ts),
            run.wake_at.map(|t| t.timestamp_millis()),
            serde_json::to_string(&run).expect("a run serializes"),
            slot.map(|c| c.schedule.as_str()),
        ],
    )
    .map_err(sql("creating a run"))?;
    record_event(
        tx,
        &run.id,
        Some(1),
        now,
        "created",
        &serde_json::json!({"trigger": run.trigger, "version": run.version}).to_string(),
        None,
    )?;
    let run = Arc::new(run);
    let Some(effects) = started else {
        return Ok(Applied {
            run,
            effects: vec![],
            created: true,
            slot_taken: false,
        });
    };
    let event = Event::Started;
    let data = serde_json::to_string(&event).expect("an event serializes");
    let change = Change {
        rev: 0,
        next_seq: Some(2),
        kind: event.name(),
        data: &data,
        attempt: None,
    };
    let mut applied = record_change(tx, cache, run, change, effects, now)?;
    applied.created = true;
    Ok(applied)
}

/// Remembers that a schedule has been handled up to `at` (only ever moves forward).
fn mark_schedule(c: &Connection, schedule: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
    c.exec(
        "INSERT INTO schedule_marks(schedule, since) VALUES (?1, ?2) ON CONFLICT(schedule) DO UPDATE SET since = max(since, excluded.since)",
        params![schedule, at.timestamp_millis()],
    )
    .map_err(sql("remembering a schedule's progress"))?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn apply(
    tx: &Connection,
    versions: &Versions,
    cache: &mut RunCache,
    run_id: &str,
    event: (&Event, &str),
    now: DateTime<Utc>,
    attempt: Option<&Recorded>,
    done_effect: Option<i64>,
) -> Result<Applied, StoreError> {
    let loaded = cache
        .load(tx, run_id)?
        .ok_or_else(|| StoreError::NoSuchRun(run_id.to_string()))?;
    let run = &loaded.run;
    let wf = load_version(tx, versions, &run.version)?;
    // An attempt is recorded only when the machine takes its outcome: the step is running that
    // attempt. A stale result (a duplicate of an attempt already decided, one that ends after a
    // cancel) leaves the record alone; after a manual retry the step runs attempt 1 again, and
    // its result replaces the previous round's (which the run's `failure` no longer shows either).
    let attempt = attempt.filter(|a| {
        run.step(&a.step)
            .is_some_and(|s| s.status == machine::StepStatus::Running && s.attempts == a.attempt)
    });
    let attempt = attempt.map(|a| a.json.as_str());
    if let Some(id) = done_effect {
        tx.exec(
            "DELETE FROM outbox WHERE run_id = ?1 AND id = ?2",
            params![run_id, id],
        )
        .map_err(sql("marking an effect done"))?;
    }
    transition(tx, cache, &wf, loaded, event, attempt, now)
}

/// Appends an event to a run's log and returns its number (per run, never reused).
/// `seq` is the number when the caller knows it (the writer's cache); otherwise it is looked up.
/// The lookup is avoided on the hot path: SQLite prepares that query again on every call here
/// (its statement status counts one re-prepare per step), which costs more than the rest of it.
fn record_event(
    tx: &Connection,
    run_id: &str,
    seq: Option<i64>,
    now: DateTime<Utc>,
    kind: &str,
    data: &str,
    attempt: Option<&str>,
) -> Result<i64, StoreError> {
    let seq: i64 = match seq {
        Some(seq) => seq,
        None => tx
            .row(
                "SELECT coalesce(max(seq), 0) + 1 FROM events WHERE run_id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .map_err(sql("recording an event"))?,
    };
    tx.exec(
        "INSERT INTO events(run_id, seq, at, kind, data, attempt) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![run_id, seq, ts(now), kind, data, attempt],
    )
    .map_err(sql("recording an event"))?;
    Ok(seq)
}

/// Runs the state machine and stores its result: the new state, the event and the effects.
fn transition(
    tx: &Connection,
    cache: &mut RunCache,
    wf: &Workflow,
    loaded: Loaded,
    (event, data): (&Event, &str),
    attempt: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Applied, StoreError> {
    let Loaded { run, rev, next_seq } = loaded;
    let (next, effects) = machine::decide(wf, &run, event, now);
    if effects.is_empty() && next == *run {
        // Absorbed (late, duplicate or not applicable): nothing changes, but keep the event for the record.
        let seq = record_event(
            tx,
            &run.id,
            next_seq,
            now,
            &format!("{} (absorbed)", event.name()),
            data,
            attempt,
        )?;
        // The log grew, so the revision moves too: another process's cached next event
        // number is then known to be stale.
        tx.exec(
            "UPDATE runs SET rev = ?2 WHERE id = ?1",
            params![run.id, rev + 1],
        )
        .map_err(sql("updating a run"))?;
        if !run.status.is_terminal() {
            cache.put(&run, rev + 1, seq + 1);
        }
        return Ok(Applied {
            run,
            effects: vec![],
            created: false,
            slot_taken: false,
        });
    }
    let next = Arc::new(next);
    let state = serde_json::to_string(&*next).expect("a run serializes");
    let wake_at = next.wake_at.map(|t| t.timestamp_millis());
    if next.status == run.status && next.finished_at == run.finished_at {
        // SQLite rewrites the index entries of every indexed column named in SET, changed or
        // not: leaving `status` and `finished_at` out when they stay saves a page per change.
        tx.exec(
            "UPDATE runs SET updated_at = ?2, wake_at = ?3, state = ?4, rev = ?5 WHERE id = ?1",
            params![next.id, ts(now), wake_at, state, rev + 1],
        )
    } else {
        tx.exec(
            "UPDATE runs SET status = ?2, updated_at = ?3, finished_at = ?4, wake_at = ?5, state = ?6, rev = ?7 WHERE id = ?1",
            params![
                next.id,
                next.status.as_str(),
                ts(now),
                next.finished_at.map(ts),
                wake_at,
                state,
                rev + 1,
            ],
        )
    }
    .map_err(sql("updating a run"))?;
    let change = Change {
        rev: rev + 1,
        next_seq,
        kind: event.name(),
        data,
        attempt,
    };
    record_change(tx, cache, next, change, effects, now)
}

/// The event of a change whose new run state is already written, as stored.
struct Change<'a> {
    /// The run row's revision after the change.
    rev: i64,
    /// The event's number when the writer knows it (otherwise it is looked up).
    next_seq: Option<i64>,
    kind: &'a str,
    data: &'a str,
    attempt: Option<&'a str>,
}

/// The rest of a change once the run's row is written: its event, the outbox (closed when the
/// run finished, then each external effect queued under an id derived from the event's
/// number) and the writer's cache.
fn record_change(
    tx: &Connection,
    cache: &mut RunCache,
    run: Arc<Run>,
    change: Change<'_>,
    effects: Vec<Effect>,
    now: DateTime<Utc>,
) -> Result<Applied, StoreError> {
    let seq = record_event(
        tx,
        &run.id,
        change.next_seq,
        now,
        change.kind,
        change.data,
        change.attempt,
    )?;
    if run.status.is_terminal() {
        // Nothing that was queued for a finished run may run after a restart.
        tx.exec("DELETE FROM outbox WHERE run_id = ?1", params![run.id])
            .map_err(sql("closing the outbox of a finished run"))?;
    }
    let mut out = Vec::with_capacity(effects.len());
    for (k, effect) in (0..).zip(effects) {
        if effect.is_external() {
            let id = seq * EFFECTS_PER_EVENT + k.min(EFFECTS_PER_EVENT - 1);
            tx.exec(
                "INSERT INTO outbox(run_id, id, effect, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![
                    run.id,
                    id,
                    serde_json::to_string(&effect).expect("an effect serializes"),
                    ts(now)
                ],
            )
            .map_err(sql("queueing an effect"))?;
            out.push((Some(id), effect));
        } else {
            out.push((None, effect));
        }
    }
    if run.status.is_terminal() {
        cache.remove(&run.id);
    } else {
        cache.put(&run, change.rev, seq + 1);
    }
    Ok(Applied {
        run,
        effects: out,
        created: false,
        slot_taken: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::machine::StepStatus;

    const SOURCE: &str =
        "name: one\nsteps:\n  - id: one\n    http:\n      url: http://127.0.0.1:9/one\n";

    /// Creates and starts run `id` of the workflow in `source`.
    async fn start(store: &Store, source: &str, id: &str) -> Applied {
        let wf = crate::workflow::check_file("wf.yaml", source).expect("checks");
        let version = Version::new("wf.yaml", source, wf);
        let new = NewRun {
            id: id.into(),
            version: version.hash.clone(),
            trigger: "api".into(),
            input: serde_json::json!({}),
            scheduled_for: None,
        };
        store
            .start_run(version, new, None, None, true, Utc::now())
            .await
            .expect("starts")
    }

    /// A database written by the previous schema (version 4): an unfinished run with events
    /// numbered globally, a done and a pending outbox row.
    fn version_4_database(path: &Path) -> String {
        let mut c = Connection::open(path).expect("open");
        for (i, m) in MIGRATIONS.iter().take(4).enumerate() {
            let tx = c.transaction().expect("tx");
            tx.execute_batch(m).expect("migration");
            tx.pragma_update(None, "user_version", i as i64 + 1)
                .expect("user_version");
            tx.commit().expect("commit");
        }
        let version = Version::new(
            "one.yaml",
            SOURCE,
            crate::workflow::check_file("one.yaml", SOURCE).expect("checks"),
        );
        let now = Utc::now();
        let run = Run::new(
            &version.workflow,
            NewRun {
                id: "r1".into(),
                version: version.hash.clone(),
                trigger: "api".into(),
                input: serde_json::json!({}),
                scheduled_for: None,
            },
            now,
        );
        let (run, effects) = machine::decide(&version.workflow, &run, &Event::Started, now);
        assert_eq!(effects.len(), 1);
        c.execute(
            "INSERT INTO workflow_versions VALUES (?1, 'one', 'one.yaml', ?2, ?3)",
            params![version.hash, SOURCE, ts(now)],
        )
        .expect("version");
        c.execute(
            "INSERT INTO runs(id, workflow, version, status, trigger, created_at, updated_at, state) VALUES ('r1', 'one', ?1, 'running', 'api', ?2, ?2, ?3)",
            params![version.hash, ts(now), serde_json::to_string(&run).expect("json")],
        )
        .expect("run");
        for (seq, run_id, kind) in [
            (7, "r1", "created"),
            (8, "r0", "created"),
            (9, "r1", "started"),
        ] {
            c.execute(
                "INSERT INTO events(seq, run_id, at, kind, data) VALUES (?1, ?2, ?3, ?4, '{}')",
                params![seq, run_id, ts(now), kind],
            )
            .expect("event");
        }
        let effect = serde_json::to_string(&effects[0].clone()).expect("json");
        c.execute(
            "INSERT INTO outbox(id, run_id, effect, created_at, done_at) VALUES (3, 'r1', ?1, ?2, ?2), (5, 'r1', ?1, ?2, NULL)",
            params![effect, ts(now)],
        )
        .expect("outbox");
        c.execute(
            "INSERT INTO attempts(run_id, step, attempt, started_at, outcome) VALUES ('r1', 'one', 1, ?1, 'retry'), ('r1', 'gone', 1, ?1, 'succeeded')",
            params![ts(now - chrono::Duration::seconds(1))],
        )
        .expect("attempts");
        version.hash
    }

    #[tokio::test]
    async fn a_version_4_database_migrates_and_its_pending_work_and_records_go_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.db");
        version_4_database(&path);
        let store = Store::open(&path).expect("migrates");

        let pending = store.pending_effects().expect("outbox");
        assert_eq!(
            pending.len(),
            1,
            "only the pending row survives: {pending:?}"
        );
        assert_eq!((pending[0].run_id.as_str(), pending[0].id), ("r1", -5));
        let seqs: Vec<i64> = store
            .events("r1")
            .expect("events")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [7, 9]);

        let event = Event::AttemptSucceeded {
            step: "one".into(),
            attempt: 1,
            output: serde_json::json!({"status": 200}),
        };
        let record = AttemptRecord {
            step: "one".into(),
            attempt: 1,
            started_at: Some(Utc::now()),
            finished_at: Some(Utc::now()),
            status: Some(200),
            outcome: "succeeded".into(),
            ..AttemptRecord::default()
        };
        let applied = store
            .apply("r1", event, Utc::now(), Some(record), Some(pending[0].id))
            .await
            .expect("applies");
        // Records from before version 6 are still read; a newer record of the same attempt wins.
        let attempts: Vec<(String, u32, String)> = store
            .attempts("r1")
            .expect("attempts")
            .into_iter()
            .map(|a| (a.step, a.attempt, a.outcome))
            .collect();
        assert_eq!(
            attempts,
            [
                ("gone".into(), 1, "succeeded".into()),
                ("one".into(), 1, "succeeded".into())
            ]
        );
        assert_eq!(applied.run.status, RunStatus::Succeeded);
        assert_eq!(applied.run.steps[0].status, StepStatus::Succeeded);
        assert!(store.pending_effects().expect("outbox").is_empty());
        let kinds: Vec<(i64, String)> = store
            .events("r1")
            .expect("events")
            .into_iter()
            .map(|e| (e.seq, e.kind))
            .collect();
        assert_eq!(kinds.last(), Some(&(10, "attempt_succeeded".to_string())));
    }

    /// Runs are listed newest first by creation (rowid) order, not by id, with the filters and
    /// the limit applied.
    #[tokio::test]
    async fn runs_are_listed_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("list.db")).expect("opens");
        for id in ["z-first", "a-second", "m-third"] {
            start(&store, SOURCE, id).await;
        }
        let list = |filter: RunFilter| -> Vec<String> {
            store
                .list_runs(&filter)
                .expect("lists")
                .into_iter()
                .map(|r| r.id)
                .collect()
        };
        assert_eq!(
            list(RunFilter::default()),
            ["m-third", "a-second", "z-first"]
        );
        assert_eq!(
            list(RunFilter {
                limit: 2,
                ..RunFilter::default()
            }),
            ["m-third", "a-second"]
        );
        assert_eq!(
            list(RunFilter {
                workflow: Some("one".into()),
                status: Some(RunStatus::Running),
                limit: 0,
            }),
            ["m-third", "a-second", "z-first"]
        );
        assert!(
            list(RunFilter {
                workflow: Some("other".into()),
                ..RunFilter::default()
            })
            .is_empty()
        );
    }

    /// A batch is first tried without savepoints; when one change in it fails, the batch runs
    /// again with a savepoint per change, and the failure undoes only that change.
    #[tokio::test]
    async fn a_failing_change_in_a_batch_undoes_only_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("batch.db");
        let store = Store::open(&path).expect("opens");
        start(&store, SOURCE, "run-1").await;
        // The batch as the writer thread would take it, on a connection of its own.
        let conn = Connection::open(&path).expect("opens");
        configure(&conn).expect("configures");
        let (versions, mut cache) = (Versions::default(), RunCache::default());
        let cancel = |run_id: &str| Job::Apply {
            run_id: run_id.into(),
            event: Event::CancelRequested { reason: None },
            data: "{}".into(),
            now: Utc::now(),
            attempt: None,
            done_effect: None,
        };
        let (kv_tx, kv_rx) = oneshot::channel();
        let (missing_tx, missing_rx) = oneshot::channel();
        let (cancel_tx, cancel_rx) = oneshot::channel();
        let batch = vec![
            Command {
                job: Job::SetKv {
                    key: "k".into(),
                    value: "v".into(),
                },
                reply: Reply::Unit(kv_tx),
            },
            Command {
                job: cancel("no-such-run"),
                reply: Reply::Applied(missing_tx),
            },
            Command {
                job: cancel("run-1"),
                reply: Reply::Applied(cancel_tx),
            },
        ];
        process_batch(&conn, batch, &versions, &mut cache);
        kv_rx
            .await
            .expect("a reply")
            .expect("the setting is written");
        let missing = missing_rx.await.expect("a reply");
        assert!(
            matches!(missing, Err(StoreError::NoSuchRun(ref id)) if id == "no-such-run"),
            "{missing:?}"
        );
        let cancelled = cancel_rx.await.expect("a reply").expect("cancels");
        assert_eq!(cancelled.run.status, RunStatus::Cancelled);
        assert!(conn.is_autocommit(), "the transaction is closed");
        assert_eq!(store.get_kv("k").expect("reads").as_deref(), Some("v"));
        let run = store.get_run("run-1").expect("reads").expect("the run");
        assert_eq!(run.status, RunStatus::Cancelled);
        let kinds: Vec<String> = store
            .events("run-1")
            .expect("events")
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["created", "started", "cancel_requested"]);
    }

    /// Outbox ids stay unique within a run across many transitions, and marking one done
    /// removes that row only.
    #[tokio::test]
    async fn effects_get_ids_that_are_never_reused_and_done_rows_leave_the_outbox() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("new.db")).expect("opens");
        let mut ids = Vec::new();
        for n in 0..3 {
            let applied = start(&store, SOURCE, &format!("run-{n}")).await;
            let id = applied.effects[0].0.expect("an outbox row");
            ids.push((applied.run.id.clone(), id));
        }
        assert_eq!(store.pending_effects().expect("outbox").len(), 3);
        let (run, id) = ids[1].clone();
        store.mark_done(&run, id).await.expect("done");
        let left: Vec<String> = store
            .pending_effects()
            .expect("outbox")
            .into_iter()
            .map(|p| p.run_id)
            .collect();
        assert_eq!(left, ["run-0", "run-2"]);
        // A cancel ends run-0: its outbox closes, and its events keep counting from where they were.
        let applied = store
            .apply(
                "run-0",
                Event::CancelRequested { reason: None },
                Utc::now(),
                None,
                None,
            )
            .await
            .expect("cancels");
        assert!(applied.run.status.is_terminal());
        let left: Vec<String> = store
            .pending_effects()
            .expect("outbox")
            .into_iter()
            .map(|p| p.run_id)
            .collect();
        assert_eq!(left, ["run-2"]);
        let seqs: Vec<i64> = store
            .events("run-0")
            .expect("events")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
    }

    /// Two processes on one file: each writer drops its cached states when the other has
    /// committed (`PRAGMA data_version`), so a change made by the other is never overwritten
    /// with a stale state.
    #[tokio::test]
    async fn a_writer_never_uses_a_state_another_process_has_changed() {
        const TWO: &str = "name: two\nsteps:\n  - id: one\n    http:\n      url: http://127.0.0.1:9/one\n  - id: two\n    http:\n      url: http://127.0.0.1:9/two\n";
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("shared.db");
        let (a, b) = (
            Store::open(&path).expect("a"),
            Store::open(&path).expect("b"),
        );
        start(&a, TWO, "shared").await;
        let ok = |step: &str| Event::AttemptSucceeded {
            step: step.into(),
            attempt: 1,
            output: serde_json::json!({"status": 200}),
        };
        let after_b = b
            .apply("shared", ok("one"), Utc::now(), None, None)
            .await
            .expect("b applies");
        assert_eq!(after_b.run.steps[1].status, StepStatus::Running);
        let after_a = a
            .apply("shared", ok("two"), Utc::now(), None, None)
            .await
            .expect("a applies");
        assert_eq!(
            after_a.run.status,
            RunStatus::Succeeded,
            "a used a stale state: {:?}",
            after_a.run
        );
        let seqs: Vec<i64> = a
            .events("shared")
            .expect("events")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
    }
}
