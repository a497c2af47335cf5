//! Flow control: whether a call with a flow-control key may start now. The store counts, from its
//! rows, what the rule needs (calls of the key in flight, calls waiting ahead of this one, calls
//! started within the period, whether the key is closed); this decides.
//!
//! Part of the pure core: no I/O, no clock (the time comes in as an argument).

use chrono::{DateTime, Utc};
use std::time::Duration;

/// A call's limits, as its step (or the workflow's `defaults`) declares them with its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Calls of the key in flight at once.
    pub parallelism: Option<u32>,
    /// Calls of the key started per `period`.
    pub rate: Option<u32>,
    pub period: Duration,
}

pub const DEFAULT_PERIOD: Duration = Duration::from_secs(1);

/// What the store counted for one key, for one waiting call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// Calls of the key started and not ended.
    pub in_flight: u32,
    /// Calls of the key waiting that asked before this one (they go first).
    pub ahead: u32,
    /// Calls of the key started within the last period.
    pub started: u32,
    /// When the oldest of those started, oldest first: at least the first
    /// `started + ahead + 1 − rate` of them (what [`admit`] needs to say when this call fits).
    pub oldest: Vec<DateTime<Utc>>,
    /// A `429` or `503` with `Retry-After` closed the key until then.
    pub closed_until: Option<DateTime<Utc>>,
}

/// The answer for one waiting call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// It may start now.
    Now,
    /// Not before this time (the key is closed, or the rate is spent until a start leaves the
    /// period); ask again then.
    At(DateTime<Utc>),
    /// When a call of the key in flight ends.
    WhenOneEnds,
}

fn later(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Whether a call may start at `now`. Calls go in the order they asked: this one starts only
/// when there is room for it after every call ahead of it.
pub fn admit(limits: &Limits, occ: &Occupancy, now: DateTime<Utc>) -> Admission {
    if let Some(until) = occ.closed_until
        && until > now
    {
        return Admission::At(until);
    }
    // The rate first: a call that must wait for the period to move on waits for a time,
    // whatever ends meanwhile.
    if let Some(rate) = limits.rate {
        // This call is number `ahead + 1` after the recent starts.
        let needed = u64::from(occ.started) + u64::from(occ.ahead) + 1;
        if needed > u64::from(rate) {
            // The start that has to leave the period before this call fits (those ahead of
            // it are counted as starting first). When they have not started yet, it is not
            // known when they will: ask again once a period has passed at the latest.
            let over = usize::try_from(needed - u64::from(rate)).unwrap_or(usize::MAX);
            let at = match occ.oldest.get(over - 1) {
                Some(s) => later(*s, limits.period),
                None => later(now, limits.period),
            };
            return Admission::At(at.max(now));
        }
    }
    if let Some(parallelism) = limits.parallelism
        && u64::from(occ.in_flight) + u64::from(occ.ahead) >= u64::from(parallelism)
    {
        return Admission::WhenOneEnds;
    }
    Admission::Now
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_767_600_000_000 + ms).unwrap()
    }

    fn limits(parallelism: Option<u32>, rate: Option<u32>, period_ms: u64) -> Limits {
        Limits {
            parallelism,
            rate,
            period: Duration::from_millis(period_ms),
        }
    }

    #[test]
    fn parallelism_counts_calls_in_flight_and_calls_ahead() {
        let l = limits(Some(4), None, 1000);
        // (in flight, ahead) → answer
        let table = [
            (0, 0, Admission::Now),
            (3, 0, Admission::Now),
            (4, 0, Admission::WhenOneEnds),
            (2, 1, Admission::Now),
            (2, 2, Admission::WhenOneEnds),
            (0, 4, Admission::WhenOneEnds),
            (9, 0, Admission::WhenOneEnds),
        ];
        for (in_flight, ahead, want) in table {
            let occ = Occupancy {
                in_flight,
                ahead,
                ..Occupancy::default()
            };
            assert_eq!(
                admit(&l, &occ, t(0)),
                want,
                "in flight {in_flight}, ahead {ahead}"
            );
        }
    }

    /// Drives calls that each ask at once and, when answered with a time, ask again then, on a
    /// virtual clock; answers when each started.
    fn simulate(l: &Limits, calls: usize, duration_ms: i64) -> Vec<i64> {
        let mut started: Vec<i64> = Vec::new();
        let mut ending: Vec<i64> = Vec::new(); // when the calls in flight end
        let mut now = 0;
        while started.len() < calls {
            ending.retain(|e| *e > now);
            let recent: Vec<DateTime<Utc>> = started
                .iter()
                .filter(|s| now - **s < l.period.as_millis() as i64)
                .map(|s| t(*s))
                .collect();
            let occ = Occupancy {
                in_flight: ending.len() as u32,
                ahead: 0,
                started: recent.len() as u32,
                oldest: recent,
                closed_until: None,
            };
            match admit(l, &occ, t(now)) {
                Admission::Now => {
                    started.push(now);
                    ending.push(now + duration_ms);
                }
                Admission::At(at) => now = (at - t(0)).num_milliseconds().max(now + 1),
                Admission::WhenOneEnds => now = *ending.iter().min().unwrap(),
            }
        }
        started
    }

    #[test]
    fn a_rate_spreads_starts_so_that_no_period_has_more_than_rate() {
        // 60 a minute, calls of 10 ms: 60 at once, then the next 60 a minute later.
        let l = limits(None, Some(60), 60_000);
        let starts = simulate(&l, 150, 10);
        for (i, s) in starts.iter().enumerate() {
            let in_period = starts[..=i].iter().filter(|p| s - **p < 60_000).count();
            assert!(
                in_period <= 60,
                "start {i} at {s} ms is the {in_period}th in a minute"
            );
        }
        assert_eq!(starts[59], 0);
        assert_eq!(starts[60], 60_000);
        assert_eq!(starts[120], 120_000);
    }

    #[test]
    fn parallelism_and_rate_together_hold_both() {
        // 4 in flight, 10 a second, calls of 250 ms: parallelism binds (16 a second would be
        // possible with 4 × 4), so 10 start in the first second, in waves of 4.
        let l = limits(Some(4), Some(10), 1000);
        let starts = simulate(&l, 20, 250);
        assert_eq!(&starts[..4], &[0, 0, 0, 0]);
        assert_eq!(&starts[4..8], &[250, 250, 250, 250]);
        assert_eq!(&starts[8..10], &[500, 500]);
        assert!(
            starts[10] >= 1000,
            "the 11th call waits for the second to pass: {starts:?}"
        );
        for (i, s) in starts.iter().enumerate() {
            let in_period = starts[..=i].iter().filter(|p| s - **p < 1000).count();
            assert!(in_period <= 10, "{starts:?}");
        }
    }

    #[test]
    fn a_closed_key_admits_nothing_until_it_opens() {
        let l = limits(Some(10), None, 1000);
        let occ = Occupancy {
            closed_until: Some(t(2000)),
            ..Occupancy::default()
        };
        assert_eq!(admit(&l, &occ, t(0)), Admission::At(t(2000)));
        assert_eq!(admit(&l, &occ, t(1999)), Admission::At(t(2000)));
        assert_eq!(admit(&l, &occ, t(2000)), Admission::Now);
    }

    #[test]
    fn calls_ahead_count_against_the_rate_too() {
        let l = limits(None, Some(2), 1000);
        let occ = Occupancy {
            ahead: 2,
            ..Occupancy::default()
        };
        // Two ahead will take the period's two starts: ask again when it has passed.
        assert_eq!(admit(&l, &occ, t(0)), Admission::At(t(1000)));
        let occ = Occupancy {
            ahead: 1,
            started: 1,
            oldest: vec![t(-400)],
            ..Occupancy::default()
        };
        // One started 400 ms ago, one ahead: this one fits when that start leaves the period.
        assert_eq!(admit(&l, &occ, t(0)), Admission::At(t(600)));
    }
}
