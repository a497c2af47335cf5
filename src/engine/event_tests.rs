//! Tests of waiting for events: a `wait_for_event` step × an event sent before its wait
//! (lookback, which the store answers as soon as the wait starts), during it, after its timeout,
//! twice, for another step; `on_timeout`; keys rendered from the input; `cancel_on`.
//!
//! Part of the pure core's tests: no I/O.

use super::machine_tests::{apply, new_run, secs, started, t0, timer, workflow};
use super::*;
use crate::workflow::Workflow;
use chrono::{DateTime, Utc};
use serde_json::json;

const ORDER: &str = r#"
name: order
on: { webhook: true }
inputs:
  order: { type: string, required: true }
cancel_on:
  - event: order.cancelled
    key: "{{ input.order }}"
steps:
  - id: charge
    http: { url: "https://example.com/charge" }
  - id: paid
    wait_for_event:
      event: payment.succeeded
      key: "order-{{ input.order }}"
      timeout: 1h
  - id: ship
    http:
      url: "https://example.com/ship"
      body: { paid: "{{ steps.paid.data.amount }}" }
"#;

fn received(step: &str, id: &str, data: serde_json::Value, at: DateTime<Utc>) -> Event {
    Event::EventReceived {
        step: step.into(),
        event: "payment.succeeded".into(),
        key: "order-o-7".into(),
        id: id.into(),
        data,
        received_at: at,
    }
}

/// The order run, started and past `charge`: `paid` waits.
fn waiting(wf: &Workflow) -> (Run, Vec<Effect>) {
    let mut run = new_run(wf, json!({"order": "o-7"}));
    let first = apply(wf, &mut run, started(), t0());
    assert!(
        first.contains(&Effect::AwaitEvent {
            step: cancel_wait(0),
            event: "order.cancelled".into(),
            key: "o-7".into(),
        }),
        "a started run waits for its `cancel_on` events: {first:?}"
    );
    let effects = apply(
        wf,
        &mut run,
        super::machine_tests::ok("charge", 1),
        t0() + secs(1),
    );
    (run, effects)
}

#[test]
fn a_wait_asks_the_store_for_its_event_with_the_key_rendered() {
    let wf = workflow(ORDER);
    let (run, effects) = waiting(&wf);
    assert_eq!(
        effects,
        vec![Effect::AwaitEvent {
            step: "paid".into(),
            event: "payment.succeeded".into(),
            key: "order-o-7".into(),
        }]
    );
    let paid = run.step("paid").unwrap();
    assert_eq!(paid.status, StepStatus::WaitingEvent);
    assert_eq!(run.status, RunStatus::WaitingEvent);
    assert_eq!(paid.wake_at, Some(t0() + secs(1) + secs(3600)));
    assert_eq!(
        paid.awaiting,
        Some(Awaiting {
            event: "payment.succeeded".into(),
            key: "order-o-7".into()
        })
    );
    assert!(
        run.waiting_for()
            .unwrap()
            .contains("`payment.succeeded` with key `order-o-7`")
    );
}

#[test]
fn wait_by_event_before_during_after_timeout_twice_and_for_another_step() {
    // (when the event is applied, what to send, the expected status of `paid`, whether `ship`
    // starts)
    struct Case {
        name: &'static str,
        at: i64,
        event: fn(DateTime<Utc>) -> Event,
        paid: StepStatus,
        ship_starts: bool,
    }
    let cases = [
        Case {
            // Lookback: the store answers the wait at once with an event received before it
            // (at t0, when the run was created); the machine sees it as any other.
            name: "sent before the wait",
            at: 1,
            event: |_| received("paid", "e1", json!({"amount": 12}), t0()),
            paid: StepStatus::Succeeded,
            ship_starts: true,
        },
        Case {
            name: "sent during the wait",
            at: 600,
            event: |at| received("paid", "e1", json!({"amount": 12}), at),
            paid: StepStatus::Succeeded,
            ship_starts: true,
        },
        Case {
            name: "its timeout passed",
            at: 3601,
            event: |_| timer("paid"),
            paid: StepStatus::Failed,
            ship_starts: false,
        },
        Case {
            name: "a timer before the timeout",
            at: 60,
            event: |_| timer("paid"),
            paid: StepStatus::WaitingEvent,
            ship_starts: false,
        },
        Case {
            name: "for another step",
            at: 600,
            event: |at| received("charge", "e1", json!({}), at),
            paid: StepStatus::WaitingEvent,
            ship_starts: false,
        },
    ];
    let wf = workflow(ORDER);
    for c in cases {
        let (mut run, _) = waiting(&wf);
        let at = t0() + secs(c.at);
        let effects = apply(&wf, &mut run, (c.event)(at), at);
        let paid = run.step("paid").unwrap();
        assert_eq!(paid.status, c.paid, "{}: {run:#?}", c.name);
        let ship = effects
            .iter()
            .any(|e| matches!(e, Effect::CallHttp { step, .. } if step == "ship"));
        assert_eq!(ship, c.ship_starts, "{}: {effects:?}", c.name);
        if paid.status.is_done() {
            assert!(
                effects.contains(&Effect::EndAwait {
                    step: "paid".into()
                }),
                "{}: the wait ends in the store: {effects:?}",
                c.name
            );
        }
    }
}

#[test]
fn the_event_is_the_steps_output_and_a_second_one_is_absorbed() {
    let wf = workflow(ORDER);
    let (mut run, _) = waiting(&wf);
    let at = t0() + secs(30);
    apply(
        &wf,
        &mut run,
        received("paid", "e1", json!({"amount": 12}), at),
        at,
    );
    assert_eq!(
        run.step("paid").unwrap().output,
        Some(json!({
            "data": {"amount": 12},
            "id": "e1",
            "received_at": "2026-01-05T09:00:30.000Z",
            "timed_out": false
        }))
    );
    let (next, effects) = decide(
        &wf,
        &run,
        &received("paid", "e2", json!({"amount": 99}), at),
        at + secs(1),
    );
    assert_eq!(
        next, run,
        "a second event for a step that took one changes nothing"
    );
    assert!(effects.is_empty());
}

#[test]
fn a_timeout_fails_the_step_unless_on_timeout_continue() {
    let wf = workflow(ORDER);
    let (mut run, _) = waiting(&wf);
    apply(&wf, &mut run, timer("paid"), t0() + secs(3601));
    let paid = run.step("paid").unwrap();
    assert_eq!(
        paid.error.as_deref(),
        Some("no event `payment.succeeded` with key `order-o-7` arrived within 1h")
    );
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.failure.as_ref().unwrap().step, "paid");

    let wf = workflow(&ORDER.replace("timeout: 1h", "timeout: 1h\n      on_timeout: continue"));
    let (mut run, _) = waiting(&wf);
    let effects = apply(&wf, &mut run, timer("paid"), t0() + secs(3601));
    let paid = run.step("paid").unwrap();
    assert_eq!(paid.status, StepStatus::Succeeded);
    assert_eq!(
        paid.output,
        Some(json!({"data": null, "id": null, "received_at": null, "timed_out": true}))
    );
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::CallHttp { step, .. } if step == "ship")),
        "the run goes on: {effects:?}"
    );
}

#[test]
fn a_cancel_on_event_cancels_the_run_and_abandons_what_is_in_flight() {
    let wf = workflow(ORDER);
    let mut run = new_run(&wf, json!({"order": "o-7"}));
    apply(&wf, &mut run, started(), t0());
    let effects = apply(
        &wf,
        &mut run,
        Event::EventReceived {
            step: cancel_wait(0),
            event: "order.cancelled".into(),
            key: "o-7".into(),
            id: "c1".into(),
            data: json!(null),
            received_at: t0() + secs(2),
        },
        t0() + secs(2),
    );
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(
        run.step("charge").unwrap().error.as_deref(),
        Some("cancelled by event `order.cancelled` with key `o-7` (id c1)")
    );
    assert!(effects.contains(&Effect::AbandonInFlight));
    assert!(effects.contains(&Effect::Finished {
        status: RunStatus::Cancelled
    }));
}

#[test]
fn a_key_that_cannot_render_fails_the_step_at_its_start() {
    let wf = workflow(&ORDER.replace(
        "key: \"order-{{ input.order }}\"",
        "key: \"{{ steps.charge.body.missing.deeper }}\"",
    ));
    let (run, _) = waiting(&wf);
    let paid = run.step("paid").unwrap();
    assert_eq!(paid.status, StepStatus::Failed, "{run:#?}");
    assert!(
        paid.error
            .as_deref()
            .unwrap()
            .starts_with("the `key` of step `paid`"),
        "{paid:?}"
    );
}
