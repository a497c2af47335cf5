//! Several daemons on one database: each registers as a node with a lease it renews, takes over
//! the work of nodes whose lease lapsed, claims due timers, and holds the scheduler's role while
//! it leads.
//!
//! I/O shell. Every comparison with a lease uses the database's clock (`NOW_MS`), so nodes
//! whose clocks differ agree on who holds what. A node's own write batches check its lease
//! (`lane`), and taking over deletes the dead node's row first (waiting for a commit of it in
//! progress), so a node that was only paused cannot commit after it was replaced.

use super::queries::pending;
use super::{NOW_MS, NodeState, PgStore, from_ms, sql};
use crate::store::StoreError;
use crate::store::types::PendingEffect;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// A node as `runner nodes` and `GET /api/v1/nodes` show it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    pub id: String,
    pub name: String,
    pub version: String,
    #[serde(serialize_with = "crate::time::rfc3339::one")]
    pub started_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::time::rfc3339::one")]
    pub heartbeat_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::time::rfc3339::one")]
    pub lease_until: DateTime<Utc>,
    pub leader: bool,
    /// A hash of the workflow versions the node has loaded (nodes should agree).
    pub defs_hash: String,
    /// This process.
    pub this: bool,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl PgStore {
    /// Registers this process as a new node holding a lease of `ttl`; its write batches are
    /// fenced by that lease from now on.
    pub async fn register_node(&self, name: &str, ttl: Duration) -> Result<String, StoreError> {
        let id = uuid::Uuid::now_v7().to_string();
        self.exec(
            "registering this node",
            &format!(
                "INSERT INTO nodes(id, name, version, started_at, heartbeat_at, lease_until) VALUES ($1, $2, $3, {NOW_MS}, {NOW_MS}, {NOW_MS} + $4)"
            ),
            &[&id, &name, &env!("CARGO_PKG_VERSION"), &millis(ttl)],
        )
        .await?;
        self.set_node(Some(Arc::new(NodeState {
            id: id.clone(),
            name: name.to_string(),
        })));
        Ok(id)
    }

    /// Renews this node's lease. False when it had lapsed (or the row is gone: another node took
    /// over): the node must then drop its work and register again.
    pub async fn heartbeat(&self, ttl: Duration, defs_hash: &str) -> Result<bool, StoreError> {
        let Some(node) = self.node() else {
            return Ok(false);
        };
        let n = self
            .exec(
                "renewing this node's lease",
                &format!(
                    "UPDATE nodes SET heartbeat_at = {NOW_MS}, lease_until = {NOW_MS} + $2, defs_hash = $3 WHERE id = $1 AND lease_until > {NOW_MS}"
                ),
                &[&node.id, &millis(ttl), &defs_hash],
            )
            .await?;
        Ok(n == 1)
    }

    /// On a graceful stop: gives this node's pending effects back (another node takes them at
    /// its next sweep, within a second), resigns its roles and removes its row.
    /// Those in `performing` (abandoned at the end of the drain) may have been sent; the others
    /// were not started, and are performed as they are by the node that takes them.
    pub async fn release_node(&self, performing: &[(String, i64)]) -> Result<(), StoreError> {
        let Some(node) = self.node() else {
            return Ok(());
        };
        let doing = "releasing this node's work";
        let mut c = self.pool().get().await.map_err(super::pool_err(doing))?;
        let tx = c.transaction().await.map_err(sql(doing))?;
        tx.execute(
            "UPDATE outbox SET owner = NULL, fresh = true WHERE owner = $1",
            &[&node.id],
        )
        .await
        .map_err(sql(doing))?;
        for (run_id, id) in performing {
            tx.execute(
                "UPDATE outbox SET fresh = false WHERE run_id = $1 AND id = $2",
                &[run_id, id],
            )
            .await
            .map_err(sql(doing))?;
        }
        tx.execute("DELETE FROM leader WHERE node_id = $1", &[&node.id])
            .await
            .map_err(sql(doing))?;
        tx.execute("DELETE FROM nodes WHERE id = $1", &[&node.id])
            .await
            .map_err(sql(doing))?;
        tx.commit().await.map_err(sql(doing))?;
        self.set_node(None);
        Ok(())
    }

    /// Gives these effects back (a stopping node could not finish them).
    pub async fn release_effects(&self, effects: &[(String, i64)]) -> Result<(), StoreError> {
        let Some(node) = self.node() else {
            return Ok(());
        };
        for (run_id, id) in effects {
            self.exec(
                "releasing an effect",
                "UPDATE outbox SET owner = NULL WHERE run_id = $1 AND id = $2 AND owner = $3",
                &[run_id, id, &node.id],
            )
            .await?;
        }
        Ok(())
    }

    pub async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let me = self.node().map(|n| n.id.clone()).unwrap_or_default();
        let rows = self
            .rows(
                "listing nodes",
                &format!(
                    "SELECT n.id, n.name, n.version, n.started_at, n.heartbeat_at, n.lease_until, n.defs_hash,
                            EXISTS (SELECT 1 FROM leader l WHERE l.node_id = n.id AND l.expires_at > {NOW_MS})
                     FROM nodes n ORDER BY n.started_at, n.id"
                ),
                &[],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let id: String = r.get(0);
                NodeRow {
                    this: id == me,
                    id,
                    name: r.get(1),
                    version: r.get(2),
                    started_at: from_ms(r.get(3)),
                    heartbeat_at: from_ms(r.get(4)),
                    lease_until: from_ms(r.get(5)),
                    defs_hash: r.get(6),
                    leader: r.get(7),
                }
            })
            .collect())
    }

    /// Holds (or takes, once the holder's term lapsed) the role `role` for `ttl`. Answers the
    /// term while this node holds it.
    pub async fn lead(&self, role: &str, ttl: Duration) -> Result<Option<i64>, StoreError> {
        let Some(node) = self.node() else {
            return Ok(None);
        };
        let row = self
            .rows(
                "electing a leader",
                &format!(
                    "INSERT INTO leader(role, node_id, term, expires_at) VALUES ($1, $2, 1, {NOW_MS} + $3)
                     ON CONFLICT (role) DO UPDATE SET node_id = excluded.node_id, expires_at = excluded.expires_at,
                       term = CASE WHEN leader.node_id = excluded.node_id THEN leader.term ELSE leader.term + 1 END
                     WHERE leader.node_id = excluded.node_id OR leader.expires_at < {NOW_MS}
                     RETURNING term"
                ),
                &[&role, &node.id, &millis(ttl)],
            )
            .await?;
        Ok(row.into_iter().next().map(|r| r.get(0)))
    }

    pub async fn resign(&self, role: &str) -> Result<(), StoreError> {
        let Some(node) = self.node() else {
            return Ok(());
        };
        self.exec(
            "resigning a role",
            "DELETE FROM leader WHERE role = $1 AND node_id = $2",
            &[&role, &node.id],
        )
        .await
        .map(drop)
    }

    /// Takes over the work of dead nodes: deletes the nodes whose lease lapsed more than `grace`
    /// ago (waiting for a commit of theirs in progress), then claims up to `limit` outbox rows
    /// that no live node owns. Answers the nodes taken over and the effects claimed.
    pub async fn rescue(
        &self,
        grace: Duration,
        limit: i64,
    ) -> Result<(Vec<String>, Vec<PendingEffect>), StoreError> {
        let Some(node) = self.node() else {
            return Ok((vec![], vec![]));
        };
        let dead: Vec<String> = self
            .rows(
                "taking over dead nodes",
                &format!("DELETE FROM nodes WHERE lease_until < {NOW_MS} - $1 RETURNING name"),
                &[&millis(grace)],
            )
            .await?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        let rows = self
            .rows(
                "claiming orphaned effects",
                "UPDATE outbox o SET owner = $1, fresh = false FROM (
                     SELECT run_id, id, fresh FROM outbox x
                     WHERE x.owner IS NULL OR NOT EXISTS (SELECT 1 FROM nodes n WHERE n.id = x.owner)
                     ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED) c
                 WHERE o.run_id = c.run_id AND o.id = c.id
                 RETURNING o.id, o.run_id, o.effect, c.fresh",
                &[&node.id, &limit],
            )
            .await?;
        let claimed = rows.iter().map(pending).collect::<Result<Vec<_>, _>>()?;
        Ok((dead, claimed))
    }

    /// This node's own pending effects older than `age` (for one whose commit's answer was lost,
    /// the executor performs those it is not performing already).
    pub async fn own_effects(&self, age: Duration) -> Result<Vec<PendingEffect>, StoreError> {
        let Some(node) = self.node() else {
            return Ok(vec![]);
        };
        let rows = self
            .rows(
                "reading this node's effects",
                &format!(
                    "SELECT id, run_id, effect FROM outbox WHERE owner = $1 AND created_at < {NOW_MS} - $2 ORDER BY created_at LIMIT 1000"
                ),
                &[&node.id, &millis(age)],
            )
            .await?;
        rows.iter().map(pending).collect()
    }

    /// Claims up to `limit` runs whose timer is due by `upto` and that no node has claimed in
    /// the last `hold`: this node fires them.
    pub async fn claim_timers(
        &self,
        upto: DateTime<Utc>,
        hold: Duration,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = self
            .rows(
                "claiming due timers",
                &format!(
                    "UPDATE runs SET wake_claim = {NOW_MS} + $2 WHERE id IN (
                         SELECT id FROM runs WHERE finished_at IS NULL AND wake_at IS NOT NULL AND wake_at <= $1
                           AND (wake_claim IS NULL OR wake_claim < {NOW_MS})
                         ORDER BY wake_at LIMIT $3 FOR UPDATE SKIP LOCKED)
                     RETURNING id"
                ),
                &[&super::ms(upto), &millis(hold), &limit],
            )
            .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }
}
