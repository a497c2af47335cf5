//! Effects: orders in the imperative that the machine returns with a run's new state; the shell
//! performs them after commit.
//!
//! Part of the pure core: no I/O.

use super::run::RunStatus;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Effect {
    /// Send attempt `attempt` of an `http` step (of one of its items, for a `foreach` step).
    CallHttp {
        step: String,
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<u32>,
    },
    /// Send attempt `attempt` of an `email` step (of one of its items).
    SendEmail {
        step: String,
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<u32>,
    },
    /// Mail the approval links of an `approval` step; they expire at `deadline`.
    RequestApproval {
        step: String,
        deadline: DateTime<Utc>,
    },
    /// Start the run of a `call` step (attempt `attempt`), unless it was started before.
    StartChild { step: String, attempt: u32 },
    /// Tell the `call` step that started this run how it ended.
    ReportToParent {
        parent: super::run::ParentRef,
        status: RunStatus,
        output: Option<serde_json::Value>,
        error: Option<String>,
    },
    /// Cancel the run a `call` step started (the step stopped: its run was cancelled or failed).
    CancelChild { run_id: String, reason: String },
    /// Abandon whatever is in flight for this run (it was cancelled).
    AbandonInFlight,
    /// The run reached a terminal status (wake whoever waits for it).
    Finished { status: RunStatus },
    /// Store orders, written by the store in the change's own transaction and never performed:
    /// a `foreach` step's items as its list rendered (each with its key and value),
    SaveItems { step: String, items: Vec<NewItem> },
    /// one item that ended, with its result,
    ItemDone { step: String, item: ItemResult },
    /// and, once every item ended, their results read back as `Event::ItemsCollected`;
    CollectItems { step: String },
    /// a wait for an event (a `wait_for_event` step, or a `cancel_on` entry): kept for `POST
    /// /api/v1/events` to find, and answered at once, as `Event::EventReceived`, by an event
    /// that arrived since the run was created (lookback);
    AwaitEvent {
        step: String,
        event: String,
        key: String,
    },
    /// and the end of one.
    EndAwait { step: String },
}

/// An item of a `foreach` step, as its list rendered when the step started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewItem {
    pub index: u32,
    pub key: String,
    pub value: serde_json::Value,
}

/// How one item of a `foreach` step ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    pub index: u32,
    /// `succeeded` or `failed`.
    pub status: String,
    pub attempts: u32,
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
}

impl Effect {
    /// Effects that touch the outside world are kept in the outbox until done.
    /// Orders the store carries out inside the change's transaction.
    pub fn is_store(&self) -> bool {
        matches!(
            self,
            Effect::SaveItems { .. }
                | Effect::ItemDone { .. }
                | Effect::CollectItems { .. }
                | Effect::AwaitEvent { .. }
                | Effect::EndAwait { .. }
        )
    }

    /// Effects a run's end does not void: telling the run that called it, stopping the run it
    /// called (performed even after a restart finds the run finished).
    pub fn outlives_run(&self) -> bool {
        matches!(
            self,
            Effect::ReportToParent { .. } | Effect::CancelChild { .. }
        )
    }

    pub fn is_external(&self) -> bool {
        matches!(
            self,
            Effect::CallHttp { .. }
                | Effect::SendEmail { .. }
                | Effect::RequestApproval { .. }
                | Effect::StartChild { .. }
                | Effect::ReportToParent { .. }
                | Effect::CancelChild { .. }
        )
    }
}
