//! Running workflows, the pure part: the run state machine and request rendering.
//!
//! Part of the pure core: no I/O. The state machine is `decide(workflow, run, event, now) ->
//! (run', effects)`: a run's state (`run`), the events it takes (`event`), the effects it orders
//! (`effect`), which steps start next (`plan`), and what templates see (`context`). The executor
//! that drives it against the store, HTTP and mail is `runtime`.

#[cfg(test)]
mod call_tests;
mod context;
mod decide;
mod effect;
mod event;
#[cfg(test)]
mod event_tests;
mod fan;
pub use fan::item_key;
pub use plan::call_input;
#[cfg(test)]
mod graph_tests;
#[cfg(test)]
mod machine_tests;
pub mod message;
mod plan;
pub mod request;
mod run;
pub mod run_key;

pub use context::context;
pub use decide::decide;
pub use effect::{Effect, ItemResult, NewItem};
pub use event::{AttemptResult, Event, Outcome, cancel_wait, is_cancel_wait};
pub use run::{
    Awaiting, ChildRef, Failure, Fan, Item, MAX_CALL_DEPTH, NewRun, ParentRef, Run, RunStatus,
    StepState, StepStatus, Trigger,
};

/// The run state machine's names in one place (`use crate::engine::*`).
pub mod machine {
    pub use super::{
        AttemptResult, Effect, Event, Failure, NewRun, Outcome, Run, RunStatus, StepState,
        StepStatus, Trigger, context, decide,
    };
}
