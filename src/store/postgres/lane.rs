//! A writer lane: one connection that commits the run changes queued for it, many in one
//! transaction when several are waiting (group commit).
//!
//! I/O shell. Each transaction first checks this node's lease (`FOR SHARE` on its row, so the
//! node that takes over a dead node's work waits for a commit in progress and then deletes the
//! row: after that, no transaction of the dead node can commit). A batch runs without
//! savepoints; if one change fails, the batch is rolled back and each change runs again in a
//! transaction of its own, so one failing change does not undo the others.

use super::tx::{LaneCache, PgTx, Statements};
use super::{NOW_MS, NodeState, pool_err, sql};
use crate::store::apply::{self, ApplyEvent};
use crate::store::types::{Applied, NewRunRequest, Versions};
use crate::store::{DbError, DbErrorKind, StoreError};
use chrono::{DateTime, Utc};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// How many changes one transaction takes at most.
const BATCH: usize = 256;

pub(super) struct Command {
    pub job: Job,
    pub reply: oneshot::Sender<Result<Applied, StoreError>>,
}

pub(super) enum Job {
    Start {
        request: Box<NewRunRequest>,
        now: DateTime<Utc>,
    },
    Apply {
        change: Box<ApplyEvent>,
        now: DateTime<Utc>,
    },
}

/// The lane's loop: takes what is queued, commits it, answers, until the store is dropped.
pub(super) async fn run(
    pool: deadpool_postgres::Pool,
    mut rx: mpsc::UnboundedReceiver<Command>,
    versions: Versions,
    node: Arc<Mutex<Option<Arc<NodeState>>>>,
) {
    let mut conn: Option<(deadpool_postgres::Object, Statements)> = None;
    let mut cache = LaneCache::default();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        if conn.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            cache.clear();
            conn = match connect(&pool).await {
                Ok(c) => Some(c),
                Err(e) => {
                    // The database is not reachable: callers decide (the executor retries an
                    // outcome, the API answers 503).
                    let source = match &e {
                        StoreError::Db { source, .. } => source.clone(),
                        other => DbError {
                            kind: DbErrorKind::Unavailable,
                            message: other.to_string(),
                        },
                    };
                    for cmd in batch {
                        let _ = cmd.reply.send(Err(StoreError::Db {
                            doing: "connecting to the database",
                            source: source.clone(),
                        }));
                    }
                    continue;
                }
            };
        }
        let node = node.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some((client, stmts)) = conn.as_mut() else {
            continue;
        };
        process(client, stmts, &mut cache, &versions, node.as_deref(), batch).await;
        if client.is_closed() {
            conn = None;
        }
    }
}

async fn connect(
    pool: &deadpool_postgres::Pool,
) -> Result<(deadpool_postgres::Object, Statements), StoreError> {
    let client = pool
        .get()
        .await
        .map_err(pool_err("connecting to the database"))?;
    let stmts = Statements::prepare(&client).await?;
    Ok((client, stmts))
}

fn fenced(node: &NodeState) -> StoreError {
    StoreError::Db {
        doing: "checking this node's lease",
        source: DbError {
            kind: DbErrorKind::Fenced,
            message: format!(
                "the lease of node `{}` has lapsed: another node may have taken over its work",
                node.name
            ),
        },
    }
}

/// Runs a batch in one transaction; on a failure, each change again in its own.
async fn process(
    client: &mut deadpool_postgres::Object,
    stmts: &Statements,
    cache: &mut LaneCache,
    versions: &Versions,
    node: Option<&NodeState>,
    batch: Vec<Command>,
) {
    if batch.len() > 1 {
        match transaction(client, stmts, cache, versions, node, &batch).await {
            Ok(results) => {
                for (cmd, r) in batch.into_iter().zip(results) {
                    let _ = cmd.reply.send(Ok(r));
                }
                return;
            }
            Err(e) if !e.is_unavailable() => {}
            Err(e) => {
                let e = Arc::new(e);
                for cmd in batch {
                    let _ = cmd.reply.send(Err(copy(&e)));
                }
                return;
            }
        }
    }
    for cmd in batch {
        let one = std::slice::from_ref(&cmd);
        let mut result = transaction(client, stmts, cache, versions, node, one)
            .await
            .map(|mut r| r.pop().expect("one result for one change"));
        // Two starts with one idempotency key, committed by two lanes (or nodes) at once: the
        // second waited on the first's key and lost. Once more, its lookup finds the first run.
        if matches!(cmd.job, Job::Start { .. })
            && matches!(&result, Err(StoreError::Db { source, .. }) if source.kind == DbErrorKind::Conflict)
        {
            result = transaction(client, stmts, cache, versions, node, one)
                .await
                .map(|mut r| r.pop().expect("one result for one change"));
        }
        let _ = cmd.reply.send(result);
    }
}

/// A store error again (errors are not `Clone`; this keeps what callers look at).
fn copy(e: &StoreError) -> StoreError {
    match e {
        StoreError::Db { doing, source } => StoreError::Db {
            doing,
            source: source.clone(),
        },
        other => StoreError::Db {
            doing: "committing",
            source: DbError {
                kind: DbErrorKind::Other,
                message: other.to_string(),
            },
        },
    }
}

/// One transaction: the lease check, each change, the commit. Any failure rolls back all.
async fn transaction(
    client: &mut deadpool_postgres::Object,
    stmts: &Statements,
    cache: &mut LaneCache,
    versions: &Versions,
    node: Option<&NodeState>,
    batch: &[Command],
) -> Result<Vec<Applied>, StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(sql("starting a transaction"))?;
    if let Some(node) = node {
        let held = tx
            .query_opt(
                &format!("SELECT 1 FROM nodes WHERE id = $1 AND lease_until > {NOW_MS} FOR SHARE"),
                &[&node.id],
            )
            .await
            .map_err(sql("checking this node's lease"))?;
        if held.is_none() {
            cache.clear();
            return Err(fenced(node));
        }
    }
    let mut pg = PgTx::new(&tx, stmts, cache, versions, node.map(|n| n.id.as_str()));
    let mut out = Vec::with_capacity(batch.len());
    for cmd in batch {
        let result = match &cmd.job {
            Job::Start { request, now } => apply::start(&mut pg, request, *now).await,
            Job::Apply { change, now } => apply::apply(&mut pg, change, *now).await,
        };
        let result = match result {
            Ok(r) => pg.flush().await.map(|()| r),
            Err(e) => Err(e),
        };
        match result {
            Ok(r) => out.push(r),
            Err(e) => {
                pg.rollback_cache();
                drop(pg);
                let _ = tx.rollback().await;
                return Err(e);
            }
        }
    }
    let learnt = pg.into_learnt();
    match tx.commit().await {
        Ok(()) => {
            cache.apply(learnt);
            Ok(out)
        }
        Err(e) => {
            cache.clear();
            Err(sql("committing")(e))
        }
    }
}
