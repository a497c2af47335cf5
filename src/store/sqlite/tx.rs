//! The steps of a change in SQLite's SQL: [`RunTx`] over the writer's connection, with the
//! writer's cache of run states.
//!
//! I/O shell. Every statement is prepared once per connection (rusqlite's statement cache)
//! instead of parsed again on every call.

use super::{ms, sql};
use crate::engine::Run;
use crate::store::StoreError;
use crate::store::apply::{EventWrite, KeyedRuns, Loaded, RunTx, RunWrite};
use crate::store::types::{SlotClaim, Version, Versions};
use crate::workflow::{self, Workflow};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::sync::Arc;

/// The writer runs the same few statements for every state change: each is prepared once.
pub(super) trait Cached {
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

/// The writer's copy of the state of unfinished runs, so a change does not read and parse the
/// stored state again. It holds only what this connection committed (or is committing), so it
/// is right as long as no other connection has committed since: each transaction starts by
/// reading `PRAGMA data_version`, which moves exactly when another connection (another
/// process: the daemon and a `runner run` may share a file) has committed, and the cache is
/// dropped when it moved. It is also cleared whenever a change is rolled back. Each entry keeps
/// the run's stored `rev` (every change to a run, its event log included, moves it).
#[derive(Default)]
pub(super) struct RunCache {
    /// id → (stored rev, state, number of the run's next event)
    runs: HashMap<String, (i64, Arc<Run>, i64)>,
    /// `PRAGMA data_version` when the cache was last known to be right.
    data_version: Option<i64>,
}

impl RunCache {
    /// At most this many runs are kept; beyond it the cache starts over.
    const CAPACITY: usize = 4096;

    /// Called at the start of every write transaction (the write lock is held, so nobody else
    /// commits until it ends): forgets everything if another connection has committed.
    pub(super) fn check(&mut self, tx: &Connection) -> rusqlite::Result<()> {
        let version: i64 = tx.row("PRAGMA data_version", [], |r| r.get(0))?;
        if self.data_version != Some(version) {
            self.runs.clear();
            self.data_version = Some(version);
        }
        Ok(())
    }

    pub(super) fn clear(&mut self) {
        self.runs.clear();
    }
}

/// One change's view of the writer: its connection (in a transaction), cache and versions.
pub(super) struct SqliteTx<'a> {
    pub conn: &'a Connection,
    pub cache: &'a mut RunCache,
    pub versions: &'a Versions,
}

pub(super) fn load_state(c: &Connection, id: &str) -> Result<Option<Run>, StoreError> {
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

pub(super) fn load_version(
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
    let wf = workflow::builtin::check_stored(&path, &source).map_err(|diags| {
        StoreError::BadVersion {
            hash: hash.to_string(),
            message: diags.first().map(|d| d.message.clone()).unwrap_or_default(),
        }
    })?;
    let wf = Arc::new(wf);
    versions.insert(hash, wf.clone());
    Ok(wf)
}

/// Remembers that a schedule has been handled up to `at` (only ever moves forward).
pub(super) fn mark_schedule(
    c: &Connection,
    schedule: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    c.exec(
        "INSERT INTO schedule_marks(schedule, since) VALUES (?1, ?2) ON CONFLICT(schedule) DO UPDATE SET since = max(since, excluded.since)",
        params![schedule, ms(at)],
    )
    .map_err(sql("remembering a schedule's progress"))?;
    Ok(())
}

impl RunTx for SqliteTx<'_> {
    async fn load_run(&mut self, id: &str) -> Result<Option<Loaded>, StoreError> {
        if let Some((rev, run, next_seq)) = self.cache.runs.remove(id) {
            return Ok(Some(Loaded {
                run,
                rev,
                next_seq: Some(next_seq),
            }));
        }
        let row: Option<(i64, String)> = self
            .conn
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

    /// SQLite prepares this query again on every call in this schema (its statement status
    /// counts one re-prepare per call), which costs more than the rest of a change: the cache
    /// knows the number on the hot path, and this runs only on a miss.
    async fn next_seq(&mut self, id: &str) -> Result<i64, StoreError> {
        self.conn
            .row(
                "SELECT coalesce(max(seq), 0) + 1 FROM events WHERE run_id = ?1",
                [id],
                |r| r.get(0),
            )
            .map_err(sql("recording an event"))
    }

    async fn version(&mut self, hash: &str) -> Result<Arc<Workflow>, StoreError> {
        load_version(self.conn, self.versions, hash)
    }

    async fn insert_version(&mut self, v: &Version, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.conn
            .exec(
                "INSERT INTO workflow_versions(hash, name, path, source, created_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(hash) DO NOTHING",
                params![v.hash, v.workflow.name, v.path, v.source, ms(now)],
            )
            .map_err(sql("storing a workflow version"))?;
        self.versions.insert(&v.hash, v.workflow.clone());
        Ok(())
    }

    async fn claim_slot(
        &mut self,
        claim: &SlotClaim,
        run_id: &str,
        outcome: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let claimed = self
            .conn
            .exec(
                "INSERT INTO slots(schedule, slot, at, run_id, outcome, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                params![claim.schedule, claim.slot, ms(claim.at), run_id, outcome, ms(now)],
            )
            .map_err(sql("claiming a schedule slot"))?;
        mark_schedule(self.conn, &claim.schedule, claim.at)?;
        Ok(claimed > 0)
    }

    async fn find_idempotent(
        &mut self,
        workflow: &str,
        key: &str,
    ) -> Result<Option<Run>, StoreError> {
        let existing: Option<String> = self
            .conn
            .row(
                "SELECT id FROM runs WHERE workflow = ?1 AND idempotency_key = ?2",
                params![workflow, key],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("looking up an idempotency key"))?;
        match existing {
            Some(id) => Ok(Some(
                load_state(self.conn, &id)?.ok_or(StoreError::NoSuchRun(id))?,
            )),
            None => Ok(None),
        }
    }

    async fn write_run(&mut self, w: &RunWrite<'_>) -> Result<(), StoreError> {
        match *w {
            RunWrite::Insert {
                run,
                state,
                idempotency_key,
                schedule,
            } => self.conn.exec(
                "INSERT INTO runs(id, workflow, version, status, trigger, idempotency_key, created_at, updated_at, finished_at, wake_at, state, schedule, concurrency_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    run.id,
                    run.workflow,
                    run.version,
                    run.status.as_str(),
                    run.trigger.as_str(),
                    idempotency_key,
                    ms(run.created_at),
                    run.finished_at.map(ms),
                    run.wake_at.map(ms),
                    state,
                    schedule,
                    run.concurrency_key,
                ],
            ),
            // SQLite rewrites the index entries of every indexed column named in SET, changed
            // or not: leaving `status` and `finished_at` out when they stay saves a page.
            RunWrite::Update {
                run,
                state,
                rev_before,
                at,
                status_changed: false,
            } => self.conn.exec(
                "UPDATE runs SET updated_at = ?2, wake_at = ?3, state = ?4, rev = ?5 WHERE id = ?1",
                params![run.id, ms(at), run.wake_at.map(ms), state, rev_before + 1],
            ),
            RunWrite::Update {
                run,
                state,
                rev_before,
                at,
                status_changed: true,
            } => self.conn.exec(
                "UPDATE runs SET status = ?2, updated_at = ?3, finished_at = ?4, wake_at = ?5, state = ?6, rev = ?7 WHERE id = ?1",
                params![
                    run.id,
                    run.status.as_str(),
                    ms(at),
                    run.finished_at.map(ms),
                    run.wake_at.map(ms),
                    state,
                    rev_before + 1,
                ],
            ),
            RunWrite::Touch { id, rev_before } => self.conn.exec(
                "UPDATE runs SET rev = ?2 WHERE id = ?1",
                params![id, rev_before + 1],
            ),
        }
        .map(drop)
        .map_err(sql(match w {
            RunWrite::Insert { .. } => "creating a run",
            _ => "updating a run",
        }))
    }

    async fn append_event(&mut self, run_id: &str, e: &EventWrite<'_>) -> Result<(), StoreError> {
        self.conn
            .exec(
                "INSERT INTO events(run_id, seq, at, kind, data, attempt) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![run_id, e.seq, ms(e.at), e.kind, e.data, e.attempt],
            )
            .map(drop)
            .map_err(sql("recording an event"))
    }

    async fn delete_effect(&mut self, run_id: &str, id: i64) -> Result<(), StoreError> {
        self.conn
            .exec(
                "DELETE FROM outbox WHERE run_id = ?1 AND id = ?2",
                params![run_id, id],
            )
            .map(drop)
            .map_err(sql("marking an effect done"))
    }

    async fn close_outbox(&mut self, run_id: &str) -> Result<(), StoreError> {
        self.conn
            .exec("DELETE FROM outbox WHERE run_id = ?1", params![run_id])
            .map(drop)
            .map_err(sql("closing the outbox of a finished run"))
    }

    async fn enqueue(
        &mut self,
        run_id: &str,
        id: i64,
        effect: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.conn
            .exec(
                "INSERT INTO outbox(run_id, id, effect, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![run_id, id, effect, ms(now)],
            )
            .map(drop)
            .map_err(sql("queueing an effect"))
    }

    async fn save_items(
        &mut self,
        run_id: &str,
        step: &str,
        items: &[crate::engine::NewItem],
    ) -> Result<(), StoreError> {
        let doing = "saving the items of a `foreach` step";
        self.conn
            .exec(
                "DELETE FROM items WHERE run_id = ?1 AND step = ?2",
                params![run_id, step],
            )
            .map_err(sql(doing))?;
        let mut stmt = self
            .conn
            .prepare_cached(
                "INSERT INTO items(run_id, step, idx, key, value) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(sql(doing))?;
        for it in items {
            let value = serde_json::to_string(&it.value).expect("JSON serializes");
            stmt.execute(params![run_id, step, it.index, it.key, value])
                .map_err(sql(doing))?;
        }
        Ok(())
    }

    async fn finish_item(
        &mut self,
        run_id: &str,
        step: &str,
        item: &crate::engine::ItemResult,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let output = item
            .output
            .as_ref()
            .map(|o| serde_json::to_string(o).expect("JSON serializes"));
        self.conn
            .exec(
                "UPDATE items SET status = ?4, attempts = ?5, output = ?6, error = ?7, finished_at = ?8 WHERE run_id = ?1 AND step = ?2 AND idx = ?3",
                params![run_id, step, item.index, item.status, item.attempts, output, item.error, ms(now)],
            )
            .map(drop)
            .map_err(sql("recording an item of a `foreach` step"))
    }

    async fn load_items(
        &mut self,
        run_id: &str,
        step: &str,
    ) -> Result<Vec<crate::workflow::output::ItemOutput>, StoreError> {
        super::queries::items_of(self.conn, run_id, step).map(|rows| {
            rows.into_iter()
                .map(crate::store::types::ItemRow::into_output)
                .collect()
        })
    }

    async fn await_event(
        &mut self,
        run_id: &str,
        step: &str,
        event: &str,
        key: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<crate::store::types::InboundEvent>, StoreError> {
        let doing = "keeping a wait for an event";
        self.conn
            .exec(
                "INSERT INTO event_waits(run_id, step, name, key, since) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(run_id, step) DO UPDATE SET name = excluded.name, key = excluded.key, since = excluded.since",
                params![run_id, step, event, key, ms(since)],
            )
            .map_err(sql(doing))?;
        // The writer is the only one that records events: no event is recorded between the
        // wait and this look back.
        self.conn
            .row(
                &format!(
                    "SELECT {} FROM inbound_events WHERE name = ?1 AND key = ?2 AND received_at >= ?3 ORDER BY received_at, seq LIMIT 1",
                    super::events::INBOUND_COLUMNS
                ),
                params![event, key, ms(since)],
                super::events::inbound_row,
            )
            .optional()
            .map_err(sql("looking back for an event"))
    }

    async fn end_await(&mut self, run_id: &str, step: &str) -> Result<(), StoreError> {
        self.conn
            .exec(
                "DELETE FROM event_waits WHERE run_id = ?1 AND step = ?2",
                params![run_id, step],
            )
            .map(drop)
            .map_err(sql("ending a wait for an event"))
    }

    async fn lock_run_key(&mut self, _workflow: &str, _key: &str) -> Result<(), StoreError> {
        // One writer: its changes never overlap.
        Ok(())
    }

    async fn runs_with_key(&mut self, workflow: &str, key: &str) -> Result<KeyedRuns, StoreError> {
        let doing = "counting the runs with a concurrency key";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, status FROM runs WHERE workflow = ?1 AND concurrency_key = ?2 AND finished_at IS NULL ORDER BY created_at, id",
            )
            .map_err(sql(doing))?;
        let rows = stmt
            .query_map(params![workflow, key], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(sql(doing))?;
        let mut out = KeyedRuns::default();
        for row in rows {
            let (id, status) = row.map_err(sql(doing))?;
            out.add(id, &status);
        }
        Ok(out)
    }

    async fn close_waits(&mut self, run_id: &str) -> Result<(), StoreError> {
        self.conn
            .exec("DELETE FROM event_waits WHERE run_id = ?1", params![run_id])
            .map(drop)
            .map_err(sql("ending the waits of a finished run"))
    }

    fn remember(&mut self, run: &Arc<Run>, rev: i64, next_seq: i64) {
        if self.cache.runs.len() >= RunCache::CAPACITY {
            self.cache.runs.clear();
        }
        self.cache
            .runs
            .insert(run.id.clone(), (rev, run.clone(), next_seq));
    }

    fn forget(&mut self, id: &str) {
        self.cache.runs.remove(id);
    }
}
