//! What a finished step shows later templates as `steps.<id>`, one struct per step kind. The
//! engine builds them; the checker's list of fields a kind produces (`produced_fields`) is made
//! of their `FIELDS`, so a renamed field is a change in one place.
//!
//! Part of the pure core: no I/O.

use super::model::Decision;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An `http` step: the answer of its successful attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpOutput {
    pub status: u16,
    pub headers: serde_json::Map<String, Value>,
    /// Parsed JSON when the response is JSON, else the text.
    pub body: Value,
}

impl HttpOutput {
    pub const FIELDS: &'static [&'static str] = &["status", "headers", "body"];
}

/// An `approval` step: who decided what, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalOutput {
    pub decision: Decision,
    pub approver: String,
    pub comment: Option<String>,
    /// RFC 3339, whole seconds.
    pub decided_at: String,
}

impl ApprovalOutput {
    pub const FIELDS: &'static [&'static str] = &["decision", "approver", "comment", "decided_at"];

    /// Read back from a step's stored output.
    pub fn from_value(v: &Value) -> Option<ApprovalOutput> {
        serde_json::from_value(v.clone()).ok()
    }

    /// `approved by ed@example.com at 2026-03-02T10:00:00Z`
    pub fn describe(&self) -> String {
        format!(
            "{} by {} at {}",
            self.decision.as_str(),
            self.approver,
            self.decided_at
        )
    }
}

/// A `sleep` or `sleep_until` step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SleepOutput {
    /// RFC 3339, whole seconds.
    pub woke_at: String,
}

impl SleepOutput {
    pub const FIELDS: &'static [&'static str] = &["woke_at"];
}

/// An `email` step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailOutput {
    pub sent_to: Vec<String>,
}

impl EmailOutput {
    pub const FIELDS: &'static [&'static str] = &["sent_to"];
}

/// A `wait_for_event` step: the event it received, or that it timed out (`on_timeout:
/// continue`; then `data` and `received_at` are null).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventOutput {
    pub data: Value,
    /// The event's id (the sender's, or the one runner gave it).
    pub id: Option<String>,
    /// RFC 3339 with milliseconds.
    pub received_at: Option<String>,
    pub timed_out: bool,
}

impl EventOutput {
    pub const FIELDS: &'static [&'static str] = &["data", "id", "received_at", "timed_out"];
}

/// A `call` step: the run it started, how that run ended, and its result (the called
/// workflow's `output:`, null when it has none or did not succeed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallOutput {
    pub run_id: Option<String>,
    pub status: String,
    pub output: Value,
}

impl CallOutput {
    pub const FIELDS: &'static [&'static str] = &["run_id", "status", "output"];
}

/// Any output as the JSON value a run's state keeps.
pub fn to_value<T: Serialize>(output: &T) -> Value {
    serde_json::to_value(output).expect("a step output serializes")
}

/// A `foreach` step: every item's result, in item order, and the counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FanOutput {
    pub items: Vec<ItemOutput>,
    pub total: u32,
    pub succeeded: u32,
    pub failed: u32,
    /// Items whose `body` and `headers` are left out (null) because the items' bodies came to
    /// more than [`MAX_ITEMS_OUTPUT_BYTES`] (the run's state carries this output from then on).
    pub bodies_omitted: u32,
}

/// How much of a fan-out's item bodies its output keeps (`steps.<id>.items[i].body`).
pub const MAX_ITEMS_OUTPUT_BYTES: usize = 8 * 1024 * 1024;

impl FanOutput {
    pub const FIELDS: &'static [&'static str] =
        &["items", "total", "succeeded", "failed", "bodies_omitted"];
}

/// One item of a `foreach` step, as `steps.<id>.items[i]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemOutput {
    pub key: String,
    /// `succeeded`, `failed`, `cancelled` (in flight when the run ended), or `skipped` (not
    /// started: an earlier item failed with `fail_fast`, or the run ended first).
    pub status: String,
    pub body: Value,
    pub headers: Value,
    pub error: Option<String>,
    /// Attempts made (0 for an item not started).
    #[serde(default)]
    pub attempts: Option<u32>,
}
