//! Tests of `call` steps: the step starts its run (an effect), takes its id, takes its end
//! (succeeded: the output for later steps; otherwise a failure for good); a late report of an
//! earlier attempt is absorbed; a cancel stops the called run; a called run reports its end,
//! with its rendered `output:`, to the step that called it.
//!
//! Part of the pure core's tests: no I/O.

use super::machine_tests::{apply, new_run, ok, started, t0, workflow};
use super::*;
use serde_json::json;

const ORDER: &str = r#"
name: order
inputs:
  order: { type: string, required: true }
steps:
  - id: bill
    call:
      workflow: invoice
      input: { order: "{{ input.order }}" }
  - id: ship
    http:
      url: "https://example.com/ship"
      body: { invoice: "{{ steps.bill.output.invoice }}" }
"#;

const INVOICE: &str = r#"
name: invoice
inputs:
  order: { type: string, required: true }
steps:
  - id: charge
    http: { url: "https://example.com/charge" }
output:
  invoice: "inv-{{ input.order }}"
  id: "{{ steps.charge.body.id }}"
"#;

fn finished(attempt: u32, status: RunStatus, output: Option<serde_json::Value>) -> Event {
    Event::ChildFinished {
        step: "bill".into(),
        attempt,
        run_id: Some("child-1".into()),
        status,
        output,
        error: (status != RunStatus::Succeeded).then(|| "the called run child-1 failed".into()),
    }
}

fn calling() -> (crate::workflow::Workflow, Run) {
    let wf = workflow(ORDER);
    let mut run = new_run(&wf, json!({"order": "o-7"}));
    let effects = apply(&wf, &mut run, started(), t0());
    assert_eq!(
        effects,
        [Effect::StartChild {
            step: "bill".into(),
            attempt: 1
        }]
    );
    assert_eq!(
        call_input(
            &wf,
            &run,
            &wf.steps[0],
            match &wf.steps[0].kind {
                crate::workflow::StepKind::Call(c) => c,
                _ => unreachable!(),
            }
        )
        .unwrap(),
        json!({"order": "o-7"})
    );
    let effects = apply(
        &wf,
        &mut run,
        Event::ChildStarted {
            step: "bill".into(),
            attempt: 1,
            run_id: "child-1".into(),
        },
        t0(),
    );
    assert!(effects.is_empty(), "{effects:?}");
    assert_eq!(
        run.step("bill").unwrap().child,
        Some(ChildRef {
            run_id: "child-1".into(),
            open: true
        })
    );
    (wf, run)
}

#[test]
fn a_succeeded_called_run_hands_its_output_to_later_steps() {
    let (wf, mut run) = calling();
    let effects = apply(
        &wf,
        &mut run,
        finished(1, RunStatus::Succeeded, Some(json!({"invoice": "inv-o-7"}))),
        t0(),
    );
    let bill = run.step("bill").unwrap();
    assert_eq!(bill.status, StepStatus::Succeeded);
    assert_eq!(
        bill.output,
        Some(json!({"run_id": "child-1", "status": "succeeded", "output": {"invoice": "inv-o-7"}}))
    );
    assert!(!bill.child.as_ref().unwrap().open);
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::CallHttp { step, .. } if step == "ship")),
        "{effects:?}"
    );
    // The same report again (redelivered after a crash) changes nothing.
    let before = run.clone();
    let again = apply(
        &wf,
        &mut run,
        finished(1, RunStatus::Succeeded, Some(json!({"invoice": "inv-o-7"}))),
        t0(),
    );
    assert!(again.is_empty());
    assert_eq!(run, before);
}

#[test]
fn a_failed_called_run_fails_the_step_for_good() {
    let (wf, mut run) = calling();
    apply(&wf, &mut run, finished(1, RunStatus::Failed, None), t0());
    assert_eq!(run.status, RunStatus::Failed);
    let failure = run.failure.as_ref().expect("a failure");
    assert_eq!(failure.step, "bill");
    assert!(failure.error.contains("child-1"), "{failure:?}");
    assert_eq!(run.step("ship").unwrap().status, StepStatus::Skipped);
    // A report for another attempt is not this step's.
    let (wf, mut run) = calling();
    let effects = apply(&wf, &mut run, finished(2, RunStatus::Failed, None), t0());
    assert!(effects.is_empty());
    assert_eq!(run.step("bill").unwrap().status, StepStatus::Running);
}

#[test]
fn cancelling_the_caller_cancels_the_called_run_once() {
    let (wf, mut run) = calling();
    let effects = apply(
        &wf,
        &mut run,
        Event::CancelRequested {
            reason: Some("by hand".into()),
        },
        t0(),
    );
    assert!(
        effects.contains(&Effect::CancelChild {
            run_id: "child-1".into(),
            reason: "cancelled with the run that called it: by hand".into(),
        }),
        "{effects:?}"
    );
    assert_eq!(run.status, RunStatus::Cancelled);
    assert!(!run.step("bill").unwrap().child.as_ref().unwrap().open);
    // Its end, reported later, is absorbed.
    let effects = apply(&wf, &mut run, finished(1, RunStatus::Cancelled, None), t0());
    assert!(effects.is_empty());
}

#[test]
fn a_called_run_reports_its_end_and_output_to_its_caller() {
    let wf = workflow(INVOICE);
    let mut run = new_run(&wf, json!({"order": "o-7"}));
    run.parent = Some(ParentRef {
        run_id: "run-0".into(),
        step: "bill".into(),
        attempt: 1,
        depth: 1,
    });
    apply(&wf, &mut run, started(), t0());
    let effects = apply(&wf, &mut run, ok("charge", 1), t0());
    assert_eq!(run.status, RunStatus::Succeeded);
    let output = json!({"invoice": "inv-o-7", "id": 7});
    assert_eq!(run.output, Some(output.clone()));
    assert!(
        effects.contains(&Effect::ReportToParent {
            parent: run.parent.clone().unwrap(),
            status: RunStatus::Succeeded,
            output: Some(output),
            error: None,
        }),
        "{effects:?}"
    );
}
