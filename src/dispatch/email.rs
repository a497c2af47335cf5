//! `email` steps and `on_failure` e-mail hooks: [`EmailPerformer`] performs `SendEmail`.
//!
//! I/O shell (SMTP or the outbox folder, through `mail`).

use super::mail::{MailError, Mailer, Outgoing};
use crate::engine::request;
use crate::engine::{AttemptResult, Effect, Event, Outcome, Run};
use crate::runtime::{Job, Perform, Performed};
use crate::store::AttemptRecord;
use crate::workflow::Workflow;
use chrono::Utc;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tracing::info;

/// How long an e-mail may take when its step has no `timeout` of its own (a hook).
pub(super) const SEND_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Mail settings shared by the e-mail and approval performers.
pub struct MailContext {
    pub mailer: Mailer,
    /// Base of the approval links, e.g. `https://runner.example.com`.
    pub public_url: String,
}

/// Performs `SendEmail`: one attempt of an `email` step (or hook).
pub struct EmailPerformer(pub Arc<MailContext>);

impl Perform for EmailPerformer {
    fn perform(&self, job: Job) -> Pin<Box<dyn Future<Output = Performed> + Send + 'static>> {
        let ctx = self.0.clone();
        Box::pin(async move {
            let Effect::SendEmail { step, attempt, .. } = &job.effect else {
                unreachable!("the executor hands the e-mail performer only SendEmail effects")
            };
            let (event, record) = send(
                &ctx,
                &job.workflow,
                &job.run,
                step,
                *attempt,
                job.item.as_ref(),
            )
            .await;
            Performed::Outcome {
                event,
                record: Some(Box::new(record)),
            }
        })
    }
}

/// One attempt of an `email` step, and its record for `runner show` (recipients and subject,
/// secrets redacted, the outcome and error; the body is not kept).
async fn send(
    ctx: &MailContext,
    wf: &Arc<Workflow>,
    run: &Arc<Run>,
    step: &str,
    attempt: u32,
    item: Option<&request::ItemInput>,
) -> (Event, AttemptRecord) {
    let index = item.map(|i| i.index);
    let mut record = AttemptRecord {
        step: step.to_string(),
        attempt,
        item: index,
        started_at: Some(Utc::now()),
        ..AttemptRecord::default()
    };
    let mut secrets = serde_json::Map::new();
    let result = async {
        secrets = super::http::secrets_for_step(wf, step).map_err(MailError::Permanent)?;
        // The step's `timeout` bounds the attempt, rendering included, as it does an HTTP call's.
        let limit = request::step_timeout(wf, step).unwrap_or(SEND_LIMIT);
        let render = {
            let (wf, run, step, secrets, item) = (
                wf.clone(),
                run.clone(),
                step.to_string(),
                secrets.clone(),
                item.cloned(),
            );
            move || request::render_mail(&wf, &run, &step, &secrets, item.as_ref())
        };
        let (mail, left) = super::render_within(wf, step, limit, render)
            .await
            .map_err(MailError::Permanent)?;
        record.request = Some(request::redact_value(
            serde_json::json!({ "to": mail.to, "subject": mail.subject }),
            &secrets,
        ));
        let out = Outgoing {
            to: mail.to.clone(),
            subject: mail.subject.clone(),
            text: mail.body.clone(),
            html: None,
            tag: match item {
                Some(i) => format!("{}-{step}-{}", run.id, i.index),
                None => format!("{}-{step}", run.id),
            },
        };
        let where_to = ctx.mailer.send(&out, left, limit).await?;
        info!(run_id = %run.id, step, "e-mail {where_to}");
        Ok::<_, MailError>(mail.to)
    }
    .await;
    record.finished_at = Some(Utc::now());
    let (error, outcome) = match result {
        Ok(to) => {
            record.outcome = AttemptResult::Succeeded;
            let event = Event::AttemptSucceeded {
                step: step.to_string(),
                attempt,
                output: crate::workflow::output::to_value(&crate::workflow::output::EmailOutput {
                    sent_to: to,
                }),
                item: index,
            };
            return (event, record);
        }
        Err(MailError::Permanent(e)) => (e, Outcome::Permanent),
        Err(MailError::Transient(e)) => (e, Outcome::Retryable { after: None }),
    };
    let error = request::redact(&error, &secrets);
    record.outcome = outcome.attempt_result(wf, run, step, index);
    record.error = Some(error.clone());
    let event = Event::AttemptFailed {
        step: step.to_string(),
        attempt,
        error,
        status: None,
        body: None,
        outcome,
        item: index,
    };
    (event, record)
}
