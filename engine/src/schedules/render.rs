//! The canonical JSON of a schedule's spec and action (stored in its history events, and
//! shown as-is by `describe`), and the upcoming fire times. Replies are shaped by http.

use serde_json::{json, Value};

use crate::clock::{format_timestamp, Millis};

use super::firing::compile;
use super::record::{ActionRecord, ScheduleRecord, ScheduleStatus};
use super::spec::SpecRecord;
use super::FUTURE_ACTION_TIMES;

/// A spec as history events and `describe` show it.
pub fn spec_json(spec: &SpecRecord) -> Value {
    let ts = |ms: Option<Millis>| ms.map(format_timestamp);
    json!({
        "cron_expressions": spec.cron_expressions,
        "intervals": spec.intervals.iter().map(|i| json!({"every": i.every, "offset": i.offset})).collect::<Vec<_>>(),
        "timezone": spec.timezone.clone().unwrap_or_else(|| "UTC".into()),
        "start_at": ts(spec.start_at_ms),
        "end_at": ts(spec.end_at_ms),
    })
}

/// An action as history events and `describe` show it.
pub fn action_json(action: &ActionRecord) -> Value {
    json!({
        "workflow_type": action.workflow_type,
        "task_queue": action.task_queue,
        "input": action.input,
        "execution_timeout_seconds": action.execution_timeout_seconds,
        "run_timeout_seconds": action.run_timeout_seconds,
    })
}

/// The next fire times of an active schedule (at most five, and no more than its
/// remaining actions); empty when paused or finished.
pub fn future_action_times(s: &ScheduleRecord) -> Vec<Millis> {
    let mut future = Vec::new();
    if s.status == ScheduleStatus::Active {
        if let (Some(spec), Some(mut t)) = (compile(s), s.next_occurrence_ms) {
            future.push(t);
            while future.len() < FUTURE_ACTION_TIMES {
                match spec.next_after(t) {
                    Some((next, _)) => {
                        future.push(next);
                        t = next;
                    }
                    None => break,
                }
            }
            if let Some(remaining) = s.remaining_actions {
                future.truncate(remaining as usize);
            }
        }
    }
    future
}
