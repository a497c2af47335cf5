//! Approval e-mails and `email` steps: the effect handlers for `RequestApproval` and `SendEmail`.
//!
//! An approval link is a capability: a random 256-bit token, of which only the SHA-256 is stored,
//! bound to one run, step, recipient and decision, expiring with the step, and dead once the step
//! is decided. Opening it shows a page and changes nothing; only the page's POST decides.

use super::mail::{MailError, Mailer, Outgoing};
use crate::engine::executor::{EffectHandler, Engine};
use crate::engine::machine::{Effect, Event, Outcome, Run};
use crate::engine::request;
use crate::store::{AttemptRecord, Store, StoreError};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tracing::{info, warn};

/// Mail settings shared by both handlers.
pub struct MailContext {
    pub mailer: Mailer,
    /// Base of the approval links, e.g. `https://runner.example.com`.
    pub public_url: String,
}

pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What a link knows, read back by its token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub run_id: String,
    pub step: String,
    pub recipient: String,
    pub decision: String,
    pub subject: String,
    pub body: String,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<String>,
}

pub fn lookup(store: &Store, token: &str) -> Result<Option<TokenInfo>, StoreError> {
    if token.len() > 100 {
        return Ok(None);
    }
    let hash = token_hash(token);
    store.read(|c| {
        c.query_row(
            "SELECT run_id, step, recipient, decision, subject, body, expires_at, used_at FROM approval_tokens WHERE hash = ?1",
            [hash],
            |r| {
                Ok(TokenInfo {
                    run_id: r.get(0)?,
                    step: r.get(1)?,
                    recipient: r.get(2)?,
                    decision: r.get(3)?,
                    subject: r.get(4)?,
                    body: r.get(5)?,
                    expires_at: DateTime::from_timestamp_millis(r.get(6)?).unwrap_or_default(),
                    used_at: r.get(7)?,
                })
            },
        )
        .optional()
        .map_err(|source| StoreError::Sql { doing: "reading an approval link", source })
    })
}

pub async fn mark_used(store: &Store, token: &str) -> Result<(), StoreError> {
    let hash = token_hash(token);
    store
        .write(move |c| {
            c.execute(
                "UPDATE approval_tokens SET used_at = ?2 WHERE hash = ?1 AND used_at IS NULL",
                params![hash, Utc::now().to_rfc3339()],
            )
            .map_err(|source| StoreError::Sql {
                doing: "using an approval link",
                source,
            })?;
            Ok(serde_json::Value::Null)
        })
        .await
        .map(|_| ())
}

/// The handler for `RequestApproval`: one e-mail per recipient with an Approve and a Reject link.
pub struct ApprovalHandler(pub Arc<MailContext>);

/// The handler for `SendEmail` (`email` steps and `on_failure` e-mail hooks).
pub struct EmailHandler(pub Arc<MailContext>);

impl EffectHandler for ApprovalHandler {
    fn perform(
        &self,
        engine: Engine,
        run: Arc<Run>,
        effect: Effect,
        effect_id: Option<i64>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let ctx = self.0.clone();
        Box::pin(async move {
            let Effect::RequestApproval { step, deadline } = effect else {
                return;
            };
            let outcome = request_approval(&ctx, &engine, &run, &step, deadline).await;
            match outcome {
                Ok(()) => {
                    if let Some(id) = effect_id {
                        let _ = engine.store().mark_done(&run.id, id).await;
                    }
                }
                Err(error) => {
                    warn!(run_id = %run.id, step, error = %error, "approval e-mails could not be delivered");
                    let ev = Event::ApprovalDeliveryFailed {
                        step: step.clone(),
                        error,
                    };
                    if let Err(e) = engine.apply(&run.id, ev, None, effect_id).await {
                        warn!(run_id = %run.id, error = %e, "cannot record the failed delivery");
                    }
                }
            }
        })
    }
}

/// Sends the approval e-mails. A transient failure (the SMTP server is down, busy, silent, or
/// greylists one recipient) is tried again with a growing delay (2 s, doubling, at most 5 min)
/// until the approval's deadline, since the step waits for a person anyway: an SMTP outage of a
/// few minutes must not fail a run that may wait days. Each round tries every recipient not yet
/// mailed, so one recipient's refusal does not keep the others from being asked. Meanwhile the
/// effect stays in the outbox, so a restart sends again (recipients already mailed for this
/// deadline are skipped). It stops when the step no longer waits (decided through the API,
/// cancelled). Returns a permanent error, which fails the step.
async fn request_approval(
    ctx: &MailContext,
    engine: &Engine,
    run: &Run,
    step: &str,
    deadline: DateTime<Utc>,
) -> Result<(), String> {
    let wf = engine
        .store()
        .workflow_for(run)
        .map_err(|e| e.to_string())?;
    let secrets = super::http::secrets_for_step(&wf, step)?;
    let mail = request::render_mail(&wf, run, step, &secrets)?;
    let mut pending: Vec<&String> = mail.to.iter().collect();
    let mut delay = MAIL_RETRY_FIRST;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let mut failed = Vec::new();
        for recipient in pending {
            match send_one(ctx, engine.store(), run, step, recipient, &mail, deadline).await {
                Ok(()) => {}
                Err(MailError::Permanent(e)) => {
                    return Err(format!("sending the approval e-mail to `{recipient}`: {e}"));
                }
                Err(MailError::Transient(e)) => failed.push((recipient, e)),
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        let Some((wait, next)) = mail_retry(delay, Utc::now(), deadline) else {
            for (recipient, e) in &failed {
                warn!(run_id = %run.id, step, recipient, tries, error = %e, "approval e-mail not delivered before the deadline; the step times out");
            }
            return Ok(());
        };
        for (recipient, e) in &failed {
            warn!(run_id = %run.id, step, recipient, tries, error = %e, retry_in_s = wait.as_secs_f64(), "approval e-mail failed; trying again");
        }
        tokio::time::sleep(wait).await;
        delay = next;
        if !still_waiting(engine, run, step) {
            return Ok(());
        }
        pending = failed.into_iter().map(|(r, _)| r).collect();
    }
}

const MAIL_RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(2);
const MAIL_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(300);
/// How long one approval e-mail may take before it counts as a transient failure (a server
/// that accepts the connection and never answers must not hold the other recipients).
const APPROVAL_SEND_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// After a transient failure of an approval e-mail: how long to wait before the next try (the
/// current `delay`, cut short at the deadline) and the delay after that (doubled, at most
/// 5 min). None once the deadline has passed: the step's own timer then decides.
fn mail_retry(
    delay: std::time::Duration,
    now: DateTime<Utc>,
    deadline: DateTime<Utc>,
) -> Option<(std::time::Duration, std::time::Duration)> {
    let left = (deadline - now).to_std().ok().filter(|d| !d.is_zero())?;
    Some((delay.min(left), (delay * 2).min(MAIL_RETRY_MAX)))
}

/// Whether the step still waits for its decision (it may have been decided through the API or
/// cancelled while its e-mails were being retried).
fn still_waiting(engine: &Engine, run: &Run, step: &str) -> bool {
    match engine.store().get_run(&run.id) {
        Ok(Some(now)) => now
            .step(step)
            .is_some_and(|s| s.status == crate::engine::machine::StepStatus::WaitingApproval),
        Ok(None) => false,
        // Cannot tell: keep trying (the deadline still ends it).
        Err(_) => true,
    }
}

async fn send_one(
    ctx: &MailContext,
    store: &Store,
    run: &Run,
    step: &str,
    recipient: &str,
    mail: &request::Mail,
    deadline: DateTime<Utc>,
) -> Result<(), MailError> {
    // After a restart the effect runs again: recipients already mailed are not mailed twice.
    // Mailed for this deadline, that is: a retried step asks again, with new links, and its
    // earlier links (another deadline) then say they were replaced.
    let (r_id, r_step, r_rcpt) = (run.id.clone(), step.to_string(), recipient.to_string());
    let already = store
        .read(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM approval_tokens WHERE run_id = ?1 AND step = ?2 AND recipient = ?3 AND mailed_at IS NOT NULL AND expires_at = ?4",
                params![r_id, r_step, r_rcpt, deadline.timestamp_millis()],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|source| StoreError::Sql { doing: "checking approval e-mails", source })
        })
        .map_err(|e| MailError::Transient(e.to_string()))?;
    if already > 0 {
        return Ok(());
    }
    let approve = new_token();
    let reject = new_token();
    let (subject, body) = (mail.subject.clone(), mail.body.clone());
    let rows = vec![
        (token_hash(&approve), "approved"),
        (token_hash(&reject), "rejected"),
    ];
    let (a_run, a_step, a_rcpt) = (run.id.clone(), step.to_string(), recipient.to_string());
    store
        .write(move |c| {
            // Links of an earlier, undelivered attempt for this recipient die here.
            c.execute("DELETE FROM approval_tokens WHERE run_id = ?1 AND step = ?2 AND recipient = ?3 AND mailed_at IS NULL", params![a_run, a_step, a_rcpt])
                .map_err(|source| StoreError::Sql { doing: "storing approval links", source })?;
            for (hash, decision) in rows {
                c.execute(
                    "INSERT INTO approval_tokens(hash, run_id, step, recipient, decision, subject, body, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![hash, a_run, a_step, a_rcpt, decision, subject, body, deadline.timestamp_millis(), Utc::now().to_rfc3339()],
                )
                .map_err(|source| StoreError::Sql { doing: "storing approval links", source })?;
            }
            Ok(serde_json::Value::Null)
        })
        .await
        .map_err(|e| MailError::Transient(e.to_string()))?;
    let approve_url = format!("{}/approvals/{approve}", ctx.public_url);
    let reject_url = format!("{}/approvals/{reject}", ctx.public_url);
    let out = Outgoing {
        to: vec![recipient.to_string()],
        subject: mail.subject.clone(),
        text: approval_text(run, step, &mail.body, &approve_url, &reject_url, deadline),
        html: Some(approval_html(
            run,
            step,
            &mail.subject,
            &mail.body,
            &approve_url,
            &reject_url,
            deadline,
        )),
        tag: format!("{}-{step}", run.id),
    };
    let where_to = ctx.mailer.send(&out, APPROVAL_SEND_LIMIT).await?;
    let (m_run, m_step, m_rcpt) = (run.id.clone(), step.to_string(), recipient.to_string());
    store
        .write(move |c| {
            c.execute("UPDATE approval_tokens SET mailed_at = ?4 WHERE run_id = ?1 AND step = ?2 AND recipient = ?3 AND mailed_at IS NULL", params![m_run, m_step, m_rcpt, Utc::now().to_rfc3339()])
                .map_err(|source| StoreError::Sql { doing: "recording an approval e-mail", source })?;
            Ok(serde_json::Value::Null)
        })
        .await
        .map_err(|e| MailError::Transient(e.to_string()))?;
    if ctx.mailer.is_outbox() {
        info!(run_id = %run.id, step, recipient, approve = %approve_url, reject = %reject_url, "approval requested ({where_to}); open a link to decide");
    } else {
        info!(run_id = %run.id, step, recipient, "approval e-mail {where_to}");
    }
    Ok(())
}

fn approval_text(
    run: &Run,
    step: &str,
    body: &str,
    approve: &str,
    reject: &str,
    deadline: DateTime<Utc>,
) -> String {
    format!(
        "{body}\n\nWorkflow {wf}, run {run_id}, step {step}.\n\nApprove: {approve}\nReject:  {reject}\n\nThe links open a page where you confirm (and may add a comment). They expire at {deadline} UTC and work once.\n",
        wf = run.workflow,
        run_id = run.id,
        deadline = deadline.format("%Y-%m-%d %H:%M"),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[allow(clippy::too_many_arguments)]
fn approval_html(
    run: &Run,
    step: &str,
    subject: &str,
    body: &str,
    approve: &str,
    reject: &str,
    deadline: DateTime<Utc>,
) -> String {
    format!(
        r#"<!doctype html><html><body style="font-family:system-ui,sans-serif;max-width:36rem;margin:auto;padding:1rem;color:#111">
<h1 style="font-size:1.25rem">{subject}</h1>
<p style="white-space:pre-wrap">{body}</p>
<p style="color:#555">Workflow <b>{wf}</b>, run <code>{run_id}</code>, step <b>{step}</b>.</p>
<p><a href="{approve}" style="display:inline-block;padding:.6rem 1.2rem;background:#1a7f37;color:#fff;text-decoration:none;border-radius:6px">Approve</a>
&nbsp; <a href="{reject}" style="display:inline-block;padding:.6rem 1.2rem;background:#cf222e;color:#fff;text-decoration:none;border-radius:6px">Reject</a></p>
<p style="color:#555;font-size:.9rem">Each link opens a page where you confirm. The links expire at {deadline} UTC and work once.</p>
</body></html>"#,
        subject = escape(subject),
        body = escape(body),
        wf = escape(&run.workflow),
        run_id = escape(&run.id),
        step = escape(step),
        approve = escape(approve),
        reject = escape(reject),
        deadline = deadline.format("%Y-%m-%d %H:%M"),
    )
}

impl EffectHandler for EmailHandler {
    fn perform(
        &self,
        engine: Engine,
        run: Arc<Run>,
        effect: Effect,
        effect_id: Option<i64>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let ctx = self.0.clone();
        Box::pin(async move {
            let Effect::SendEmail { step, attempt } = effect else {
                return;
            };
            let (event, record) = send_email_step(&ctx, &engine, &run, &step, attempt).await;
            if let Err(e) = engine.apply(&run.id, event, Some(record), effect_id).await {
                warn!(run_id = %run.id, step, error = %e, "cannot record an e-mail attempt");
            }
        })
    }
}

/// One attempt of an `email` step, and its record for `runner show` (recipients and subject,
/// secrets redacted, the outcome and error; the body is not kept).
async fn send_email_step(
    ctx: &MailContext,
    engine: &Engine,
    run: &Run,
    step: &str,
    attempt: u32,
) -> (Event, AttemptRecord) {
    let mut record = AttemptRecord {
        step: step.to_string(),
        attempt,
        started_at: Some(Utc::now()),
        ..AttemptRecord::default()
    };
    let mut secrets = serde_json::Map::new();
    let wf = engine.store().workflow_for(run);
    let result = async {
        let wf = wf
            .as_ref()
            .map_err(|e| MailError::Permanent(e.to_string()))?;
        secrets = super::http::secrets_for_step(wf, step).map_err(MailError::Permanent)?;
        let mail = request::render_mail(wf, run, step, &secrets).map_err(MailError::Permanent)?;
        record.request = Some(request::redact_value(
            serde_json::json!({ "to": mail.to, "subject": mail.subject }),
            &secrets,
        ));
        let out = Outgoing {
            to: mail.to.clone(),
            subject: mail.subject.clone(),
            text: mail.body.clone(),
            html: None,
            tag: format!("{}-{step}", run.id),
        };
        // The step's `timeout` bounds the attempt, as it does an HTTP call's.
        let limit = request::step_timeout(wf, step).unwrap_or(APPROVAL_SEND_LIMIT);
        let where_to = ctx.mailer.send(&out, limit).await?;
        info!(run_id = %run.id, step, "e-mail {where_to}");
        Ok::<_, MailError>(mail.to)
    }
    .await;
    record.finished_at = Some(Utc::now());
    let (error, outcome) = match result {
        Ok(to) => {
            record.outcome = "succeeded".into();
            let event = Event::AttemptSucceeded {
                step: step.to_string(),
                attempt,
                output: serde_json::json!({ "sent_to": to }),
            };
            return (event, record);
        }
        Err(MailError::Permanent(e)) => (e, Outcome::Permanent),
        Err(MailError::Transient(e)) => (e, Outcome::Retryable { after: None }),
    };
    let error = request::redact(&error, &secrets);
    record.outcome = match &wf {
        Ok(wf) => outcome.record_name(wf, run, step),
        Err(_) => "failed",
    }
    .into();
    record.error = Some(error.clone());
    let event = Event::AttemptFailed {
        step: step.to_string(),
        attempt,
        error,
        status: None,
        body: None,
        outcome,
    };
    (event, record)
}

/// Registers both handlers on an engine.
pub fn install(engine: &Engine, ctx: MailContext) {
    let ctx = Arc::new(ctx);
    engine.set_handlers(crate::engine::executor::Handlers {
        email: Some(Arc::new(EmailHandler(ctx.clone()))),
        approval: Some(Arc::new(ApprovalHandler(ctx))),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An approval that waits three days keeps trying its e-mails for three days (the first
    /// version gave up after 5 tries, about 3 minutes), never more than 5 minutes apart, and
    /// stops at the deadline.
    #[test]
    fn approval_e_mails_are_retried_until_the_deadline() {
        let start = Utc::now();
        let deadline = start + chrono::Duration::days(3);
        let (mut now, mut delay, mut tries) = (start, MAIL_RETRY_FIRST, 0u32);
        let mut waits = Vec::new();
        while let Some((wait, next)) = mail_retry(delay, now, deadline) {
            waits.push(wait);
            now += chrono::Duration::from_std(wait).expect("fits");
            delay = next;
            tries += 1;
            assert!(tries < 10_000, "no end");
        }
        assert_eq!(now, deadline, "the last wait ends at the deadline");
        assert_eq!(
            waits[..4],
            [2, 4, 8, 16].map(std::time::Duration::from_secs)
        );
        assert!(waits.iter().all(|w| *w <= MAIL_RETRY_MAX));
        assert!(
            tries > 800,
            "3 days at 5 min apart is about 864 tries, got {tries}"
        );
        assert_eq!(mail_retry(MAIL_RETRY_FIRST, deadline, deadline), None);
    }
}
