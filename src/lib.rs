//! runner: declarative, self-hosted durable workflows.
//!
//! The pure core (no I/O): [`workflow`], [`cron`], [`sign`], [`backoff`], [`time`], [`engine`].
//! The I/O shell: [`store`], [`runtime`], [`dispatch`], [`ops`], [`views`], [`web`],
//! [`sources`], [`daemon`], [`cli`].

pub mod backoff;
pub mod cli;
pub mod cron;
pub mod daemon;
pub mod dispatch;
pub mod engine;
pub mod metrics;
pub mod ops;
pub mod registry;
pub mod runtime;
pub mod sign;
pub mod sources;
pub mod store;
pub mod testing;
pub mod time;
pub mod views;
pub mod web;
pub mod workflow;

/// rustls needs one process-wide crypto provider; runner uses ring (no C toolchain beyond cc).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
