//! Retry delays: QStash's default backoff, the backoffs a workflow can choose, and `Retry-After`.
//!
//! Pure core: no I/O, no clock and no randomness in here; the caller passes the retry number and `now`.

use std::time::Duration;

/// A step's `retry: { backoff: exponential | fixed | linear }` (one type, from the model).
pub(crate) use crate::workflow::model::BackoffKind as Backoff;

use chrono::{DateTime, NaiveDateTime, Utc};

/// The longest delay QStash waits before a retry, and the longest `Retry-After` it honours: one day.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(86_400);

/// QStash's default backoff: the delay before retry `n` (1-based: `1` is the first retry, after the first
/// attempt failed) is `min(86400, e^(2.5·n))` seconds, truncated to whole seconds → 12 s, 2 m 28 s, 30 m 8 s,
/// 6 h 7 m 6 s, then 1 day. Retry `0` is the first attempt, which has no delay.
///
/// Truncation rather than rounding: the fractional parts of e^2.5, e^5, e^7.5 and e^10 (.18, .41, .04, .47)
/// are all below one half, so the figures in QStash's documentation fit both; QStash is written in Go,
/// where converting a float to a `time.Duration` truncates, and truncation never waits longer than the formula.
pub(crate) fn qstash_default(retry: u32) -> Duration {
    if retry == 0 {
        return Duration::ZERO;
    }
    let secs = (2.5 * f64::from(retry)).exp().min(MAX_DELAY.as_secs_f64());
    // `as` saturates and truncates toward zero; `secs` is finite and within 0..=86400 here.
    Duration::from_secs(secs as u64)
}

/// The delay before retry `retry` (1-based, as in [`qstash_default`]; `0` is the first attempt and gets no
/// delay), capped at `max` for every kind; an overflowing product is `max`.
pub(crate) fn delay(kind: Backoff, initial: Duration, max: Duration, retry: u32) -> Duration {
    if retry == 0 || initial.is_zero() {
        return Duration::ZERO;
    }
    let uncapped = match kind {
        Backoff::Fixed => Some(initial),
        Backoff::Linear => initial.checked_mul(retry),
        Backoff::Exponential => 2u32
            .checked_pow(retry - 1)
            .and_then(|factor| initial.checked_mul(factor)),
    };
    uncapped.map_or(max, |d| d.min(max))
}

/// Reads a `Retry-After` value relative to `now`: delta-seconds (`120`) or an HTTP-date in any of the three
/// forms of RFC 9110 §5.6.7 (IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, the obsolete RFC 850
/// `Sunday, 06-Nov-94 08:49:37 GMT` and asctime `Sun Nov  6 08:49:37 1994`).
///
/// `None` when unparsable or above one day (QStash ignores such values; the normal backoff applies).
/// A date in the past or negative seconds (`-5`) mean "now": `Duration::ZERO`. As Go's `http.ParseTime`, the
/// weekday must be a weekday name but need not agree with the date. Two-digit RFC 850 years are 2000–2069 for
/// `00`–`69` and 1970–1999 for `70`–`99` (chrono's rule).
pub(crate) fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    let delay = match parse_delta_seconds(value) {
        Some(delay) => delay,
        None => (parse_http_date(value)? - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    };
    (delay <= MAX_DELAY).then_some(delay)
}

fn parse_delta_seconds(value: &str) -> Option<Duration> {
    let (negative, digits) = match value.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, value),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if negative {
        return Some(Duration::ZERO);
    }
    // Too many digits for a u64 is far above one day: keep it out of range rather than unparsable.
    Some(digits.parse().map_or(Duration::MAX, Duration::from_secs))
}

const SHORT_DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const LONG_DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    let parsed = if let Some((day, rest)) = value.split_once(", ") {
        if SHORT_DAYS.contains(&day) {
            NaiveDateTime::parse_from_str(rest, "%d %b %Y %H:%M:%S GMT")
        } else if LONG_DAYS.contains(&day) {
            NaiveDateTime::parse_from_str(rest, "%d-%b-%y %H:%M:%S GMT")
        } else {
            return None;
        }
    } else {
        let (day, rest) = value.split_once(' ')?;
        if !SHORT_DAYS.contains(&day) {
            return None;
        }
        NaiveDateTime::parse_from_str(rest, "%b %e %H:%M:%S %Y")
    };
    parsed.ok().map(|naive| naive.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn qstash_default_matches_the_documented_table() {
        let cases = [
            (0, s(0)),
            (1, s(12)),                    // e^2.5  = 12.18
            (2, s(2 * 60 + 28)),           // e^5    = 148.41
            (3, s(30 * 60 + 8)),           // e^7.5  = 1808.04
            (4, s(6 * 3600 + 7 * 60 + 6)), // e^10   = 22026.47
            (5, s(86_400)),                // e^12.5 = 268337.29, capped
            (6, s(86_400)),
            (100, s(86_400)),
            (u32::MAX, s(86_400)),
        ];
        for (retry, want) in cases {
            assert_eq!(qstash_default(retry), want, "retry {retry}");
        }
    }

    #[test]
    fn configured_backoffs() {
        use Backoff::*;
        let (ten, hour) = (s(10), s(3600));
        let cases = [
            (Exponential, ten, hour, 0, s(0)),
            (Exponential, ten, hour, 1, s(10)),
            (Exponential, ten, hour, 2, s(20)),
            (Exponential, ten, hour, 3, s(40)),
            (Exponential, ten, hour, 9, s(2560)),
            (Exponential, ten, hour, 10, hour), // 5120 s, capped
            (Exponential, ten, hour, 33, hour), // 2^32 overflows u32
            (Exponential, ten, hour, u32::MAX, hour),
            (Exponential, s(0), hour, 50, s(0)),
            (Exponential, Duration::MAX, Duration::MAX, 2, Duration::MAX),
            (Fixed, ten, hour, 0, s(0)),
            (Fixed, ten, hour, 1, s(10)),
            (Fixed, ten, hour, 7, s(10)),
            (Fixed, s(7200), hour, 1, hour),
            (Linear, ten, hour, 1, s(10)),
            (Linear, ten, hour, 3, s(30)),
            (Linear, ten, hour, 360, hour),
            (Linear, ten, hour, 1000, hour),
            (Linear, Duration::MAX, hour, 2, hour),
        ];
        for (kind, initial, max, retry, want) in cases {
            assert_eq!(
                delay(kind, initial, max, retry),
                want,
                "{kind:?} {initial:?} {max:?} retry {retry}"
            );
        }
    }

    #[test]
    fn retry_after() {
        let now = "1994-11-06T08:49:00Z".parse::<DateTime<Utc>>().unwrap();
        let cases: &[(&str, Option<Duration>)] = &[
            ("120", Some(s(120))),
            ("0", Some(s(0))),
            (" 5 ", Some(s(5))),
            ("007", Some(s(7))),
            ("86400", Some(s(86_400))),
            ("86401", None),
            ("99999999999999999999999", None),
            ("-5", Some(s(0))),
            ("-", None),
            ("+5", None),
            ("1.5", None),
            ("5s", None),
            ("", None),
            ("soon", None),
            // IMF-fixdate
            ("Sun, 06 Nov 1994 08:49:37 GMT", Some(s(37))),
            ("Sun, 06 Nov 1994 08:49:00 GMT", Some(s(0))),
            ("Sun, 06 Nov 1994 08:00:00 GMT", Some(s(0))),
            ("Thu, 01 Jan 1970 00:00:00 GMT", Some(s(0))),
            ("Mon, 07 Nov 1994 08:49:00 GMT", Some(s(86_400))),
            ("Mon, 07 Nov 1994 08:49:01 GMT", None),
            ("Mon, 06 Nov 1994 08:49:37 GMT", Some(s(37))), // weekday not checked against the date
            ("Sun, 06 Nov 1994 08:49:37 UTC", None),
            ("Sun, 06 Nov 1994 08:49:37", None),
            ("Xyz, 06 Nov 1994 08:49:37 GMT", None),
            ("Sun, 31 Nov 1994 08:49:37 GMT", None),
            ("Sun, 06 Nov 1994 25:49:37 GMT", None),
            // RFC 850
            ("Sunday, 06-Nov-94 08:49:37 GMT", Some(s(37))),
            ("Sunday, 06-Nov-94 08:49:37", None),
            ("Sun, 06-Nov-94 08:49:37 GMT", None),
            // asctime
            ("Sun Nov  6 08:49:37 1994", Some(s(37))),
            ("Sun Nov 16 08:49:37 1994", None), // ten days ahead
            ("Sun Nov 6 08:49:37 1994", Some(s(37))),
            ("Nov  6 08:49:37 1994", None),
        ];
        for (value, want) in cases {
            assert_eq!(parse_retry_after(value, now), *want, "{value:?}");
        }
    }

    #[test]
    fn retry_after_date_keeps_sub_second_precision_of_now() {
        let now = "1994-11-06T08:49:36.250Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_millis(750))
        );
    }

    #[test]
    fn rfc850_two_digit_years() {
        let now = "2026-03-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            parse_retry_after("Sunday, 01-Mar-26 00:01:00 GMT", now),
            Some(s(60))
        );
        assert_eq!(
            parse_retry_after("Sunday, 01-Mar-70 00:01:00 GMT", now),
            Some(s(0)) // 1970: in the past
        );
        assert_eq!(
            parse_retry_after("Friday, 01-Mar-69 00:01:00 GMT", now),
            None // 2069: far ahead
        );
    }
}
