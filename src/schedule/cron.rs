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
#[path = "cron_tests.rs"]
mod tests;
