//! The schedule list's visibility query: a parser for `Field = literal AND ...`.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::error::{Error, RejectKind, Result};

use super::record::{ScheduleListQuery, ScheduleRecord, ScheduleStatus};

/// Parses a list `query`: equality predicates `Field = literal` joined by `AND`. Fields:
/// `ScheduleId`, `Status`, `WorkflowType`, `TaskQueue`, `Note`, and the namespace's
/// registered search attributes. Literals: quoted strings, integers, doubles, `true`,
/// `false`. Anything else is refused with a typed reason.
pub fn parse_visibility_query(
    query: &str,
    registered: &BTreeMap<String, String>,
) -> Result<Vec<(String, Value)>> {
    let invalid = |reason: &'static str, message: String| {
        Error::reject(RejectKind::Invalid, reason, message).with("field", "query")
    };
    let mut tokens = Vec::new();
    let chars: Vec<char> = query.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(invalid(
                            "invalid_schedule_visibility_query",
                            "unterminated string literal".into(),
                        ))
                    }
                    Some('\\') => {
                        if let Some(n) = chars.get(i + 1) {
                            s.push(*n);
                        }
                        i += 2;
                    }
                    Some(q) if *q == c => {
                        i += 1;
                        break;
                    }
                    Some(other) => {
                        s.push(*other);
                        i += 1;
                    }
                }
            }
            tokens.push((true, s));
        } else if matches!(c, '=' | '!' | '<' | '>' | '(' | ')' | ',') {
            let mut op = c.to_string();
            if matches!(chars.get(i + 1), Some('=')) && c != '=' {
                op.push('=');
                i += 1;
            }
            tokens.push((false, op));
            i += 1;
        } else {
            let start = i;
            while i < chars.len()
                && !chars[i].is_whitespace()
                && !matches!(
                    chars[i],
                    '=' | '!' | '<' | '>' | '(' | ')' | ',' | '\'' | '"'
                )
            {
                i += 1;
            }
            tokens.push((false, chars[start..i].iter().collect()));
        }
    }
    let mut predicates = Vec::new();
    let mut rest = tokens.as_slice();
    loop {
        let [(false, field), (false, op), (quoted, literal), tail @ ..] = rest else {
            if let Some((_, t)) = rest.iter().find(|(q, t)| {
                !q && matches!(
                    t.to_ascii_uppercase().as_str(),
                    "OR" | "NOT" | "IN" | "LIKE" | "BETWEEN" | "<" | ">" | "<=" | ">=" | "!="
                )
            }) {
                return Err(invalid(
                    "unsupported_schedule_visibility_predicate",
                    format!("'{t}' is not supported; use equality predicates joined by AND"),
                ));
            }
            return Err(invalid(
                "invalid_schedule_visibility_query",
                format!("cannot parse the query '{query}'; expected Field = value [AND ...]"),
            ));
        };
        if op != "=" {
            return Err(invalid(
                "unsupported_schedule_visibility_predicate",
                format!("operator '{op}' is not supported; only '=' is"),
            ));
        }
        let system = ["ScheduleId", "Status", "WorkflowType", "TaskQueue", "Note"];
        if !system.contains(&field.as_str()) && !registered.contains_key(field) {
            return Err(invalid(
                "unsupported_schedule_visibility_field",
                format!("'{field}' is not a searchable schedule field"),
            ));
        }
        let value = if *quoted {
            json!(literal)
        } else if literal == "true" || literal == "false" {
            json!(literal == "true")
        } else if let Ok(n) = literal.parse::<i64>() {
            json!(n)
        } else if let Some(f) = literal.parse::<f64>().ok().filter(|f| f.is_finite()) {
            // `1e400`, `inf` and `nan` parse as doubles JSON cannot hold (they would
            // become `null` and match records without the field): not literals.
            json!(f)
        } else {
            return Err(invalid(
                "invalid_schedule_visibility_query",
                format!("'{literal}' is not a literal; quote strings"),
            ));
        };
        predicates.push((field.clone(), value));
        match tail {
            [] => return Ok(predicates),
            [(false, and), more @ ..] if and.eq_ignore_ascii_case("AND") => rest = more,
            [(_, t), ..] => {
                let reason = if matches!(t.to_ascii_uppercase().as_str(), "OR" | "NOT") {
                    "unsupported_schedule_visibility_predicate"
                } else {
                    "invalid_schedule_visibility_query"
                };
                return Err(invalid(
                    reason,
                    format!("unexpected '{t}'; predicates are joined by AND"),
                ));
            }
        }
    }
}

pub(super) fn matches(s: &ScheduleRecord, q: &ScheduleListQuery) -> bool {
    if s.status == ScheduleStatus::Deleted || q.status.is_some_and(|st| st != s.status) {
        return false;
    }
    if q.workflow_type
        .as_ref()
        .is_some_and(|t| *t != s.action.workflow_type)
    {
        return false;
    }
    q.predicates.iter().all(|(field, value)| {
        let actual = match field.as_str() {
            "ScheduleId" => json!(s.schedule_id),
            "Status" => json!(s.status.as_str()),
            "WorkflowType" => json!(s.action.workflow_type),
            "TaskQueue" => json!(s.action.task_queue),
            "Note" => json!(s.note),
            other => s
                .search_attributes
                .get(other)
                .cloned()
                .unwrap_or(Value::Null),
        };
        match &actual {
            Value::Array(items) => items.contains(value),
            other => other == value,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::{json, parse_visibility_query, BTreeMap, Error};

    #[test]
    fn numbers_beyond_a_finite_double_are_not_literals() {
        // Found by the visibility_query fuzz target: `-9223372036e300` parsed as -inf,
        // which JSON renders as null.
        let registered = BTreeMap::from([("N".to_string(), "double".to_string())]);
        for query in ["N = -9223372036e300", "N = 1e400", "N = inf", "N = NaN"] {
            match parse_visibility_query(query, &registered) {
                Err(Error::Rejected { reason, .. }) => {
                    assert_eq!(reason, "invalid_schedule_visibility_query", "{query}")
                }
                other => panic!("{query}: {other:?}"),
            }
        }
        let ok = parse_visibility_query("N = 1.5e300 AND N = -0.5", &registered).expect("finite");
        assert_eq!(
            ok,
            [("N".into(), json!(1.5e300)), ("N".into(), json!(-0.5))]
        );
    }
}
