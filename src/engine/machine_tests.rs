//! Tests of the run state machine: every run state × every event as a table, late and duplicate
//! events, focused cases (retries, backoff, `if`, sleeps, approvals, hooks, retrying a failed run)
//! and a property test over random event sequences.
//!
//! Part of the pure core's tests: no I/O.

use super::*;
use crate::workflow::{Decision, Workflow, check_file};
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

pub(super) fn workflow(yaml: &str) -> Workflow {
    check_file("workflows/test.yaml", yaml)
        .unwrap_or_else(|d| panic!("the test workflow does not check: {d:#?}\n{yaml}"))
}

pub(super) fn t0() -> DateTime<Utc> {
    "2026-01-05T09:00:00Z".parse().unwrap()
}

pub(super) fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

pub(super) fn new_run(wf: &Workflow, input: Value) -> Run {
    Run::new(
        wf,
        NewRun {
            id: "run-1".into(),
            version: "v1".into(),
            trigger: Trigger::Api,
            input,
            scheduled_for: None,
            schedule_id: None,
        },
        t0(),
    )
}

/// Applies an event, checks that `decide` is deterministic and that the run's derived fields
/// hold, and keeps the new run.
pub(super) fn apply(wf: &Workflow, run: &mut Run, event: Event, now: DateTime<Utc>) -> Vec<Effect> {
    let (next, effects) = decide(wf, run, &event, now);
    let again = decide(wf, run, &event, now);
    assert_eq!(
        (&next, &effects),
        (&again.0, &again.1),
        "decide is not deterministic"
    );
    check_invariants(wf, &next);
    *run = next;
    effects
}

pub(super) fn started() -> Event {
    Event::Started
}

pub(super) fn ok(step: &str, attempt: u32) -> Event {
    ok_with(
        step,
        attempt,
        json!({ "status": 200, "headers": {}, "body": { "id": 7 } }),
    )
}

pub(super) fn ok_with(step: &str, attempt: u32, output: Value) -> Event {
    Event::AttemptSucceeded {
        step: step.into(),
        attempt,
        output,
        item: None,
    }
}

pub(super) fn fail(step: &str, attempt: u32, outcome: Outcome) -> Event {
    Event::AttemptFailed {
        step: step.into(),
        attempt,
        error: "HTTP 503".into(),
        status: Some(503),
        body: Some(json!({ "error": "busy" })),
        outcome,
        item: None,
    }
}

pub(super) fn retryable() -> Outcome {
    Outcome::Retryable { after: None }
}

pub(super) fn retry_after(secs: u64) -> Outcome {
    Outcome::Retryable {
        after: Some(Duration::from_secs(secs)),
    }
}

pub(super) fn timer(step: &str) -> Event {
    Event::TimerFired { step: step.into() }
}

pub(super) fn decision(step: &str, decision: Decision) -> Event {
    Event::ApprovalDecided {
        step: step.into(),
        decision,
        approver: "boss@example.com".into(),
        comment: Some("looks good".into()),
    }
}

pub(super) fn cancel() -> Event {
    Event::CancelRequested {
        reason: Some("stop".into()),
    }
}

/// `running pending … | pending …`: the status of every step, then of every hook.
fn statuses(run: &Run) -> String {
    let join = |list: &[StepState]| {
        list.iter()
            .map(|s| s.status.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!("{} | {}", join(&run.steps), join(&run.hooks))
}

/// Effects as short strings; approval deadlines relative to `now`.
fn show(effects: &[Effect], now: DateTime<Utc>) -> Vec<String> {
    effects
        .iter()
        .map(|e| match e {
            Effect::CallHttp { step, attempt, .. } => format!("http {step} {attempt}"),
            Effect::SendEmail { step, attempt, .. } => format!("email {step} {attempt}"),
            Effect::RequestApproval { step, deadline } => {
                format!("approval {step} in {}s", (*deadline - now).num_seconds())
            }
            Effect::AbandonInFlight => "abandon".into(),
            Effect::Finished { status } => format!("finished {}", status.as_str()),
            other => format!("{other:?}"),
        })
        .collect()
}

fn all_steps(run: &Run) -> impl Iterator<Item = &StepState> {
    run.steps.iter().chain(run.hooks.iter())
}

fn is_timer(status: StepStatus) -> bool {
    matches!(
        status,
        StepStatus::Retrying
            | StepStatus::Sleeping
            | StepStatus::WaitingApproval
            | StepStatus::WaitingEvent
    )
}

/// What must hold of every run `decide` returns.
pub(super) fn check_invariants(wf: &Workflow, run: &Run) {
    assert_eq!(
        run.finished_at.is_some(),
        run.status.is_terminal(),
        "finished_at is set exactly when the run is terminal: {run:#?}"
    );
    for s in all_steps(run) {
        if let Some(fan) = &s.fan {
            // A `foreach` step's timer is its earliest item retry.
            let earliest = fan.active.iter().filter_map(|a| a.wake_at).min();
            if !s.status.is_done() {
                assert_eq!(s.wake_at, earliest, "step `{}`: {run:#?}", s.id);
            }
            continue;
        }
        assert_eq!(
            s.wake_at.is_some(),
            is_timer(s.status),
            "step `{}` ({}) has wake_at {:?}",
            s.id,
            s.status.as_str(),
            s.wake_at
        );
    }
    let earliest = all_steps(run)
        .filter(|s| is_timer(s.status) || (s.status == StepStatus::Running && s.fan.is_some()))
        .filter_map(|s| s.wake_at)
        .chain(run.deadline.filter(|_| run.failure.is_none()))
        .min();
    if run.status.is_terminal() {
        assert_eq!(run.wake_at, None, "a terminal run has no timer");
    } else {
        assert_eq!(
            run.wake_at, earliest,
            "run.wake_at is the earliest step timer"
        );
        let active = |s: &&StepState| s.status != StepStatus::Pending && !s.status.is_done();
        let hooks = run.hooks.iter().filter(active).count();
        assert!(hooks <= 1, "more than one hook is active: {run:#?}");
        if run.failure.is_some() {
            assert!(
                !run.steps.iter().any(|s| active(&s)),
                "a step is active in a failed run: {run:#?}"
            );
        }
        for s in run.steps.iter().filter(active) {
            let def = wf.find_step(&s.id).expect("a step of the workflow");
            for need in &def.needs {
                let n = run.step(need).expect("a need is a step");
                assert!(
                    n.status.is_done(),
                    "step `{}` is active before `{need}` it needs is done: {run:#?}",
                    s.id
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Every run state × every event
// ---------------------------------------------------------------------------------------------

const TABLE_WORKFLOW: &str = r#"
name: table
steps:
  - id: call
    http: { url: "https://example.com/call" }
    retry: { limit: 2, backoff: fixed, initial: 10s }
  - id: nap
    sleep: 1h
  - id: review
    approval:
      to: [boss@example.com]
      subject: "Go on?"
      timeout: 1d
  - id: last
    http: { url: "https://example.com/last" }
on_failure:
  - id: alert
    http: { url: "https://example.com/alert" }
  - id: mail
    email:
      to: [ops@example.com]
      subject: "failed at {{ failure.step }}"
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Created, not started.
    Pending,
    /// `call` attempt 2 in flight.
    InFlight,
    /// `call` waiting 10 s before attempt 3.
    Backoff,
    /// `nap` sleeping for an hour.
    Sleeping,
    /// `review` waiting for a decision (default on_timeout: reject).
    Waiting,
    /// `call` failed for good; hook `alert` attempt 1 in flight.
    Hooks,
    Succeeded,
    /// `call` failed, both hooks done.
    Failed,
    Rejected,
    /// Cancelled while `call` was in flight.
    Cancelled,
}

const STATES: [State; 10] = [
    State::Pending,
    State::InFlight,
    State::Backoff,
    State::Sleeping,
    State::Waiting,
    State::Hooks,
    State::Succeeded,
    State::Failed,
    State::Rejected,
    State::Cancelled,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    Started,
    /// AttemptSucceeded for the focus step's current attempt.
    Succeeded,
    /// AttemptSucceeded for another attempt of the focus step.
    SucceededStale,
    FailedRetryable,
    FailedPermanent,
    FailedStale,
    /// TimerFired for the focus step at its wake_at.
    TimerDue,
    /// TimerFired for the focus step before its wake_at.
    TimerNotDue,
    Approved,
    Rejected,
    Cancel,
    Retry,
    /// AttemptInterrupted for the focus step's current attempt (its performer stopped).
    Interrupted,
}

const EVENTS: [Ev; 13] = [
    Ev::Started,
    Ev::Succeeded,
    Ev::SucceededStale,
    Ev::FailedRetryable,
    Ev::FailedPermanent,
    Ev::FailedStale,
    Ev::TimerDue,
    Ev::TimerNotDue,
    Ev::Approved,
    Ev::Rejected,
    Ev::Cancel,
    Ev::Retry,
    Ev::Interrupted,
];

/// Builds a run in `state` by driving the machine. Returns the run, the time of its last event
/// and the step the table's events are about.
fn build(wf: &Workflow, state: State) -> (Run, DateTime<Utc>, &'static str) {
    // `call` attempt 1 fails, its retry timer fires 10 s later: attempt 2 is in flight.
    let in_flight = || {
        vec![
            (started(), 0),
            (fail("call", 1, retryable()), 1),
            (timer("call"), 11),
        ]
    };
    let waiting = || {
        let mut events = in_flight();
        events.push((ok("call", 2), 20));
        events.push((timer("nap"), 20 + 3600));
        events
    };
    let hooks = || {
        let mut events = in_flight();
        events.push((fail("call", 2, Outcome::Permanent), 20));
        events
    };
    let (events, focus): (Vec<(Event, i64)>, &'static str) = match state {
        State::Pending => (vec![], "call"),
        State::InFlight => (in_flight(), "call"),
        State::Backoff => {
            let mut events = in_flight();
            events.push((fail("call", 2, retryable()), 20));
            (events, "call")
        }
        State::Sleeping => {
            let mut events = in_flight();
            events.push((ok("call", 2), 20));
            (events, "nap")
        }
        State::Waiting => (waiting(), "review"),
        State::Hooks => (hooks(), "alert"),
        State::Succeeded => {
            let mut events = waiting();
            events.push((decision("review", Decision::Approved), 20 + 3660));
            events.push((ok("last", 1), 20 + 3720));
            (events, "last")
        }
        State::Failed => {
            let mut events = hooks();
            events.push((ok("alert", 1), 21));
            events.push((ok("mail", 1), 22));
            (events, "call")
        }
        State::Rejected => {
            let mut events = waiting();
            events.push((decision("review", Decision::Rejected), 20 + 3660));
            (events, "review")
        }
        State::Cancelled => {
            let mut events = in_flight();
            events.push((cancel(), 12));
            (events, "call")
        }
    };
    let mut run = new_run(wf, json!({}));
    let mut at = t0();
    for (event, offset) in events {
        at = t0() + secs(offset);
        apply(wf, &mut run, event, at);
    }
    (run, at, focus)
}

/// The concrete event and time for a table event aimed at `focus`.
fn resolve(run: &Run, focus: &str, ev: Ev, at: DateTime<Utc>) -> (Event, DateTime<Utc>) {
    let s = run.step(focus).expect("the focus step exists");
    let current = s.attempts.max(1);
    let stale = if s.attempts >= 2 {
        s.attempts - 1
    } else {
        s.attempts + 1
    };
    let soon = at + secs(1);
    match ev {
        Ev::Started => (started(), soon),
        Ev::Succeeded => (ok(focus, current), soon),
        Ev::SucceededStale => (ok(focus, stale), soon),
        Ev::FailedRetryable => (fail(focus, current, retryable()), soon),
        Ev::FailedPermanent => (fail(focus, current, Outcome::Permanent), soon),
        Ev::FailedStale => (fail(focus, stale, retryable()), soon),
        Ev::TimerDue => (timer(focus), s.wake_at.unwrap_or(soon)),
        Ev::TimerNotDue => {
            assert!(s.wake_at.is_none_or(|w| w > soon));
            (timer(focus), soon)
        }
        Ev::Approved => (decision(focus, Decision::Approved), soon),
        Ev::Rejected => (decision(focus, Decision::Rejected), soon),
        Ev::Cancel => (cancel(), soon),
        Ev::Retry => (Event::RetryRequested, soon),
        Ev::Interrupted => (
            Event::AttemptInterrupted {
                step: focus.into(),
                attempt: current,
                item: None,
            },
            soon,
        ),
    }
}

#[derive(Debug)]
enum Want {
    /// The run is returned unchanged and there are no effects.
    Absorbed,
    /// The run has this status, these step statuses (`steps | hooks`) and these effects.
    Becomes(RunStatus, &'static str, &'static [&'static str]),
}

#[test]
fn every_state_by_every_event() {
    use Ev as E;
    use RunStatus as R;
    use State as S;
    use Want::*;
    const CANCELLED_IN_FLIGHT: &str =
        "cancelled cancelled cancelled cancelled | cancelled cancelled";
    const CANCEL: &[&str] = &["abandon", "finished cancelled"];
    let cases: Vec<(State, Ev, Want)> = vec![
        // Pending: only Started and CancelRequested do anything.
        (
            S::Pending,
            E::Started,
            Becomes(
                R::Running,
                "running pending pending pending | pending pending",
                &["http call 1"],
            ),
        ),
        (S::Pending, E::Succeeded, Absorbed),
        (S::Pending, E::SucceededStale, Absorbed),
        (S::Pending, E::FailedRetryable, Absorbed),
        (S::Pending, E::FailedPermanent, Absorbed),
        (S::Pending, E::FailedStale, Absorbed),
        (S::Pending, E::TimerDue, Absorbed),
        (S::Pending, E::TimerNotDue, Absorbed),
        (S::Pending, E::Approved, Absorbed),
        (S::Pending, E::Rejected, Absorbed),
        (
            S::Pending,
            E::Cancel,
            Becomes(
                R::Cancelled,
                "cancelled cancelled cancelled cancelled | cancelled cancelled",
                CANCEL,
            ),
        ),
        (S::Pending, E::Retry, Absorbed),
        // `call` attempt 2 in flight (limit 2: one more retry allowed).
        (S::InFlight, E::Started, Absorbed),
        (
            S::InFlight,
            E::Succeeded,
            Becomes(
                R::Sleeping,
                "succeeded sleeping pending pending | pending pending",
                &[],
            ),
        ),
        (S::InFlight, E::SucceededStale, Absorbed),
        (
            S::InFlight,
            E::FailedRetryable,
            Becomes(
                R::Running,
                "retrying pending pending pending | pending pending",
                &[],
            ),
        ),
        (
            S::InFlight,
            E::FailedPermanent,
            Becomes(
                R::Running,
                "failed skipped skipped skipped | running pending",
                &["http alert 1"],
            ),
        ),
        (S::InFlight, E::FailedStale, Absorbed),
        (S::InFlight, E::TimerDue, Absorbed),
        (S::InFlight, E::TimerNotDue, Absorbed),
        (S::InFlight, E::Approved, Absorbed),
        (S::InFlight, E::Rejected, Absorbed),
        (
            S::InFlight,
            E::Cancel,
            Becomes(R::Cancelled, CANCELLED_IN_FLIGHT, CANCEL),
        ),
        (S::InFlight, E::Retry, Absorbed),
        // `call` in backoff after attempt 2: nothing is in flight, so every report is stale.
        (S::Backoff, E::Started, Absorbed),
        (S::Backoff, E::Succeeded, Absorbed),
        (S::Backoff, E::SucceededStale, Absorbed),
        (S::Backoff, E::FailedRetryable, Absorbed),
        (S::Backoff, E::FailedPermanent, Absorbed),
        (S::Backoff, E::FailedStale, Absorbed),
        (
            S::Backoff,
            E::TimerDue,
            Becomes(
                R::Running,
                "running pending pending pending | pending pending",
                &["http call 3"],
            ),
        ),
        (S::Backoff, E::TimerNotDue, Absorbed),
        (S::Backoff, E::Approved, Absorbed),
        (S::Backoff, E::Rejected, Absorbed),
        (
            S::Backoff,
            E::Cancel,
            Becomes(R::Cancelled, CANCELLED_IN_FLIGHT, CANCEL),
        ),
        (S::Backoff, E::Retry, Absorbed),
        // `nap` sleeping.
        (S::Sleeping, E::Started, Absorbed),
        (S::Sleeping, E::Succeeded, Absorbed),
        (S::Sleeping, E::SucceededStale, Absorbed),
        (S::Sleeping, E::FailedRetryable, Absorbed),
        (S::Sleeping, E::FailedPermanent, Absorbed),
        (S::Sleeping, E::FailedStale, Absorbed),
        (
            S::Sleeping,
            E::TimerDue,
            Becomes(
                R::WaitingApproval,
                "succeeded succeeded waiting_approval pending | pending pending",
                &["approval review in 86400s"],
            ),
        ),
        (S::Sleeping, E::TimerNotDue, Absorbed),
        (S::Sleeping, E::Approved, Absorbed),
        (S::Sleeping, E::Rejected, Absorbed),
        (
            S::Sleeping,
            E::Cancel,
            Becomes(
                R::Cancelled,
                "succeeded cancelled cancelled cancelled | cancelled cancelled",
                CANCEL,
            ),
        ),
        (S::Sleeping, E::Retry, Absorbed),
        // `review` waiting for a decision; the deadline rejects.
        (S::Waiting, E::Started, Absorbed),
        (S::Waiting, E::Succeeded, Absorbed),
        (S::Waiting, E::SucceededStale, Absorbed),
        (S::Waiting, E::FailedRetryable, Absorbed),
        (S::Waiting, E::FailedPermanent, Absorbed),
        (S::Waiting, E::FailedStale, Absorbed),
        (
            S::Waiting,
            E::TimerDue,
            Becomes(
                R::Rejected,
                "succeeded succeeded succeeded skipped | skipped skipped",
                &["finished rejected"],
            ),
        ),
        (S::Waiting, E::TimerNotDue, Absorbed),
        (
            S::Waiting,
            E::Approved,
            Becomes(
                R::Running,
                "succeeded succeeded succeeded running | pending pending",
                &["http last 1"],
            ),
        ),
        (
            S::Waiting,
            E::Rejected,
            Becomes(
                R::Rejected,
                "succeeded succeeded succeeded skipped | skipped skipped",
                &["finished rejected"],
            ),
        ),
        (
            S::Waiting,
            E::Cancel,
            Becomes(
                R::Cancelled,
                "succeeded succeeded cancelled cancelled | cancelled cancelled",
                CANCEL,
            ),
        ),
        (S::Waiting, E::Retry, Absorbed),
        // Hook `alert` attempt 1 in flight (default retry: limit 3).
        (S::Hooks, E::Started, Absorbed),
        (
            S::Hooks,
            E::Succeeded,
            Becomes(
                R::Running,
                "failed skipped skipped skipped | succeeded running",
                &["email mail 1"],
            ),
        ),
        (S::Hooks, E::SucceededStale, Absorbed),
        (
            S::Hooks,
            E::FailedRetryable,
            Becomes(
                R::Running,
                "failed skipped skipped skipped | retrying pending",
                &[],
            ),
        ),
        (
            S::Hooks,
            E::FailedPermanent,
            Becomes(
                R::Running,
                "failed skipped skipped skipped | failed running",
                &["email mail 1"],
            ),
        ),
        (S::Hooks, E::FailedStale, Absorbed),
        (S::Hooks, E::TimerDue, Absorbed),
        (S::Hooks, E::TimerNotDue, Absorbed),
        (S::Hooks, E::Approved, Absorbed),
        (S::Hooks, E::Rejected, Absorbed),
        (
            S::Hooks,
            E::Cancel,
            Becomes(
                R::Cancelled,
                "failed skipped skipped skipped | cancelled cancelled",
                CANCEL,
            ),
        ),
        // The run has not failed yet (its hooks are running): nothing to retry.
        (S::Hooks, E::Retry, Absorbed),
        // Terminal runs absorb everything ...
        (S::Succeeded, E::Started, Absorbed),
        (S::Succeeded, E::Succeeded, Absorbed),
        (S::Succeeded, E::SucceededStale, Absorbed),
        (S::Succeeded, E::FailedRetryable, Absorbed),
        (S::Succeeded, E::FailedPermanent, Absorbed),
        (S::Succeeded, E::FailedStale, Absorbed),
        (S::Succeeded, E::TimerDue, Absorbed),
        (S::Succeeded, E::TimerNotDue, Absorbed),
        (S::Succeeded, E::Approved, Absorbed),
        (S::Succeeded, E::Rejected, Absorbed),
        (S::Succeeded, E::Cancel, Absorbed),
        (S::Succeeded, E::Retry, Absorbed),
        // ... except that a failed run can be retried from its failed step.
        (S::Failed, E::Started, Absorbed),
        (S::Failed, E::Succeeded, Absorbed),
        (S::Failed, E::SucceededStale, Absorbed),
        (S::Failed, E::FailedRetryable, Absorbed),
        (S::Failed, E::FailedPermanent, Absorbed),
        (S::Failed, E::FailedStale, Absorbed),
        (S::Failed, E::TimerDue, Absorbed),
        (S::Failed, E::TimerNotDue, Absorbed),
        (S::Failed, E::Approved, Absorbed),
        (S::Failed, E::Rejected, Absorbed),
        (S::Failed, E::Cancel, Absorbed),
        (
            S::Failed,
            E::Retry,
            Becomes(
                R::Running,
                "running pending pending pending | pending pending",
                // Attempt numbers continue across a retry (attempts 1 and 2 failed before).
                &["http call 3"],
            ),
        ),
        (S::Rejected, E::Started, Absorbed),
        (S::Rejected, E::Succeeded, Absorbed),
        (S::Rejected, E::SucceededStale, Absorbed),
        (S::Rejected, E::FailedRetryable, Absorbed),
        (S::Rejected, E::FailedPermanent, Absorbed),
        (S::Rejected, E::FailedStale, Absorbed),
        (S::Rejected, E::TimerDue, Absorbed),
        (S::Rejected, E::TimerNotDue, Absorbed),
        (S::Rejected, E::Approved, Absorbed),
        (S::Rejected, E::Rejected, Absorbed),
        (S::Rejected, E::Cancel, Absorbed),
        (S::Rejected, E::Retry, Absorbed),
        (S::Cancelled, E::Started, Absorbed),
        (S::Cancelled, E::Succeeded, Absorbed),
        (S::Cancelled, E::SucceededStale, Absorbed),
        (S::Cancelled, E::FailedRetryable, Absorbed),
        (S::Cancelled, E::FailedPermanent, Absorbed),
        (S::Cancelled, E::FailedStale, Absorbed),
        (S::Cancelled, E::TimerDue, Absorbed),
        (S::Cancelled, E::TimerNotDue, Absorbed),
        (S::Cancelled, E::Approved, Absorbed),
        (S::Cancelled, E::Rejected, Absorbed),
        (S::Cancelled, E::Cancel, Absorbed),
        (S::Cancelled, E::Retry, Absorbed),
        // An attempt in flight whose performer stopped is sent again as the next attempt; only
        // a step with an attempt in flight takes it.
        (S::Pending, E::Interrupted, Absorbed),
        (
            S::InFlight,
            E::Interrupted,
            Becomes(
                R::Running,
                "running pending pending pending | pending pending",
                &["http call 3"],
            ),
        ),
        (S::Backoff, E::Interrupted, Absorbed),
        (S::Sleeping, E::Interrupted, Absorbed),
        (S::Waiting, E::Interrupted, Absorbed),
        (
            S::Hooks,
            E::Interrupted,
            Becomes(
                R::Running,
                "failed skipped skipped skipped | running pending",
                &["http alert 2"],
            ),
        ),
        (S::Succeeded, E::Interrupted, Absorbed),
        (S::Failed, E::Interrupted, Absorbed),
        (S::Rejected, E::Interrupted, Absorbed),
        (S::Cancelled, E::Interrupted, Absorbed),
    ];

    // The table covers every pair exactly once.
    assert_eq!(cases.len(), STATES.len() * EVENTS.len());
    for state in STATES {
        for ev in EVENTS {
            let n = cases
                .iter()
                .filter(|(s, e, _)| *s == state && *e == ev)
                .count();
            assert_eq!(n, 1, "{state:?} × {ev:?} appears {n} times");
        }
    }

    let wf = workflow(TABLE_WORKFLOW);
    for (state, ev, want) in &cases {
        let (before, at, focus) = build(&wf, *state);
        let expected_status = match state {
            State::Pending => RunStatus::Pending,
            State::InFlight | State::Backoff | State::Hooks => RunStatus::Running,
            State::Sleeping => RunStatus::Sleeping,
            State::Waiting => RunStatus::WaitingApproval,
            State::Succeeded => RunStatus::Succeeded,
            State::Failed => RunStatus::Failed,
            State::Rejected => RunStatus::Rejected,
            State::Cancelled => RunStatus::Cancelled,
        };
        assert_eq!(before.status, expected_status, "building {state:?}");
        let (event, now) = resolve(&before, focus, *ev, at);
        let mut after = before.clone();
        let effects = apply(&wf, &mut after, event.clone(), now);
        let what = format!("{state:?} × {ev:?} ({event:?} at {now})");
        match want {
            Absorbed => {
                assert_eq!(after, before, "{what}: the run changed");
                assert!(effects.is_empty(), "{what}: effects {effects:?}");
            }
            Becomes(status, steps, want_effects) => {
                assert_eq!(after.status, *status, "{what}: run status");
                assert_eq!(statuses(&after), *steps, "{what}: step statuses");
                assert_eq!(show(&effects, now), *want_effects, "{what}: effects");
                let finished = effects
                    .iter()
                    .filter(|e| matches!(e, Effect::Finished { .. }))
                    .count();
                assert_eq!(finished, usize::from(status.is_terminal()), "{what}");
                if status.is_terminal() {
                    assert_eq!(after.finished_at, Some(now), "{what}: finished_at");
                }
            }
        }
    }
}

#[test]
fn table_states_have_the_expected_details() {
    let wf = workflow(TABLE_WORKFLOW);

    let (run, _, _) = build(&wf, State::Backoff);
    let call = run.step("call").unwrap();
    assert_eq!(call.attempts, 2);
    assert_eq!(call.wake_at, Some(t0() + secs(30)));
    assert_eq!(call.last_status, Some(503));
    assert_eq!(run.wake_at, call.wake_at);
    assert_eq!(
        run.waiting_for().as_deref(),
        Some("attempt 3 of step `call` at 2026-01-05T09:00:30Z")
    );

    let (run, _, _) = build(&wf, State::Sleeping);
    assert_eq!(run.wake_at, Some(t0() + secs(20 + 3600)));
    assert_eq!(run.step("call").unwrap().last_status, Some(200));

    let (run, at, _) = build(&wf, State::Waiting);
    assert_eq!(run.wake_at, Some(at + secs(86_400)));
    assert_eq!(
        run.step("nap").unwrap().output,
        Some(json!({ "woke_at": "2026-01-05T10:00:20.000Z" }))
    );

    let (run, at, _) = build(&wf, State::Hooks);
    assert_eq!(
        run.failure,
        Some(Failure {
            step: "call".into(),
            error: "HTTP 503".into(),
            status: Some(503),
            body: Some(json!({ "error": "busy" })),
            attempts: 2,
        })
    );
    for id in ["nap", "review", "last"] {
        assert_eq!(run.step(id).unwrap().status, StepStatus::Skipped, "{id}");
    }
    assert_eq!(run.step("call").unwrap().finished_at, Some(at));

    let (run, _, _) = build(&wf, State::Cancelled);
    let call = run.step("call").unwrap();
    assert_eq!(call.error.as_deref(), Some("stop"));
    assert_eq!(run.finished_at, Some(t0() + secs(12)));
    assert_eq!(run.waiting_for(), None);

    let (run, at, _) = build(&wf, State::Failed);
    assert_eq!(run.finished_at, Some(at));
    assert!(run.failure.is_some());
}

// ---------------------------------------------------------------------------------------------
// Late and duplicate events
// ---------------------------------------------------------------------------------------------

/// Asserts that `event` at `now` leaves the run as it is and has no effects.
fn assert_absorbed(wf: &Workflow, run: &Run, event: Event, now: DateTime<Utc>) {
    let (next, effects) = decide(wf, run, &event, now);
    assert_eq!(&next, run, "{event:?} changed the run");
    assert!(effects.is_empty(), "{event:?} had effects {effects:?}");
}

/// A spread of events about every step of the table workflow, and about no step.
fn every_event() -> Vec<Event> {
    let mut events = vec![started(), cancel(), Event::RetryRequested];
    for step in ["call", "nap", "review", "last", "alert", "mail", "nope"] {
        for attempt in 0..4 {
            events.push(ok(step, attempt));
            events.push(fail(step, attempt, retryable()));
            events.push(fail(step, attempt, retry_after(0)));
            events.push(fail(step, attempt, Outcome::Permanent));
        }
        events.push(timer(step));
        events.push(decision(step, Decision::Approved));
        events.push(decision(step, Decision::Rejected));
    }
    events
}

#[test]
fn attempt_succeeded_twice_is_absorbed() {
    let wf = workflow(TABLE_WORKFLOW);
    let (mut run, at, _) = build(&wf, State::InFlight);
    let effects = apply(&wf, &mut run, ok("call", 2), at + secs(1));
    assert!(effects.is_empty());
    assert_eq!(run.status, RunStatus::Sleeping);
    assert_absorbed(&wf, &run, ok("call", 2), at + secs(2));
    // A late failure report for the same attempt is absorbed too.
    assert_absorbed(&wf, &run, fail("call", 2, retryable()), at + secs(2));
    assert_absorbed(&wf, &run, fail("call", 2, Outcome::Permanent), at + secs(2));
}

#[test]
fn last_step_succeeded_twice_emits_finished_once() {
    let wf = workflow(TABLE_WORKFLOW);
    let (mut run, at, _) = build(&wf, State::Waiting);
    apply(
        &wf,
        &mut run,
        decision("review", Decision::Approved),
        at + secs(1),
    );
    let effects = apply(&wf, &mut run, ok("last", 1), at + secs(2));
    assert_eq!(show(&effects, at), ["finished succeeded"]);
    assert_eq!(run.finished_at, Some(at + secs(2)));
    assert_absorbed(&wf, &run, ok("last", 1), at + secs(3));
}

#[test]
fn timer_after_the_step_moved_on_is_absorbed() {
    let wf = workflow(TABLE_WORKFLOW);
    // The sleep woke; its timer is delivered again.
    let (mut run, _, _) = build(&wf, State::Sleeping);
    let wake = run.wake_at.unwrap();
    apply(&wf, &mut run, timer("nap"), wake);
    assert_eq!(run.status, RunStatus::WaitingApproval);
    assert_absorbed(&wf, &run, timer("nap"), wake + secs(5));

    // The retry timer fired, the attempt succeeded; the timer is delivered again.
    let (mut run, _, _) = build(&wf, State::Backoff);
    let wake = run.wake_at.unwrap();
    apply(&wf, &mut run, timer("call"), wake);
    assert_absorbed(&wf, &run, timer("call"), wake + secs(1));
    apply(&wf, &mut run, ok("call", 3), wake + secs(2));
    assert_absorbed(&wf, &run, timer("call"), wake + secs(3));

    // The approval was decided; the deadline passes later.
    let (mut run, at, _) = build(&wf, State::Waiting);
    let deadline = run.wake_at.unwrap();
    apply(
        &wf,
        &mut run,
        decision("review", Decision::Approved),
        at + secs(1),
    );
    assert_absorbed(&wf, &run, timer("review"), deadline);
}

#[test]
fn second_approval_decision_is_absorbed() {
    let wf = workflow(TABLE_WORKFLOW);
    let (mut run, at, _) = build(&wf, State::Waiting);
    apply(
        &wf,
        &mut run,
        decision("review", Decision::Approved),
        at + secs(1),
    );
    assert_absorbed(
        &wf,
        &run,
        decision("review", Decision::Rejected),
        at + secs(2),
    );
    assert_absorbed(
        &wf,
        &run,
        decision("review", Decision::Approved),
        at + secs(2),
    );
    assert_eq!(
        run.step("review").unwrap().output.as_ref().unwrap()["decision"],
        "approved"
    );
}

#[test]
fn any_event_after_cancel_is_absorbed() {
    let wf = workflow(TABLE_WORKFLOW);
    for state in STATES {
        let (mut run, at, _) = build(&wf, state);
        if !run.status.is_terminal() {
            let effects = apply(&wf, &mut run, cancel(), at + secs(1));
            assert_eq!(
                show(&effects, at),
                ["abandon", "finished cancelled"],
                "{state:?}"
            );
        }
        for event in every_event() {
            for later in [secs(2), secs(86_400 * 30)] {
                if run.status == RunStatus::Failed && event == Event::RetryRequested {
                    continue;
                }
                assert_absorbed(&wf, &run, event.clone(), at + later);
            }
        }
    }
}

#[test]
fn events_about_unknown_steps_are_absorbed() {
    let wf = workflow(TABLE_WORKFLOW);
    for state in [
        State::Pending,
        State::InFlight,
        State::Backoff,
        State::Sleeping,
        State::Waiting,
        State::Hooks,
    ] {
        let (run, at, _) = build(&wf, state);
        for event in [
            ok("nope", 1),
            fail("nope", 1, Outcome::Permanent),
            timer("nope"),
            decision("nope", Decision::Rejected),
        ] {
            assert_absorbed(&wf, &run, event, at + secs(86_400 * 30));
        }
    }
}

#[test]
fn approval_decision_for_a_step_that_is_not_waiting_is_absorbed() {
    let wf = workflow(TABLE_WORKFLOW);
    let (run, at, _) = build(&wf, State::Sleeping);
    // `review` is still pending.
    assert_absorbed(&wf, &run, decision("review", Decision::Approved), at);
    assert_absorbed(&wf, &run, timer("review"), at + secs(86_400 * 30));
}

// ---------------------------------------------------------------------------------------------
// Retries and backoff
// ---------------------------------------------------------------------------------------------

fn one_http(retry: Option<&str>) -> Workflow {
    let retry = retry.map_or(String::new(), |r| format!("    retry: {r}\n"));
    workflow(&format!(
        "name: one\nsteps:\n  - id: a\n    http: {{ url: \"https://example.com/a\" }}\n{retry}"
    ))
}

/// Fails step `a` with `outcome` at every attempt, firing each retry timer when due. Returns the
/// delays between each failure and the next attempt, in seconds, and the failed run.
fn fail_until_done(wf: &Workflow, outcome: Outcome) -> (Vec<i64>, Run) {
    let mut run = new_run(wf, json!({}));
    let mut now = t0();
    assert_eq!(
        show(&apply(wf, &mut run, started(), now), now),
        ["http a 1"]
    );
    let mut delays = Vec::new();
    loop {
        let attempt = run.step("a").unwrap().attempts;
        now += secs(1);
        let effects = apply(wf, &mut run, fail("a", attempt, outcome.clone()), now);
        let a = run.step("a").unwrap();
        match a.status {
            StepStatus::Retrying => {
                assert!(effects.is_empty());
                assert_eq!(run.status, RunStatus::Running);
                let wake = a.wake_at.unwrap();
                assert_eq!(run.wake_at, Some(wake));
                delays.push((wake - now).num_seconds());
                if wake > now {
                    assert_absorbed(wf, &run, timer("a"), wake - secs(1));
                }
                now = wake;
                let effects = apply(wf, &mut run, timer("a"), now);
                assert_eq!(show(&effects, now), [format!("http a {}", attempt + 1)]);
            }
            StepStatus::Failed => {
                assert_eq!(show(&effects, now), ["finished failed"]);
                assert_eq!(run.status, RunStatus::Failed);
                return (delays, run);
            }
            other => panic!("unexpected step status {other:?}"),
        }
    }
}

#[test]
fn retry_limit_counts_retries_not_attempts() {
    for (limit, attempts) in [(0, 1), (1, 2), (3, 4)] {
        let wf = one_http(Some(&format!(
            "{{ limit: {limit}, backoff: fixed, initial: 5s }}"
        )));
        let (delays, run) = fail_until_done(&wf, retryable());
        assert_eq!(delays, vec![5; limit as usize], "limit {limit}");
        let a = run.step("a").unwrap();
        assert_eq!(a.attempts, attempts, "limit {limit}");
        let failure = run.failure.as_ref().unwrap();
        assert_eq!(failure.attempts, attempts);
        assert_eq!(failure.step, "a");
        assert_eq!(failure.status, Some(503));
        assert_eq!(failure.body, Some(json!({ "error": "busy" })));
        let error = if limit == 0 {
            "HTTP 503".to_string()
        } else {
            format!("HTTP 503 (gave up after {attempts} attempts)")
        };
        assert_eq!(failure.error, error);
        assert_eq!(a.error.as_deref(), Some(error.as_str()));
    }
}

#[test]
fn permanent_failure_does_not_retry() {
    let wf = one_http(Some("{ limit: 3 }"));
    let (delays, run) = fail_until_done(&wf, Outcome::Permanent);
    assert!(delays.is_empty());
    assert_eq!(run.failure.as_ref().unwrap().attempts, 1);
    assert_eq!(run.failure.as_ref().unwrap().error, "HTTP 503");
}

#[test]
fn retry_after_overrides_the_backoff() {
    let wf = one_http(Some("{ limit: 3, backoff: fixed, initial: 5s }"));
    let (delays, run) = fail_until_done(&wf, retry_after(90));
    assert_eq!(delays, [90, 90, 90]);
    assert_eq!(
        run.step("a").unwrap().attempts,
        4,
        "Retry-After grants no extra attempts"
    );

    let (delays, _) = fail_until_done(&wf, retry_after(0));
    assert_eq!(delays, [0, 0, 0]);
}

#[test]
fn backoff_follows_the_retry_policy() {
    let cases: &[(Option<&str>, &[i64])] = &[
        // QStash's default curve: limit 3, exponential, e^(2.5·n) seconds.
        (None, &[12, 148, 1808]),
        (Some("{ limit: 5 }"), &[12, 148, 1808, 22_026, 86_400]),
        (Some("{ limit: 3, max: 100s }"), &[12, 100, 100]),
        (
            Some("{ limit: 4, backoff: exponential, initial: 10s, max: 1m }"),
            &[10, 20, 40, 60],
        ),
        (
            Some("{ limit: 3, backoff: fixed, initial: 7s }"),
            &[7, 7, 7],
        ),
        (
            Some("{ limit: 3, backoff: linear, initial: 5s }"),
            &[5, 10, 15],
        ),
        (Some("{ limit: 2, backoff: linear }"), &[10, 20]),
        (Some("{ limit: 0 }"), &[]),
    ];
    for (retry, want) in cases {
        let (delays, _) = fail_until_done(&one_http(*retry), retryable());
        assert_eq!(delays, *want, "retry {retry:?}");
    }
}

#[test]
fn workflow_defaults_apply_to_step_retries() {
    let wf = workflow(
        r#"
name: defaults
defaults:
  retry: { limit: 2, backoff: fixed, initial: 3s }
steps:
  - id: a
    http: { url: "https://example.com/a" }
"#,
    );
    let (delays, _) = fail_until_done(&wf, retryable());
    assert_eq!(delays, [3, 3]);
}

#[test]
fn huge_retry_after_does_not_panic() {
    let wf = one_http(Some("{ limit: 3 }"));
    let mut run = new_run(&wf, json!({}));
    apply(&wf, &mut run, started(), t0());
    let effects = apply(
        &wf,
        &mut run,
        fail("a", 1, retry_after(u64::MAX)),
        t0() + secs(1),
    );
    assert!(effects.is_empty());
    let a = run.step("a").unwrap();
    assert_eq!(a.status, StepStatus::Retrying);
    assert!(a.wake_at.unwrap() > t0() + secs(86_400 * 365 * 1000));
    // The run can still be cancelled.
    let effects = apply(&wf, &mut run, cancel(), t0() + secs(2));
    assert_eq!(show(&effects, t0()), ["abandon", "finished cancelled"]);
}

#[test]
fn email_steps_send_email_effects_and_retry() {
    let wf = workflow(
        r#"
name: mail
steps:
  - id: tell
    email: { to: [ops@example.com], subject: "hello" }
    retry: { limit: 1, backoff: fixed, initial: 1m }
"#,
    );
    let mut run = new_run(&wf, json!({}));
    let now = t0();
    assert_eq!(
        show(&apply(&wf, &mut run, started(), now), now),
        ["email tell 1"]
    );
    apply(&wf, &mut run, fail("tell", 1, retryable()), now);
    let effects = apply(&wf, &mut run, timer("tell"), now + secs(60));
    assert_eq!(show(&effects, now), ["email tell 2"]);
    let effects = apply(
        &wf,
        &mut run,
        ok_with("tell", 2, json!({ "sent_to": ["ops@example.com"] })),
        now + secs(61),
    );
    assert_eq!(show(&effects, now), ["finished succeeded"]);
    let tell = run.step("tell").unwrap();
    assert_eq!(tell.last_status, None);
    assert_eq!(
        tell.error, None,
        "the error of the failed attempt is cleared"
    );
}

// ---------------------------------------------------------------------------------------------
// `if`, sleeps and approvals
// ---------------------------------------------------------------------------------------------

const CONDITIONAL: &str = r#"
name: cond
inputs:
  go: { type: boolean, required: true }
steps:
  - id: a
    if: "{{ input.go }}"
    http: { url: "https://example.com/a" }
  - id: b
    http: { url: "https://example.com/b" }
  - id: c
    if: "{{ steps.b.status == 201 }}"
    email: { to: [ops@example.com], subject: "created" }
  - id: d
    http: { url: "https://example.com/d" }
"#;

#[test]
fn false_if_skips_the_step() {
    let wf = workflow(CONDITIONAL);
    let mut run = new_run(&wf, json!({ "go": false }));
    let now = t0();
    let effects = apply(&wf, &mut run, started(), now);
    assert_eq!(show(&effects, now), ["http b 1"]);
    assert_eq!(statuses(&run), "skipped running pending pending | ");
    let a = run.step("a").unwrap();
    assert_eq!(
        (a.attempts, a.finished_at, &a.output),
        (0, Some(now), &None)
    );
    assert!(
        context(&wf, &run, None)["steps"].get("a").is_none(),
        "a skipped step has no output"
    );

    let effects = apply(
        &wf,
        &mut run,
        ok_with("b", 1, json!({ "status": 200, "body": null })),
        now + secs(1),
    );
    assert_eq!(show(&effects, now), ["http d 1"]);
    assert_eq!(statuses(&run), "skipped succeeded skipped running | ");

    let effects = apply(&wf, &mut run, ok("d", 1), now + secs(2));
    assert_eq!(show(&effects, now), ["finished succeeded"]);
    assert_eq!(run.status, RunStatus::Succeeded);
}

#[test]
fn true_if_runs_the_step() {
    let wf = workflow(CONDITIONAL);
    let mut run = new_run(&wf, json!({ "go": true }));
    let now = t0();
    assert_eq!(
        show(&apply(&wf, &mut run, started(), now), now),
        ["http a 1"]
    );
    apply(&wf, &mut run, ok("a", 1), now);
    let effects = apply(
        &wf,
        &mut run,
        ok_with("b", 1, json!({ "status": 201, "body": null })),
        now,
    );
    assert_eq!(show(&effects, now), ["email c 1"]);
}

#[test]
fn all_steps_skipped_succeeds_at_once() {
    let wf = workflow(
        r#"
name: nothing
steps:
  - id: a
    if: "{{ false }}"
    http: { url: "https://example.com/a" }
"#,
    );
    let mut run = new_run(&wf, json!({}));
    let effects = apply(&wf, &mut run, started(), t0());
    assert_eq!(show(&effects, t0()), ["finished succeeded"]);
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.started_at, Some(t0()));
    assert_eq!(run.finished_at, Some(t0()));
}

#[test]
fn if_that_cannot_be_evaluated_fails_the_step() {
    let wf = workflow(
        r#"
name: broken-if
steps:
  - id: a
    http: { url: "https://example.com/a" }
  - id: b
    if: "{{ steps.a.status + 'x' }}"
    http: { url: "https://example.com/b" }
  - id: c
    http: { url: "https://example.com/c" }
"#,
    );
    let mut run = new_run(&wf, json!({}));
    apply(&wf, &mut run, started(), t0());
    let effects = apply(&wf, &mut run, ok("a", 1), t0());
    assert_eq!(show(&effects, t0()), ["finished failed"]);
    assert_eq!(statuses(&run), "succeeded failed skipped | ");
    let failure = run.failure.as_ref().unwrap();
    assert_eq!((failure.step.as_str(), failure.attempts), ("b", 0));
    assert!(
        failure
            .error
            .starts_with("the `if` condition of step `b` failed"),
        "{}",
        failure.error
    );
}

const SLEEP_UNTIL: &str = r#"
name: wake
inputs:
  at: { type: string, required: true }
steps:
  - id: nap
    sleep_until: "{{ input.at }}"
  - id: after
    http: { url: "https://example.com/after" }
"#;

#[test]
fn sleep_until_in_the_past_completes_at_once() {
    let wf = workflow(SLEEP_UNTIL);
    for at in ["2020-01-01T00:00:00Z", "2026-01-05T09:00:00Z"] {
        let mut run = new_run(&wf, json!({ "at": at }));
        let effects = apply(&wf, &mut run, started(), t0());
        assert_eq!(show(&effects, t0()), ["http after 1"], "{at}");
        assert_eq!(run.status, RunStatus::Running);
        let nap = run.step("nap").unwrap();
        assert_eq!(nap.status, StepStatus::Succeeded);
        assert_eq!(
            nap.output,
            Some(json!({ "woke_at": "2026-01-05T09:00:00.000Z" }))
        );
        assert_eq!(run.wake_at, None);
    }
}

#[test]
fn sleep_until_in_the_future_sleeps() {
    let wf = workflow(SLEEP_UNTIL);
    // An offset is converted to UTC.
    let mut run = new_run(&wf, json!({ "at": "2026-01-05T12:00:00+02:00" }));
    let wake = t0() + secs(3600);
    assert!(apply(&wf, &mut run, started(), t0()).is_empty());
    assert_eq!(run.status, RunStatus::Sleeping);
    assert_eq!(run.wake_at, Some(wake));
    assert_eq!(
        run.waiting_for().as_deref(),
        Some("step `nap` to wake at 2026-01-05T10:00:00Z")
    );
    assert_absorbed(&wf, &run, timer("nap"), wake - secs(1));
    // Woken 3.25 s late: `woke_at` keeps the milliseconds.
    let woke = wake + secs(3) + chrono::Duration::milliseconds(250);
    let effects = apply(&wf, &mut run, timer("nap"), woke);
    assert_eq!(show(&effects, wake), ["http after 1"]);
    assert_eq!(
        run.step("nap").unwrap().output,
        Some(json!({ "woke_at": "2026-01-05T10:00:03.250Z" }))
    );
}

#[test]
fn sleep_until_that_is_not_a_time_fails() {
    let wf = workflow(SLEEP_UNTIL);
    let mut run = new_run(&wf, json!({ "at": "tomorrow" }));
    let effects = apply(&wf, &mut run, started(), t0());
    assert_eq!(show(&effects, t0()), ["finished failed"]);
    assert_eq!(statuses(&run), "failed skipped | ");
    let error = &run.failure.as_ref().unwrap().error;
    assert!(error.contains("is not an RFC 3339 time"), "{error}");
}

#[test]
fn sleep_wakes_after_its_duration() {
    let wf = workflow(
        r#"
name: sleepy
steps:
  - id: nap
    sleep: 1d12h
"#,
    );
    let mut run = new_run(&wf, json!({}));
    apply(&wf, &mut run, started(), t0());
    let wake = t0() + secs(36 * 3600);
    assert_eq!((run.status, run.wake_at), (RunStatus::Sleeping, Some(wake)));
    let effects = apply(&wf, &mut run, timer("nap"), wake);
    assert_eq!(show(&effects, wake), ["finished succeeded"]);
}

#[test]
fn approval_timeout_uses_on_timeout() {
    let wf = workflow(
        r#"
name: lenient
steps:
  - id: review
    approval:
      to: [boss@example.com]
      subject: "ok?"
      timeout: 2h
      on_timeout: approve
  - id: next
    http: { url: "https://example.com/next" }
"#,
    );
    let mut run = new_run(&wf, json!({}));
    let effects = apply(&wf, &mut run, started(), t0());
    assert_eq!(show(&effects, t0()), ["approval review in 7200s"]);
    let deadline = t0() + secs(7200);
    assert_eq!(run.wake_at, Some(deadline));
    assert_absorbed(&wf, &run, timer("review"), deadline - secs(1));
    let effects = apply(&wf, &mut run, timer("review"), deadline);
    assert_eq!(show(&effects, t0()), ["http next 1"]);
    assert_eq!(
        run.step("review").unwrap().output,
        Some(json!({
            "decision": "approved",
            "approver": "timeout",
            "comment": "no decision before the deadline",
            "decided_at": "2026-01-05T11:00:00Z",
        }))
    );
}

#[test]
fn approval_output_records_the_decision() {
    let wf = workflow(TABLE_WORKFLOW);
    let (mut run, at, _) = build(&wf, State::Waiting);
    apply(
        &wf,
        &mut run,
        decision("review", Decision::Approved),
        at + secs(90),
    );
    assert_eq!(
        run.step("review").unwrap().output,
        Some(json!({
            "decision": "approved",
            "approver": "boss@example.com",
            "comment": "looks good",
            "decided_at": "2026-01-05T10:01:50Z",
        }))
    );
}

// ---------------------------------------------------------------------------------------------
// Failure, hooks, rejection and retrying a failed run
// ---------------------------------------------------------------------------------------------

const HOOKED: &str = r#"
name: hooked
steps:
  - id: a
    http: { url: "https://example.com/a" }
  - id: b
    http: { url: "https://example.com/b" }
    retry: { limit: 1, backoff: fixed, initial: 1s }
  - id: c
    http: { url: "https://example.com/c" }
on_failure:
  - id: only-b
    if: "{{ failure.step == 'b' and failure.attempts == 2 and failure.status == 503 }}"
    http: { url: "https://example.com/alert?step={{ failure.step }}" }
    retry: { limit: 0 }
  - id: only-a
    if: "{{ failure.step == 'a' }}"
    email: { to: [ops@example.com], subject: "{{ failure.error }}" }
  - id: always
    email: { to: [ops@example.com], subject: "{{ workflow.name }} failed" }
    retry: { limit: 1, backoff: fixed, initial: 1s }
"#;

/// Runs HOOKED until `b` has failed twice: `only-b` is in flight.
fn hooked_failed_at_b(wf: &Workflow) -> (Run, DateTime<Utc>) {
    let mut run = new_run(wf, json!({}));
    let now = t0();
    apply(wf, &mut run, started(), now);
    apply(wf, &mut run, ok("a", 1), now + secs(1));
    apply(wf, &mut run, fail("b", 1, retryable()), now + secs(2));
    apply(wf, &mut run, timer("b"), now + secs(3));
    let effects = apply(wf, &mut run, fail("b", 2, retryable()), now + secs(4));
    assert_eq!(show(&effects, now), ["http only-b 1"]);
    (run, now + secs(4))
}

#[test]
fn hooks_see_the_failure() {
    let wf = workflow(HOOKED);
    let (mut run, at) = hooked_failed_at_b(&wf);
    assert_eq!(
        statuses(&run),
        "succeeded failed skipped | running pending pending"
    );
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(
        context(&wf, &run, None)["failure"],
        json!({
            "step": "b",
            "error": "HTTP 503 (gave up after 2 attempts)",
            "status": 503,
            "body": { "error": "busy" },
            "attempts": 2,
        })
    );
    // `only-a` does not match the failure and is skipped; `always` runs.
    let effects = apply(&wf, &mut run, ok("only-b", 1), at + secs(1));
    assert_eq!(show(&effects, at), ["email always 1"]);
    assert_eq!(
        statuses(&run),
        "succeeded failed skipped | succeeded skipped running"
    );
    let effects = apply(&wf, &mut run, ok("always", 1), at + secs(2));
    assert_eq!(show(&effects, at), ["finished failed"]);
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.finished_at, Some(at + secs(2)));
}

#[test]
fn a_failing_hook_does_not_stop_the_next_hook() {
    let wf = workflow(HOOKED);
    let (mut run, at) = hooked_failed_at_b(&wf);
    let failure = run.failure.clone();
    // `only-b` has limit 0: a retryable failure ends it.
    let effects = apply(&wf, &mut run, fail("only-b", 1, retryable()), at + secs(1));
    assert_eq!(show(&effects, at), ["email always 1"]);
    // `always` retries once, then fails; the run is failed, with the main step's failure.
    apply(&wf, &mut run, fail("always", 1, retryable()), at + secs(2));
    assert_eq!(run.status, RunStatus::Running);
    let effects = apply(&wf, &mut run, timer("always"), at + secs(3));
    assert_eq!(show(&effects, at), ["email always 2"]);
    let effects = apply(
        &wf,
        &mut run,
        fail("always", 2, Outcome::Permanent),
        at + secs(4),
    );
    assert_eq!(show(&effects, at), ["finished failed"]);
    assert_eq!(
        statuses(&run),
        "succeeded failed skipped | failed skipped failed"
    );
    assert_eq!(run.failure, failure, "a hook's failure does not replace it");
}

#[test]
fn failure_without_hooks_fails_the_run_at_once() {
    let wf = workflow(
        r#"
name: bare
steps:
  - id: a
    http: { url: "https://example.com/a" }
  - id: b
    http: { url: "https://example.com/b" }
"#,
    );
    let mut run = new_run(&wf, json!({}));
    apply(&wf, &mut run, started(), t0());
    let effects = apply(&wf, &mut run, fail("a", 1, Outcome::Permanent), t0());
    assert_eq!(show(&effects, t0()), ["finished failed"]);
    assert_eq!(statuses(&run), "failed skipped | ");
    assert_eq!(run.failure.as_ref().unwrap().step, "a");
}

#[test]
fn rejection_skips_hooks() {
    let wf = workflow(TABLE_WORKFLOW);
    let (mut run, at, _) = build(&wf, State::Waiting);
    let effects = apply(
        &wf,
        &mut run,
        decision("review", Decision::Rejected),
        at + secs(1),
    );
    assert_eq!(show(&effects, at), ["finished rejected"]);
    assert_eq!(run.status, RunStatus::Rejected);
    assert_eq!(run.failure, None);
    assert_eq!(
        statuses(&run),
        "succeeded succeeded succeeded skipped | skipped skipped"
    );
    let review = run.step("review").unwrap();
    assert_eq!(
        review.error.as_deref(),
        Some("rejected by boss@example.com")
    );
    assert_eq!(
        review.output.as_ref().unwrap()["decision"],
        json!("rejected")
    );
    // A rejected run cannot be retried.
    assert_absorbed(&wf, &run, Event::RetryRequested, at + secs(2));
}

#[test]
fn retrying_a_failed_run_goes_on_from_the_failed_step() {
    let wf = workflow(HOOKED);
    let (mut run, at) = hooked_failed_at_b(&wf);
    apply(&wf, &mut run, ok("only-b", 1), at + secs(1));
    apply(&wf, &mut run, ok("always", 1), at + secs(2));
    assert_eq!(run.status, RunStatus::Failed);
    let a_before = run.step("a").unwrap().clone();

    let later = at + secs(3600);
    let before = run.step("b").unwrap().attempts;
    let effects = apply(&wf, &mut run, Event::RetryRequested, later);
    // A new round: the attempt number continues, so every attempt keeps its own record.
    assert_eq!(show(&effects, later), [format!("http b {}", before + 1)]);
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(
        statuses(&run),
        "succeeded running pending | pending pending pending"
    );
    assert_eq!(run.step("a").unwrap(), &a_before, "earlier steps are kept");
    let b = run.step("b").unwrap();
    assert_eq!(
        (b.attempts, b.round_start, b.started_at, b.error.as_ref()),
        (before + 1, before, Some(later), None)
    );
    assert_eq!(run.failure, None);
    assert_eq!(run.finished_at, None);
    assert!(context(&wf, &run, None).get("failure").is_none());
    // A second retry request while it runs is absorbed.
    assert_absorbed(&wf, &run, Event::RetryRequested, later + secs(1));
    // The retry limit counts from the new round: `b` (limit 1) may retry again.
    apply(
        &wf,
        &mut run,
        fail("b", before + 1, retryable()),
        later + secs(1),
    );
    assert_eq!(run.step("b").unwrap().status, StepStatus::Retrying);
    apply(&wf, &mut run, timer("b"), later + secs(2));
    apply(&wf, &mut run, ok("b", before + 2), later + secs(3));
    let effects = apply(&wf, &mut run, ok("c", 1), later + secs(4));
    assert_eq!(show(&effects, later), ["finished succeeded"]);
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.finished_at, Some(later + secs(4)));
    // The hooks that ran in the failed round do not stay pending: this round did not fail.
    assert_eq!(
        statuses(&run),
        "succeeded succeeded succeeded | skipped skipped skipped"
    );
}

#[test]
fn a_retried_run_can_fail_again_and_run_its_hooks_again() {
    let wf = workflow(HOOKED);
    let (mut run, at) = hooked_failed_at_b(&wf);
    apply(&wf, &mut run, ok("only-b", 1), at + secs(1));
    apply(&wf, &mut run, ok("always", 1), at + secs(2));
    let first_alert = crate::engine::request::message_id(&run, "always", 1);
    apply(&wf, &mut run, Event::RetryRequested, at + secs(10));
    let next = run.step("b").unwrap().attempts;
    // The retried step is the same message, retried; see the hook's below.
    assert_eq!(
        crate::engine::request::message_id(&run, "b", next),
        (crate::engine::request::dedup_id(&run.id, "b"), next - 1)
    );
    let effects = apply(
        &wf,
        &mut run,
        fail("b", next, Outcome::Permanent),
        at + secs(11),
    );
    // `only-b` needs two attempts; this time there was one (in this round).
    assert_eq!(show(&effects, at), ["email always 2"]);
    assert_eq!(run.failure.as_ref().unwrap().attempts, 1);
    // The hook's second alert is a new message (its first was delivered): a new id, retried 0.
    let second_alert = crate::engine::request::message_id(&run, "always", 2);
    assert_eq!(first_alert.1, 0);
    assert_eq!(second_alert.1, 0);
    assert_ne!(first_alert.0, second_alert.0);
    let effects = apply(&wf, &mut run, ok("always", 2), at + secs(12));
    assert_eq!(show(&effects, at), ["finished failed"]);
    assert_eq!(run.finished_at, Some(at + secs(12)));
}

// ---------------------------------------------------------------------------------------------
// Random event sequences
// ---------------------------------------------------------------------------------------------

const PROP_WORKFLOW: &str = r#"
name: prop
inputs:
  go: { type: boolean, required: true }
steps:
  - id: a
    http: { url: "https://example.com/a" }
    retry: { limit: 1, backoff: fixed, initial: 30s }
  - id: nap
    sleep: 1h
  - id: gate
    approval:
      to: [boss@example.com]
      subject: "ok?"
      timeout: 1d
      on_timeout: approve
  - id: maybe
    if: "{{ input.go }}"
    email: { to: [ops@example.com], subject: "maybe" }
  - id: z
    http: { url: "https://example.com/z" }
    retry: { limit: 2 }
on_failure:
  - id: h1
    http: { url: "https://example.com/h1" }
    retry: { limit: 1, backoff: linear, initial: 10s }
  - id: h2
    email: { to: [ops@example.com], subject: "failed" }
    retry: { limit: 0 }
"#;

const PROP_STEPS: [&str; 8] = ["a", "nap", "gate", "maybe", "z", "h1", "h2", "nope"];

#[derive(Debug, Clone)]
enum Op {
    Started,
    /// Succeed the current step's current attempt.
    SucceedCurrent,
    Succeed(usize, u32),
    FailCurrent(Outcome),
    Fail(usize, u32, Outcome),
    /// Fire the current step's timer at its wake_at (or now, if later).
    TimerCurrent,
    Timer(usize),
    DecideCurrent(bool),
    Decide(usize, bool),
    Cancel,
    Retry,
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Permanent),
        Just(Outcome::Retryable { after: None }),
        (0u64..100_000).prop_map(|s| Outcome::Retryable {
            after: Some(Duration::from_secs(s))
        }),
        Just(Outcome::Retryable {
            after: Some(Duration::MAX)
        }),
    ]
}

/// Weighted so that most sequences get far into the workflow before a cancel ends them.
fn op() -> impl Strategy<Value = Op> {
    let step = 0..PROP_STEPS.len();
    prop_oneof![
        4 => Just(Op::Started),
        20 => Just(Op::SucceedCurrent),
        4 => (step.clone(), 0u32..4).prop_map(|(s, a)| Op::Succeed(s, a)),
        16 => outcome().prop_map(Op::FailCurrent),
        4 => (step.clone(), 0u32..4, outcome()).prop_map(|(s, a, o)| Op::Fail(s, a, o)),
        16 => Just(Op::TimerCurrent),
        4 => step.clone().prop_map(Op::Timer),
        10 => any::<bool>().prop_map(Op::DecideCurrent),
        4 => (step, any::<bool>()).prop_map(|(s, d)| Op::Decide(s, d)),
        1 => Just(Op::Cancel),
        8 => Just(Op::Retry),
    ]
}

fn to_event(run: &Run, op: &Op, now: DateTime<Utc>) -> (Event, DateTime<Utc>) {
    let current = run
        .current()
        .or_else(|| run.steps.first())
        .expect("the workflow has steps");
    let id = current.id.as_str();
    let verdict = |d: bool| {
        if d {
            Decision::Approved
        } else {
            Decision::Rejected
        }
    };
    match op {
        Op::Started => (started(), now),
        Op::SucceedCurrent => (ok(id, current.attempts), now),
        Op::Succeed(s, a) => (ok(PROP_STEPS[*s], *a), now),
        Op::FailCurrent(o) => (fail(id, current.attempts, o.clone()), now),
        Op::Fail(s, a, o) => (fail(PROP_STEPS[*s], *a, o.clone()), now),
        Op::TimerCurrent => (timer(id), current.wake_at.map_or(now, |w| w.max(now))),
        Op::Timer(s) => (timer(PROP_STEPS[*s]), now),
        Op::DecideCurrent(d) => (decision(id, verdict(*d)), now),
        Op::Decide(s, d) => (decision(PROP_STEPS[*s], verdict(*d)), now),
        Op::Cancel => (cancel(), now),
        Op::Retry => (Event::RetryRequested, now),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_event_sequences_keep_the_machine_sound(
        go in any::<bool>(),
        start_first in prop::bool::weighted(0.9),
        ops in prop::collection::vec((op(), 0i64..200_000), 0..60),
    ) {
        let wf = workflow(PROP_WORKFLOW);
        let mut run = new_run(&wf, json!({ "go": go }));
        let mut now = t0();
        let mut terminal_transitions = 0;
        let ops: Vec<(Op, i64)> = start_first
            .then_some((Op::Started, 0))
            .into_iter()
            .chain(ops)
            .collect();
        let mut finished_effects = 0;
        for (op, advance) in &ops {
            // A timer at the end of time (a huge Retry-After) leaves `now` there.
            now = now.checked_add_signed(secs(*advance)).unwrap_or(now);
            let (event, at) = to_event(&run, op, now);
            now = at;
            let before = run.clone();
            let effects = apply(&wf, &mut run, event.clone(), now);
            let finished: Vec<&Effect> = effects
                .iter()
                .filter(|e| matches!(e, Effect::Finished { .. }))
                .collect();
            prop_assert!(finished.len() <= 1, "{event:?}: {effects:?}");
            finished_effects += finished.len();

            let retried = before.status == RunStatus::Failed && event == Event::RetryRequested;
            if before.status.is_terminal() && !retried {
                prop_assert_eq!(&run, &before, "a terminal run changed on {:?}", event);
                prop_assert!(effects.is_empty(), "{event:?}: {effects:?}");
            }
            let became_terminal =
                run.status.is_terminal() && (!before.status.is_terminal() || retried);
            if became_terminal {
                terminal_transitions += 1;
                prop_assert_eq!(run.finished_at, Some(now));
            }
            prop_assert_eq!(finished.len(), usize::from(became_terminal), "{:?}: {:?}", event, effects);
            if let Some(Effect::Finished { status }) = finished.first() {
                prop_assert_eq!(*status, run.status);
            }
            // Every order names a step in the state the order implies.
            for e in &effects {
                match e {
                    Effect::CallHttp { step, attempt, .. } | Effect::SendEmail { step, attempt, .. } => {
                        let s = run.step(step).expect("an effect names a known step");
                        prop_assert_eq!(s.status, StepStatus::Running);
                        prop_assert_eq!(s.attempts, *attempt);
                        prop_assert!(*attempt >= 1);
                    }
                    Effect::RequestApproval { step, deadline } => {
                        let s = run.step(step).expect("an effect names a known step");
                        prop_assert_eq!(s.status, StepStatus::WaitingApproval);
                        prop_assert_eq!(s.wake_at, Some(*deadline));
                    }
                    Effect::AbandonInFlight => {
                        prop_assert!(
                            matches!(run.status, RunStatus::Cancelled | RunStatus::Rejected)
                                || run.failure.is_some(),
                            "{:?}",
                            run
                        );
                    }
                    Effect::Finished { .. } => {}
                    other => prop_assert!(false, "no fan-out here: {other:?}"),
                }
            }
            // A step never makes more attempts than its retry limit allows.
            for s in all_steps(&run) {
                let def = wf
                    .steps
                    .iter()
                    .chain(wf.on_failure.iter())
                    .find(|d| d.id == s.id)
                    .expect("every step state has a definition");
                prop_assert!(s.round_attempts() <= def.retry.limit + 1, "{s:?}");
            }
        }
        prop_assert_eq!(finished_effects, terminal_transitions);
    }
}

/// An attempt cut short by a crash or a take-over is sent again as the next attempt, and does not
/// use up a retry: with `limit: 1`, an interrupted attempt 1, then a failed attempt 2, still
/// leaves attempt 3.
#[test]
fn an_interrupted_attempt_is_sent_again_and_uses_no_retry() {
    let wf = workflow(
        "name: one\nsteps:\n  - id: call\n    http: { url: \"http://127.0.0.1:9/\" }\n    retry: { limit: 1, backoff: fixed, initial: 1s }\n",
    );
    let mut run = new_run(&wf, json!({}));
    apply(&wf, &mut run, started(), t0());
    let interrupted = Event::AttemptInterrupted {
        step: "call".into(),
        attempt: 1,
        item: None,
    };
    let effects = apply(&wf, &mut run, interrupted.clone(), t0() + secs(1));
    assert_eq!(
        effects,
        [Effect::CallHttp {
            step: "call".into(),
            attempt: 2,
            item: None,
        }]
    );
    // A late copy of the same interruption changes nothing.
    assert!(apply(&wf, &mut run, interrupted, t0() + secs(2)).is_empty());
    apply(&wf, &mut run, fail("call", 2, retryable()), t0() + secs(3));
    assert_eq!(run.steps[0].status, StepStatus::Retrying, "{run:?}");
    let effects = apply(&wf, &mut run, timer("call"), t0() + secs(5));
    assert_eq!(
        effects,
        [Effect::CallHttp {
            step: "call".into(),
            attempt: 3,
            item: None,
        }]
    );
    apply(&wf, &mut run, fail("call", 3, retryable()), t0() + secs(6));
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    assert_eq!(run.failure.as_ref().map(|f| f.attempts), Some(2));
}

/// A condition is evaluated while the store's writer holds every other run's change: it runs
/// within the engine's budget ([`crate::workflow::template::ENGINE_FUEL`]) and fails its step, naming the step
/// and the limit, when it needs more.
#[test]
fn an_if_over_the_engines_budget_fails_its_step() {
    let sum = vec!["steps.a.status"; 3000].join(" + ");
    let wf = workflow(&format!(
        r#"
name: costly-if
steps:
  - id: a
    http: {{ url: "https://example.com/a" }}
  - id: b
    if: "{{{{ {sum} > 0 }}}}"
    http: {{ url: "https://example.com/b" }}
"#
    ));
    let mut run = new_run(&wf, json!({}));
    apply(&wf, &mut run, started(), t0());
    let effects = apply(&wf, &mut run, ok("a", 1), t0());
    assert_eq!(show(&effects, t0()), ["finished failed"]);
    let failure = run.failure.as_ref().unwrap();
    assert!(
        failure
            .error
            .starts_with("the `if` condition of step `b` failed")
            && failure
                .error
                .contains("more than 10,000 template instructions"),
        "{}",
        failure.error
    );
}
