//! Running workflows: the pure state machine and request rendering (core), and the executor
//! that drives them against the store, HTTP and mail (shell).

pub mod executor;
pub mod machine;
#[cfg(test)]
mod machine_tests;
pub mod request;
pub mod trigger;
