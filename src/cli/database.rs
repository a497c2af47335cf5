//! The commands that read or change the database directly: `runs`, `show`, `nodes`, `keys`,
//! `cancel --db`, `prune`.

use super::*;

/// `runner cancel RUN_ID --db`: the cancel applied in the database by this process, for when no
/// daemon can (none runs, or one hangs and was stopped). A SQLite file is taken as `resume` takes
/// it, so that no other process is performing the run meanwhile; a daemon holding it is the one
/// to ask. On PostgreSQL the daemons sharing the database absorb the outcome of a call in flight.
pub(super) async fn cancel_in_db(run_id: &str, db: &str) -> anyhow::Result<ExitCode> {
    let _owner = if crate::store::is_postgres(db) {
        None
    } else {
        if !Path::new(db).exists() {
            anyhow::bail!("no database at `{db}`");
        }
        let advice = format!(
            "cancel through it: `runner cancel {run_id}` (its API, at --server or RUNNER_URL), or \
             stop it first"
        );
        Some(crate::store::sqlite::owner::take_alone(
            Path::new(db),
            "runner cancel",
            &advice,
        )?)
    };
    let store = crate::store::Store::connect(db).await?;
    let exec = crate::runtime::Executor::new(
        store,
        crate::runtime::Performers::none(),
        std::sync::Arc::new(crate::metrics::Metrics::default()),
    );
    match crate::ops::cancel::cancel(&exec, run_id, "cancelled with `runner cancel --db`").await {
        Ok(run) => {
            println!("run {} {}", run.id, run.status.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Err(
            e @ (crate::ops::cancel::CancelError::NoSuchRun(_)
            | crate::ops::cancel::CancelError::Finished { .. }),
        ) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

/// `runner prune`: deletes finished runs in the database. A SQLite file is taken as `cancel
/// --db` takes it (a daemon holding it prunes by itself, with `--retention`); on PostgreSQL it
/// runs beside the daemons.
pub(super) async fn prune(
    older_than: Option<std::time::Duration>,
    workflow: Option<String>,
    keep: Option<u32>,
    dry_run: bool,
    db: &str,
) -> anyhow::Result<ExitCode> {
    if older_than.is_none() && keep.is_none() {
        anyhow::bail!("say which runs: --older-than AGE (e.g. 30d), and/or --workflow W --keep N");
    }
    let _owner = if crate::store::is_postgres(db) || dry_run {
        None
    } else {
        if !Path::new(db).exists() {
            anyhow::bail!("no database at `{db}` (set --db or RUNNER_DB)");
        }
        Some(crate::store::sqlite::owner::take_alone(
            Path::new(db),
            "runner prune",
            "a daemon deletes old runs by itself: start it with --retention (RUNNER_RETENTION) or give the workflow a `retention`; or stop it first",
        )?)
    };
    let store = if dry_run {
        open_store_readonly(db).await?
    } else {
        crate::store::Store::connect(db).await?
    };
    let q = crate::ops::prune::query(older_than, workflow, keep, chrono::Utc::now());
    let n = crate::ops::prune::prune(&store, &q, dry_run, u64::MAX).await?;
    let what = match (older_than, &q.workflow, keep) {
        (Some(age), w, k) => format!(
            "finished more than {} ago{}{}",
            crate::workflow::duration::format(age),
            w.as_ref().map_or(String::new(), |w| format!(" of `{w}`")),
            k.map_or(String::new(), |k| format!(", beyond its newest {k}"))
        ),
        (None, Some(w), Some(k)) => format!("of `{w}` beyond its newest {k} finished"),
        _ => String::new(),
    };
    let runs = if n == 1 { "run" } else { "runs" };
    if dry_run {
        println!("would delete {n} {runs} {what} (nothing deleted: --dry-run)");
    } else {
        println!("deleted {n} {runs} {what}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn open_store_readonly(db: &str) -> anyhow::Result<crate::store::Store> {
    if !crate::store::is_postgres(db) && !Path::new(db).exists() {
        anyhow::bail!("no database at `{db}` (set --db or RUNNER_DB)");
    }
    Ok(crate::store::Store::connect(db).await?)
}

pub(super) async fn runs(
    mut filter: crate::store::RunFilter,
    status: Option<String>,
    json: bool,
    db: &str,
) -> anyhow::Result<ExitCode> {
    if filter.limit == 0 {
        anyhow::bail!("--limit must be 1 or more");
    }
    let store = open_store_readonly(db).await?;
    filter.status = match status {
        Some(s) => Some(crate::engine::RunStatus::parse(&s).ok_or_else(|| anyhow::anyhow!("`{s}` is not a run status; use one of pending, running, sleeping, waiting_approval, waiting_event, succeeded, failed, rejected, cancelled"))?),
        None => None,
    };
    let list = store.list_runs(&filter).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if list.is_empty() {
        println!("no runs");
    } else {
        println!(
            "{:<36}  {:<24}  {:<16}  {:<8}  {:<24}",
            "RUN", "WORKFLOW", "STATUS", "TRIGGER", "CREATED"
        );
        for r in list {
            println!(
                "{:<36}  {:<24}  {:<16}  {:<8}  {:<24}",
                r.id,
                r.workflow,
                r.status.as_str(),
                r.trigger.as_str(),
                r.created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn show(run_id: &str, json: bool, db: &str) -> anyhow::Result<ExitCode> {
    let store = open_store_readonly(db).await?;
    let Some(run) = store.get_run(run_id).await? else {
        anyhow::bail!("no run `{run_id}` in `{}`", store.describe());
    };
    let view = crate::views::RunView::load(&store, &run).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", print::run(&view));
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn nodes(json: bool, db: &str) -> anyhow::Result<ExitCode> {
    if !crate::store::is_postgres(db) {
        println!(
            "`{db}` is a SQLite database: one process at a time runs its runs (the lock file `{db}.lock` names it); several daemons share a PostgreSQL database (--db postgres://…)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let store = crate::store::Store::connect(db).await?;
    let list = store.nodes().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        println!("no nodes: no daemon is running on {}", store.describe());
        return Ok(ExitCode::SUCCESS);
    }
    let t = |d: chrono::DateTime<Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    println!(
        "{:<32}  {:<8}  {:<20}  {:<20}  {:<20}  LEADER",
        "NAME", "VERSION", "STARTED", "HEARTBEAT", "LEASE UNTIL"
    );
    for n in &list {
        println!(
            "{:<32}  {:<8}  {:<20}  {:<20}  {:<20}  {}",
            n.name,
            n.version,
            t(n.started_at),
            t(n.heartbeat_at),
            t(n.lease_until),
            if n.leader { "yes" } else { "" }
        );
    }
    let mut defs: Vec<&str> = list.iter().map(|n| n.defs_hash.as_str()).collect();
    defs.sort_unstable();
    defs.dedup();
    if defs.len() > 1 {
        println!(
            "warning: the nodes have loaded different workflow versions ({} sets): check that every daemon reads the same workflow files",
            defs.len()
        );
    }
    let mut versions: Vec<&str> = list.iter().map(|n| n.version.as_str()).collect();
    versions.sort_unstable();
    versions.dedup();
    if versions.len() > 1 {
        println!(
            "warning: the nodes run different versions of runner: {}",
            versions.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn keys(action: Option<KeysAction>, db: &str) -> anyhow::Result<ExitCode> {
    // A mistyped path becomes a new database with new keys: say so, so that nobody gives
    // receivers keys the daemon does not sign with.
    let created = !crate::store::is_postgres(db) && !Path::new(db).exists();
    let store = crate::store::Store::connect(db).await?;
    let keys = match action {
        Some(KeysAction::Rotate) => crate::runtime::keys::rotate(&store)
            .await
            .map_err(|e| anyhow::anyhow!(e))?,
        None => crate::runtime::keys::resolve(&store).await?.0,
    };
    println!("QSTASH_CURRENT_SIGNING_KEY={}", keys.current);
    println!("QSTASH_NEXT_SIGNING_KEY={}", keys.next);
    if created {
        eprintln!(
            "note: there was no database at `{db}`; a new one was created with the new keys above. \
             If you meant the daemon's database, set --db (or RUNNER_DB) to it."
        );
    }
    if action == Some(KeysAction::Rotate) {
        eprintln!(
            "rotated: a running daemon on this database signs with the new current key within {} s \
             (receivers that have the old pair keep verifying: the new current key was their next \
             key). Once it does, give receivers the new pair above; do not rotate again before they \
             have it.",
            crate::runtime::keys::REFRESH.as_secs()
        );
    }
    Ok(ExitCode::SUCCESS)
}
