//! The command line: parses arguments and calls into the library. Exit codes are part of the
//! contract: `validate` exits 0 valid, 1 problems, 2 could not run.

mod print;

use crate::sources::{check_parallel, read_sources};
use crate::workflow::{self, SourceFile, Workflow};
use crate::workflow::{Format, render as render_diagnostics};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "runner",
    version,
    about = "Declarative, self-hosted durable workflows",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check workflow files without network, database or secrets (exit 0 valid, 1 problems, 2 could not run)
    Validate {
        /// Files or directories (default: workflows/)
        paths: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = FormatArg::Human)]
        format: FormatArg,
    },
    /// Print the next fire times of a workflow's schedules, in UTC and in the schedule's zone
    Next {
        /// A workflow name (looked up in --dir) or a file path
        workflow: String,
        #[arg(short = 'n', default_value_t = 5)]
        n: usize,
        /// Start after this instant (RFC 3339; default now)
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "workflows", env = "RUNNER_DIR")]
        dir: PathBuf,
    },
    /// Print the JSON schema of workflow files
    Schema,
    /// Run one workflow now, in the foreground, to its end (exit 0 only when it succeeded)
    Run {
        /// A workflow name (looked up in --dir) or a file path
        workflow: String,
        /// The run's input as a JSON object
        #[arg(long, default_value = "{}")]
        input: String,
        /// Return the earlier run started with the same key instead of starting another
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        db: DbArgs,
        #[arg(long, default_value = "workflows", env = "RUNNER_DIR")]
        dir: PathBuf,
        #[command(flatten)]
        fg: ForegroundArgs,
    },
    /// Continue unfinished runs after a crash, in the foreground, until they end
    Resume {
        /// One run (default: every unfinished run)
        run_id: Option<String>,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        fg: ForegroundArgs,
    },
    /// List runs, newest first
    Runs {
        #[arg(long)]
        workflow: Option<String>,
        #[arg(long)]
        status: Option<String>,
        /// The runs of one schedule: a programmatic schedule's id, or `WORKFLOW/INDEX` for one in a workflow file
        #[arg(long)]
        schedule: Option<String>,
        /// At most this many (1 or more)
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Show a run with every step and attempt, and what it is waiting for
    Show {
        run_id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// The daemon: watch the workflows directory, fire schedules, serve the API and approval pages
    Serve {
        #[arg(long, default_value = "workflows", env = "RUNNER_DIR")]
        dir: PathBuf,
        #[command(flatten)]
        db: DbArgs,
        /// Address to listen on (a non-loopback address needs RUNNER_API_TOKEN)
        #[arg(long, env = "RUNNER_LISTEN", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// The URL users reach the daemon at (used in approval links)
        #[arg(long, env = "RUNNER_PUBLIC_URL", value_parser = parse_public_url)]
        public_url: Option<String>,
        /// Bearer token required by the API and /metrics (16 characters or more beyond loopback)
        #[arg(long, env = "RUNNER_API_TOKEN", hide_env_values = true)]
        api_token: Option<String>,
        /// Serve /metrics without the API token
        #[arg(long, env = "RUNNER_METRICS_PUBLIC", value_parser = clap::builder::FalseyValueParser::new())]
        metrics_public: bool,
        /// Connections served at once; one more closes the one idle longest
        #[arg(long, env = "RUNNER_MAX_CONNECTIONS", default_value_t = crate::web::server::DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(usize))]
        max_connections: usize,
        /// How long a client may take to send a request head (and a connection may idle)
        #[arg(long, env = "RUNNER_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
        header_read_timeout: std::time::Duration,
        #[arg(long, value_enum, default_value_t = LogFormat::Human, env = "RUNNER_LOG_FORMAT")]
        log_format: LogFormat,
        #[command(flatten)]
        mail: MailArgs,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Start a run through the daemon's API (the workflow needs `on: { webhook: true }`)
    Trigger {
        workflow: String,
        #[arg(long, default_value = "{}")]
        input: String,
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Cancel a run through the daemon's API, or in the database with --db while no daemon runs
    Cancel {
        run_id: String,
        /// Cancel in this database directly (a SQLite file or postgres://…), without the API: for
        /// when no daemon runs, or it cannot answer. Refused while a daemon holds a SQLite file
        #[arg(long)]
        db: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Retry a failed run from its failed step, through the daemon's API
    Retry {
        run_id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Approve a step that waits for a decision, through the daemon's API
    Approve {
        run_id: String,
        step: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Reject a step that waits for a decision, through the daemon's API
    Reject {
        run_id: String,
        step: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List the daemons sharing a PostgreSQL database: name, version, started, last heartbeat, leader
    Nodes {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Show the signing keys receivers need (QSTASH_CURRENT_SIGNING_KEY / QSTASH_NEXT_SIGNING_KEY), or rotate them
    Keys {
        #[arg(value_enum)]
        action: Option<KeysAction>,
        #[command(flatten)]
        db: DbArgs,
    },
}

/// `runner validate --format`: clap's side of [`Format`], which the core keeps free of clap.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Human,
    Json,
    Github,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Human => Format::Human,
            FormatArg::Json => Format::Json,
            FormatArg::Github => Format::Github,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// The daemon's address
    #[arg(long, env = "RUNNER_URL", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The daemon's API token
    #[arg(long, env = "RUNNER_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Certificate authorities trusted for HTTPS, besides the system's.
#[derive(clap::Args, Debug, Clone)]
pub struct TlsArgs {
    /// A PEM file of certificate authorities to trust for HTTPS calls, besides the system's (a private CA)
    #[arg(long, env = "RUNNER_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

impl TlsArgs {
    /// Makes the CA file's certificates trusted by every HTTP client built afterwards.
    fn apply(&self) -> anyhow::Result<()> {
        if let Some(path) = &self.ca_file {
            crate::dispatch::http::trust_ca_file(path).map_err(|e| anyhow::anyhow!(e))?;
        }
        Ok(())
    }
}

/// A foreground run serves the approval pages (and the API) while it waits.
#[derive(clap::Args, Debug, Clone)]
pub struct ForegroundArgs {
    /// Where the approval pages of this run are served (port 0: any free port)
    #[arg(long, env = "RUNNER_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// The URL approval links use (default: the listen address)
    #[arg(long, env = "RUNNER_PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<String>,
    #[command(flatten)]
    pub mail: MailArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct MailArgs {
    /// SMTP server, e.g. smtp://user:pass@host:2525 (unset: e-mails go to the outbox folder)
    #[arg(long, env = "RUNNER_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// Sender of e-mails
    #[arg(long, env = "RUNNER_MAIL_FROM")]
    pub mail_from: Option<String>,
    /// Where e-mails are written when no SMTP server is configured
    #[arg(long, env = "RUNNER_OUTBOX", default_value = "outbox")]
    pub outbox: PathBuf,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeysAction {
    /// Promote the next key to current and make a new next key
    Rotate,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DbArgs {
    /// The database: a SQLite file, or a PostgreSQL connection string (`postgres://user:pass@host:5432/runner`)
    #[arg(long, env = "RUNNER_DB", default_value = "runner.db")]
    pub db: String,
}

/// Entry point used by `main.rs`.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    quiet_broken_pipe();
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { paths, format } => validate(paths, format.into()),
        Command::Next {
            workflow,
            n,
            from,
            json,
            dir,
        } => next(&workflow, n, from.as_deref(), json, &dir),
        Command::Schema => {
            print!("{}", workflow::schema::generate());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            workflow,
            input,
            idempotency_key,
            db,
            dir,
            fg,
        } => {
            init_logs("warn,runner::dispatch::approval=info");
            fg.tls.apply()?;
            runtime()?.block_on(run_foreground(
                &workflow,
                &input,
                idempotency_key,
                &db.db,
                &dir,
                &fg,
            ))
        }
        Command::Resume { run_id, db, fg } => {
            init_logs("warn,runner::dispatch::approval=info");
            fg.tls.apply()?;
            runtime()?.block_on(resume(run_id, &db.db, &fg))
        }
        Command::Runs {
            workflow,
            status,
            schedule,
            limit,
            json,
            db,
        } => runtime()?.block_on(runs(
            crate::store::RunFilter {
                workflow,
                status: None,
                schedule,
                limit,
            },
            status,
            json,
            &db.db,
        )),
        Command::Show { run_id, json, db } => runtime()?.block_on(show(&run_id, json, &db.db)),
        Command::Keys { action, db } => runtime()?.block_on(keys(action, &db.db)),
        Command::Nodes { json, db } => runtime()?.block_on(nodes(json, &db.db)),
        Command::Serve {
            dir,
            db,
            listen,
            public_url,
            api_token,
            metrics_public,
            max_connections,
            header_read_timeout,
            log_format,
            mail,
            tls,
        } => {
            init_logs_format("info", log_format);
            if max_connections == 0 {
                anyhow::bail!("--max-connections must be 1 or more");
            }
            tls.apply()?;
            let cfg = crate::daemon::ServeConfig {
                dir,
                db: db.db,
                listen,
                public_url,
                api_token,
                metrics_public,
                http: crate::web::Limits {
                    max_connections,
                    header_read_timeout,
                },
                smtp_url: mail.smtp_url,
                mail_from: mail.mail_from,
                outbox: mail.outbox,
            };
            runtime()?.block_on(crate::daemon::serve(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Trigger {
            workflow,
            input,
            idempotency_key,
            server,
        } => {
            let body = parse_input(&input)?;
            let mut headers = Vec::new();
            if let Some(k) = idempotency_key {
                headers.push(("Idempotency-Key".to_string(), k));
            }
            runtime()?.block_on(call_daemon(
                &server,
                reqwest::Method::POST,
                &format!("/api/v1/workflows/{workflow}/runs"),
                Some(body),
                headers,
            ))
        }
        Command::Cancel {
            run_id,
            db: Some(db),
            server: _,
        } => runtime()?.block_on(cancel_in_db(&run_id, &db)),
        Command::Cancel {
            run_id,
            db: None,
            server,
        } => runtime()?.block_on(call_daemon(
            &server,
            reqwest::Method::POST,
            &format!("/api/v1/runs/{run_id}/cancel"),
            None,
            vec![],
        )),
        Command::Retry { run_id, server } => runtime()?.block_on(call_daemon(
            &server,
            reqwest::Method::POST,
            &format!("/api/v1/runs/{run_id}/retry"),
            None,
            vec![],
        )),
        Command::Approve {
            run_id,
            step,
            comment,
            server,
        } => decide_via_daemon(&server, &run_id, &step, "approve", comment),
        Command::Reject {
            run_id,
            step,
            comment,
            server,
        } => decide_via_daemon(&server, &run_id, &step, "reject", comment),
    }
}

/// `runner show … | head` closes stdout early: end quietly, as other command-line tools do,
/// instead of panicking in `println!` (Rust ignores SIGPIPE, and `unsafe` is forbidden here).
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if text.contains("failed printing to stdout") && text.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// `runner approve|reject`: the decision is made by the daemon, recorded as this user's.
fn decide_via_daemon(
    server: &ServerArgs,
    run_id: &str,
    step: &str,
    action: &str,
    comment: Option<String>,
) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(call_daemon(
        server,
        reqwest::Method::POST,
        &format!("/api/v1/runs/{run_id}/steps/{step}/{action}"),
        Some(serde_json::json!({"comment": comment, "approver": whoami()})),
        vec![],
    ))
}

fn whoami() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "cli".into())
}

/// Calls the daemon's API and prints its JSON answer; exit 0 on 2xx, 2 when the daemon refused
/// the request itself (400, 422: a bad input, as `runner run` exits for one), 1 otherwise.
async fn call_daemon(
    server: &ServerArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
    headers: Vec<(String, String)>,
) -> anyhow::Result<ExitCode> {
    server.tls.apply()?;
    let client = crate::dispatch::http::client();
    let url = format!("{}{path}", server.server.trim_end_matches('/'));
    let mut req = client
        .request(method, &url)
        .timeout(std::time::Duration::from_secs(30));
    if let Some(t) = &server.api_token {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(k, v);
    }
    if let Some(b) = body {
        req = req
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    let resp = req
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the daemon at {}: {e} (is `runner serve` running? set --server or RUNNER_URL)", server.server))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
        .unwrap_or(text);
    if status.is_success() {
        println!("{pretty}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: the daemon answered {status}:\n{pretty}");
        let refused = matches!(status.as_u16(), 400 | 422);
        Ok(ExitCode::from(if refused { 2 } else { 1 }))
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Logs to stderr in the chosen format.
pub fn init_logs_format(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUNNER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("runner={default}")));
    // Colours only for a person at a terminal, not in a file or a pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

/// Logs to stderr; `RUNNER_LOG` overrides the default filter (e.g. `RUNNER_LOG=debug`).
pub fn init_logs(default: &str) {
    init_logs_format(default, LogFormat::Human);
}

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

async fn run_foreground(
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
        println!("run {} started: {}", run.id, run.workflow);
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

async fn resume(run_id: Option<String>, db: &str, fg: &ForegroundArgs) -> anyhow::Result<ExitCode> {
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

/// `runner cancel RUN_ID --db`: the cancel applied in the database by this process, for when no
/// daemon can (none runs, or one hangs and was stopped). A SQLite file is taken as `resume` takes
/// it, so that no other process is performing the run meanwhile; a daemon holding it is the one
/// to ask. On PostgreSQL the daemons sharing the database absorb the outcome of a call in flight.
async fn cancel_in_db(run_id: &str, db: &str) -> anyhow::Result<ExitCode> {
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

async fn open_store_readonly(db: &str) -> anyhow::Result<crate::store::Store> {
    if !crate::store::is_postgres(db) && !Path::new(db).exists() {
        anyhow::bail!("no database at `{db}` (set --db or RUNNER_DB)");
    }
    Ok(crate::store::Store::connect(db).await?)
}

/// `--input`: a JSON value, read strictly (a key twice in an object is refused).
fn parse_input(input: &str) -> anyhow::Result<serde_json::Value> {
    crate::web::json::parse_strict(input.as_bytes())
        .map_err(|e| anyhow::anyhow!("--input is not valid JSON: {e}"))
}

/// A duration such as `10s` or `500ms` (for flags).
/// `--public-url`: an absolute http(s) URL with a host, which links can be built on (a value
/// without a scheme would be mailed as a link no client opens).
fn parse_public_url(s: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(s).map_err(|e| {
        format!("`{s}` is not an absolute URL ({e}): give the scheme, e.g. `https://{s}`")
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "`{s}` is not an http(s) URL with a host, e.g. `https://runner.example.com`"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "`{s}` has a query or fragment: links are built by appending paths to it"
        ));
    }
    Ok(s.to_string())
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be more than 0".into()),
        Err(e) => Err(format!("{e} (e.g. `10s`, `500ms`)")),
    }
}

async fn runs(
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
        Some(s) => Some(crate::engine::RunStatus::parse(&s).ok_or_else(|| anyhow::anyhow!("`{s}` is not a run status; use one of pending, running, sleeping, waiting_approval, succeeded, failed, rejected, cancelled"))?),
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

async fn show(run_id: &str, json: bool, db: &str) -> anyhow::Result<ExitCode> {
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

async fn nodes(json: bool, db: &str) -> anyhow::Result<ExitCode> {
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

async fn keys(action: Option<KeysAction>, db: &str) -> anyhow::Result<ExitCode> {
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

fn validate(paths: Vec<PathBuf>, format: Format) -> anyhow::Result<ExitCode> {
    let paths = if paths.is_empty() {
        vec![PathBuf::from("workflows")]
    } else {
        paths
    };
    let sources = read_sources(&paths)?;
    for dir in &sources.skipped_dirs {
        eprintln!(
            "note: `{}` is a subdirectory with workflow files and was not checked: runner reads only the files directly in a directory",
            dir.display()
        );
    }
    let checked = check_parallel(&sources.files);
    let mut diags = checked.diagnostics();
    diags.extend(sources.refused.iter().cloned());
    workflow::diagnostic::sort(&mut diags);
    let out = render_diagnostics(&diags, &sources.files, format, sources.count());
    print!("{out}");
    Ok(if diags.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The error for a workflow file that cannot be read, with its diagnostic.
fn unreadable(d: &workflow::Diagnostic) -> anyhow::Error {
    let text = render_diagnostics(std::slice::from_ref(d), &[], Format::Human, 1);
    anyhow::anyhow!("`{}` is not valid:\n{text}", d.file)
}

/// Loads one workflow by file path or by name from `dir`, refusing it with diagnostics if invalid.
pub fn load_workflow(name_or_file: &str, dir: &Path) -> anyhow::Result<(Workflow, SourceFile)> {
    let as_path = Path::new(name_or_file);
    let files = if as_path.is_file() {
        let read = read_sources(&[as_path.to_path_buf()])?;
        if let Some(d) = read.refused.first() {
            return Err(unreadable(d));
        }
        read.files
    } else {
        let all = read_sources(&[dir.to_path_buf()])?;
        // By name, else by file name (also for a file that does not check, to say why).
        let (mut found, mut by_stem) = (Vec::new(), Vec::new());
        for f in all.files {
            if workflow::check_file(&f.path, &f.text).is_ok_and(|w| w.name == name_or_file) {
                found.push(f);
            } else if workflow::file_stem(&f.path) == name_or_file {
                by_stem.push(f);
            }
        }
        if found.is_empty() {
            found = by_stem;
        }
        if found.is_empty()
            && let Some(d) =
                (all.refused.iter()).find(|d| workflow::check::file_stem(&d.file) == name_or_file)
        {
            return Err(unreadable(d));
        }
        match found.len() {
            1 => vec![found.remove(0)],
            0 => anyhow::bail!(
                "no workflow named `{name_or_file}` in `{}` (and no such file)",
                dir.display()
            ),
            _ => anyhow::bail!(
                "{} workflows in `{}` are named `{name_or_file}`: {}; names must be unique \
                 (`runner validate {}` shows where)",
                found.len(),
                dir.display(),
                found
                    .iter()
                    .map(|f| format!("`{}`", f.path))
                    .collect::<Vec<_>>()
                    .join(", "),
                dir.display()
            ),
        }
    };
    let file = files.into_iter().next().expect("one file was found");
    match workflow::check_file(&file.path, &file.text) {
        Ok(wf) => Ok((wf, file)),
        Err(diags) => {
            let text = render_diagnostics(&diags, std::slice::from_ref(&file), Format::Human, 1);
            anyhow::bail!("`{}` is not valid:\n{text}", file.path)
        }
    }
}

fn next(
    name: &str,
    n: usize,
    from: Option<&str>,
    json: bool,
    dir: &Path,
) -> anyhow::Result<ExitCode> {
    let (wf, _) = load_workflow(name, dir)?;
    let from: DateTime<Utc> = match from {
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map_err(|e| anyhow::anyhow!("--from `{s}` is not an RFC 3339 time: {e}"))?
            .with_timezone(&Utc),
        None => Utc::now(),
    };
    if wf.schedules.is_empty() {
        anyhow::bail!("workflow `{}` has no schedules", wf.name);
    }
    let mut fires = Vec::new();
    for (i, s) in wf.schedules.iter().enumerate() {
        for slot in s.cron.slots_after(from).take(n) {
            fires.push((slot, i));
        }
    }
    fires.sort();
    fires.truncate(n);
    let many = wf.schedules.len() > 1;
    if json {
        let items: Vec<serde_json::Value> = fires
            .iter()
            .map(|(slot, i)| {
                let s = &wf.schedules[*i];
                let tz = s.cron.timezone();
                serde_json::json!({
                    "at": slot.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "local": slot.at.with_timezone(&tz).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "timezone": tz.name(),
                    "nominal": slot.nominal.format("%Y-%m-%dT%H:%M").to_string(),
                    "schedule": i + 1,
                    "cron": s.cron.expression(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        for (slot, i) in &fires {
            let tz = wf.schedules[*i].cron.timezone();
            let local = slot.at.with_timezone(&tz);
            let mut line = format!(
                "{}  {} {}",
                slot.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                local.format("%Y-%m-%d %H:%M:%S %:z"),
                tz.name()
            );
            if slot.nominal != local.naive_local() {
                line.push_str(&format!("  (for {})", slot.nominal.format("%H:%M")));
            }
            if many {
                line.push_str(&format!(
                    "  [schedule {}: {}]",
                    i + 1,
                    wf.schedules[*i].cron.expression()
                ));
            }
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
