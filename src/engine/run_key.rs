//! Runs per key (`concurrency.key` / `limit` / `on_limit`): what a new run does, given the runs
//! of its workflow with its key that have not finished. The store counts them under a lock
//! (on a shared database) in the transaction that creates the run, and asks again when a queued
//! run is to start.
//!
//! Part of the pure core: no I/O.

use crate::workflow::OnLimit;

/// What a new run does first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Start,
    /// It waits (`pending`) and starts when the key has room, after the runs queued before it.
    Queue,
    /// It gives way (`on_limit: skip`): recorded as cancelled, naming the newest run going.
    Skip {
        behind: String,
    },
    /// It starts, and these runs (the oldest going) are cancelled to make room.
    StartDisplacing(Vec<String>),
}

/// `going`: the runs with the key started and not finished, oldest first; `queued`: how many
/// wait to start.
pub fn admit(limit: u32, on_limit: OnLimit, going: &[String], queued: usize) -> Admission {
    let limit = limit.max(1) as usize;
    let room = going.len() < limit;
    match on_limit {
        // Runs queued before it go first, even when there is room (they are being started).
        OnLimit::Queue if room && queued == 0 => Admission::Start,
        OnLimit::Queue => Admission::Queue,
        OnLimit::Skip | OnLimit::CancelRunning if room => Admission::Start,
        OnLimit::Skip => Admission::Skip {
            behind: going.last().cloned().unwrap_or_default(),
        },
        OnLimit::CancelRunning => {
            Admission::StartDisplacing(going[..going.len() + 1 - limit].to_vec())
        }
    }
}

/// Whether a queued run may start now: fewer than `limit` runs with its key are going.
pub fn may_start(limit: u32, going: usize) -> bool {
    going < limit.max(1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("r{i}")).collect()
    }

    #[test]
    fn admission_table() {
        use Admission as A;
        use OnLimit as L;
        let cases: &[(u32, OnLimit, usize, usize, Admission)] = &[
            // limit, on_limit, going, queued → admission
            (1, L::Queue, 0, 0, A::Start),
            (1, L::Queue, 1, 0, A::Queue),
            (1, L::Queue, 0, 1, A::Queue),
            (2, L::Queue, 1, 0, A::Start),
            (2, L::Queue, 2, 3, A::Queue),
            (1, L::Skip, 0, 0, A::Start),
            (
                1,
                L::Skip,
                1,
                0,
                A::Skip {
                    behind: "r1".into(),
                },
            ),
            (
                2,
                L::Skip,
                2,
                0,
                A::Skip {
                    behind: "r2".into(),
                },
            ),
            (2, L::Skip, 1, 5, A::Start),
            (1, L::CancelRunning, 0, 0, A::Start),
            (
                1,
                L::CancelRunning,
                1,
                0,
                A::StartDisplacing(vec!["r1".into()]),
            ),
            (
                1,
                L::CancelRunning,
                2,
                0,
                A::StartDisplacing(vec!["r1".into(), "r2".into()]),
            ),
            (
                3,
                L::CancelRunning,
                3,
                0,
                A::StartDisplacing(vec!["r1".into()]),
            ),
            (3, L::CancelRunning, 2, 0, A::Start),
        ];
        for (limit, on_limit, going, queued, want) in cases {
            let got = admit(*limit, *on_limit, &ids(*going), *queued);
            assert_eq!(
                &got, want,
                "limit {limit}, {on_limit:?}, {going} going, {queued} queued"
            );
        }
    }

    #[test]
    fn a_queued_run_past_its_queue_timeout_is_cancelled_not_started() {
        use crate::engine::{Event, NewRun, Run, RunStatus, Trigger, decide};
        let wf = crate::workflow::check_file(
            "q.yaml",
            "name: q\nconcurrency:\n  key: k\n  queue_timeout: 10m\nsteps:\n  - id: a\n    sleep: 1s\n",
        )
        .expect("valid");
        let t0: chrono::DateTime<chrono::Utc> = "2026-01-05T09:00:00Z".parse().unwrap();
        let mut run = Run::new(
            &wf,
            NewRun {
                id: "r".into(),
                version: "v".into(),
                trigger: Trigger::Api,
                input: serde_json::json!({}),
                scheduled_for: None,
                schedule_id: None,
            },
            t0,
        );
        run.concurrency_key = Some("k".into());
        let until = t0 + chrono::Duration::minutes(10);
        assert_eq!((run.deadline, run.wake_at), (Some(until), Some(until)));
        // Early: nothing happens.
        let (same, effects) = decide(
            &wf,
            &run,
            &Event::DeadlinePassed,
            until - chrono::Duration::seconds(1),
        );
        assert_eq!((same, effects.len()), (run.clone(), 0));
        // Started in time, the queue's deadline goes (no workflow timeout here).
        let (started, _) = decide(&wf, &run, &Event::Started, t0);
        assert_eq!(started.deadline, None);
        // Past it, still queued: cancelled, saying why.
        let (gone, _) = decide(&wf, &run, &Event::DeadlinePassed, until);
        assert_eq!(gone.status, RunStatus::Cancelled);
        let reason = gone.cancel_reason.unwrap();
        assert!(
            reason.contains("queue_timeout of 10m") && reason.contains("`k`"),
            "{reason}"
        );
    }

    #[test]
    fn a_queued_run_starts_only_below_the_limit() {
        assert!(may_start(1, 0));
        assert!(!may_start(1, 1));
        assert!(may_start(3, 2));
        assert!(!may_start(3, 3));
    }
}
