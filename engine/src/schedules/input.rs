//! Reading schedule requests (create and update bodies, as the SDK sends them) into typed
//! inputs. Every problem is collected and reported at once as field errors
//! (`validation_failed`), before anything is stored.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::spec::{canonical_timezone, IntervalRecord, Spec, SpecRecord};
use super::{ActionRecord, OverlapPolicy};
use crate::clock::Millis;
use crate::error::{Error, Result};

/// Longest schedule id.
pub const MAX_SCHEDULE_ID: usize = 128;
/// Longest note.
pub const MAX_NOTE: usize = 1000;
/// Largest jitter.
pub const MAX_JITTER_SECONDS: i64 = 3600;
/// Longest catch-up window (one year).
pub const MAX_CATCHUP_WINDOW_SECONDS: i64 = 365 * 86_400;
pub use crate::model::MAX_MEMO_BYTES;
/// Most cron expressions or intervals in one spec.
const MAX_SPEC_ENTRIES: usize = 20;
/// Longest workflow type or task queue name.
const MAX_NAME: usize = 255;
/// Longest timeout a schedule's action may carry (ten years).
const MAX_TIMEOUT_SECONDS: i64 = 10 * 365 * 86_400;

/// A create request.
#[derive(Debug, Clone)]
pub struct ScheduleInput {
    /// The id (generated when absent).
    pub schedule_id: Option<String>,
    /// When it fires.
    pub spec: SpecRecord,
    /// What it starts.
    pub action: ActionRecord,
    /// Overlap policy (default `skip`).
    pub overlap_policy: Option<OverlapPolicy>,
    /// Jitter, 0..=3600 seconds.
    pub jitter_seconds: Option<u64>,
    /// Most workflows it ever starts.
    pub max_runs: Option<u64>,
    /// Memo of the schedule (copied to each run).
    pub memo: Option<Value>,
    /// Search attributes (copied to each run).
    pub search_attributes: Option<Value>,
    /// Created paused.
    pub paused: bool,
    /// Operator note.
    pub note: Option<String>,
    /// How old a missed occurrence may be and still fire after downtime.
    pub catchup_window_seconds: Option<u64>,
}

/// An update request: every field optional; what is present replaces the stored value.
#[derive(Debug, Clone, Default)]
pub struct SchedulePatch {
    /// New spec.
    pub spec: Option<SpecRecord>,
    /// New action.
    pub action: Option<ActionRecord>,
    /// New overlap policy.
    pub overlap_policy: Option<OverlapPolicy>,
    /// New jitter.
    pub jitter_seconds: Option<u64>,
    /// New run limit (remaining actions become `max_runs - fires_count`).
    pub max_runs: Option<u64>,
    /// New memo.
    pub memo: Option<Value>,
    /// New search attributes.
    pub search_attributes: Option<Value>,
    /// New note.
    pub note: Option<String>,
    /// New catch-up window.
    pub catchup_window_seconds: Option<u64>,
}

struct Reader<'a> {
    body: &'a Map<String, Value>,
    errors: BTreeMap<String, Vec<String>>,
}

fn as_object(body: &Value) -> Result<&Map<String, Value>> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    match body {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(EMPTY.get_or_init(Map::new)),
        _ => Err(Error::invalid("body", "The body must be a JSON object.")),
    }
}

impl<'a> Reader<'a> {
    fn new(body: &'a Map<String, Value>) -> Self {
        Reader {
            body,
            errors: BTreeMap::new(),
        }
    }

    fn error(&mut self, field: &str, message: impl Into<String>) {
        self.errors
            .entry(field.to_string())
            .or_default()
            .push(message.into());
    }

    fn get(&self, field: &str) -> Option<&'a Value> {
        self.body.get(field).filter(|v| !v.is_null())
    }

    fn string(&mut self, field: &str, max: usize) -> Option<String> {
        match self.get(field) {
            None => None,
            Some(Value::String(s)) if s.len() <= max => Some(s.clone()),
            Some(Value::String(_)) => {
                self.error(
                    field,
                    format!("The {field} field must not exceed {max} characters."),
                );
                None
            }
            Some(_) => {
                self.error(field, format!("The {field} field must be a string."));
                None
            }
        }
    }

    fn int(&mut self, field: &str, min: i64, max: i64) -> Option<u64> {
        match self.get(field) {
            None => None,
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) if (min..=max).contains(&i) => Some(i as u64),
                _ => {
                    self.error(
                        field,
                        format!("The {field} field must be an integer between {min} and {max}."),
                    );
                    None
                }
            },
            Some(_) => {
                self.error(field, format!("The {field} field must be an integer."));
                None
            }
        }
    }

    fn object(&mut self, field: &str) -> Option<Value> {
        match self.get(field) {
            None => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(_) => {
                self.error(field, format!("The {field} field must be an object."));
                None
            }
        }
    }

    fn overlap(&mut self) -> Option<OverlapPolicy> {
        let text = self.string("overlap_policy", 32)?;
        let parsed = OverlapPolicy::parse(&text);
        if parsed.is_none() {
            self.error(
                "overlap_policy",
                format!(
                    "The overlap_policy must be one of: {}.",
                    OverlapPolicy::ALL.map(OverlapPolicy::as_str).join(", ")
                ),
            );
        }
        parsed
    }

    fn spec(&mut self) -> Option<SpecRecord> {
        let value = self.get("spec")?;
        let Value::Object(spec) = value else {
            self.error("spec", "The spec field must be an object.");
            return None;
        };
        let mut record = SpecRecord::default();
        match spec.get("cron_expressions").filter(|v| !v.is_null()) {
            None => {}
            Some(Value::Array(items)) if items.len() <= MAX_SPEC_ENTRIES => {
                for (i, item) in items.iter().enumerate() {
                    match item.as_str() {
                        Some(s) if s.len() <= 256 => record.cron_expressions.push(s.to_string()),
                        _ => self.error(
                            &format!("spec.cron_expressions.{i}"),
                            "Each cron expression must be a string of at most 256 characters.",
                        ),
                    }
                }
            }
            Some(Value::String(s)) => record.cron_expressions.push(s.clone()),
            Some(_) => self.error(
                "spec.cron_expressions",
                format!(
                    "The cron_expressions must be a list of at most {MAX_SPEC_ENTRIES} strings."
                ),
            ),
        }
        match spec.get("intervals").filter(|v| !v.is_null()) {
            None => {}
            Some(Value::Array(items)) if items.len() <= MAX_SPEC_ENTRIES => {
                for (i, item) in items.iter().enumerate() {
                    let duration = |v: Option<&Value>| match v {
                        Some(Value::String(s)) => Some(Some(s.clone())),
                        Some(Value::Number(n)) => n.as_u64().map(|n| Some(n.to_string())),
                        None | Some(Value::Null) => Some(None),
                        Some(_) => None,
                    };
                    let (every, offset) = match item {
                        Value::Object(o) => (duration(o.get("every")), duration(o.get("offset"))),
                        _ => (None, None),
                    };
                    match (every, offset) {
                        (Some(Some(every)), Some(offset)) => {
                            record.intervals.push(IntervalRecord { every, offset })
                        }
                        (Some(None), _) => self.error(
                            &format!("spec.intervals.{i}.every"),
                            "Each interval needs an 'every' duration (e.g. PT30M).",
                        ),
                        _ => self.error(
                            &format!("spec.intervals.{i}"),
                            "Each interval must be an object {every, offset?} of ISO-8601 durations.",
                        ),
                    }
                }
            }
            Some(_) => self.error(
                "spec.intervals",
                format!("The intervals must be a list of at most {MAX_SPEC_ENTRIES} objects."),
            ),
        }
        match spec.get("timezone").filter(|v| !v.is_null()) {
            None => {}
            Some(Value::String(name)) => match canonical_timezone(name) {
                Some(canonical) => record.timezone = Some(canonical),
                None => self.error(
                    "spec.timezone",
                    format!("'{name}' is not a known IANA time zone."),
                ),
            },
            Some(_) => self.error("spec.timezone", "The timezone must be a string."),
        }
        for (field, slot) in [
            ("start_at", &mut record.start_at_ms),
            ("end_at", &mut record.end_at_ms),
        ] {
            match spec.get(field).filter(|v| !v.is_null()) {
                None => {}
                Some(Value::String(text)) => match parse_instant(text) {
                    Some(ms) => *slot = Some(ms),
                    None => self.errors.entry(format!("spec.{field}")).or_default().push(format!(
                        "The {field} must be an ISO-8601 instant with an offset (e.g. 2026-01-01T00:00:00Z)."
                    )),
                },
                Some(_) => self
                    .errors
                    .entry(format!("spec.{field}"))
                    .or_default()
                    .push(format!("The {field} must be a string.")),
            }
        }
        let shape_errors = self
            .errors
            .keys()
            .any(|k| k.starts_with("spec.cron_expressions") || k.starts_with("spec.intervals"));
        // Semantic checks (cron syntax, durations, bounds) with the same field names; the
        // indexes only line up when every entry had the right shape.
        if !shape_errors {
            if let Err(errors) = Spec::compile(&record) {
                for (field, messages) in errors {
                    self.errors.entry(field).or_default().extend(messages);
                }
            }
        }
        if self.errors.keys().any(|k| k.starts_with("spec")) {
            return None;
        }
        Some(record)
    }

    fn action(&mut self) -> Option<ActionRecord> {
        let value = self.get("action")?;
        let Value::Object(action) = value else {
            self.error("action", "The action field must be an object.");
            return None;
        };
        let mut inner = Reader::new(action);
        let workflow_type = inner.string("workflow_type", MAX_NAME);
        if inner.get("workflow_type").is_none() {
            inner.error("workflow_type", "The workflow_type field is required.");
        } else if workflow_type.as_deref() == Some("") {
            inner.error(
                "workflow_type",
                "The workflow_type field must not be empty.",
            );
        }
        let task_queue = inner.string("task_queue", MAX_NAME);
        if task_queue.as_deref() == Some("") {
            inner.error("task_queue", "The task_queue field must not be empty.");
        }
        let execution = inner
            .int("execution_timeout_seconds", 1, MAX_TIMEOUT_SECONDS)
            .or_else(|| inner.int("workflow_execution_timeout", 1, MAX_TIMEOUT_SECONDS));
        let run = inner
            .int("run_timeout_seconds", 1, MAX_TIMEOUT_SECONDS)
            .or_else(|| inner.int("workflow_run_timeout", 1, MAX_TIMEOUT_SECONDS));
        let input = match inner.get("input") {
            None => Value::Null,
            Some(v @ (Value::Object(_) | Value::Array(_) | Value::String(_))) => v.clone(),
            Some(_) => {
                inner.error(
                    "input",
                    "The input must be a payload envelope, an array or a blob string.",
                );
                Value::Null
            }
        };
        let ok = inner.errors.is_empty();
        for (field, messages) in inner.errors {
            self.errors
                .entry(format!("action.{field}"))
                .or_default()
                .extend(messages);
        }
        ok.then(|| ActionRecord {
            workflow_type: workflow_type.unwrap_or_default(),
            task_queue: task_queue.unwrap_or_else(|| super::DEFAULT_TASK_QUEUE.to_string()),
            input,
            execution_timeout_seconds: execution,
            run_timeout_seconds: run,
        })
    }

    fn finish(self) -> Result<()> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Validation(self.errors))
        }
    }
}

/// Parses an RFC 3339 / ISO-8601 instant into milliseconds.
pub fn parse_instant(text: &str) -> Option<Millis> {
    text.trim()
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

fn check_memo(memo: &Option<Value>) -> Result<()> {
    memo.as_ref().map_or(Ok(()), crate::model::check_memo_size)
}

impl ScheduleInput {
    /// Reads a create body: `schedule_id?`, `spec`, `action`, `overlap_policy?`,
    /// `jitter_seconds?`, `max_runs?`, `memo?`, `search_attributes?`, `paused?`, `note?`,
    /// `catchup_window_seconds?`. Unknown fields are ignored.
    pub fn from_json(body: &Value) -> Result<ScheduleInput> {
        let mut r = Reader::new(as_object(body)?);
        let schedule_id = r.string("schedule_id", MAX_SCHEDULE_ID);
        if let Some(id) = &schedule_id {
            let ok = !id.is_empty()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
            if !ok {
                r.error(
                    "schedule_id",
                    "The schedule_id may contain only letters, digits, '.', '_', ':' and '-'.",
                );
            }
        }
        if r.get("spec").is_none() {
            r.error("spec", "The spec field is required.");
        }
        if r.get("action").is_none() {
            r.error("action", "The action field is required.");
        }
        let spec = r.spec();
        let action = r.action();
        let overlap_policy = r.overlap();
        let jitter_seconds = r.int("jitter_seconds", 0, MAX_JITTER_SECONDS);
        let max_runs = r.int("max_runs", 1, i64::from(u32::MAX));
        let memo = r.object("memo");
        let search_attributes = r.object("search_attributes");
        let paused = match r.get("paused") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                r.error("paused", "The paused field must be a boolean.");
                false
            }
        };
        let note = r.string("note", MAX_NOTE);
        let catchup_window_seconds = r.int("catchup_window_seconds", 0, MAX_CATCHUP_WINDOW_SECONDS);
        r.finish()?;
        check_memo(&memo)?;
        Ok(ScheduleInput {
            schedule_id,
            spec: spec.unwrap_or_default(),
            action: action.unwrap_or_default(),
            overlap_policy,
            jitter_seconds,
            max_runs,
            memo,
            search_attributes,
            paused,
            note,
            catchup_window_seconds,
        })
    }
}

impl SchedulePatch {
    /// Reads an update body: any subset of the create fields except `schedule_id` and
    /// `paused` (pause and resume have their own routes); those and unknown fields are
    /// ignored.
    pub fn from_json(body: &Value) -> Result<SchedulePatch> {
        let mut r = Reader::new(as_object(body)?);
        let patch = SchedulePatch {
            spec: r.spec(),
            action: r.action(),
            overlap_policy: r.overlap(),
            jitter_seconds: r.int("jitter_seconds", 0, MAX_JITTER_SECONDS),
            max_runs: r.int("max_runs", 1, i64::from(u32::MAX)),
            memo: r.object("memo"),
            search_attributes: r.object("search_attributes"),
            note: r.string("note", MAX_NOTE),
            catchup_window_seconds: r.int("catchup_window_seconds", 0, MAX_CATCHUP_WINDOW_SECONDS),
        };
        r.finish()?;
        check_memo(&patch.memo)?;
        Ok(patch)
    }
}

#[cfg(test)]
mod tests {
    use super::{BTreeMap, Error, ScheduleInput, Value, MAX_MEMO_BYTES};
    use serde_json::json;

    fn errors(body: Value) -> BTreeMap<String, Vec<String>> {
        match ScheduleInput::from_json(&body) {
            Err(Error::Validation(e)) => e,
            other => panic!("expected field errors, got {other:?}"),
        }
    }

    #[test]
    fn sdk_create_body_reads_with_defaults() {
        let input = ScheduleInput::from_json(&json!({
            "schedule_id": "nightly",
            "spec": {"cron_expressions": ["0 2 * * *"], "intervals": [{"every": "PT30M", "offset": "PT5M"}], "timezone": "america/new_york"},
            "action": {"workflow_type": "report", "input": {"codec": "avro", "blob": "AA=="}},
            "paused": true,
        }))
        .expect("valid");
        assert_eq!(input.schedule_id.as_deref(), Some("nightly"));
        assert_eq!(input.spec.timezone.as_deref(), Some("America/New_York"));
        assert_eq!(input.action.task_queue, "default");
        assert!(input.paused);
        assert_eq!(input.overlap_policy, None);
    }

    #[test]
    fn bad_specs_name_their_fields() {
        let e = errors(json!({
            "spec": {"cron_expressions": ["not a cron"], "intervals": [{"every": "soon"}], "timezone": "Nowhere/Land"},
            "action": {},
            "overlap_policy": "sometimes",
            "jitter_seconds": 7200,
        }));
        for field in [
            "spec.cron_expressions.0",
            "spec.timezone",
            "action.workflow_type",
            "overlap_policy",
            "jitter_seconds",
        ] {
            assert!(e.contains_key(field), "{field} missing from {e:?}");
        }
        let e = errors(
            json!({"spec": {"intervals": [{"every": "soon"}]}, "action": {"workflow_type": "w"}}),
        );
        assert!(e.contains_key("spec.intervals.0.every"), "{e:?}");
        let e = errors(json!({}));
        assert!(e.contains_key("spec") && e.contains_key("action"));
    }

    #[test]
    fn oversized_memo_is_memo_too_large() {
        let big = "x".repeat(MAX_MEMO_BYTES);
        let err = ScheduleInput::from_json(&json!({
            "spec": {"cron_expressions": ["* * * * *"]},
            "action": {"workflow_type": "w"},
            "memo": {"big": big},
        }))
        .expect_err("too large");
        assert!(matches!(
            err,
            Error::Rejected {
                reason: "memo_too_large",
                ..
            }
        ));
    }
}
