//! What the HTTP handlers share: the executor, and what only the daemon has (its workflows and
//! its scheduler), the API token, metrics and the public URL.

use super::auth::ApiToken;
use crate::metrics::Metrics;
use crate::ops::schedules::{Change, Schedules};
use crate::registry::Registry;
use crate::runtime::Executor;
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc;

pub struct AppState {
    pub exec: Executor,
    /// The daemon's workflows and scheduler; None in the page server of a foreground
    /// `runner run` or `runner resume`, which serves approval links and reads.
    pub daemon: Option<DaemonParts>,
    /// The API token requests must present (checked at start by `auth::check_token`).
    pub token: Option<ApiToken>,
    /// `/metrics` without the token (`--metrics-public`); else it needs it like the API.
    pub metrics_public: bool,
    pub metrics: Arc<Metrics>,
    pub public_url: String,
}

/// The parts only `runner serve` has.
pub struct DaemonParts {
    pub registry: Arc<RwLock<Registry>>,
    pub schedules: mpsc::Sender<Change>,
}

impl DaemonParts {
    /// The schedule operations over the daemon's store, workflows and scheduler.
    pub fn schedules<'a>(&'a self, exec: &'a Executor) -> Schedules<'a> {
        Schedules {
            store: exec.store(),
            workflows: &*self.registry,
            changes: &self.schedules,
        }
    }

    pub fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|e| e.into_inner())
    }
}

pub type Shared = Arc<AppState>;
