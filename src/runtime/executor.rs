//! The executor: applies events through the store and performs the effects after commit.
//!
//! I/O shell. It owns the in-memory timer queue (rebuilt from the database on start), the tasks
//! in flight, and whoever waits for a run to finish. Effects that touch the outside world are
//! performed by [`Perform`]ers given at construction; each answers the event its effect produced,
//! which the executor applies in the same transaction that closes the effect's outbox row.

use crate::engine::{AttemptResult, Effect, Event, Outcome, Run, RunStatus, StepStatus};
use crate::metrics::Metrics;
use crate::store::{Applied, AttemptRecord, NewRunRequest, PendingEffect, Store, StoreError};
use crate::workflow::Workflow;
use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, broadcast, oneshot};
use tracing::{debug, info, warn};

/// One external effect to perform, with the run (as committed with the effect) and its workflow
/// version.
pub struct Job {
    pub run: Arc<Run>,
    pub workflow: Arc<Workflow>,
    pub effect: Effect,
    /// The item of a `foreach` step the effect is for, read from the store.
    pub item: Option<crate::engine::request::ItemInput>,
    /// The effect's outbox row (None for an effect performed without one).
    pub effect_id: Option<i64>,
}

/// The timer of a run's own deadline, among its steps' timers: no step can have this id.
const RUN_DEADLINE: &str = "";

/// The event a due timer applies.
fn timer_event(step: &str) -> Event {
    if step == RUN_DEADLINE {
        Event::DeadlinePassed
    } else {
        Event::TimerFired {
            step: step.to_string(),
        }
    }
}

/// Whether a step's `wake_at` is a timer to fire: a retry, a sleep, an approval's or an event
/// wait's deadline, or a retry of an item of a `foreach` step.
fn has_timer(s: &crate::engine::StepState) -> bool {
    matches!(
        s.status,
        StepStatus::Retrying
            | StepStatus::Sleeping
            | StepStatus::WaitingApproval
            | StepStatus::WaitingEvent
    ) || (s.status == StepStatus::Running && s.fan.is_some())
}

/// The items of one `foreach` step, as it saved them.
type ItemList = Arc<Vec<crate::engine::NewItem>>;

/// What performing an effect produced.
pub enum Performed {
    /// An event to apply (an attempt's outcome, with its record), closing the effect.
    Outcome {
        event: Event,
        record: Option<Box<AttemptRecord>>,
    },
    /// The effect is done and produced no event (the approval e-mails are out).
    Done,
}

/// Performs one kind of external effect (an HTTP call, an e-mail, approval e-mails).
pub trait Perform: Send + Sync + 'static {
    fn perform(&self, job: Job) -> Pin<Box<dyn Future<Output = Performed> + Send + 'static>>;

    /// The outcome of an effect this performer performed is stored (its outbox row is gone).
    fn settled(&self, _run_id: &str, _effect_id: i64) {}
}

/// The performers of the three external effects.
#[derive(Clone)]
pub struct Performers {
    pub http: Arc<dyn Perform>,
    pub email: Arc<dyn Perform>,
    pub approval: Arc<dyn Perform>,
}

impl Performers {
    /// For a process that only applies changes which perform nothing outside (`runner cancel
    /// --db`): an effect handed to these is never performed, and stays in the outbox for the
    /// next daemon.
    pub fn none() -> Performers {
        struct Never;
        impl Perform for Never {
            fn perform(&self, _: Job) -> Pin<Box<dyn Future<Output = Performed> + Send + 'static>> {
                Box::pin(std::future::pending())
            }
        }
        let never: Arc<dyn Perform> = Arc::new(Never);
        Performers {
            http: never.clone(),
            email: never.clone(),
            approval: never,
        }
    }
}

/// A run reached a terminal status.
#[derive(Debug, Clone)]
pub struct Finished {
    pub run_id: String,
    pub workflow: String,
    pub status: RunStatus,
    /// Its `concurrency.key`: a run queued behind it may start now.
    pub concurrency_key: Option<String>,
}

#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    performers: Performers,
    /// (due, run, step) — stale entries are harmless: the machine absorbs early or late timers.
    timers: Mutex<BTreeSet<(DateTime<Utc>, String, String)>>,
    timer_changed: Notify,
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<RunStatus>>>>,
    inflight: Mutex<HashMap<String, Vec<tokio::task::AbortHandle>>>,
    /// The outbox rows (run, id) whose effects this process is performing now.
    performing: Mutex<HashSet<(String, i64)>>,
    /// The items of `foreach` steps this process started, by (run, step): what their attempts
    /// render, without reading each item back (dropped when the run finishes; after a restart
    /// or on another node the items are read from the store).
    items: Mutex<HashMap<(String, String), ItemList>>,
    /// Set on SIGTERM: new external effects stay in the outbox for the next start.
    stopping: AtomicBool,
    metrics: Arc<Metrics>,
    finished: broadcast::Sender<Finished>,
    /// The active workflows, for `call` steps (set by the daemon; a process without them fails
    /// a `call` step with a clear error).
    workflows: std::sync::OnceLock<Arc<dyn super::calls::Versions>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Executor {
    pub fn new(store: Store, performers: Performers, metrics: Arc<Metrics>) -> Executor {
        Executor {
            inner: Arc::new(Inner {
                store,
                performers,
                workflows: std::sync::OnceLock::new(),
                timers: Mutex::new(BTreeSet::new()),
                timer_changed: Notify::new(),
                waiters: Mutex::new(HashMap::new()),
                inflight: Mutex::new(HashMap::new()),
                performing: Mutex::new(HashSet::new()),
                items: Mutex::new(HashMap::new()),
                stopping: AtomicBool::new(false),
                metrics,
                finished: broadcast::channel(1024).0,
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    /// Creates a run (started, or queued), in one transaction with its slot claim or idempotency
    /// lookup, and performs its first effects.
    pub async fn start(&self, request: NewRunRequest) -> Result<Applied, StoreError> {
        let applied = self.inner.store.start_run(request, Utc::now()).await?;
        if applied.created {
            self.inner.metrics.run_started(&applied.run.workflow);
            let run = &applied.run;
            info!(run_id = %run.id, workflow = %run.workflow, trigger = %run.trigger, status = run.status.as_str(), "run created");
        }
        self.after_commit(&applied);
        // `on_limit: cancel_running`: the runs with its key it displaced stop now that it is in.
        for id in &applied.displaced {
            let reason = format!(
                "cancelled: run {} has the same concurrency key `{}` (on_limit: cancel_running)",
                applied.run.id,
                applied.run.concurrency_key.as_deref().unwrap_or_default(),
            );
            let event = Event::CancelRequested {
                reason: Some(reason),
            };
            if let Err(e) = self.apply(id, event).await {
                warn!(run_id = %id, error = %e, "a displaced run was not cancelled");
            }
        }
        Ok(applied)
    }

    /// Where `call` steps find the workflows they start (once; later calls are ignored).
    pub fn set_workflows(&self, workflows: Arc<dyn super::calls::Versions>) {
        let _ = self.inner.workflows.set(workflows);
    }

    pub(crate) fn workflows(&self) -> Option<&Arc<dyn super::calls::Versions>> {
        self.inner.workflows.get()
    }

    /// Subscribes to runs reaching a terminal status.
    pub fn finished(&self) -> broadcast::Receiver<Finished> {
        self.inner.finished.subscribe()
    }

    /// Applies an event and performs its effects.
    pub async fn apply(&self, run_id: &str, event: Event) -> Result<Applied, StoreError> {
        self.record(run_id, event, None, None).await
    }

    /// Applies the outcome of an effect: the event, the attempt's record, and the effect's outbox
    /// row closed, in one transaction.
    async fn record(
        &self,
        run_id: &str,
        event: Event,
        record: Option<AttemptRecord>,
        effect_id: Option<i64>,
    ) -> Result<Applied, StoreError> {
        let applied = self
            .inner
            .store
            .apply(run_id, event, Utc::now(), record, effect_id)
            .await?;
        self.after_commit(&applied);
        Ok(applied)
    }

    /// `record`, tried again while the database cannot take it (disk full, unreachable, this
    /// node re-registering after its lease lapsed): an outcome that was received must not be
    /// dropped. Gives up only when the process stops; the effect is then still in the outbox,
    /// and is performed again (as an interrupted attempt) by the next process.
    pub(crate) async fn record_durably(
        &self,
        run_id: &str,
        event: Event,
        record: Option<AttemptRecord>,
        effect_id: Option<i64>,
    ) -> Result<Applied, StoreError> {
        let mut wait = std::time::Duration::from_millis(100);
        loop {
            match self
                .record(run_id, event.clone(), record.clone(), effect_id)
                .await
            {
                Err(e) if e.is_unavailable() && !self.inner.stopping.load(Ordering::SeqCst) => {
                    warn!(run_id, error = %e, retry_in_ms = wait.as_millis() as u64, "cannot store a change now; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }

    /// Waits until the run is terminal and returns its status.
    pub async fn wait(&self, run_id: &str) -> Result<RunStatus, StoreError> {
        // Registered before the status is read: a `Finished` from now on reaches the waiter, and
        // one before it shows in the status.
        let (tx, rx) = oneshot::channel();
        locked(&self.inner.waiters)
            .entry(run_id.to_string())
            .or_default()
            .push(tx);
        let known = match self.inner.store.run_status(run_id).await {
            Ok(Some(status)) if status.is_terminal() => Some(Ok(status)),
            Ok(Some(_)) => None,
            Ok(None) => Some(Err(StoreError::NoSuchRun(run_id.to_string()))),
            Err(e) => Some(Err(e)),
        };
        if let Some(answer) = known {
            drop(rx);
            let mut waiters = locked(&self.inner.waiters);
            if let Some(list) = waiters.get_mut(run_id) {
                list.retain(|w| !w.is_closed());
                if list.is_empty() {
                    waiters.remove(run_id);
                }
            }
            return answer;
        }
        // Another process may finish it (a daemon beside `runner run` that started it from a
        // queue, or took it over): the store is asked too, every second.
        let mut rx = rx;
        let mut poll = tokio::time::interval(std::time::Duration::from_secs(1));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        loop {
            tokio::select! {
                got = &mut rx => {
                    return match got {
                        Ok(status) => Ok(status),
                        Err(_) => Ok(self
                            .inner
                            .store
                            .run_status(run_id)
                            .await?
                            .unwrap_or(RunStatus::Failed)),
                    };
                }
                _ = poll.tick() => {
                    if let Ok(Some(status)) = self.inner.store.run_status(run_id).await
                        && status.is_terminal()
                    {
                        return Ok(status);
                    }
                }
            }
        }
    }

    /// After a restart: performs effects that were committed but not done, and re-arms timers.
    /// With `start_queued`, runs that were queued behind others are started too (the daemon
    /// instead starts them one by one as the runs ahead finish). Limited to one run when `only`
    /// is given (`runner resume RUN_ID` must not send other runs' attempts and then exit while
    /// they are in flight). Answers how many unfinished runs there were.
    pub async fn recover(
        &self,
        start_queued: bool,
        only: Option<&str>,
    ) -> Result<usize, StoreError> {
        let mine = |id: &str| only.is_none_or(|o| o == id);
        if self.inner.store.is_shared() {
            // Other live nodes own their work: this node takes over only that of dead ones, as
            // it goes (`runtime::node`), and claims due timers instead of arming them all.
            return Ok(self.inner.store.unfinished_runs().await?.len());
        }
        // Read the outbox before anything below can commit new effects (a due timer, a queued
        // run started): those are performed after their own commit, and must not be performed
        // a second time as "pending".
        let pending: Vec<_> = self
            .inner
            .store
            .pending_effects()
            .await?
            .into_iter()
            .filter(|p| mine(&p.run_id))
            .collect();
        if pending.iter().any(|p| p.fresh) {
            self.inner.store.clear_fresh().await?;
        }
        let unfinished: Vec<String> = self
            .inner
            .store
            .unfinished_runs()
            .await?
            .into_iter()
            .filter(|id| mine(id))
            .collect();
        for id in &unfinished {
            if let Some(run) = self.inner.store.get_run(id).await? {
                self.arm_timers(&run);
                if run.status == RunStatus::Pending && start_queued {
                    let exec = self.clone();
                    let id = id.clone();
                    tokio::spawn(async move {
                        let _ = exec.apply(&id, Event::Started).await;
                    });
                }
            }
        }
        for p in pending {
            let Some(run) = self.inner.store.get_run(&p.run_id).await? else {
                continue;
            };
            if run.status.is_terminal() && !p.effect.outlives_run() {
                self.inner.store.mark_done(&p.run_id, p.id).await?;
                continue;
            }
            self.resume(Arc::new(run), p);
        }
        Ok(unfinished.len())
    }

    /// Performs an effect whose process stopped (a crash, a node taken over). An attempt that
    /// was in flight may have reached its endpoint: it is recorded as interrupted and sent again
    /// as the next attempt (same dedup id, `Upstash-Retried` one higher). Approval e-mails are
    /// sent again to the recipients not yet mailed.
    pub fn resume(&self, run: Arc<Run>, p: PendingEffect) {
        if p.fresh {
            info!(run_id = %run.id, effect = ?p.effect, "performing an effect a stopped process gave back");
            self.perform(run, p.effect, Some(p.id));
            return;
        }
        match &p.effect {
            Effect::CallHttp {
                step,
                attempt,
                item,
            }
            | Effect::SendEmail {
                step,
                attempt,
                item,
            } => {
                info!(run_id = %run.id, step, attempt, item, "an attempt was interrupted (its process stopped); sending it again as the next attempt");
                let record = AttemptRecord {
                    step: step.clone(),
                    attempt: *attempt,
                    item: *item,
                    finished_at: Some(Utc::now()),
                    outcome: AttemptResult::Interrupted,
                    error: Some(format!(
                        "interrupted: the process performing it stopped before its outcome was stored; sent again as attempt {}",
                        attempt + 1
                    )),
                    ..AttemptRecord::default()
                };
                let event = Event::AttemptInterrupted {
                    step: step.clone(),
                    attempt: *attempt,
                    item: *item,
                };
                let exec = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = exec
                        .record_durably(&run.id, event, Some(record), Some(p.id))
                        .await
                    {
                        warn!(run_id = %run.id, error = %e, "cannot record an interrupted attempt");
                    }
                });
            }
            _ => {
                info!(run_id = %run.id, effect = ?p.effect, "performing an effect again after its process stopped");
                self.perform(run, p.effect, Some(p.id));
            }
        }
    }

    /// The outbox rows whose effects this process is performing now.
    pub fn performing(&self) -> Vec<(String, i64)> {
        locked(&self.inner.performing).iter().cloned().collect()
    }

    /// Whether this process is performing the effect in outbox row `id` of `run_id` now.
    pub fn is_performing(&self, run_id: &str, id: i64) -> bool {
        locked(&self.inner.performing).contains(&(run_id.to_string(), id))
    }

    /// After this node lost its lease (another node may have taken its work over): drops every
    /// call, e-mail and timer in flight here; nothing of it could be committed any more.
    pub fn reset(&self) {
        for (_, handles) in locked(&self.inner.inflight).drain() {
            for h in handles {
                h.abort();
            }
        }
        locked(&self.inner.performing).clear();
        locked(&self.inner.timers).clear();
        locked(&self.inner.items).clear();
    }

    /// Fires the due timers of runs this node claimed (a shared database).
    pub async fn fire_due(&self, run_ids: Vec<String>) {
        let now = Utc::now();
        for id in run_ids {
            let run = match self.inner.store.get_run(&id).await {
                Ok(Some(run)) => run,
                Ok(None) => continue,
                Err(e) => {
                    warn!(run_id = id, error = %e, "cannot read a run whose timer is due");
                    continue;
                }
            };
            for s in run.steps.iter().chain(run.hooks.iter()) {
                if has_timer(s) && s.wake_at.is_some_and(|w| w <= now) {
                    let event = Event::TimerFired { step: s.id.clone() };
                    if let Err(e) = self.record_durably(&id, event, None, None).await {
                        warn!(run_id = id, step = %s.id, error = %e, "a timer could not be applied");
                    }
                }
            }
            if run.failure.is_none() && run.deadline.is_some_and(|d| d <= now) {
                let event = Event::DeadlinePassed;
                if let Err(e) = self.record_durably(&id, event, None, None).await {
                    warn!(run_id = id, error = %e, "the run's deadline could not be applied");
                }
            }
        }
    }

    /// Fires due timers until the process ends. Spawn it once. On a shared database a due
    /// timer is first claimed (one node fires each), and every second this node also claims
    /// timers another node armed (a sleep of days outlives the node that started it).
    pub async fn timer_loop(self) {
        if self.inner.store.is_shared() {
            return self.shared_timer_loop().await;
        }
        loop {
            let next = locked(&self.inner.timers).first().cloned();
            match next {
                None => self.inner.timer_changed.notified().await,
                Some((due, run_id, step)) => {
                    let now = Utc::now();
                    if due <= now {
                        locked(&self.inner.timers).remove(&(due, run_id.clone(), step.clone()));
                        let exec = self.clone();
                        tokio::spawn(async move {
                            let event = timer_event(&step);
                            if let Err(e) = exec.record_durably(&run_id, event, None, None).await {
                                warn!(run_id, step, error = %e, "a timer could not be applied");
                            }
                        });
                    } else {
                        let wait = (due - now).to_std().unwrap_or_default();
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = self.inner.timer_changed.notified() => {}
                        }
                    }
                }
            }
        }
    }

    async fn shared_timer_loop(self) {
        const HOLD: std::time::Duration = std::time::Duration::from_secs(10);
        const BACKSTOP: std::time::Duration = std::time::Duration::from_secs(1);
        loop {
            let now = Utc::now();
            match self.inner.store.claim_timers(now, HOLD, 500).await {
                Ok(ids) if !ids.is_empty() => {
                    let exec = self.clone();
                    tokio::spawn(async move { exec.fire_due(ids).await });
                }
                Ok(_) => {}
                Err(e) => debug!(error = %e, "cannot claim due timers now"),
            }
            // Sleep until the earliest timer this node knows of, or the backstop.
            let wait = {
                let mut timers = locked(&self.inner.timers);
                while timers.first().is_some_and(|(due, _, _)| *due <= now) {
                    timers.pop_first();
                }
                timers
                    .first()
                    .and_then(|(due, _, _)| (*due - now).to_std().ok())
                    .map_or(BACKSTOP, |d| d.min(BACKSTOP))
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.inner.timer_changed.notified() => {}
            }
        }
    }

    fn arm_timers(&self, run: &Run) {
        let mut added = false;
        {
            let mut timers = locked(&self.inner.timers);
            for s in run.steps.iter().chain(run.hooks.iter()) {
                if has_timer(s)
                    && let Some(at) = s.wake_at
                {
                    added |= timers.insert((at, run.id.clone(), s.id.clone()));
                }
            }
            if let Some(at) = run.deadline.filter(|_| run.failure.is_none()) {
                added |= timers.insert((at, run.id.clone(), RUN_DEADLINE.to_string()));
            }
        }
        if added {
            self.inner.timer_changed.notify_one();
        }
    }

    fn after_commit(&self, applied: &Applied) {
        self.arm_timers(&applied.run);
        for (id, effect) in &applied.effects {
            self.perform(applied.run.clone(), effect.clone(), *id);
        }
    }

    /// Stops starting new calls and e-mails (they stay in the outbox) and waits up to `grace`
    /// for those in flight to finish and be recorded. Returns how many were still in flight.
    pub async fn drain(&self, grace: std::time::Duration) -> usize {
        self.inner.stopping.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let busy = locked(&self.inner.inflight)
                .values()
                .flatten()
                .filter(|h| !h.is_finished())
                .count();
            if busy == 0 || tokio::time::Instant::now() >= deadline {
                return busy;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    fn perform(&self, run: Arc<Run>, effect: Effect, effect_id: Option<i64>) {
        if effect.is_external() && self.inner.stopping.load(Ordering::SeqCst) {
            // Committed in the outbox: the next start performs it.
            return;
        }
        let performer = match effect {
            Effect::StartChild { .. }
            | Effect::ReportToParent { .. }
            | Effect::CancelChild { .. } => {
                // Not tracked with the run's calls: a cancel's `AbandonInFlight` must not stop
                // the cancel of its child.
                let exec = self.clone();
                let key = effect_id.map(|id| (run.id.clone(), id));
                if let Some(k) = &key {
                    locked(&self.inner.performing).insert(k.clone());
                }
                tokio::spawn(async move {
                    exec.perform_call(run, effect, effect_id).await;
                    if let Some(k) = key {
                        locked(&exec.inner.performing).remove(&k);
                    }
                });
                return;
            }
            Effect::CallHttp { .. } => self.inner.performers.http.clone(),
            Effect::SendEmail { .. } => self.inner.performers.email.clone(),
            Effect::RequestApproval { .. } => self.inner.performers.approval.clone(),
            Effect::AbandonInFlight => {
                let handles = locked(&self.inner.inflight)
                    .remove(&run.id)
                    .unwrap_or_default();
                // A branch's failure abandons its siblings from the task that recorded it:
                // that task finishes on its own.
                let me = tokio::task::try_id();
                for h in handles {
                    if Some(h.id()) != me {
                        h.abort();
                    }
                }
                return;
            }
            Effect::Finished { status } => {
                self.run_finished(&run, status);
                return;
            }
            Effect::SaveItems { step, items } => {
                // Stored in the change's transaction; kept here for the items' attempts.
                locked(&self.inner.items).insert((run.id.clone(), step), Arc::new(items));
                return;
            }
            // The store carried these out inside the change's transaction.
            Effect::ItemDone { .. }
            | Effect::CollectItems { .. }
            | Effect::AwaitEvent { .. }
            | Effect::EndAwait { .. } => return,
        };
        let exec = self.clone();
        let run_id = run.id.clone();
        if let Some(id) = effect_id {
            locked(&self.inner.performing).insert((run_id.clone(), id));
        }
        let task = tokio::spawn(async move {
            let key = effect_id.map(|id| (run.id.clone(), id));
            exec.perform_external(performer, run, effect, effect_id)
                .await;
            if let Some(key) = key {
                locked(&exec.inner.performing).remove(&key);
            }
        });
        self.track(&run_id, task.abort_handle());
    }

    /// An item of a `foreach` step this process started, from memory.
    fn known_item(
        &self,
        run_id: &str,
        step: &str,
        index: u32,
    ) -> Option<crate::engine::request::ItemInput> {
        let items = locked(&self.inner.items)
            .get(&(run_id.to_string(), step.to_string()))
            .cloned()?;
        let it = items.get(index as usize).filter(|it| it.index == index)?;
        Some(crate::engine::request::ItemInput {
            index,
            key: it.key.clone(),
            value: it.value.clone(),
        })
    }

    fn run_finished(&self, run: &Run, status: RunStatus) {
        self.inner
            .metrics
            .run_finished(&run.workflow, status.as_str());
        info!(run_id = %run.id, workflow = %run.workflow, status = status.as_str(), "run finished");
        locked(&self.inner.inflight).remove(&run.id);
        locked(&self.inner.items).retain(|(r, _), _| *r != run.id);
        let waiters = locked(&self.inner.waiters)
            .remove(&run.id)
            .unwrap_or_default();
        for w in waiters {
            let _ = w.send(status);
        }
        let _ = self.inner.finished.send(Finished {
            run_id: run.id.clone(),
            workflow: run.workflow.clone(),
            status,
            concurrency_key: run.concurrency_key.clone(),
        });
    }

    fn track(&self, run_id: &str, handle: tokio::task::AbortHandle) {
        let mut inflight = locked(&self.inner.inflight);
        let list = inflight.entry(run_id.to_string()).or_default();
        list.retain(|h| !h.is_finished());
        list.push(handle);
    }

    async fn perform_external(
        &self,
        performer: Arc<dyn Perform>,
        run: Arc<Run>,
        effect: Effect,
        effect_id: Option<i64>,
    ) {
        let workflow = match self.inner.store.workflow_for(&run).await {
            Ok(wf) => wf,
            Err(e) => {
                warn!(run_id = %run.id, effect = ?effect, error = %e, "cannot load the run's workflow version");
                return;
            }
        };
        let item = match &effect {
            Effect::CallHttp {
                step,
                item: Some(i),
                ..
            }
            | Effect::SendEmail {
                step,
                item: Some(i),
                ..
            } => match self.known_item(&run.id, step, *i) {
                Some(item) => Some(item),
                None => match self.inner.store.item(&run.id, step, *i).await {
                    Ok(Some((key, value))) => Some(crate::engine::request::ItemInput {
                        index: *i,
                        key,
                        value,
                    }),
                    Ok(None) => {
                        warn!(run_id = %run.id, step, item = i, "an item of a `foreach` step is not in the database");
                        return;
                    }
                    Err(e) => {
                        warn!(run_id = %run.id, step, item = i, error = %e, "cannot read an item of a `foreach` step");
                        return;
                    }
                },
            },
            _ => None,
        };
        debug!(run_id = %run.id, workflow = %run.workflow, effect = ?effect, "performing");
        // While the call is out, other changes are left to the writer thread to batch with its
        // outcome (see `Store::outcome_pending`).
        let pending = self.inner.store.outcome_pending();
        let performed = performer
            .perform(Job {
                run: run.clone(),
                workflow,
                effect,
                item,
                effect_id,
            })
            .await;
        drop(pending);
        match performed {
            Performed::Done => {
                if let Some(id) = effect_id
                    && let Err(e) = self.inner.store.mark_done(&run.id, id).await
                {
                    warn!(run_id = %run.id, error = %e, "cannot close a performed effect");
                }
            }
            Performed::Outcome { event, record } => {
                self.observe(&run, &event, record.as_deref());
                if let Err(e) = self
                    .record_durably(&run.id, event, record.map(|r| *r), effect_id)
                    .await
                {
                    warn!(run_id = %run.id, error = %e, "could not store the outcome of an effect");
                }
                if let Some(id) = effect_id {
                    performer.settled(&run.id, id);
                }
            }
        }
    }

    /// Metrics and a log line for an attempt's outcome.
    fn observe(&self, run: &Run, event: &Event, record: Option<&AttemptRecord>) {
        if let Some((Some(a), Some(b))) = record.map(|r| (r.started_at, r.finished_at)) {
            self.inner.metrics.attempt_took(
                &run.workflow,
                record.map_or("", |r| r.step.as_str()),
                (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6,
            );
        }
        match event {
            Event::AttemptFailed {
                step,
                attempt,
                error,
                outcome,
                ..
            } => {
                // Scheduled again: the record says so (a retryable failure of the last attempt
                // the retry limit allows is a failure, not a retry).
                let retried = match record {
                    Some(r) => r.outcome == AttemptResult::Retry,
                    None => matches!(outcome, Outcome::Retryable { .. }),
                };
                if retried {
                    self.inner.metrics.retry(&run.workflow, step);
                }
                warn!(run_id = %run.id, workflow = %run.workflow, step, attempt, error = %error, outcome = ?outcome, "attempt failed");
            }
            Event::AttemptSucceeded { step, attempt, .. } => {
                debug!(run_id = %run.id, step, attempt, "attempt succeeded");
            }
            _ => {}
        }
    }
}
