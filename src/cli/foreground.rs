//! `runner run` and `runner resume`: runs in this process, to the end, with the approval pages
//! they wait on.

use super::*;

/// The approval pages and API a foreground command serves while its runs wait, and its hold
/// on the database.
struct Pages {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    /// SQLite: the lock files (one process recovers a database); PostgreSQL: none.
    owner: Option<crate::store::sqlite::owner::Owner>,
    exec: crate::runtime::Executor,
}

impl Pages {
    /// Stops taking connections and lets the answers being sent finish (the page of the
    /// decision that ended the run, say), for 2 s at most. Its runs have ended: a daemon has
    /// nothing to continue; on a shared database the node gives back what it did not finish.
    async fn finish(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.task).await;
        if let Some(owner) = self.owner {
            owner.release();
        }
        if self.exec.store().is_shared() {
            let _ = self
                .exec
                .store()
                .release_node(&self.exec.performing())
                .await;
        }
    }
}

/// The running parts of a foreground command, and the page server its approval links land on
/// (it serves the approval pages and the read side of the API; starting runs and schedules are
/// the daemon's).
async fn open_engine(
    db: &str,
    fg: &ForegroundArgs,
    owner: Option<crate::store::sqlite::owner::Owner>,
) -> anyhow::Result<(crate::runtime::Executor, Pages)> {
    let token = std::env::var("RUNNER_API_TOKEN").ok();
    let token =
        crate::web::auth::check_token(fg.listen, token.as_deref()).map_err(anyhow::Error::msg)?;
    let parts = crate::daemon::build::build(&crate::daemon::build::PartsConfig {
        db: db.to_string(),
        listen: fg.listen,
        public_url: fg.public_url.clone(),
        smtp_url: fg.mail.smtp_url.clone(),
        mail_from: fg.mail.mail_from.clone(),
        outbox: fg.mail.outbox.clone(),
    })
    .await?;
    let exec = parts.exec.clone();
    let node = crate::runtime::node::NodeInfo {
        name: format!("{} (runner run)", crate::runtime::node::default_name()),
        defs_hash: Default::default(),
    };
    if crate::runtime::node::register(&exec, &node).await? {
        tokio::spawn(crate::runtime::node::run(exec.clone(), node));
    }
    tokio::spawn(exec.clone().timer_loop());
    let state = std::sync::Arc::new(crate::web::AppState {
        exec: exec.clone(),
        daemon: None,
        token,
        metrics_public: false,
        metrics: parts.metrics.clone(),
        public_url: parts.public_url.clone(),
    });
    let app = crate::web::router(state);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = parts.listener;
    let task = tokio::spawn(async move {
        let _ = crate::web::serve(listener, app, crate::web::Limits::default(), async {
            let _ = stopped.await;
        })
        .await;
    });
    tracing::info!(url = %format!("http://{}", parts.local), "approval pages and API of this process");
    Ok((
        exec.clone(),
        Pages {
            stop,
            task,
            owner,
            exec,
        },
    ))
}

pub(super) async fn run_foreground(
    name: &str,
    input: &str,
    idempotency_key: Option<String>,
    db: &str,
    dir: &Path,
    fg: &ForegroundArgs,
) -> anyhow::Result<ExitCode> {
    let (wf, file) = load_workflow(name, dir)?;
    let input = parse_input(input)?;
    // It may wait (10 s at most) for a recovery to end: not on the runtime's threads.
    let owner = if crate::store::is_postgres(db) {
        None
    } else {
        let db = PathBuf::from(db);
        Some(
            tokio::task::spawn_blocking(move || crate::store::sqlite::owner::take_for_one_run(&db))
                .await??,
        )
    };
    let (engine, mut pages) = open_engine(db, fg, owner).await?;
    let version = crate::store::Version::new(&file.path, &file.text, wf);
    let started = crate::ops::start::start(
        &engine,
        version,
        input,
        crate::engine::Trigger::Cli,
        idempotency_key,
    )
    .await;
    let crate::ops::start::Started { run, created } = match started {
        Ok(r) => r,
        Err(crate::ops::start::StartError::Input(errors)) => {
            eprintln!("error: the input does not match the inputs of `{name}`:");
            for e in errors {
                eprintln!("  - {e}");
            }
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    if created {
        // If this process ends before the run does (killed, say), a daemon continues it.
        if let Some(owner) = pages.owner.as_mut() {
            owner.claim(&run.id)?;
        }
        match (&run.concurrency_key, run.status) {
            (Some(key), crate::engine::RunStatus::Pending) => {
                println!(
                    "run {} queued behind the runs with concurrency key `{key}`: {}",
                    run.id, run.workflow
                );
                // Started when the key has room: by whichever process ends a run with it, or,
                // when that was another `runner run`, from here.
                let (exec, workflow, key) = (engine.clone(), run.workflow.clone(), key.clone());
                let id = run.id.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                    loop {
                        tick.tick().await;
                        match exec.store().run_status(&id).await {
                            Ok(Some(crate::engine::RunStatus::Pending)) => {
                                crate::ops::start::dequeue_key(&exec, &workflow, &key).await
                            }
                            Ok(_) => return,
                            Err(_) => {}
                        }
                    }
                });
            }
            _ => println!("run {} started: {}", run.id, run.workflow),
        }
    } else {
        println!(
            "run {} already exists for this idempotency key: {}",
            run.id, run.workflow
        );
    }
    let status = engine.wait(&run.id).await?;
    pages.finish().await;
    println!("run {} {}", run.id, status.as_str());
    Ok(exit_for(&[status]))
}

fn exit_for(statuses: &[crate::engine::RunStatus]) -> ExitCode {
    if statuses
        .iter()
        .all(|s| *s == crate::engine::RunStatus::Succeeded)
    {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

pub(super) async fn resume(
    run_id: Option<String>,
    db: &str,
    fg: &ForegroundArgs,
) -> anyhow::Result<ExitCode> {
    let owner = if crate::store::is_postgres(db) {
        // Nodes share a PostgreSQL database: this one takes over what dead nodes left.
        None
    } else {
        if !Path::new(db).exists() {
            anyhow::bail!("no database at `{db}`");
        }
        Some(crate::store::sqlite::owner::take_for_recovery(
            Path::new(db),
            "runner resume",
        )?)
    };
    let (engine, mut pages) = open_engine(db, fg, owner).await?;
    let ids = match &run_id {
        Some(id) => {
            if engine.store().get_run(id).await?.is_none() {
                anyhow::bail!("no run `{id}` in `{}`", engine.store().describe());
            }
            vec![id.clone()]
        }
        None => engine.store().unfinished_runs().await?,
    };
    engine.recover(true, run_id.as_deref()).await?;
    if let Some(owner) = pages.owner.as_mut() {
        owner.recovered();
    }
    if ids.is_empty() {
        println!("no unfinished runs");
        return Ok(ExitCode::SUCCESS);
    }
    let mut statuses = Vec::new();
    for id in &ids {
        println!("resuming run {id}");
    }
    for id in ids {
        let status = engine.wait(&id).await?;
        println!("run {id} {}", status.as_str());
        statuses.push(status);
    }
    pages.finish().await;
    Ok(exit_for(&statuses))
}
