//! runner's built-in workflow `qstash`: the messages published through the QStash API are its
//! runs. Its source (`qstash.yaml`) is checked like any file and stored as a version, so runs
//! of it are shown, retried and recovered as every other; its `http` steps are then marked
//! [`Published`], which makes the engine take their requests from the run's input.
//!
//! Part of the pure core: no I/O.

use super::{Diagnostic, Published, StepKind, Workflow, check_file};

/// The name of the built-in workflow; no workflow file may take it (`runner validate` says so).
pub const QSTASH: &str = "qstash";
/// Where its version says it comes from.
pub const QSTASH_PATH: &str = "<runner>/qstash.yaml";
/// Its source.
pub const QSTASH_SOURCE: &str = include_str!("qstash.yaml");

/// The built-in workflow, checked and marked.
pub fn qstash() -> Workflow {
    check_stored(QSTASH_PATH, QSTASH_SOURCE).expect("the built-in qstash workflow checks")
}

/// Checks a stored version: a file as `check_file` does, and the built-in workflow with its
/// steps marked.
pub fn check_stored(path: &str, source: &str) -> Result<Workflow, Vec<Diagnostic>> {
    let mut wf = check_file(path, source)?;
    if path == QSTASH_PATH {
        for step in wf.steps.iter_mut().chain(wf.on_failure.iter_mut()) {
            if let StepKind::Http(call) = &mut step.kind {
                call.published = Some(match step.id.as_str() {
                    "deliver" => Published::Message,
                    "callback" => Published::Callback,
                    _ => Published::FailureCallback,
                });
            }
        }
    }
    Ok(wf)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_built_in_workflow_checks_and_marks_its_steps() {
        let wf = super::qstash();
        assert_eq!(wf.name, super::QSTASH);
        let marked: Vec<_> = wf
            .steps
            .iter()
            .chain(&wf.on_failure)
            .filter_map(|s| match &s.kind {
                super::StepKind::Http(c) => Some((s.id.as_str(), c.published)),
                _ => None,
            })
            .collect();
        use super::Published::*;
        assert_eq!(
            marked,
            [
                ("deliver", Some(Message)),
                ("callback", Some(Callback)),
                ("failure-callback", Some(FailureCallback))
            ]
        );
    }
}
