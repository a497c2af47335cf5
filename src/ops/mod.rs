//! The operations every front end calls (the JSON API, the approval pages, the CLI, the
//! scheduler, and later the web UI and the QStash API): start a run, cancel, retry, decide a
//! step, manage programmatic schedules. One verb per file, as cargo's `ops`.
//!
//! I/O shell. Whether a change counted ("was my cancel the one that ended the run?") comes out
//! of the store's transaction (`Applied::absorbed`), so it holds across processes and nodes.

pub mod approval_link;
pub mod cancel;
pub mod decide_step;
pub mod notify;
pub mod prune;
pub mod publish;
pub mod retry;
pub mod schedules;
pub mod start;

use crate::store::Version;

/// The workflows a process has loaded (the daemon's registry), by name.
pub trait Workflows: Send + Sync {
    /// The active version of the workflow named `name`.
    fn active(&self, name: &str) -> Option<Version>;
    /// The active versions of the workflows that start on events of this name (`on.event`).
    fn on_event(&self, event: &str) -> Vec<Version>;
}
