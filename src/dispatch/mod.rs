//! Performing effects against the outside world: signed HTTP calls, e-mails, approval e-mails.
//!
//! I/O shell: everything here talks to the network; the decisions stay in the core. Each
//! performer answers the event its effect produced; the executor applies it.

pub mod approval_mail;
pub mod email;
pub mod flow_gate;
pub mod http;
pub mod mail;

use crate::runtime::Performers;
use crate::runtime::keys::KeyRing;
use crate::store::Store;
use crate::workflow::{Workflow, template};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The performers of every external effect, for an executor.
pub fn performers(store: &Store, keys: KeyRing, mail: email::MailContext) -> Performers {
    let mail = Arc::new(mail);
    Performers {
        http: Arc::new(http::HttpPerformer::new(keys, store.clone())),
        email: Arc::new(email::EmailPerformer(mail.clone())),
        approval: Arc::new(approval_mail::ApprovalPerformer::new(mail, store.clone())),
    }
}

/// Renders a step's request or e-mail (`render`) off the runtime's worker threads, within the
/// step's `timeout` (`limit`), and answers it with the time left for sending it. A template's
/// fuel bounds its instructions, not what one filter does over a large value, and a worker
/// busy rendering answers nothing else (`/healthz`, SIGTERM, other runs): so a step with
/// templates is rendered on the blocking pool, and past its timeout the step fails while that
/// thread finishes on its own (within its fuel). A step without templates is only copied, here.
pub(crate) async fn render_within<T: Send + 'static>(
    wf: &Workflow,
    step: &str,
    limit: Duration,
    render: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<(T, Duration), String> {
    let started = Instant::now();
    let rendered = if crate::engine::request::has_templates(wf, step) {
        // Set when this future ends (the render is done, the timeout passed, or the task was
        // aborted by a cancel): a render still going stops at its next write.
        struct StopOnDrop(Arc<AtomicBool>);
        impl Drop for StopOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
        let flag = stop.0.clone();
        let task = tokio::task::spawn_blocking(move || template::stoppable(flag, render));
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(format!("rendering failed: {e}")),
            Err(_) => {
                return Err(format!(
                    "step `{step}`: rendering its templates took longer than its `timeout` ({}); \
                     rendering counts in a step's timeout (check for loops over large values)",
                    crate::workflow::duration::format(limit)
                ));
            }
        }
    } else {
        render()
    };
    let left = limit.saturating_sub(started.elapsed());
    match rendered {
        Ok(_) if left.is_zero() => Err(format!(
            "step `{step}`: rendering its templates took all of its `timeout` ({})",
            crate::workflow::duration::format(limit)
        )),
        Ok(r) => Ok((r, left)),
        Err(e) => Err(format!("step `{step}`: {e}")),
    }
}
