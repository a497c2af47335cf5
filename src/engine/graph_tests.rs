//! Tests of the graph rules: `needs`, joins (`when`) × every outcome of a need, skip
//! propagation, `continue_on_error`, a failure with branches in flight, cancel and rejection with
//! branches in flight, the run's status with several steps active, and retrying a failed graph.
//!
//! Part of the pure core's tests: no I/O.

use super::machine_tests::{
    apply, cancel, decision, fail, new_run, ok, retry_after, started, t0, timer, workflow,
};
use super::*;
use crate::workflow::{Decision, Workflow};
use serde_json::{Value, json};

fn calls(effects: &[Effect]) -> Vec<&str> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::CallHttp { step, .. } | Effect::SendEmail { step, .. } => Some(step.as_str()),
            _ => None,
        })
        .collect()
}

fn status(run: &Run, step: &str) -> StepStatus {
    run.step(step).expect("a step").status
}

fn permanent(step: &str, attempt: u32) -> Event {
    fail(step, attempt, Outcome::Permanent)
}

const DIAMOND: &str = r#"
name: diamond
steps:
  - id: a
    http: { url: "https://example.com/a" }
  - id: b
    needs: [a]
    http: { url: "https://example.com/b" }
  - id: c
    needs: [a]
    http: { url: "https://example.com/c" }
  - id: d
    needs: [b, c]
    http: { url: "https://example.com/d", body: { b: "{{ steps.b.body }}", c: "{{ steps.c.body }}" } }
"#;

#[test]
fn a_diamond_runs_its_branches_side_by_side_and_joins_them() {
    let wf = workflow(DIAMOND);
    let mut run = new_run(&wf, json!({}));
    assert_eq!(calls(&apply(&wf, &mut run, started(), t0())), ["a"]);
    let effects = apply(&wf, &mut run, ok("a", 1), t0());
    assert_eq!(calls(&effects), ["b", "c"], "both branches start at once");
    assert_eq!(run.status, RunStatus::Running);
    assert!(calls(&apply(&wf, &mut run, ok("c", 1), t0())).is_empty());
    assert_eq!(status(&run, "d"), StepStatus::Pending, "d waits for b too");
    // A duplicate of c's outcome changes nothing.
    let before = run.clone();
    assert!(apply(&wf, &mut run, ok("c", 1), t0()).is_empty());
    assert_eq!(run, before);
    assert_eq!(calls(&apply(&wf, &mut run, ok("b", 1), t0())), ["d"]);
    apply(&wf, &mut run, ok("d", 1), t0());
    assert_eq!(run.status, RunStatus::Succeeded);
}

#[test]
fn steps_with_empty_needs_start_with_the_run_and_a_step_without_needs_waits_for_the_one_before() {
    let wf = workflow(
        r#"
name: roots
steps:
  - id: a
    http: { url: "https://example.com/a" }
  - id: b
    needs: []
    http: { url: "https://example.com/b" }
  - id: c
    http: { url: "https://example.com/c" }
"#,
    );
    assert_eq!(wf.steps[2].needs, ["b"], "no `needs`: the step before");
    let mut run = new_run(&wf, json!({}));
    assert_eq!(calls(&apply(&wf, &mut run, started(), t0())), ["a", "b"]);
    assert_eq!(calls(&apply(&wf, &mut run, ok("b", 1), t0())), ["c"]);
    apply(&wf, &mut run, ok("c", 1), t0());
    assert_eq!(run.status, RunStatus::Running, "a is still running");
    apply(&wf, &mut run, ok("a", 1), t0());
    assert_eq!(run.status, RunStatus::Succeeded);
}

/// What a need came to, for the join table.
#[derive(Debug, Clone, Copy)]
enum NeedOutcome {
    Succeeded,
    Failed,
    FailedContinuing,
    SkippedByIf,
    SkippedUpstream,
}

/// `x` (and, for an upstream skip, `pre` before it) comes to `outcome`; `j` needs `x` with
/// `when`. Returns the run at its end.
fn join_case(outcome: NeedOutcome, when: &str) -> (Workflow, Run) {
    use NeedOutcome::*;
    let x_extra = match outcome {
        FailedContinuing => "\n    continue_on_error: true",
        SkippedByIf => "\n    if: \"{{ false }}\"",
        _ => "",
    };
    let pre = match outcome {
        SkippedUpstream => {
            // `pre` fails; `x` (all_success) is skipped for it; `keep` takes up the failure so
            // the run goes on to `j`.
            "  - id: pre\n    http: { url: \"https://example.com/pre\" }\n    retry: { limit: 0 }\n  - id: keep\n    needs: [pre]\n    when: any_failed\n    http: { url: \"https://example.com/keep\" }\n"
        }
        _ => "",
    };
    let x_needs = if matches!(outcome, SkippedUpstream) {
        "[pre]"
    } else {
        "[]"
    };
    let yaml = format!(
        "name: join\nsteps:\n{pre}  - id: x\n    needs: {x_needs}\n    http: {{ url: \"https://example.com/x\" }}\n    retry: {{ limit: 0 }}{x_extra}\n  - id: j\n    needs: [x]\n    when: {when}\n    http: {{ url: \"https://example.com/j\" }}\n"
    );
    let wf = workflow(&yaml);
    let mut run = new_run(&wf, json!({}));
    apply(&wf, &mut run, started(), t0());
    match outcome {
        Succeeded => {
            apply(&wf, &mut run, ok("x", 1), t0());
        }
        Failed | FailedContinuing => {
            apply(&wf, &mut run, permanent("x", 1), t0());
        }
        SkippedByIf => {}
        SkippedUpstream => {
            apply(&wf, &mut run, permanent("pre", 1), t0());
            apply(&wf, &mut run, ok("keep", 1), t0());
        }
    }
    if status(&run, "j") == StepStatus::Running {
        apply(&wf, &mut run, ok("j", 1), t0());
    }
    (wf, run)
}

#[test]
fn every_join_against_every_outcome_of_a_need() {
    use NeedOutcome::*;
    // (outcome, when, does j run, the run's end)
    let table = [
        (Succeeded, "all_success", true, RunStatus::Succeeded),
        (Succeeded, "all_done", true, RunStatus::Succeeded),
        (Succeeded, "any_failed", false, RunStatus::Succeeded),
        (Failed, "all_success", false, RunStatus::Failed),
        (Failed, "all_done", true, RunStatus::Succeeded),
        (Failed, "any_failed", true, RunStatus::Succeeded),
        (FailedContinuing, "all_success", true, RunStatus::Succeeded),
        (FailedContinuing, "all_done", true, RunStatus::Succeeded),
        (FailedContinuing, "any_failed", false, RunStatus::Succeeded),
        (SkippedByIf, "all_success", true, RunStatus::Succeeded),
        (SkippedByIf, "all_done", true, RunStatus::Succeeded),
        (SkippedByIf, "any_failed", false, RunStatus::Succeeded),
        (SkippedUpstream, "all_success", false, RunStatus::Succeeded),
        (SkippedUpstream, "all_done", true, RunStatus::Succeeded),
        (SkippedUpstream, "any_failed", true, RunStatus::Succeeded),
    ];
    for (outcome, when, runs, end) in table {
        let (_, run) = join_case(outcome, when);
        let j = run.step("j").expect("j");
        assert_eq!(
            j.status == StepStatus::Succeeded,
            runs,
            "{outcome:?} × {when}: j is {:?}",
            j.status
        );
        if !runs {
            assert_eq!(j.status, StepStatus::Skipped, "{outcome:?} × {when}");
        }
        assert_eq!(run.status, end, "{outcome:?} × {when}: {run:#?}");
    }
}

#[test]
fn a_failure_propagates_down_an_all_success_chain_until_a_step_takes_it_up() {
    let wf = workflow(
        r#"
name: chain
steps:
  - id: a
    http: { url: "https://example.com/a" }
    retry: { limit: 0 }
  - id: b
    http: { url: "https://example.com/b" }
  - id: c
    http: { url: "https://example.com/c" }
  - id: cleanup
    needs: [c]
    when: any_failed
    http: { url: "https://example.com/cleanup" }
"#,
    );
    assert!(
        wf.failure_accepted("a"),
        "cleanup takes up a's failure through b and c"
    );
    let mut run = new_run(&wf, json!({}));
    apply(&wf, &mut run, started(), t0());
    let effects = apply(&wf, &mut run, permanent("a", 1), t0());
    assert_eq!(calls(&effects), ["cleanup"]);
    for s in ["b", "c"] {
        let st = run.step(s).expect("step");
        assert_eq!(st.status, StepStatus::Skipped);
        assert!(st.upstream_failed, "{s} was skipped for a's failure");
    }
    apply(&wf, &mut run, ok("cleanup", 1), t0());
    assert_eq!(run.status, RunStatus::Succeeded, "the failure was handled");
    assert!(run.failure.is_none());
}

#[test]
fn a_step_skipped_by_its_if_counts_as_done_for_the_steps_after_it() {
    let wf = workflow(
        r#"
name: skip
steps:
  - id: maybe
    if: "{{ run.trigger == 'cli' }}"
    http: { url: "https://example.com/maybe" }
  - id: after
    http: { url: "https://example.com/after" }
"#,
    );
    let mut run = new_run(&wf, json!({}));
    assert_eq!(calls(&apply(&wf, &mut run, started(), t0())), ["after"]);
    assert!(!run.step("maybe").expect("maybe").upstream_failed);
}

const FAN: &str = r#"
name: fan
steps:
  - id: a
    needs: []
    http: { url: "https://example.com/a" }
    retry: { limit: 0 }
  - id: b
    needs: []
    http: { url: "https://example.com/b" }
  - id: nap
    needs: []
    sleep: 1h
  - id: last
    needs: [a, b, nap]
    http: { url: "https://example.com/last" }
on_failure:
  - http: { url: "https://example.com/hook", body: { step: "{{ failure.step }}" } }
"#;

#[test]
fn a_failure_with_branches_in_flight_abandons_them_and_runs_the_hooks_once() {
    let wf = workflow(FAN);
    let mut run = new_run(&wf, json!({}));
    assert_eq!(calls(&apply(&wf, &mut run, started(), t0())), ["a", "b"]);
    assert_eq!(status(&run, "nap"), StepStatus::Sleeping);
    let effects = apply(&wf, &mut run, permanent("a", 1), t0());
    let abandon = effects
        .iter()
        .position(|e| *e == Effect::AbandonInFlight)
        .expect("calls in flight are abandoned");
    let hook = effects
        .iter()
        .position(|e| matches!(e, Effect::CallHttp { step, .. } if step == "on_failure-1"))
        .expect("the hook starts");
    assert!(
        abandon < hook,
        "the hook is not abandoned with the branches: {effects:?}"
    );
    assert_eq!(status(&run, "b"), StepStatus::Cancelled);
    assert_eq!(status(&run, "nap"), StepStatus::Cancelled);
    assert_eq!(status(&run, "last"), StepStatus::Skipped);
    assert_eq!(run.wake_at, None, "the sleeping branch's timer is gone");
    assert_eq!(run.failure.as_ref().map(|f| f.step.as_str()), Some("a"));
    // The abandoned branch's late outcome and the cancelled sleep's timer are absorbed.
    let before = run.clone();
    assert!(apply(&wf, &mut run, ok("b", 1), t0()).is_empty());
    assert!(
        apply(
            &wf,
            &mut run,
            timer("nap"),
            t0() + chrono::Duration::hours(2)
        )
        .is_empty()
    );
    assert_eq!(run, before);
    let effects = apply(&wf, &mut run, ok("on_failure-1", 1), t0());
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(
        effects
            .iter()
            .filter(|e| matches!(e, Effect::Finished { .. }))
            .count(),
        1
    );
}

#[test]
fn cancel_with_branches_in_flight_stops_them_all() {
    let wf = workflow(FAN);
    let mut run = new_run(&wf, json!({}));
    apply(&wf, &mut run, started(), t0());
    let effects = apply(&wf, &mut run, cancel(), t0());
    assert!(effects.contains(&Effect::AbandonInFlight));
    for s in ["a", "b", "nap", "last"] {
        assert_eq!(status(&run, s), StepStatus::Cancelled, "{s}");
    }
    assert_eq!(run.status, RunStatus::Cancelled);
    assert!(apply(&wf, &mut run, ok("b", 1), t0()).is_empty());
}

#[test]
fn a_rejection_with_a_branch_in_flight_abandons_it() {
    let wf = workflow(
        r#"
name: review
steps:
  - id: ask
    needs: []
    approval: { to: [boss@example.com], subject: "Go?", timeout: 1d }
  - id: prepare
    needs: []
    http: { url: "https://example.com/prepare" }
  - id: ship
    needs: [ask, prepare]
    http: { url: "https://example.com/ship" }
"#,
    );
    let mut run = new_run(&wf, json!({}));
    apply(&wf, &mut run, started(), t0());
    assert_eq!(run.status, RunStatus::Running, "prepare is being called");
    apply(&wf, &mut run, ok("prepare", 1), t0());
    assert_eq!(
        run.status,
        RunStatus::WaitingApproval,
        "only the approval is left"
    );
    let mut run2 = new_run(&wf, json!({}));
    apply(&wf, &mut run2, started(), t0());
    let effects = apply(&wf, &mut run2, decision("ask", Decision::Rejected), t0());
    assert!(effects.contains(&Effect::AbandonInFlight));
    assert_eq!(status(&run2, "prepare"), StepStatus::Cancelled);
    assert_eq!(status(&run2, "ship"), StepStatus::Skipped);
    assert_eq!(run2.status, RunStatus::Rejected);
}

#[test]
fn a_branch_retrying_after_retry_after_does_not_hold_up_its_sibling() {
    let wf = workflow(
        r#"
name: sides
steps:
  - id: slow
    needs: []
    http: { url: "https://example.com/slow" }
  - id: quick
    needs: []
    http: { url: "https://example.com/quick" }
  - id: after-quick
    needs: [quick]
    http: { url: "https://example.com/next" }
"#,
    );
    let mut run = new_run(&wf, json!({}));
    apply(&wf, &mut run, started(), t0());
    apply(&wf, &mut run, fail("slow", 1, retry_after(30)), t0());
    assert_eq!(status(&run, "slow"), StepStatus::Retrying);
    assert_eq!(run.wake_at, Some(t0() + chrono::Duration::seconds(30)));
    assert_eq!(
        calls(&apply(&wf, &mut run, ok("quick", 1), t0())),
        ["after-quick"]
    );
    apply(&wf, &mut run, ok("after-quick", 1), t0());
    assert_eq!(run.status, RunStatus::Running, "slow will be tried again");
    let at = t0() + chrono::Duration::seconds(30);
    assert_eq!(calls(&apply(&wf, &mut run, timer("slow"), at)), ["slow"]);
    apply(&wf, &mut run, ok("slow", 2), at);
    assert_eq!(run.status, RunStatus::Succeeded);
}

#[test]
fn retrying_a_failed_graph_runs_again_only_what_failed_or_did_not_run() {
    let wf = workflow(
        r#"
name: retry
steps:
  - id: a
    http: { url: "https://example.com/a" }
  - id: side
    needs: []
    http: { url: "https://example.com/side" }
  - id: b
    needs: [a]
    http: { url: "https://example.com/b" }
    retry: { limit: 0 }
  - id: c
    needs: [b, side]
    http: { url: "https://example.com/c" }
"#,
    );
    let mut run = new_run(&wf, json!({}));
    apply(&wf, &mut run, started(), t0());
    apply(&wf, &mut run, ok("a", 1), t0());
    apply(&wf, &mut run, ok("side", 1), t0());
    apply(&wf, &mut run, permanent("b", 1), t0());
    assert_eq!(run.status, RunStatus::Failed);
    let effects = apply(&wf, &mut run, Event::RetryRequested, t0());
    assert_eq!(calls(&effects), ["b"], "a and side stay done");
    assert_eq!(status(&run, "a"), StepStatus::Succeeded);
    assert_eq!(status(&run, "side"), StepStatus::Succeeded);
    assert_eq!(
        run.step("b").expect("b").attempts,
        2,
        "attempt numbers go on"
    );
    assert_eq!(calls(&apply(&wf, &mut run, ok("b", 2), t0())), ["c"]);
    apply(&wf, &mut run, ok("c", 1), t0());
    assert_eq!(run.status, RunStatus::Succeeded);
}

#[test]
fn the_run_status_says_what_its_active_steps_wait_for() {
    let wf = workflow(
        r#"
name: mixed
steps:
  - id: nap
    needs: []
    sleep: 1h
  - id: call
    needs: []
    http: { url: "https://example.com/call" }
"#,
    );
    let mut run = new_run(&wf, json!({}));
    apply(&wf, &mut run, started(), t0());
    assert_eq!(run.status, RunStatus::Running);
    let waiting = run.waiting_for().expect("waiting");
    assert!(
        waiting.contains("`nap` to wake") && waiting.contains("`call` to answer"),
        "{waiting}"
    );
    apply(&wf, &mut run, ok("call", 1), t0());
    assert_eq!(run.status, RunStatus::Sleeping);
}

// ---------------------------------------------------------------------------------------------
// foreach: the machine with the store's part played by a map (as `store::apply` plays it)

use crate::workflow::output::ItemOutput;
use std::collections::BTreeMap;

/// A row of the items table: key, status, attempts, error, body.
type Row = (String, String, u32, Option<String>, Value);

/// The items table: (step, index) → row.
#[derive(Default)]
struct Items(BTreeMap<(String, u32), Row>);

impl Items {
    /// Applies an event as a change does: the store's orders carried out, items read back.
    fn apply(&mut self, wf: &Workflow, run: &mut Run, event: Event) -> Vec<Effect> {
        let mut queue: std::collections::VecDeque<Effect> = apply(wf, run, event, t0()).into();
        let mut out = Vec::new();
        while let Some(e) = queue.pop_front() {
            match e {
                Effect::SaveItems { step, items } => {
                    self.0.retain(|(s, _), _| *s != step);
                    for it in items {
                        self.0.insert(
                            (step.clone(), it.index),
                            (it.key, "pending".into(), 0, None, Value::Null),
                        );
                    }
                }
                Effect::ItemDone { step, item } => {
                    let row = self.0.get_mut(&(step, item.index)).expect("a saved item");
                    row.1 = item.status;
                    row.2 = item.attempts;
                    row.3 = item.error;
                    row.4 = item
                        .output
                        .as_ref()
                        .and_then(|o| o.get("body").cloned())
                        .unwrap_or_default();
                }
                Effect::CollectItems { step } => {
                    let items: Vec<ItemOutput> = self
                        .0
                        .iter()
                        .filter(|((s, _), _)| *s == step)
                        .map(|(_, (key, status, attempts, error, body))| ItemOutput {
                            key: key.clone(),
                            status: if status == "pending" {
                                "skipped".into()
                            } else {
                                status.clone()
                            },
                            body: body.clone(),
                            headers: json!(null),
                            error: error.clone(),
                            attempts: Some(*attempts),
                        })
                        .collect();
                    queue.extend(apply(wf, run, Event::ItemsCollected { step, items }, t0()));
                }
                other => out.push(other),
            }
        }
        out
    }

    fn status(&self, step: &str, i: u32) -> &str {
        &self.0[&(step.to_string(), i)].1
    }
}

fn item_calls(effects: &[Effect]) -> Vec<(u32, u32)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::CallHttp {
                item: Some(i),
                attempt,
                ..
            } => Some((*i, *attempt)),
            _ => None,
        })
        .collect()
}

fn item_ok(step: &str, item: u32, attempt: u32) -> Event {
    Event::AttemptSucceeded {
        step: step.into(),
        attempt,
        output: json!({ "status": 200, "headers": {}, "body": { "item": item } }),
        item: Some(item),
    }
}

fn item_fail(step: &str, item: u32, attempt: u32, outcome: Outcome) -> Event {
    Event::AttemptFailed {
        step: step.into(),
        attempt,
        error: "HTTP 500".into(),
        status: Some(500),
        body: None,
        outcome,
        item: Some(item),
    }
}

fn fan_workflow(extra: &str) -> Workflow {
    workflow(&format!(
        r#"
name: fan
steps:
  - id: send
    foreach: [a, b, c, d, e]
    max_parallel: 2
    http: {{ url: "https://example.com/{{{{ item }}}}" }}
    retry: {{ limit: 1, backoff: fixed, initial: 10s }}{extra}
  - id: after
    http: {{ url: "https://example.com/after", body: {{ n: "{{{{ steps.send.succeeded }}}}" }} }}
on_failure:
  - http: {{ url: "https://example.com/hook" }}
"#
    ))
}

#[test]
fn a_fan_out_keeps_max_parallel_items_in_flight_and_ends_with_every_item() {
    let wf = fan_workflow("");
    let mut run = new_run(&wf, json!({}));
    let mut items = Items::default();
    let effects = items.apply(&wf, &mut run, started());
    assert_eq!(item_calls(&effects), [(0, 1), (1, 1)]);
    assert_eq!(items.0.len(), 5, "every item is saved when the step starts");
    assert_eq!(
        item_calls(&items.apply(&wf, &mut run, item_ok("send", 1, 1))),
        [(2, 1)]
    );
    // A duplicate of item 1's outcome, and one for an item not started, change nothing.
    let before = run.clone();
    assert!(items.apply(&wf, &mut run, item_ok("send", 1, 1)).is_empty());
    assert!(items.apply(&wf, &mut run, item_ok("send", 4, 1)).is_empty());
    assert_eq!(run, before);
    // A retryable failure keeps the item's slot: nothing new starts while it waits.
    assert!(
        item_calls(&items.apply(&wf, &mut run, item_fail("send", 0, 1, retry_after(5)))).is_empty()
    );
    assert_eq!(run.wake_at, Some(t0() + chrono::Duration::seconds(5)));
    assert_eq!(
        item_calls(&items.apply(&wf, &mut run, item_ok("send", 2, 1))),
        [(3, 1)]
    );
    let due = t0() + chrono::Duration::seconds(5);
    let effects = apply(&wf, &mut run, timer("send"), due);
    assert_eq!(
        item_calls(&effects),
        [(0, 2)],
        "the item is sent again with the next attempt"
    );
    assert_eq!(
        item_calls(&items.apply(&wf, &mut run, item_ok("send", 0, 2))),
        [(4, 1)]
    );
    items.apply(&wf, &mut run, item_ok("send", 3, 1));
    let effects = items.apply(&wf, &mut run, item_ok("send", 4, 1));
    assert_eq!(
        calls(&effects),
        ["after"],
        "the next step starts once every item ended"
    );
    let s = run.step("send").expect("send");
    assert_eq!(s.status, StepStatus::Succeeded);
    assert_eq!(s.output.as_ref().expect("output")["succeeded"], 5);
    assert_eq!(
        s.output.as_ref().expect("output")["items"]
            .as_array()
            .map(Vec::len),
        Some(5)
    );
    let fan = s.fan.as_ref().expect("fan");
    assert!(fan.active.is_empty());
    assert_eq!((fan.succeeded, fan.failed), (5, 0));
}

#[test]
fn fail_fast_with_items_in_flight_lets_them_finish_and_starts_no_other() {
    let wf = fan_workflow("");
    let mut run = new_run(&wf, json!({}));
    let mut items = Items::default();
    items.apply(&wf, &mut run, started());
    let effects = items.apply(&wf, &mut run, item_fail("send", 0, 1, Outcome::Permanent));
    assert!(
        item_calls(&effects).is_empty(),
        "no new item after a failure for good"
    );
    assert_eq!(
        status(&run, "send"),
        StepStatus::Running,
        "item 1 is still in flight"
    );
    let effects = items.apply(&wf, &mut run, item_ok("send", 1, 1));
    assert_eq!(status(&run, "send"), StepStatus::Failed);
    assert_eq!(calls(&effects), ["on_failure-1"]);
    assert_eq!(status(&run, "after"), StepStatus::Skipped);
    let error = run
        .step("send")
        .and_then(|s| s.error.clone())
        .expect("error");
    assert_eq!(
        error,
        "1 of 5 items failed (3 not started: `fail_fast`); item `0`: HTTP 500"
    );
    assert_eq!(items.status("send", 2), "pending");
    // Retrying the run goes through the items that did not succeed; item 1 stays done.
    items.apply(&wf, &mut run, ok("on_failure-1", 1));
    assert_eq!(run.status, RunStatus::Failed);
    let effects = items.apply(&wf, &mut run, Event::RetryRequested);
    assert_eq!(
        item_calls(&effects),
        [(0, 2), (2, 1)],
        "attempt numbers go on"
    );
    for i in [0, 2, 3] {
        let effects = items.apply(
            &wf,
            &mut run,
            item_ok("send", i, if i == 0 { 2 } else { 1 }),
        );
        if i == 0 {
            assert_eq!(item_calls(&effects), [(3, 1)]);
        }
    }
    let effects = items.apply(&wf, &mut run, item_ok("send", 4, 1));
    assert!(item_calls(&effects).is_empty() || item_calls(&effects) == [(4, 1)]);
    if status(&run, "send") == StepStatus::Running {
        items.apply(&wf, &mut run, item_ok("send", 4, 1));
    }
    assert_eq!(status(&run, "send"), StepStatus::Succeeded, "{run:#?}");
    assert_eq!(
        run.step("send")
            .and_then(|s| s.fan.as_ref())
            .map(|f| f.succeeded),
        Some(5)
    );
}

#[test]
fn without_fail_fast_every_item_runs_and_the_step_fails_at_the_end() {
    let wf = fan_workflow("\n    fail_fast: false");
    let mut run = new_run(&wf, json!({}));
    let mut items = Items::default();
    items.apply(&wf, &mut run, started());
    let effects = items.apply(&wf, &mut run, item_fail("send", 0, 1, Outcome::Permanent));
    assert_eq!(item_calls(&effects), [(2, 1)]);
    for i in 1..5 {
        items.apply(&wf, &mut run, item_ok("send", i, 1));
    }
    assert_eq!(status(&run, "send"), StepStatus::Failed);
    assert_eq!(
        run.step("send").and_then(|s| s.error.clone()).as_deref(),
        Some("1 of 5 items failed; item `0`: HTTP 500")
    );
}

#[test]
fn cancel_with_items_in_flight_records_them_cancelled() {
    let wf = fan_workflow("");
    let mut run = new_run(&wf, json!({}));
    let mut items = Items::default();
    items.apply(&wf, &mut run, started());
    let effects = items.apply(&wf, &mut run, cancel());
    assert!(effects.contains(&Effect::AbandonInFlight));
    assert_eq!(items.status("send", 0), "cancelled");
    assert_eq!(items.status("send", 1), "cancelled");
    assert_eq!(items.status("send", 2), "pending");
    assert!(items.apply(&wf, &mut run, item_ok("send", 0, 1)).is_empty());
}

#[test]
fn a_foreach_that_is_not_a_list_or_too_long_or_with_duplicate_keys_fails_the_step_clearly() {
    let cases = [
        ("\"{{ input }}\"", "", "rendered an object, not a list"),
        (
            "\"{{ range(10001) | list }}\"",
            "",
            "has 10001 items, over the limit of 10000",
        ),
        (
            "[x, y, x]",
            "\n    key: \"{{ item }}\"",
            "items 0 and 2 of step `send` have the same key `x`",
        ),
    ];
    for (list, key, expected) in cases {
        let wf = workflow(&format!(
            "name: bad\nsteps:\n  - id: send\n    foreach: {list}{key}\n    http: {{ url: \"https://example.com/\" }}\n"
        ));
        let mut run = new_run(&wf, json!({}));
        let mut items = Items::default();
        items.apply(&wf, &mut run, started());
        assert_eq!(run.status, RunStatus::Failed, "{list}");
        let error = run
            .step("send")
            .and_then(|s| s.error.clone())
            .unwrap_or_default();
        assert!(error.contains(expected), "{list}: {error}");
    }
}

#[test]
fn an_empty_list_succeeds_at_once() {
    let wf = workflow(
        "name: empty\nsteps:\n  - id: send\n    foreach: []\n    http: { url: \"https://example.com/\" }\n",
    );
    let mut run = new_run(&wf, json!({}));
    let mut items = Items::default();
    items.apply(&wf, &mut run, started());
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(
        run.step("send")
            .and_then(|s| s.output.clone())
            .expect("output")["total"],
        0
    );
}

#[test]
fn one_change_starts_at_most_1000_calls_and_the_rest_start_with_later_changes() {
    let wf = workflow(
        r#"
name: wide
steps:
  - id: a
    needs: []
    foreach: "{{ range(1000) | list }}"
    max_parallel: 1000
    http: { url: "https://example.com/a" }
  - id: b
    needs: []
    foreach: "{{ range(5) | list }}"
    max_parallel: 5
    http: { url: "https://example.com/b" }
"#,
    );
    let mut run = new_run(&wf, json!({}));
    let mut items = Items::default();
    let effects = items.apply(&wf, &mut run, started());
    assert_eq!(effects.iter().filter(|e| e.is_external()).count(), 1000);
    let b = run.step("b").and_then(|s| s.fan.as_ref()).expect("b");
    assert_eq!(b.active.len(), 0, "b waits for room in a later change");
    let effects = items.apply(&wf, &mut run, item_ok("a", 0, 1));
    assert_eq!(
        effects.iter().filter(|e| e.is_external()).count(),
        5,
        "b's items start"
    );
    let b = run.step("b").and_then(|s| s.fan.as_ref()).expect("b");
    assert_eq!(b.active.len(), 5);
}

#[test]
fn on_reject_continue_lets_later_steps_read_the_rejection() {
    let wf = workflow(
        r#"
name: review
steps:
  - id: ask
    approval: { to: [boss@example.com], subject: "Ship?", timeout: 1d, on_reject: continue }
  - id: ship
    if: "{{ steps.ask.decision == 'approved' }}"
    http: { url: "https://example.com/ship" }
  - id: tell
    needs: [ask]
    http: { url: "https://example.com/tell", body: { d: "{{ steps.ask.decision }}" } }
"#,
    );
    let mut run = new_run(&wf, json!({}));
    apply(&wf, &mut run, started(), t0());
    let effects = apply(&wf, &mut run, decision("ask", Decision::Rejected), t0());
    assert_eq!(
        calls(&effects),
        ["tell"],
        "the run goes on; `ship` is skipped by its if"
    );
    assert_eq!(status(&run, "ask"), StepStatus::Succeeded);
    assert_eq!(status(&run, "ship"), StepStatus::Skipped);
    assert_eq!(
        run.step("ask")
            .and_then(|s| s.output.clone())
            .expect("output")["decision"],
        "rejected"
    );
    apply(&wf, &mut run, ok("tell", 1), t0());
    assert_eq!(run.status, RunStatus::Succeeded);
    // A deadline that rejects goes on the same way.
    let mut run = new_run(&wf, json!({}));
    apply(&wf, &mut run, started(), t0());
    let effects = apply(
        &wf,
        &mut run,
        timer("ask"),
        t0() + chrono::Duration::days(2),
    );
    assert_eq!(calls(&effects), ["tell"]);
    assert_eq!(
        run.step("ask")
            .and_then(|s| s.output.clone())
            .expect("output")["approver"],
        "timeout"
    );
}

#[test]
fn a_run_timeout_fails_the_run_during_a_sleep_and_runs_the_hooks() {
    let wf = workflow(
        r#"
name: slow
timeout: 2h
steps:
  - id: nap
    sleep: 1d
  - id: side
    needs: []
    http: { url: "https://example.com/side" }
  - id: after
    needs: [nap, side]
    http: { url: "https://example.com/after" }
on_failure:
  - http: { url: "https://example.com/hook", body: { e: "{{ failure.error }}" } }
"#,
    );
    let mut run = new_run(&wf, json!({}));
    apply(&wf, &mut run, started(), t0());
    let deadline = t0() + chrono::Duration::hours(2);
    assert_eq!(run.deadline, Some(deadline));
    assert_eq!(
        run.wake_at,
        Some(deadline),
        "the deadline comes before the sleep's end"
    );
    // Too early: nothing.
    assert!(
        apply(
            &wf,
            &mut run,
            Event::DeadlinePassed,
            t0() + chrono::Duration::hours(1)
        )
        .is_empty()
    );
    let effects = apply(&wf, &mut run, Event::DeadlinePassed, deadline);
    assert!(effects.contains(&Effect::AbandonInFlight));
    assert_eq!(calls(&effects), ["on_failure-1"]);
    assert_eq!(status(&run, "nap"), StepStatus::Cancelled);
    assert_eq!(status(&run, "side"), StepStatus::Cancelled);
    assert_eq!(status(&run, "after"), StepStatus::Skipped);
    let failure = run.failure.clone().expect("failure");
    assert_eq!(failure.step, "nap");
    assert_eq!(
        failure.error,
        "the run's timeout of 2h passed (it started at 2026-01-05T09:00:00Z)"
    );
    // A second deadline event (a timer fired twice) changes nothing.
    assert!(apply(&wf, &mut run, Event::DeadlinePassed, deadline).is_empty());
    apply(&wf, &mut run, ok("on_failure-1", 1), deadline);
    assert_eq!(run.status, RunStatus::Failed);
}

#[test]
fn a_fan_outs_output_keeps_item_bodies_up_to_8_mib() {
    let wf = workflow(
        "name: big\nsteps:\n  - id: send\n    foreach: [a, b, c]\n    http: { url: \"https://example.com/\" }\n",
    );
    let mut run = new_run(&wf, json!({}));
    let mut items = Items::default();
    items.apply(&wf, &mut run, started());
    let big = "x".repeat(3 * 1024 * 1024);
    for i in 0..3 {
        let event = Event::AttemptSucceeded {
            step: "send".into(),
            attempt: 1,
            output: json!({ "status": 200, "headers": {}, "body": big }),
            item: Some(i),
        };
        items.apply(&wf, &mut run, event);
    }
    assert_eq!(run.status, RunStatus::Succeeded);
    let out = run
        .step("send")
        .and_then(|s| s.output.clone())
        .expect("output");
    assert_eq!(
        out["bodies_omitted"], 1,
        "two 3 MiB bodies fit in 8 MiB, the third does not"
    );
    assert_eq!(
        out["items"][1]["body"].as_str().map(str::len),
        Some(big.len())
    );
    assert_eq!(out["items"][2]["body"], Value::Null);
    assert_eq!(out["items"][2]["status"], "succeeded");
}
