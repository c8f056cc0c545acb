//! The cron / interval spec parser and occurrence math of `keel_engine::schedules::spec`:
//! compiling any spec either succeeds or names the offending fields (`spec...` keys);
//! a compiled spec's occurrences after an instant are strictly increasing, inside the
//! start/end bounds, and consistent (the next occurrence after `at - 1 ms` is `at`, so
//! the set of fire times does not depend on where a search starts); counting between
//! two instants agrees with stepping.
//!
//! Input, one directive per line (anything else is ignored):
//! `cron: <expression>`, `every: <duration> [offset]`, `tz: <zone>`, `start: <instant>`,
//! `end: <instant>`, `at: <instant>` (where the search starts).
#![no_main]

use keel_engine::schedules::parse_instant;
use keel_engine::schedules::spec::{
    canonical_timezone, parse_duration_ms, IntervalRecord, Spec, SpecRecord,
};
use libfuzzer_sys::fuzz_target;

/// 2026-01-01T00:00:00Z.
const DEFAULT_AT: i64 = 1_767_225_600_000;
const STEPS: usize = 12;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut record = SpecRecord::default();
    let mut at = DEFAULT_AT;
    for line in text.lines().take(16) {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "cron" => record.cron_expressions.push(value.to_string()),
            "every" => {
                let mut parts = value.splitn(2, ' ');
                let every = parts.next().unwrap_or_default().to_string();
                let offset = parts.next().map(str::to_string);
                let _ = parse_duration_ms(&every);
                record.intervals.push(IntervalRecord { every, offset });
            }
            "tz" => {
                let _ = canonical_timezone(value);
                record.timezone = Some(value.to_string());
            }
            "start" => record.start_at_ms = parse_instant(value),
            "end" => record.end_at_ms = parse_instant(value),
            "at" => at = parse_instant(value).unwrap_or(DEFAULT_AT),
            _ => {}
        }
    }

    let spec = match Spec::compile(&record) {
        Ok(spec) => spec,
        Err(errors) => {
            assert!(!errors.is_empty(), "a refused spec names no field");
            for (field, messages) in &errors {
                assert!(
                    field.starts_with("spec"),
                    "field error outside spec: {field}"
                );
                assert!(
                    messages.iter().all(|m| !m.is_empty()),
                    "empty message on {field}"
                );
            }
            return;
        }
    };
    let _ = spec.timezone_name();

    let mut t = at;
    let mut fires = Vec::new();
    for _ in 0..STEPS {
        let Some((next, _source)) = spec.next_after(t) else {
            break;
        };
        assert!(next > t, "next_after({t}) = {next} is not after it");
        if let Some(start) = record.start_at_ms {
            assert!(next >= start, "{next} fires before the start {start}");
        }
        if let Some(end) = record.end_at_ms {
            assert!(next <= end, "{next} fires after the end {end}");
        }
        assert_eq!(
            spec.next_after(next - 1).map(|(n, _)| n),
            Some(next),
            "the occurrence after {} is not {next} (search from {t} found it)",
            next - 1
        );
        fires.push(next);
        t = next;
    }

    if let (Some(&first), Some(&last)) = (fires.first(), fires.last()) {
        let counted = spec.occurrences_between(at, last, STEPS + 5);
        assert_eq!(
            counted.count,
            fires.len(),
            "counting disagrees with stepping"
        );
        assert_eq!(counted.first, Some(first));
        assert_eq!(counted.last.map(|(l, _)| l), Some(last));
        assert!(!counted.truncated);
        let capped = spec.occurrences_between(at, last, 1);
        assert_eq!(capped.count, 1);
        assert_eq!(capped.truncated, fires.len() > 1);
    }
});
