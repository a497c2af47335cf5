//! The PostgreSQL backend's reads, and its writes that are not run changes (settings, versions
//! in force, schedules, approval links), each a typed method over the pool.
//!
//! I/O shell.

use super::{PgStore, from_ms, ms, pool_err, sql};
use crate::engine::{Effect, Run, RunStatus, Trigger};
use crate::store::StoreError;
use crate::store::types::*;
use crate::workflow::{self, Decision, Workflow};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Arc;
use tokio_postgres::Row;

fn corrupt(id: &str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        id: id.to_string(),
        message: what.to_string(),
    }
}

pub(super) const ITEMS_QUERY: &str = "SELECT idx, key, value, status, attempts, output, error, finished_at FROM items WHERE run_id = $1 AND step = $2 ORDER BY idx";

/// A row of [`ITEMS_QUERY`].
pub(super) fn item_row(r: &Row) -> ItemRow {
    let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
    ItemRow {
        index: u32::try_from(r.get::<_, i32>(0)).unwrap_or(0),
        key: r.get(1),
        value: json(r.get(2)).unwrap_or_default(),
        status: r.get(3),
        attempts: u32::try_from(r.get::<_, i32>(4)).unwrap_or(0),
        output: json(r.get(5)),
        error: r.get(6),
        finished_at: r.get::<_, Option<i64>>(7).map(from_ms),
    }
}

fn parse_run(id: &str, state: &str) -> Result<Run, StoreError> {
    serde_json::from_str(state).map_err(|e| corrupt(id, e))
}

impl PgStore {
    pub(super) async fn client(
        &self,
        doing: &'static str,
    ) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool().get().await.map_err(pool_err(doing))
    }

    pub(super) async fn rows(
        &self,
        doing: &'static str,
        query: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let c = self.client(doing).await?;
        let stmt = c.prepare_cached(query).await.map_err(sql(doing))?;
        c.query(&stmt, params).await.map_err(sql(doing))
    }

    pub(super) async fn row(
        &self,
        doing: &'static str,
        query: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        Ok(self.rows(doing, query, params).await?.into_iter().next())
    }

    pub(super) async fn exec(
        &self,
        doing: &'static str,
        query: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let c = self.client(doing).await?;
        let stmt = c.prepare_cached(query).await.map_err(sql(doing))?;
        c.execute(&stmt, params).await.map_err(sql(doing))
    }

    /// Answers whether the database can be reached now (for `/healthz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.row("checking the database", "SELECT 1", &[])
            .await
            .map(drop)
    }

    /// Closes an outbox row whose effect produced no event (done, or abandoned), unless another
    /// node has taken it over meanwhile.
    pub async fn mark_done(&self, run_id: &str, effect: i64) -> Result<(), StoreError> {
        let me = self.node().map(|n| n.id.clone());
        self.exec(
            "marking an effect done",
            "DELETE FROM outbox WHERE run_id = $1 AND id = $2 AND (owner IS NULL OR owner = $3 OR $3::text IS NULL)",
            &[&run_id, &effect, &me],
        )
        .await
        .map(drop)
    }

    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .row(
                "reading settings",
                "SELECT value FROM kv WHERE key = $1",
                &[&key],
            )
            .await?
            .map(|r| r.get(0)))
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.exec(
            "writing settings",
            "INSERT INTO kv(key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&key, &value],
        )
        .await
        .map(drop)
    }

    pub async fn get_run(&self, id: &str) -> Result<Option<Run>, StoreError> {
        self.row(
            "reading a run",
            "SELECT state FROM runs WHERE id = $1",
            &[&id],
        )
        .await?
        .map(|r| parse_run(id, r.get(0)))
        .transpose()
    }

    pub async fn run_status(&self, id: &str) -> Result<Option<RunStatus>, StoreError> {
        self.row(
            "reading a run's status",
            "SELECT status FROM runs WHERE id = $1",
            &[&id],
        )
        .await?
        .map(|r| {
            let s: String = r.get(0);
            RunStatus::parse(&s).ok_or_else(|| corrupt(id, format!("unknown status `{s}`")))
        })
        .transpose()
    }

    pub async fn workflow_for(&self, run: &Run) -> Result<Arc<Workflow>, StoreError> {
        if let Some(wf) = self.versions().get(&run.version) {
            return Ok(wf);
        }
        let (path, source) = self
            .version_source(&run.version)
            .await?
            .ok_or_else(|| StoreError::NoSuchVersion(run.version.clone()))?;
        let wf = workflow::builtin::check_stored(&path, &source).map_err(|diags| {
            StoreError::BadVersion {
                hash: run.version.clone(),
                message: diags.first().map(|d| d.message.clone()).unwrap_or_default(),
            }
        })?;
        let wf = Arc::new(wf);
        self.versions().insert(&run.version, wf.clone());
        Ok(wf)
    }

    pub async fn version_source(&self, hash: &str) -> Result<Option<(String, String)>, StoreError> {
        Ok(self
            .row(
                "reading a workflow version",
                "SELECT path, source FROM workflow_versions WHERE hash = $1",
                &[&hash],
            )
            .await?
            .map(|r| (r.get(0), r.get(1))))
    }

    pub async fn remember_active(&self, files: Vec<ActiveFile>) -> Result<(), StoreError> {
        let doing = "remembering the active workflow versions";
        let mut c = self.client(doing).await?;
        let tx = c.transaction().await.map_err(sql(doing))?;
        let now = ms(Utc::now());
        for (path, version) in &files {
            let key = format!("last_good:{path}");
            match version {
                Some(v) => {
                    tx.execute(
                        "INSERT INTO workflow_versions(hash, name, path, source, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (hash) DO NOTHING",
                        &[&v.hash, &v.workflow.name, &v.path, &v.source, &now],
                    )
                    .await
                    .map_err(sql(doing))?;
                    tx.execute(
                        "INSERT INTO kv(key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        &[&key, &v.hash],
                    )
                    .await
                    .map_err(sql(doing))?;
                }
                None => {
                    tx.execute("DELETE FROM kv WHERE key = $1", &[&key])
                        .await
                        .map_err(sql(doing))?;
                }
            }
        }
        tx.commit().await.map_err(sql(doing))
    }

    pub async fn last_good_version(
        &self,
        path: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        match self.setting(&format!("last_good:{path}")).await? {
            Some(hash) => self.version_source(&hash).await,
            None => Ok(None),
        }
    }

    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        let limit = i64::try_from(if filter.limit == 0 { 50 } else { filter.limit }).unwrap_or(50);
        let status = filter.status.map(|s| s.as_str());
        let schedule = filter
            .schedule
            .as_deref()
            .map(crate::schedule::id::key_of_public);
        let rows = self
            .rows(
                "listing runs",
                "SELECT id, workflow, status, trigger, created_at, finished_at, schedule FROM runs
                 WHERE ($1::text IS NULL OR workflow = $1) AND ($2::text IS NULL OR status = $2)
                   AND ($4::text IS NULL OR schedule = $4)
                   AND ($5::text IS NULL OR n < (SELECT n FROM runs WHERE id = $5))
                   AND (NOT $6 OR (status = 'failed' AND id NOT IN (SELECT run_id FROM dlq_removed)))
                 ORDER BY n DESC LIMIT $3",
                &[&filter.workflow, &status, &limit, &schedule, &filter.before, &filter.in_dlq],
            )
            .await?;
        rows.into_iter()
            .map(|r| {
                let id: String = r.get(0);
                let status: String = r.get(2);
                let trigger: String = r.get(3);
                let schedule: Option<String> = r.get(6);
                Ok(RunSummary {
                    schedule_id: schedule
                        .as_deref()
                        .and_then(crate::schedule::id::public_of_key),
                    status: RunStatus::parse(&status)
                        .ok_or_else(|| corrupt(&id, format!("unknown status `{status}`")))?,
                    trigger: Trigger::parse(&trigger)
                        .ok_or_else(|| corrupt(&id, format!("unknown trigger `{trigger}`")))?,
                    workflow: r.get(1),
                    created_at: from_ms(r.get(4)),
                    finished_at: r.get::<_, Option<i64>>(5).map(from_ms),
                    id,
                })
            })
            .collect()
    }

    pub async fn unfinished_runs(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .rows(
                "listing unfinished runs",
                "SELECT id FROM runs WHERE finished_at IS NULL ORDER BY created_at, id",
                &[],
            )
            .await?
            .into_iter()
            .map(|r| r.get(0))
            .collect())
    }

    pub async fn pending_effects(&self) -> Result<Vec<PendingEffect>, StoreError> {
        let rows = self
            .rows(
                "reading the outbox",
                "SELECT id, run_id, effect FROM outbox ORDER BY created_at, run_id, id",
                &[],
            )
            .await?;
        rows.into_iter().map(|r| pending(&r)).collect()
    }

    pub async fn attempts(&self, run_id: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        let rows = self
            .rows(
                "reading attempts",
                "SELECT seq, attempt FROM events WHERE run_id = $1 AND attempt IS NOT NULL ORDER BY seq",
                &[&run_id],
            )
            .await?;
        let mut by_key: HashMap<(String, Option<u32>, u32), AttemptRecord> = HashMap::new();
        for r in rows {
            let (seq, json): (i64, String) = (r.get(0), r.get(1));
            let a: AttemptRecord = serde_json::from_str(&json)
                .map_err(|e| corrupt(run_id, format!("the attempt record of event {seq}: {e}")))?;
            by_key.insert((a.step.clone(), a.item, a.attempt), a);
        }
        let mut out: Vec<AttemptRecord> = by_key.into_values().collect();
        out.sort_by(|x, y| {
            (x.started_at, &x.step, x.item, x.attempt).cmp(&(
                y.started_at,
                &y.step,
                y.item,
                y.attempt,
            ))
        });
        Ok(out)
    }

    pub async fn items(&self, run_id: &str, step: &str) -> Result<Vec<ItemRow>, StoreError> {
        let rows = self
            .rows(
                "reading the items of a `foreach` step",
                ITEMS_QUERY,
                &[&run_id, &step],
            )
            .await?;
        Ok(rows.iter().map(item_row).collect())
    }

    pub async fn item(
        &self,
        run_id: &str,
        step: &str,
        index: u32,
    ) -> Result<Option<(String, serde_json::Value)>, StoreError> {
        let idx = i32::try_from(index).unwrap_or(i32::MAX);
        let row = self
            .row(
                "reading an item of a `foreach` step",
                "SELECT key, value FROM items WHERE run_id = $1 AND step = $2 AND idx = $3",
                &[&run_id, &step, &idx],
            )
            .await?;
        Ok(row.map(|r| {
            let value: String = r.get(1);
            (r.get(0), serde_json::from_str(&value).unwrap_or_default())
        }))
    }

    pub async fn events(&self, run_id: &str) -> Result<Vec<EventRow>, StoreError> {
        let rows = self
            .rows(
                "reading events",
                "SELECT seq, at, kind, data FROM events WHERE run_id = $1 ORDER BY seq",
                &[&run_id],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let data: String = r.get(3);
                EventRow {
                    seq: r.get(0),
                    at: from_ms(r.get(1)),
                    kind: r.get(2),
                    data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
                }
            })
            .collect())
    }

    // --- schedules -------------------------------------------------------------------------

    pub async fn skip_slot(
        &self,
        claim: SlotClaim,
        reason: &'static str,
    ) -> Result<bool, StoreError> {
        let doing = "recording a skipped slot";
        let mut c = self.client(doing).await?;
        let tx = c.transaction().await.map_err(sql(doing))?;
        let n = tx
            .execute(
                "INSERT INTO slots(schedule, slot, at, run_id, outcome, created_at) VALUES ($1, $2, $3, NULL, $4, $5) ON CONFLICT DO NOTHING",
                &[&claim.schedule, &claim.slot, &ms(claim.at), &reason, &ms(Utc::now())],
            )
            .await
            .map_err(sql(doing))?;
        tx.execute(
            "INSERT INTO schedule_marks(schedule, since) VALUES ($1, $2) ON CONFLICT (schedule) DO UPDATE SET since = greatest(schedule_marks.since, excluded.since)",
            &[&claim.schedule, &ms(claim.at)],
        )
        .await
        .map_err(sql(doing))?;
        tx.commit().await.map_err(sql(doing))?;
        Ok(n > 0)
    }

    pub async fn mark_schedules_seen(
        &self,
        ids: Vec<String>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let doing = "remembering schedules";
        let c = self.client(doing).await?;
        for chunk in ids.chunks(1000) {
            c.execute(
                "INSERT INTO schedule_marks(schedule, since) SELECT unnest($1::text[]), $2 ON CONFLICT DO NOTHING",
                &[&chunk, &ms(at)],
            )
            .await
            .map_err(sql(doing))?;
        }
        Ok(())
    }

    pub async fn schedule_marks(&self) -> Result<HashMap<String, DateTime<Utc>>, StoreError> {
        Ok(self
            .rows(
                "reading schedule marks",
                "SELECT schedule, since FROM schedule_marks",
                &[],
            )
            .await?
            .into_iter()
            .map(|r| (r.get(0), from_ms(r.get(1))))
            .collect())
    }

    pub async fn run_counts(&self, schedule: &str) -> Result<(usize, usize), StoreError> {
        let r = self
            .row(
                "counting runs",
                "SELECT COUNT(*) FILTER (WHERE status != 'pending'), COUNT(*) FILTER (WHERE status = 'pending') FROM runs WHERE schedule = $1 AND finished_at IS NULL",
                &[&schedule],
            )
            .await?;
        Ok(r.map_or((0, 0), |r| {
            (
                usize::try_from(r.get::<_, i64>(0)).unwrap_or(0),
                usize::try_from(r.get::<_, i64>(1)).unwrap_or(0),
            )
        }))
    }

    pub async fn active_runs(&self, schedule: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .rows(
                "listing active runs",
                "SELECT id FROM runs WHERE schedule = $1 AND finished_at IS NULL AND status != 'pending' ORDER BY created_at",
                &[&schedule],
            )
            .await?
            .into_iter()
            .map(|r| r.get(0))
            .collect())
    }

    pub async fn oldest_queued(&self, schedule: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .row(
                "finding a queued run",
                "SELECT id FROM runs WHERE schedule = $1 AND finished_at IS NULL AND status = 'pending' ORDER BY created_at, id LIMIT 1",
                &[&schedule],
            )
            .await?
            .map(|r| r.get(0)))
    }

    pub async fn queued_with_key(
        &self,
        workflow: &str,
        key: &str,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self
            .rows(
                "finding queued runs",
                "SELECT id FROM runs WHERE workflow = $1 AND concurrency_key = $2 AND finished_at IS NULL AND status = 'pending' ORDER BY created_at, id LIMIT $3",
                &[&workflow, &key, &i64::from(limit)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    pub async fn keys_with_queued_runs(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .rows(
                "listing queued runs",
                "SELECT DISTINCT workflow, concurrency_key FROM runs WHERE concurrency_key IS NOT NULL AND finished_at IS NULL AND status = 'pending'",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    pub async fn schedules_with_queued_runs(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .rows(
                "listing queued runs",
                "SELECT DISTINCT schedule FROM runs WHERE status = 'pending' AND schedule IS NOT NULL",
                &[],
            )
            .await?
            .into_iter()
            .map(|r| r.get(0))
            .collect())
    }

    pub async fn schedule_of(&self, run_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .row(
                "reading a run's schedule",
                "SELECT schedule FROM runs WHERE id = $1",
                &[&run_id],
            )
            .await?
            .and_then(|r| r.get(0)))
    }

    pub async fn api_schedules(&self) -> Result<Vec<ApiSchedule>, StoreError> {
        Ok(self
            .rows(
                "reading schedules",
                &format!("SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY id"),
                &[],
            )
            .await?
            .iter()
            .map(schedule_row)
            .collect())
    }

    pub async fn api_schedule(&self, id: &str) -> Result<Option<ApiSchedule>, StoreError> {
        Ok(self
            .row(
                "reading a schedule",
                &format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1"),
                &[&id],
            )
            .await?
            .as_ref()
            .map(schedule_row))
    }

    pub async fn save_api_schedule(
        &self,
        s: ScheduleSpec,
    ) -> Result<(ApiSchedule, bool), StoreError> {
        let doing = "saving a schedule";
        let now = ms(Utc::now());
        let input = s.input.to_string();
        // `xmax = 0` tells an insert from an update.
        let row = self
            .row(
                doing,
                &format!(
                    "INSERT INTO schedules(id, workflow, cron, timezone, input, paused, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
                     ON CONFLICT (id) DO UPDATE SET workflow = excluded.workflow, cron = excluded.cron, timezone = excluded.timezone,
                       input = excluded.input, paused = excluded.paused, updated_at = excluded.updated_at
                     RETURNING {SCHEDULE_COLUMNS}, (xmax = 0)"
                ),
                &[&s.id, &s.workflow, &s.cron, &s.timezone, &input, &s.paused, &now],
            )
            .await?
            .ok_or_else(|| corrupt(&s.id, "the saved schedule did not come back"))?;
        let created: bool = row.get(8);
        let saved = schedule_row(&row);
        self.notify_schedule(&saved.id).await;
        Ok((saved, created))
    }

    pub async fn delete_api_schedule(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .exec(
                "deleting a schedule",
                "DELETE FROM schedules WHERE id = $1",
                &[&id],
            )
            .await?;
        if n > 0 {
            self.notify_schedule(id).await;
        }
        Ok(n > 0)
    }

    pub async fn remove_from_dlq(
        &self,
        workflow: &str,
        ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.exec(
            "taking a message out of the dead-letter queue",
            "INSERT INTO dlq_removed(run_id, removed_at)
             SELECT id, $3 FROM runs WHERE id = ANY($1) AND workflow = $2 AND status = 'failed'
             ON CONFLICT DO NOTHING",
            &[&ids, &workflow, &ms(now)],
        )
        .await
    }

    pub async fn prunable_runs(
        &self,
        q: &PruneQuery,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let doing = "finding runs to prune";
        let before = q.finished_before.map(ms);
        let limit = i64::from(limit);
        let rows = match (&q.workflow, q.keep_newest) {
            (Some(workflow), Some(keep)) => {
                self.rows(
                    doing,
                    "SELECT id FROM runs WHERE workflow = $1 AND finished_at IS NOT NULL
                       AND ($4::bigint IS NULL OR finished_at < $4)
                       AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.run_id = runs.id)
                     ORDER BY created_at DESC LIMIT $3 OFFSET $2",
                    &[workflow, &i64::from(keep), &limit, &before],
                )
                .await?
            }
            _ => {
                self.rows(
                    doing,
                    "SELECT id FROM runs WHERE finished_at IS NOT NULL AND finished_at < $1
                       AND ($2::text IS NULL OR workflow = $2)
                       AND workflow <> ALL($3)
                       AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.run_id = runs.id)
                     ORDER BY finished_at LIMIT $4",
                    &[&before.unwrap_or(i64::MIN), &q.workflow, &q.except, &limit],
                )
                .await?
            }
        };
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub async fn delete_runs(&self, ids: &[String]) -> Result<u64, StoreError> {
        let doing = "deleting old runs";
        let mut c = self.client(doing).await?;
        let tx = c.transaction().await.map_err(sql(doing))?;
        let rows = tx
            .query(
                "DELETE FROM runs WHERE id = ANY($1) AND finished_at IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.run_id = runs.id)
                 RETURNING id",
                &[&ids],
            )
            .await
            .map_err(sql(doing))?;
        let deleted: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        for stmt in [
            "DELETE FROM events WHERE run_id = ANY($1)",
            "DELETE FROM items WHERE run_id = ANY($1)",
            "DELETE FROM event_waits WHERE run_id = ANY($1)",
            "DELETE FROM approval_tokens WHERE run_id = ANY($1)",
            "DELETE FROM dlq_removed WHERE run_id = ANY($1)",
        ] {
            tx.execute(stmt, &[&deleted]).await.map_err(sql(doing))?;
        }
        tx.commit().await.map_err(sql(doing))?;
        Ok(deleted.len() as u64)
    }

    pub async fn set_yaml_paused(
        &self,
        pause: YamlPause<'_>,
        paused: bool,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let doing = "pausing a schedule";
        if paused {
            self.exec(
                doing,
                "INSERT INTO schedule_pauses(workflow, signature, paused_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&pause.workflow, &pause.signature, &ms(now)],
            )
            .await?;
        } else {
            // Resumed: the slots that passed while it was paused are not due (the mark moves to
            // now), so no catch-up fires them.
            let mut c = self.client(doing).await?;
            let tx = c.transaction().await.map_err(sql(doing))?;
            tx.execute(
                "DELETE FROM schedule_pauses WHERE workflow = $1 AND signature = $2",
                &[&pause.workflow, &pause.signature],
            )
            .await
            .map_err(sql(doing))?;
            tx.execute(
                "INSERT INTO schedule_marks(schedule, since) VALUES ($1, $2) ON CONFLICT (schedule) DO UPDATE SET since = greatest(schedule_marks.since, excluded.since)",
                &[&pause.key, &ms(now)],
            )
            .await
            .map_err(sql(doing))?;
            tx.commit().await.map_err(sql(doing))?;
        }
        // An empty id: the leader reads every schedule again.
        self.notify_schedule("").await;
        Ok(())
    }

    pub async fn paused_yaml(
        &self,
    ) -> Result<std::collections::HashSet<(String, String)>, StoreError> {
        Ok(self
            .rows(
                "listing paused schedules",
                "SELECT workflow, signature FROM schedule_pauses",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    /// Tells every node's scheduler (the leader's) that a schedule changed.
    async fn notify_schedule(&self, id: &str) {
        if let Err(e) = self
            .exec(
                "announcing a schedule change",
                "SELECT pg_notify('runner_schedules', $1)",
                &[&id],
            )
            .await
        {
            tracing::warn!(error = %e, "cannot announce a schedule change; the leader sees it at its next full reload");
        }
    }

    // --- approval links ----------------------------------------------------------------------

    pub async fn approval_link(&self, hash: &str) -> Result<Option<ApprovalLink>, StoreError> {
        Ok(self
            .row(
                "reading an approval link",
                "SELECT run_id, step, recipient, decision, subject, body, expires_at, used_at FROM approval_tokens WHERE hash = $1",
                &[&hash],
            )
            .await?
            .map(|r| {
                let decision: String = r.get(3);
                ApprovalLink {
                    run_id: r.get(0),
                    step: r.get(1),
                    recipient: r.get(2),
                    decision: Decision::parse(&decision).unwrap_or(Decision::Rejected),
                    subject: r.get(4),
                    body: r.get(5),
                    expires_at: from_ms(r.get(6)),
                    used_at: r.get::<_, Option<i64>>(7).map(from_ms),
                }
            }))
    }

    pub async fn use_approval_link(&self, hash: &str) -> Result<(), StoreError> {
        self.exec(
            "using an approval link",
            "UPDATE approval_tokens SET used_at = $2 WHERE hash = $1 AND used_at IS NULL",
            &[&hash, &ms(Utc::now())],
        )
        .await
        .map(drop)
    }

    pub async fn approval_mailed(
        &self,
        run_id: &str,
        step: &str,
        recipient: &str,
        deadline: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let r = self
            .row(
                "checking approval e-mails",
                "SELECT COUNT(*) FROM approval_tokens WHERE run_id = $1 AND step = $2 AND recipient = $3 AND mailed_at IS NOT NULL AND expires_at = $4",
                &[&run_id, &step, &recipient, &ms(deadline)],
            )
            .await?;
        Ok(r.is_some_and(|r| r.get::<_, i64>(0) > 0))
    }

    pub async fn store_approval_links(&self, links: NewApprovalLinks) -> Result<(), StoreError> {
        let doing = "storing approval links";
        let mut c = self.client(doing).await?;
        let tx = c.transaction().await.map_err(sql(doing))?;
        tx.execute(
            "DELETE FROM approval_tokens WHERE run_id = $1 AND step = $2 AND recipient = $3 AND mailed_at IS NULL",
            &[&links.run_id, &links.step, &links.recipient],
        )
        .await
        .map_err(sql(doing))?;
        for (hash, decision) in &links.links {
            tx.execute(
                "INSERT INTO approval_tokens(hash, run_id, step, recipient, decision, subject, body, expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[hash, &links.run_id, &links.step, &links.recipient, &decision.as_str(), &links.subject, &links.body, &ms(links.expires_at), &ms(Utc::now())],
            )
            .await
            .map_err(sql(doing))?;
        }
        tx.commit().await.map_err(sql(doing))
    }

    pub async fn mark_approval_mailed(
        &self,
        run_id: &str,
        step: &str,
        recipient: &str,
    ) -> Result<(), StoreError> {
        self.exec(
            "recording an approval e-mail",
            "UPDATE approval_tokens SET mailed_at = $4 WHERE run_id = $1 AND step = $2 AND recipient = $3 AND mailed_at IS NULL",
            &[&run_id, &step, &recipient, &ms(Utc::now())],
        )
        .await
        .map(drop)
    }

    pub async fn approval_emails(&self, run_id: &str) -> Result<Vec<ApprovalEmail>, StoreError> {
        Ok(self
            .rows(
                "reading approval e-mails",
                "SELECT step, recipient, mailed_at, expires_at FROM approval_tokens WHERE run_id = $1 AND decision = 'approved' ORDER BY created_at, recipient",
                &[&run_id],
            )
            .await?
            .into_iter()
            .map(|r| ApprovalEmail {
                step: r.get(0),
                recipient: r.get(1),
                mailed_at: r.get::<_, Option<i64>>(2).map(from_ms),
                expires_at: from_ms(r.get(3)),
            })
            .collect())
    }
}

/// An outbox row: `id, run_id, effect` and, when selected, `fresh`.
pub(super) fn pending(r: &Row) -> Result<PendingEffect, StoreError> {
    let (id, run_id, effect): (i64, String, String) = (r.get(0), r.get(1), r.get(2));
    let fresh = r.len() > 3 && r.get::<_, bool>(3);
    let effect: Effect = serde_json::from_str(&effect)
        .map_err(|e| corrupt(&run_id, format!("outbox row {id}: {e}")))?;
    Ok(PendingEffect {
        id,
        run_id,
        effect,
        fresh,
    })
}

const SCHEDULE_COLUMNS: &str =
    "id, workflow, cron, timezone, input, paused, created_at, updated_at";

fn schedule_row(r: &Row) -> ApiSchedule {
    let input: String = r.get(4);
    ApiSchedule {
        id: r.get(0),
        workflow: r.get(1),
        cron: r.get(2),
        timezone: r.get(3),
        input: serde_json::from_str(&input).unwrap_or(serde_json::Value::Null),
        paused: r.get(5),
        created_at: from_ms(r.get(6)),
        updated_at: from_ms(r.get(7)),
    }
}
