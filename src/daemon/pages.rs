//! The approval pages: what an approver sees after clicking a link in the e-mail.
//!
//! GET shows what is being decided and a form, and changes nothing (mail scanners open links).
//! POST decides. Unknown or forged tokens get the same plain 404 whatever they look like.
//! Pages are rendered with minijinja, need no JavaScript, and read well on a phone.

use super::api::Shared;
use crate::dispatch::approval;
use crate::engine::machine::{Event, StepStatus};
use crate::workflow::Decision;
use crate::workflow::address::bare_address;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use minijinja::{Environment, context};
use std::sync::OnceLock;

const LAYOUT: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{{ title }} · runner</title>
<style>
  body { font: 1.05rem/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; padding: 1rem; color: #1f2328; background: #f6f8fa; }
  main { max-width: 36rem; margin: 2rem auto; background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 1.25rem 1.5rem; }
  h1 { font-size: 1.35rem; margin: 0 0 .75rem; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; margin: 1rem 0; }
  dt { color: #57606a; } dd { margin: 0; overflow-wrap: anywhere; }
  .body { white-space: pre-wrap; background: #f6f8fa; border-radius: 6px; padding: .75rem; margin: 1rem 0; }
  label { display: block; font-weight: 600; margin: 1rem 0 .25rem; }
  textarea { width: 100%; box-sizing: border-box; min-height: 5rem; font: inherit; padding: .5rem; border: 1px solid #8c959f; border-radius: 6px; }
  button { font: inherit; font-weight: 600; color: #fff; border: 0; border-radius: 6px; padding: .7rem 1.4rem; margin-top: 1rem; cursor: pointer; }
  .approved { background: #1a7f37; } .rejected { background: #cf222e; }
  .outcome { font-size: 1.2rem; font-weight: 600; }
  .muted { color: #57606a; font-size: .95rem; }
</style>
</head>
<body><main>{% block content %}{% endblock %}</main></body>
</html>"#;

const CONFIRM: &str = r#"{% extends "layout" %}{% block content %}
<h1>{{ subject }}</h1>
<dl>
  <dt>Workflow</dt><dd>{{ workflow }}</dd>
  <dt>Run</dt><dd><code>{{ run_id }}</code></dd>
  <dt>Step</dt><dd>{{ step }}</dd>
  <dt>You are</dt><dd>{{ recipient }}</dd>
  <dt>Expires</dt><dd>{{ expires }} UTC</dd>
</dl>
{% if body %}<div class="body">{{ body }}</div>{% endif %}
<form method="post">
  <label for="comment">Comment (optional)</label>
  <textarea id="comment" name="comment" maxlength="2000"></textarea>
  <button type="submit" class="{{ decision }}">{{ verb }}</button>
</form>
<p class="muted">Nothing is decided until you press the button.</p>
{% endblock %}"#;

const MESSAGE: &str = r#"{% extends "layout" %}{% block content %}
<h1>{{ title }}</h1>
<p class="outcome" role="status">{{ message }}</p>
{% if detail %}<p class="muted">{{ detail }}</p>{% endif %}
{% endblock %}"#;

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
        env.add_template("layout", LAYOUT)
            .expect("the layout template parses");
        env.add_template("confirm", CONFIRM)
            .expect("the confirm template parses");
        env.add_template("message", MESSAGE)
            .expect("the message template parses");
        env
    })
}

fn page(status: StatusCode, name: &str, ctx: minijinja::Value) -> Response {
    let html = env()
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .unwrap_or_else(|e| format!("<!doctype html><p>page error: {e}</p>"));
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        html,
    )
        .into_response()
}

fn message(status: StatusCode, title: &str, message: &str, detail: Option<String>) -> Response {
    page(status, "message", context! { title, message, detail })
}

fn not_found() -> Response {
    message(
        StatusCode::NOT_FOUND,
        "Link not found",
        "This link is not valid.",
        Some("Check that you opened the whole link from the e-mail.".into()),
    )
}

fn verb(decision: &str) -> &'static str {
    if decision == "approved" {
        "Approve"
    } else {
        "Reject"
    }
}

/// What the step says about an earlier decision, if it was decided.
fn already_decided(output: &Option<serde_json::Value>) -> Option<String> {
    let o = output.as_ref()?;
    Some(format!(
        "Already {} by {} at {}.",
        o["decision"].as_str().unwrap_or("decided"),
        o["approver"].as_str().unwrap_or("someone"),
        o["decided_at"].as_str().unwrap_or("an earlier time")
    ))
}

/// A link that can still decide: its token, run and step are known, the step waits, and the
/// link has not expired. Otherwise the page to answer with (`decided` is the status for a step
/// that was already decided: 200 when looking, 409 when trying to decide again).
#[allow(clippy::result_large_err)] // the error is the page to send; it is sent at once
fn open_link(
    state: &Shared,
    token: &str,
    decided: StatusCode,
) -> Result<(approval::TokenInfo, crate::engine::machine::Run), Response> {
    let store = state.engine.store();
    let Ok(Some(info)) = approval::lookup(store, token) else {
        return Err(not_found());
    };
    let Ok(Some(run)) = store.get_run(&info.run_id) else {
        return Err(not_found());
    };
    let Some(step) = run.step(&info.step) else {
        return Err(not_found());
    };
    let detail = || {
        Some(format!(
            "Workflow {}, run {}, step {}.",
            run.workflow, run.id, info.step
        ))
    };
    if step.status != StepStatus::WaitingApproval {
        let page = match already_decided(&step.output) {
            Some(text) => message(decided, "Already decided", &text, detail()),
            None => message(
                decided,
                "No longer waiting",
                &format!(
                    "This step is {} and no longer waits for a decision.",
                    step.status.as_str()
                ),
                detail(),
            ),
        };
        return Err(page);
    }
    // A link of an earlier round of this step (it failed and was retried, which mails new links).
    if step
        .wake_at
        .is_some_and(|d| d.timestamp_millis() != info.expires_at.timestamp_millis())
    {
        return Err(message(
            StatusCode::GONE,
            "Link replaced",
            "This step was asked again, with new links: use the newest e-mail.",
            detail(),
        ));
    }
    if chrono::Utc::now() >= info.expires_at {
        return Err(message(
            StatusCode::GONE,
            "Link expired",
            &format!(
                "This link expired at {} UTC.",
                info.expires_at.format("%Y-%m-%d %H:%M")
            ),
            None,
        ));
    }
    Ok((info, run))
}

pub async fn show(State(state): State<Shared>, Path(token): Path<String>) -> Response {
    let (info, run) = match open_link(&state, &token, StatusCode::OK) {
        Ok(open) => open,
        Err(page) => return page,
    };
    page(
        StatusCode::OK,
        "confirm",
        context! {
            title => format!("{} · {}", verb(&info.decision), info.subject),
            subject => info.subject,
            body => info.body,
            workflow => run.workflow,
            run_id => run.id,
            step => info.step,
            recipient => info.recipient,
            expires => info.expires_at.format("%Y-%m-%d %H:%M").to_string(),
            decision => info.decision.clone(),
            verb => verb(&info.decision),
        },
    )
}

/// The `comment` field of the page's url-encoded form (missing or unreadable: no comment).
fn comment_of(body: &[u8]) -> String {
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == "comment")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

pub async fn decide(
    State(state): State<Shared>,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    let store = state.engine.store();
    let (info, _) = match open_link(&state, &token, StatusCode::CONFLICT) {
        Ok(open) => open,
        Err(page) => return page,
    };
    let comment: String = comment_of(&body).trim().chars().take(2000).collect();
    let decision = if info.decision == "approved" {
        Decision::Approved
    } else {
        Decision::Rejected
    };
    // `Ed <ed@example.com>` decides as `ed@example.com`: templates compare addresses.
    let approver = bare_address(&info.recipient);
    let event = Event::ApprovalDecided {
        step: info.step.clone(),
        decision,
        approver: approver.clone(),
        comment: (!comment.is_empty()).then_some(comment),
    };
    let after = match state.engine.apply(&info.run_id, event, None, None).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "recording a decision failed");
            return message(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Not recorded",
                "The decision could not be recorded; please try again.",
                None,
            );
        }
    };
    let _ = approval::mark_used(store, &token).await;
    let decided = after.step(&info.step).and_then(|s| s.output.clone());
    let ours = decided
        .as_ref()
        .is_some_and(|o| o["approver"] == approver.as_str() && o["decision"] == decision.as_str());
    if !ours {
        let text = already_decided(&decided)
            .unwrap_or_else(|| "This step was decided in the meantime.".into());
        return message(StatusCode::CONFLICT, "Already decided", &text, None);
    }
    let (title, text) = match decision {
        Decision::Approved => ("Approved", "Approved. The run continues."),
        Decision::Rejected => ("Rejected", "Rejected. The run stops here."),
    };
    message(
        StatusCode::OK,
        title,
        text,
        Some(format!(
            "Recorded for {} at {}. You can close this page.",
            approver,
            chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
        )),
    )
}
