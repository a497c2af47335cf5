//! Running workflows, the pure part: the run state machine, request rendering, and the policy
//! for firing schedules.
//!
//! Part of the pure core: no I/O. The executor that drives the machine against the store, HTTP
//! and mail is `runtime`.

pub mod machine;
#[cfg(test)]
mod machine_tests;
pub mod request;
pub mod trigger;
