//! `runner serve`: the daemon. Watches the workflows directory, fires schedules, serves the API,
//! and resumes every unfinished run on start.
//!
//! I/O shell: this wires the store, the engine, the scheduler, the watcher and the HTTP server.

pub mod build;
pub mod leader;
pub mod scheduler;

use crate::ops::schedules::Change;
use crate::registry::{self, Loader, Registry};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// What `runner serve` needs; every field has an embedded default (see `cli.rs`).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub dir: PathBuf,
    /// A SQLite file, or a `postgres://…` connection string.
    pub db: String,
    pub listen: SocketAddr,
    pub public_url: Option<String>,
    pub api_token: Option<String>,
    /// `/metrics` without the token (`--metrics-public`).
    pub metrics_public: bool,
    /// The HTTP server's connection cap and header-read timeout.
    pub http: crate::web::Limits,
    /// `RUNNER_SMTP_URL`; None writes e-mails to `outbox`.
    pub smtp_url: Option<String>,
    pub mail_from: Option<String>,
    pub outbox: PathBuf,
    /// How long events sent to runner are kept (`RUNNER_EVENT_RETENTION`).
    pub event_retention: std::time::Duration,
    /// How long finished runs are kept (`RUNNER_RETENTION`); None keeps them.
    pub retention: Option<std::time::Duration>,
}

impl crate::runtime::calls::Versions for RwLock<Registry> {
    fn active(&self, name: &str) -> Option<crate::store::Version> {
        crate::ops::Workflows::active(self, name)
    }
}

impl crate::ops::Workflows for RwLock<Registry> {
    fn active(&self, name: &str) -> Option<crate::store::Version> {
        self.read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    fn on_event(&self, event: &str) -> Vec<crate::store::Version> {
        self.read()
            .unwrap_or_else(|e| e.into_inner())
            .active()
            .into_iter()
            .filter(|v| v.workflow.events.iter().any(|e| e == event))
            .cloned()
            .collect()
    }
}

/// Events sent to runner: deliveries a crash cut short are done again (every node may do it:
/// a delivery is idempotent), and events older than the retention are deleted; flow-control
/// keys idle for a day are forgotten; runs queued behind a `concurrency.key` whose holder
/// finished on a node that stopped before starting them are started.
async fn upkeep(
    exec: crate::runtime::Executor,
    registry: Arc<RwLock<Registry>>,
    retention: std::time::Duration,
    run_retention: Option<std::time::Duration>,
) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
    const PRUNE_EVERY: u32 = 60;
    // Runs one pass deletes per query at most (the rest wait for the next pass, 5 minutes on).
    const PRUNE_MAX: u64 = 100_000;
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for round in 0u32.. {
        tick.tick().await;
        match crate::ops::notify::redeliver(&exec, &*registry, EVERY).await {
            Ok(0) => {}
            Ok(n) => info!(
                events = n,
                "delivered events again whose delivery was cut short"
            ),
            Err(e) => warn!(error = %e, "delivering events again failed; will retry"),
        }
        leader::dequeue_keys(&exec).await;
        if round % PRUNE_EVERY == 0 {
            match crate::ops::notify::prune(&exec, retention).await {
                Ok(0) => {}
                Ok(n) => info!(events = n, "deleted events older than the retention"),
                Err(e) => warn!(error = %e, "deleting old events failed; will retry"),
            }
            let policy = crate::ops::prune::Policy {
                global: run_retention,
                workflows: registry
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .active()
                    .into_iter()
                    .filter(|v| v.workflow.retention != crate::workflow::Retention::default())
                    .map(|v| (v.workflow.name.clone(), v.workflow.retention))
                    .collect(),
            };
            match crate::ops::prune::by_policy(exec.store(), &policy, chrono::Utc::now(), PRUNE_MAX)
                .await
            {
                Ok(0) => {}
                Ok(n) => info!(runs = n, "deleted finished runs past their retention"),
                Err(e) => warn!(error = %e, "deleting old runs failed; will retry"),
            }
            // Keys named by one order or user come and go: one no call asked for in a day goes.
            let now = chrono::Utc::now();
            match exec
                .store()
                .prune_flow_keys(now - chrono::Duration::days(1), now)
                .await
            {
                Ok(0) => {}
                Ok(n) => info!(keys = n, "forgot flow-control keys idle for a day"),
                Err(e) => warn!(error = %e, "forgetting idle flow-control keys failed; will retry"),
            }
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    let token = crate::web::auth::check_token(cfg.listen, cfg.api_token.as_deref())
        .map_err(anyhow::Error::msg)?;
    if !cfg.dir.is_dir() {
        anyhow::bail!(
            "the workflows directory `{}` does not exist (use --dir, or create it)",
            cfg.dir.display()
        );
    }
    // On SQLite one process runs a database's runs (lock files); on PostgreSQL nodes share them.
    let shared = crate::store::is_postgres(&cfg.db);
    let mut owner = if shared {
        None
    } else {
        Some(crate::store::sqlite::owner::take_for_recovery(
            std::path::Path::new(&cfg.db),
            "runner serve",
        )?)
    };
    let parts = build::build(&build::PartsConfig {
        db: cfg.db.clone(),
        listen: cfg.listen,
        public_url: cfg.public_url.clone(),
        smtp_url: cfg.smtp_url.clone(),
        mail_from: cfg.mail_from.clone(),
        outbox: cfg.outbox.clone(),
    })
    .await?;
    let build::Parts {
        listener,
        local,
        public_url,
        store,
        keys,
        exec: engine,
        metrics,
    } = parts;
    // `runner keys rotate` (or another daemon) may rotate the keys in the database meanwhile.
    tokio::spawn(keys.refresh_every(store.clone(), crate::runtime::keys::REFRESH));
    let db_file = if shared {
        None
    } else {
        Some(
            crate::store::sqlite::file::DbFile::identify(std::path::Path::new(&cfg.db))
                .map_err(|e| anyhow::anyhow!("cannot read the database file `{}`: {e}", cfg.db))?,
        )
    };

    let registry = Arc::new(RwLock::new(Registry::new(&cfg.dir)));
    engine.set_workflows(registry.clone());
    // Only the reload path uses the loader (its cache of checked files); never the API.
    let loader = Arc::new(Mutex::new(Loader::new(&cfg.dir)));
    reload(&loader, &registry, &store).await;
    // A file refused now (it fails the checker or cannot be read) was good before the restart:
    // its last good version stays in force.
    let refused: Vec<String> = registry
        .read()
        .expect("registry lock")
        .files()
        .filter(|f| f.active.is_none() && !f.diagnostics.is_empty())
        .map(|f| f.path.clone())
        .collect();
    let mut last_good = std::collections::HashMap::new();
    for path in refused {
        if let Ok(Some(v)) = store.last_good_version(&path).await {
            last_good.insert(path, v);
        }
    }
    let restored = registry
        .write()
        .expect("registry lock")
        .restore_last_good(|path| last_good.get(path).cloned());
    for name in restored {
        warn!(workflow = %name, "the file is refused (see above); its last good version stays active");
    }

    let node = crate::runtime::node::NodeInfo {
        name: crate::runtime::node::default_name(),
        defs_hash: Arc::new(RwLock::new(defs_hash(&registry))),
    };
    let shared = crate::runtime::node::register(&engine, &node).await?;
    if shared {
        tokio::spawn(crate::runtime::node::run(engine.clone(), node.clone()));
    }
    tokio::spawn(leader::start_queued_on_finish(engine.clone(), shared));
    let resumed = engine.recover(false, None).await?;
    if let Some(owner) = owner.as_mut() {
        owner.recovered();
    }
    if resumed > 0 {
        info!(runs = resumed, "resuming unfinished runs");
    }
    tokio::spawn(engine.clone().timer_loop());
    let (lost_tx, lost) = tokio::sync::watch::channel(None);
    if let Some(db_file) = db_file {
        // SQLite: the file must stay the one opened, and `runner run`s that died leave runs.
        tokio::spawn(watch_db_file(db_file, engine.clone(), lost_tx));
        tokio::spawn(continue_abandoned(engine.clone(), PathBuf::from(&cfg.db)));
    }

    // The scheduler runs on the node that leads (on SQLite, this one); ready once the first
    // attempt to lead is over.
    let (sched_tx, sched_rx) = mpsc::channel(1024);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(leader::host(
        engine.clone(),
        registry.clone(),
        metrics.clone(),
        sched_rx,
        ready_tx,
    ));
    let _ = ready_rx.await;

    // One reload path: the watcher and SIGHUP both send here.
    let (reload_tx, mut reload_rx) = mpsc::channel::<&'static str>(16);
    let _watcher = watch(&cfg.dir, reload_tx.clone());
    spawn_sighup(reload_tx.clone());
    {
        let registry = registry.clone();
        let sched_tx = sched_tx.clone();
        let store = store.clone();
        tokio::spawn(async move {
            while let Some(why) = reload_rx.recv().await {
                // Coalesce a burst of events into one reload.
                while reload_rx.try_recv().is_ok() {}
                info!(reason = why, "reloading workflows");
                let changed = reload(&loader, &registry, &store).await;
                *node.defs_hash.write().unwrap_or_else(|e| e.into_inner()) = defs_hash(&registry);
                if changed {
                    let _ = sched_tx.send(Change::Reload).await;
                }
            }
        });
    }

    tokio::spawn(upkeep(
        engine.clone(),
        registry.clone(),
        cfg.event_retention,
        cfg.retention,
    ));

    let state = Arc::new(crate::web::AppState {
        exec: engine.clone(),
        daemon: Some(crate::web::DaemonParts {
            registry: registry.clone(),
            schedules: sched_tx,
        }),
        token,
        metrics_public: cfg.metrics_public,
        metrics,
        public_url: public_url.clone(),
    });
    let app = crate::web::router(state);
    info!(listen = %local, public_url = %public_url, dir = %cfg.dir.display(), "runner is serving");
    // A line for scripts and tests that start the daemon on port 0.
    println!("listening on http://{local}");
    let mut lost_rx = lost.clone();
    let stop = async move {
        tokio::select! {
            () = shutdown_signal() => {}
            _ = lost_rx.wait_for(Option::is_some) => {}
        }
    };
    crate::web::serve(listener, app, cfg.http, stop).await?;
    if let Some(why) = lost.borrow().clone() {
        anyhow::bail!(
            "{why}; stopped at once, without sending more calls or e-mails. Runs, schedules and \
             signing keys were in that file: put it back (from a backup) before starting again. \
             A new file starts with no runs and new signing keys, which every receiver refuses"
        );
    }
    info!("shutting down: finishing the calls in flight (up to 10 s)");
    let left = engine.drain(std::time::Duration::from_secs(10)).await;
    if left > 0 {
        warn!(
            in_flight = left,
            "stopped with calls in flight; they are sent again (same dedup id) on the next start"
        );
    }
    // What was not started is marked so (the next process, or on a shared database another
    // node within a second, performs it as it is); what was in flight counts as interrupted.
    match store.release_node(&engine.performing()).await {
        Ok(()) if shared => info!("gave this node's remaining work back to the other nodes"),
        Ok(()) => {}
        Err(e) => {
            warn!(error = %e, "cannot mark the work left for the next start; other nodes take it over when this node's lease lapses")
        }
    }
    info!("stopped; unfinished runs continue from the database on the next start");
    Ok(())
}

/// A hash of the workflow versions in force (nodes of one database should agree).
fn defs_hash(registry: &RwLock<Registry>) -> String {
    let reg = registry.read().unwrap_or_else(|e| e.into_inner());
    let mut names: Vec<String> = reg
        .active()
        .iter()
        .map(|v| format!("{}@{}", v.workflow.name, v.hash))
        .collect();
    names.sort();
    crate::store::version_hash(&names.join("\n"))
}

/// How often the daemon checks that its database file is still at its path, and looks for runs
/// of `runner run` processes that are gone.
const FILE_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Stops the daemon when its database file is deleted or replaced: what it committed from then
/// on would be lost at the next start. New effects stay unperformed at once (`drain`), then the
/// reason is sent to stop the server.
async fn watch_db_file(
    file: crate::store::sqlite::file::DbFile,
    exec: crate::runtime::Executor,
    lost: tokio::sync::watch::Sender<Option<String>>,
) {
    let mut tick = tokio::time::interval(FILE_CHECK);
    loop {
        tick.tick().await;
        let f = file.clone();
        let Ok(Err(why)) = tokio::task::spawn_blocking(move || f.check()).await else {
            continue;
        };
        error!(db = %file.path().display(), "{why}: stopping without performing more effects");
        exec.drain(std::time::Duration::ZERO).await;
        let _ = lost.send(Some(why));
        return;
    }
}

/// Continues the runs of `runner run` processes that ended before their runs did (killed, say):
/// nobody else would, while this daemon holds the database.
async fn continue_abandoned(exec: crate::runtime::Executor, db: PathBuf) {
    let mut tick = tokio::time::interval(FILE_CHECK);
    loop {
        tick.tick().await;
        let d = db.clone();
        let found = tokio::task::spawn_blocking(move || crate::store::sqlite::owner::abandoned(&d))
            .await
            .unwrap_or_default();
        for (owner, runs) in found {
            for id in runs {
                match exec.store().run_status(&id).await {
                    Ok(Some(status)) if !status.is_terminal() => {
                        info!(run_id = %id, owner = %owner, "continuing a run whose `runner run` process has ended");
                        if let Err(e) = exec.recover(false, Some(&id)).await {
                            warn!(run_id = %id, error = %e, "cannot continue the run");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!(run_id = %id, error = %e, "cannot read a run to continue"),
                }
            }
        }
    }
}

/// Re-reads and re-checks the directory (off the async threads), logs what changed, and
/// remembers each file's version in force. Returns whether the set of active versions changed.
async fn reload(
    loader: &Arc<Mutex<Loader>>,
    registry: &Arc<RwLock<Registry>>,
    store: &crate::store::Store,
) -> bool {
    let (loader, reg) = (loader.clone(), registry.clone());
    let Ok(changes) = tokio::task::spawn_blocking(move || log_reload(&loader, &reg)).await else {
        return false;
    };
    let changed =
        !(changes.added.is_empty() && changes.changed.is_empty() && changes.removed.is_empty());
    let mut remember: Vec<_> = (changes.activated.into_iter())
        .map(|(p, v)| (p, Some(v)))
        .collect();
    remember.extend(changes.removed_paths.into_iter().map(|path| (path, None)));
    if !remember.is_empty()
        && let Err(e) = store.remember_active(remember).await
    {
        warn!(error = %e, "cannot remember the active workflow versions");
    }
    changed
}

/// Re-reads and re-checks the directory and logs what changed.
fn log_reload(loader: &Mutex<Loader>, registry: &RwLock<Registry>) -> registry::Changes {
    let mut loader = loader.lock().expect("loader lock");
    let changes = registry::reload(&mut loader, registry);
    drop(loader);
    info!(
        files = changes.files,
        checked = changes.checked,
        scan_ms = changes.scan_time.as_millis() as u64,
        locked_us = changes.locked_time.as_micros() as u64,
        "workflows read and checked (unchanged files are not checked again)"
    );
    for dir in &changes.skipped_dirs {
        warn!(
            dir = %dir,
            "a subdirectory with workflow files is not read: runner reads only the files directly in the workflows directory"
        );
    }
    for name in &changes.added {
        info!(workflow = %name, "workflow loaded");
    }
    for name in &changes.changed {
        info!(workflow = %name, "workflow changed; new runs use the new version");
    }
    for name in &changes.removed {
        info!(workflow = %name, "workflow removed; its triggers stopped, runs in flight finish");
    }
    for (file, text) in &changes.refused {
        warn!(file = %file, "workflow file refused; the last good version (if any) stays active:\n{text}");
    }
    for e in &changes.errors {
        error!("{e}");
    }
    changes
}

fn watch(
    dir: &std::path::Path,
    tx: mpsc::Sender<&'static str>,
) -> Option<
    notify_debouncer_full::Debouncer<
        notify::RecommendedWatcher,
        notify_debouncer_full::RecommendedCache,
    >,
> {
    use notify::RecursiveMode;
    let mut debouncer = match notify_debouncer_full::new_debouncer(
        std::time::Duration::from_millis(200),
        None,
        move |result: notify_debouncer_full::DebounceEventResult| {
            // Reading the files for a reload opens them; only changes count, or reloads would loop.
            let changed = result.is_ok_and(|events| {
                events.iter().any(|e| {
                    !matches!(e.event.kind, notify::EventKind::Access(_))
                        && e.event.paths.iter().any(|p| {
                            matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml"))
                                || p.is_dir()
                        })
                })
            });
            if changed {
                let _ = tx.blocking_send("file change");
            }
        },
    ) {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "cannot watch the workflows directory; use SIGHUP to reload");
            return None;
        }
    };
    if let Err(e) = debouncer.watch(dir, RecursiveMode::NonRecursive) {
        warn!(error = %e, dir = %dir.display(), "cannot watch the workflows directory; use SIGHUP to reload");
        return None;
    }
    Some(debouncer)
}

#[cfg(unix)]
fn spawn_sighup(tx: mpsc::Sender<&'static str>) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    let _ = tx.send("SIGHUP").await;
                }
            });
        }
        Err(e) => warn!(error = %e, "cannot listen for SIGHUP"),
    }
}

#[cfg(not(unix))]
fn spawn_sighup(_tx: mpsc::Sender<&'static str>) {}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
