//! runner: declarative, self-hosted durable workflows.
//!
//! The pure core (no I/O): [`workflow`], [`cron`], [`sign`], [`backoff`], [`engine::machine`].
//! The I/O shell: [`store`], [`dispatch`], [`cli`].

pub mod backoff;
pub mod cli;
pub mod cron;
pub mod engine;
pub mod sign;
pub mod workflow;
