//! Worker-plane routes for query tasks (poll, complete, fail), the command contracts a
//! worker declares at registration, and the heartbeat answer for an activity attempt
//! whose run closed under it.

use std::collections::BTreeMap;
use std::time::Duration;

use hyper::StatusCode;
use keel_engine::clock::format_timestamp;
use keel_engine::model::{CommandContract, RunStatus};
use serde::Serialize;
use serde_json::{json, Value};

use crate::call::{AppState, Call, Reply, WorkerReply};
use crate::error::ApiError;
use crate::router::Op;
use crate::validate::Fields;

fn reply<T: Serialize>(state: &AppState, status: StatusCode, body: T) -> Result<Reply, ApiError> {
    Ok(Reply::json(status, &WorkerReply::new(state, body)))
}

/// Query-task operations.
pub async fn handle(state: &AppState, op: Op, call: Call) -> Result<Reply, ApiError> {
    match op {
        Op::PollQueryTask => {
            let mut f = Fields::new(&call.body)?;
            let worker_id = f.required_id_str("worker_id", 255);
            let task_queue = f.required_id_str("task_queue", 255);
            let timeout = f.optional_int("timeout_seconds", 0, 60).unwrap_or(30);
            f.optional_str("poll_request_id", 255);
            f.optional_str("build_id", 255);
            f.finish()?;
            let task = state
                .engine
                .poll_query_task(
                    &call.namespace,
                    &worker_id,
                    &task_queue,
                    Duration::from_secs(timeout as u64),
                )
                .await?;
            let poll_status = if task.is_some() { "leased" } else { "empty" };
            reply(
                state,
                StatusCode::OK,
                json!({"task": task, "poll_status": poll_status}),
            )
        }
        Op::CompleteQueryTask => {
            let (owner, attempt) = query_lease(&call)?;
            let result = call.body.get("result").cloned().unwrap_or(Value::Null);
            let envelope = call
                .body
                .get("result_envelope")
                .cloned()
                .unwrap_or(Value::Null);
            let out = state.engine.complete_query_task(
                &call.namespace,
                call.param(0),
                &owner,
                attempt,
                result,
                envelope,
            )?;
            reply(state, StatusCode::OK, out)
        }
        Op::FailQueryTask => {
            let (owner, attempt) = query_lease(&call)?;
            let failure = match call.body.get("failure") {
                Some(f @ Value::Object(_)) if f.get("message").is_some_and(Value::is_string) => f,
                _ => {
                    return Err(ApiError::field(
                        "failure",
                        "The failure field must be an object with a message.",
                    ))
                }
            };
            let text = |k: &str| failure.get(k).and_then(Value::as_str).unwrap_or("");
            let reason = match text("reason") {
                "" => "query_rejected",
                r => r,
            };
            let out = state.engine.fail_query_task(
                &call.namespace,
                call.param(0),
                &owner,
                attempt,
                reason,
                text("message"),
            )?;
            reply(state, StatusCode::OK, out)
        }
        _ => Err(super::unrouted(op)),
    }
}

fn query_lease(call: &Call) -> Result<(String, u32), ApiError> {
    let mut f = Fields::new(&call.body)?;
    let owner = f.required_id_str("lease_owner", 255);
    let attempt = f.required_int("query_task_attempt", 1, u32::MAX as i64);
    f.finish()?;
    Ok((owner, attempt as u32))
}

/// Reads `workflow_command_contracts` from a registration body: per workflow type, the
/// signal, query and update names it declares (`{type: {signals: [..], queries: [..],
/// updates: [..], ...}}`; other keys are ignored).
pub fn parse_contracts(body: &Value) -> Result<BTreeMap<String, CommandContract>, ApiError> {
    const FIELD: &str = "workflow_command_contracts";
    let invalid = || {
        ApiError::field(
            FIELD,
            "The workflow_command_contracts field must map workflow types to objects whose \
             signals, queries and updates are lists of names.",
        )
    };
    let types = match body.get(FIELD) {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(types)) => types,
        Some(_) => return Err(invalid()),
    };
    let names = |contract: &Value, key: &str| -> Result<Vec<String>, ApiError> {
        match contract.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string).ok_or_else(invalid))
                .collect(),
            Some(_) => Err(invalid()),
        }
    };
    let mut out = BTreeMap::new();
    for (workflow_type, contract) in types {
        if !contract.is_object() {
            return Err(invalid());
        }
        out.insert(
            workflow_type.clone(),
            CommandContract {
                signals: names(contract, "signals")?,
                queries: names(contract, "queries")?,
                updates: names(contract, "updates")?,
                declared_at_ms: 0,
            },
        );
    }
    Ok(out)
}

/// The reply to a completion or failure of an attempt whose run closed under it: the
/// report is ignored (`outcome: ignored`), since the run no longer waits for it.
pub async fn closed_activity_report(
    state: &AppState,
    call: &Call,
    task_id: &str,
    attempt_id: &str,
    owner: &str,
    error: keel_engine::Error,
) -> Result<Value, ApiError> {
    let Some(closed) = closed_task(state, call, task_id, attempt_id, owner, &error).await? else {
        return Err(error.into());
    };
    Ok(json!({
        "task_id": task_id,
        "activity_attempt_id": attempt_id,
        "outcome": "ignored",
        "recorded": false,
        "run_id": closed.run_id,
        "run_status": closed.run_status.as_str(),
        "next_task_id": null,
        "reason": stop_reason(closed.run_status),
    }))
}

fn stop_reason(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Cancelled => "run_cancelled",
        RunStatus::Terminated => "run_terminated",
        RunStatus::Completed => "run_completed",
        RunStatus::Failed => "run_failed",
        _ => "run_closed",
    }
}

/// The tombstone of the caller's attempt when `error` says its task is gone.
async fn closed_task(
    state: &AppState,
    call: &Call,
    task_id: &str,
    attempt_id: &str,
    owner: &str,
    error: &keel_engine::Error,
) -> Result<Option<keel_engine::model::ClosedTaskRecord>, ApiError> {
    let missing =
        matches!(error, keel_engine::Error::Rejected { reason, .. } if *reason == "task_not_found");
    if !missing {
        return Ok(None);
    }
    Ok(state
        .engine
        .closed_activity_task(&call.namespace, task_id, owner, attempt_id)
        .await?)
}

/// The heartbeat reply for an attempt whose task was deleted because its run closed:
/// a cancelled run asks the activity to cancel (`cancel_requested`), any other close
/// withdraws its authority (`can_continue: false`). Any other failure passes through.
pub async fn closed_activity_reply(
    state: &AppState,
    call: &Call,
    task_id: &str,
    attempt_id: &str,
    owner: &str,
    error: keel_engine::Error,
) -> Result<Value, ApiError> {
    let Some(closed) = closed_task(state, call, task_id, attempt_id, owner, &error).await? else {
        return Err(error.into());
    };
    let cancelled = closed.run_status == RunStatus::Cancelled;
    let stop_reason = stop_reason(closed.run_status);
    Ok(json!({
        "task_id": task_id,
        "activity_attempt_id": attempt_id,
        "lease_owner": owner,
        "cancel_requested": cancelled,
        "can_continue": false,
        "heartbeat_recorded": false,
        "reason": stop_reason,
        "stop_reason": stop_reason,
        "run_id": closed.run_id,
        "run_status": closed.run_status.as_str(),
        "server_time": format_timestamp(state.engine.now_ms()),
    }))
}
