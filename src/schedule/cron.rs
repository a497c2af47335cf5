//! Cron schedules: parse a `cron:` expression with its zone, and list the slots it fires.
//!
//! Part of the pure core: **no I/O** — no clock, no files, no tokio, no logging. The current time is
//! always an argument (`after`); nothing here reads it.
//!
//! # Syntax
//!
//! Five fields, `minute hour day-of-month month day-of-week`, parsed by croner with seconds and years
//! disallowed (a six-field `*/10 * * * * *` is an error, never a per-second schedule). Weekdays are
//! POSIX (`0` and `7` are Sunday, `1-5` Monday to Friday); when both day fields are restricted a day
//! matches if either matches (the Vixie OR rule). As in Vixie cron, a day field that begins with `*`
//! counts as unrestricted even when it is not a plain `*`: `0 0 */2 * 1` fires on Mondays that are
//! odd days of the month, not on every odd day and every Monday. `JAN`-`DEC` and `SUN`-`SAT` are accepted in their
//! own fields only; croner's `L`, `W` and `#` in the day fields, and its `+` day-of-week prefix
//! (which ANDs the two day fields instead). The macros are `@hourly`, `@daily` (`@midnight`),
//! `@weekly`, `@monthly` and `@yearly` (`@annually`). An optional `CRON_TZ=Zone ` prefix names the
//! zone; the YAML `timezone:` key may name it instead, but not a different one. An expression that
//! parses but matches no date at all (`0 0 31 2 *`) is an error.
//!
//! # Daylight-saving time (design §3, as Vixie cron)
//!
//! Times are wall-clock times in the schedule's zone. A schedule whose minute and hour fields both do
//! not begin with `*` is *fixed-time* (`30 2 * * *`, `0,30 2 * * *`, `0 9-17 * * 1-5`, `@daily`):
//! each of its slots whose wall-clock time falls in a spring-forward gap fires once, at the first
//! instant after the gap (so `0,30 2 * * *` fires twice then, at the same instant), and a slot in a
//! repeated autumn range fires once, on its first occurrence. Any other schedule (`*/15 * * * *`,
//! `0 * * * *`, `@hourly`) follows elapsed time: nothing fires in the gap and both passes of the
//! repeated range fire. A [`Slot`] carries the instant it fires and the wall-clock time it stands for.
//!
//! # How slots are computed
//!
//! croner parses the fields and matches dates (Vixie OR, `L`, `W`, `#`). Finding times is done here,
//! not by croner's own search: croner decides fixed-time as "one single value in each of second,
//! minute and hour", so it skips `0,30 2 * * *` in the gap and fires it in both passes of the
//! repeated hour, and it reads month and day names anywhere (`MON * * * *` means minute 1). We
//! enumerate matching wall-clock times in order (a bit mask for minutes and hours, croner's matcher
//! for days, whole months skipped at once) and map each to instants with `chrono-tz`: one instant as
//! is; a repeated time to its first instant (fixed-time) or both (elapsed); a time in a gap to the
//! transition instant (fixed-time) or nothing (elapsed). Slots are ordered by `(at, nominal)`.
//!
//! `chrono-tz` carries transitions through 2099; after that a zone keeps the offset it had last.

use std::collections::VecDeque;
use std::fmt;

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeZone,
    Timelike, Utc,
};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// Why a schedule was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CronError {
    /// Nothing but whitespace (or only a `CRON_TZ=` prefix).
    #[error(
        "the cron expression is empty; write 5 fields (minute hour day-of-month month day-of-week) or a macro such as `@daily`"
    )]
    Empty,
    /// Six or seven fields: Quartz/croner-style seconds (and year) fields.
    #[error("{}", seconds_message(.expr, *.fields))]
    SecondsField { expr: String, fields: usize },
    /// Some other number of fields.
    #[error(
        "`{expr}` has {fields} field{}; runner schedules have 5: minute hour day-of-month month day-of-week",
        if *.fields == 1 { "" } else { "s" }
    )]
    FieldCount { expr: String, fields: usize },
    /// A field or macro that does not parse.
    #[error("{message}")]
    Syntax { message: String },
    /// Not an IANA zone name. The suggestion is not part of the message: callers show it as a hint.
    #[error("unknown time zone `{name}`")]
    UnknownTimezone {
        name: String,
        suggestion: Option<String>,
    },
    /// A `TZ=Zone ` prefix. In a crontab `TZ=` sets the command's environment (Vixie cron,
    /// cronie), in some libraries the schedule's zone (robfig/cron): runner reads one spelling
    /// of the zone prefix, `CRON_TZ=`, and says so rather than count `TZ=…` as a sixth field.
    #[error("`TZ={zone}` does not set a schedule's zone; the prefix is `CRON_TZ=`")]
    TzPrefix { zone: String },
    /// A `CRON_TZ=` prefix and a `timezone:` key that name different zones.
    #[error("the expression says `CRON_TZ={prefix}` but `timezone:` is `{field}`")]
    ConflictingTimezone { prefix: String, field: String },
    /// The expression parses but no date matches its day-of-month, month and day-of-week fields.
    #[error(
        "this cron expression never fires: no date matches its day-of-month, month and day-of-week fields"
    )]
    NeverFires,
}

fn seconds_message(expr: &str, fields: usize) -> String {
    let extra = if fields == 6 {
        "no seconds field"
    } else {
        "no seconds or year field"
    };
    format!(
        "`{expr}` has {fields} fields; runner schedules have 5 (minute hour day-of-month month day-of-week) and {extra}"
    )
}

/// One firing of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot {
    /// The instant it fires.
    pub at: DateTime<Utc>,
    /// The wall-clock time the cron expression named, in the schedule's zone. It differs from the
    /// local time of `at` for a fixed-time slot moved out of a spring-forward gap.
    pub nominal: NaiveDateTime,
}

impl Slot {
    /// A stable, unique key such as `2026-03-08T07:00:00Z@2026-03-08T02:30`: the instant, then the
    /// wall-clock time. Two gap slots firing at the same instant differ in the second part, the two
    /// passes of a repeated hour in the first.
    pub fn key(&self) -> String {
        format!(
            "{}@{}",
            self.at.format("%Y-%m-%dT%H:%M:%SZ"),
            self.nominal.format("%Y-%m-%dT%H:%M")
        )
    }

    /// The instant it fires, in `tz`.
    pub fn local(&self, tz: Tz) -> DateTime<Tz> {
        self.at.with_timezone(&tz)
    }
}

/// A parsed, checked schedule: expression, zone and DST behaviour.
#[derive(Clone, PartialEq, Eq)]
pub struct CronSchedule {
    /// The expression as written, trimmed, without the `CRON_TZ=` prefix.
    expr: String,
    tz: Tz,
    fixed_time: bool,
    matcher: Matcher,
}

impl fmt::Debug for CronSchedule {
    // croner's pattern holds a 5,000-entry year table; keep it out of debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CronSchedule")
            .field("expr", &self.expr)
            .field("tz", &self.tz)
            .field("fixed_time", &self.fixed_time)
            .finish()
    }
}

impl CronSchedule {
    /// Parses `expr` (5 fields or a macro, optionally after `CRON_TZ=Zone `).
    ///
    /// `timezone` is the YAML `timezone:` key (None = UTC unless a CRON_TZ= prefix gives one).
    pub fn parse(expr: &str, timezone: Option<&str>) -> Result<Self, CronError> {
        let (prefix_zone, body) = split_cron_tz(expr.trim());
        if body
            .get(..3)
            .is_some_and(|head| head.eq_ignore_ascii_case("TZ="))
        {
            let zone = body[3..].split_whitespace().next().unwrap_or_default();
            return Err(CronError::TzPrefix {
                zone: zone.to_string(),
            });
        }
        let fields = split_fields(body)?;
        for (index, text) in fields.iter().enumerate() {
            check_field_characters(index, text)?;
        }
        // Vixie's DOM_STAR / DOW_STAR: a day field beginning with `*` makes the two an AND.
        let day_star = [&fields[2], &fields[4]]
            .iter()
            .any(|f| f.starts_with(['*', '?']));
        let cron = cron_parser(day_star)
            .parse(&fields.join(" "))
            .map_err(|e| locate_syntax_error(&fields, &e))?;
        let tz = resolve_zone(prefix_zone, timezone)?;
        let matcher = Matcher::new(cron);
        if matcher.never_fires() {
            return Err(CronError::NeverFires);
        }
        Ok(CronSchedule {
            expr: body.to_string(),
            tz,
            fixed_time: !fields[0].starts_with('*') && !fields[1].starts_with('*'),
            matcher,
        })
    }

    /// The zone the expression is evaluated in.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The expression as written (trimmed), without the `CRON_TZ=` prefix.
    pub fn expression(&self) -> &str {
        &self.expr
    }

    /// Whether the minute and hour fields both do not begin with `*` (after macro expansion), which
    /// decides the DST behaviour described in the module documentation.
    pub fn is_fixed_time(&self) -> bool {
        self.fixed_time
    }

    /// The first slot strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<Slot> {
        self.slots_after(after).next()
    }

    /// Slots strictly after `after`, in order (bounded by the caller with take()).
    pub fn slots_after(&self, after: DateTime<Utc>) -> impl Iterator<Item = Slot> + '_ {
        Slots {
            schedule: self,
            after,
            cursor: self.start_cursor(after),
            pending: VecDeque::new(),
        }
    }

    /// The wall-clock time from which to look for candidates after `after`: its own local time,
    /// or, on the first pass of a repeated range, the start of that range, whose second pass is
    /// still ahead.
    fn start_cursor(&self, after: DateTime<Utc>) -> Option<NaiveDateTime> {
        let local = after.with_timezone(&self.tz).naive_local();
        match self.tz.from_local_datetime(&local) {
            LocalResult::Ambiguous(first, second) => {
                local.checked_sub_signed(second.signed_duration_since(first))
            }
            _ => Some(local),
        }
    }

    fn slot(nominal: NaiveDateTime, at: DateTime<Tz>) -> Slot {
        Slot {
            at: at.with_timezone(&Utc),
            nominal,
        }
    }
}

/// Iterator behind [`CronSchedule::slots_after`]: walks wall-clock candidates in order and maps
/// each to its instants. Only the candidates of a repeated range are buffered (the second pass of
/// an elapsed schedule fires after the first pass of every later time in the range).
struct Slots<'a> {
    schedule: &'a CronSchedule,
    after: DateTime<Utc>,
    /// The next wall-clock time to consider (inclusive); None once exhausted.
    cursor: Option<NaiveDateTime>,
    pending: VecDeque<Slot>,
}

impl Slots<'_> {
    fn next_candidate(&mut self) -> Option<NaiveDateTime> {
        let nominal = self
            .cursor
            .and_then(|start| self.schedule.matcher.first_at_or_after(start));
        self.cursor = nominal.and_then(|n| n.checked_add_signed(Duration::minutes(1)));
        nominal
    }

    /// Collects the slots of every candidate in the repeated range that `nominal` opens, sorted.
    fn fill_repeated_range(
        &mut self,
        nominal: NaiveDateTime,
        first: DateTime<Tz>,
        second: DateTime<Tz>,
    ) {
        let schedule = self.schedule;
        let mut batch = Vec::new();
        let mut push = |nominal, first, second| {
            batch.push(CronSchedule::slot(nominal, first));
            if !schedule.fixed_time {
                batch.push(CronSchedule::slot(nominal, second));
            }
        };
        push(nominal, first, second);
        while let Some(next) = self
            .cursor
            .and_then(|start| schedule.matcher.first_at_or_after(start))
        {
            let LocalResult::Ambiguous(first, second) = schedule.tz.from_local_datetime(&next)
            else {
                break;
            };
            push(next, first, second);
            self.cursor = next.checked_add_signed(Duration::minutes(1));
        }
        batch.sort_unstable();
        let after = self.after;
        self.pending
            .extend(batch.into_iter().filter(|slot| slot.at > after));
    }
}

impl Iterator for Slots<'_> {
    type Item = Slot;

    fn next(&mut self) -> Option<Slot> {
        loop {
            if let Some(slot) = self.pending.pop_front() {
                return Some(slot);
            }
            let nominal = self.next_candidate()?;
            let slot = match self.schedule.tz.from_local_datetime(&nominal) {
                LocalResult::Single(at) => Some(CronSchedule::slot(nominal, at)),
                LocalResult::Ambiguous(first, second) => {
                    self.fill_repeated_range(nominal, first, second);
                    None
                }
                LocalResult::None if self.schedule.fixed_time => {
                    gap_end(self.schedule.tz, nominal).map(|at| Slot { at, nominal })
                }
                LocalResult::None => None,
            };
            if let Some(slot) = slot.filter(|slot| slot.at > self.after) {
                return Some(slot);
            }
        }
    }
}

/// The first instant after the spring-forward gap that contains the wall-clock time `nominal`:
/// the transition instant, whose local time is the end of the gap.
fn gap_end(tz: Tz, nominal: NaiveDateTime) -> Option<DateTime<Utc>> {
    let gap = chrono_tz::GapInfo::new(&nominal, &tz)?;
    if let Some((begin, offset_before)) = gap.begin {
        let offset = i64::from(offset_before.fix().local_minus_utc());
        return begin
            .checked_sub_signed(Duration::seconds(offset))
            .map(|utc| utc.and_utc());
    }
    gap.end.map(|end| end.with_timezone(&Utc))
}

/// Years after which a date pattern that matches at all has surely matched: the Gregorian calendar,
/// weekdays included, repeats every 400 years.
const CYCLE_YEARS: i32 = 400;

/// Wall-clock matching: minute and hour sets as bit masks, days through croner's matcher.
#[derive(Clone, PartialEq, Eq)]
struct Matcher {
    cron: Cron,
    minutes: u64,
    hours: u32,
}

impl Matcher {
    fn new(cron: Cron) -> Self {
        let minutes = cron
            .pattern
            .minutes
            .values()
            .iter()
            .fold(0u64, |mask, &m| mask | 1 << m);
        let hours = cron
            .pattern
            .hours
            .values()
            .iter()
            .fold(0u32, |mask, &h| mask | 1 << h);
        Matcher {
            cron,
            minutes,
            hours,
        }
    }

    /// No date in a whole 400-year cycle matches, so none ever will.
    fn never_fires(&self) -> bool {
        let start = NaiveDate::from_ymd_opt(2000, 1, 1).expect("a valid date");
        let end = NaiveDate::from_ymd_opt(2000 + CYCLE_YEARS, 1, 1).expect("a valid date");
        self.minutes == 0 || self.hours == 0 || self.next_day(start, end).is_none()
    }

    fn month_matches(&self, date: NaiveDate) -> bool {
        self.cron.pattern.month_match(date.month()).unwrap_or(false)
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        let weekday = croner::Weekday::from_days_from_sunday(date.weekday().num_days_from_sunday());
        self.cron
            .pattern
            .day_match(date.year(), date.month(), date.day(), weekday)
            .unwrap_or(false)
    }

    /// The first matching date in `[from, until)`, skipping whole months that do not match.
    fn next_day(&self, from: NaiveDate, until: NaiveDate) -> Option<NaiveDate> {
        let mut date = from;
        while date < until {
            if !self.month_matches(date) {
                date = first_of_next_month(date)?;
            } else if self.day_matches(date) {
                return Some(date);
            } else {
                date = date.succ_opt()?;
            }
        }
        None
    }

    /// The first matching wall-clock time at or after `start` (rounded up to a whole minute).
    fn first_at_or_after(&self, start: NaiveDateTime) -> Option<NaiveDateTime> {
        let start = ceil_to_minute(start)?;
        let date = start.date();
        if self.month_matches(date)
            && self.day_matches(date)
            && let Some((hour, minute)) = self.time_at_or_after(start.hour(), start.minute())
        {
            return date.and_hms_opt(hour, minute, 0);
        }
        let until = date
            .year()
            .checked_add(CYCLE_YEARS + 1)
            .and_then(|year| NaiveDate::from_ymd_opt(year, 1, 1))
            .unwrap_or(NaiveDate::MAX);
        let day = self.next_day(date.succ_opt()?, until)?;
        day.and_hms_opt(
            self.hours.trailing_zeros(),
            self.minutes.trailing_zeros(),
            0,
        )
    }

    /// The first matching (hour, minute) at or after `hour:minute` on the same day.
    fn time_at_or_after(&self, hour: u32, minute: u32) -> Option<(u32, u32)> {
        if self.hours & (1 << hour) != 0
            && let Some(minute) = next_bit(self.minutes, minute)
        {
            return Some((hour, minute));
        }
        let hour = next_bit(u64::from(self.hours), hour + 1)?;
        Some((hour, self.minutes.trailing_zeros()))
    }
}

/// The lowest set bit of `mask` at position `from` or above.
fn next_bit(mask: u64, from: u32) -> Option<u32> {
    let rest = mask.checked_shr(from)?;
    (rest != 0).then(|| from + rest.trailing_zeros())
}

fn ceil_to_minute(t: NaiveDateTime) -> Option<NaiveDateTime> {
    let floor = t.with_second(0)?.with_nanosecond(0)?;
    if floor == t {
        Some(t)
    } else {
        floor.checked_add_signed(Duration::minutes(1))
    }
}

fn first_of_next_month(date: NaiveDate) -> Option<NaiveDate> {
    if date.month() == 12 {
        NaiveDate::from_ymd_opt(date.year().checked_add(1)?, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(date.year(), date.month() + 1, 1)
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// `dom_and_dow`: whether both day fields must match (else either, when both are restricted).
fn cron_parser(dom_and_dow: bool) -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .dom_and_dow(dom_and_dow)
        .alternative_weekdays(false)
        .build()
}

/// Splits an optional `CRON_TZ=Zone` prefix from the rest.
fn split_cron_tz(expr: &str) -> (Option<&str>, &str) {
    const PREFIX: &str = "CRON_TZ=";
    match expr.get(..PREFIX.len()) {
        Some(head) if head.eq_ignore_ascii_case(PREFIX) => {
            let rest = &expr[PREFIX.len()..];
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            (Some(&rest[..end]), rest[end..].trim_start())
        }
        _ => (None, expr),
    }
}

/// The five fields of `body`, with macros expanded.
fn split_fields(body: &str) -> Result<Vec<&str>, CronError> {
    let mut body = body;
    if body.starts_with('@') {
        let mut words = body.split_whitespace();
        let name = words.next().unwrap_or_default();
        if words.next().is_some() {
            return Err(CronError::Syntax {
                message: format!(
                    "`{name}` is a macro and stands alone; write either a macro or 5 fields"
                ),
            });
        }
        body = match name.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            "@reboot" => {
                return Err(CronError::Syntax {
                    message: "`@reboot` is not supported: schedules fire at times of day; start a run over the API or with `runner run` instead".into(),
                });
            }
            _ => {
                return Err(CronError::Syntax {
                    message: format!(
                        "unknown macro `{name}`; the macros are @hourly, @daily (@midnight), @weekly, @monthly and @yearly (@annually)"
                    ),
                });
            }
        };
    }
    let fields: Vec<&str> = body.split_whitespace().collect();
    match fields.len() {
        0 => Err(CronError::Empty),
        5 => Ok(fields),
        6 | 7 => Err(CronError::SecondsField {
            expr: body.to_string(),
            fields: fields.len(),
        }),
        n => Err(CronError::FieldCount {
            expr: body.to_string(),
            fields: n,
        }),
    }
}

const FIELD_NAMES: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
const FIELD_VALUES: [&str; 5] = [
    "0-59",
    "0-23",
    "1-31 (also `L`, `LW`, `15W`)",
    "1-12 or JAN-DEC",
    "0-7 (0 and 7 are Sunday) or SUN-SAT (also `5L`, `1#2`)",
];
const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn field_error(index: usize, text: &str, problem: &str) -> CronError {
    let name = FIELD_NAMES[index];
    CronError::Syntax {
        message: format!(
            "{name} field `{text}`: {problem}; {name} values are {}",
            FIELD_VALUES[index]
        ),
    }
}

/// Checks the characters and names of one field before croner sees it. croner replaces month and
/// weekday names anywhere in the expression, so `MON * * * *` would mean minute 1 and
/// `* * * * JAN` Monday; here names are only accepted in their own field.
fn check_field_characters(index: usize, text: &str) -> Result<(), CronError> {
    let punctuation: &[char] = match index {
        0 | 1 | 3 => &['*', ',', '-', '/'],
        2 => &['*', ',', '-', '/', '?'],
        _ => &['*', ',', '-', '/', '?', '#', '+'],
    };
    let upper = text.to_ascii_uppercase();
    let mut rest = upper.as_str();
    while let Some(c) = rest.chars().next() {
        if c.is_ascii_alphabetic() {
            let end = rest
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(rest.len());
            let word = &rest[..end];
            let allowed = match index {
                2 => matches!(word, "L" | "W" | "LW"),
                3 => MONTHS.contains(&word),
                4 => {
                    word == "L"
                        || WEEKDAYS.contains(&word)
                        || word
                            .strip_suffix('L')
                            .is_some_and(|day| WEEKDAYS.contains(&day))
                }
                _ => false,
            };
            if !allowed {
                let problem = match index {
                    0 | 1 => "names and letters are not allowed here".to_string(),
                    3 => format!("`{word}` is not a month name"),
                    4 => format!("`{word}` is not a day name"),
                    _ => format!("`{word}` is not allowed here"),
                };
                return Err(field_error(index, text, &problem));
            }
            rest = &rest[end..];
        } else {
            if !(c.is_ascii_digit() || punctuation.contains(&c)) {
                return Err(field_error(
                    index,
                    text,
                    &format!("`{c}` is not allowed here"),
                ));
            }
            rest = &rest[c.len_utf8()..];
        }
    }
    Ok(())
}

/// Turns croner's error into one that names the field at fault, found by parsing each field alone.
fn locate_syntax_error(fields: &[&str], error: &croner::errors::CronError) -> CronError {
    for (index, text) in fields.iter().enumerate() {
        let probe: Vec<&str> = (0..fields.len())
            .map(|i| if i == index { *text } else { "*" })
            .collect();
        if let Err(e) = cron_parser(true).parse(&probe.join(" ")) {
            return field_error(index, text, &readable(&e));
        }
    }
    CronError::Syntax {
        message: format!("`{}`: {}", fields.join(" "), readable(error)),
    }
}

/// croner's message without its prefix and final period, starting in lower case.
fn readable(error: &croner::errors::CronError) -> String {
    use croner::errors::CronError as E;
    let text = match error {
        E::InvalidPattern(m) | E::IllegalCharacters(m) | E::ComponentError(m) => m.clone(),
        other => other.to_string(),
    };
    let text = text.trim().trim_end_matches('.');
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "invalid".to_string(),
    }
}

fn resolve_zone(prefix: Option<&str>, field: Option<&str>) -> Result<Tz, CronError> {
    let from_prefix = prefix.map(parse_timezone).transpose()?;
    let from_field = field.map(parse_timezone).transpose()?;
    match (from_prefix, from_field, prefix, field) {
        (Some(a), Some(b), Some(prefix), Some(field)) if a != b => {
            Err(CronError::ConflictingTimezone {
                prefix: prefix.trim().to_string(),
                field: field.trim().to_string(),
            })
        }
        (a, b, _, _) => Ok(a.or(b).unwrap_or(Tz::UTC)),
    }
}

// ---------------------------------------------------------------------------------------------
// Zones

/// An IANA zone by its exact name (`Europe/Berlin`, `UTC`). An unknown name comes back with the
/// closest known one as a suggestion when there is a reasonably close one.
pub fn parse_timezone(name: &str) -> Result<Tz, CronError> {
    let name = name.trim();
    name.parse::<Tz>().map_err(|_| CronError::UnknownTimezone {
        name: name.to_string(),
        suggestion: suggest_timezone(name),
    })
}

/// The known zone a mistyped `name` most likely meant: the same name in other letter case, else the
/// closest by edit distance (case-insensitive) when within about a third of its length, else the
/// zone whose last part is `name` (`Berlin`, `new york`).
fn suggest_timezone(name: &str) -> Option<String> {
    let wanted = name.to_ascii_lowercase().replace(' ', "_");
    if wanted.is_empty() {
        return None;
    }
    let names = || chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
    if let Some(same) = names().find(|n| n.eq_ignore_ascii_case(&wanted)) {
        return Some(same.to_string());
    }
    let limit = (wanted.chars().count() / 3).clamp(1, 4);
    let closest = names()
        .map(|n| (edit_distance(&wanted, &n.to_ascii_lowercase()), n))
        .min_by_key(|&(distance, _)| distance)
        .filter(|&(distance, _)| distance <= limit)
        .map(|(_, n)| n);
    closest
        .or_else(|| {
            names().find(|n| {
                n.rsplit('/')
                    .next()
                    .is_some_and(|last| last.eq_ignore_ascii_case(&wanted))
            })
        })
        .map(str::to_string)
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
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
                let got: Vec<DateTime<Utc>> =
                    ours.slots_after(start).take(40).map(|s| s.at).collect();
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
}
