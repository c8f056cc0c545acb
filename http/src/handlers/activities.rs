//! Standalone activities: `POST /activities` starts one (a host run whose one activity
//! runs on the ordinary activity route), `GET /activities[/{id}]` read them. Cancel and
//! terminate are the workflow routes', with the activity id as the workflow id.

use hyper::StatusCode;
use keel_engine::clock::format_timestamp;
use keel_engine::model::{RunRecord, RunStatus};
use keel_engine::workflow::{StandaloneActivityView, StartActivity, MAX_PAGE_SIZE};
use serde_json::{json, Value};

use crate::call::{AppState, Call, Reply};
use crate::error::ApiError;
use crate::router::Op;
use crate::validate::Fields;

/// The longest timeout a request may name (ten years).
const MAX_TIMEOUT_SECONDS: i64 = 10 * 365 * 86_400;

/// Standalone activity operations.
pub async fn handle(state: &AppState, op: Op, call: Call) -> Result<Reply, ApiError> {
    match op {
        Op::StartActivity => start(state, call).await,
        Op::DescribeActivity => {
            let view = state
                .engine
                .standalone_activity(&call.namespace, call.param(0))
                .await?;
            Ok(Reply::json(StatusCode::OK, &activity_json(&view)))
        }
        Op::ListActivities => list(state, call).await,
        _ => Err(super::unrouted(op)),
    }
}

async fn start(state: &AppState, call: Call) -> Result<Reply, ApiError> {
    let mut f = Fields::new(&call.body)?;
    let activity_type = f.required_str("activity_type", 255);
    let activity_id = f.optional_id("activity_id", 128);
    let activity_class = f.optional_str("activity_class", 255);
    let business_key = f.optional_str("business_key", 255);
    let task_queue = f
        .optional_str("task_queue", 255)
        .filter(|q| !q.trim().is_empty())
        .unwrap_or_else(|| "default".to_string());
    let retry_policy = f.optional_object("retry_policy");
    let mut timeout = |k: &str| f.optional_int(k, 1, MAX_TIMEOUT_SECONDS).map(|v| v as u64);
    let start_to_close = timeout("start_to_close_timeout_seconds");
    let schedule_to_start = timeout("schedule_to_start_timeout_seconds");
    let schedule_to_close = timeout("schedule_to_close_timeout_seconds");
    let heartbeat = timeout("heartbeat_timeout_seconds");
    let input = match call.body.get("input") {
        None | Some(Value::Null) => super::control::empty_arguments(),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            f.error("input", "must be a payload envelope ({codec, blob})");
            Value::Null
        }
    };
    f.finish()?;
    let request = StartActivity {
        activity_id,
        activity_type: activity_type.unwrap_or_default(),
        activity_class,
        business_key,
        task_queue,
        input,
        retry_policy,
        start_to_close_timeout_seconds: start_to_close,
        schedule_to_start_timeout_seconds: schedule_to_start,
        schedule_to_close_timeout_seconds: schedule_to_close,
        heartbeat_timeout_seconds: heartbeat,
    };
    let view = state
        .engine
        .start_standalone_activity(&call.namespace, request)
        .await?;
    let mut body = activity_json(&view);
    if let Some(obj) = body.as_object_mut() {
        obj.insert("command_status".into(), json!("accepted"));
        obj.insert("command_source".into(), json!("control_plane"));
    }
    Ok(Reply::json(StatusCode::CREATED, &body))
}

async fn list(state: &AppState, call: Call) -> Result<Reply, ApiError> {
    let text = |k: &str| {
        call.query
            .get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let page_size = match text("page_size") {
        None => 50,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            _ => {
                return Err(ApiError::field(
                    "page_size",
                    format!("must be an integer between 1 and {MAX_PAGE_SIZE}"),
                ))
            }
        },
    };
    let status = match text("status").as_deref() {
        None => None,
        Some(s @ ("running" | "completed" | "failed")) => Some(s.to_string()),
        Some(_) => {
            return Err(ApiError::field(
                "status",
                "must be one of: running, completed, failed",
            ))
        }
    };
    let page = state
        .engine
        .standalone_activities(&call.namespace, status, page_size, text("next_page_token"))
        .await?;
    let activities: Vec<Value> = page.runs.iter().map(summary_json).collect();
    Ok(Reply::json(
        StatusCode::OK,
        &json!({
            "activities": activities,
            "activity_count": activities.len(),
            "next_page_token": page.next_page_token,
        }),
    ))
}

/// The SDK treats `pending` and `waiting` alike; the host run's own status is shown.
fn status(run: &RunRecord) -> &'static str {
    match run.status {
        RunStatus::Waiting | RunStatus::Pending => "running",
        s => s.as_str(),
    }
}

fn summary_json(run: &RunRecord) -> Value {
    let a = run.lifecycle.standalone_activity.as_ref();
    json!({
        "activity_id": run.workflow_id,
        "workflow_run_id": run.run_id,
        "activity_type": a.map(|a| a.activity_type.clone()),
        "activity_class": a.and_then(|a| a.activity_class.clone()),
        "task_queue": run.task_queue,
        "status": status(run),
        "status_bucket": run.status.bucket(),
        "business_key": a.and_then(|a| a.business_key.clone()),
        "started_at": format_timestamp(run.started_at_ms),
        "closed_at": run.closed_at_ms.map(format_timestamp),
    })
}

fn activity_json(v: &StandaloneActivityView) -> Value {
    let run = &v.run;
    let a = &v.activity;
    let state = v.task.as_ref().and_then(|t| t.activity.as_ref());
    let activity_status = match (run.status, &v.task) {
        (RunStatus::Completed, _) => "completed",
        (RunStatus::Failed, _) => "failed",
        (RunStatus::Cancelled | RunStatus::Terminated, _) => "cancelled",
        (_, Some(t)) if t.lease.is_some() => "running",
        _ => "pending",
    };
    // The result envelope: the host run's output (the activity's reported result).
    let result = match v.close_payload.get("output") {
        Some(Value::String(blob)) if run.status == RunStatus::Completed => {
            json!({"codec": "avro", "blob": blob})
        }
        Some(o @ Value::Object(_)) if run.status == RunStatus::Completed => o.clone(),
        _ => Value::Null,
    };
    let deadline = |k: &str| -> Value {
        match (&v.task, state) {
            (Some(t), Some(s)) => s
                .options
                .get(k)
                .and_then(Value::as_u64)
                .map(|secs| {
                    json!(format_timestamp(
                        t.ready_at_ms.min(s.scheduled_at_ms) + secs as i64 * 1000
                    ))
                })
                .unwrap_or(Value::Null),
            _ => Value::Null,
        }
    };
    json!({
        "activity_id": run.workflow_id,
        "workflow_id": run.workflow_id,
        "workflow_run_id": run.run_id,
        "workflow_type": run.workflow_type,
        "namespace": run.namespace,
        "activity_type": a.activity_type,
        "activity_class": a.activity_class,
        "activity_execution_id": a.activity_execution_id,
        "activity_status": activity_status,
        "attempt_count": state.map_or_else(
            || if run.status.is_terminal() { Value::Null } else { json!(1) },
            |s| json!(s.attempt_number),
        ),
        "task_queue": run.task_queue,
        "business_key": a.business_key,
        "status": status(run),
        "closed_reason": run.closed_reason,
        "started_at": format_timestamp(run.started_at_ms),
        "closed_at": run.closed_at_ms.map(format_timestamp),
        "last_progress_at": format_timestamp(run.last_progress_at_ms),
        "compatibility": run.build_id,
        "payload_codec": "avro",
        "schedule_to_start_deadline_at": deadline("schedule_to_start_timeout"),
        "schedule_to_close_deadline_at": deadline("schedule_to_close_timeout"),
        "last_heartbeat_at": Value::Null,
        "result": result,
    })
}
