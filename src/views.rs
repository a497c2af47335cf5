//! What people and clients see of a run: typed views serialized for the JSON API and
//! `runner show --json`, printed by the CLI, and rendered by the web pages. A renamed field is a
//! compile error here, not a silent `null` in one of the front ends.
//!
//! I/O shell only in [`RunView::load`] (it reads the attempts and approval e-mails); building a
//! view from its parts is pure.

use crate::engine::request;
use crate::engine::{Failure, Run, RunStatus, StepState, StepStatus, Trigger};
use crate::store::{ApprovalEmail, AttemptRecord, AttemptResult, ItemRow, Store, StoreError};
use crate::time::rfc3339;
use crate::workflow::{Join, StepKindName, Workflow};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunView {
    pub id: String,
    pub workflow: String,
    pub version: String,
    pub status: RunStatus,
    pub trigger: Trigger,
    pub input: Value,
    #[serde(serialize_with = "rfc3339::option")]
    pub scheduled_for: Option<DateTime<Utc>>,
    /// The schedule that started it (its `Upstash-Schedule-Id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
    /// Its workflow's `concurrency.key`, rendered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    #[serde(serialize_with = "rfc3339::one")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339::option")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339::option")]
    pub finished_at: Option<DateTime<Utc>>,
    /// A sentence: what the run waits for now (None once it finished).
    pub waiting_for: Option<String>,
    #[serde(serialize_with = "rfc3339::option")]
    pub wake_at: Option<DateTime<Utc>>,
    pub failure: Option<Failure>,
    /// Why it was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// The workflow's `output:`, rendered when the run succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The `call` step that started it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<crate::engine::ParentRef>,
    pub steps: Vec<StepView>,
    pub on_failure: Vec<StepView>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct StepView {
    pub id: String,
    pub kind: StepKindName,
    pub status: StepStatus,
    pub attempts: u32,
    #[serde(serialize_with = "rfc3339::option")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339::option")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339::option")]
    pub wake_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub output: Option<Value>,
    /// The `Upstash-Message-Id` its attempts carry.
    pub dedup_id: String,
    /// The steps it waits for (`needs`) and its join; hooks run in order and have none.
    pub needs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<Join>,
    /// A pending step: the steps it needs that have not finished yet.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
    pub attempt_log: Vec<AttemptView>,
    /// A `foreach` step: its items done, in flight, waiting and failed, and each item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<FanView>,
    /// An approval step: whom it asked, and whether each e-mail got out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emails: Option<Vec<EmailView>>,
    /// A `wait_for_event` step while it waits: the event's name and key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub awaiting: Option<crate::engine::Awaiting>,
    /// A `call` step: the run it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child_run: Option<String>,
}

/// A `foreach` step's items.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FanView {
    pub total: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub in_flight: u32,
    pub waiting: u32,
    pub list: Vec<ItemView>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ItemView {
    pub index: u32,
    pub key: String,
    /// `pending` (waiting, or in flight: see `attempts`), `running`, `retrying`, `succeeded`,
    /// `failed`, `cancelled`.
    pub status: String,
    pub attempts: u32,
    /// The `Upstash-Message-Id` its attempts carry.
    pub dedup_id: String,
    #[serde(serialize_with = "rfc3339::option")]
    pub wake_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub attempt_log: Vec<AttemptView>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct AttemptView {
    pub attempt: u32,
    #[serde(serialize_with = "rfc3339::option")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339::option")]
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub status: Option<u16>,
    pub outcome: AttemptResult,
    pub error: Option<String>,
    pub request: Option<Value>,
    pub response: Option<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct EmailView {
    pub to: String,
    /// When the SMTP server (or the outbox folder) took it; None while delivery is retried.
    #[serde(serialize_with = "rfc3339::option")]
    pub sent_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339::one")]
    pub expires_at: DateTime<Utc>,
    /// Mailed for the step's current deadline (a retried step mails new links).
    pub current: bool,
}

impl AttemptView {
    fn new(a: &AttemptRecord) -> AttemptView {
        AttemptView {
            attempt: a.attempt,
            started_at: a.started_at,
            finished_at: a.finished_at,
            duration_ms: match (a.started_at, a.finished_at) {
                (Some(x), Some(y)) => Some((y - x).num_milliseconds()),
                _ => None,
            },
            status: a.status,
            outcome: a.outcome,
            error: a.error.clone(),
            request: a.request.clone(),
            response: a.response.clone(),
        }
    }
}

impl RunView {
    /// Reads what the view needs beside the run (its attempts, and its approval e-mails when it
    /// has an approval step).
    pub(crate) async fn load(store: &Store, run: &Run) -> Result<RunView, StoreError> {
        let attempts = store.attempts(&run.id).await?;
        let emails = if run.steps.iter().any(|s| s.kind == StepKindName::Approval) {
            store.approval_emails(&run.id).await?
        } else {
            Vec::new()
        };
        // Without its version (a database from elsewhere) the view still shows the run.
        let wf = store.workflow_for(run).await.ok();
        let mut items = HashMap::new();
        for s in run.steps.iter().filter(|s| s.fan.is_some()) {
            items.insert(s.id.clone(), store.items(&run.id, &s.id).await?);
        }
        Ok(RunView::new(run, wf.as_deref(), &attempts, &emails, &items))
    }

    pub(crate) fn new(
        run: &Run,
        wf: Option<&Workflow>,
        attempts: &[AttemptRecord],
        emails: &[ApprovalEmail],
        items: &HashMap<String, Vec<ItemRow>>,
    ) -> RunView {
        let fan = |s: &StepState| -> Option<FanView> {
            let f = s.fan.as_ref()?;
            let rows = items.get(&s.id).map(Vec::as_slice).unwrap_or(&[]);
            let list = rows
                .iter()
                .map(|r| {
                    let active = f.active.iter().find(|a| a.index == r.index);
                    ItemView {
                        index: r.index,
                        key: r.key.clone(),
                        status: match active {
                            Some(a) => a.status.as_str().to_string(),
                            None => r.status.clone(),
                        },
                        attempts: active.map_or(r.attempts, |a| a.attempts),
                        dedup_id: attempts
                            .iter()
                            .rev()
                            .find(|a| a.step == s.id && a.item == Some(r.index))
                            .and_then(|a| a.dedup_id.clone())
                            .unwrap_or_else(|| request::item_message_id(run, &s.id, &r.key, 1).0),
                        wake_at: active.and_then(|a| a.wake_at),
                        error: active.and_then(|a| a.error.clone()).or(r.error.clone()),
                        attempt_log: attempts
                            .iter()
                            .filter(|a| a.step == s.id && a.item == Some(r.index))
                            .map(AttemptView::new)
                            .collect(),
                    }
                })
                .collect();
            Some(FanView {
                total: f.total,
                succeeded: f.succeeded,
                failed: f.failed,
                in_flight: u32::try_from(f.active.len()).unwrap_or(u32::MAX),
                waiting: if s.status.is_done() { 0 } else { f.waiting() },
                list,
            })
        };
        let def = |id: &str| wf.and_then(|w| w.steps.iter().find(|d| d.id == id));
        let step = |s: &StepState| StepView {
            id: s.id.clone(),
            kind: s.kind,
            status: s.status,
            attempts: s.attempts,
            started_at: s.started_at,
            finished_at: s.finished_at,
            wake_at: s.wake_at,
            error: s.error.clone(),
            output: s.output.clone(),
            // The step's own `dedup_id` as its last attempt rendered it, else runner's.
            dedup_id: attempts
                .iter()
                .rev()
                .find(|a| a.step == s.id && a.item.is_none() && a.dedup_id.is_some())
                .and_then(|a| a.dedup_id.clone())
                .unwrap_or_else(|| request::message_id(run, &s.id, s.attempts.max(1)).0),
            needs: def(&s.id).map(|d| d.needs.clone()).unwrap_or_default(),
            when: def(&s.id).map(|d| d.when),
            waiting_for: match (s.status, def(&s.id)) {
                (StepStatus::Pending, Some(d)) if !run.status.is_terminal() => d
                    .needs
                    .iter()
                    .filter(|n| run.step(n).is_some_and(|n| !n.status.is_done()))
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            },
            attempt_log: attempts
                .iter()
                .filter(|a| a.step == s.id && a.item.is_none())
                .map(AttemptView::new)
                .collect(),
            items: fan(s),
            emails: (s.kind == StepKindName::Approval).then(|| {
                emails
                    .iter()
                    .filter(|e| e.step == s.id)
                    .map(|e| EmailView {
                        to: e.recipient.clone(),
                        sent_at: e.mailed_at,
                        expires_at: e.expires_at,
                        current: s.wake_at.map(|w| w.timestamp_millis())
                            == Some(e.expires_at.timestamp_millis()),
                    })
                    .collect()
            }),
            awaiting: s.awaiting.clone(),
            child_run: s.child.as_ref().map(|c| c.run_id.clone()),
        };
        RunView {
            id: run.id.clone(),
            workflow: run.workflow.clone(),
            version: run.version.clone(),
            status: run.status,
            trigger: run.trigger,
            input: run.input.clone(),
            scheduled_for: run.scheduled_for,
            schedule_id: run.schedule_id.clone(),
            concurrency_key: run.concurrency_key.clone(),
            created_at: run.created_at,
            started_at: run.started_at,
            finished_at: run.finished_at,
            waiting_for: run.waiting_for(),
            wake_at: run.wake_at,
            failure: run.failure.clone(),
            cancel_reason: run.cancel_reason.clone(),
            output: run.output.clone(),
            parent: run.parent.clone(),
            steps: run.steps.iter().map(step).collect(),
            on_failure: run.hooks.iter().map(step).collect(),
        }
    }
}
