//! The steps of a change in PostgreSQL's SQL: [`RunTx`] over a lane's transaction.
//!
//! I/O shell. Reads wait for their answer; writes are queued and sent together when the change
//! ends (`flush`), which tokio-postgres pipelines into one round trip. A run is read under
//! `FOR UPDATE` first, with its stored `rev`: when the lane's cache holds that revision, the
//! state is not read again; when another node changed the run since, it is.

use super::{ms, sql};
use crate::engine::Run;
use crate::store::StoreError;
use crate::store::apply::{EventWrite, KeyedRuns, Loaded, RunTx, RunWrite};
use crate::store::types::{SlotClaim, Version, Versions};
use crate::workflow::{self, Workflow};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Arc;
use tokio_postgres::types::ToSql;

/// A transaction lock per workflow and `concurrency.key`.
const RUN_KEY_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended('runkey' || chr(31) || $1 || chr(31) || $2, 7))";

/// The statements a change runs, prepared once per connection.
pub(super) struct Statements {
    load: tokio_postgres::Statement,
    load_full: tokio_postgres::Statement,
    version: tokio_postgres::Statement,
    insert_version: tokio_postgres::Statement,
    claim_slot: tokio_postgres::Statement,
    mark_schedule: tokio_postgres::Statement,
    idempotent: tokio_postgres::Statement,
    insert_run: tokio_postgres::Statement,
    update_run: tokio_postgres::Statement,
    touch_run: tokio_postgres::Statement,
    insert_event: tokio_postgres::Statement,
    delete_effect: tokio_postgres::Statement,
    close_outbox: tokio_postgres::Statement,
    enqueue: tokio_postgres::Statement,
    delete_items: tokio_postgres::Statement,
    insert_items: tokio_postgres::Statement,
    finish_item: tokio_postgres::Statement,
    end_await: tokio_postgres::Statement,
    close_waits: tokio_postgres::Statement,
}

impl Statements {
    pub(super) async fn prepare(c: &deadpool_postgres::Object) -> Result<Statements, StoreError> {
        let p = |q: &'static str| async move {
            c.prepare_cached(q)
                .await
                .map_err(sql("preparing statements"))
        };
        Ok(Statements {
            // The state only when the cache does not hold this revision. The number of the
            // run's next event is not read here: when this statement waited for another
            // node's change to the run, a subquery would still see the events from before it
            // (the statement's snapshot), and the event would be numbered twice. The change
            // then reads it with a statement of its own, after the lock (`next_seq`).
            load: p("SELECT rev, CASE WHEN rev = $2 THEN NULL ELSE state END FROM runs WHERE id = $1 FOR UPDATE").await?,
            load_full: p("SELECT rev, state FROM runs WHERE id = $1 FOR UPDATE").await?,
            version: p("SELECT path, source FROM workflow_versions WHERE hash = $1").await?,
            insert_version: p("INSERT INTO workflow_versions(hash, name, path, source, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (hash) DO NOTHING").await?,
            claim_slot: p("INSERT INTO slots(schedule, slot, at, run_id, outcome, created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING").await?,
            mark_schedule: p("INSERT INTO schedule_marks(schedule, since) VALUES ($1, $2) ON CONFLICT (schedule) DO UPDATE SET since = greatest(schedule_marks.since, excluded.since)").await?,
            idempotent: p("SELECT state FROM runs WHERE workflow = $1 AND idempotency_key = $2").await?,
            insert_run: p("INSERT INTO runs(id, workflow, version, status, trigger, idempotency_key, created_at, updated_at, finished_at, wake_at, state, schedule, concurrency_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10, $11, $12)").await?,
            update_run: p("UPDATE runs SET status = $2, updated_at = $3, finished_at = $4, wake_at = $5, state = $6, rev = $7, wake_claim = NULL WHERE id = $1 AND rev = $8").await?,
            touch_run: p("UPDATE runs SET rev = $2 WHERE id = $1 AND rev = $3").await?,
            insert_event: p("INSERT INTO events(run_id, seq, at, kind, data, attempt) VALUES ($1, $2, $3, $4, $5, $6)").await?,
            delete_effect: p("DELETE FROM outbox WHERE run_id = $1 AND id = $2").await?,
            close_outbox: p("DELETE FROM outbox WHERE run_id = $1").await?,
            enqueue: p("INSERT INTO outbox(run_id, id, effect, created_at, owner) VALUES ($1, $2, $3, $4, $5)").await?,
            delete_items: p("DELETE FROM items WHERE run_id = $1 AND step = $2").await?,
            insert_items: p("INSERT INTO items(run_id, step, idx, key, value) SELECT $1, $2, i, k, v FROM unnest($3::int[], $4::text[], $5::text[]) AS t(i, k, v)").await?,
            end_await: p("DELETE FROM event_waits WHERE run_id = $1 AND step = $2").await?,
            close_waits: p("DELETE FROM event_waits WHERE run_id = $1").await?,
            finish_item: p("UPDATE items SET status = $4, attempts = $5, output = $6, error = $7, finished_at = $8 WHERE run_id = $1 AND step = $2 AND idx = $3").await?,
        })
    }
}

/// A lane's copy of run states: id → (rev, state, next event number). Right for runs this node
/// changed last; a change by another node moves `rev`, which the load sees.
#[derive(Default)]
pub(super) struct LaneCache {
    runs: HashMap<String, (i64, Arc<Run>, i64)>,
}

/// What a transaction learnt for the cache, kept only if it commits.
pub(super) enum Learnt {
    Put(Arc<Run>, i64, i64),
    Forget(String),
}

impl LaneCache {
    const CAPACITY: usize = 4096;

    pub(super) fn clear(&mut self) {
        self.runs.clear();
    }

    pub(super) fn apply(&mut self, learnt: Vec<Learnt>) {
        for l in learnt {
            match l {
                Learnt::Put(run, rev, next) => {
                    if self.runs.len() >= Self::CAPACITY {
                        self.runs.clear();
                    }
                    self.runs.insert(run.id.clone(), (rev, run, next));
                }
                Learnt::Forget(id) => {
                    self.runs.remove(&id);
                }
            }
        }
    }
}

type Param = Box<dyn ToSql + Send + Sync>;

pub(super) struct PgTx<'a> {
    tx: &'a deadpool_postgres::Transaction<'a>,
    stmts: &'a Statements,
    cache: &'a LaneCache,
    versions: &'a Versions,
    /// The node whose changes these are: it owns the effects they queue.
    node: Option<&'a str>,
    /// Writes of the change in progress, sent together by `flush`.
    pending: Vec<(&'a tokio_postgres::Statement, Vec<Param>, Check)>,
    learnt: Vec<Learnt>,
    /// Runs read or written in this transaction: (rev, state, next event), newer than the cache.
    seen: HashMap<String, (i64, Arc<Run>, i64)>,
}

/// What a queued write must have done.
#[derive(Clone, Copy)]
enum Check {
    Any,
    /// Exactly one row (a compare-and-set on `rev`).
    One(&'static str),
}

fn conflict(what: &'static str) -> StoreError {
    StoreError::Db {
        doing: what,
        source: crate::store::DbError {
            kind: crate::store::DbErrorKind::Conflict,
            message: "the run was changed by another node meanwhile".into(),
        },
    }
}

impl<'a> PgTx<'a> {
    pub(super) fn new(
        tx: &'a deadpool_postgres::Transaction<'a>,
        stmts: &'a Statements,
        cache: &'a LaneCache,
        versions: &'a Versions,
        node: Option<&'a str>,
    ) -> PgTx<'a> {
        PgTx {
            tx,
            stmts,
            cache,
            versions,
            node,
            pending: Vec::new(),
            learnt: Vec::new(),
            seen: HashMap::new(),
        }
    }

    fn queue(&mut self, stmt: &'a tokio_postgres::Statement, params: Vec<Param>, check: Check) {
        self.pending.push((stmt, params, check));
    }

    /// Sends the writes queued by the change that just ended, pipelined.
    pub(super) async fn flush(&mut self) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut self.pending);
        let tx = self.tx;
        let futures = pending.iter().map(|(stmt, params, check)| async move {
            let refs: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            let n = tx
                .execute(*stmt, &refs)
                .await
                .map_err(sql("writing a change"))?;
            match check {
                Check::One(what) if n != 1 => Err(conflict(what)),
                _ => Ok(()),
            }
        });
        futures_util::future::try_join_all(futures).await.map(drop)
    }

    pub(super) fn rollback_cache(&mut self) {
        self.learnt.clear();
        self.seen.clear();
    }

    pub(super) fn into_learnt(self) -> Vec<Learnt> {
        self.learnt
    }
}

fn p<T: ToSql + Send + Sync + 'static>(v: T) -> Param {
    Box::new(v)
}

impl RunTx for PgTx<'_> {
    async fn load_run(&mut self, id: &str) -> Result<Option<Loaded>, StoreError> {
        if let Some((rev, run, next)) = self.seen.get(id) {
            return Ok(Some(Loaded {
                run: run.clone(),
                rev: *rev,
                next_seq: Some(*next),
            }));
        }
        let cached = self.cache.runs.get(id);
        let row = match cached {
            Some((rev, _, _)) => self.tx.query_opt(&self.stmts.load, &[&id, rev]).await,
            None => self.tx.query_opt(&self.stmts.load_full, &[&id]).await,
        }
        .map_err(sql("reading a run"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let rev: i64 = row.get(0);
        let state: Option<String> = row.get(1);
        let (run, next_seq) = match (state, cached) {
            (None, Some((_, run, next))) => (run.clone(), Some(*next)),
            (Some(state), _) => {
                let run: Run = serde_json::from_str(&state).map_err(|e| StoreError::Corrupt {
                    id: id.to_string(),
                    message: e.to_string(),
                })?;
                (Arc::new(run), None)
            }
            _ => {
                return Err(StoreError::Corrupt {
                    id: id.to_string(),
                    message: "the run's row came back without its state".into(),
                });
            }
        };
        Ok(Some(Loaded { run, rev, next_seq }))
    }

    async fn next_seq(&mut self, id: &str) -> Result<i64, StoreError> {
        let row = self
            .tx
            .query_one(
                "SELECT coalesce(max(seq), 0) + 1 FROM events WHERE run_id = $1",
                &[&id],
            )
            .await
            .map_err(sql("recording an event"))?;
        Ok(row.get(0))
    }

    async fn version(&mut self, hash: &str) -> Result<Arc<Workflow>, StoreError> {
        if let Some(wf) = self.versions.get(hash) {
            return Ok(wf);
        }
        let row = self
            .tx
            .query_opt(&self.stmts.version, &[&hash])
            .await
            .map_err(sql("reading a workflow version"))?
            .ok_or_else(|| StoreError::NoSuchVersion(hash.to_string()))?;
        let (path, source): (String, String) = (row.get(0), row.get(1));
        let wf = workflow::builtin::check_stored(&path, &source).map_err(|diags| {
            StoreError::BadVersion {
                hash: hash.to_string(),
                message: diags.first().map(|d| d.message.clone()).unwrap_or_default(),
            }
        })?;
        let wf = Arc::new(wf);
        self.versions.insert(hash, wf.clone());
        Ok(wf)
    }

    async fn insert_version(&mut self, v: &Version, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.queue(
            &self.stmts.insert_version,
            vec![
                p(v.hash.clone()),
                p(v.workflow.name.clone()),
                p(v.path.clone()),
                p(v.source.clone()),
                p(ms(now)),
            ],
            Check::Any,
        );
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
        let n = self
            .tx
            .execute(
                &self.stmts.claim_slot,
                &[
                    &claim.schedule,
                    &claim.slot,
                    &ms(claim.at),
                    &run_id,
                    &outcome,
                    &ms(now),
                ],
            )
            .await
            .map_err(sql("claiming a schedule slot"))?;
        self.tx
            .execute(&self.stmts.mark_schedule, &[&claim.schedule, &ms(claim.at)])
            .await
            .map_err(sql("remembering a schedule's progress"))?;
        Ok(n > 0)
    }

    async fn find_idempotent(
        &mut self,
        workflow: &str,
        key: &str,
    ) -> Result<Option<Run>, StoreError> {
        let row = self
            .tx
            .query_opt(&self.stmts.idempotent, &[&workflow, &key])
            .await
            .map_err(sql("looking up an idempotency key"))?;
        row.map(|r| {
            let state: String = r.get(0);
            serde_json::from_str(&state).map_err(|e| StoreError::Corrupt {
                id: key.to_string(),
                message: e.to_string(),
            })
        })
        .transpose()
    }

    async fn write_run(&mut self, w: &RunWrite<'_>) -> Result<(), StoreError> {
        match *w {
            RunWrite::Insert {
                run,
                state,
                idempotency_key,
                schedule,
            } => self.queue(
                &self.stmts.insert_run,
                vec![
                    p(run.id.clone()),
                    p(run.workflow.clone()),
                    p(run.version.clone()),
                    p(run.status.as_str()),
                    p(run.trigger.as_str()),
                    p(idempotency_key.map(str::to_string)),
                    p(ms(run.created_at)),
                    p(run.finished_at.map(ms)),
                    p(run.wake_at.map(ms)),
                    p(state.to_string()),
                    p(schedule.map(str::to_string)),
                    p(run.concurrency_key.clone()),
                ],
                Check::Any,
            ),
            RunWrite::Update {
                run,
                state,
                rev_before,
                at,
                ..
            } => self.queue(
                &self.stmts.update_run,
                vec![
                    p(run.id.clone()),
                    p(run.status.as_str()),
                    p(ms(at)),
                    p(run.finished_at.map(ms)),
                    p(run.wake_at.map(ms)),
                    p(state.to_string()),
                    p(rev_before + 1),
                    p(rev_before),
                ],
                Check::One("updating a run"),
            ),
            RunWrite::Touch { id, rev_before } => self.queue(
                &self.stmts.touch_run,
                vec![p(id.to_string()), p(rev_before + 1), p(rev_before)],
                Check::One("updating a run"),
            ),
        }
        Ok(())
    }

    async fn append_event(&mut self, run_id: &str, e: &EventWrite<'_>) -> Result<(), StoreError> {
        self.queue(
            &self.stmts.insert_event,
            vec![
                p(run_id.to_string()),
                p(e.seq),
                p(ms(e.at)),
                p(e.kind.to_string()),
                p(e.data.to_string()),
                p(e.attempt.map(str::to_string)),
            ],
            Check::Any,
        );
        Ok(())
    }

    async fn delete_effect(&mut self, run_id: &str, id: i64) -> Result<(), StoreError> {
        self.queue(
            &self.stmts.delete_effect,
            vec![p(run_id.to_string()), p(id)],
            Check::Any,
        );
        Ok(())
    }

    async fn close_outbox(&mut self, run_id: &str) -> Result<(), StoreError> {
        self.queue(
            &self.stmts.close_outbox,
            vec![p(run_id.to_string())],
            Check::Any,
        );
        Ok(())
    }

    async fn enqueue(
        &mut self,
        run_id: &str,
        id: i64,
        effect: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.queue(
            &self.stmts.enqueue,
            vec![
                p(run_id.to_string()),
                p(id),
                p(effect.to_string()),
                p(ms(now)),
                p(self.node.map(str::to_string)),
            ],
            Check::Any,
        );
        Ok(())
    }

    async fn save_items(
        &mut self,
        run_id: &str,
        step: &str,
        items: &[crate::engine::NewItem],
    ) -> Result<(), StoreError> {
        let idx: Vec<i32> = items
            .iter()
            .map(|i| i32::try_from(i.index).unwrap_or(i32::MAX))
            .collect();
        let keys: Vec<String> = items.iter().map(|i| i.key.clone()).collect();
        let values: Vec<String> = items
            .iter()
            .map(|i| serde_json::to_string(&i.value).expect("JSON serializes"))
            .collect();
        self.queue(
            &self.stmts.delete_items,
            vec![p(run_id.to_string()), p(step.to_string())],
            Check::Any,
        );
        self.queue(
            &self.stmts.insert_items,
            vec![
                p(run_id.to_string()),
                p(step.to_string()),
                p(idx),
                p(keys),
                p(values),
            ],
            Check::Any,
        );
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
        self.queue(
            &self.stmts.finish_item,
            vec![
                p(run_id.to_string()),
                p(step.to_string()),
                p(i32::try_from(item.index).unwrap_or(i32::MAX)),
                p(item.status.clone()),
                p(i32::try_from(item.attempts).unwrap_or(i32::MAX)),
                p(output),
                p(item.error.clone()),
                p(ms(now)),
            ],
            Check::Any,
        );
        Ok(())
    }

    async fn load_items(
        &mut self,
        run_id: &str,
        step: &str,
    ) -> Result<Vec<crate::workflow::output::ItemOutput>, StoreError> {
        // This change's own writes (the item that just ended) first.
        self.flush().await?;
        let rows = self
            .tx
            .query(super::queries::ITEMS_QUERY, &[&run_id, &step])
            .await
            .map_err(sql("reading the items of a `foreach` step"))?;
        Ok(rows
            .iter()
            .map(|r| super::queries::item_row(r).into_output())
            .collect())
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
        self.flush().await?;
        // Held to the commit, as by the transaction that records an event of this name and
        // key: whichever comes second sees the other (the look back below sees the event, or
        // the event's delivery sees this wait).
        self.tx
            .execute(super::events::EVENT_LOCK, &[&event, &key])
            .await
            .map_err(sql(doing))?;
        self.tx
            .execute(
                "INSERT INTO event_waits(run_id, step, name, key, since) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (run_id, step) DO UPDATE SET name = excluded.name, key = excluded.key, since = excluded.since",
                &[&run_id, &step, &event, &key, &ms(since)],
            )
            .await
            .map_err(sql(doing))?;
        let row = self
            .tx
            .query_opt(
                &format!(
                    "SELECT {} FROM inbound_events WHERE name = $1 AND key = $2 AND received_at >= $3 ORDER BY received_at, seq LIMIT 1",
                    super::events::INBOUND_COLUMNS
                ),
                &[&event, &key, &ms(since)],
            )
            .await
            .map_err(sql("looking back for an event"))?;
        Ok(row.as_ref().map(super::events::inbound_row))
    }

    async fn lock_run_key(&mut self, workflow: &str, key: &str) -> Result<(), StoreError> {
        self.flush().await?;
        // Held to the commit: the runs of one workflow and key are counted and started (or
        // queued) by one transaction at a time, on every node.
        self.tx
            .execute(RUN_KEY_LOCK, &[&workflow, &key])
            .await
            .map(drop)
            .map_err(sql("locking a concurrency key"))
    }

    async fn runs_with_key(&mut self, workflow: &str, key: &str) -> Result<KeyedRuns, StoreError> {
        let doing = "counting the runs with a concurrency key";
        self.flush().await?;
        let rows = self
            .tx
            .query(
                "SELECT id, status FROM runs WHERE workflow = $1 AND concurrency_key = $2 AND finished_at IS NULL ORDER BY created_at, id",
                &[&workflow, &key],
            )
            .await
            .map_err(sql(doing))?;
        let mut out = KeyedRuns::default();
        for r in rows {
            let status: String = r.get(1);
            out.add(r.get(0), &status);
        }
        Ok(out)
    }

    async fn end_await(&mut self, run_id: &str, step: &str) -> Result<(), StoreError> {
        self.queue(
            &self.stmts.end_await,
            vec![p(run_id.to_string()), p(step.to_string())],
            Check::Any,
        );
        Ok(())
    }

    async fn close_waits(&mut self, run_id: &str) -> Result<(), StoreError> {
        self.queue(
            &self.stmts.close_waits,
            vec![p(run_id.to_string())],
            Check::Any,
        );
        Ok(())
    }

    fn remember(&mut self, run: &Arc<Run>, rev: i64, next_seq: i64) {
        self.seen
            .insert(run.id.clone(), (rev, run.clone(), next_seq));
        self.learnt.push(Learnt::Put(run.clone(), rev, next_seq));
    }

    fn forget(&mut self, id: &str) {
        self.seen.remove(id);
        self.learnt.push(Learnt::Forget(id.to_string()));
    }
}
