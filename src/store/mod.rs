//! Durable state in SQLite: runs, events, the effect outbox, attempts, workflow versions.
//!
//! I/O shell. One writer thread owns the write connection and batches concurrent state changes
//! into one transaction (group commit); each change still runs `decide` on the state it reads
//! inside that transaction, so several processes sharing one file stay correct.

mod sqlite;
mod view;

pub use sqlite::*;
pub use view::run_json;
