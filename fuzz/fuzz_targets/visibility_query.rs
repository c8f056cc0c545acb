//! The schedule list's visibility query (`parse_visibility_query`, what `GET
//! /api/schedules?query=` calls): any text parses or is refused as a 422 with one of the
//! parser's named reasons; a parsed query names only searchable fields, and rendering its
//! predicates back as `Field = literal AND ...` parses to the same predicates.
//!
//! Input: lines `attr <Name>` register search attributes; the first other line is the
//! query.
#![no_main]

use std::collections::BTreeMap;

use keel_engine::schedules::parse_visibility_query;
use keel_fuzz::http::assert_named_rejection;
use keel_http::error::ApiError;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const SYSTEM: [&str; 5] = ["ScheduleId", "Status", "WorkflowType", "TaskQueue", "Note"];
const REASONS: [&str; 3] = [
    "invalid_schedule_visibility_query",
    "unsupported_schedule_visibility_predicate",
    "unsupported_schedule_visibility_field",
];

fn literal(value: &Value) -> String {
    match value {
        Value::String(s) => {
            let mut out = String::from("'");
            for c in s.chars() {
                if c == '\'' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('\'');
            out
        }
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        // A predicate's value is always a string, number or boolean literal.
        other => panic!("predicate value {other} is not a literal"),
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut registered = BTreeMap::new();
    let mut query = String::new();
    for line in text.split('\n') {
        match line.strip_prefix("attr ") {
            Some(name) => {
                registered.insert(name.to_string(), "keyword".to_string());
            }
            None => {
                query = line.to_string();
                break;
            }
        }
    }

    match parse_visibility_query(&query, &registered) {
        Ok(predicates) => {
            assert!(!predicates.is_empty(), "an accepted query has a predicate");
            for (field, _) in &predicates {
                assert!(
                    SYSTEM.contains(&field.as_str()) || registered.contains_key(field),
                    "'{field}' is not searchable"
                );
            }
            let rendered = predicates
                .iter()
                .map(|(f, v)| format!("{f} = {}", literal(v)))
                .collect::<Vec<_>>()
                .join(" AND ");
            let again = parse_visibility_query(&rendered, &registered)
                .unwrap_or_else(|e| panic!("rendered query {rendered:?} is refused: {e:?}"));
            assert_eq!(again, predicates, "rendered query {rendered:?}");
        }
        Err(e) => {
            let e = ApiError::from(e);
            assert_named_rejection(&e);
            assert_eq!(e.status.as_u16(), 422);
            assert!(
                REASONS.contains(&e.reason),
                "unexpected reason {}",
                e.reason
            );
        }
    }
});
