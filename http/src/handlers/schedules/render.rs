//! Reply bodies of the schedule routes.

use keel_engine::clock::{format_timestamp, Millis};
use keel_engine::schedules::{
    action_json, future_action_times, spec_json, BackfillResult, FireOutcome, ScheduleRecord,
    TriggerResult,
};
use serde_json::{json, Value};

/// The `describe` / list entry body of a schedule.
pub(super) fn schedule_json(s: &ScheduleRecord) -> Value {
    let ts = |ms: Option<Millis>| ms.map(format_timestamp);
    json!({
        "schedule_id": s.schedule_id,
        "namespace": s.namespace,
        "status": s.status.as_str(),
        "workflow_type": s.action.workflow_type,
        "task_queue": s.action.task_queue,
        "spec": spec_json(&s.spec),
        "action": action_json(&s.action),
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
            "future_action_times": future_action_times(s).into_iter().map(format_timestamp).collect::<Vec<_>>(),
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

/// The response body: `{schedule_id, outcome, workflow_id, run_id, reason, buffer_depth}`
/// with `outcome` one of `triggered`, `buffered`, `buffer_full`, `skipped`.
pub(super) fn trigger_json(result: &TriggerResult) -> Value {
    let (outcome, workflow_id, run_id, reason) = match &result.outcome {
        FireOutcome::Started {
            workflow_id,
            run_id,
        } => ("triggered", Some(workflow_id), Some(run_id), None),
        FireOutcome::Buffered { workflow_id } => ("buffered", Some(workflow_id), None, None),
        FireOutcome::BufferFull => ("buffer_full", None, None, Some("buffer_full")),
        FireOutcome::Skipped {
            reason,
            workflow_id,
        } => ("skipped", Some(workflow_id), None, Some(*reason)),
    };
    json!({
        "schedule_id": result.schedule_id,
        "outcome": outcome,
        "workflow_id": workflow_id,
        "run_id": run_id,
        "reason": reason,
        "buffer_depth": result.buffer_depth,
    })
}

/// The response body: `{schedule_id, outcome: "backfill_started", fires_attempted,
/// results: [{fire_time, workflow_id, run_id, outcome: started|buffered|skipped, reason}]}`.
pub(super) fn backfill_json(result: &BackfillResult) -> Value {
    let results: Vec<Value> = result
        .fires
        .iter()
        .map(|f| {
            let (outcome, workflow_id, run_id, reason) = match &f.outcome {
                FireOutcome::Started {
                    workflow_id,
                    run_id,
                } => ("started", Some(workflow_id), Some(run_id), None),
                FireOutcome::Buffered { workflow_id } => {
                    ("buffered", Some(workflow_id), None, None)
                }
                FireOutcome::BufferFull => ("skipped", None, None, Some("buffer_full")),
                FireOutcome::Skipped {
                    reason,
                    workflow_id,
                } => ("skipped", Some(workflow_id), None, Some(*reason)),
            };
            json!({
                "fire_time": format_timestamp(f.occurrence_ms),
                "workflow_id": workflow_id,
                "run_id": run_id,
                "outcome": outcome,
                "reason": reason,
            })
        })
        .collect();
    json!({
        "schedule_id": result.schedule_id,
        "outcome": "backfill_started",
        "fires_attempted": result.fires.len(),
        "results": results,
    })
}
