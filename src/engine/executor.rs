//! The executor: applies events through the store and performs the effects after commit.
//!
//! I/O shell. It owns the HTTP client, the in-memory timer queue (rebuilt from the database on
//! start), the tasks in flight, and whoever waits for a run to finish.

use super::machine::{Effect, Event, NewRun, Run, RunStatus, StepStatus};
use crate::dispatch::http::{self, Keys};
use crate::store::{Applied, AttemptRecord, Store, StoreError, Version};
use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{Notify, oneshot};
use tracing::{debug, info, warn};

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    client: reqwest::Client,
    keys: RwLock<Keys>,
    /// (due, run, step) — stale entries are harmless: the machine absorbs early or late timers.
    timers: Mutex<BTreeSet<(DateTime<Utc>, String, String)>>,
    timer_changed: Notify,
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<RunStatus>>>>,
    inflight: Mutex<HashMap<String, Vec<tokio::task::AbortHandle>>>,
    handlers: RwLock<Handlers>,
    /// Set on SIGTERM: new external effects stay in the outbox for the next start.
    stopping: std::sync::atomic::AtomicBool,
    metrics: Arc<crate::metrics::Metrics>,
    finished: tokio::sync::broadcast::Sender<(String, String, RunStatus)>,
}

/// Performers for effects that later parts of runner provide (mail, approvals).
#[derive(Clone, Default)]
pub struct Handlers {
    pub email: Option<Arc<dyn EffectHandler>>,
    pub approval: Option<Arc<dyn EffectHandler>>,
}

/// Performs one external effect and reports the event it produced (if any).
pub trait EffectHandler: Send + Sync {
    fn perform(
        &self,
        engine: Engine,
        run: Arc<Run>,
        effect: Effect,
        effect_id: Option<i64>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the input does not match the workflow's `inputs`: {}", .0.join("; "))]
    Input(Vec<String>),
}

impl Engine {
    pub fn new(store: Store, keys: Keys) -> Engine {
        Engine {
            inner: Arc::new(Inner {
                store,
                client: http::client(),
                keys: RwLock::new(keys),
                timers: Mutex::new(BTreeSet::new()),
                timer_changed: Notify::new(),
                waiters: Mutex::new(HashMap::new()),
                inflight: Mutex::new(HashMap::new()),
                handlers: RwLock::new(Handlers::default()),
                stopping: std::sync::atomic::AtomicBool::new(false),
                metrics: Arc::new(crate::metrics::Metrics::default()),
                finished: tokio::sync::broadcast::channel(1024).0,
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.inner.metrics.clone()
    }

    pub fn set_handlers(&self, handlers: Handlers) {
        *self.inner.handlers.write().expect("handlers lock") = handlers;
    }

    pub fn keys(&self) -> Keys {
        self.inner.keys.read().expect("keys lock").clone()
    }

    pub fn set_keys(&self, keys: Keys) {
        *self.inner.keys.write().expect("keys lock") = keys;
    }

    /// Checks the input, creates the run and starts it. Returns the run and whether it is new
    /// (false when an idempotency key matched an earlier run).
    pub async fn start_run(
        &self,
        version: Version,
        input: serde_json::Value,
        trigger: &str,
        scheduled_for: Option<DateTime<Utc>>,
        idempotency_key: Option<String>,
    ) -> Result<(Arc<Run>, bool), EngineError> {
        let input = crate::workflow::resolve_input(&version.workflow, &input)
            .map_err(EngineError::Input)?;
        let new = NewRun {
            id: new_run_id(),
            version: version.hash.clone(),
            trigger: trigger.to_string(),
            input,
            scheduled_for,
        };
        let applied = self
            .inner
            .store
            .start_run(version, new, idempotency_key, None, true, Utc::now())
            .await?;
        let created = applied.created;
        let run = applied.run.clone();
        if created {
            self.inner.metrics.run_started();
            info!(run_id = %run.id, workflow = %run.workflow, trigger, "run started");
        }
        self.after_commit(applied);
        Ok((run, created))
    }

    /// Fires a schedule slot: claims it and creates the run (started, or queued when `start` is
    /// false) in one transaction. Returns None when the slot had already been handled.
    pub async fn fire(
        &self,
        version: Version,
        input: serde_json::Value,
        slot: crate::store::SlotClaim,
        start: bool,
    ) -> Result<Option<Arc<Run>>, EngineError> {
        let input = crate::workflow::resolve_input(&version.workflow, &input)
            .map_err(EngineError::Input)?;
        let new = NewRun {
            id: new_run_id(),
            version: version.hash.clone(),
            trigger: "schedule".to_string(),
            input,
            scheduled_for: Some(slot.at),
        };
        let applied = self
            .inner
            .store
            .start_run(version, new, None, Some(slot), start, Utc::now())
            .await?;
        if applied.slot_taken {
            return Ok(None);
        }
        let run = applied.run.clone();
        self.inner.metrics.run_started();
        info!(run_id = %run.id, workflow = %run.workflow, queued = !start, "scheduled run created");
        self.after_commit(applied);
        Ok(Some(run))
    }

    /// Subscribes to runs reaching a terminal status: (run id, workflow, status).
    pub fn finished(&self) -> tokio::sync::broadcast::Receiver<(String, String, RunStatus)> {
        self.inner.finished.subscribe()
    }

    /// Applies an event and performs its effects.
    pub async fn apply(
        &self,
        run_id: &str,
        event: Event,
        attempt: Option<AttemptRecord>,
        done_effect: Option<i64>,
    ) -> Result<Arc<Run>, StoreError> {
        let applied = self
            .inner
            .store
            .apply(run_id, event, Utc::now(), attempt, done_effect)
            .await?;
        let run = applied.run.clone();
        self.after_commit(applied);
        Ok(run)
    }

    /// Waits until the run is terminal and returns its status.
    pub async fn wait(&self, run_id: &str) -> Result<RunStatus, StoreError> {
        let rx = {
            let mut waiters = self.inner.waiters.lock().expect("waiters lock");
            // Check under the lock so a Finished between the check and the registration is not lost.
            match self.inner.store.run_status(run_id)? {
                Some(status) if status.is_terminal() => return Ok(status),
                Some(_) => {}
                None => return Err(StoreError::NoSuchRun(run_id.to_string())),
            }
            let (tx, rx) = oneshot::channel();
            waiters.entry(run_id.to_string()).or_default().push(tx);
            rx
        };
        match rx.await {
            Ok(status) => Ok(status),
            Err(_) => Ok(self
                .inner
                .store
                .run_status(run_id)?
                .unwrap_or(RunStatus::Failed)),
        }
    }

    /// After a restart: performs effects that were committed but not done, and re-arms timers.
    /// With `start_queued`, runs that were queued behind others are started too (the daemon
    /// instead starts them one by one as the runs ahead finish).
    pub async fn recover(&self, start_queued: bool) -> Result<usize, StoreError> {
        self.recover_runs(start_queued, None).await
    }

    /// Like [`Engine::recover`], limited to one run when `only` is given (`runner resume RUN_ID`
    /// must not send other runs' attempts and then exit while they are in flight).
    pub async fn recover_runs(
        &self,
        start_queued: bool,
        only: Option<&str>,
    ) -> Result<usize, StoreError> {
        let mine = |id: &str| only.is_none_or(|o| o == id);
        // Read the outbox before anything below can commit new effects (a due timer, a queued
        // run started): those are performed after their own commit, and must not be performed
        // a second time as "pending".
        let pending: Vec<_> = self
            .inner
            .store
            .pending_effects()?
            .into_iter()
            .filter(|p| mine(&p.run_id))
            .collect();
        let unfinished: Vec<String> = self
            .inner
            .store
            .unfinished_runs()?
            .into_iter()
            .filter(|id| mine(id))
            .collect();
        for id in &unfinished {
            if let Some(run) = self.inner.store.get_run(id)? {
                self.arm_timers(&run);
                if run.status == RunStatus::Pending && start_queued {
                    let engine = self.clone();
                    let id = id.clone();
                    tokio::spawn(async move {
                        let _ = engine.apply(&id, Event::Started, None, None).await;
                    });
                }
            }
        }
        for p in pending {
            let Some(run) = self.inner.store.get_run(&p.run_id)? else {
                continue;
            };
            if run.status.is_terminal() {
                self.inner.store.mark_done(&p.run_id, p.id).await?;
                continue;
            }
            info!(run_id = %run.id, effect = ?p.effect, "performing an effect again after a restart");
            self.perform(Arc::new(run), p.effect, Some(p.id));
        }
        Ok(unfinished.len())
    }

    /// Fires due timers until the process ends. Spawn it once.
    pub async fn timer_loop(self) {
        loop {
            let next = self
                .inner
                .timers
                .lock()
                .expect("timers lock")
                .first()
                .cloned();
            match next {
                None => self.inner.timer_changed.notified().await,
                Some((due, run_id, step)) => {
                    let now = Utc::now();
                    if due <= now {
                        self.inner.timers.lock().expect("timers lock").remove(&(
                            due,
                            run_id.clone(),
                            step.clone(),
                        ));
                        let engine = self.clone();
                        tokio::spawn(async move {
                            if let Err(e) = engine
                                .apply(
                                    &run_id,
                                    Event::TimerFired { step: step.clone() },
                                    None,
                                    None,
                                )
                                .await
                            {
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

    fn arm_timers(&self, run: &Run) {
        let mut added = false;
        {
            let mut timers = self.inner.timers.lock().expect("timers lock");
            for s in run.steps.iter().chain(run.hooks.iter()) {
                if matches!(
                    s.status,
                    StepStatus::Retrying | StepStatus::Sleeping | StepStatus::WaitingApproval
                ) && let Some(at) = s.wake_at
                {
                    added |= timers.insert((at, run.id.clone(), s.id.clone()));
                }
            }
        }
        if added {
            self.inner.timer_changed.notify_one();
        }
    }

    fn after_commit(&self, applied: Applied) {
        let Applied { run, effects, .. } = applied;
        self.arm_timers(&run);
        for (id, effect) in effects {
            self.perform(run.clone(), effect, id);
        }
    }

    /// Stops starting new calls and e-mails (they stay in the outbox) and waits up to `grace`
    /// for those in flight to finish and be recorded. Returns how many were still in flight.
    pub async fn drain(&self, grace: std::time::Duration) -> usize {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let busy = self
                .inner
                .inflight
                .lock()
                .expect("inflight lock")
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
        if effect.is_external()
            && self
                .inner
                .stopping
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            // Committed in the outbox: the next start performs it.
            return;
        }
        match effect {
            Effect::CallHttp { step, attempt } => {
                let engine = self.clone();
                let run_id = run.id.clone();
                let task = tokio::spawn(async move {
                    engine.call_http(run, step, attempt, effect_id).await;
                });
                self.track(&run_id, task.abort_handle());
            }
            Effect::SendEmail { .. } | Effect::RequestApproval { .. } => {
                let handlers = self.inner.handlers.read().expect("handlers lock").clone();
                let handler = if matches!(effect, Effect::SendEmail { .. }) {
                    handlers.email
                } else {
                    handlers.approval
                };
                match handler {
                    Some(h) => {
                        let run_id = run.id.clone();
                        let task = tokio::spawn(h.perform(self.clone(), run, effect, effect_id));
                        self.track(&run_id, task.abort_handle());
                    }
                    None => {
                        if let Effect::SendEmail { step, attempt } = effect {
                            let engine = self.clone();
                            tokio::spawn(async move {
                                let ev = Event::AttemptFailed {
                                    step,
                                    attempt,
                                    error: "e-mail is not configured in this process".into(),
                                    status: None,
                                    body: None,
                                    outcome: super::machine::Outcome::Permanent,
                                };
                                let _ = engine.apply(&run.id, ev, None, effect_id).await;
                            });
                        } else {
                            warn!(run_id = %run.id, "no approval handler: the approval waits for its deadline or an API decision");
                        }
                    }
                }
            }
            Effect::AbandonInFlight => {
                let handles = self
                    .inner
                    .inflight
                    .lock()
                    .expect("inflight lock")
                    .remove(&run.id)
                    .unwrap_or_default();
                for h in handles {
                    h.abort();
                }
            }
            Effect::Finished { status } => {
                self.inner.metrics.run_finished(status.as_str());
                info!(run_id = %run.id, workflow = %run.workflow, status = status.as_str(), "run finished");
                self.inner
                    .inflight
                    .lock()
                    .expect("inflight lock")
                    .remove(&run.id);
                let waiters = self
                    .inner
                    .waiters
                    .lock()
                    .expect("waiters lock")
                    .remove(&run.id)
                    .unwrap_or_default();
                for w in waiters {
                    let _ = w.send(status);
                }
                let _ = self
                    .inner
                    .finished
                    .send((run.id.clone(), run.workflow.clone(), status));
            }
        }
    }

    fn track(&self, run_id: &str, handle: tokio::task::AbortHandle) {
        let mut inflight = self.inner.inflight.lock().expect("inflight lock");
        let list = inflight.entry(run_id.to_string()).or_default();
        list.retain(|h| !h.is_finished());
        list.push(handle);
    }

    async fn call_http(&self, run: Arc<Run>, step: String, attempt: u32, effect_id: Option<i64>) {
        let wf = match self.inner.store.workflow_for(&run) {
            Ok(wf) => wf,
            Err(e) => {
                warn!(run_id = %run.id, step, error = %e, "cannot load the run's workflow version");
                return;
            }
        };
        let keys = self.keys();
        debug!(run_id = %run.id, workflow = %run.workflow, step, attempt, "calling");
        let pending = self.inner.store.outcome_pending();
        let (event, record) =
            http::attempt(&self.inner.client, &keys, &wf, &run, &step, attempt).await;
        drop(pending);
        if let (Some(a), Some(b)) = (record.started_at, record.finished_at) {
            self.inner
                .metrics
                .step_latency
                .observe((b - a).num_microseconds().unwrap_or(0) as f64 / 1e6);
        }
        if matches!(
            &event,
            Event::AttemptFailed {
                outcome: super::machine::Outcome::Retryable { .. },
                ..
            }
        ) {
            self.inner.metrics.retry();
        }
        match &event {
            Event::AttemptFailed { error, outcome, .. } => {
                warn!(run_id = %run.id, workflow = %run.workflow, step, attempt, error = %error, outcome = ?outcome, "attempt failed");
            }
            _ => debug!(run_id = %run.id, step, attempt, "attempt succeeded"),
        }
        if let Err(e) = self.apply(&run.id, event, Some(record), effect_id).await {
            warn!(run_id = %run.id, step, attempt, error = %e, "could not store the outcome of an attempt");
        }
    }
}

/// A new run id: UUID v7, so ids sort by creation time.
pub fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
