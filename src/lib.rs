//! runner: declarative, self-hosted durable workflows.
//!
//! The pure core (no I/O): [`workflow`], [`schedule`], [`sign`], [`backoff`], [`time`],
//! [`flow`], [`engine`].
//! The I/O shell: [`store`], [`runtime`], [`dispatch`], [`ops`], [`views`], [`web`],
//! [`sources`], [`daemon`], [`cli`].

pub(crate) mod backoff;
pub mod cli;
/// `schedule::cron`, under its old name (the checker and the tests use it).
pub use schedule::cron;
pub mod daemon;
pub mod dispatch;
pub mod engine;
pub mod flow;
pub(crate) mod metrics;
pub mod ops;
pub mod registry;
pub mod runtime;
pub mod schedule;
pub mod sign;
pub mod sources;
pub mod store;
pub mod testing;
pub(crate) mod time;
pub(crate) mod views;
pub mod web;
pub mod workflow;

/// rustls needs one process-wide crypto provider; runner uses ring (no C toolchain beyond cc).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
