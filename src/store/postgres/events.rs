//! Events sent to runner, in PostgreSQL: recording one (unique by name and id, under the lock
//! a wait for the same name and key also takes), the runs waiting for it, its delivery, and
//! pruning. A run's waits are written by its changes (`tx`).
//!
//! I/O shell.

use super::{PgStore, from_ms, ms, sql};
use crate::store::StoreError;
use crate::store::types::*;
use chrono::{DateTime, Utc};
use tokio_postgres::Row;

pub(super) const INBOUND_COLUMNS: &str = "seq, name, id, key, data, received_at, delivered";

/// A transaction lock per event name and key, taken by the transaction that records an event
/// and by one that starts a wait for it.
pub(super) const EVENT_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(31) || $2, 7))";

/// A row of [`INBOUND_COLUMNS`].
pub(super) fn inbound_row(r: &Row) -> InboundEvent {
    let data: String = r.get(4);
    let delivered: Option<String> = r.get(6);
    InboundEvent {
        seq: r.get(0),
        name: r.get(1),
        id: r.get(2),
        key: r.get(3),
        data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
        received_at: from_ms(r.get(5)),
        delivered: delivered.and_then(|d| serde_json::from_str(&d).ok()),
    }
}

impl PgStore {
    /// Records an event, or answers the one recorded before with its name and id.
    pub async fn record_event(
        &self,
        e: NewInboundEvent,
        now: DateTime<Utc>,
    ) -> Result<RecordedEvent, StoreError> {
        let doing = "recording an event";
        let mut c = self.client(doing).await?;
        let (lock, insert, select) = futures_util::future::try_join3(
            c.prepare_cached(EVENT_LOCK),
            c.prepare_cached(
                "INSERT INTO inbound_events(name, id, key, data, received_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name, id) DO NOTHING",
            ),
            c.prepare_cached(&format!(
                "SELECT {INBOUND_COLUMNS} FROM inbound_events WHERE name = $1 AND id = $2"
            )),
        )
        .await
        .map_err(sql(doing))?;
        let tx = c.transaction().await.map_err(sql(doing))?;
        let data = e.data.to_string();
        // One round trip, in this order: the lock, the insert, the row as stored.
        let (_, n, row) = futures_util::future::try_join3(
            tx.execute(&lock, &[&e.name, &e.key]),
            tx.execute(&insert, &[&e.name, &e.id, &e.key, &data, &ms(now)]),
            tx.query_one(&select, &[&e.name, &e.id]),
        )
        .await
        .map_err(sql(doing))?;
        tx.commit().await.map_err(sql(doing))?;
        Ok(RecordedEvent {
            event: inbound_row(&row),
            duplicate: n == 0,
        })
    }

    /// The runs waiting for an event of this name and key that arrived at `at`.
    pub async fn event_waits(
        &self,
        name: &str,
        key: &str,
        at: DateTime<Utc>,
    ) -> Result<Vec<EventWait>, StoreError> {
        Ok(self
            .rows(
                "reading the waits for an event",
                "SELECT run_id, step FROM event_waits WHERE name = $1 AND key = $2 AND since <= $3 ORDER BY run_id, step",
                &[&name, &key, &ms(at)],
            )
            .await?
            .iter()
            .map(|r| EventWait {
                run_id: r.get(0),
                step: r.get(1),
            })
            .collect())
    }

    pub async fn mark_event_delivered(
        &self,
        seq: i64,
        runs: Vec<String>,
    ) -> Result<(), StoreError> {
        let runs = serde_json::to_string(&runs).expect("a list serializes");
        self.exec(
            "recording an event's delivery",
            "UPDATE inbound_events SET delivered = $2 WHERE seq = $1",
            &[&seq, &runs],
        )
        .await
        .map(drop)
    }

    /// Events received before `before` whose delivery did not end.
    pub async fn undelivered_events(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<InboundEvent>, StoreError> {
        Ok(self
            .rows(
                "reading undelivered events",
                &format!("SELECT {INBOUND_COLUMNS} FROM inbound_events WHERE delivered IS NULL AND received_at < $1 ORDER BY received_at LIMIT $2"),
                &[&ms(before), &limit],
            )
            .await?
            .iter()
            .map(inbound_row)
            .collect())
    }

    /// Events, newest first, optionally of one name.
    pub async fn list_events(
        &self,
        name: Option<&str>,
        limit: i64,
    ) -> Result<Vec<InboundEvent>, StoreError> {
        Ok(self
            .rows(
                "reading events",
                &format!("SELECT {INBOUND_COLUMNS} FROM inbound_events WHERE ($1::text IS NULL OR name = $1) ORDER BY seq DESC LIMIT $2"),
                &[&name, &limit],
            )
            .await?
            .iter()
            .map(inbound_row)
            .collect())
    }

    /// Deletes up to `limit` delivered events received before `before`; answers how many.
    pub async fn prune_events(&self, before: DateTime<Utc>, limit: i64) -> Result<u64, StoreError> {
        self.exec(
            "deleting old events",
            "DELETE FROM inbound_events WHERE seq IN (SELECT seq FROM inbound_events WHERE received_at < $1 AND delivered IS NOT NULL ORDER BY received_at LIMIT $2)",
            &[&ms(before), &limit],
        )
        .await
    }
}
