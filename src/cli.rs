//! The command line: parses arguments and calls into the library. Exit codes are part of the
//! contract: `validate` exits 0 valid, 1 problems, 2 could not run.

use crate::workflow::{self, Diagnostic, SourceFile, Workflow, diagnostic};
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
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
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
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
    Github,
}

/// Entry point used by `main.rs`.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
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
        Command::Validate { paths, format } => validate(paths, format),
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
    }
}

/// Lists the workflow files of a directory (`*.yaml`, `*.yml`), sorted, not recursive.
pub fn workflow_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reads files, or the workflow files of directories, as the checker's input.
pub fn read_sources(paths: &[PathBuf]) -> anyhow::Result<Vec<SourceFile>> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path)
            .map_err(|e| anyhow::anyhow!("cannot read `{}`: {e}", path.display()))?;
        let list = if meta.is_dir() {
            workflow_files(path)
                .map_err(|e| anyhow::anyhow!("cannot list `{}`: {e}", path.display()))?
        } else {
            vec![path.clone()]
        };
        for file in list {
            let bytes = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("cannot read `{}`: {e}", file.display()))?;
            files.push(SourceFile {
                path: file.display().to_string(),
                text: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
    }
    Ok(files)
}

fn validate(paths: Vec<PathBuf>, format: Format) -> anyhow::Result<ExitCode> {
    let paths = if paths.is_empty() {
        vec![PathBuf::from("workflows")]
    } else {
        paths
    };
    let files = read_sources(&paths)?;
    let checked = workflow::check_set(&files);
    let diags = checked.diagnostics();
    let out = render_diagnostics(&diags, &files, format, files.len());
    print!("{out}");
    Ok(if diags.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The output of `runner validate` for a set of diagnostics (also used in snapshot tests).
pub fn render_diagnostics(
    diags: &[Diagnostic],
    files: &[SourceFile],
    format: Format,
    checked: usize,
) -> String {
    match format {
        Format::Json => {
            let mut s = diagnostic::render_json(diags);
            s.push('\n');
            s
        }
        Format::Github => diags
            .iter()
            .map(|d| diagnostic::render_github(d) + "\n")
            .collect(),
        Format::Human => {
            let mut out = String::new();
            for d in diags {
                let source = files
                    .iter()
                    .find(|f| f.path == d.file)
                    .map(|f| f.text.as_str());
                out.push_str(&diagnostic::render_human(d, source));
                out.push('\n');
            }
            let bad_files = diags
                .iter()
                .map(|d| &d.file)
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            let files_word = if checked == 1 { "file" } else { "files" };
            if diags.is_empty() {
                out.push_str(&format!("checked {checked} {files_word}: no problems\n"));
            } else {
                let problems = if diags.len() == 1 {
                    "problem"
                } else {
                    "problems"
                };
                out.push_str(&format!(
                    "checked {checked} {files_word}: {} {problems} in {bad_files} {}\n",
                    diags.len(),
                    if bad_files == 1 { "file" } else { "files" }
                ));
            }
            out
        }
    }
}

/// Loads one workflow by file path or by name from `dir`, refusing it with diagnostics if invalid.
pub fn load_workflow(name_or_file: &str, dir: &Path) -> anyhow::Result<(Workflow, SourceFile)> {
    let as_path = Path::new(name_or_file);
    let files = if as_path.is_file() {
        read_sources(&[as_path.to_path_buf()])?
    } else {
        let all = read_sources(&[dir.to_path_buf()])?;
        let found = all.into_iter().find(|f| {
            workflow::check_file(&f.path, &f.text)
                .map(|w| w.name == name_or_file)
                .unwrap_or(false)
                || workflow::check::file_stem(&f.path) == name_or_file
        });
        match found {
            Some(f) => vec![f],
            None => anyhow::bail!(
                "no workflow named `{name_or_file}` in `{}` (and no such file)",
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
                    "schedule": i,
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
