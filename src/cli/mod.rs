//! The command line: parses arguments and calls into the library. Exit codes are part of the
//! contract: `validate` exits 0 valid, 1 problems, 2 could not run.

mod database;
mod dry_run;
mod foreground;
mod print;

use database::{cancel_in_db, keys, nodes, prune, runs, show};
use foreground::{resume, run_foreground};

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

/// What `runner schedule` does.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleAction {
    Pause,
    Resume,
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
    /// Print a shell completion script (`runner completions bash > /etc/bash_completion.d/runner`)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page, runner(1), in roff (`runner man | man -l -`)
    Man {
        /// Write runner.1 and a runner-<command>.1 for every command into this folder instead
        #[arg(long)]
        out: Option<PathBuf>,
    },
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
    /// Print the exact request a step would send (every header, the signature and its claims,
    /// the body as sent) without sending anything
    DryRun {
        /// A workflow name (in --dir) or file; not with --run
        workflow: Option<String>,
        /// The step (default: the first `http` step)
        #[arg(long)]
        step: Option<String>,
        /// The run's input, a JSON object
        #[arg(long, default_value = "{}")]
        input: String,
        /// Earlier steps' outputs: `{"step-id": {…}}`, as JSON or a file of it
        #[arg(long)]
        steps: Option<String>,
        /// A `foreach` step's item to show, as JSON
        #[arg(long)]
        item: Option<String>,
        /// Take the input, the earlier outputs and the version from this run in --db
        #[arg(long, conflicts_with_all = ["input", "steps"])]
        run: Option<String>,
        #[arg(long, value_enum, default_value_t = dry_run::DryFormat::Http)]
        format: dry_run::DryFormat,
        /// Show secrets' values (read from the environment) instead of «secret:NAME»
        #[arg(long)]
        show_secrets: bool,
        #[arg(long, default_value = "workflows", env = "RUNNER_DIR")]
        dir: PathBuf,
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
        /// How long events sent to runner are kept, for runs that start waiting after an event
        /// arrived (lookback)
        #[arg(long, env = "RUNNER_EVENT_RETENTION", default_value = "7d", value_parser = parse_duration)]
        event_retention: std::time::Duration,
        /// Delete finished runs older than this (`30d`), in the background; a workflow's own
        /// `retention` overrides it. Default: keep every run
        #[arg(long, env = "RUNNER_RETENTION", value_parser = parse_duration)]
        retention: Option<std::time::Duration>,
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
    /// Send an event through the daemon's API: delivered to the runs waiting for it
    /// (`wait_for_event`, `cancel_on`) and starting the workflows that start on it
    Notify {
        event: String,
        /// The correlation key (runs wait for an event with an equal key); none by default
        #[arg(long)]
        key: Option<String>,
        /// The event's data, a JSON value
        #[arg(long, default_value = "null")]
        data: String,
        /// An id of your own: a retried send with the same id is delivered once
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Pause or resume a schedule through the daemon's API: a workflow file's (`weekly-summary/0`,
    /// the index in its `on.schedule`) or a programmatic one (its id). Kept across restarts
    Schedule {
        #[arg(value_enum)]
        action: ScheduleAction,
        /// `workflow/index` for a schedule of a workflow file, else a programmatic schedule's id
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete finished runs (and their events, attempts and items) from the database: those
    /// older than --older-than, and/or beyond the newest --keep of a workflow
    Prune {
        /// Finished longer ago than this (`30d`, `12h`)
        #[arg(long, value_parser = parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Only runs of this workflow
        #[arg(long)]
        workflow: Option<String>,
        /// Keep the newest this many finished runs of --workflow
        #[arg(long, requires = "workflow", value_parser = clap::value_parser!(u32).range(1..))]
        keep: Option<u32>,
        /// Say how many would go, and delete nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        db: DbArgs,
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
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "runner", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { out } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            match out {
                // runner.1 and runner-<command>.1 for every command, as git ships its pages.
                Some(dir) => {
                    std::fs::create_dir_all(&dir)?;
                    clap_mangen::generate_to(cmd, &dir)?;
                    eprintln!("wrote the manual pages to {}", dir.display());
                }
                None => {
                    let mut page = Vec::new();
                    clap_mangen::Man::new(cmd).render(&mut page)?;
                    use std::io::Write;
                    std::io::stdout().write_all(&page)?;
                }
            }
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
                ..Default::default()
            },
            status,
            json,
            &db.db,
        )),
        Command::DryRun {
            workflow,
            step,
            input,
            steps,
            item,
            run,
            format,
            show_secrets,
            dir,
            db,
        } => runtime()?.block_on(dry_run::dry_run(dry_run::DryRun {
            workflow: workflow.as_deref(),
            step: step.as_deref(),
            input: &input,
            steps: steps.as_deref(),
            item: item.as_deref(),
            run: run.as_deref(),
            format,
            show_secrets,
            db: &db.db,
            dir: &dir,
        })),
        Command::Show { run_id, json, db } => runtime()?.block_on(show(&run_id, json, &db.db)),
        Command::Keys { action, db } => runtime()?.block_on(keys(action, &db.db)),
        Command::Nodes { json, db } => runtime()?.block_on(nodes(json, &db.db)),
        Command::Prune {
            older_than,
            workflow,
            keep,
            dry_run,
            db,
        } => runtime()?.block_on(prune(older_than, workflow, keep, dry_run, &db.db)),
        Command::Serve {
            dir,
            db,
            listen,
            public_url,
            api_token,
            metrics_public,
            max_connections,
            header_read_timeout,
            event_retention,
            retention,
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
                event_retention,
                retention,
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
        Command::Notify {
            event,
            key,
            data,
            id,
            server,
        } => {
            let data: serde_json::Value = serde_json::from_str(&data)
                .map_err(|e| anyhow::anyhow!("--data is not JSON: {e}"))?;
            let mut body = serde_json::json!({ "data": data });
            if let Some(k) = key {
                body["key"] = k.into();
            }
            if let Some(i) = id {
                body["id"] = i.into();
            }
            runtime()?.block_on(call_daemon(
                &server,
                reqwest::Method::POST,
                &format!("/api/v1/events/{event}"),
                Some(body),
                vec![],
            ))
        }
        Command::Schedule { action, id, server } => {
            let verb = match action {
                ScheduleAction::Pause => "pause",
                ScheduleAction::Resume => "resume",
            };
            let path = match id.rsplit_once('/') {
                Some((workflow, index)) => {
                    format!("/api/v1/workflows/{workflow}/schedules/{index}/{verb}")
                }
                None => format!("/api/v1/schedules/{id}/{verb}"),
            };
            runtime()?.block_on(call_daemon(
                &server,
                reqwest::Method::POST,
                &path,
                None,
                vec![],
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
