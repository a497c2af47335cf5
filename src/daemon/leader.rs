//! The scheduler runs on one node at a time: the one that holds the `scheduler` role (a lease
//! row in the database; on SQLite the one process always holds it). Each slot fires at most
//! once whatever happens, because its unique key is claimed in the transaction that creates the
//! run; leading only saves the other nodes the work of evaluating every schedule.
//!
//! I/O shell. A leader trusts its role for the lease's term as measured on its own clock from
//! the renewal that granted it, minus a margin, and stops its scheduler when it cannot renew in
//! time (a node cut off from the database stops firing before another one starts).

use super::scheduler::{self, Scheduler};
use crate::metrics::Metrics;
use crate::ops::schedules::Change;
use crate::registry::Registry;
use crate::runtime::Executor;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

const ROLE: &str = "scheduler";
const TERM: Duration = Duration::from_secs(10);
const RENEW: Duration = Duration::from_secs(2);
const MARGIN: Duration = Duration::from_secs(2);

/// Leads when it can and runs the scheduler while it leads; `ready` is sent once the first
/// attempt is over (leading and started, or not leading).
pub async fn host(
    exec: Executor,
    registry: Arc<RwLock<Registry>>,
    metrics: Arc<Metrics>,
    mut changes: mpsc::Receiver<Change>,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut notices = exec.store().schedule_changes();
    let mut listening = exec.store().is_shared();
    let mut running: Option<(tokio::task::JoinHandle<()>, mpsc::Sender<Change>)> = None;
    let mut trusted_until = Instant::now();
    let mut tick = tokio::time::interval(RENEW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let asked = Instant::now();
                match exec.store().lead(ROLE, TERM).await {
                    Ok(Some(term)) => {
                        trusted_until = asked + TERM - MARGIN;
                        if running.is_none() {
                            if exec.store().is_shared() {
                                info!(term, "this node leads: it fires the schedules");
                            }
                            running = start(&exec, &registry, &metrics).await;
                        }
                    }
                    Ok(None) => {
                        if running.take().is_some_and(|(task, _)| { task.abort(); true }) {
                            warn!("another node leads now: this node stops firing schedules");
                        }
                    }
                    Err(e) => warn!(error = %e, "cannot renew the scheduler's role now"),
                }
                if running.is_some() && Instant::now() >= trusted_until {
                    warn!("the scheduler's role could not be renewed in time: this node stops firing schedules");
                    if let Some((task, _)) = running.take() {
                        task.abort();
                    }
                }
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            change = changes.recv() => match change {
                Some(change) => forward(&running, change).await,
                None => return,
            },
            notice = notices.recv(), if listening => match notice {
                Some(id) if id.is_empty() => forward(&running, Change::ReloadSchedules).await,
                Some(id) => {
                    let change = match exec.store().api_schedule(&id).await {
                        Ok(Some(s)) => Change::Upsert(s),
                        Ok(None) => Change::Delete(id),
                        Err(_) => Change::ReloadSchedules,
                    };
                    forward(&running, change).await;
                }
                None => listening = false,
            },
        }
    }
}

async fn forward(
    running: &Option<(tokio::task::JoinHandle<()>, mpsc::Sender<Change>)>,
    change: Change,
) {
    if let Some((_, tx)) = running {
        let _ = tx.send(change).await;
    }
}

/// Starts a scheduler (catching up from the database's marks) in a task of its own.
async fn start(
    exec: &Executor,
    registry: &Arc<RwLock<Registry>>,
    metrics: &Arc<Metrics>,
) -> Option<(tokio::task::JoinHandle<()>, mpsc::Sender<Change>)> {
    let mut scheduler = Scheduler::new(exec.clone(), registry.clone(), metrics.clone());
    let started = Instant::now();
    if let Err(e) = scheduler.start(chrono::Utc::now()).await {
        warn!(error = %e, "the scheduler could not start; trying again");
        return None;
    }
    info!(
        ms = started.elapsed().as_millis() as u64,
        "scheduler started"
    );
    let (tx, rx) = mpsc::channel(1024);
    Some((tokio::spawn(scheduler.run(rx)), tx))
}

/// Starts what was queued behind a run when it finishes: the runs queued behind its
/// `concurrency.key` (on every backend), and with `schedules` (a shared database, where a run
/// may finish on any node) the runs queued behind it by its schedule's overlap policy (the
/// leader's scheduler does so too for the runs it sees finish; a start twice is absorbed).
pub async fn start_queued_on_finish(exec: Executor, schedules: bool) {
    let mut finished = exec.finished();
    loop {
        match finished.recv().await {
            Ok(f) => {
                if let Some(key) = &f.concurrency_key {
                    crate::ops::start::dequeue_key(&exec, &f.workflow, key).await;
                }
                if schedules && let Ok(Some(schedule)) = exec.store().schedule_of(&f.run_id).await {
                    scheduler::dequeue(&exec, &schedule).await;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                dequeue_keys(&exec).await;
                if !schedules {
                    continue;
                }
                for schedule in exec
                    .store()
                    .schedules_with_queued_runs()
                    .await
                    .unwrap_or_default()
                {
                    scheduler::dequeue(&exec, &schedule).await;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Starts what is queued behind every `concurrency.key` with room: after a missed finish (the
/// broadcast lagged), and in the daemon's upkeep for runs that finished on a node killed before
/// it could start the next.
pub async fn dequeue_keys(exec: &Executor) {
    for (workflow, key) in exec
        .store()
        .keys_with_queued_runs()
        .await
        .unwrap_or_default()
    {
        crate::ops::start::dequeue_key(exec, &workflow, &key).await;
    }
}
