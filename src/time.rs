//! Times as runner writes them: RFC 3339 in UTC, as chrono does, but fast.
//!
//! Part of the pure core: no I/O, no clock.

/// Serializing times as chrono does (RFC 3339, `AutoSi` fraction, `Z`) without the `fmt`
/// machinery: the run state is written on every change, and chrono's `Display` path was about
/// half of that cost (callgrind). Years outside 0–9999 and leap seconds take chrono's own path.
/// A test checks the output against chrono's for many instants.
pub(crate) mod rfc3339 {
    use chrono::{DateTime, Datelike, Timelike, Utc};
    use serde::{Serialize, Serializer};

    pub(crate) fn one<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 30];
        match write(t, &mut buf) {
            Some(n) => s.serialize_str(std::str::from_utf8(&buf[..n]).expect("ASCII digits")),
            None => t.serialize(s),
        }
    }

    pub(crate) fn option<S: Serializer>(
        t: &Option<DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        struct One<'a>(&'a DateTime<Utc>);
        impl Serialize for One<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                one(self.0, s)
            }
        }
        match t {
            Some(t) => s.serialize_some(&One(t)),
            None => s.serialize_none(),
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS[.fff|.ffffff|.fffffffff]Z` into `buf`; None when chrono must do it.
    pub(crate) fn write(t: &DateTime<Utc>, buf: &mut [u8; 30]) -> Option<usize> {
        let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
        let nanos = t.nanosecond();
        if nanos >= 1_000_000_000 {
            return None;
        }
        let mut at = digits(buf, 0, year, 4);
        for (sep, value) in [
            (b'-', t.month()),
            (b'-', t.day()),
            (b'T', t.hour()),
            (b':', t.minute()),
            (b':', t.second()),
        ] {
            buf[at] = sep;
            at = digits(buf, at + 1, value, 2);
        }
        let (fraction, width) = match nanos {
            0 => (0, 0),
            n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
            n if n % 1_000 == 0 => (n / 1_000, 6),
            n => (n, 9),
        };
        if width > 0 {
            buf[at] = b'.';
            at = digits(buf, at + 1, fraction, width);
        }
        buf[at] = b'Z';
        Some(at + 1)
    }

    /// Writes `value` as `width` decimal digits at `at`; returns the position after them.
    fn digits(buf: &mut [u8; 30], at: usize, mut value: u32, width: usize) -> usize {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + u8::try_from(value % 10).expect("a digit");
            value /= 10;
        }
        at + width
    }
}

#[cfg(test)]
mod rfc3339_tests {
    use chrono::{DateTime, TimeZone, Utc};
    use proptest::prelude::*;

    struct Fast(DateTime<Utc>);
    impl serde::Serialize for Fast {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            super::rfc3339::one(&self.0, s)
        }
    }

    fn same_as_chrono(t: DateTime<Utc>) {
        let fast = serde_json::to_string(&Fast(t)).expect("serializes");
        let chrono = serde_json::to_string(&t).expect("serializes");
        assert_eq!(fast, chrono, "{t:?}");
        let back: DateTime<Utc> = serde_json::from_str(&fast).expect("reads back");
        assert_eq!(back, t);
    }

    #[test]
    fn times_are_written_exactly_as_chrono_writes_them() {
        for (secs, nanos) in [
            (0, 0),
            (1_795_297_788, 0),
            (1_795_297_788, 1_000_000),
            (1_795_297_788, 120_000_000),
            (1_795_297_788, 123_456_000),
            (1_795_297_788, 123_456_789),
            (1_795_297_788, 1),
            (-62_135_596_800, 0),           // 0001-01-01
            (253_402_300_799, 999_999_999), // 9999-12-31T23:59:59.999999999
            (951_782_400, 500_000_000),     // 2000-02-29
        ] {
            same_as_chrono(Utc.timestamp_opt(secs, nanos).single().expect("valid"));
        }
        // Beyond what the fast path writes: chrono's own output.
        same_as_chrono(
            Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0)
                .single()
                .expect("valid"),
        );
        same_as_chrono(
            Utc.with_ymd_and_hms(-1, 6, 1, 0, 0, 0)
                .single()
                .expect("valid"),
        );
    }

    proptest! {
        #[test]
        fn any_time_is_written_as_chrono_writes_it(
            secs in -62_135_596_800i64..253_402_300_800,
            nanos in prop_oneof![Just(0u32), (0u32..1000).prop_map(|m| m * 1_000_000), (0u32..1_000_000).prop_map(|u| u * 1000), 0u32..1_000_000_000],
        ) {
            same_as_chrono(Utc.timestamp_opt(secs, nanos).single().expect("valid"));
        }
    }
}
