use crate::engine::machine::{self, Effect, Event, NewRun, Run, RunStatus};
use crate::workflow::{self, Workflow};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, mpsc};
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
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub status: Option<u16>,
    /// `succeeded`, `retry`, `failed`
    pub outcome: String,
    pub error: Option<String>,
    pub request: Option<serde_json::Value>,
    pub response: Option<serde_json::Value>,
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
    pub run: Run,
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

enum Command {
    Start {
        version: Version,
        new: NewRun,
        idempotency_key: Option<String>,
        slot: Option<SlotClaim>,
        start: bool,
        now: DateTime<Utc>,
        reply: oneshot::Sender<Result<Applied, StoreError>>,
    },
    Apply {
        run_id: String,
        event: Event,
        now: DateTime<Utc>,
        attempt: Option<AttemptRecord>,
        done_effect: Option<i64>,
        reply: oneshot::Sender<Result<Applied, StoreError>>,
    },
    MarkDone {
        effect: i64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    SetKv {
        key: String,
        value: String,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Exec {
        job: WriteJob,
        reply: oneshot::Sender<Result<serde_json::Value, StoreError>>,
    },
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
    tx: mpsc::Sender<Command>,
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
];

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
        let (tx, rx) = mpsc::channel();
        let writer_versions = versions.clone();
        std::thread::Builder::new()
            .name("runner-db-writer".into())
            .spawn(move || writer_loop(writer, rx, writer_versions))
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        Ok(Store {
            tx,
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
        self.send(Command::Start {
            version,
            new,
            idempotency_key,
            slot,
            start,
            now,
            reply,
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
        self.send(Command::Apply {
            run_id: run_id.to_string(),
            event,
            now,
            attempt,
            done_effect,
            reply,
        })?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Marks an outbox row done when its effect produced no event (it was abandoned).
    pub async fn mark_done(&self, effect: i64) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::MarkDone { effect, reply })?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    pub async fn set_kv(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::SetKv {
            key: key.to_string(),
            value: value.to_string(),
            reply,
        })?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Runs `job` inside a write transaction of the group-commit writer.
    pub async fn write<F>(&self, job: F) -> Result<serde_json::Value, StoreError>
    where
        F: FnOnce(&Connection) -> Result<serde_json::Value, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Exec {
            job: Box::new(job),
            reply,
        })?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    fn send(&self, cmd: Command) -> Result<(), StoreError> {
        self.tx.send(cmd).map_err(|_| StoreError::WriterGone)
    }

    /// Reads with the shared read connection.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.reader.lock().expect("reader lock");
        f(&conn)
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
                     ORDER BY created_at DESC, id DESC LIMIT ?3",
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
            let mut stmt = c
                .prepare("SELECT id FROM runs WHERE finished_at IS NULL ORDER BY created_at, id")
                .map_err(sql("listing unfinished runs"))?;
            let rows = stmt
                .query_map([], |r| r.get(0))
                .map_err(sql("listing unfinished runs"))?;
            rows.collect::<Result<Vec<String>, _>>()
                .map_err(sql("listing unfinished runs"))
        })
    }

    /// Effects that were committed but not yet done (to perform again after a restart).
    pub fn pending_effects(&self) -> Result<Vec<PendingEffect>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare("SELECT id, run_id, effect FROM outbox WHERE done_at IS NULL ORDER BY id")
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

    pub fn attempts(&self, run_id: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare(
                    "SELECT step, attempt, started_at, finished_at, status, outcome, error, request, response
                     FROM attempts WHERE run_id = ?1 ORDER BY started_at, step, attempt",
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
            rows.collect::<Result<Vec<_>, _>>().map_err(sql("reading attempts"))
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
            let mut stmt = c
                .prepare_cached("SELECT id FROM runs WHERE schedule = ?1 AND finished_at IS NULL AND status != 'pending' ORDER BY created_at")
                .map_err(sql("listing active runs"))?;
            let rows = stmt.query_map([schedule], |r| r.get(0)).map_err(sql("listing active runs"))?;
            rows.collect::<Result<Vec<String>, _>>().map_err(sql("listing active runs"))
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
            let mut stmt = c
                .prepare("SELECT DISTINCT schedule FROM runs WHERE status = 'pending' AND schedule IS NOT NULL")
                .map_err(sql("listing queued runs"))?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(sql("listing queued runs"))?;
            rows.collect::<Result<Vec<String>, _>>().map_err(sql("listing queued runs"))
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

/// How many commands one transaction takes at most.
const BATCH: usize = 512;

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Command>, versions: Versions) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        process_batch(&mut conn, batch, &versions);
    }
}

#[allow(clippy::large_enum_variant)] // short-lived, one per command in a batch
enum Reply {
    Applied(
        oneshot::Sender<Result<Applied, StoreError>>,
        Result<Applied, StoreError>,
    ),
    Unit(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
    Value(
        oneshot::Sender<Result<serde_json::Value, StoreError>>,
        Result<serde_json::Value, StoreError>,
    ),
}

impl Reply {
    fn fail(self, e: impl Fn() -> StoreError) {
        match self {
            Reply::Applied(tx, _) => drop(tx.send(Err(e()))),
            Reply::Unit(tx, _) => drop(tx.send(Err(e()))),
            Reply::Value(tx, _) => drop(tx.send(Err(e()))),
        }
    }
    fn send(self) {
        match self {
            Reply::Applied(tx, r) => drop(tx.send(r)),
            Reply::Unit(tx, r) => drop(tx.send(r)),
            Reply::Value(tx, r) => drop(tx.send(r)),
        }
    }
}

fn process_batch(conn: &mut Connection, batch: Vec<Command>, versions: &Versions) {
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let msg = e.to_string();
            for cmd in batch {
                command_reply(cmd).fail(|| StoreError::Sql {
                    doing: "starting a transaction",
                    source: rusqlite::Error::InvalidParameterName(msg.clone()),
                });
            }
            return;
        }
    };
    if batch.len() == 1 {
        // A batch of one needs no savepoint: when the change fails, the whole transaction is undone.
        let cmd = batch.into_iter().next().expect("a batch of one");
        let reply = run_command(&tx, cmd, versions);
        if !reply_ok(&reply) {
            drop(tx.rollback());
            reply.send();
            return;
        }
        match tx.commit() {
            Ok(()) => reply.send(),
            Err(e) => {
                let msg = e.to_string();
                reply.fail(|| StoreError::Sql {
                    doing: "committing",
                    source: rusqlite::Error::InvalidParameterName(msg.clone()),
                });
            }
        }
        return;
    }
    let mut replies = Vec::with_capacity(batch.len());
    let mut tx = tx;
    for cmd in batch {
        // Each command in its own savepoint: one failing change does not undo the others.
        let reply = match tx.savepoint() {
            Ok(mut sp) => {
                let reply = run_command(&sp, cmd, versions);
                let ok = reply_ok(&reply);
                let end = if ok {
                    sp.commit()
                } else {
                    sp.rollback().and_then(|_| sp.commit())
                };
                if let Err(e) = end {
                    let msg = e.to_string();
                    reply.fail(|| StoreError::Sql {
                        doing: "closing a savepoint",
                        source: rusqlite::Error::InvalidParameterName(msg.clone()),
                    });
                    continue;
                }
                reply
            }
            Err(e) => {
                let msg = e.to_string();
                command_reply(cmd).fail(|| StoreError::Sql {
                    doing: "opening a savepoint",
                    source: rusqlite::Error::InvalidParameterName(msg.clone()),
                });
                continue;
            }
        };
        replies.push(reply);
    }
    match tx.commit() {
        Ok(()) => replies.into_iter().for_each(Reply::send),
        Err(e) => {
            let msg = e.to_string();
            for r in replies {
                r.fail(|| StoreError::Sql {
                    doing: "committing",
                    source: rusqlite::Error::InvalidParameterName(msg.clone()),
                });
            }
        }
    }
}

fn reply_ok(r: &Reply) -> bool {
    match r {
        Reply::Applied(_, r) => r.is_ok(),
        Reply::Unit(_, r) => r.is_ok(),
        Reply::Value(_, r) => r.is_ok(),
    }
}

/// The reply channel of a command that could not run.
fn command_reply(cmd: Command) -> Reply {
    match cmd {
        Command::Start { reply, .. } | Command::Apply { reply, .. } => {
            Reply::Applied(reply, Err(StoreError::WriterGone))
        }
        Command::MarkDone { reply, .. } | Command::SetKv { reply, .. } => {
            Reply::Unit(reply, Err(StoreError::WriterGone))
        }
        Command::Exec { reply, .. } => Reply::Value(reply, Err(StoreError::WriterGone)),
    }
}

fn run_command(tx: &Connection, cmd: Command, versions: &Versions) -> Reply {
    match cmd {
        Command::Start {
            version,
            new,
            idempotency_key,
            slot,
            start: start_now,
            now,
            reply,
        } => Reply::Applied(reply, start(tx, versions, version, new, idempotency_key, slot, start_now, now)),
        Command::Apply {
            run_id,
            event,
            now,
            attempt,
            done_effect,
            reply,
        } => Reply::Applied(reply, apply(tx, versions, &run_id, &event, now, attempt.as_ref(), done_effect)),
        Command::MarkDone { effect, reply } => Reply::Unit(
            reply,
            tx.exec("UPDATE outbox SET done_at = ?2 WHERE id = ?1 AND done_at IS NULL", params![effect, ts(Utc::now())])
                .map(|_| ())
                .map_err(sql("marking an effect done")),
        ),
        Command::SetKv { key, value, reply } => Reply::Unit(
            reply,
            tx.exec("INSERT INTO kv(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value", params![key, value])
                .map(|_| ())
                .map_err(sql("writing settings")),
        ),
        Command::Exec { job, reply } => Reply::Value(reply, job(tx)),
    }
}

#[allow(clippy::too_many_arguments)]
fn start(
    tx: &Connection,
    versions: &Versions,
    version: Version,
    new: NewRun,
    idempotency_key: Option<String>,
    slot: Option<SlotClaim>,
    start_now: bool,
    now: DateTime<Utc>,
) -> Result<Applied, StoreError> {
    let wf = version.workflow.clone();
    if let Some(claim) = &slot {
        let claimed = tx
            .exec(
                "INSERT INTO slots(schedule, slot, at, run_id, outcome, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                params![claim.schedule, claim.slot, claim.at.timestamp_millis(), new.id, if start_now { "started" } else { "queued" }, ts(now)],
            )
            .map_err(sql("claiming a schedule slot"))?;
        mark_schedule(tx, &claim.schedule, claim.at)?;
        if claimed == 0 {
            let placeholder = Run::new(&wf, new, now);
            return Ok(Applied {
                run: placeholder,
                effects: vec![],
                created: false,
                slot_taken: true,
            });
        }
    }
    if let Some(key) = &idempotency_key {
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
                run,
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
    let run = Run::new(&wf, new, now);
    tx.exec(
        "INSERT INTO runs(id, workflow, version, status, trigger, idempotency_key, created_at, updated_at, state, schedule)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9)",
        params![
            run.id,
            run.workflow,
            run.version,
            run.status.as_str(),
            run.trigger,
            idempotency_key,
            ts(now),
            serde_json::to_string(&run).expect("a run serializes"),
            slot.as_ref().map(|c| c.schedule.as_str()),
        ],
    )
    .map_err(sql("creating a run"))?;
    tx.exec(
        "INSERT INTO events(run_id, at, kind, data) VALUES (?1, ?2, 'created', ?3)",
        params![
            run.id,
            ts(now),
            serde_json::json!({"trigger": run.trigger, "version": run.version}).to_string()
        ],
    )
    .map_err(sql("recording an event"))?;
    if !start_now {
        return Ok(Applied {
            run,
            effects: vec![],
            created: true,
            slot_taken: false,
        });
    }
    let mut applied = transition(tx, &wf, run, &Event::Started, now)?;
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

fn apply(
    tx: &Connection,
    versions: &Versions,
    run_id: &str,
    event: &Event,
    now: DateTime<Utc>,
    attempt: Option<&AttemptRecord>,
    done_effect: Option<i64>,
) -> Result<Applied, StoreError> {
    let run = load_run(tx, run_id)?.ok_or_else(|| StoreError::NoSuchRun(run_id.to_string()))?;
    let wf = load_version(tx, versions, &run.version)?;
    // An attempt is recorded only when the machine takes its outcome: the step is running that
    // attempt. A stale result (a duplicate of an attempt already decided, one that ends after a
    // cancel) leaves the record alone; after a manual retry the step runs attempt 1 again, and
    // its result replaces the previous round's (which the run's `failure` no longer shows either).
    let attempt = attempt.filter(|a| {
        run.step(&a.step)
            .is_some_and(|s| s.status == machine::StepStatus::Running && s.attempts == a.attempt)
    });
    if let Some(a) = attempt {
        tx.exec(
            "INSERT INTO attempts(run_id, step, attempt, started_at, finished_at, status, outcome, error, request, response)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT(run_id, step, attempt) DO UPDATE SET started_at = excluded.started_at, finished_at = excluded.finished_at,
               status = excluded.status, outcome = excluded.outcome, error = excluded.error, request = excluded.request,
               response = excluded.response",
            params![
                run_id,
                a.step,
                a.attempt,
                a.started_at.map(ts),
                a.finished_at.map(ts),
                a.status,
                a.outcome,
                a.error,
                a.request.as_ref().map(|v| v.to_string()),
                a.response.as_ref().map(|v| v.to_string()),
            ],
        )
        .map_err(sql("recording an attempt"))?;
    }
    if let Some(id) = done_effect {
        tx.exec(
            "UPDATE outbox SET done_at = ?2 WHERE id = ?1 AND done_at IS NULL",
            params![id, ts(now)],
        )
        .map_err(sql("marking an effect done"))?;
    }
    transition(tx, &wf, run, event, now)
}

/// Runs the state machine and stores its result: the new state, the event and the effects.
fn transition(
    tx: &Connection,
    wf: &Workflow,
    run: Run,
    event: &Event,
    now: DateTime<Utc>,
) -> Result<Applied, StoreError> {
    let (next, effects) = machine::decide(wf, &run, event, now);
    if next == run && effects.is_empty() {
        // Absorbed (late, duplicate or not applicable): nothing changes, but keep the event for the record.
        tx.exec(
            "INSERT INTO events(run_id, at, kind, data) VALUES (?1, ?2, ?3, ?4)",
            params![
                run.id,
                ts(now),
                format!("{} (absorbed)", event.name()),
                serde_json::to_string(event).expect("an event serializes")
            ],
        )
        .map_err(sql("recording an event"))?;
        return Ok(Applied {
            run: next,
            effects: vec![],
            created: false,
            slot_taken: false,
        });
    }
    tx.exec(
        "UPDATE runs SET status = ?2, updated_at = ?3, finished_at = ?4, wake_at = ?5, state = ?6 WHERE id = ?1",
        params![
            next.id,
            next.status.as_str(),
            ts(now),
            next.finished_at.map(ts),
            next.wake_at.map(|t| t.timestamp_millis()),
            serde_json::to_string(&next).expect("a run serializes"),
        ],
    )
    .map_err(sql("updating a run"))?;
    tx.exec(
        "INSERT INTO events(run_id, at, kind, data) VALUES (?1, ?2, ?3, ?4)",
        params![
            next.id,
            ts(now),
            event.name(),
            serde_json::to_string(event).expect("an event serializes")
        ],
    )
    .map_err(sql("recording an event"))?;
    if next.status.is_terminal() {
        // Nothing that was queued for a finished run may run after a restart.
        tx.exec(
            "UPDATE outbox SET done_at = ?2 WHERE run_id = ?1 AND done_at IS NULL",
            params![next.id, ts(now)],
        )
        .map_err(sql("closing the outbox of a finished run"))?;
    }
    let mut out = Vec::with_capacity(effects.len());
    for effect in effects {
        if effect.is_external() {
            tx.exec(
                "INSERT INTO outbox(run_id, effect, created_at) VALUES (?1, ?2, ?3)",
                params![
                    next.id,
                    serde_json::to_string(&effect).expect("an effect serializes"),
                    ts(now)
                ],
            )
            .map_err(sql("queueing an effect"))?;
            out.push((Some(tx.last_insert_rowid()), effect));
        } else {
            out.push((None, effect));
        }
    }
    Ok(Applied {
        run: next,
        effects: out,
        created: false,
        slot_taken: false,
    })
}
