//! Schedule specs and their occurrence math: cron expressions, fixed intervals with an
//! offset, an IANA time zone, and start/end bounds.
//!
//! * **Cron**: five fields (`minute hour day-of-month month day-of-week`), or six with a
//!   leading seconds field. Each field takes `*`, `?` (day fields), values, ranges `a-b`,
//!   steps `*/n`, `a-b/n`, `a/n`, and comma lists; months and weekdays also take names
//!   (`JAN`, `MON`), and weekday `7` is Sunday. Macros: `@yearly` (`@annually`),
//!   `@monthly`, `@weekly`, `@daily` (`@midnight`), `@hourly`. When both day fields are
//!   restricted a day matches either (POSIX); when one is `*` or `?` only the other counts.
//! * **Intervals** (`every`, `offset`, ISO-8601 durations of weeks, days, hours, minutes
//!   and seconds) are elapsed time, counted from the Unix epoch plus `offset`: a time
//!   zone does not move them and DST does not stretch them.
//! * **Time zones and DST** (cron only; the local wall clock of `timezone`, UTC when
//!   absent), in the manner of Vixie cron:
//!   - a cron whose hour field is restricted (a daily `30 2 * * *`) fires **once** per
//!     matching wall-clock time: a time skipped by a spring-forward gap fires at the first
//!     instant after the gap (02:30 on a day that jumps 02:00 → 03:00 fires at 03:00), and
//!     a time repeated by a fall-back fold fires at its first (earlier) instant only;
//!   - a cron whose hour field is `*` (every hour) follows elapsed time: a minute that does
//!     not exist is not fired, and a repeated minute fires at both instants, so an hourly
//!     job keeps running every real hour through both transitions.
//! * **Bounds**: occurrences before `start_at` or after `end_at` (inclusive bounds, ISO-8601
//!   instants) are not part of the schedule.
//!
//! Everything here is pure: the same spec and instant always give the same answer.

use std::collections::BTreeMap;

use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::clock::Millis;

/// Longest shift of local time that a DST transition makes, with room to spare; civil
/// candidates within this distance of a transition are checked together.
const TRANSITION_WINDOW_MS: Millis = 4 * 3_600_000;
/// How many years ahead a cron is searched for its next match (Feb 29 on a Monday needs
/// up to 28 years; anything rarer is treated as never firing).
const SEARCH_YEARS: i16 = 30;

/// A schedule spec as stored and echoed back (the caller's strings, normalized).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecRecord {
    /// Cron expressions, as given.
    #[serde(default)]
    pub cron_expressions: Vec<String>,
    /// Fixed intervals.
    #[serde(default)]
    pub intervals: Vec<IntervalRecord>,
    /// IANA time zone name (canonical spelling); `None` is UTC.
    #[serde(default)]
    pub timezone: Option<String>,
    /// No occurrence before this instant.
    #[serde(default)]
    pub start_at_ms: Option<Millis>,
    /// No occurrence after this instant.
    #[serde(default)]
    pub end_at_ms: Option<Millis>,
}

/// One fixed interval, as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalRecord {
    /// ISO-8601 duration, e.g. `PT30M`.
    pub every: String,
    /// ISO-8601 duration, e.g. `PT5M`; `None` is zero.
    #[serde(default)]
    pub offset: Option<String>,
}

/// A validated, compiled spec.
#[derive(Debug, Clone)]
pub struct Spec {
    crons: Vec<Cron>,
    intervals: Vec<Interval>,
    tz: TimeZone,
    start_at_ms: Option<Millis>,
    end_at_ms: Option<Millis>,
}

/// Field errors, keyed like `spec.cron_expressions.0`.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// Which part of a spec produced an occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The cron expression at this index.
    Cron(usize),
    /// The interval at this index.
    Interval(usize),
}

impl Spec {
    /// Compiles `record`, collecting every problem as a field error.
    pub fn compile(record: &SpecRecord) -> Result<Spec, FieldErrors> {
        let mut errors = FieldErrors::new();
        let mut err = |field: String, message: String| {
            errors.entry(field).or_default().push(message);
        };
        let mut crons = Vec::new();
        for (i, text) in record.cron_expressions.iter().enumerate() {
            match Cron::parse(text) {
                Ok(c) => crons.push(c),
                Err(m) => err(format!("spec.cron_expressions.{i}"), m),
            }
        }
        let mut intervals = Vec::new();
        for (i, iv) in record.intervals.iter().enumerate() {
            let every = match parse_duration_ms(&iv.every) {
                Ok(ms) if ms >= 1000 => Some(ms),
                Ok(_) => {
                    err(
                        format!("spec.intervals.{i}.every"),
                        "The interval must be at least one second.".into(),
                    );
                    None
                }
                Err(m) => {
                    err(format!("spec.intervals.{i}.every"), m);
                    None
                }
            };
            let offset = match iv.offset.as_deref().map(parse_duration_ms) {
                None => Some(0),
                Some(Ok(ms)) => Some(ms),
                Some(Err(m)) => {
                    err(format!("spec.intervals.{i}.offset"), m);
                    None
                }
            };
            if let (Some(every), Some(offset)) = (every, offset) {
                if offset >= every {
                    err(
                        format!("spec.intervals.{i}.offset"),
                        "The offset must be shorter than the interval.".into(),
                    );
                } else {
                    intervals.push(Interval {
                        every_ms: every,
                        offset_ms: offset,
                    });
                }
            }
        }
        if record.cron_expressions.is_empty() && record.intervals.is_empty() {
            err(
                "spec".into(),
                "The spec must contain at least one cron expression or interval.".into(),
            );
        }
        let tz = match record.timezone.as_deref() {
            None => TimeZone::UTC,
            Some(name) => match timezone(name) {
                Some(tz) => tz,
                None => {
                    err(
                        "spec.timezone".into(),
                        format!("'{name}' is not a known IANA time zone."),
                    );
                    TimeZone::UTC
                }
            },
        };
        if let (Some(a), Some(b)) = (record.start_at_ms, record.end_at_ms) {
            if b < a {
                err(
                    "spec.end_at".into(),
                    "The end must not be before the start.".into(),
                );
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Spec {
            crons,
            intervals,
            tz,
            start_at_ms: record.start_at_ms,
            end_at_ms: record.end_at_ms,
        })
    }

    /// The first occurrence strictly after `t`, and which part of the spec produced it.
    pub fn next_after(&self, t: Millis) -> Option<(Millis, Source)> {
        // Occurrences before the start bound do not exist: search from just before it.
        let from = match self.start_at_ms {
            Some(start) => t.max(start - 1),
            None => t,
        };
        let mut best: Option<(Millis, Source)> = None;
        let mut offer = |at: Millis, source: Source| {
            if best.is_none_or(|(b, _)| at < b) {
                best = Some((at, source));
            }
        };
        for (i, iv) in self.intervals.iter().enumerate() {
            if let Some(at) = iv.next_after(from) {
                offer(at, Source::Interval(i));
            }
        }
        for (i, cron) in self.crons.iter().enumerate() {
            if let Some(at) = cron.next_after(&self.tz, from) {
                offer(at, Source::Cron(i));
            }
        }
        best.filter(|(at, _)| self.end_at_ms.is_none_or(|end| *at <= end))
    }

    /// Occurrences in `(after, until]`: how many (counting stops at `cap`), the first and
    /// the last seen.
    pub fn occurrences_between(&self, after: Millis, until: Millis, cap: usize) -> Occurrences {
        let mut out = Occurrences::default();
        let mut t = after;
        while out.count < cap {
            match self.next_after(t) {
                Some((at, source)) if at <= until => {
                    out.count += 1;
                    out.first.get_or_insert(at);
                    out.last = Some((at, source));
                    t = at;
                }
                _ => return out,
            }
        }
        out.truncated = self.next_after(t).is_some_and(|(at, _)| at <= until);
        out
    }

    /// The time zone's name (`UTC` when none was given).
    pub fn timezone_name(&self) -> String {
        self.tz.iana_name().unwrap_or("UTC").to_string()
    }
}

/// What [`Spec::occurrences_between`] found.
#[derive(Debug, Clone, Copy, Default)]
pub struct Occurrences {
    /// How many (at most the cap).
    pub count: usize,
    /// The earliest.
    pub first: Option<Millis>,
    /// The latest one counted, with its source.
    pub last: Option<(Millis, Source)>,
    /// Whether more occurrences followed the cap.
    pub truncated: bool,
}

/// Looks up an IANA zone (case-insensitively, as the database does).
pub fn timezone(name: &str) -> Option<TimeZone> {
    if name.is_empty() || name.len() > 64 {
        return None;
    }
    TimeZone::get(name).ok()
}

/// The canonical spelling of an IANA zone name (`america/new_york` → `America/New_York`).
pub fn canonical_timezone(name: &str) -> Option<String> {
    timezone(name).map(|tz| tz.iana_name().unwrap_or(name).to_string())
}

#[derive(Debug, Clone, Copy)]
struct Interval {
    every_ms: Millis,
    offset_ms: Millis,
}

impl Interval {
    fn next_after(&self, t: Millis) -> Option<Millis> {
        let k = (t - self.offset_ms).div_euclid(self.every_ms) + 1;
        k.checked_mul(self.every_ms)?.checked_add(self.offset_ms)
    }
}

/// Parses an ISO-8601 duration of fixed length (`P1W`, `P1DT2H`, `PT30M`, `PT1.5S`) into
/// milliseconds. Years and months are refused: their length varies. A bare number is
/// taken as seconds.
pub fn parse_duration_ms(text: &str) -> Result<Millis, String> {
    let bad = || {
        format!(
            "'{text}' is not an ISO-8601 duration of weeks, days, hours, minutes and seconds (e.g. PT30M)."
        )
    };
    let s = text.trim();
    if let Ok(seconds) = s.parse::<u32>() {
        return Ok(seconds as Millis * 1000);
    }
    let upper = s.to_ascii_uppercase();
    let rest = upper.strip_prefix('P').ok_or_else(bad)?;
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    let mut in_time = false;
    let mut number = String::new();
    let mut seen_unit = false;
    for c in rest.chars() {
        match c {
            '0'..='9' | '.' | ',' => number.push(if c == ',' { '.' } else { c }),
            'T' if !in_time && number.is_empty() => in_time = true,
            unit => {
                let n: f64 = number.parse().map_err(|_| bad())?;
                number.clear();
                let ms = match (in_time, unit) {
                    (false, 'W') => 7.0 * 86_400_000.0,
                    (false, 'D') => 86_400_000.0,
                    (true, 'H') => 3_600_000.0,
                    (true, 'M') => 60_000.0,
                    (true, 'S') => 1_000.0,
                    (false, 'Y' | 'M') => {
                        return Err(format!(
                            "'{text}' uses years or months, whose length varies; use weeks, days, hours, minutes or seconds."
                        ))
                    }
                    _ => return Err(bad()),
                };
                total += n * ms;
                seen_unit = true;
            }
        }
    }
    if !number.is_empty() || !seen_unit || !total.is_finite() || total > 3.2e12 {
        return Err(bad());
    }
    Ok(total.round() as Millis)
}

/// A compiled cron expression.
#[derive(Debug, Clone)]
struct Cron {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Whether day-of-month / day-of-week were `*` or `?`.
    days_star: bool,
    weekdays_star: bool,
}

const MONTH_NAMES: &[&str] = &[
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAY_NAMES: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl Cron {
    fn parse(text: &str) -> Result<Cron, String> {
        let trimmed = text.trim();
        let expanded = match trimmed.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(format!(
                    "'{trimmed}' is not a known cron macro (@yearly, @monthly, @weekly, @daily, @hourly)."
                ))
            }
            _ => trimmed,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (sec, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(format!(
                    "A cron expression has 5 fields (minute hour day-of-month month day-of-week), or 6 with a leading seconds field; '{trimmed}' has {n}."
                ))
            }
        };
        let field = |name: &str, text: &str, min: u32, max: u32, names: &[&str], q: bool| {
            parse_field(text, min, max, names, q).map_err(|m| format!("{name} field '{text}': {m}"))
        };
        let seconds = field("seconds", sec, 0, 59, &[], false)?;
        let minutes = field("minute", rest[0], 0, 59, &[], false)?;
        let hours = field("hour", rest[1], 0, 23, &[], false)?;
        let days = field("day-of-month", rest[2], 1, 31, &[], true)?;
        let months = field("month", rest[3], 1, 12, MONTH_NAMES, false)?;
        let mut weekdays = field("day-of-week", rest[4], 0, 7, WEEKDAY_NAMES, true)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        let star = |t: &str| t == "*" || t == "?";
        Ok(Cron {
            seconds,
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_star: star(rest[2]),
            weekdays_star: star(rest[4]),
        })
    }

    /// Whether every hour of the day matches: such a cron follows elapsed time through DST
    /// transitions (see the module docs).
    fn every_hour(&self) -> bool {
        self.hours == (1 << 24) - 1
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        match (self.days_star, self.weekdays_star) {
            (false, false) => dom || dow,
            (true, false) => dow,
            (false, true) => dom,
            (true, true) => true,
        }
    }

    /// The first civil time at or after `from` that matches, searching `SEARCH_YEARS`.
    fn next_civil(&self, from: DateTime) -> Option<DateTime> {
        let limit = from.year().saturating_add(SEARCH_YEARS);
        let (mut y, mut mo, mut d) = (from.year(), from.month() as u32, from.day() as u32);
        let (mut h, mut mi, mut s) = (
            from.hour() as u32,
            from.minute() as u32,
            from.second() as u32,
        );
        loop {
            if y > limit {
                return None;
            }
            // Month.
            match next_bit(self.months, mo, 12) {
                Some(m) if m == mo => {}
                Some(m) => {
                    (mo, d, h, mi, s) = (m, 1, 0, 0, 0);
                }
                None => {
                    (y, mo, d, h, mi, s) = (y + 1, 1, 1, 0, 0, 0);
                    continue;
                }
            }
            // Day.
            let first = Date::new(y, mo as i8, 1).ok()?;
            let days_in_month = first.days_in_month() as u32;
            let mut found_day = None;
            let mut day = d;
            while day <= days_in_month {
                let date = Date::new(y, mo as i8, day as i8).ok()?;
                if self.day_matches(date) {
                    found_day = Some(day);
                    break;
                }
                day += 1;
            }
            let Some(day) = found_day else {
                (d, h, mi, s) = (1, 0, 0, 0);
                if mo == 12 {
                    (y, mo) = (y + 1, 1);
                } else {
                    mo += 1;
                }
                continue;
            };
            if day != d {
                (d, h, mi, s) = (day, 0, 0, 0);
            }
            // Hour, minute, second: on overflow move to the next day.
            let Some(hour) = next_bit(self.hours, h, 23) else {
                (h, mi, s) = (0, 0, 0);
                advance_day(&mut y, &mut mo, &mut d, days_in_month);
                continue;
            };
            if hour != h {
                (h, mi, s) = (hour, 0, 0);
            }
            let Some(minute) = next_bit(self.minutes, mi, 59) else {
                (mi, s) = (0, 0);
                if h == 23 {
                    h = 0;
                    advance_day(&mut y, &mut mo, &mut d, days_in_month);
                } else {
                    h += 1;
                }
                continue;
            };
            if minute != mi {
                (mi, s) = (minute, 0);
            }
            let Some(second) = next_bit(self.seconds, s, 59) else {
                s = 0;
                if mi == 59 {
                    mi = 0;
                    if h == 23 {
                        h = 0;
                        advance_day(&mut y, &mut mo, &mut d, days_in_month);
                    } else {
                        h += 1;
                    }
                } else {
                    mi += 1;
                }
                continue;
            };
            return DateTime::new(y, mo as i8, d as i8, h as i8, mi as i8, second as i8, 0).ok();
        }
    }

    /// The instants a matching civil time stands for in `tz` (see the module docs on DST).
    fn instants(&self, tz: &TimeZone, civil: DateTime) -> Vec<Timestamp> {
        match tz.to_ambiguous_timestamp(civil).offset() {
            AmbiguousOffset::Unambiguous { offset } => {
                offset.to_timestamp(civil).ok().into_iter().collect()
            }
            AmbiguousOffset::Gap { after, .. } => {
                if self.every_hour() {
                    // Elapsed-time semantics: this wall-clock minute never happened.
                    return Vec::new();
                }
                // Fires once, at the first instant after the gap (the transition itself).
                let inside = after.to_timestamp(civil).ok();
                inside
                    .and_then(|t| tz.following(t).next())
                    .map(|tr| tr.timestamp())
                    .into_iter()
                    .collect()
            }
            AmbiguousOffset::Fold { before, after } => {
                let first = before.to_timestamp(civil).ok();
                let second = after.to_timestamp(civil).ok();
                if self.every_hour() {
                    first.into_iter().chain(second).collect()
                } else {
                    first.into_iter().collect()
                }
            }
        }
    }

    /// The first instant strictly after `t` (milliseconds) at which this cron fires in `tz`.
    fn next_after(&self, tz: &TimeZone, t: Millis) -> Option<Millis> {
        let after = Timestamp::from_millisecond(t).ok()?;
        let near_transition = |at: Millis| {
            let a = Timestamp::from_millisecond(at - TRANSITION_WINDOW_MS).ok();
            let b = Timestamp::from_millisecond(at + TRANSITION_WINDOW_MS).ok();
            match (a, b) {
                (Some(a), Some(b)) => tz.following(a).next().is_some_and(|tr| tr.timestamp() <= b),
                _ => true,
            }
        };
        // After a fall-back, a civil time earlier than `t`'s can stand for an instant later
        // than `t`: near a transition the search starts one window earlier.
        let local = tz.to_datetime(after);
        let lookback = if near_transition(t) {
            jiff::SignedDuration::from_millis(TRANSITION_WINDOW_MS)
        } else {
            jiff::SignedDuration::ZERO
        };
        let mut civil = local
            .checked_sub(lookback)
            .ok()?
            .with()
            .subsec_nanosecond(0)
            .build()
            .ok()?;
        let mut best: Option<Timestamp> = None;
        let mut best_civil: Option<DateTime> = None;
        loop {
            let candidate = self.next_civil(civil)?;
            if let Some(bc) = best_civil {
                // No candidate this far past the best one can map to an earlier instant.
                let horizon = bc
                    .checked_add(jiff::SignedDuration::from_millis(TRANSITION_WINDOW_MS))
                    .ok()?;
                if candidate > horizon {
                    break;
                }
            }
            for instant in self.instants(tz, candidate) {
                if instant > after && best.is_none_or(|b| instant < b) {
                    best = Some(instant);
                    best_civil = Some(candidate);
                }
            }
            if let Some(b) = best {
                // Away from transitions the civil→instant map is monotonic: the first hit
                // is the answer.
                if !near_transition(b.as_millisecond()) {
                    break;
                }
            }
            civil = candidate
                .checked_add(jiff::SignedDuration::from_secs(1))
                .ok()?;
        }
        best.map(|b| b.as_millisecond())
    }
}

fn advance_day(y: &mut i16, mo: &mut u32, d: &mut u32, days_in_month: u32) {
    if *d < days_in_month {
        *d += 1;
    } else {
        *d = 1;
        if *mo == 12 {
            *mo = 1;
            *y += 1;
        } else {
            *mo += 1;
        }
    }
}

/// The lowest set bit at or after `from`, up to `max`.
fn next_bit(mask: u64, from: u32, max: u32) -> Option<u32> {
    (from..=max).find(|b| mask & (1 << b) != 0)
}

fn parse_value(text: &str, names: &[&str], min: u32) -> Result<u32, String> {
    if let Ok(n) = text.parse::<u32>() {
        return Ok(n);
    }
    let upper = text.to_ascii_uppercase();
    names
        .iter()
        .position(|n| *n == upper)
        .map(|i| i as u32 + min)
        .ok_or_else(|| format!("'{text}' is not a number or a known name"))
}

fn parse_field(
    text: &str,
    min: u32,
    max: u32,
    names: &[&str],
    question: bool,
) -> Result<u64, String> {
    let mut mask = 0u64;
    for part in text.split(',') {
        if part.is_empty() {
            return Err("empty list item".into());
        }
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| format!("step '{s}' is not a number"))?;
                if step == 0 {
                    return Err("a step must be at least 1".into());
                }
                (r, Some(step))
            }
            None => (part, None),
        };
        let (lo, hi) = if range == "*" || (question && range == "?") {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (parse_value(a, names, min)?, parse_value(b, names, min)?);
            if a > b {
                return Err(format!("range {a}-{b} runs backwards"));
            }
            (a, b)
        } else {
            let a = parse_value(range, names, min)?;
            (a, if step.is_some() { max } else { a })
        };
        if lo < min || hi > max {
            return Err(format!("values must be between {min} and {max}"));
        }
        let mut v = lo;
        while v <= hi {
            mask |= 1 << v;
            // A step past the field's range (`1/4294967295`) ends the list, never wraps.
            match v.checked_add(step.unwrap_or(1)) {
                Some(next) => v = next,
                None => break,
            }
        }
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::{parse_duration_ms, IntervalRecord, Millis, Spec, SpecRecord, Timestamp};

    fn ms(s: &str) -> Millis {
        s.parse::<Timestamp>()
            .expect("valid timestamp")
            .as_millisecond()
    }

    fn iso(t: Millis) -> String {
        Timestamp::from_millisecond(t)
            .expect("in range")
            .to_string()
    }

    fn spec(crons: &[&str], tz: Option<&str>) -> Spec {
        Spec::compile(&SpecRecord {
            cron_expressions: crons.iter().map(|s| s.to_string()).collect(),
            timezone: tz.map(str::to_string),
            ..SpecRecord::default()
        })
        .expect("spec compiles")
    }

    fn fires(spec: &Spec, from: &str, n: usize) -> Vec<String> {
        let mut t = ms(from);
        let mut out = Vec::new();
        for _ in 0..n {
            let (at, _) = spec.next_after(t).expect("fires");
            out.push(iso(at));
            t = at;
        }
        out
    }

    #[test]
    fn five_field_cron_fires_on_the_minute_and_six_fields_take_seconds() {
        let s = spec(&["*/15 * * * *"], None);
        assert_eq!(
            fires(&s, "2026-01-01T00:07:00Z", 3),
            [
                "2026-01-01T00:15:00Z",
                "2026-01-01T00:30:00Z",
                "2026-01-01T00:45:00Z"
            ]
        );
        let s = spec(&["30 */2 * * * *"], None);
        assert_eq!(
            fires(&s, "2026-01-01T00:00:30Z", 2),
            ["2026-01-01T00:02:30Z", "2026-01-01T00:04:30Z"]
        );
    }

    #[test]
    fn names_macros_and_day_fields_follow_posix() {
        // 2026-01-05 is a Monday.
        let s = spec(&["0 9 * JAN-MAR mon-fri"], None);
        assert_eq!(
            fires(&s, "2026-01-02T10:00:00Z", 2),
            ["2026-01-05T09:00:00Z", "2026-01-06T09:00:00Z"]
        );
        // Both day fields restricted: either matches (the 1st, or any Sunday).
        let s = spec(&["0 0 1 * 7"], None);
        assert_eq!(
            fires(&s, "2026-01-01T00:00:00Z", 3),
            [
                "2026-01-04T00:00:00Z",
                "2026-01-11T00:00:00Z",
                "2026-01-18T00:00:00Z"
            ]
        );
        let s = spec(&["@monthly"], None);
        assert_eq!(
            fires(&s, "2026-01-15T00:00:00Z", 1),
            ["2026-02-01T00:00:00Z"]
        );
        let s = spec(&["0 0 29 2 *"], None);
        assert_eq!(
            fires(&s, "2026-01-01T00:00:00Z", 1),
            ["2028-02-29T00:00:00Z"]
        );
    }

    #[test]
    fn bad_cron_expressions_are_field_errors() {
        for bad in [
            "",
            "* * * *",
            "61 * * * *",
            "* * * * * * *",
            "5-1 * * * *",
            "*/0 * * * *",
            "@fortnightly",
            "* * L * *",
            "a b c d e",
        ] {
            let err = Spec::compile(&SpecRecord {
                cron_expressions: vec![bad.to_string()],
                ..SpecRecord::default()
            })
            .expect_err(bad);
            assert!(
                err.contains_key("spec.cron_expressions.0"),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn a_step_larger_than_any_value_keeps_only_the_start() {
        // Found by the schedule_spec fuzz target: the step overflowed `u32` (a panic in
        // debug builds; in release the value wrapped to 0 and minute 0 fired too).
        let s = spec(&["1/4294967295 * * * *"], None);
        assert_eq!(
            fires(&s, "2026-01-01T00:00:00Z", 2),
            ["2026-01-01T00:01:00Z", "2026-01-01T01:01:00Z"]
        );
    }

    #[test]
    fn intervals_are_elapsed_time_from_the_epoch_plus_offset() {
        let s = Spec::compile(&SpecRecord {
            intervals: vec![IntervalRecord {
                every: "PT30M".into(),
                offset: Some("PT5M".into()),
            }],
            timezone: Some("America/New_York".into()),
            ..SpecRecord::default()
        })
        .expect("compiles");
        assert_eq!(
            fires(&s, "2026-03-08T06:00:00Z", 3),
            [
                "2026-03-08T06:05:00Z",
                "2026-03-08T06:35:00Z",
                "2026-03-08T07:05:00Z"
            ]
        );
        assert_eq!(parse_duration_ms("P1DT1H").expect("ok"), 90_000_000);
        assert_eq!(parse_duration_ms("PT1.5S").expect("ok"), 1_500);
        assert!(parse_duration_ms("P1M").is_err());
        assert!(parse_duration_ms("PT").is_err());
        assert!(parse_duration_ms("30 minutes").is_err());
    }

    #[test]
    fn bad_intervals_and_zones_are_field_errors() {
        let err = Spec::compile(&SpecRecord {
            intervals: vec![
                IntervalRecord {
                    every: "P1Y".into(),
                    offset: None,
                },
                IntervalRecord {
                    every: "PT5M".into(),
                    offset: Some("PT5M".into()),
                },
            ],
            timezone: Some("Mars/Olympus".into()),
            ..SpecRecord::default()
        })
        .expect_err("invalid");
        assert!(err.contains_key("spec.intervals.0.every"));
        assert!(err.contains_key("spec.intervals.1.offset"));
        assert!(err.contains_key("spec.timezone"));
        let err = Spec::compile(&SpecRecord::default()).expect_err("empty");
        assert!(err.contains_key("spec"));
    }

    #[test]
    fn spring_forward_gap_fires_a_daily_time_once_at_the_end_of_the_gap() {
        // 2026-03-08: New York jumps from 02:00 EST to 03:00 EDT.
        let s = spec(&["30 2 * * *"], Some("America/New_York"));
        assert_eq!(
            fires(&s, "2026-03-06T12:00:00Z", 3),
            [
                "2026-03-07T07:30:00Z", // 02:30 EST
                "2026-03-08T07:00:00Z", // 02:30 does not exist: 03:00 EDT, the gap's end
                "2026-03-09T06:30:00Z", // 02:30 EDT
            ]
        );
    }

    #[test]
    fn fall_back_fold_fires_a_daily_time_once_at_its_first_instant() {
        // 2026-11-01: New York falls back from 02:00 EDT to 01:00 EST; 01:30 happens twice.
        let s = spec(&["30 1 * * *"], Some("America/New_York"));
        assert_eq!(
            fires(&s, "2026-10-31T12:00:00Z", 3),
            [
                "2026-11-01T05:30:00Z", // 01:30 EDT (the first of the two)
                "2026-11-02T06:30:00Z", // 01:30 EST, next day
                "2026-11-03T06:30:00Z",
            ]
        );
    }

    #[test]
    fn hourly_cron_follows_elapsed_time_through_both_transitions() {
        let s = spec(&["30 * * * *"], Some("America/New_York"));
        // Spring forward: 01:30 EST, then 03:30 EDT, one real hour apart (02:30 never was).
        assert_eq!(
            fires(&s, "2026-03-08T06:00:00Z", 2),
            ["2026-03-08T06:30:00Z", "2026-03-08T07:30:00Z"]
        );
        // Fall back: 00:30 EDT, 01:30 EDT, 01:30 EST, 02:30 EST — every real hour.
        assert_eq!(
            fires(&s, "2026-11-01T04:00:00Z", 4),
            [
                "2026-11-01T04:30:00Z",
                "2026-11-01T05:30:00Z",
                "2026-11-01T06:30:00Z",
                "2026-11-01T07:30:00Z"
            ]
        );
    }

    #[test]
    fn start_and_end_bounds_limit_occurrences() {
        let s = Spec::compile(&SpecRecord {
            cron_expressions: vec!["0 * * * *".into()],
            start_at_ms: Some(ms("2026-01-01T05:30:00Z")),
            end_at_ms: Some(ms("2026-01-01T07:00:00Z")),
            ..SpecRecord::default()
        })
        .expect("compiles");
        assert_eq!(
            fires(&s, "2026-01-01T00:00:00Z", 2),
            ["2026-01-01T06:00:00Z", "2026-01-01T07:00:00Z"]
        );
        assert_eq!(s.next_after(ms("2026-01-01T07:00:00Z")), None);
    }

    #[test]
    fn occurrences_between_counts_and_caps() {
        let s = spec(&["* * * * *"], None);
        let o = s.occurrences_between(ms("2026-01-01T00:00:00Z"), ms("2026-01-01T00:10:00Z"), 100);
        assert_eq!(o.count, 10);
        assert_eq!(o.first, Some(ms("2026-01-01T00:01:00Z")));
        assert_eq!(o.last.map(|l| l.0), Some(ms("2026-01-01T00:10:00Z")));
        assert!(!o.truncated);
        let o = s.occurrences_between(ms("2026-01-01T00:00:00Z"), ms("2026-01-01T00:10:00Z"), 4);
        assert_eq!(o.count, 4);
        assert!(o.truncated);
    }
}
