//! When a schedule fires: which slots are due, which were missed, and what overlap allows.
//!
//! Part of the pure core: no I/O, `now` is an argument. The daemon's scheduler asks these
//! functions and enforces "each slot at most once" with a unique key in the database.

use crate::cron::{CronSchedule, Slot};
use crate::workflow::Overlap;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// A slot the scheduler sees within this long after its time is on time, not missed.
pub const ON_TIME_GRACE: Duration = Duration::from_secs(30);

/// How many missed slots one catch-up may fire at most (a per-minute schedule after a long outage).
pub const MAX_CATCHUP: usize = 1000;

/// The slots to fire now, oldest first: those after `since` and not after `now` that are on time
/// (within [`ON_TIME_GRACE`]) or, when `catchup_window` is set, younger than it.
/// `since` is the last slot already handled (or when the schedule was first seen).
pub fn due_slots(
    cron: &CronSchedule,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    catchup_window: Option<Duration>,
) -> Vec<Slot> {
    let window = catchup_window.map_or(ON_TIME_GRACE, |w| w.max(ON_TIME_GRACE));
    let oldest = now - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    // Start the search at the later of `since` and the window's start, so a long outage does not
    // enumerate years of slots.
    let from = if oldest > since {
        oldest - chrono::Duration::milliseconds(1)
    } else {
        since
    };
    let mut out = Vec::new();
    for slot in cron.slots_after(from) {
        if slot.at > now || out.len() >= MAX_CATCHUP {
            break;
        }
        if slot.at > since && slot.at >= oldest {
            out.push(slot);
        }
    }
    out
}

/// The due slots of one catch-up (as [`due_slots`] answers them at `now`) split into (to fire,
/// oldest first; superseded).
///
/// Missed slots never displace the current one. `skip`, `buffer_one` and `cancel_other` keep
/// one run of a schedule going (`buffer_one` one more waiting), so firing the missed slots
/// first would make the on-time slot wait behind them or be skipped because they are still
/// going. With these policies the on-time slots fire (two at once in a DST gap) and every
/// missed one is superseded; when none is on time, only the newest missed slot fires.
/// Superseded slots are recorded as skipped. `buffer_all` and `allow_all` fire every due slot.
pub fn catch_up(policy: Overlap, due: Vec<Slot>, now: DateTime<Utc>) -> (Vec<Slot>, Vec<Slot>) {
    if matches!(policy, Overlap::BufferAll | Overlap::AllowAll) {
        return (due, Vec::new());
    }
    let on_time = now - chrono::Duration::from_std(ON_TIME_GRACE).unwrap_or_default();
    let (mut missed, fire): (Vec<Slot>, Vec<Slot>) = due.into_iter().partition(|s| s.at < on_time);
    if !fire.is_empty() {
        return (fire, missed);
    }
    let newest = missed.pop();
    (newest.into_iter().collect(), missed)
}

/// What to do with a scheduled fire while other runs of the workflow exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlapAction {
    Start,
    /// Create the run now and start it when the runs ahead of it finish.
    Queue,
    Skip,
    CancelOthersAndStart,
}

/// `active`: started, unfinished runs of the workflow; `queued`: created but not started.
pub fn overlap(policy: Overlap, active: usize, queued: usize) -> OverlapAction {
    if active == 0 && queued == 0 {
        return OverlapAction::Start;
    }
    match policy {
        Overlap::Skip => OverlapAction::Skip,
        Overlap::BufferOne if queued == 0 => OverlapAction::Queue,
        Overlap::BufferOne => OverlapAction::Skip,
        Overlap::BufferAll => OverlapAction::Queue,
        Overlap::CancelOther => OverlapAction::CancelOthersAndStart,
        Overlap::AllowAll => OverlapAction::Start,
    }
}

/// The instant a slot's run should start: the slot plus this fire's share of the jitter.
/// `random` is in [0, 1), chosen by the caller.
pub fn fire_time(slot: &Slot, jitter: Option<Duration>, random: f64) -> DateTime<Utc> {
    match jitter {
        Some(j) if !j.is_zero() => {
            let ms = (j.as_millis() as f64 * random.clamp(0.0, 1.0)) as i64;
            slot.at + chrono::Duration::milliseconds(ms)
        }
        _ => slot.at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn ats(slots: &[Slot]) -> Vec<String> {
        slots
            .iter()
            .map(|s| s.at.format("%Y-%m-%dT%H:%M").to_string())
            .collect()
    }

    #[test]
    fn on_time_slot_fires_and_old_ones_do_not_without_catchup() {
        let cron = CronSchedule::parse("*/15 * * * *", None).expect("cron");
        // Normal operation: the 10:15 slot, seen 2 ms late.
        let due = due_slots(
            &cron,
            t("2026-01-01T10:00:00Z"),
            t("2026-01-01T10:15:00.002Z"),
            None,
        );
        assert_eq!(ats(&due), ["2026-01-01T10:15"]);
        // Down from 10:05 to 11:01: 10:15, 10:30, 10:45, 11:00 were missed; 11:00 is within grace.
        let due = due_slots(
            &cron,
            t("2026-01-01T10:00:00Z"),
            t("2026-01-01T11:00:20Z"),
            None,
        );
        assert_eq!(ats(&due), ["2026-01-01T11:00"]);
        let due = due_slots(
            &cron,
            t("2026-01-01T10:00:00Z"),
            t("2026-01-01T11:01:00Z"),
            None,
        );
        assert!(due.is_empty());
    }

    #[test]
    fn catchup_window_fires_missed_slots_younger_than_it() {
        let cron = CronSchedule::parse("*/15 * * * *", None).expect("cron");
        let due = due_slots(
            &cron,
            t("2026-01-01T10:00:00Z"),
            t("2026-01-01T11:01:00Z"),
            Some(Duration::from_secs(40 * 60)),
        );
        assert_eq!(
            ats(&due),
            ["2026-01-01T10:30", "2026-01-01T10:45", "2026-01-01T11:00"]
        );
        // Nothing already handled is fired again.
        let due = due_slots(
            &cron,
            t("2026-01-01T10:45:00Z"),
            t("2026-01-01T11:01:00Z"),
            Some(Duration::from_secs(40 * 60)),
        );
        assert_eq!(ats(&due), ["2026-01-01T11:00"]);
    }

    #[test]
    fn a_long_outage_is_bounded() {
        let cron = CronSchedule::parse("* * * * *", None).expect("cron");
        let due = due_slots(
            &cron,
            t("2020-01-01T00:00:00Z"),
            t("2026-01-01T00:00:00Z"),
            Some(Duration::from_secs(365 * 86_400)),
        );
        assert_eq!(due.len(), MAX_CATCHUP);
    }

    #[test]
    fn dst_gap_slots_both_fire_in_new_york() {
        let cron = CronSchedule::parse("0,30 2 * * *", Some("America/New_York")).expect("cron");
        let due = due_slots(
            &cron,
            t("2026-03-08T06:00:00Z"),
            t("2026-03-08T07:00:01Z"),
            None,
        );
        assert_eq!(due.len(), 2);
        assert_ne!(due[0].key(), due[1].key());
    }

    /// Down from 20:04 to 20:07:10 with a 10-minute window: 20:05 and 20:06 were missed and
    /// 20:07 is on time. The policies that keep one run going fire 20:07 alone.
    #[test]
    fn missed_slots_never_displace_the_on_time_one() {
        let cron = CronSchedule::parse("* * * * *", None).expect("cron");
        let now = t("2026-01-01T20:07:10Z");
        let window = Some(Duration::from_secs(600));
        let due = due_slots(&cron, t("2026-01-01T20:04:00Z"), now, window);
        assert_eq!(
            ats(&due),
            ["2026-01-01T20:05", "2026-01-01T20:06", "2026-01-01T20:07"]
        );
        let hm = |slots: &[Slot]| -> Vec<String> {
            slots
                .iter()
                .map(|s| s.at.format("%H:%M").to_string())
                .collect()
        };
        let cases = [
            (Overlap::Skip, &["20:07"][..], &["20:05", "20:06"][..]),
            (Overlap::BufferOne, &["20:07"], &["20:05", "20:06"]),
            (Overlap::CancelOther, &["20:07"], &["20:05", "20:06"]),
            (Overlap::BufferAll, &["20:05", "20:06", "20:07"], &[]),
            (Overlap::AllowAll, &["20:05", "20:06", "20:07"], &[]),
        ];
        for (policy, fire, superseded) in cases {
            let (f, s) = catch_up(policy, due.clone(), now);
            assert_eq!(
                (hm(&f), hm(&s)),
                (strs(fire), strs(superseded)),
                "{policy:?}"
            );
        }
        // Back at 20:07:40, between slots: 20:07 is missed too, and the newest missed one fires.
        let later = t("2026-01-01T20:07:40Z");
        let due = due_slots(&cron, t("2026-01-01T20:04:00Z"), later, window);
        let (f, s) = catch_up(Overlap::Skip, due, later);
        assert_eq!(
            (hm(&f), hm(&s)),
            (strs(&["20:07"]), strs(&["20:05", "20:06"]))
        );
        // Nothing due, or only the on-time slot: nothing is superseded.
        assert_eq!(
            catch_up(Overlap::Skip, Vec::new(), now),
            (Vec::new(), Vec::new())
        );
        let due = due_slots(&cron, t("2026-01-01T20:06:30Z"), now, window);
        assert_eq!(catch_up(Overlap::Skip, due.clone(), now), (due, Vec::new()));
    }

    /// Both slots of a spring-forward gap are on time at the same instant: both fire.
    #[test]
    fn on_time_gap_slots_are_not_superseded() {
        let cron = CronSchedule::parse("0,30 2 * * *", Some("America/New_York")).expect("cron");
        let now = t("2026-03-08T07:00:01Z");
        let due = due_slots(&cron, t("2026-03-08T06:00:00Z"), now, None);
        assert_eq!(due.len(), 2);
        assert_eq!(catch_up(Overlap::Skip, due.clone(), now), (due, Vec::new()));
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlap_policies() {
        use OverlapAction::*;
        let cases = [
            (Overlap::Skip, 0, 0, Start),
            (Overlap::Skip, 1, 0, Skip),
            (Overlap::BufferOne, 1, 0, Queue),
            (Overlap::BufferOne, 1, 1, Skip),
            (Overlap::BufferAll, 1, 3, Queue),
            (Overlap::CancelOther, 2, 0, CancelOthersAndStart),
            (Overlap::AllowAll, 5, 0, Start),
            (Overlap::AllowAll, 0, 0, Start),
        ];
        for (policy, active, queued, want) in cases {
            assert_eq!(
                overlap(policy, active, queued),
                want,
                "{policy:?} {active} {queued}"
            );
        }
    }

    #[test]
    fn jitter_delays_within_its_bound() {
        let cron = CronSchedule::parse("0 * * * *", None).expect("cron");
        let slot = cron.next_after(t("2026-01-01T00:00:00Z")).expect("slot");
        assert_eq!(fire_time(&slot, None, 0.7), slot.at);
        assert_eq!(
            fire_time(&slot, Some(Duration::from_secs(30)), 0.5),
            slot.at + chrono::Duration::seconds(15)
        );
        assert!(
            fire_time(&slot, Some(Duration::from_secs(30)), 0.999_999)
                < slot.at + chrono::Duration::seconds(30)
        );
    }
}
