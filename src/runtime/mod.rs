//! Running runs: the executor that applies events through the store and performs effects after
//! commit, and the signing keys a running process holds.
//!
//! I/O shell. It knows nothing of HTTP or mail: the performers (`dispatch`) are handed to it at
//! construction and answer the event each effect produced.

pub mod calls;
pub mod executor;
pub mod keys;
pub mod node;

pub use executor::{Executor, Job, Perform, Performed, Performers};
