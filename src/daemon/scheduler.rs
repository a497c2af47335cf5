//! The cron scheduler: YAML schedules of active workflows and programmatic schedules from the
//! database, fired on time, each slot at most once (a unique key in the database, claimed in the
//! same transaction that creates the run), with catch-up and overlap as the workflow says.

use crate::cron::{CronSchedule, Slot};
use crate::engine::Event;
use crate::metrics::Metrics;
use crate::ops::schedules::Change;
use crate::registry::Registry;
use crate::runtime::Executor;
use crate::runtime::executor::Finished;
use crate::schedule::policy::{self as trigger, OverlapAction};
use crate::store::{ApiSchedule, SlotClaim, Store, StoreError};
use crate::workflow::Overlap;
use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

struct Entry {
    workflow: String,
    cron: Arc<CronSchedule>,
    input: serde_json::Value,
    paused: bool,
    /// The next slot and when to fire it (slot time plus jitter).
    next: Option<(DateTime<Utc>, Slot)>,
    /// For YAML entries: the source text of the schedule, to tell an unchanged one on reload.
    signature: String,
}

pub struct Scheduler {
    engine: Executor,
    registry: Arc<RwLock<Registry>>,
    metrics: Arc<Metrics>,
    entries: HashMap<String, Entry>,
    queue: BTreeSet<(DateTime<Utc>, String)>,
    crons: HashMap<(String, Option<String>), Arc<CronSchedule>>,
    marks: HashMap<String, DateTime<Utc>>,
    /// Fires of one schedule are decided one at a time (overlap counts must not race).
    locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Runs that finished, to start what was queued behind them. Subscribed when the scheduler is
    /// made, so that none finishing between `start` and `run` is missed.
    finished: tokio::sync::broadcast::Receiver<Finished>,
}

fn yaml_id(workflow: &str, index: usize) -> String {
    crate::schedule::id::file_key(workflow, index)
}

pub fn api_id(id: &str) -> String {
    crate::schedule::id::api_key(id)
}

/// The first slot after `last` in (instant, wall-clock) order, so two slots of the DST gap that
/// fire at the same instant are both found.
fn slot_after(cron: &CronSchedule, last: &Slot) -> Option<Slot> {
    let from = last.at - chrono::Duration::milliseconds(1);
    cron.slots_after(from).find(|s| s > last)
}

impl Scheduler {
    pub fn new(
        engine: Executor,
        registry: Arc<RwLock<Registry>>,
        metrics: Arc<Metrics>,
    ) -> Scheduler {
        Scheduler {
            finished: engine.finished(),
            engine,
            registry,
            metrics,
            entries: HashMap::new(),
            queue: BTreeSet::new(),
            crons: HashMap::new(),
            marks: HashMap::new(),
            locks: HashMap::new(),
        }
    }

    fn store(&self) -> &Store {
        self.engine.store()
    }

    fn intern(
        &mut self,
        cron: &str,
        tz: Option<&str>,
    ) -> Result<Arc<CronSchedule>, crate::cron::CronError> {
        let key = (cron.to_string(), tz.map(str::to_string));
        if let Some(c) = self.crons.get(&key) {
            return Ok(c.clone());
        }
        let c = Arc::new(CronSchedule::parse(cron, tz)?);
        self.crons.insert(key, c.clone());
        Ok(c)
    }

    /// Loads programmatic schedules and YAML schedules, fires what is due (catch-up), and
    /// starts queued runs whose turn it is.
    pub async fn start(&mut self, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.marks = self.store().schedule_marks().await?;
        let api = self.store().api_schedules().await?;
        // Remember new schedules as first seen now in one transaction, before installing them:
        // `install` would otherwise commit one mark per schedule (100k fsyncs on a first start).
        let unseen: Vec<String> = api
            .iter()
            .map(|s| api_id(&s.id))
            .filter(|id| !self.marks.contains_key(id))
            .collect();
        if !unseen.is_empty() {
            self.store()
                .mark_schedules_seen(unseen.clone(), now)
                .await?;
            for id in unseen {
                self.marks.insert(id, now);
            }
        }
        for s in api {
            self.put_api(s, now, false).await;
        }
        self.sync_yaml(now).await;
        for schedule in self.store().schedules_with_queued_runs().await? {
            dequeue(&self.engine, &schedule).await;
        }
        Ok(())
    }

    /// The scheduler's loop: fires due slots, applies messages, starts queued runs.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Change>) {
        loop {
            let next_due = self.queue.first().map(|(t, _)| *t);
            let sleep = match next_due {
                Some(t) => (t - Utc::now()).to_std().unwrap_or_default(),
                None => std::time::Duration::from_secs(3600),
            };
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Change::Reload) => self.sync_yaml(Utc::now()).await,
                    Some(Change::Upsert(s)) => self.put_api(s, Utc::now(), true).await,
                    Some(Change::Delete(id)) => self.remove(&api_id(&id)),
                    Some(Change::ReloadSchedules) => {
                        self.reload_api(Utc::now()).await;
                        self.sync_yaml(Utc::now()).await;
                    }
                    None => return,
                },
                _ = tokio::time::sleep(sleep) => self.fire_due(Utc::now()).await,
                done = self.finished.recv() => {
                    let schedules = match done {
                        Ok(f) => self.store().schedule_of(&f.run_id).await.ok().flatten().into_iter().collect(),
                        // Missed some: look at every schedule with queued runs instead, or a
                        // queued run whose predecessor's end was missed would wait forever.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            warn!(missed = n, "the scheduler fell behind finished runs; checking every queue");
                            self.store().schedules_with_queued_runs().await.unwrap_or_default()
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    };
                    for schedule in schedules {
                        let engine = self.engine.clone();
                        let lock = self.lock(&schedule);
                        tokio::spawn(async move {
                            let _guard = lock.lock().await;
                            dequeue(&engine, &schedule).await;
                        });
                    }
                }
            }
        }
    }

    /// Fires of one schedule are decided one at a time (its overlap counts must not race).
    fn lock(&mut self, schedule: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.entry(schedule.to_string()).or_default().clone()
    }

    fn remove(&mut self, id: &str) {
        if let Some(e) = self.entries.remove(id)
            && let Some((at, _)) = e.next
        {
            self.queue.remove(&(at, id.to_string()));
        }
    }

    fn arm(&mut self, id: &str, next: Option<Slot>) {
        let jitter = self.jitter_of(id);
        let Some(entry) = self.entries.get_mut(id) else {
            return;
        };
        if let Some((at, _)) = entry.next.take() {
            self.queue.remove(&(at, id.to_string()));
        }
        if let Some(slot) = next {
            let fire_at = trigger::fire_time(&slot, jitter, rand::random::<f64>());
            entry.next = Some((fire_at, slot));
            if !entry.paused {
                self.queue.insert((fire_at, id.to_string()));
            }
        }
    }

    fn jitter_of(&self, id: &str) -> Option<std::time::Duration> {
        let wf = &self.entries.get(id)?.workflow;
        let reg = self.registry.read().expect("registry lock");
        reg.get(wf).and_then(|v| v.workflow.concurrency.jitter)
    }

    fn catchup_of(&self, workflow: &str) -> Option<std::time::Duration> {
        let reg = self.registry.read().expect("registry lock");
        reg.get(workflow)
            .and_then(|v| v.workflow.concurrency.catchup_window)
    }

    fn overlap_of(&self, workflow: &str) -> Overlap {
        let reg = self.registry.read().expect("registry lock");
        reg.get(workflow)
            .map_or(Overlap::Skip, |v| v.workflow.concurrency.overlap)
    }

    /// Records missed slots that a newer one supersedes (`trigger::catch_up`) as skipped, so
    /// they are not fired after a restart either.
    fn supersede(&mut self, id: &str, workflow: &str, slots: Vec<Slot>) {
        info!(
            schedule = %id,
            workflow,
            missed = slots.len(),
            "catching up: missed slots are skipped, the on-time (or else the newest missed) slot fires: the overlap policy keeps one run going"
        );
        let store = self.store().clone();
        let metrics = self.metrics.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            for slot in slots {
                metrics.skipped();
                let claim = SlotClaim {
                    schedule: id.clone(),
                    slot: slot.key(),
                    at: slot.at,
                };
                if let Err(e) = store.skip_slot(claim, "skipped_superseded").await {
                    warn!(schedule = %id, error = %e, "cannot record a superseded slot");
                }
            }
        });
    }

    /// Adds or replaces an entry: fires missed slots it is owed, then arms the next one.
    async fn install(&mut self, id: String, entry: Entry, now: DateTime<Utc>) {
        self.remove(&id);
        let since = match self.marks.get(&id) {
            Some(t) => *t,
            None => {
                if let Err(e) = self
                    .store()
                    .mark_schedules_seen(vec![id.clone()], now)
                    .await
                {
                    warn!(schedule = %id, error = %e, "cannot remember a new schedule");
                }
                self.marks.insert(id.clone(), now);
                now
            }
        };
        let cron = entry.cron.clone();
        let paused = entry.paused;
        let workflow = entry.workflow.clone();
        self.entries.insert(id.clone(), entry);
        let mut last: Option<Slot> = None;
        if !paused {
            let catchup = self.catchup_of(&workflow);
            // `since` itself may be a slot that was claimed just before a crash: the unique key
            // makes firing it again harmless, so look from just before it.
            let due = trigger::due_slots(
                &cron,
                since - chrono::Duration::milliseconds(1),
                now,
                catchup,
            );
            last = due.last().copied();
            let (fire, superseded) = trigger::catch_up(self.overlap_of(&workflow), due, now);
            if !superseded.is_empty() {
                self.supersede(&id, &workflow, superseded);
            }
            for slot in fire {
                self.fire(&id, slot, slot.at, now).await;
            }
        }
        let next = match last {
            Some(l) => slot_after(&cron, &l),
            None => cron.next_after(now),
        };
        self.arm(&id, next);
    }

    async fn sync_yaml(&mut self, now: DateTime<Utc>) {
        let paused = match self.store().paused_yaml().await {
            Ok(p) => p,
            Err(e) => {
                // Firing a schedule that was paused is worse than missing a reload: the next
                // change or restart reads them again.
                warn!(error = %e, "cannot read which schedules are paused; the YAML schedules stay as they were");
                return;
            }
        };
        let wanted: Vec<(String, String, Arc<CronSchedule>, serde_json::Value, String)> = {
            let reg = self.registry.read().expect("registry lock");
            reg.active()
                .into_iter()
                .flat_map(|v| {
                    v.workflow.schedules.iter().enumerate().map(move |(i, s)| {
                        (
                            yaml_id(&v.workflow.name, i),
                            v.workflow.name.clone(),
                            Arc::new(s.cron.clone()),
                            s.input.clone(),
                            s.signature(),
                        )
                    })
                })
                .collect()
        };
        let wanted_ids: std::collections::HashSet<&String> = wanted.iter().map(|w| &w.0).collect();
        let stale: Vec<String> = self
            .entries
            .keys()
            .filter(|k| k.starts_with("yaml:") && !wanted_ids.contains(k))
            .cloned()
            .collect();
        for id in stale {
            info!(schedule = %id, "schedule removed");
            self.remove(&id);
        }
        for (id, workflow, cron, input, what) in wanted {
            let paused = paused.contains(&(workflow.clone(), what.clone()));
            let signature = format!("{what}|{paused}");
            if self
                .entries
                .get(&id)
                .is_some_and(|e| e.signature == signature)
            {
                continue;
            }
            if paused {
                info!(schedule = %id, "schedule paused");
            } else if self.entries.get(&id).is_some_and(|e| e.paused) {
                // Resumed: due from now on (the store moved its mark too, for a scheduler that
                // starts later).
                info!(schedule = %id, "schedule resumed");
                self.marks.remove(&id);
            }
            let entry = Entry {
                workflow,
                cron,
                input,
                paused,
                next: None,
                signature,
            };
            self.install(id, entry, now).await;
        }
    }

    /// Reads every programmatic schedule again: installs the changed and new ones, removes the
    /// deleted ones.
    async fn reload_api(&mut self, now: DateTime<Utc>) {
        let all = match self.store().api_schedules().await {
            Ok(all) => all,
            Err(e) => {
                warn!(error = %e, "cannot read the programmatic schedules");
                return;
            }
        };
        let ids: std::collections::HashSet<String> = all.iter().map(|s| api_id(&s.id)).collect();
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|k| k.starts_with("api:") && !ids.contains(*k))
            .cloned()
            .collect();
        for id in gone {
            self.remove(&id);
        }
        for s in all {
            self.put_api(s, now, false).await;
        }
    }

    async fn put_api(&mut self, s: ApiSchedule, now: DateTime<Utc>, log: bool) {
        let cron = match self.intern(&s.cron, s.timezone.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                warn!(schedule = %s.id, error = %e, "stored schedule has an invalid cron; ignored");
                return;
            }
        };
        if log {
            info!(schedule = %s.id, workflow = %s.workflow, cron = %s.cron, paused = s.paused, "schedule saved");
        }
        let entry = Entry {
            workflow: s.workflow,
            cron,
            input: s.input,
            paused: s.paused,
            next: None,
            signature: String::new(),
        };
        self.install(api_id(&s.id), entry, now).await;
    }

    async fn fire_due(&mut self, now: DateTime<Utc>) {
        let mut due = Vec::new();
        while let Some((at, id)) = self.queue.first().cloned() {
            if at > now {
                break;
            }
            self.queue.remove(&(at, id.clone()));
            due.push((at, id));
        }
        for (fire_at, id) in due {
            let Some(slot) = self.entries.get(&id).and_then(|e| e.next.map(|(_, s)| s)) else {
                continue;
            };
            self.fire(&id, slot, fire_at, Utc::now()).await;
            let next = self
                .entries
                .get(&id)
                .and_then(|e| slot_after(&e.cron, &slot));
            self.arm(&id, next);
        }
    }

    /// Fires one slot in a task of its own (fires of one workflow are decided one at a time).
    async fn fire(&mut self, id: &str, slot: Slot, fire_at: DateTime<Utc>, now: DateTime<Utc>) {
        let Some(entry) = self.entries.get(id) else {
            return;
        };
        let workflow = entry.workflow.clone();
        let input = entry.input.clone();
        let version = self
            .registry
            .read()
            .expect("registry lock")
            .get(&workflow)
            .cloned();
        let lock = self.lock(id);
        let engine = self.engine.clone();
        let metrics = self.metrics.clone();
        let claim = SlotClaim {
            schedule: id.to_string(),
            slot: slot.key(),
            at: slot.at,
        };
        self.marks.insert(id.to_string(), slot.at);
        debug!(schedule = %id, slot = %claim.slot, fire_at = %fire_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "firing a slot");
        let id = id.to_string();
        tokio::spawn(async move {
            // `allow_all` starts every fire without counting runs, so its fires need not wait
            // for each other: a burst of them (many schedules of one workflow on the same
            // minute) then shares the writer's group commits instead of one commit each.
            let counted = version
                .as_ref()
                .is_none_or(|v| v.workflow.concurrency.overlap != Overlap::AllowAll);
            let _guard = if counted {
                Some(lock.lock().await)
            } else {
                None
            };
            let Some(version) = version else {
                warn!(schedule = %id, workflow, "the schedule's workflow is not active; slot skipped");
                metrics.skipped();
                let _ = engine.store().skip_slot(claim, "workflow_missing").await;
                return;
            };
            let policy = version.workflow.concurrency.overlap;
            let action = if counted {
                let (active, queued) = match engine.store().run_counts(&id).await {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(schedule = %id, error = %e, "cannot count runs; slot skipped");
                        return;
                    }
                };
                trigger::overlap(policy, active, queued)
            } else {
                OverlapAction::Start
            };
            let result = match action {
                OverlapAction::Skip => {
                    info!(schedule = %id, workflow, slot = %claim.slot, "slot skipped: a run is still going (overlap: skip)");
                    metrics.skipped();
                    engine
                        .store()
                        .skip_slot(claim, "skipped_overlap")
                        .await
                        .map(|_| None)
                        .map_err(|e| e.to_string())
                }
                OverlapAction::CancelOthersAndStart => {
                    for other in engine.store().active_runs(&id).await.unwrap_or_default() {
                        let _ = crate::ops::cancel::cancel(
                            &engine,
                            &other,
                            "cancelled by a newer scheduled run (overlap: cancel_other)",
                        )
                        .await;
                    }
                    crate::ops::start::fire(&engine, version, input, claim, true)
                        .await
                        .map_err(|e| e.to_string())
                }
                OverlapAction::Start => {
                    crate::ops::start::fire(&engine, version, input, claim, true)
                        .await
                        .map_err(|e| e.to_string())
                }
                OverlapAction::Queue => {
                    crate::ops::start::fire(&engine, version, input, claim, false)
                        .await
                        .map_err(|e| e.to_string())
                }
            };
            match result {
                Ok(Some(_)) => {
                    let lateness =
                        (Utc::now() - fire_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
                    metrics.fired(lateness.max(0.0));
                }
                Ok(None) => {}
                Err(e) => warn!(schedule = %id, workflow, error = %e, "a schedule could not fire"),
            }
            let _ = now;
        });
    }
}

/// Starts the oldest queued run of a schedule when nothing of it is running.
pub async fn dequeue(engine: &Executor, schedule: &str) {
    // Look for a queued run first (the index of unfinished runs answers that at once).
    let Ok(Some(id)) = engine.store().oldest_queued(schedule).await else {
        return;
    };
    let Ok((active, _)) = engine.store().run_counts(schedule).await else {
        return;
    };
    if active == 0 {
        info!(run_id = %id, schedule, "starting a queued run");
        if let Err(e) = engine.apply(&id, Event::Started).await {
            warn!(run_id = %id, error = %e, "cannot start a queued run");
        }
    }
}
