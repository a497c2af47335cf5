//! This process as a node of a shared database (PostgreSQL): its lease, renewed by a
//! heartbeat; taking over the work of nodes that died; and starting over when its own lease
//! lapsed (it was paused, or cut off from the database, for longer than the lease).
//!
//! I/O shell. Nothing here runs on SQLite, where one process owns a database (its lock files).
//!
//! Timings (a node killed with `kill -9` has its calls in flight sent again by another node
//! within `TTL + GRACE + SWEEP`, about 13 s): the lease lasts `TTL` and is renewed every
//! `HEARTBEAT`; a node whose lease lapsed `GRACE` ago is taken over by the first sweep of
//! another (every `SWEEP`). A node stopping on SIGTERM gives its work back at once.

use super::executor::Executor;
use crate::store::StoreError;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tracing::{debug, error, info, warn};

pub const TTL: Duration = Duration::from_secs(10);
pub const HEARTBEAT: Duration = Duration::from_secs(2);
pub const GRACE: Duration = Duration::from_secs(2);
pub const SWEEP: Duration = Duration::from_secs(1);
/// An effect of this node's own that it is not performing, this long after it was queued, lost
/// its commit's answer (the database went away at the commit): it is performed again.
const OWN_ORPHAN_AGE: Duration = Duration::from_secs(30);

/// What this node tells the others: its name, and a hash of the workflow versions it has
/// loaded (`runner nodes` warns when nodes disagree).
#[derive(Clone)]
pub struct NodeInfo {
    pub name: String,
    pub defs_hash: Arc<RwLock<String>>,
}

/// The default name of a node: host and process id.
pub fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// Registers the node (a shared database only); answers false on SQLite.
pub async fn register(exec: &Executor, info: &NodeInfo) -> Result<bool, StoreError> {
    let id = exec.store().register_node(&info.name, TTL).await?;
    if let Some(id) = &id {
        info!(node = %info.name, node_id = %id, "registered as a node of the shared database");
    }
    Ok(id.is_some())
}

/// The heartbeat and the sweeps, until the process ends. Spawn it once, after `register`.
pub async fn run(exec: Executor, info: NodeInfo) {
    let beat = tokio::spawn(heartbeat(exec.clone(), info.clone()));
    let sweep = tokio::spawn(sweep(exec.clone()));
    let _ = tokio::join!(beat, sweep);
}

async fn heartbeat(exec: Executor, info: NodeInfo) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let defs = info
            .defs_hash
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match exec.store().heartbeat(TTL, &defs).await {
            Ok(true) => exec
                .metrics()
                .lease_renewed(chrono::Utc::now().timestamp_millis()),
            Ok(false) => {
                // Paused or cut off past the lease: another node may have taken this node's
                // work. Drop everything in flight (its commits would be refused anyway) and
                // start over as a new node.
                error!(node = %info.name, "this node's lease lapsed: dropping the work in flight here and registering again");
                exec.metrics().lease_lost();
                exec.reset();
                match register(&exec, &info).await {
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "cannot register again yet"),
                }
            }
            Err(e) => warn!(error = %e, "cannot renew this node's lease now"),
        }
    }
}

async fn sweep(exec: Executor) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        match exec.store().rescue(GRACE, 500).await {
            Ok((dead, claimed)) => {
                for name in &dead {
                    warn!(node = %name, "a node's lease lapsed: taking over its work");
                    exec.metrics().takeover();
                }
                if !claimed.is_empty() {
                    info!(effects = claimed.len(), "claimed effects no live node owns");
                    exec.metrics().claimed(claimed.len());
                }
                resume_all(&exec, claimed).await;
            }
            Err(e) => debug!(error = %e, "cannot sweep for dead nodes now"),
        }
        if n.is_multiple_of(10) {
            match exec.store().own_effects(OWN_ORPHAN_AGE).await {
                Ok(own) => {
                    let lost: Vec<_> = own
                        .into_iter()
                        .filter(|p| !exec.is_performing(&p.run_id, p.id))
                        .collect();
                    if !lost.is_empty() {
                        warn!(
                            effects = lost.len(),
                            "effects of this node that nothing performs (a commit's answer was lost): performing them"
                        );
                    }
                    resume_all(&exec, lost).await;
                }
                Err(e) => debug!(error = %e, "cannot read this node's effects now"),
            }
        }
    }
}

async fn resume_all(exec: &Executor, effects: Vec<crate::store::PendingEffect>) {
    for p in effects {
        match exec.store().get_run(&p.run_id).await {
            Ok(Some(run)) if run.status.is_terminal() && !p.effect.outlives_run() => {
                let _ = exec.store().mark_done(&p.run_id, p.id).await;
            }
            Ok(Some(run)) => exec.resume(Arc::new(run), p),
            Ok(None) => {}
            Err(e) => warn!(run_id = %p.run_id, error = %e, "cannot read a run to take over"),
        }
    }
}
