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
    /// Send attempt `attempt` of an `http` step.
    CallHttp { step: String, attempt: u32 },
    /// Send attempt `attempt` of an `email` step.
    SendEmail { step: String, attempt: u32 },
    /// Mail the approval links of an `approval` step; they expire at `deadline`.
    RequestApproval {
        step: String,
        deadline: DateTime<Utc>,
    },
    /// Abandon whatever is in flight for this run (it was cancelled).
    AbandonInFlight,
    /// The run reached a terminal status (wake whoever waits for it).
    Finished { status: RunStatus },
}

impl Effect {
    /// Effects that touch the outside world are kept in the outbox until done.
    pub fn is_external(&self) -> bool {
        matches!(
            self,
            Effect::CallHttp { .. } | Effect::SendEmail { .. } | Effect::RequestApproval { .. }
        )
    }
}
