//! Approval links from the e-mail: what a link can still do, and deciding through one.
//!
//! A link is a capability bound to one run, step, recipient and decision; it works while the
//! step waits for the deadline it was mailed with. Opening it changes nothing.

use crate::dispatch::approval_mail::token_hash;
use crate::engine::{Event, Run, StepStatus};
use crate::runtime::Executor;
use crate::store::{ApprovalLink, StoreError};
use crate::workflow::output::ApprovalOutput;
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// Why a link cannot decide (any more).
#[derive(Debug)]
pub enum Refused {
    /// Unknown, forged or truncated: the same answer whatever it looks like.
    NotFound,
    /// The step was decided (by this link, another one, or the API).
    Decided {
        run: Arc<Run>,
        step: String,
        decided: ApprovalOutput,
    },
    /// The step no longer waits (failed, cancelled, skipped) and was not decided.
    NotWaiting {
        run: Arc<Run>,
        step: String,
        status: StepStatus,
    },
    /// A link of an earlier round of this step (it was retried, which mails new links).
    Replaced {
        run: Arc<Run>,
        step: String,
    },
    Expired {
        at: DateTime<Utc>,
    },
    Store(StoreError),
}

/// A link that can decide, with its run.
#[derive(Debug)]
pub struct Open {
    pub link: ApprovalLink,
    pub run: Arc<Run>,
}

/// What the link `token` can do now.
pub async fn open(exec: &Executor, token: &str, now: DateTime<Utc>) -> Result<Open, Refused> {
    if token.len() > 100 {
        return Err(Refused::NotFound);
    }
    let store = exec.store();
    let link = match store.approval_link(&token_hash(token)).await {
        Ok(Some(link)) => link,
        Ok(None) => return Err(Refused::NotFound),
        Err(e) => return Err(Refused::Store(e)),
    };
    let run = match store.get_run(&link.run_id).await {
        Ok(Some(run)) => Arc::new(run),
        Ok(None) => return Err(Refused::NotFound),
        Err(e) => return Err(Refused::Store(e)),
    };
    check(&run, &link, now)?;
    Ok(Open { link, run })
}

fn check(run: &Arc<Run>, link: &ApprovalLink, now: DateTime<Utc>) -> Result<(), Refused> {
    let Some(step) = run.step(&link.step) else {
        return Err(Refused::NotFound);
    };
    if step.status != StepStatus::WaitingApproval {
        return Err(refused_for(run.clone(), &link.step));
    }
    if step
        .wake_at
        .is_some_and(|d| d.timestamp_millis() != link.expires_at.timestamp_millis())
    {
        return Err(Refused::Replaced {
            run: run.clone(),
            step: link.step.clone(),
        });
    }
    if now >= link.expires_at {
        return Err(Refused::Expired {
            at: link.expires_at,
        });
    }
    Ok(())
}

/// Why a step that no longer waits refuses a decision.
fn refused_for(run: Arc<Run>, step_id: &str) -> Refused {
    let step = run.step(step_id);
    let status = step.map_or(StepStatus::Pending, |s| s.status);
    match step
        .and_then(|s| s.output.as_ref())
        .and_then(ApprovalOutput::from_value)
    {
        Some(decided) => Refused::Decided {
            step: step_id.to_string(),
            run,
            decided,
        },
        None => Refused::NotWaiting {
            step: step_id.to_string(),
            run,
            status,
        },
    }
}

/// The decision made through a link.
#[derive(Debug)]
pub struct Decided {
    pub run: Arc<Run>,
    pub link: ApprovalLink,
    /// Who decided: the recipient's bare address (templates compare addresses).
    pub approver: String,
}

/// Decides through the link `token`, with an optional comment. Two clicks at once (on any
/// node) make one decision: the other is told the step was decided.
pub async fn submit(
    exec: &Executor,
    token: &str,
    comment: Option<String>,
    now: DateTime<Utc>,
) -> Result<Decided, Refused> {
    let Open { link, .. } = open(exec, token, now).await?;
    // `Ed <ed@example.com>` decides as `ed@example.com`: templates compare addresses.
    let approver = crate::workflow::address::bare_address(&link.recipient);
    let event = Event::ApprovalDecided {
        step: link.step.clone(),
        decision: link.decision,
        approver: approver.clone(),
        comment,
    };
    let applied = exec
        .apply(&link.run_id, event)
        .await
        .map_err(Refused::Store)?;
    if applied.absorbed {
        return Err(refused_for(applied.run, &link.step));
    }
    if let Err(e) = exec.store().use_approval_link(&token_hash(token)).await {
        tracing::warn!(run_id = %link.run_id, error = %e, "cannot mark an approval link used");
    }
    Ok(Decided {
        run: applied.run,
        link,
        approver,
    })
}
