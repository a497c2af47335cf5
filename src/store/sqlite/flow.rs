//! Flow control in SQLite: a call's ask to start (counted from the outbox rows of its key),
//! closing a key after `Retry-After`, the keys' listing and pruning.
//!
//! I/O shell.

use super::tx::Cached;
use super::{SqliteStore, from_ms, ms, sql};
use crate::store::StoreError;
use crate::store::types::*;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

impl SqliteStore {
    /// Whether a call with a flow-control key may start now; if so its row counts as in flight.
    pub async fn flow_admit(
        &self,
        ask: FlowAsk,
        now: DateTime<Utc>,
    ) -> Result<FlowAnswer, StoreError> {
        self.write_light(move |c| {
            let doing = "admitting a call with a flow-control key";
            // Its place in line is when it first asked.
            let row: Option<(i64, Option<i64>)> = c
                .row(
                    "UPDATE outbox SET flow_key = ?3, flow_since = coalesce(flow_since, ?4) WHERE run_id = ?1 AND id = ?2
                     RETURNING flow_since, flow_admitted",
                    params![ask.run_id, ask.effect_id, ask.key, ms(now)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(sql(doing))?;
            let Some((since, admitted)) = row else {
                return Ok(FlowAnswer::Gone);
            };
            if admitted.is_some() {
                return Ok(FlowAnswer::Admitted);
            }
            let period_ms = i64::try_from(ask.limits.period.as_millis()).unwrap_or(i64::MAX);
            let (parallelism, rate) = (ask.limits.parallelism, ask.limits.rate);
            // (parallelism, rate, period_ms, closed_until)
            type KeyRow = (Option<u32>, Option<u32>, i64, Option<i64>);
            let known: Option<KeyRow> = c
                .row(
                    "SELECT parallelism, rate, period_ms, closed_until FROM flow_keys WHERE key = ?1",
                    params![ask.key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()
                .map_err(sql(doing))?;
            if known.is_none_or(|(p, r, m, _)| (p, r, m) != (parallelism, rate, period_ms)) {
                c.exec(
                    "INSERT INTO flow_keys(key, parallelism, rate, period_ms, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(key) DO UPDATE SET parallelism = excluded.parallelism, rate = excluded.rate,
                       period_ms = excluded.period_ms, updated_at = excluded.updated_at",
                    params![ask.key, parallelism, rate, period_ms, ms(now)],
                )
                .map_err(sql(doing))?;
            }
            let (in_flight, ahead): (i64, i64) = c
                .row(
                    "SELECT count(*) FILTER (WHERE flow_admitted IS NOT NULL),
                            count(*) FILTER (WHERE flow_admitted IS NULL
                              AND (flow_since < ?2 OR (flow_since = ?2 AND (run_id < ?3 OR (run_id = ?3 AND id < ?4)))))
                     FROM outbox WHERE flow_key = ?1",
                    params![ask.key, since, ask.run_id, ask.effect_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(sql(doing))?;
            let n = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
            let mut occ = crate::flow::Occupancy {
                in_flight: n(in_flight),
                ahead: n(ahead),
                started: 0,
                oldest: Vec::new(),
                closed_until: known.and_then(|k| k.3).map(from_ms),
            };
            let window = ms(now) - period_ms;
            if let Some(rate) = rate {
                let started: i64 = c
                    .row(
                        "SELECT count(*) FROM flow_starts WHERE key = ?1 AND at > ?2",
                        params![ask.key, window],
                        |r| r.get(0),
                    )
                    .map_err(sql(doing))?;
                occ.started = n(started);
                let over = (started + ahead + 1 - i64::from(rate)).max(0);
                if over > 0 {
                    let mut stmt = c
                        .prepare_cached("SELECT at FROM flow_starts WHERE key = ?1 AND at > ?2 ORDER BY at LIMIT ?3")
                        .map_err(sql(doing))?;
                    occ.oldest = stmt
                        .query_map(params![ask.key, window, over], |r| r.get::<_, i64>(0))
                        .map_err(sql(doing))?
                        .map(|r| r.map(from_ms))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(sql(doing))?;
                }
            }
            match crate::flow::admit(&ask.limits, &occ, now) {
                crate::flow::Admission::Now => {
                    c.exec(
                        "UPDATE outbox SET flow_admitted = ?3 WHERE run_id = ?1 AND id = ?2",
                        params![ask.run_id, ask.effect_id, ms(now)],
                    )
                    .map_err(sql(doing))?;
                    if rate.is_some() {
                        c.exec("DELETE FROM flow_starts WHERE key = ?1 AND at <= ?2", params![ask.key, window])
                            .map_err(sql(doing))?;
                        c.exec("INSERT INTO flow_starts(key, at) VALUES (?1, ?2)", params![ask.key, ms(now)])
                            .map_err(sql(doing))?;
                    }
                    Ok(FlowAnswer::Admitted)
                }
                admission => Ok(FlowAnswer::Wait { admission, since }),
            }
        })
        .await
    }

    /// Forgets keys no call has asked for since `before` (none in flight or waiting, not closed).
    pub async fn prune_flow_keys(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.write(move |c| {
            let doing = "forgetting idle flow-control keys";
            let n = c
                .execute(
                    "DELETE FROM flow_keys WHERE updated_at < ?1 AND coalesce(closed_until, 0) < ?2
                       AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.flow_key = flow_keys.key)",
                    params![ms(before), ms(now)],
                )
                .map_err(sql(doing))?;
            c.execute(
                "DELETE FROM flow_starts WHERE key NOT IN (SELECT key FROM flow_keys)",
                [],
            )
            .map_err(sql(doing))?;
            Ok(n as u64)
        })
        .await
    }

    /// A 429 or 503 with `Retry-After` from a call of the key: no call of it starts before `until`.
    pub async fn flow_close(&self, key: &str, until: DateTime<Utc>) -> Result<(), StoreError> {
        let key = key.to_string();
        self.write(move |c| {
            c.execute(
                "UPDATE flow_keys SET closed_until = max(coalesce(closed_until, 0), ?2) WHERE key = ?1",
                params![key, ms(until)],
            )
            .map(drop)
            .map_err(sql("closing a flow-control key"))
        })
        .await
    }

    pub fn flow_keys(&self, now: DateTime<Utc>) -> Result<Vec<FlowKeyRow>, StoreError> {
        self.read(|c| {
            let doing = "reading flow-control keys";
            let mut stmt = c
                .prepare_cached(
                    "SELECT k.key, k.parallelism, k.rate, k.period_ms, k.closed_until,
                       (SELECT COUNT(*) FROM outbox o WHERE o.flow_key = k.key AND o.flow_admitted IS NOT NULL),
                       (SELECT COUNT(*) FROM outbox o WHERE o.flow_key = k.key AND o.flow_admitted IS NULL),
                       (SELECT COUNT(*) FROM flow_starts s WHERE s.key = k.key AND s.at > ?1 - k.period_ms)
                     FROM flow_keys k ORDER BY k.key",
                )
                .map_err(sql(doing))?;
            let rows = stmt
                .query_map(params![ms(now)], |r| {
                    Ok(FlowKeyRow {
                        key: r.get(0)?,
                        parallelism: r.get(1)?,
                        rate: r.get(2)?,
                        period_ms: r.get(3)?,
                        closed_until: r.get::<_, Option<i64>>(4)?.map(from_ms).filter(|t| *t > now),
                        in_flight: r.get(5)?,
                        waiting: r.get(6)?,
                        started_in_period: r.get(7)?,
                    })
                })
                .map_err(sql(doing))?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql(doing))
        })
    }
}
