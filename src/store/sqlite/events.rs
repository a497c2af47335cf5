//! Events sent to runner, in SQLite: recording one (unique by name and id), the runs waiting
//! for it, its delivery, and pruning. A run's waits are written by its changes (`tx`).
//!
//! I/O shell.

use super::{SqliteStore, from_ms, ms, sql};
use crate::store::StoreError;
use crate::store::types::*;
use chrono::{DateTime, Utc};
use rusqlite::params;

impl SqliteStore {
    /// Records an event, or answers the one recorded before with its name and id.
    pub async fn record_event(
        &self,
        e: NewInboundEvent,
        now: DateTime<Utc>,
    ) -> Result<RecordedEvent, StoreError> {
        self.write(move |c| {
            let doing = "recording an event";
            let data = e.data.to_string();
            let n = c
                .execute(
                    "INSERT INTO inbound_events(name, id, key, data, received_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(name, id) DO NOTHING",
                    params![e.name, e.id, e.key, data, ms(now)],
                )
                .map_err(sql(doing))?;
            let event = c
                .query_row(
                    &format!("SELECT {INBOUND_COLUMNS} FROM inbound_events WHERE name = ?1 AND id = ?2"),
                    params![e.name, e.id],
                    inbound_row,
                )
                .map_err(sql(doing))?;
            Ok(RecordedEvent {
                event,
                duplicate: n == 0,
            })
        })
        .await
    }

    /// The runs waiting for an event of this name and key that arrived at `at` (their wait
    /// looks back to their creation, so a run created later does not take it).
    pub fn event_waits(
        &self,
        name: &str,
        key: &str,
        at: DateTime<Utc>,
    ) -> Result<Vec<EventWait>, StoreError> {
        self.read(|c| {
            let doing = "reading the waits for an event";
            let mut stmt = c
                .prepare_cached(
                    "SELECT run_id, step FROM event_waits WHERE name = ?1 AND key = ?2 AND since <= ?3 ORDER BY run_id, step",
                )
                .map_err(sql(doing))?;
            let rows = stmt
                .query_map(params![name, key, ms(at)], |r| {
                    Ok(EventWait {
                        run_id: r.get(0)?,
                        step: r.get(1)?,
                    })
                })
                .map_err(sql(doing))?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql(doing))
        })
    }

    pub async fn mark_event_delivered(
        &self,
        seq: i64,
        runs: Vec<String>,
    ) -> Result<(), StoreError> {
        let runs = serde_json::to_string(&runs).expect("a list serializes");
        self.write(move |c| {
            c.execute(
                "UPDATE inbound_events SET delivered = ?2 WHERE seq = ?1",
                params![seq, runs],
            )
            .map(drop)
            .map_err(sql("recording an event's delivery"))
        })
        .await
    }

    /// Events received before `before` whose delivery did not end (a crash cut it short).
    pub fn undelivered_events(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<InboundEvent>, StoreError> {
        self.read(|c| {
            let doing = "reading undelivered events";
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {INBOUND_COLUMNS} FROM inbound_events WHERE delivered IS NULL AND received_at < ?1 ORDER BY received_at LIMIT ?2"
                ))
                .map_err(sql(doing))?;
            let rows = stmt
                .query_map(params![ms(before), limit], inbound_row)
                .map_err(sql(doing))?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql(doing))
        })
    }

    /// Events, newest first, optionally of one name.
    pub fn list_events(
        &self,
        name: Option<&str>,
        limit: i64,
    ) -> Result<Vec<InboundEvent>, StoreError> {
        self.read(|c| {
            let doing = "reading events";
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {INBOUND_COLUMNS} FROM inbound_events WHERE (?1 IS NULL OR name = ?1) ORDER BY seq DESC LIMIT ?2"
                ))
                .map_err(sql(doing))?;
            let rows = stmt
                .query_map(params![name, limit], inbound_row)
                .map_err(sql(doing))?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql(doing))
        })
    }

    /// Deletes up to `limit` delivered events received before `before`; answers how many.
    pub async fn prune_events(&self, before: DateTime<Utc>, limit: i64) -> Result<u64, StoreError> {
        self.write(move |c| {
            c.execute(
                "DELETE FROM inbound_events WHERE seq IN (SELECT seq FROM inbound_events WHERE received_at < ?1 AND delivered IS NOT NULL ORDER BY received_at LIMIT ?2)",
                params![ms(before), limit],
            )
            .map(|n| n as u64)
            .map_err(sql("deleting old events"))
        })
        .await
    }
}

pub(super) const INBOUND_COLUMNS: &str = "seq, name, id, key, data, received_at, delivered";

/// A row of [`INBOUND_COLUMNS`].
pub(super) fn inbound_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<InboundEvent> {
    let data: String = r.get(4)?;
    let delivered: Option<String> = r.get(6)?;
    Ok(InboundEvent {
        seq: r.get(0)?,
        name: r.get(1)?,
        id: r.get(2)?,
        key: r.get(3)?,
        data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
        received_at: from_ms(r.get(5)?),
        delivered: delivered.and_then(|d| serde_json::from_str(&d).ok()),
    })
}
