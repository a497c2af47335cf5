//! Approval e-mails: [`ApprovalPerformer`] performs `RequestApproval`, one e-mail per recipient
//! with an Approve and a Reject link.
//!
//! I/O shell. An approval link is a capability: a random 256-bit token, of which only the
//! SHA-256 is stored, bound to one run, step, recipient and decision, expiring with the step, and
//! dead once the step is decided. Opening it shows a page and changes nothing; only the page's
//! POST decides (`web::approval_pages`).

use super::email::MailContext;
use super::mail::{MailError, Outgoing};
use crate::engine::request;
use crate::engine::{Effect, Event, Run, StepStatus};
use crate::runtime::{Job, Perform, Performed};
use crate::store::{NewApprovalLinks, Store};
use crate::workflow::{Decision, Workflow};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use tracing::{info, warn};

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

/// Performs `RequestApproval`.
pub struct ApprovalPerformer {
    ctx: Arc<MailContext>,
    store: Store,
}

impl ApprovalPerformer {
    pub fn new(ctx: Arc<MailContext>, store: Store) -> ApprovalPerformer {
        ApprovalPerformer { ctx, store }
    }
}

impl Perform for ApprovalPerformer {
    fn perform(&self, job: Job) -> Pin<Box<dyn Future<Output = Performed> + Send + 'static>> {
        let (ctx, store) = (self.ctx.clone(), self.store.clone());
        Box::pin(async move {
            let Effect::RequestApproval { step, deadline } = &job.effect else {
                unreachable!(
                    "the executor hands the approval performer only RequestApproval effects"
                )
            };
            match request_approval(&ctx, &store, &job.workflow, &job.run, step, *deadline).await {
                Ok(()) => Performed::Done,
                Err(error) => {
                    warn!(run_id = %job.run.id, step, error = %error, "approval e-mails could not be delivered");
                    Performed::Outcome {
                        event: Event::ApprovalDeliveryFailed {
                            step: step.clone(),
                            error,
                        },
                        record: None,
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
    store: &Store,
    wf: &Arc<Workflow>,
    run: &Arc<Run>,
    step: &str,
    deadline: DateTime<Utc>,
) -> Result<(), String> {
    let secrets = super::http::secrets_for_step(wf, step)?;
    let limit = request::step_timeout(wf, step).unwrap_or(super::email::SEND_LIMIT);
    let render = {
        let (wf, run, step, secrets) = (wf.clone(), run.clone(), step.to_string(), secrets.clone());
        move || request::render_mail(&wf, &run, &step, &secrets, None)
    };
    let (mail, _) = super::render_within(wf, step, limit, render).await?;
    let mut pending: Vec<&String> = mail.to.iter().collect();
    let mut delay = MAIL_RETRY_FIRST;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let mut failed = Vec::new();
        for recipient in pending {
            match send_one(ctx, store, run, step, recipient, &mail, deadline).await {
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
        if !still_waiting(store, run, step).await {
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
async fn still_waiting(store: &Store, run: &Run, step: &str) -> bool {
    match store.get_run(&run.id).await {
        Ok(Some(now)) => now
            .step(step)
            .is_some_and(|s| s.status == StepStatus::WaitingApproval),
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
    let transient = |e: crate::store::StoreError| MailError::Transient(e.to_string());
    if store
        .approval_mailed(&run.id, step, recipient, deadline)
        .await
        .map_err(transient)?
    {
        return Ok(());
    }
    let approve = new_token();
    let reject = new_token();
    store
        .store_approval_links(NewApprovalLinks {
            run_id: run.id.clone(),
            step: step.to_string(),
            recipient: recipient.to_string(),
            subject: mail.subject.clone(),
            body: mail.body.clone(),
            expires_at: deadline,
            links: vec![
                (token_hash(&approve), Decision::Approved),
                (token_hash(&reject), Decision::Rejected),
            ],
        })
        .await
        .map_err(transient)?;
    let approve_url = format!("{}/approvals/{approve}", ctx.public_url);
    let reject_url = format!("{}/approvals/{reject}", ctx.public_url);
    let page = minijinja::context! {
        subject => &mail.subject,
        body => &mail.body,
        workflow => &run.workflow,
        run_id => &run.id,
        step => step,
        approve => &approve_url,
        reject => &reject_url,
        deadline => deadline.format("%Y-%m-%d %H:%M").to_string(),
    };
    let out = Outgoing {
        to: vec![recipient.to_string()],
        subject: mail.subject.clone(),
        text: render("approval_email.txt", page.clone()) + "\n",
        html: Some(render("approval_email.html", page)),
        tag: format!("{}-{step}", run.id),
    };
    let where_to = ctx
        .mailer
        .send(&out, APPROVAL_SEND_LIMIT, APPROVAL_SEND_LIMIT)
        .await?;
    store
        .mark_approval_mailed(&run.id, step, recipient)
        .await
        .map_err(transient)?;
    if ctx.mailer.is_outbox() {
        info!(run_id = %run.id, step, recipient, approve = %approve_url, reject = %reject_url, "approval requested ({where_to}); open a link to decide");
    } else {
        info!(run_id = %run.id, step, recipient, "approval e-mail {where_to}");
    }
    Ok(())
}

/// The approval e-mail's text and HTML, from templates: the HTML one escapes every value (a
/// subject or body holds what templates rendered, from inputs and responses).
fn render(name: &str, ctx: minijinja::Value) -> String {
    static ENV: OnceLock<minijinja::Environment<'static>> = OnceLock::new();
    let env = ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                minijinja::AutoEscape::Html
            } else {
                minijinja::AutoEscape::None
            }
        });
        env.add_template(
            "approval_email.html",
            include_str!("templates/approval_email.html"),
        )
        .expect("the approval e-mail template parses");
        env.add_template(
            "approval_email.txt",
            include_str!("templates/approval_email.txt"),
        )
        .expect("the approval e-mail template parses");
        env
    });
    env.get_template(name)
        .and_then(|t| t.render(ctx))
        .expect("the approval e-mail templates render with their fixed context")
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
