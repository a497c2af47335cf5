//! Durations as users write them: `30s`, `15m`, `2h`, `3d`, `1d12h`, `1w`.
//!
//! Part of the pure core: no I/O.

use std::time::Duration;

/// Parses `30s`, `15m`, `2h`, `3d`, `1w`, `500ms` and concatenations such as `1d12h`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("an empty duration".into());
    }
    if s.contains(char::is_whitespace)
        || s.chars()
            .any(|c| c.is_ascii_alphabetic() && c.is_ascii_uppercase())
    {
        return Err(match suggest(s) {
            Some(better) => format!("`{s}` is not a duration; did you mean `{better}`?"),
            None => format!(
                "`{s}` is not a duration; write the unit right after the number, without spaces"
            ),
        });
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total: u128 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(format!(
                "`{s}` is not a duration; expected a number followed by a unit"
            ));
        }
        let number: u128 = s[start..i]
            .parse()
            .map_err(|_| format!("`{s}` has a number that is too large"))?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let millis_per_unit: u128 = match &s[unit_start..i] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "" => {
                return Err(format!(
                    "`{s}` needs a unit after `{number}`: s, m, h, d or w"
                ));
            }
            other => {
                return Err(format!(
                    "`{other}` in `{s}` is not a unit; use ms, s, m, h, d or w"
                ));
            }
        };
        total = total
            .checked_add(number.saturating_mul(millis_per_unit))
            .ok_or_else(|| format!("`{s}` is too long"))?;
    }
    let millis = u64::try_from(total).map_err(|_| format!("`{s}` is too long"))?;
    if millis > 100 * 365 * 86_400_000 {
        return Err(format!("`{s}` is longer than 100 years"));
    }
    Ok(Duration::from_millis(millis))
}

/// `10 minutes` → `10m`, `1 Day 2 hours` → `1d2h`: a suggestion for spelled-out units.
fn suggest(s: &str) -> Option<String> {
    let mut out = String::new();
    let lower = s.to_ascii_lowercase();
    let mut words = lower.split_whitespace().peekable();
    while let Some(w) = words.next() {
        let split = w.find(|c: char| !c.is_ascii_digit()).unwrap_or(w.len());
        let (num, unit) = w.split_at(split);
        let (num, unit) = if unit.is_empty() {
            (num, words.next()?)
        } else {
            (num, unit)
        };
        if num.is_empty() {
            return None;
        }
        let u = match unit.trim_end_matches(',') {
            "ms" | "millisecond" | "milliseconds" => "ms",
            "s" | "sec" | "secs" | "second" | "seconds" => "s",
            "m" | "min" | "mins" | "minute" | "minutes" => "m",
            "h" | "hr" | "hrs" | "hour" | "hours" => "h",
            "d" | "day" | "days" => "d",
            "w" | "week" | "weeks" => "w",
            _ => return None,
        };
        out.push_str(num);
        out.push_str(u);
    }
    (!out.is_empty()).then_some(out)
}

/// Formats a duration the way users write it (`1d12h`, `2m28s`, `250ms`).
pub fn format(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_in_the_design() {
        let cases = [
            ("30s", 30_000),
            ("15m", 900_000),
            ("2h", 7_200_000),
            ("3d", 259_200_000),
            ("1d12h", 129_600_000),
            ("1w", 604_800_000),
            ("250ms", 250),
            ("1h30m", 5_400_000),
        ];
        for (text, ms) in cases {
            assert_eq!(parse(text), Ok(Duration::from_millis(ms)), "{text}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for text in [
            "",
            "10",
            "s",
            "3 days",
            "1x",
            "1.5h",
            "-1s",
            "99999999999999999999999d",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn suggests_the_short_form() {
        assert_eq!(
            parse("10 minutes"),
            Err("`10 minutes` is not a duration; did you mean `10m`?".into())
        );
        assert_eq!(
            parse("1 day 12 hours"),
            Err("`1 day 12 hours` is not a duration; did you mean `1d12h`?".into())
        );
        assert_eq!(
            parse("3 Days"),
            Err("`3 Days` is not a duration; did you mean `3d`?".into())
        );
        assert!(parse("soon please").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for text in ["30s", "15m", "1d12h", "2m28s", "250ms"] {
            let d = parse(text).expect("valid");
            assert_eq!(format(d), text);
        }
    }
}
