//! The SQLite backend's reads, and its writes that are not run changes (settings, workflow
//! versions in force, schedules, approval links), each a typed method.
//!
//! I/O shell.

use super::tx::{Cached, load_state, load_version, mark_schedule};
use super::{SqliteStore, from_ms, ms, sql};
use crate::engine::{Effect, Run, RunStatus, Trigger};
use crate::store::StoreError;
use crate::store::types::*;
use crate::workflow::{Decision, Workflow};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::sync::Arc;

fn strings<P: rusqlite::Params>(
    c: &Connection,
    query: &str,
    params: P,
    doing: &'static str,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = c.prepare_cached(query).map_err(sql(doing))?;
    let rows = stmt.query_map(params, |r| r.get(0)).map_err(sql(doing))?;
    rows.collect::<Result<Vec<String>, _>>().map_err(sql(doing))
}

/// The items of a `foreach` step, in order.
pub(super) fn items_of(
    c: &Connection,
    run_id: &str,
    step: &str,
) -> Result<Vec<ItemRow>, StoreError> {
    let doing = "reading the items of a `foreach` step";
    let mut stmt = c
        .prepare_cached(
            "SELECT idx, key, value, status, attempts, output, error, finished_at FROM items
             WHERE run_id = ?1 AND step = ?2 ORDER BY idx",
        )
        .map_err(sql(doing))?;
    let rows = stmt
        .query_map(params![run_id, step], |r| {
            let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
            Ok(ItemRow {
                index: r.get(0)?,
                key: r.get(1)?,
                value: json(r.get(2)?).unwrap_or_default(),
                status: r.get(3)?,
                attempts: r.get(4)?,
                output: json(r.get(5)?),
                error: r.get(6)?,
                finished_at: r.get::<_, Option<i64>>(7)?.map(from_ms),
            })
        })
        .map_err(sql(doing))?;
    rows.collect::<Result<Vec<_>, _>>().map_err(sql(doing))
}

fn corrupt(id: &str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        id: id.to_string(),
        message: what.to_string(),
    }
}

impl SqliteStore {
    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|c| {
            c.query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
                .optional()
                .map_err(sql("reading settings"))
        })
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.write(move |c| {
            c.exec(
                "INSERT INTO kv(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(drop)
            .map_err(sql("writing settings"))
        })
        .await
    }

    pub fn get_run(&self, id: &str) -> Result<Option<Run>, StoreError> {
        self.read(|c| load_state(c, id))
    }

    pub fn run_status(&self, id: &str) -> Result<Option<RunStatus>, StoreError> {
        let status: Option<String> = self.read(|c| {
            c.row("SELECT status FROM runs WHERE id = ?1", [id], |r| r.get(0))
                .optional()
                .map_err(sql("reading a run's status"))
        })?;
        status
            .map(|s| {
                RunStatus::parse(&s).ok_or_else(|| corrupt(id, format!("unknown status `{s}`")))
            })
            .transpose()
    }

    pub fn workflow_for(&self, run: &Run) -> Result<Arc<Workflow>, StoreError> {
        if let Some(wf) = self.versions.get(&run.version) {
            return Ok(wf);
        }
        self.read(|c| load_version(c, &self.versions, &run.version))
    }

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

    pub async fn remember_active(&self, files: Vec<ActiveFile>) -> Result<(), StoreError> {
        let now = ms(Utc::now());
        self.write(move |c| {
            for (path, version) in &files {
                let key = format!("last_good:{path}");
                let doing = "remembering the active workflow versions";
                match version {
                    Some(v) => {
                        c.execute(
                            "INSERT INTO workflow_versions(hash, name, path, source, created_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(hash) DO NOTHING",
                            params![v.hash, v.workflow.name, v.path, v.source, now],
                        )
                        .map_err(sql(doing))?;
                        c.execute(
                            "INSERT INTO kv(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                            params![key, v.hash],
                        )
                        .map_err(sql(doing))?;
                    }
                    None => {
                        c.execute("DELETE FROM kv WHERE key = ?1", [&key])
                            .map_err(sql(doing))?;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    pub fn last_good_version(&self, path: &str) -> Result<Option<(String, String)>, StoreError> {
        match self.setting(&format!("last_good:{path}"))? {
            Some(hash) => self.version_source(&hash),
            None => Ok(None),
        }
    }

    pub fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        self.read(|c| {
            let doing = "listing runs";
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, workflow, status, trigger, created_at, finished_at, schedule FROM runs
                     WHERE (?1 IS NULL OR workflow = ?1) AND (?2 IS NULL OR status = ?2)
                       AND (?4 IS NULL OR schedule = ?4)
                       AND (?5 IS NULL OR rowid < (SELECT rowid FROM runs WHERE id = ?5))
                       AND (?6 = 0 OR (status = 'failed' AND id NOT IN (SELECT run_id FROM dlq_removed)))
                     ORDER BY rowid DESC LIMIT ?3",
                )
                .map_err(sql(doing))?;
            let limit =
                i64::try_from(if filter.limit == 0 { 50 } else { filter.limit }).unwrap_or(50);
            let schedule = filter
                .schedule
                .as_deref()
                .map(crate::schedule::id::key_of_public);
            let rows = stmt
                .query_map(
                    params![
                        filter.workflow,
                        filter.status.map(|s| s.as_str()),
                        limit,
                        schedule,
                        filter.before,
                        filter.in_dlq
                    ],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, Option<i64>>(5)?,
                            r.get::<_, Option<String>>(6)?,
                        ))
                    },
                )
                .map_err(sql(doing))?;
            let mut out = Vec::new();
            for row in rows {
                let (id, workflow, status, trigger, created, finished, schedule) =
                    row.map_err(sql(doing))?;
                out.push(RunSummary {
                    schedule_id: schedule.as_deref().and_then(crate::schedule::id::public_of_key),
                    status: RunStatus::parse(&status)
                        .ok_or_else(|| corrupt(&id, format!("unknown status `{status}`")))?,
                    trigger: Trigger::parse(&trigger)
                        .ok_or_else(|| corrupt(&id, format!("unknown trigger `{trigger}`")))?,
                    id,
                    workflow,
                    created_at: from_ms(created),
                    finished_at: finished.map(from_ms),
                });
            }
            Ok(out)
        })
    }

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

    pub fn pending_effects(&self) -> Result<Vec<PendingEffect>, StoreError> {
        self.read(|c| {
            let doing = "reading the outbox";
            let mut stmt = c
                .prepare(
                    "SELECT id, run_id, effect, fresh FROM outbox ORDER BY created_at, run_id, id",
                )
                .map_err(sql(doing))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)? != 0,
                    ))
                })
                .map_err(sql(doing))?;
            let mut out = Vec::new();
            for row in rows {
                let (id, run_id, effect, fresh) = row.map_err(sql(doing))?;
                let effect: Effect = serde_json::from_str(&effect)
                    .map_err(|e| corrupt(&run_id, format!("outbox row {id}: {e}")))?;
                out.push(PendingEffect {
                    id,
                    run_id,
                    effect,
                    fresh,
                });
            }
            Ok(out)
        })
    }

    /// On a graceful stop: the effects left in the outbox were not started, but those in
    /// `performing` (abandoned at the end of the drain) may have been sent.
    pub async fn hand_back(&self, performing: Vec<(String, i64)>) -> Result<(), StoreError> {
        self.write(move |c| {
            let doing = "marking the effects not started";
            c.execute("UPDATE outbox SET fresh = 1", [])
                .map_err(sql(doing))?;
            for (run_id, id) in &performing {
                c.execute(
                    "UPDATE outbox SET fresh = 0 WHERE run_id = ?1 AND id = ?2",
                    params![run_id, id],
                )
                .map_err(sql(doing))?;
            }
            Ok(())
        })
        .await
    }

    /// After a start has read the outbox: from now on a crash may cut any of it short.
    pub async fn clear_fresh(&self) -> Result<(), StoreError> {
        self.write(|c| {
            c.execute("UPDATE outbox SET fresh = 0 WHERE fresh = 1", [])
                .map(drop)
                .map_err(sql("reading the outbox"))
        })
        .await
    }

    /// Every attempt of a run: the records kept on its events, and those written to the
    /// `attempts` table before schema version 6. The latest record of a (step, attempt) wins
    /// (after a manual retry the step runs attempt 1 again). Ordered by start time.
    pub fn attempts(&self, run_id: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        self.read(|c| {
            let doing = "reading attempts";
            let mut by_key: HashMap<(String, Option<u32>, u32), AttemptRecord> = HashMap::new();
            let mut stmt = c
                .prepare_cached(
                    "SELECT step, attempt, started_at, finished_at, status, outcome, error, request, response
                     FROM attempts WHERE run_id = ?1",
                )
                .map_err(sql(doing))?;
            let rows = stmt
                .query_map([run_id], |r| {
                    let parse_j =
                        |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
                    let outcome: String = r.get(5)?;
                    Ok(AttemptRecord {
                        step: r.get(0)?,
                        attempt: r.get(1)?,
                        item: None,
                        dedup_id: None,
                        started_at: r.get::<_, Option<i64>>(2)?.map(from_ms),
                        finished_at: r.get::<_, Option<i64>>(3)?.map(from_ms),
                        status: r.get(4)?,
                        outcome: serde_json::from_value(serde_json::Value::String(outcome))
                            .unwrap_or_default(),
                        error: r.get(6)?,
                        request: parse_j(r.get(7)?),
                        response: parse_j(r.get(8)?),
                    })
                })
                .map_err(sql(doing))?;
            for a in rows {
                let a = a.map_err(sql(doing))?;
                by_key.insert((a.step.clone(), a.item, a.attempt), a);
            }
            let mut stmt = c
                .prepare_cached(
                    "SELECT seq, attempt FROM events WHERE run_id = ?1 AND attempt IS NOT NULL ORDER BY seq",
                )
                .map_err(sql(doing))?;
            let rows = stmt
                .query_map([run_id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                .map_err(sql(doing))?;
            for row in rows {
                let (seq, json) = row.map_err(sql(doing))?;
                let a: AttemptRecord = serde_json::from_str(&json)
                    .map_err(|e| corrupt(run_id, format!("the attempt record of event {seq}: {e}")))?;
                by_key.insert((a.step.clone(), a.item, a.attempt), a);
            }
            let mut out: Vec<AttemptRecord> = by_key.into_values().collect();
            out.sort_by(|x, y| {
                (x.started_at, &x.step, x.item, x.attempt).cmp(&(y.started_at, &y.step, y.item, y.attempt))
            });
            Ok(out)
        })
    }

    pub fn items(&self, run_id: &str, step: &str) -> Result<Vec<ItemRow>, StoreError> {
        self.read(|c| items_of(c, run_id, step))
    }

    /// One item's key and value (what its attempts render).
    pub fn item(
        &self,
        run_id: &str,
        step: &str,
        index: u32,
    ) -> Result<Option<(String, serde_json::Value)>, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT key, value FROM items WHERE run_id = ?1 AND step = ?2 AND idx = ?3",
                params![run_id, step, index],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(sql("reading an item of a `foreach` step"))
            .map(|o| o.map(|(k, v)| (k, serde_json::from_str(&v).unwrap_or_default())))
        })
    }

    pub fn events(&self, run_id: &str) -> Result<Vec<EventRow>, StoreError> {
        self.read(|c| {
            let doing = "reading events";
            let mut stmt = c
                .prepare_cached(
                    "SELECT seq, at, kind, data FROM events WHERE run_id = ?1 ORDER BY seq",
                )
                .map_err(sql(doing))?;
            let rows = stmt
                .query_map([run_id], |r| {
                    let data: String = r.get(3)?;
                    Ok(EventRow {
                        seq: r.get(0)?,
                        at: from_ms(r.get(1)?),
                        kind: r.get(2)?,
                        data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
                    })
                })
                .map_err(sql(doing))?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql(doing))
        })
    }

    // --- schedules -------------------------------------------------------------------------

    pub async fn skip_slot(
        &self,
        claim: SlotClaim,
        reason: &'static str,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            let n = c
                .exec(
                    "INSERT INTO slots(schedule, slot, at, run_id, outcome, created_at) VALUES (?1, ?2, ?3, NULL, ?4, ?5) ON CONFLICT DO NOTHING",
                    params![claim.schedule, claim.slot, ms(claim.at), reason, ms(Utc::now())],
                )
                .map_err(sql("recording a skipped slot"))?;
            mark_schedule(c, &claim.schedule, claim.at)?;
            Ok(n > 0)
        })
        .await
    }

    /// Remembers that schedules were first seen at `at` (catch-up never goes further back);
    /// schedules seen before keep their mark.
    pub async fn mark_schedules_seen(
        &self,
        ids: Vec<String>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let doing = "remembering schedules";
            let mut stmt = c
                .prepare_cached(
                    "INSERT INTO schedule_marks(schedule, since) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                )
                .map_err(sql(doing))?;
            for id in &ids {
                stmt.execute(params![id, ms(at)]).map_err(sql(doing))?;
            }
            Ok(())
        })
        .await
    }

    pub fn schedule_marks(&self) -> Result<HashMap<String, DateTime<Utc>>, StoreError> {
        self.read(|c| {
            let doing = "reading schedule marks";
            let mut stmt = c
                .prepare("SELECT schedule, since FROM schedule_marks")
                .map_err(sql(doing))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(sql(doing))?;
            let mut out = HashMap::new();
            for row in rows {
                let (k, v) = row.map_err(sql(doing))?;
                out.insert(k, from_ms(v));
            }
            Ok(out)
        })
    }

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

    pub fn queued_with_key(
        &self,
        workflow: &str,
        key: &str,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            strings(
                c,
                "SELECT id FROM runs WHERE workflow = ?1 AND concurrency_key = ?2 AND finished_at IS NULL AND status = 'pending' ORDER BY created_at, id LIMIT ?3",
                params![workflow, key, limit],
                "finding queued runs",
            )
        })
    }

    pub fn keys_with_queued_runs(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|c| {
            let doing = "listing queued runs";
            let mut stmt = c
                .prepare_cached(
                    "SELECT DISTINCT workflow, concurrency_key FROM runs WHERE concurrency_key IS NOT NULL AND finished_at IS NULL AND status = 'pending'",
                )
                .map_err(sql(doing))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sql(doing))?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql(doing))
        })
    }

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

    pub fn api_schedules(&self) -> Result<Vec<ApiSchedule>, StoreError> {
        self.read(|c| {
            let doing = "reading schedules";
            let mut stmt = c
                .prepare(&format!(
                    "SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY id"
                ))
                .map_err(sql(doing))?;
            let rows = stmt.query_map([], schedule_row).map_err(sql(doing))?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql(doing))
        })
    }

    pub fn api_schedule(&self, id: &str) -> Result<Option<ApiSchedule>, StoreError> {
        self.read(|c| api_schedule(c, id))
    }

    /// Creates or replaces a schedule; answers it and whether it was created.
    pub async fn save_api_schedule(
        &self,
        s: ScheduleSpec,
    ) -> Result<(ApiSchedule, bool), StoreError> {
        self.write(move |c| {
            let doing = "saving a schedule";
            let now = ms(Utc::now());
            let existed = c
                .query_row("SELECT COUNT(*) FROM schedules WHERE id = ?1", [&s.id], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(sql(doing))?
                > 0;
            c.execute(
                "INSERT INTO schedules(id, workflow, cron, timezone, input, paused, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
                 ON CONFLICT(id) DO UPDATE SET workflow = excluded.workflow, cron = excluded.cron, timezone = excluded.timezone,
                   input = excluded.input, paused = excluded.paused, updated_at = excluded.updated_at",
                params![s.id, s.workflow, s.cron, s.timezone, s.input.to_string(), i64::from(s.paused), now],
            )
            .map_err(sql(doing))?;
            let saved = api_schedule(c, &s.id)?.ok_or_else(|| StoreError::Db {
                doing,
                source: crate::store::DbError {
                    kind: crate::store::DbErrorKind::Other,
                    message: "the saved schedule cannot be read back".into(),
                },
            })?;
            Ok((saved, !existed))
        })
        .await
    }

    pub async fn delete_api_schedule(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |c| {
            c.execute("DELETE FROM schedules WHERE id = ?1", [&id])
                .map(|n| n > 0)
                .map_err(sql("deleting a schedule"))
        })
        .await
    }

    pub async fn set_yaml_paused(
        &self,
        pause: YamlPause<'_>,
        paused: bool,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (workflow, signature, key) = (
            pause.workflow.to_string(),
            pause.signature.to_string(),
            pause.key.to_string(),
        );
        self.write(move |c| {
            let r = if paused {
                c.execute(
                    "INSERT INTO schedule_pauses(workflow, signature, paused_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                    params![workflow, signature, ms(now)],
                )
            } else {
                // Resumed: the slots that passed while it was paused are not due (the mark
                // moves to now, as if they had been seen), so no catch-up fires them.
                c.execute(
                    "DELETE FROM schedule_pauses WHERE workflow = ?1 AND signature = ?2",
                    params![workflow, signature],
                )
                .and_then(|_| {
                    c.execute(
                        "INSERT INTO schedule_marks(schedule, since) VALUES (?1, ?2) ON CONFLICT(schedule) DO UPDATE SET since = max(since, excluded.since)",
                        params![key, ms(now)],
                    )
                })
            };
            r.map(drop).map_err(sql("pausing a schedule"))
        })
        .await
    }

    pub async fn remove_from_dlq(
        &self,
        workflow: &str,
        ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let (workflow, ids) = (workflow.to_string(), ids.to_vec());
        self.write(move |c| {
            let mut n = 0;
            for id in &ids {
                n += c
                    .execute(
                        "INSERT INTO dlq_removed(run_id, removed_at)
                         SELECT id, ?3 FROM runs WHERE id = ?1 AND workflow = ?2 AND status = 'failed'
                         ON CONFLICT DO NOTHING",
                        params![id, workflow, ms(now)],
                    )
                    .map_err(sql("taking a message out of the dead-letter queue"))?;
            }
            Ok(n as u64)
        })
        .await
    }

    pub fn prunable_runs(&self, q: &PruneQuery, limit: u32) -> Result<Vec<String>, StoreError> {
        let doing = "finding runs to prune";
        let except = serde_json::to_string(&q.except).expect("names serialize");
        let before = q.finished_before.map(ms);
        self.read(|c| {
            let ids = match (&q.workflow, q.keep_newest) {
                (Some(workflow), Some(keep)) => {
                    let mut stmt = c
                        .prepare_cached(
                            "SELECT id FROM runs WHERE workflow = ?1 AND finished_at IS NOT NULL
                               AND (?4 IS NULL OR finished_at < ?4)
                               AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.run_id = runs.id)
                             ORDER BY created_at DESC LIMIT ?3 OFFSET ?2",
                        )
                        .map_err(sql(doing))?;
                    let rows = stmt
                        .query_map(params![workflow, keep, limit, before], |r| r.get(0))
                        .map_err(sql(doing))?;
                    rows.collect::<rusqlite::Result<Vec<String>>>()
                }
                _ => {
                    let mut stmt = c
                        .prepare_cached(
                            "SELECT id FROM runs WHERE finished_at IS NOT NULL AND finished_at < ?1
                               AND (?2 IS NULL OR workflow = ?2)
                               AND workflow NOT IN (SELECT value FROM json_each(?3))
                               AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.run_id = runs.id)
                             ORDER BY finished_at LIMIT ?4",
                        )
                        .map_err(sql(doing))?;
                    let rows = stmt
                        .query_map(
                            params![before.unwrap_or(i64::MIN), q.workflow, except, limit],
                            |r| r.get(0),
                        )
                        .map_err(sql(doing))?;
                    rows.collect::<rusqlite::Result<Vec<String>>>()
                }
            };
            ids.map_err(sql(doing))
        })
    }

    pub async fn delete_runs(&self, ids: &[String]) -> Result<u64, StoreError> {
        let ids = ids.to_vec();
        self.write(move |c| {
            let doing = "deleting old runs";
            let mut n = 0;
            for id in &ids {
                let deleted = c
                    .exec(
                        "DELETE FROM runs WHERE id = ?1 AND finished_at IS NOT NULL
                           AND NOT EXISTS (SELECT 1 FROM outbox WHERE run_id = ?1)",
                        [id],
                    )
                    .map_err(sql(doing))?;
                if deleted == 0 {
                    continue;
                }
                n += 1;
                for table in [
                    "DELETE FROM events WHERE run_id = ?1",
                    "DELETE FROM attempts WHERE run_id = ?1",
                    "DELETE FROM items WHERE run_id = ?1",
                    "DELETE FROM event_waits WHERE run_id = ?1",
                    "DELETE FROM approval_tokens WHERE run_id = ?1",
                    "DELETE FROM dlq_removed WHERE run_id = ?1",
                ] {
                    c.exec(table, [id]).map_err(sql(doing))?;
                }
            }
            Ok(n)
        })
        .await
    }

    pub fn paused_yaml(&self) -> Result<std::collections::HashSet<(String, String)>, StoreError> {
        self.read(|c| {
            let doing = "listing paused schedules";
            let mut stmt = c
                .prepare_cached("SELECT workflow, signature FROM schedule_pauses")
                .map_err(sql(doing))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sql(doing))?;
            rows.collect::<Result<_, _>>().map_err(sql(doing))
        })
    }

    // --- approval links ----------------------------------------------------------------------

    pub fn approval_link(&self, hash: &str) -> Result<Option<ApprovalLink>, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT run_id, step, recipient, decision, subject, body, expires_at, used_at FROM approval_tokens WHERE hash = ?1",
                [hash],
                |r| {
                    let decision: String = r.get(3)?;
                    Ok(ApprovalLink {
                        run_id: r.get(0)?,
                        step: r.get(1)?,
                        recipient: r.get(2)?,
                        decision: Decision::parse(&decision).unwrap_or(Decision::Rejected),
                        subject: r.get(4)?,
                        body: r.get(5)?,
                        expires_at: from_ms(r.get(6)?),
                        used_at: r.get::<_, Option<i64>>(7)?.map(from_ms),
                    })
                },
            )
            .optional()
            .map_err(sql("reading an approval link"))
        })
    }

    pub async fn use_approval_link(&self, hash: &str) -> Result<(), StoreError> {
        let hash = hash.to_string();
        self.write(move |c| {
            c.execute(
                "UPDATE approval_tokens SET used_at = ?2 WHERE hash = ?1 AND used_at IS NULL",
                params![hash, ms(Utc::now())],
            )
            .map(drop)
            .map_err(sql("using an approval link"))
        })
        .await
    }

    /// Whether `recipient` was already mailed the links of this step for this deadline.
    pub fn approval_mailed(
        &self,
        run_id: &str,
        step: &str,
        recipient: &str,
        deadline: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM approval_tokens WHERE run_id = ?1 AND step = ?2 AND recipient = ?3 AND mailed_at IS NOT NULL AND expires_at = ?4",
                params![run_id, step, recipient, ms(deadline)],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(sql("checking approval e-mails"))
        })
    }

    /// Stores the links of one approval e-mail; links of an earlier, undelivered attempt for
    /// the same recipient die here.
    pub async fn store_approval_links(&self, links: NewApprovalLinks) -> Result<(), StoreError> {
        self.write(move |c| {
            let doing = "storing approval links";
            c.execute(
                "DELETE FROM approval_tokens WHERE run_id = ?1 AND step = ?2 AND recipient = ?3 AND mailed_at IS NULL",
                params![links.run_id, links.step, links.recipient],
            )
            .map_err(sql(doing))?;
            for (hash, decision) in &links.links {
                c.execute(
                    "INSERT INTO approval_tokens(hash, run_id, step, recipient, decision, subject, body, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![hash, links.run_id, links.step, links.recipient, decision.as_str(), links.subject, links.body, ms(links.expires_at), ms(Utc::now())],
                )
                .map_err(sql(doing))?;
            }
            Ok(())
        })
        .await
    }

    pub async fn mark_approval_mailed(
        &self,
        run_id: &str,
        step: &str,
        recipient: &str,
    ) -> Result<(), StoreError> {
        let (run_id, step, recipient) =
            (run_id.to_string(), step.to_string(), recipient.to_string());
        self.write(move |c| {
            c.execute(
                "UPDATE approval_tokens SET mailed_at = ?4 WHERE run_id = ?1 AND step = ?2 AND recipient = ?3 AND mailed_at IS NULL",
                params![run_id, step, recipient, ms(Utc::now())],
            )
            .map(drop)
            .map_err(sql("recording an approval e-mail"))
        })
        .await
    }

    /// The approval e-mails of a run: one per recipient and round (a retried step mails again),
    /// with when it was delivered (None: not yet), oldest first.
    pub fn approval_emails(&self, run_id: &str) -> Result<Vec<ApprovalEmail>, StoreError> {
        self.read(|c| {
            let doing = "reading approval e-mails";
            let mut stmt = c
                .prepare_cached(
                    "SELECT step, recipient, mailed_at, expires_at FROM approval_tokens
                     WHERE run_id = ?1 AND decision = 'approved' ORDER BY created_at, recipient",
                )
                .map_err(sql(doing))?;
            let rows = stmt
                .query_map([run_id], |r| {
                    Ok(ApprovalEmail {
                        step: r.get(0)?,
                        recipient: r.get(1)?,
                        mailed_at: r.get::<_, Option<i64>>(2)?.map(from_ms),
                        expires_at: from_ms(r.get(3)?),
                    })
                })
                .map_err(sql(doing))?;
            rows.collect::<Result<_, _>>().map_err(sql(doing))
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

const SCHEDULE_COLUMNS: &str =
    "id, workflow, cron, timezone, input, paused, created_at, updated_at";

fn schedule_row(r: &rusqlite::Row) -> rusqlite::Result<ApiSchedule> {
    let input: String = r.get(4)?;
    Ok(ApiSchedule {
        id: r.get(0)?,
        workflow: r.get(1)?,
        cron: r.get(2)?,
        timezone: r.get(3)?,
        input: serde_json::from_str(&input).unwrap_or(serde_json::Value::Null),
        paused: r.get::<_, i64>(5)? != 0,
        created_at: from_ms(r.get(6)?),
        updated_at: from_ms(r.get(7)?),
    })
}

fn api_schedule(c: &Connection, id: &str) -> Result<Option<ApiSchedule>, StoreError> {
    c.query_row(
        &format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = ?1"),
        [id],
        schedule_row,
    )
    .optional()
    .map_err(sql("reading a schedule"))
}
