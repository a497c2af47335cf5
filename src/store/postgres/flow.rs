//! Flow control in PostgreSQL: a call's ask to start (counted from the outbox rows of its key,
//! every node's, under an advisory lock per key), closing a key after `Retry-After`, the keys'
//! listing and pruning.
//!
//! I/O shell.

use super::{PgStore, from_ms, ms, sql};
use crate::store::StoreError;
use crate::store::types::*;
use chrono::{DateTime, Utc};

/// The transaction lock of a flow-control key, held while a call of it is admitted.
const FLOW_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended('flow' || chr(31) || $1, 7))";

impl PgStore {
    /// Whether a call with a flow-control key may start now; if so its row counts as in flight.
    /// One transaction per key at a time (an advisory lock), so nodes never admit past a limit.
    pub async fn flow_admit(
        &self,
        ask: FlowAsk,
        now: DateTime<Utc>,
    ) -> Result<FlowAnswer, StoreError> {
        use futures_util::future::try_join4;
        let doing = "admitting a call with a flow-control key";
        let mut c = self.client(doing).await?;
        let prepare = |q: &'static str| {
            let c = &c;
            async move { c.prepare_cached(q).await.map_err(sql(doing)) }
        };
        let (lock_st, (since_st, key_st, counts_st, admit_st)) = futures_util::future::try_join(
            prepare(FLOW_LOCK),
            try_join4(
            prepare(
                "UPDATE outbox SET flow_key = $3, flow_since = coalesce(flow_since, $4)
                 WHERE run_id = $1 AND id = $2 RETURNING flow_since, flow_admitted",
            ),
            prepare(
                "INSERT INTO flow_keys(key, parallelism, rate, period_ms, updated_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (key) DO UPDATE SET parallelism = excluded.parallelism, rate = excluded.rate,
                   period_ms = excluded.period_ms, updated_at = excluded.updated_at
                 RETURNING closed_until",
            ),
            // Calls in flight, calls ahead of this one in line, and starts within the period.
            prepare(
                "SELECT
                   (SELECT count(*) FROM outbox WHERE flow_key = $1 AND flow_admitted IS NOT NULL),
                   (SELECT count(*) FROM outbox WHERE flow_key = $1 AND flow_admitted IS NULL
                      AND (flow_since, run_id, id) <
                          ((SELECT flow_since FROM outbox WHERE run_id = $2 AND id = $3), $2, $3)),
                   CASE WHEN $5 THEN (SELECT count(*) FROM flow_starts WHERE key = $1 AND at > $4) ELSE 0 END",
            ),
            prepare(
                "WITH admitted AS (UPDATE outbox SET flow_admitted = $4 WHERE run_id = $2 AND id = $3),
                      gone AS (DELETE FROM flow_starts WHERE $6 AND key = $1 AND at <= $5)
                 INSERT INTO flow_starts(key, at) SELECT $1, $4 WHERE $6",
            ),
            ),
        )
        .await?;
        let tx = c.transaction().await.map_err(sql(doing))?;
        let period_ms = i64::try_from(ask.limits.period.as_millis()).unwrap_or(i64::MAX);
        let window = ms(now) - period_ms;
        let as_i32 = |v: Option<u32>| v.map(|n| i32::try_from(n).unwrap_or(i32::MAX));
        let (par, rate) = (as_i32(ask.limits.parallelism), as_i32(ask.limits.rate));
        let has_rate = rate.is_some();
        // One round trip: the lock first (the statements run in the order sent), then what the
        // rule needs. A crash undoes nothing that matters here (every call in flight is sent
        // again and asks again), so the commit does not wait for the disk.
        let (_, _, row, key_row, counts) = futures_util::future::try_join5(
            async {
                tx.batch_execute("SET LOCAL synchronous_commit = off")
                    .await
                    .map(|()| 0)
            },
            tx.execute(&lock_st, &[&ask.key]),
            tx.query_opt(
                &since_st,
                &[&ask.run_id, &ask.effect_id, &ask.key, &ms(now)],
            ),
            tx.query_one(&key_st, &[&ask.key, &par, &rate, &period_ms, &ms(now)]),
            tx.query_one(
                &counts_st,
                &[&ask.key, &ask.run_id, &ask.effect_id, &window, &has_rate],
            ),
        )
        .await
        .map_err(sql(doing))?;
        let Some(row) = row else {
            return Ok(FlowAnswer::Gone);
        };
        let (since, admitted): (i64, Option<i64>) = (row.get(0), row.get(1));
        if admitted.is_some() {
            return Ok(FlowAnswer::Admitted);
        }
        let n = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
        let (in_flight, ahead, started): (i64, i64, i64) =
            (counts.get(0), counts.get(1), counts.get(2));
        let mut occ = crate::flow::Occupancy {
            in_flight: n(in_flight),
            ahead: n(ahead),
            started: n(started),
            oldest: Vec::new(),
            closed_until: key_row.get::<_, Option<i64>>(0).map(from_ms),
        };
        if let Some(rate) = rate {
            let over = (started + ahead + 1 - i64::from(rate)).max(0);
            if over > 0 {
                occ.oldest = tx
                    .query(
                        "SELECT at FROM flow_starts WHERE key = $1 AND at > $2 ORDER BY at LIMIT $3",
                        &[&ask.key, &window, &over],
                    )
                    .await
                    .map_err(sql(doing))?
                    .iter()
                    .map(|r| from_ms(r.get(0)))
                    .collect();
            }
        }
        let answer = match crate::flow::admit(&ask.limits, &occ, now) {
            crate::flow::Admission::Now => {
                tx.execute(
                    &admit_st,
                    &[
                        &ask.key,
                        &ask.run_id,
                        &ask.effect_id,
                        &ms(now),
                        &window,
                        &has_rate,
                    ],
                )
                .await
                .map_err(sql(doing))?;
                FlowAnswer::Admitted
            }
            admission => FlowAnswer::Wait { admission, since },
        };
        tx.commit().await.map_err(sql(doing))?;
        Ok(answer)
    }

    /// Forgets keys no call has asked for since `before` (none in flight or waiting, not closed).
    pub async fn prune_flow_keys(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let doing = "forgetting idle flow-control keys";
        let n = self
            .exec(
                doing,
                "DELETE FROM flow_keys WHERE updated_at < $1 AND coalesce(closed_until, 0) < $2
                   AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.flow_key = flow_keys.key)",
                &[&ms(before), &ms(now)],
            )
            .await?;
        self.exec(
            doing,
            "DELETE FROM flow_starts WHERE key NOT IN (SELECT key FROM flow_keys)",
            &[],
        )
        .await?;
        Ok(n)
    }

    /// A 429 or 503 with `Retry-After` from a call of the key: no call of it starts before `until`.
    pub async fn flow_close(&self, key: &str, until: DateTime<Utc>) -> Result<(), StoreError> {
        self.exec(
            "closing a flow-control key",
            "UPDATE flow_keys SET closed_until = greatest(coalesce(closed_until, 0), $2) WHERE key = $1",
            &[&key, &ms(until)],
        )
        .await
        .map(drop)
    }

    pub async fn flow_keys(&self, now: DateTime<Utc>) -> Result<Vec<FlowKeyRow>, StoreError> {
        Ok(self
            .rows(
                "reading flow-control keys",
                "SELECT k.key, k.parallelism, k.rate, k.period_ms, k.closed_until,
                   (SELECT COUNT(*) FROM outbox o WHERE o.flow_key = k.key AND o.flow_admitted IS NOT NULL),
                   (SELECT COUNT(*) FROM outbox o WHERE o.flow_key = k.key AND o.flow_admitted IS NULL),
                   (SELECT COUNT(*) FROM flow_starts s WHERE s.key = k.key AND s.at > $1 - k.period_ms)
                 FROM flow_keys k ORDER BY k.key",
                &[&ms(now)],
            )
            .await?
            .iter()
            .map(|r| FlowKeyRow {
                key: r.get(0),
                parallelism: r.get::<_, Option<i32>>(1).and_then(|v| u32::try_from(v).ok()),
                rate: r.get::<_, Option<i32>>(2).and_then(|v| u32::try_from(v).ok()),
                period_ms: r.get(3),
                closed_until: r.get::<_, Option<i64>>(4).map(from_ms).filter(|t| *t > now),
                in_flight: r.get(5),
                waiting: r.get(6),
                started_in_period: r.get(7),
            })
            .collect())
    }
}
