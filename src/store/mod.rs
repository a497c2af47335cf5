//! Durable state in SQLite: runs, events, the effect outbox, attempts, workflow versions.
//!
//! I/O shell. One writer owns the write connection: an idle caller commits its change itself,
//! otherwise the writer thread batches concurrent state changes into one transaction (group
//! commit). Each change still runs `decide` on the state it reads inside that transaction (from
//! a cache that is dropped whenever another connection has committed, per `PRAGMA
//! data_version`), so a reader process (`runner show`) and the owner stay correct; only one process
//! owns a database's runs at a time (`owner`).

pub mod owner;
mod sqlite;
mod view;

pub use sqlite::*;
pub use view::run_json;
