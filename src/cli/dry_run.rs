//! `runner dry-run`: the exact request a step would send (method, URL, every header with the
//! signature and its decoded claims, the dedup id, the body byte for byte) without sending it.
//!
//! I/O shell: reads the workflow file (or a run and its version from the database), the
//! signing keys and, with `--show-secrets`, the secrets' environment variables. The request is
//! rendered and signed by the same code as a real attempt (`engine::request`, `sign`).

use super::load_workflow;
use crate::engine::request::{self, ItemInput};
use crate::engine::{NewRun, Run, StepStatus, Trigger};
use crate::store::Store;
use crate::workflow::{StepKind, Workflow};
use anyhow::{Context, anyhow, bail};
use chrono::Utc;
use serde_json::{Value, json};
use std::path::Path;
use std::process::ExitCode;

/// How `dry-run` prints the request.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DryFormat {
    /// The request as it goes on the wire (after `#` lines with the signature's claims).
    Http,
    /// A `curl` command that sends it.
    Curl,
    /// One JSON object: method, url, headers, body (exactly as sent), dedup id, claims.
    Json,
}

pub(super) struct DryRun<'a> {
    pub(super) workflow: Option<&'a str>,
    pub(super) step: Option<&'a str>,
    pub(super) input: &'a str,
    pub(super) steps: Option<&'a str>,
    pub(super) item: Option<&'a str>,
    pub(super) run: Option<&'a str>,
    pub(super) format: DryFormat,
    pub(super) show_secrets: bool,
    pub(super) db: &'a str,
    pub(super) dir: &'a Path,
}

/// What a secret is shown as unless `--show-secrets`.
fn placeholder(name: &str) -> String {
    format!("«secret:{name}»")
}

pub(super) async fn dry_run(a: DryRun<'_>) -> anyhow::Result<ExitCode> {
    let (wf, run) = match a.run {
        Some(id) => {
            let store = Store::connect(a.db).await?;
            let run = store
                .get_run(id)
                .await?
                .ok_or_else(|| anyhow!("no run `{id}` in {}", store.describe()))?;
            let wf = store.workflow_for(&run).await?;
            ((*wf).clone(), run)
        }
        None => {
            let name = a
                .workflow
                .ok_or_else(|| anyhow!("give a workflow (a name or a file), or --run RUN_ID"))?;
            let (wf, _) = load_workflow(name, a.dir)?;
            let input = super::parse_input(a.input)?;
            let input = match crate::workflow::resolve_input(&wf, &input) {
                Ok(i) => i,
                Err(errors) => {
                    eprintln!(
                        "error: the input does not match the inputs of `{}`:",
                        wf.name
                    );
                    for e in errors {
                        eprintln!("  {e}");
                    }
                    return Ok(ExitCode::from(2));
                }
            };
            let run = Run::new(
                &wf,
                NewRun {
                    id: "dry-run".into(),
                    version: "dry-run".into(),
                    trigger: Trigger::Cli,
                    input,
                    scheduled_for: None,
                    schedule_id: None,
                },
                Utc::now(),
            );
            (wf, run)
        }
    };
    let mut run = run;
    if let Some(steps) = a.steps {
        earlier_outputs(&wf, &mut run, steps)?;
    }
    run.started_at.get_or_insert_with(Utc::now);
    let step = match a.step {
        Some(id) => wf
            .find_step(id)
            .ok_or_else(|| anyhow!("workflow `{}` has no step `{id}`", wf.name))?,
        None => wf
            .steps
            .iter()
            .find(|s| matches!(s.kind, StepKind::Http(_)))
            .ok_or_else(|| anyhow!("workflow `{}` has no `http` step", wf.name))?,
    };
    if !matches!(step.kind, StepKind::Http(_)) {
        let kind = step.kind.name();
        let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        bail!(
            "step `{}` is {article} `{kind}` step: dry-run shows the requests of `http` steps",
            step.id,
        );
    }
    let item = match (&step.foreach, a.item) {
        (Some(_), Some(text)) => {
            let value: Value =
                serde_json::from_str(text).map_err(|e| anyhow!("--item is not JSON: {e}"))?;
            let key = crate::engine::item_key(&wf, &run, step, &value, 0)
                .map_err(|e| anyhow!("--item: {e}"))?;
            Some(ItemInput {
                index: 0,
                key,
                value,
            })
        }
        (Some(_), None) => bail!(
            "step `{}` has `foreach`: give the item to show with --item JSON",
            step.id
        ),
        (None, Some(_)) => bail!("step `{}` has no `foreach`: --item does not apply", step.id),
        (None, None) => None,
    };
    let mut secrets = serde_json::Map::new();
    for name in request::secrets_used(&wf, &step.id) {
        let value = if a.show_secrets {
            std::env::var(&name).map_err(|_| {
                anyhow!("secret `{name}` is not set in the environment (--show-secrets reads it)")
            })?
        } else {
            placeholder(&name)
        };
        secrets.insert(name, Value::String(value));
    }
    let req = match request::render_http(&wf, &run, &step.id, &secrets, item.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: step `{}` cannot be rendered: {e}", step.id);
            return Ok(ExitCode::from(1));
        }
    };
    let mut url = reqwest::Url::parse(&req.url)
        .map_err(|e| anyhow!("the rendered URL `{}` is not valid: {e}", req.url))?;
    url.set_fragment(None);
    let keys = signing_keys(a.db).await?;
    let attempt = run.step(&step.id).map_or(0, |s| s.attempts) + 1;
    let (dedup, retried) =
        request::attempt_message_id(&req, &run, &step.id, attempt, item.as_ref());
    let iat = Utc::now().timestamp();
    let jti = crate::sign::jti_from_random(rand::random());
    let token = crate::sign::sign(&keys.current, url.as_str(), &req.body, iat, &jti);
    let claims = crate::sign::verify(&token, &[&keys.current], Some(url.as_str()), &req.body, iat)
        .map_err(|e| anyhow!("the signature does not verify: {e}"))?;
    let mut headers: Vec<(String, String)> = req.headers.clone();
    headers.extend(
        request::runner_headers(
            &wf.name,
            &run,
            &step.id,
            attempt,
            item.as_ref(),
            (&dedup, retried),
            &token,
        )
        .into_iter()
        .map(|(n, v)| (n.to_string(), v)),
    );
    let claims = serde_json::to_value(&claims).unwrap_or(Value::Null);
    let body = String::from_utf8_lossy(&req.body).into_owned();
    match a.format {
        DryFormat::Json => {
            let out = json!({
                "workflow": wf.name,
                "step": step.id,
                "method": req.method,
                "url": url.as_str(),
                "headers": headers.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
                "body": body,
                "dedup_id": dedup,
                "signature": { "token": token, "claims": claims },
                "flow_control": req.flow.as_ref().map(|f| f.key.clone()),
                "secrets_shown": a.show_secrets,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        DryFormat::Http => {
            print_notes(&claims, a.show_secrets, &secrets);
            let target = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_string(),
            };
            println!("{} {target} HTTP/1.1", req.method);
            println!("Host: {}", url.authority());
            for (n, v) in &headers {
                println!("{n}: {v}");
            }
            println!("Content-Length: {}", req.body.len());
            println!();
            println!("{body}");
        }
        DryFormat::Curl => {
            print_notes(&claims, a.show_secrets, &secrets);
            let mut cmd = format!("curl -X {} {}", req.method, shell(url.as_str()));
            for (n, v) in &headers {
                cmd.push_str(&format!(" \\\n  -H {}", shell(&format!("{n}: {v}"))));
            }
            if !req.body.is_empty() {
                cmd.push_str(&format!(" \\\n  --data-binary {}", shell(&body)));
            }
            println!("{cmd}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_notes(claims: &Value, shown: bool, secrets: &serde_json::Map<String, Value>) {
    println!("# Upstash-Signature claims: {claims}");
    if !shown && !secrets.is_empty() {
        println!(
            "# secrets are shown as «secret:NAME» and signed as shown; --show-secrets for the request as sent"
        );
    }
}

/// `'…'` for a POSIX shell.
fn shell(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `--steps`: earlier steps' outputs, `{"step-id": {…output…}}`, as JSON or a file of it.
fn earlier_outputs(wf: &Workflow, run: &mut Run, steps: &str) -> anyhow::Result<()> {
    let text = if steps.trim_start().starts_with('{') {
        steps.to_string()
    } else {
        std::fs::read_to_string(steps).with_context(|| format!("reading --steps `{steps}`"))?
    };
    let Value::Object(outputs) =
        serde_json::from_str::<Value>(&text).map_err(|e| anyhow!("--steps is not JSON: {e}"))?
    else {
        bail!("--steps must be a JSON object of step id → output");
    };
    for (id, output) in outputs {
        if wf.find_step(&id).is_none() {
            bail!("--steps names `{id}`, which is not a step of `{}`", wf.name);
        }
        let s = run
            .steps
            .iter_mut()
            .chain(run.hooks.iter_mut())
            .find(|s| s.id == id)
            .expect("a step of the workflow has a state");
        s.status = StepStatus::Succeeded;
        s.output = Some(output);
    }
    Ok(())
}

/// The keys a daemon on this database signs with: `RUNNER_SIGNING_KEY`, else the database's.
async fn signing_keys(db: &str) -> anyhow::Result<crate::sign::Keys> {
    if let Ok(current) = std::env::var("RUNNER_SIGNING_KEY")
        && !current.trim().is_empty()
    {
        let next = std::env::var("RUNNER_NEXT_SIGNING_KEY").unwrap_or_else(|_| current.clone());
        return Ok(crate::sign::Keys { current, next });
    }
    if !crate::store::is_postgres(db) && !Path::new(db).exists() {
        bail!(
            "no signing keys: set RUNNER_SIGNING_KEY, or give the daemon's database with --db (`{db}` does not exist)"
        );
    }
    let store = Store::connect(db).await?;
    let (keys, _) = crate::runtime::keys::resolve(&store).await?;
    Ok(keys)
}
