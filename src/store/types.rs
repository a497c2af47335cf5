//! The values that cross the store's door: what a change stores and answers, and the rows the
//! readers get back. Backend-neutral: no SQL here.

pub use crate::engine::AttemptResult;
use crate::engine::{Effect, NewRun, Run, RunStatus, Trigger};
use crate::time::rfc3339;
use crate::workflow::{Decision, Workflow};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// What an attempt sent and got, stored beside the event it produced (secrets redacted).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AttemptRecord {
    pub step: String,
    pub attempt: u32,
    /// The item of a `foreach` step this attempt was for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
    /// The deduplication id the attempt carried, when the step chose its own (`dedup_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_id: Option<String>,
    #[serde(serialize_with = "rfc3339::option")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339::option")]
    pub finished_at: Option<DateTime<Utc>>,
    pub status: Option<u16>,
    pub outcome: AttemptResult,
    pub error: Option<String>,
    pub request: Option<serde_json::Value>,
    pub response: Option<serde_json::Value>,
}

/// One approval e-mail: to whom, for which step and deadline, and when it was delivered.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalEmail {
    pub step: String,
    pub recipient: String,
    /// When the SMTP server (or the outbox folder) took it; None while delivery is retried.
    #[serde(serialize_with = "rfc3339::option")]
    pub mailed_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339::one")]
    pub expires_at: DateTime<Utc>,
}

/// What an approval link knows, read back by the hash of its token.
#[derive(Debug, Clone)]
pub struct ApprovalLink {
    pub run_id: String,
    pub step: String,
    pub recipient: String,
    pub decision: Decision,
    pub subject: String,
    pub body: String,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
}

/// The two links of one approval e-mail, stored before it is sent.
#[derive(Debug, Clone)]
pub struct NewApprovalLinks {
    pub run_id: String,
    pub step: String,
    pub recipient: String,
    pub subject: String,
    pub body: String,
    pub expires_at: DateTime<Utc>,
    /// (hash of the token, the decision it makes)
    pub links: Vec<(String, Decision)>,
}

/// A workflow as loaded from a file: what a run pins when it starts.
#[derive(Debug, Clone)]
pub struct Version {
    pub hash: String,
    pub path: String,
    pub source: String,
    pub workflow: Arc<Workflow>,
}

impl Version {
    pub fn new(path: &str, source: &str, workflow: Workflow) -> Version {
        Version {
            hash: version_hash(source),
            path: path.to_string(),
            source: source.to_string(),
            workflow: Arc::new(workflow),
        }
    }
}

/// The content hash that names a workflow version.
pub fn version_hash(source: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(source.as_bytes());
    d.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Workflow versions by hash, parsed once.
#[derive(Default, Clone)]
pub struct Versions(Arc<RwLock<HashMap<String, Arc<Workflow>>>>);

impl Versions {
    pub fn get(&self, hash: &str) -> Option<Arc<Workflow>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .cloned()
    }
    pub fn insert(&self, hash: &str, wf: Arc<Workflow>) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash.to_string(), wf);
    }
}

/// A run to create: its version, its shell-chosen parts, and how it starts.
#[derive(Debug, Clone)]
pub struct NewRunRequest {
    pub version: Version,
    pub new: NewRun,
    /// A start with a key used before for this workflow answers that run instead.
    pub idempotency_key: Option<String>,
    /// Claimed in the same transaction; if it was claimed before, nothing is created.
    pub slot: Option<SlotClaim>,
    /// False: the run is created `pending` (queued behind others) and started later.
    pub start: bool,
    /// The workflow's `concurrency.key` rendered for this run (`Run::render_concurrency_key`).
    pub concurrency_key: Option<String>,
    /// The `call` step that starts it.
    pub parent: Option<crate::engine::ParentRef>,
}

/// The outcome of one state change: the new run and the effects to perform, each with its
/// outbox row id when it is external.
#[derive(Debug, Clone)]
pub struct Applied {
    pub run: Arc<Run>,
    pub effects: Vec<(Option<i64>, Effect)>,
    /// A start: false when an idempotency key found an existing run (or the slot was taken).
    pub created: bool,
    /// A start: true when the slot had already been handled, so nothing was created.
    pub slot_taken: bool,
    /// An event: true when the run did not take it (late, duplicate, or not applicable in the
    /// state the run was in when the transaction read it). This is the answer to "did my
    /// cancel / decision count", decided inside the transaction, across processes.
    pub absorbed: bool,
    /// A start with `concurrency.on_limit: cancel_running`: the runs with its key that were
    /// going, for the caller to cancel.
    pub displaced: Vec<String>,
}

/// A schedule slot claimed in the same transaction that creates its run: the unique key
/// (schedule, slot) makes every slot fire at most once, across restarts and reloads.
#[derive(Debug, Clone)]
pub struct SlotClaim {
    pub schedule: String,
    pub slot: String,
    pub at: DateTime<Utc>,
}

/// A pending outbox row, read back after a restart.
#[derive(Debug, Clone)]
pub struct PendingEffect {
    pub id: i64,
    pub run_id: String,
    pub effect: Effect,
    /// A stopping process gave it back without having started it.
    pub fresh: bool,
}

/// One stored event, for `runner show`.
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub seq: i64,
    #[serde(serialize_with = "rfc3339::one")]
    pub at: DateTime<Utc>,
    pub kind: String,
    pub data: serde_json::Value,
}

/// Filters for listing runs.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub workflow: Option<String>,
    pub status: Option<RunStatus>,
    /// The runs of one schedule, by its public id (`schedule::id`).
    pub schedule: Option<String>,
    pub limit: usize,
    /// Only runs created before this one (keyset pagination: the last id of a page).
    pub before: Option<String>,
    /// Only failed runs not taken out of the QStash API's dead-letter queue.
    pub in_dlq: bool,
}

/// A row of `runner runs`.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub id: String,
    pub workflow: String,
    pub status: RunStatus,
    pub trigger: Trigger,
    /// The public id of the schedule that started it (`schedule::id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
    #[serde(serialize_with = "rfc3339::one")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339::option")]
    pub finished_at: Option<DateTime<Utc>>,
}

/// A programmatic schedule as stored (`PUT /api/v1/schedules/{id}`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ApiSchedule {
    pub id: String,
    pub workflow: String,
    pub cron: String,
    pub timezone: Option<String>,
    pub input: serde_json::Value,
    pub paused: bool,
    #[serde(serialize_with = "rfc3339::one")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339::one")]
    pub updated_at: DateTime<Utc>,
}

/// The fields of a programmatic schedule a client sets.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSpec {
    pub id: String,
    pub workflow: String,
    pub cron: String,
    pub timezone: Option<String>,
    pub input: serde_json::Value,
    pub paused: bool,
}

impl ApiSchedule {
    pub fn spec(&self) -> ScheduleSpec {
        ScheduleSpec {
            id: self.id.clone(),
            workflow: self.workflow.clone(),
            cron: self.cron.clone(),
            timezone: self.timezone.clone(),
            input: self.input.clone(),
            paused: self.paused,
        }
    }
}

/// A workflow file's version in force, to remember (or, `None`, to forget: the file is gone).
pub type ActiveFile = (String, Option<Version>);

/// One item of a `foreach` step as stored: its key and value, and its result once it ended.
#[derive(Debug, Clone, Serialize)]
pub struct ItemRow {
    pub index: u32,
    pub key: String,
    #[serde(skip)]
    pub value: serde_json::Value,
    /// `pending` (not ended), `succeeded`, `failed`, `cancelled`.
    pub status: String,
    pub attempts: u32,
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
    #[serde(serialize_with = "rfc3339::option")]
    pub finished_at: Option<DateTime<Utc>>,
}

impl ItemRow {
    /// What later templates see of it (`steps.<id>.items[i]`): an item that did not end was
    /// not started (`skipped`).
    pub fn into_output(self) -> crate::workflow::output::ItemOutput {
        let (body, headers) = match &self.output {
            Some(o) if o.get("status").is_some() && o.get("body").is_some() => (
                o.get("body").cloned().unwrap_or_default(),
                o.get("headers").cloned().unwrap_or_default(),
            ),
            Some(o) => (o.clone(), serde_json::Value::Null),
            None => (serde_json::Value::Null, serde_json::Value::Null),
        };
        let status = if self.status == "pending" {
            "skipped".to_string()
        } else {
            self.status
        };
        crate::workflow::output::ItemOutput {
            key: self.key,
            status,
            body,
            headers,
            error: self.error,
            attempts: Some(self.attempts),
        }
    }
}

/// An event sent to runner (`POST /api/v1/events/{event}`), to record.
#[derive(Debug, Clone)]
pub struct NewInboundEvent {
    pub name: String,
    /// The sender's id (a retried send carries the same), or one runner chose.
    pub id: String,
    pub key: String,
    pub data: serde_json::Value,
}

/// An event as stored.
#[derive(Debug, Clone, Serialize)]
pub struct InboundEvent {
    #[serde(skip)]
    pub seq: i64,
    pub name: String,
    pub id: String,
    pub key: String,
    pub data: serde_json::Value,
    #[serde(serialize_with = "rfc3339::one")]
    pub received_at: DateTime<Utc>,
    /// The runs it reached, once its delivery ended.
    pub delivered: Option<Vec<String>>,
}

/// A recorded event, and whether it had been recorded before (the same name and id).
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    pub event: InboundEvent,
    pub duplicate: bool,
}

/// A run waiting for an event: a `wait_for_event` step, or a `cancel_on` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventWait {
    pub run_id: String,
    pub step: String,
}

/// A call with a flow-control key asking to start: its outbox row, key and limits.
#[derive(Debug, Clone)]
pub struct FlowAsk {
    pub run_id: String,
    pub effect_id: i64,
    pub key: String,
    pub limits: crate::flow::Limits,
}

/// The store's answer to a [`FlowAsk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowAnswer {
    /// It may start (its row now counts as in flight until the effect's row goes).
    Admitted,
    /// Not yet: ask again then (`At`), or when a call of the key ends. `since` is when the call
    /// first asked (milliseconds), its place in the key's line with its run and outbox id.
    Wait {
        admission: crate::flow::Admission,
        since: i64,
    },
    /// The effect's row is gone (its run was cancelled or finished): do not send it.
    Gone,
}

/// A flow-control key, as `GET /api/v1/flow-control` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct FlowKeyRow {
    pub key: String,
    pub parallelism: Option<u32>,
    pub rate: Option<u32>,
    /// The period of `rate`, in milliseconds.
    pub period_ms: i64,
    pub in_flight: i64,
    pub waiting: i64,
    /// Calls started within the last period.
    pub started_in_period: i64,
    /// A 429 or 503 with `Retry-After` closed the key until then.
    #[serde(serialize_with = "rfc3339::option")]
    pub closed_until: Option<DateTime<Utc>>,
}

/// A YAML schedule to pause or resume: its workflow, what it is (`Schedule::signature`), and
/// the scheduler's key for its place in the file (whose mark a resume moves).
#[derive(Debug, Clone, Copy)]
pub struct YamlPause<'a> {
    pub workflow: &'a str,
    pub signature: &'a str,
    pub key: &'a str,
}

/// Which finished runs a prune takes (`runner prune`, the daemon's retention).
#[derive(Debug, Clone, Default)]
pub struct PruneQuery {
    /// Finished before this.
    pub finished_before: Option<DateTime<Utc>>,
    /// Of this workflow only.
    pub workflow: Option<String>,
    /// Not of these workflows (they have a retention of their own).
    pub except: Vec<String>,
    /// Beyond the newest this many finished runs of `workflow`.
    pub keep_newest: Option<u32>,
}
