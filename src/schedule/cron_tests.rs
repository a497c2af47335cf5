//! The cron tests (test code, so the purity check skips it: a few cases time the search): parsing,
//! DST tables, never-firing expressions, slots.

use super::*;
use std::collections::HashSet;

fn schedule(expr: &str, tz: Option<&str>) -> CronSchedule {
    CronSchedule::parse(expr, tz).unwrap_or_else(|e| panic!("`{expr}`: {e}"))
}

fn utc(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("test time")
        .with_timezone(&Utc)
}

fn keys(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
    schedule(expr, Some(tz))
        .slots_after(utc(from))
        .take(n)
        .map(|slot| slot.key())
        .collect()
}

/// (zone, expression, after, the next slots as `Slot::key`s: `at@nominal`)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
);

fn check(cases: &[Case]) {
    let mut failures = Vec::new();
    for &(tz, expr, from, want) in cases {
        let got = keys(expr, tz, from, want.len());
        if got != want {
            failures.push(format!(
                "{tz} `{expr}` after {from}\n  want {want:?}\n  got  {got:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const NY: &str = "America/New_York";
const BERLIN: &str = "Europe/Berlin";
const LORD_HOWE: &str = "Australia/Lord_Howe";

#[test]
fn new_york_spring_forward() {
    // 2026-03-08: 02:00 EST (-5) jumps to 03:00 EDT (-4) at 07:00Z.
    check(&[
        (
            NY,
            "30 2 * * *",
            "2026-03-07T00:00:00Z",
            &[
                "2026-03-07T07:30:00Z@2026-03-07T02:30",
                "2026-03-08T07:00:00Z@2026-03-08T02:30",
                "2026-03-09T06:30:00Z@2026-03-09T02:30",
            ],
        ),
        (
            NY,
            "0,30 2 * * *",
            "2026-03-07T00:00:00Z",
            &[
                "2026-03-07T07:00:00Z@2026-03-07T02:00",
                "2026-03-07T07:30:00Z@2026-03-07T02:30",
                "2026-03-08T07:00:00Z@2026-03-08T02:00",
                "2026-03-08T07:00:00Z@2026-03-08T02:30",
                "2026-03-09T06:00:00Z@2026-03-09T02:00",
                "2026-03-09T06:30:00Z@2026-03-09T02:30",
            ],
        ),
        // A range through the gap: 02:00 moves to 03:00 and fires beside 03:00 itself.
        (
            NY,
            "0 1-3 * * *",
            "2026-03-08T00:00:00Z",
            &[
                "2026-03-08T06:00:00Z@2026-03-08T01:00",
                "2026-03-08T07:00:00Z@2026-03-08T02:00",
                "2026-03-08T07:00:00Z@2026-03-08T03:00",
                "2026-03-09T05:00:00Z@2026-03-09T01:00",
            ],
        ),
        // Friday afternoon EST, then Monday morning EDT.
        (
            NY,
            "0 9-17 * * 1-5",
            "2026-03-06T21:00:00Z",
            &[
                "2026-03-06T22:00:00Z@2026-03-06T17:00",
                "2026-03-09T13:00:00Z@2026-03-09T09:00",
                "2026-03-09T14:00:00Z@2026-03-09T10:00",
            ],
        ),
        (
            NY,
            "*/15 * * * *",
            "2026-03-08T06:30:00Z",
            &[
                "2026-03-08T06:45:00Z@2026-03-08T01:45",
                "2026-03-08T07:00:00Z@2026-03-08T03:00",
                "2026-03-08T07:15:00Z@2026-03-08T03:15",
            ],
        ),
        (
            NY,
            "0 * * * *",
            "2026-03-08T05:30:00Z",
            &[
                "2026-03-08T06:00:00Z@2026-03-08T01:00",
                "2026-03-08T07:00:00Z@2026-03-08T03:00",
                "2026-03-08T08:00:00Z@2026-03-08T04:00",
            ],
        ),
        (
            NY,
            "@hourly",
            "2026-03-08T05:30:00Z",
            &[
                "2026-03-08T06:00:00Z@2026-03-08T01:00",
                "2026-03-08T07:00:00Z@2026-03-08T03:00",
            ],
        ),
        // An elapsed schedule with a fixed hour: nothing in the gap.
        (
            NY,
            "* 2 * * *",
            "2026-03-08T06:58:00Z",
            &["2026-03-09T06:00:00Z@2026-03-09T02:00"],
        ),
        (
            NY,
            "@daily",
            "2026-03-07T00:00:00Z",
            &[
                "2026-03-07T05:00:00Z@2026-03-07T00:00",
                "2026-03-08T05:00:00Z@2026-03-08T00:00",
                "2026-03-09T04:00:00Z@2026-03-09T00:00",
            ],
        ),
        // Asked for from inside the day: the moved slot is still ahead until 07:00Z.
        (
            NY,
            "0,30 2 * * *",
            "2026-03-08T06:59:59Z",
            &[
                "2026-03-08T07:00:00Z@2026-03-08T02:00",
                "2026-03-08T07:00:00Z@2026-03-08T02:30",
            ],
        ),
        (
            NY,
            "0,30 2 * * *",
            "2026-03-08T07:00:00Z",
            &["2026-03-09T06:00:00Z@2026-03-09T02:00"],
        ),
    ]);
}

#[test]
fn new_york_fall_back() {
    // 2026-11-01: 02:00 EDT (-4) goes back to 01:00 EST (-5) at 06:00Z; 01:00-01:59 happen twice.
    check(&[
        (
            NY,
            "30 1 * * *",
            "2026-10-31T00:00:00Z",
            &[
                "2026-10-31T05:30:00Z@2026-10-31T01:30",
                "2026-11-01T05:30:00Z@2026-11-01T01:30",
                "2026-11-02T06:30:00Z@2026-11-02T01:30",
            ],
        ),
        // After the first pass, the second pass of a fixed-time slot does not fire.
        (
            NY,
            "30 1 * * *",
            "2026-11-01T05:45:00Z",
            &["2026-11-02T06:30:00Z@2026-11-02T01:30"],
        ),
        (
            NY,
            "30 1 * * *",
            "2026-11-01T06:10:00Z",
            &["2026-11-02T06:30:00Z@2026-11-02T01:30"],
        ),
        (
            NY,
            "0,30 1 * * *",
            "2026-11-01T00:00:00Z",
            &[
                "2026-11-01T05:00:00Z@2026-11-01T01:00",
                "2026-11-01T05:30:00Z@2026-11-01T01:30",
                "2026-11-02T06:00:00Z@2026-11-02T01:00",
            ],
        ),
        (
            NY,
            "0 1-3 * * *",
            "2026-11-01T00:00:00Z",
            &[
                "2026-11-01T05:00:00Z@2026-11-01T01:00",
                "2026-11-01T07:00:00Z@2026-11-01T02:00",
                "2026-11-01T08:00:00Z@2026-11-01T03:00",
                "2026-11-02T06:00:00Z@2026-11-02T01:00",
            ],
        ),
        (
            NY,
            "*/15 * * * *",
            "2026-11-01T05:30:00Z",
            &[
                "2026-11-01T05:45:00Z@2026-11-01T01:45",
                "2026-11-01T06:00:00Z@2026-11-01T01:00",
                "2026-11-01T06:15:00Z@2026-11-01T01:15",
                "2026-11-01T06:30:00Z@2026-11-01T01:30",
                "2026-11-01T06:45:00Z@2026-11-01T01:45",
                "2026-11-01T07:00:00Z@2026-11-01T02:00",
            ],
        ),
        // From inside the second pass.
        (
            NY,
            "*/15 * * * *",
            "2026-11-01T06:20:00Z",
            &[
                "2026-11-01T06:30:00Z@2026-11-01T01:30",
                "2026-11-01T06:45:00Z@2026-11-01T01:45",
                "2026-11-01T07:00:00Z@2026-11-01T02:00",
            ],
        ),
        // From the last minute of the first pass: the second pass is next.
        (
            NY,
            "*/15 * * * *",
            "2026-11-01T05:50:00Z",
            &["2026-11-01T06:00:00Z@2026-11-01T01:00"],
        ),
        (
            NY,
            "0 * * * *",
            "2026-11-01T04:30:00Z",
            &[
                "2026-11-01T05:00:00Z@2026-11-01T01:00",
                "2026-11-01T06:00:00Z@2026-11-01T01:00",
                "2026-11-01T07:00:00Z@2026-11-01T02:00",
            ],
        ),
        (
            NY,
            "@daily",
            "2026-10-31T00:00:00Z",
            &[
                "2026-10-31T04:00:00Z@2026-10-31T00:00",
                "2026-11-01T04:00:00Z@2026-11-01T00:00",
                "2026-11-02T05:00:00Z@2026-11-02T00:00",
            ],
        ),
        (
            NY,
            "0 9-17 * * 1-5",
            "2026-10-30T20:30:00Z",
            &[
                "2026-10-30T21:00:00Z@2026-10-30T17:00",
                "2026-11-02T14:00:00Z@2026-11-02T09:00",
            ],
        ),
    ]);
}

#[test]
fn berlin_both_transitions() {
    // 2026-03-29: 02:00 CET (+1) jumps to 03:00 CEST (+2) at 01:00Z.
    // 2026-10-25: 03:00 CEST goes back to 02:00 CET at 01:00Z; 02:00-02:59 happen twice.
    check(&[
        (
            BERLIN,
            "30 2 * * *",
            "2026-03-28T00:00:00Z",
            &[
                "2026-03-28T01:30:00Z@2026-03-28T02:30",
                "2026-03-29T01:00:00Z@2026-03-29T02:30",
                "2026-03-30T00:30:00Z@2026-03-30T02:30",
            ],
        ),
        (
            BERLIN,
            "0,30 2 * * *",
            "2026-03-28T00:00:00Z",
            &[
                "2026-03-28T01:00:00Z@2026-03-28T02:00",
                "2026-03-28T01:30:00Z@2026-03-28T02:30",
                "2026-03-29T01:00:00Z@2026-03-29T02:00",
                "2026-03-29T01:00:00Z@2026-03-29T02:30",
                "2026-03-30T00:00:00Z@2026-03-30T02:00",
            ],
        ),
        (
            BERLIN,
            "0 2-3 * * *",
            "2026-03-29T00:00:00Z",
            &[
                "2026-03-29T01:00:00Z@2026-03-29T02:00",
                "2026-03-29T01:00:00Z@2026-03-29T03:00",
                "2026-03-30T00:00:00Z@2026-03-30T02:00",
            ],
        ),
        (
            BERLIN,
            "0 9-17 * * 1-5",
            "2026-03-27T15:30:00Z",
            &[
                "2026-03-27T16:00:00Z@2026-03-27T17:00",
                "2026-03-30T07:00:00Z@2026-03-30T09:00",
            ],
        ),
        (
            BERLIN,
            "*/15 * * * *",
            "2026-03-29T00:40:00Z",
            &[
                "2026-03-29T00:45:00Z@2026-03-29T01:45",
                "2026-03-29T01:00:00Z@2026-03-29T03:00",
                "2026-03-29T01:15:00Z@2026-03-29T03:15",
            ],
        ),
        (
            BERLIN,
            "0 * * * *",
            "2026-03-28T23:30:00Z",
            &[
                "2026-03-29T00:00:00Z@2026-03-29T01:00",
                "2026-03-29T01:00:00Z@2026-03-29T03:00",
                "2026-03-29T02:00:00Z@2026-03-29T04:00",
            ],
        ),
        (
            BERLIN,
            "@daily",
            "2026-03-27T00:00:00Z",
            &[
                "2026-03-27T23:00:00Z@2026-03-28T00:00",
                "2026-03-28T23:00:00Z@2026-03-29T00:00",
                "2026-03-29T22:00:00Z@2026-03-30T00:00",
            ],
        ),
        (
            BERLIN,
            "30 2 * * *",
            "2026-10-24T00:00:00Z",
            &[
                "2026-10-24T00:30:00Z@2026-10-24T02:30",
                "2026-10-25T00:30:00Z@2026-10-25T02:30",
                "2026-10-26T01:30:00Z@2026-10-26T02:30",
            ],
        ),
        (
            BERLIN,
            "0,30 2 * * *",
            "2026-10-24T12:00:00Z",
            &[
                "2026-10-25T00:00:00Z@2026-10-25T02:00",
                "2026-10-25T00:30:00Z@2026-10-25T02:30",
                "2026-10-26T01:00:00Z@2026-10-26T02:00",
            ],
        ),
        (
            BERLIN,
            "0 2-3 * * *",
            "2026-10-24T23:00:00Z",
            &[
                "2026-10-25T00:00:00Z@2026-10-25T02:00",
                "2026-10-25T02:00:00Z@2026-10-25T03:00",
                "2026-10-26T01:00:00Z@2026-10-26T02:00",
            ],
        ),
        (
            BERLIN,
            "30 1 * * *",
            "2026-10-24T00:00:00Z",
            &[
                "2026-10-24T23:30:00Z@2026-10-25T01:30",
                "2026-10-26T00:30:00Z@2026-10-26T01:30",
            ],
        ),
        (
            BERLIN,
            "*/15 * * * *",
            "2026-10-25T00:40:00Z",
            &[
                "2026-10-25T00:45:00Z@2026-10-25T02:45",
                "2026-10-25T01:00:00Z@2026-10-25T02:00",
                "2026-10-25T01:15:00Z@2026-10-25T02:15",
            ],
        ),
        (
            BERLIN,
            "0 * * * *",
            "2026-10-24T23:30:00Z",
            &[
                "2026-10-25T00:00:00Z@2026-10-25T02:00",
                "2026-10-25T01:00:00Z@2026-10-25T02:00",
                "2026-10-25T02:00:00Z@2026-10-25T03:00",
            ],
        ),
        (
            BERLIN,
            "@daily",
            "2026-10-24T00:00:00Z",
            &[
                "2026-10-24T22:00:00Z@2026-10-25T00:00",
                "2026-10-25T23:00:00Z@2026-10-26T00:00",
            ],
        ),
    ]);
}

#[test]
fn lord_howe_half_hour_shift() {
    // 2026-04-05: 02:00 (+11) goes back to 01:30 (+10:30) at 2026-04-04T15:00Z.
    // 2026-10-04: 02:00 (+10:30) jumps to 02:30 (+11) at 2026-10-03T15:30Z.
    check(&[
        (
            LORD_HOWE,
            "15 2 * * *",
            "2026-10-02T00:00:00Z",
            &[
                "2026-10-02T15:45:00Z@2026-10-03T02:15",
                "2026-10-03T15:30:00Z@2026-10-04T02:15",
                "2026-10-04T15:15:00Z@2026-10-05T02:15",
            ],
        ),
        (
            LORD_HOWE,
            "15 2 * * *",
            "2026-04-03T00:00:00Z",
            &[
                "2026-04-03T15:15:00Z@2026-04-04T02:15",
                "2026-04-04T15:45:00Z@2026-04-05T02:15",
            ],
        ),
        (
            LORD_HOWE,
            "45 1 * * *",
            "2026-04-03T00:00:00Z",
            &[
                "2026-04-03T14:45:00Z@2026-04-04T01:45",
                "2026-04-04T14:45:00Z@2026-04-05T01:45",
                "2026-04-05T15:15:00Z@2026-04-06T01:45",
            ],
        ),
        (
            LORD_HOWE,
            "*/10 * * * *",
            "2026-04-04T14:45:00Z",
            &[
                "2026-04-04T14:50:00Z@2026-04-05T01:50",
                "2026-04-04T15:00:00Z@2026-04-05T01:30",
                "2026-04-04T15:10:00Z@2026-04-05T01:40",
                "2026-04-04T15:20:00Z@2026-04-05T01:50",
                "2026-04-04T15:30:00Z@2026-04-05T02:00",
            ],
        ),
        (
            LORD_HOWE,
            "*/10 * * * *",
            "2026-10-03T15:05:00Z",
            &[
                "2026-10-03T15:10:00Z@2026-10-04T01:40",
                "2026-10-03T15:20:00Z@2026-10-04T01:50",
                "2026-10-03T15:30:00Z@2026-10-04T02:30",
                "2026-10-03T15:40:00Z@2026-10-04T02:40",
            ],
        ),
        (
            LORD_HOWE,
            "0,20,40 2 * * *",
            "2026-10-03T12:00:00Z",
            &[
                "2026-10-03T15:30:00Z@2026-10-04T02:00",
                "2026-10-03T15:30:00Z@2026-10-04T02:20",
                "2026-10-03T15:40:00Z@2026-10-04T02:40",
            ],
        ),
    ]);
}

#[test]
fn transitions_at_midnight() {
    // Santiago: 2026-04-04 24:00 (-3) goes back to 23:00 (-4) at 2026-04-05T03:00Z;
    // 2026-09-06 00:00 (-4) jumps to 01:00 (-3) at 04:00Z.
    // Havana: 2026-03-08 00:00 (-5) jumps to 01:00 (-4) at 05:00Z;
    // 2026-11-01 01:00 (-4) goes back to 00:00 (-5) at 05:00Z.
    const SANTIAGO: &str = "America/Santiago";
    const HAVANA: &str = "America/Havana";
    check(&[
        (
            SANTIAGO,
            "@daily",
            "2026-09-04T12:00:00Z",
            &[
                "2026-09-05T04:00:00Z@2026-09-05T00:00",
                "2026-09-06T04:00:00Z@2026-09-06T00:00",
                "2026-09-07T03:00:00Z@2026-09-07T00:00",
            ],
        ),
        (
            SANTIAGO,
            "0 23 * * *",
            "2026-04-04T00:00:00Z",
            &[
                "2026-04-04T02:00:00Z@2026-04-03T23:00",
                "2026-04-05T02:00:00Z@2026-04-04T23:00",
                "2026-04-06T03:00:00Z@2026-04-05T23:00",
            ],
        ),
        (
            SANTIAGO,
            "30 * * * *",
            "2026-04-05T01:00:00Z",
            &[
                "2026-04-05T01:30:00Z@2026-04-04T22:30",
                "2026-04-05T02:30:00Z@2026-04-04T23:30",
                "2026-04-05T03:30:00Z@2026-04-04T23:30",
                "2026-04-05T04:30:00Z@2026-04-05T00:30",
            ],
        ),
        (
            HAVANA,
            "@daily",
            "2026-03-07T00:00:00Z",
            &[
                "2026-03-07T05:00:00Z@2026-03-07T00:00",
                "2026-03-08T05:00:00Z@2026-03-08T00:00",
                "2026-03-09T04:00:00Z@2026-03-09T00:00",
            ],
        ),
        (
            HAVANA,
            "@daily",
            "2026-10-31T00:00:00Z",
            &[
                "2026-10-31T04:00:00Z@2026-10-31T00:00",
                "2026-11-01T04:00:00Z@2026-11-01T00:00",
                "2026-11-02T05:00:00Z@2026-11-02T00:00",
            ],
        ),
        // Samoa skipped 2011-12-30: every slot of that day fires as the day is skipped.
        (
            "Pacific/Apia",
            "0 9,17 * * *",
            "2011-12-29T12:00:00Z",
            &[
                "2011-12-29T19:00:00Z@2011-12-29T09:00",
                "2011-12-30T03:00:00Z@2011-12-29T17:00",
                "2011-12-30T10:00:00Z@2011-12-30T09:00",
                "2011-12-30T10:00:00Z@2011-12-30T17:00",
                "2011-12-30T19:00:00Z@2011-12-31T09:00",
            ],
        ),
    ]);
}

#[test]
fn fixed_time_classification() {
    for (expr, fixed) in [
        ("30 2 * * *", true),
        ("0,30 2 * * *", true),
        ("0 9-17 * * 1-5", true),
        ("0-59/20 0-4 * * *", true),
        ("@daily", true),
        ("@midnight", true),
        ("@weekly", true),
        ("@monthly", true),
        ("@yearly", true),
        ("@annually", true),
        ("@hourly", false),
        ("*/15 * * * *", false),
        ("0 * * * *", false),
        ("* 2 * * *", false),
        ("0 */2 * * *", false),
        ("* * * * *", false),
    ] {
        assert_eq!(schedule(expr, None).is_fixed_time(), fixed, "`{expr}`");
    }
}

/// The slots of `schedule` in `(from, to]`, found by brute force, minute by minute, straight
/// from the rules in the design, with croner matching the wall clock.
fn brute_force(schedule: &CronSchedule, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Slot> {
    let tz = schedule.tz;
    let cron = &schedule.matcher.cron;
    let matches = |local: &NaiveDateTime| cron.is_time_matching(local).expect("match");
    let local_of = |t: DateTime<Utc>| t.with_timezone(&tz).naive_local();
    let mut slots = Vec::new();
    if schedule.is_fixed_time() {
        let mut nominal = local_of(from) - Duration::days(1);
        let end = local_of(to) + Duration::days(1);
        while nominal <= end {
            if matches(&nominal) {
                let at = match tz.from_local_datetime(&nominal) {
                    LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => {
                        at.with_timezone(&Utc)
                    }
                    LocalResult::None => {
                        let mut t = nominal.and_utc() - Duration::hours(16);
                        while local_of(t) < nominal {
                            t += Duration::minutes(1);
                        }
                        t
                    }
                };
                slots.push(Slot { at, nominal });
            }
            nominal += Duration::minutes(1);
        }
    } else {
        let mut t = from;
        while t <= to {
            let local = local_of(t);
            if matches(&local) {
                slots.push(Slot {
                    at: t,
                    nominal: local,
                });
            }
            t += Duration::minutes(1);
        }
    }
    slots.retain(|slot| slot.at > from && slot.at <= to);
    slots.sort();
    slots
}

#[test]
fn agrees_with_brute_force_around_transitions() {
    let windows = [
        (NY, "2026-03-08T07:00:00Z"),
        (NY, "2026-11-01T06:00:00Z"),
        (BERLIN, "2026-03-29T01:00:00Z"),
        (BERLIN, "2026-10-25T01:00:00Z"),
        (LORD_HOWE, "2026-04-04T15:00:00Z"),
        (LORD_HOWE, "2026-10-03T15:30:00Z"),
        ("America/Santiago", "2026-04-05T03:00:00Z"),
        ("America/Santiago", "2026-09-06T04:00:00Z"),
        ("America/Havana", "2026-03-08T05:00:00Z"),
        ("America/Havana", "2026-11-01T05:00:00Z"),
        ("Asia/Beirut", "2026-03-28T22:00:00Z"),
        ("Asia/Beirut", "2026-10-24T21:00:00Z"),
        ("Pacific/Apia", "2011-12-30T10:00:00Z"),
        ("UTC", "2026-03-08T07:00:00Z"),
    ];
    let expressions = [
        "30 2 * * *",
        "0,30 2 * * *",
        "0 1-3 * * *",
        "0 9-17 * * 1-5",
        "*/15 * * * *",
        "0 * * * *",
        "30 1 * * *",
        "@daily",
        "15 2 * * *",
        "*/10 * * * *",
        "45 1 * * *",
        "0 0,23 * * *",
        "* 2 * * *",
        "0-59/20 0-4 * * *",
        "*/7 1,2 * * *",
        "59 23 * * *",
        "*/20 0 * * 0",
    ];
    let mut failures = Vec::new();
    for (zone, transition) in windows {
        let transition = utc(transition);
        for expr in expressions {
            let s = schedule(expr, Some(zone));
            // Start at every quarter hour of the six hours around the transition.
            for start in (-12..12).map(|q| transition + Duration::minutes(15 * q)) {
                let end = start + Duration::days(2);
                let want = brute_force(&s, start, end);
                let got: Vec<Slot> = s
                    .slots_after(start)
                    .take_while(|slot| slot.at <= end)
                    .collect();
                if got != want {
                    failures.push(format!(
                        "{zone} `{expr}` after {start}:\n  want {:?}\n  got  {:?}",
                        want.iter().map(Slot::key).collect::<Vec<_>>(),
                        got.iter().map(Slot::key).collect::<Vec<_>>()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn agrees_with_croner_in_utc() {
    // Without DST, croner's own search is the reference for the date rules (L, W, #, OR).
    let parser = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .build();
    for expr in [
        "0 0 L * *",
        "0 12 15W * *",
        "0 0 LW * *",
        "0 9 * * 5#3",
        "0 0 * * 5L",
        "0 0 1 * 1",
        "*/5 9-17 * * MON-FRI",
        "30 4 1,15 * 5",
        "0 0 29 2 *",
        "0 0 * * 7",
        "0 0 13 * 5",
        "0 0 * 2-4 SUN",
        "5 4 * * sun",
        "0 22 * * 1-5",
        "0 0,12 1 */2 *",
        "23 0-20/2 * * *",
        "0 0 13 * +5",
    ] {
        let cron = parser.parse(expr).expect(expr);
        let ours = schedule(expr, None);
        for start in [
            "2026-01-01T00:00:00Z",
            "2026-02-28T23:59:30Z",
            "2027-12-31T12:00:00Z",
            "2096-01-01T00:00:00Z",
        ] {
            let start = utc(start);
            let want: Vec<DateTime<Utc>> = cron.iter_after(start).take(40).collect();
            let got: Vec<DateTime<Utc>> = ours.slots_after(start).take(40).map(|s| s.at).collect();
            assert_eq!(got, want, "`{expr}` after {start}");
        }
    }
}

#[test]
fn cron_tz_prefix_and_timezone_key() {
    let s = schedule("CRON_TZ=Europe/Berlin 0 9 * * 1", None);
    assert_eq!(s.timezone(), chrono_tz::Europe::Berlin);
    assert_eq!(s.expression(), "0 9 * * 1");
    assert_eq!(
        s.next_after(utc("2026-06-01T00:00:00Z"))
            .map(|slot| slot.key()),
        Some("2026-06-01T07:00:00Z@2026-06-01T09:00".to_string())
    );
    let s = schedule(
        "  CRON_TZ=America/New_York   @daily ",
        Some("America/New_York"),
    );
    assert_eq!(s.timezone(), chrono_tz::America::New_York);
    assert_eq!(s.expression(), "@daily");
    let s = schedule("0 9 * * 1", Some("Europe/Berlin"));
    assert_eq!(s.timezone(), chrono_tz::Europe::Berlin);
    assert_eq!(schedule("0 9 * * 1", None).timezone(), Tz::UTC);
    assert_eq!(
        CronSchedule::parse("CRON_TZ=Europe/Berlin 0 9 * * 1", Some("America/New_York")),
        Err(CronError::ConflictingTimezone {
            prefix: "Europe/Berlin".into(),
            field: "America/New_York".into()
        })
    );
    assert_eq!(
        CronSchedule::parse("CRON_TZ=Europe/Berln 0 9 * * 1", None),
        Err(CronError::UnknownTimezone {
            name: "Europe/Berln".into(),
            suggestion: Some("Europe/Berlin".into())
        })
    );
    for expr in ["CRON_TZ=UTC", "CRON_TZ=UTC   ", "", "   "] {
        assert_eq!(
            CronSchedule::parse(expr, None),
            Err(CronError::Empty),
            "`{expr}`"
        );
    }
}

#[test]
fn a_tz_prefix_is_named_not_counted_as_a_sixth_field() {
    for expr in [
        "TZ=Europe/Berlin 0 9 * * *",
        "  tz=Europe/Berlin   0 9 * * *",
    ] {
        let e = CronSchedule::parse(expr, None).expect_err("TZ= is not read");
        assert_eq!(
            e,
            CronError::TzPrefix {
                zone: "Europe/Berlin".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "`TZ=Europe/Berlin` does not set a schedule's zone; the prefix is `CRON_TZ=`"
        );
    }
}

#[test]
fn unknown_timezones_and_suggestions() {
    for (name, suggestion) in [
        ("Europe/Berln", Some("Europe/Berlin")),
        ("europe/berlin", Some("Europe/Berlin")),
        ("America/New_Yrok", Some("America/New_York")),
        ("Berlin", Some("Europe/Berlin")),
        ("new york", Some("America/New_York")),
        ("utc", Some("UTC")),
        ("Mars/Olympus_Mons", None),
        ("", None),
    ] {
        assert_eq!(
            parse_timezone(name),
            Err(CronError::UnknownTimezone {
                name: name.into(),
                suggestion: suggestion.map(String::from)
            }),
            "{name}"
        );
    }
    assert_eq!(
        parse_timezone("Europe/Berln").map_err(|e| e.to_string()),
        Err("unknown time zone `Europe/Berln`".to_string())
    );
    assert_eq!(
        parse_timezone(" Australia/Lord_Howe "),
        Ok(chrono_tz::Australia::Lord_Howe)
    );
    assert!(matches!(
        CronSchedule::parse("0 9 * * *", Some("Europe/Berln")),
        Err(CronError::UnknownTimezone { .. })
    ));
}

#[test]
fn field_counts() {
    let err = CronSchedule::parse("*/10 * * * * *", None).unwrap_err();
    assert_eq!(
        err,
        CronError::SecondsField {
            expr: "*/10 * * * * *".into(),
            fields: 6
        }
    );
    assert_eq!(
        err.to_string(),
        "`*/10 * * * * *` has 6 fields; runner schedules have 5 (minute hour day-of-month month day-of-week) and no seconds field"
    );
    assert!(matches!(
        CronSchedule::parse("0 0 0 * * * 2026", None),
        Err(CronError::SecondsField { fields: 7, .. })
    ));
    assert!(matches!(
        CronSchedule::parse("* * * *", None),
        Err(CronError::FieldCount { fields: 4, .. })
    ));
    assert!(matches!(
        CronSchedule::parse("* * * * * * * *", None),
        Err(CronError::FieldCount { fields: 8, .. })
    ));
}

#[test]
fn syntax_errors_name_the_field() {
    for (expr, message) in [
        (
            "61 * * * *",
            "minute field `61`: number out of bounds; minute values are 0-59",
        ),
        (
            "* 24 * * *",
            "hour field `24`: number out of bounds; hour values are 0-23",
        ),
        ("* * 0 * *", "day-of-month field `0`: number out of bounds"),
        ("* * * 13 *", "month field `13`: number out of bounds"),
        ("* * * * 8", "day-of-week field `8`: number out of bounds"),
        ("1-70 * * * *", "minute field `1-70`: range out of bounds"),
        ("*/0 * * * *", "minute field `*/0`: step cannot be zero"),
        ("5/15 * * * *", "minute field `5/15`: invalid step syntax"),
        (
            "MON * * * *",
            "minute field `MON`: names and letters are not allowed here",
        ),
        (
            "* * * MON *",
            "month field `MON`: `MON` is not a month name",
        ),
        (
            "* * * * JAN",
            "day-of-week field `JAN`: `JAN` is not a day name",
        ),
        (
            "* * * * 1#6",
            "day-of-week field `1#6`: nth specifier out of bounds",
        ),
        ("*% * * * *", "minute field `*%`: `%` is not allowed here"),
        ("@reboot", "`@reboot` is not supported"),
        ("@every 5m", "`@every` is a macro and stands alone"),
        ("@fortnightly", "unknown macro `@fortnightly`"),
    ] {
        match CronSchedule::parse(expr, None) {
            Err(CronError::Syntax { message: got }) => {
                assert!(got.starts_with(message), "`{expr}`: {got}")
            }
            other => panic!("`{expr}`: expected a syntax error, got {other:?}"),
        }
    }
    // Names in their own fields, in any case.
    assert!(CronSchedule::parse("0 9 * jan-mar Mon-Fri", None).is_ok());
    assert!(CronSchedule::parse("0 9 ? * FRIL", None).is_ok());
}

#[test]
fn never_fires() {
    for expr in [
        "0 0 31 2 *",
        "0 0 30 2 *",
        "0 0 31 4,6,9,11 *",
        "0 0 30,31 2 *",
    ] {
        assert_eq!(
            CronSchedule::parse(expr, None),
            Err(CronError::NeverFires),
            "`{expr}`"
        );
    }
    // Vixie OR: a restricted weekday rescues an impossible day of month.
    assert!(CronSchedule::parse("0 0 31 2 1", None).is_ok());
    // ... but not when a day field begins with `*` (Vixie's DOW_STAR makes it an AND).
    assert_eq!(
        CronSchedule::parse("0 0 30 2 */2", None),
        Err(CronError::NeverFires)
    );
    // The leap day fires every four years, and skips 2100.
    check(&[
        (
            "UTC",
            "0 0 29 2 *",
            "2026-01-01T00:00:00Z",
            &[
                "2028-02-29T00:00:00Z@2028-02-29T00:00",
                "2032-02-29T00:00:00Z@2032-02-29T00:00",
            ],
        ),
        (
            "UTC",
            "0 0 29 2 *",
            "2096-03-01T00:00:00Z",
            &["2104-02-29T00:00:00Z@2104-02-29T00:00"],
        ),
    ]);
}

#[test]
fn weekdays_are_posix() {
    let weekdays = schedule("0 9 * * 1-5", None);
    let slots: Vec<Slot> = weekdays
        .slots_after(utc("2026-03-01T00:00:00Z"))
        .take(30)
        .collect();
    assert!(slots.iter().all(|s| {
        let day = s.at.weekday();
        day != chrono::Weekday::Sat && day != chrono::Weekday::Sun
    }));
    assert_eq!(slots[0].key(), "2026-03-02T09:00:00Z@2026-03-02T09:00"); // a Monday
    for sunday in ["0 9 * * 7", "0 9 * * 0", "0 9 * * SUN", "0 9 * * sun"] {
        check(&[(
            "UTC",
            sunday,
            "2026-03-01T00:00:00Z",
            &[
                "2026-03-01T09:00:00Z@2026-03-01T09:00",
                "2026-03-08T09:00:00Z@2026-03-08T09:00",
            ],
        )]);
    }
    check(&[
        (
            "UTC",
            "0 9 * * MON-FRI",
            "2026-03-06T10:00:00Z",
            &["2026-03-09T09:00:00Z@2026-03-09T09:00"],
        ),
        (
            "UTC",
            "0 9 * * 5-7",
            "2026-03-05T10:00:00Z",
            &[
                "2026-03-06T09:00:00Z@2026-03-06T09:00",
                "2026-03-07T09:00:00Z@2026-03-07T09:00",
                "2026-03-08T09:00:00Z@2026-03-08T09:00",
                "2026-03-13T09:00:00Z@2026-03-13T09:00",
            ],
        ),
    ]);
}

#[test]
fn day_of_month_or_day_of_week() {
    // 2026-06-01 is a Monday; 2026-07-01 a Wednesday.
    check(&[(
        "UTC",
        "0 0 1 * 1",
        "2026-05-31T00:00:00Z",
        &[
            "2026-06-01T00:00:00Z@2026-06-01T00:00",
            "2026-06-08T00:00:00Z@2026-06-08T00:00",
            "2026-06-15T00:00:00Z@2026-06-15T00:00",
            "2026-06-22T00:00:00Z@2026-06-22T00:00",
            "2026-06-29T00:00:00Z@2026-06-29T00:00",
            "2026-07-01T00:00:00Z@2026-07-01T00:00",
            "2026-07-06T00:00:00Z@2026-07-06T00:00",
        ],
    )]);
}

#[test]
fn a_day_field_beginning_with_a_star_makes_the_day_fields_an_and() {
    // As Vixie cron's DOM_STAR / DOW_STAR: `*/2` is not "restricted", so both must match.
    let day = |d: &str| format!("{d}T00:00:00Z@{d}T00:00");
    let want = |days: &[&str]| days.iter().map(|d| day(d)).collect::<Vec<_>>();
    let from = "2025-12-31T00:00:00Z";
    assert_eq!(
        keys("0 0 */2 * 1", "UTC", from, 4),
        want(&["2026-01-05", "2026-01-19", "2026-02-09", "2026-02-23"])
    );
    assert_eq!(
        keys("0 0 1,15 * */2", "UTC", from, 5),
        want(&[
            "2026-01-01",
            "2026-01-15",
            "2026-02-01",
            "2026-02-15",
            "2026-03-01"
        ])
    );
}

#[test]
fn macros() {
    check(&[
        (
            "UTC",
            "@yearly",
            "2026-06-01T00:00:00Z",
            &[
                "2027-01-01T00:00:00Z@2027-01-01T00:00",
                "2028-01-01T00:00:00Z@2028-01-01T00:00",
            ],
        ),
        (
            BERLIN,
            "@annually",
            "2026-06-01T00:00:00Z",
            &["2026-12-31T23:00:00Z@2027-01-01T00:00"],
        ),
        (
            "UTC",
            "@monthly",
            "2026-01-31T00:00:00Z",
            &[
                "2026-02-01T00:00:00Z@2026-02-01T00:00",
                "2026-03-01T00:00:00Z@2026-03-01T00:00",
            ],
        ),
        // 2026-03-01 and 2026-03-08 are Sundays.
        (
            "UTC",
            "@weekly",
            "2026-03-01T00:00:00Z",
            &["2026-03-08T00:00:00Z@2026-03-08T00:00"],
        ),
        (
            "UTC",
            "@midnight",
            "2026-03-01T00:00:00Z",
            &["2026-03-02T00:00:00Z@2026-03-02T00:00"],
        ),
        (
            "UTC",
            "@HOURLY",
            "2026-03-01T00:00:00Z",
            &["2026-03-01T01:00:00Z@2026-03-01T01:00"],
        ),
    ]);
}

#[test]
fn after_is_exclusive_at_any_precision() {
    let s = schedule("*/15 * * * *", None);
    for (after, next) in [
        (
            "2026-03-01T10:15:00Z",
            "2026-03-01T10:30:00Z@2026-03-01T10:30",
        ),
        (
            "2026-03-01T10:14:59.999Z",
            "2026-03-01T10:15:00Z@2026-03-01T10:15",
        ),
        (
            "2026-03-01T10:15:00.001Z",
            "2026-03-01T10:30:00Z@2026-03-01T10:30",
        ),
        (
            "2026-12-31T23:59:59Z",
            "2027-01-01T00:00:00Z@2027-01-01T00:00",
        ),
    ] {
        assert_eq!(
            s.next_after(utc(after)).map(|slot| slot.key()).as_deref(),
            Some(next)
        );
    }
}

#[test]
fn slot_keys_are_unique() {
    for (tz, expr, from) in [
        (NY, "0,30 2 * * *", "2026-03-06T00:00:00Z"),
        (NY, "*/15 * * * *", "2026-10-31T23:00:00Z"),
        (NY, "0 1-3 * * *", "2026-03-06T00:00:00Z"),
        (LORD_HOWE, "*/10 * * * *", "2026-04-04T12:00:00Z"),
        (LORD_HOWE, "0,20,40 2 * * *", "2026-10-02T00:00:00Z"),
    ] {
        let slots: Vec<Slot> = schedule(expr, Some(tz))
            .slots_after(utc(from))
            .take(300)
            .collect();
        let keys: HashSet<String> = slots.iter().map(Slot::key).collect();
        assert_eq!(keys.len(), slots.len(), "{tz} `{expr}`");
        assert!(
            slots.windows(2).all(|w| w[0] < w[1]),
            "{tz} `{expr}` in order"
        );
    }
    // The two gap slots share an instant; the two passes of 01:00 share a wall-clock time.
    let gap = keys("0,30 2 * * *", NY, "2026-03-08T00:00:00Z", 2);
    assert_eq!(
        gap,
        [
            "2026-03-08T07:00:00Z@2026-03-08T02:00",
            "2026-03-08T07:00:00Z@2026-03-08T02:30"
        ]
    );
    let passes = keys("0 * * * *", NY, "2026-11-01T04:30:00Z", 3);
    assert_ne!(passes[0], passes[1]);
}

#[test]
fn debug_output_is_short() {
    let text = format!("{:?}", schedule("0 9 * * 1", Some(BERLIN)));
    assert_eq!(
        text,
        "CronSchedule { expr: \"0 9 * * 1\", tz: Europe/Berlin, fixed_time: true }"
    );
}

/// Not a benchmark with assertions: prints what 10,000 `next_after` calls cost.
#[test]
fn next_after_cost() {
    for (expr, tz) in [
        ("*/15 * * * *", NY),
        ("0,30 2 * * *", NY),
        ("0 9 * * 1-5", BERLIN),
        ("0 0 29 2 *", "UTC"),
        ("15 2 * * *", LORD_HOWE),
    ] {
        let s = schedule(expr, Some(tz));
        let mut after = utc("2026-01-01T00:00:00Z");
        let started = std::time::Instant::now();
        for _ in 0..10_000 {
            after = s.next_after(after).map_or(after, |slot| slot.at);
        }
        let elapsed = started.elapsed();
        println!(
            "10,000 next_after calls for {tz} `{expr}`: {elapsed:?} ({:?} each)",
            elapsed / 10_000
        );
    }
    let started = std::time::Instant::now();
    for _ in 0..100 {
        let _ = CronSchedule::parse("0 0 31 2 *", None);
    }
    println!(
        "100 parses of a never-firing expression: {:?}",
        started.elapsed()
    );
}
