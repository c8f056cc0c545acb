//! The JSON body of a schedule as `describe` and the list return it.

use serde_json::{json, Value};

use crate::clock::{format_timestamp, Millis};

use super::firing::compile;
use super::record::{ScheduleRecord, ScheduleStatus};
use super::FUTURE_ACTION_TIMES;

// ---- rendering ----

/// The `describe` / list entry body of a schedule.
pub fn schedule_json(s: &ScheduleRecord) -> Value {
    let ts = |ms: Option<Millis>| ms.map(format_timestamp);
    let spec = &s.spec;
    let spec_json = json!({
        "cron_expressions": spec.cron_expressions,
        "intervals": spec.intervals.iter().map(|i| json!({"every": i.every, "offset": i.offset})).collect::<Vec<_>>(),
        "timezone": spec.timezone.clone().unwrap_or_else(|| "UTC".into()),
        "start_at": ts(spec.start_at_ms),
        "end_at": ts(spec.end_at_ms),
    });
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
    json!({
        "schedule_id": s.schedule_id,
        "namespace": s.namespace,
        "status": s.status.as_str(),
        "workflow_type": s.action.workflow_type,
        "task_queue": s.action.task_queue,
        "spec": spec_json,
        "action": {
            "workflow_type": s.action.workflow_type,
            "task_queue": s.action.task_queue,
            "input": s.action.input,
            "execution_timeout_seconds": s.action.execution_timeout_seconds,
            "run_timeout_seconds": s.action.run_timeout_seconds,
        },
        "overlap_policy": s.overlap_policy.as_str(),
        "note": s.note,
        "memo": if s.memo.is_object() { s.memo.clone() } else { json!({}) },
        "search_attributes": if s.search_attributes.is_object() { s.search_attributes.clone() } else { json!({}) },
        "jitter_seconds": s.jitter_seconds,
        "max_runs": s.max_runs,
        "remaining_actions": s.remaining_actions,
        "catchup_window_seconds": s.catchup_window_seconds,
        "fires_count": s.fires_count,
        "failures_count": s.failures_count,
        "next_fire_at": ts(s.next_fire_at_ms),
        "last_fired_at": ts(s.last_fired_at_ms),
        "latest_workflow_instance_id": s.latest_workflow_id,
        "paused_at": ts(s.paused_at_ms),
        "created_at": format_timestamp(s.created_at_ms),
        "updated_at": format_timestamp(s.updated_at_ms),
        "info": {
            "schedule_ulid": s.schedule_ulid,
            "latest_workflow_run_id": s.latest_run_id,
            "next_occurrence_at": ts(s.next_occurrence_ms),
            "future_action_times": future.into_iter().map(format_timestamp).collect::<Vec<_>>(),
            "buffer_depth": s.buffer.len(),
            "buffered_fires": s.buffer.iter().map(|b| json!({
                "occurrence_time": format_timestamp(b.occurrence_ms),
                "workflow_id": b.workflow_id,
                "trigger": b.trigger,
                "buffered_at": format_timestamp(b.buffered_at_ms),
            })).collect::<Vec<_>>(),
            "running_workflow_ids": s.running,
            "recent_actions": s.recent_actions.iter().map(|a| json!({
                "occurrence_time": format_timestamp(a.occurrence_ms),
                "started_at": format_timestamp(a.started_at_ms),
                "workflow_id": a.workflow_id,
                "run_id": a.run_id,
                "trigger": a.trigger,
            })).collect::<Vec<_>>(),
            "trigger_count": s.trigger_count,
            "skipped_count": s.skipped_count,
            "missed_fire_policy": "fire_once_on_resume_then_skip_remaining_missed",
        },
    })
}
