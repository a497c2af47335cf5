//! The approval pages: what an approver sees after clicking a link in the e-mail.
//!
//! GET shows what is being decided and a form, and changes nothing (mail scanners open links).
//! POST decides. Unknown or forged tokens get the same plain 404 whatever they look like.
//! Pages are rendered from `templates/` with HTML autoescape, need no JavaScript, and read well
//! on a phone. What a link may do is `ops::approval_link`.

use super::state::Shared;
use crate::ops::approval_link::{self, Refused};
use crate::workflow::Decision;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use minijinja::{Environment, context};
use std::sync::OnceLock;

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
        for (name, text) in [
            ("layout", include_str!("templates/layout.html")),
            ("confirm", include_str!("templates/confirm.html")),
            ("message", include_str!("templates/message.html")),
        ] {
            env.add_template(name, text)
                .expect("the page templates parse");
        }
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

fn verb(decision: Decision) -> &'static str {
    match decision {
        Decision::Approved => "Approve",
        Decision::Rejected => "Reject",
    }
}

/// The page for a link that cannot decide. `decided` is the status for a step that was already
/// decided: 200 when looking, 409 when trying to decide again.
fn refused(why: Refused, decided: StatusCode) -> Response {
    let detail = |run: &crate::engine::Run, step: &str| {
        Some(format!(
            "Workflow {}, run {}, step {step}.",
            run.workflow, run.id
        ))
    };
    match why {
        Refused::NotFound => message(
            StatusCode::NOT_FOUND,
            "Link not found",
            "This link is not valid.",
            Some("Check that you opened the whole link from the e-mail.".into()),
        ),
        Refused::Decided {
            run,
            step,
            decided: d,
        } => message(
            decided,
            "Already decided",
            &format!(
                "Already {} by {} at {}.",
                d.decision.as_str(),
                d.approver,
                d.decided_at
            ),
            detail(&run, &step),
        ),
        Refused::NotWaiting { run, step, status } => message(
            decided,
            "No longer waiting",
            &format!(
                "This step is {} and no longer waits for a decision.",
                status.as_str()
            ),
            detail(&run, &step),
        ),
        Refused::Replaced { run, step } => message(
            StatusCode::GONE,
            "Link replaced",
            "This step was asked again, with new links: use the newest e-mail.",
            detail(&run, &step),
        ),
        Refused::Expired { at } => message(
            StatusCode::GONE,
            "Link expired",
            &format!("This link expired at {} UTC.", at.format("%Y-%m-%d %H:%M")),
            None,
        ),
        Refused::Store(e) => {
            tracing::error!(error = %e, "an approval link could not be read or recorded");
            message(
                if e.is_unavailable() {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                },
                "Not recorded",
                "The decision could not be recorded; please try again.",
                None,
            )
        }
    }
}

pub async fn show(State(state): State<Shared>, Path(token): Path<String>) -> Response {
    let open = match approval_link::open(&state.exec, &token, chrono::Utc::now()).await {
        Ok(open) => open,
        Err(why) => return refused(why, StatusCode::OK),
    };
    let (link, run) = (open.link, open.run);
    page(
        StatusCode::OK,
        "confirm",
        context! {
            title => format!("{} · {}", verb(link.decision), link.subject),
            subject => link.subject,
            body => link.body,
            workflow => &run.workflow,
            run_id => &run.id,
            step => link.step,
            recipient => link.recipient,
            expires => link.expires_at.format("%Y-%m-%d %H:%M").to_string(),
            decision => link.decision.as_str(),
            verb => verb(link.decision),
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

pub async fn submit_link(
    State(state): State<Shared>,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    let comment: String = comment_of(&body).trim().chars().take(2000).collect();
    let comment = (!comment.is_empty()).then_some(comment);
    let decided =
        match approval_link::submit(&state.exec, &token, comment, chrono::Utc::now()).await {
            Ok(d) => d,
            Err(why) => return refused(why, StatusCode::CONFLICT),
        };
    // A rejection ends the run unless its step says `on_reject: continue`.
    let goes_on = state
        .exec
        .store()
        .workflow_for(&decided.run)
        .await
        .ok()
        .and_then(|wf| wf.find_step(&decided.link.step).map(|d| d.kind.clone()))
        .is_some_and(
            |k| matches!(k, crate::workflow::StepKind::Approval(a) if a.on_reject_continue),
        );
    let (title, text) = match decided.link.decision {
        Decision::Approved => ("Approved", "Approved. The run continues."),
        Decision::Rejected if goes_on => (
            "Rejected",
            "Rejected. The run continues with your decision.",
        ),
        Decision::Rejected => ("Rejected", "Rejected. The run stops here."),
    };
    message(
        StatusCode::OK,
        title,
        text,
        Some(format!(
            "Recorded for {} at {}. You can close this page.",
            decided.approver,
            chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
        )),
    )
}
