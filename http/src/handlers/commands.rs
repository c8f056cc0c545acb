//! Control-plane workflow commands: signal, query, update, cancel and terminate, each
//! on the current run (`/workflows/{id}/...`) or a named run
//! (`/workflows/{id}/runs/{runId}/...`).
//!
//! Statuses: signal 202; query 200 (404 `query_not_found`, 409
//! `query_worker_unavailable`, 504 `query_worker_timeout`); update 202 accepted, 200
//! completed, 422 `update_failed`; cancel and terminate 200. A closed run is 409
//! `run_not_active`, a run-targeted command on a run that is not current 409
//! `historical_run_command_rejected`.

use std::time::Duration;

use hyper::StatusCode;
use keel_engine::avro::{self, AvroValue};
use keel_engine::clock::format_timestamp;
use keel_engine::model::UpdateStatus;
use keel_engine::queries::QueryRequest;
use keel_engine::workflow::{CloseCommand, SignalRequest, UpdateRequest, UpdateWait};
use serde_json::{json, Value};

use crate::call::{AppState, Call, Reply};
use crate::discovery::MAX_OPERATION_NAME_BYTES;
use crate::error::ApiError;
use crate::router::Op;
use crate::validate::Fields;
/// How long a query waits for a worker unless the caller says otherwise.
const DEFAULT_QUERY_TIMEOUT_SECONDS: i64 = 20;
/// How long `wait_for: completed` waits unless the caller says otherwise.
const DEFAULT_UPDATE_WAIT_SECONDS: i64 = 30;

/// Workflow command operations.
pub async fn handle(state: &AppState, op: Op, call: Call) -> Result<Reply, ApiError> {
    // Run-targeted routes carry the run id as the second path parameter.
    let (run_id, name) = match op {
        Op::SignalRun | Op::QueryRun | Op::UpdateRun => {
            (Some(call.param(1).to_string()), call.param(2).to_string())
        }
        Op::CancelRun | Op::TerminateRun => (Some(call.param(1).to_string()), String::new()),
        _ => (None, call.param(1).to_string()),
    };
    match op {
        Op::SignalWorkflow | Op::SignalRun => signal(state, &call, run_id, name).await,
        Op::QueryWorkflow | Op::QueryRun => query(state, &call, run_id, name).await,
        Op::UpdateWorkflow | Op::UpdateRun => update(state, &call, run_id, name).await,
        Op::CancelWorkflow | Op::CancelRun => {
            close(state, &call, run_id, CloseCommand::Cancel).await
        }
        Op::TerminateWorkflow | Op::TerminateRun => {
            close(state, &call, run_id, CloseCommand::Terminate).await
        }
        _ => Err(super::unrouted(op)),
    }
}

fn control_block(operation: &str, workflow_id: &str, projected: &Value) -> Value {
    let mut block = json!({
        "schema": "durable-workflow.v2.control-plane-response",
        "version": 1,
        "operation": operation,
        "workflow_id": workflow_id,
    });
    if let (Some(b), Some(p)) = (block.as_object_mut(), projected.as_object()) {
        for key in [
            "outcome",
            "run_id",
            "command_id",
            "command_status",
            "target_scope",
            "update_id",
            "update_status",
            "query_name",
        ] {
            if let Some(v) = p.get(key) {
                b.insert(key.into(), v.clone());
            }
        }
    }
    block
}

fn with_control(mut body: Value, operation: &str, workflow_id: &str) -> Value {
    let block = control_block(operation, workflow_id, &body);
    if let Some(obj) = body.as_object_mut() {
        obj.insert("control_plane".into(), block);
    }
    body
}

/// Checks a signal, query or update name from the path.
fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > MAX_OPERATION_NAME_BYTES {
        return Err(ApiError::field(
            field,
            format!("The {field} must be 1 to {MAX_OPERATION_NAME_BYTES} bytes."),
        )
        .with("max_operation_name_length", MAX_OPERATION_NAME_BYTES));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::field(
            field,
            format!("The {field} must not contain control characters."),
        ));
    }
    Ok(())
}

/// The argument envelope of a command: an envelope as sent, a raw blob string wrapped,
/// a JSON array encoded as the argument list, absent meaning no arguments.
fn input(f: &mut Fields<'_>, body: &Value) -> Value {
    match body.get("input") {
        None | Some(Value::Null) => avro::envelope(&AvroValue::Array(Vec::new())),
        Some(Value::Object(env)) if env.get("blob").is_some_and(Value::is_string) => {
            Value::Object(env.clone())
        }
        // Payloads stored outside history travel as references (checked by the pipeline).
        Some(v @ Value::Object(_)) if super::control::is_envelope(v) => v.clone(),
        Some(Value::String(blob)) => json!({"codec": "avro", "blob": blob}),
        Some(v @ Value::Array(_)) => avro::envelope(&AvroValue::from_json(v)),
        Some(_) => {
            f.error(
                "input",
                "The input field must be a payload envelope ({codec, blob}, or a reference {codec, external_payload} or {codec, external_storage}), a blob string or an argument array.",
            );
            Value::Null
        }
    }
}

fn request_id(f: &mut Fields<'_>) -> Option<String> {
    let id = f.optional_str("request_id", 255);
    if id.as_deref() == Some("") {
        f.error("request_id", "The request_id field must not be empty.");
    }
    id
}

async fn signal(
    state: &AppState,
    call: &Call,
    run_id: Option<String>,
    name: String,
) -> Result<Reply, ApiError> {
    check_name("signal_name", &name)?;
    let mut f = Fields::new(&call.body)?;
    let input = input(&mut f, &call.body);
    let request_id = request_id(&mut f);
    f.finish()?;
    let req = SignalRequest {
        workflow_id: call.param(0).to_string(),
        run_id,
        signal_name: name,
        input,
        request_id,
    };
    let receipt = state.engine.signal_workflow(&call.namespace, &req).await?;
    Ok(Reply::json(
        StatusCode::ACCEPTED,
        &with_control(receipt, "signal", &req.workflow_id),
    ))
}

async fn query(
    state: &AppState,
    call: &Call,
    run_id: Option<String>,
    name: String,
) -> Result<Reply, ApiError> {
    check_name("query_name", &name)?;
    let mut f = Fields::new(&call.body)?;
    let input = input(&mut f, &call.body);
    let timeout = f
        .optional_int("timeout_seconds", 1, 60)
        .unwrap_or(DEFAULT_QUERY_TIMEOUT_SECONDS);
    f.finish()?;
    let target_scope = if run_id.is_some() { "run" } else { "instance" };
    let req = QueryRequest {
        workflow_id: call.param(0).to_string(),
        run_id,
        query_name: name,
        input,
        timeout: Duration::from_secs(timeout as u64),
    };
    let answer = state
        .engine
        .query_workflow(&call.namespace, &req)
        .await
        .map_err(|e| ApiError::from(e).with("control_plane_operation", "query"))?;
    let body = json!({
        "result": answer.result,
        "result_envelope": answer.result_envelope,
        "query_name": answer.query_name,
        "workflow_id": answer.workflow_id,
        "run_id": answer.run_id,
        "workflow_type": answer.workflow_type,
        "target_scope": target_scope,
        "outcome": "query_answered",
    });
    Ok(Reply::json(
        StatusCode::OK,
        &with_control(body, "query", &req.workflow_id),
    ))
}

async fn update(
    state: &AppState,
    call: &Call,
    run_id: Option<String>,
    name: String,
) -> Result<Reply, ApiError> {
    check_name("update_name", &name)?;
    let mut f = Fields::new(&call.body)?;
    let input = input(&mut f, &call.body);
    let request_id = request_id(&mut f);
    f.reject_present("wait_policy", "is not supported; use wait_for");
    let wait_for = match f.optional_str("wait_for", 32).as_deref() {
        None | Some("accepted") => UpdateWait::Accepted,
        Some("completed") => UpdateWait::Completed,
        Some(_) => {
            f.error(
                "wait_for",
                "The wait_for field must be one of: accepted, completed.",
            );
            UpdateWait::Accepted
        }
    };
    let wait_timeout_seconds = f
        .optional_int("wait_timeout_seconds", 1, 300)
        .unwrap_or(DEFAULT_UPDATE_WAIT_SECONDS);
    f.finish()?;
    let req = UpdateRequest {
        workflow_id: call.param(0).to_string(),
        run_id,
        update_name: name,
        input,
        request_id,
        wait_for,
        wait_timeout: Duration::from_secs(wait_timeout_seconds as u64),
    };
    let out = state.engine.update_workflow(&call.namespace, &req).await?;
    let u = &out.update;
    let ts = |ms: Option<i64>| ms.map(format_timestamp);
    let mut body = json!({
        "update_id": u.update_id,
        "update_name": u.update_name,
        "update_status": u.status.as_str(),
        "workflow_id": u.workflow_id,
        "run_id": u.run_id,
        "workflow_type": out.workflow_type,
        "command_id": u.command_id,
        "command_status": "accepted",
        "target_scope": if out.run_targeted { "run" } else { "instance" },
        "request_id": u.request_id,
        "retained": out.retained,
        "wait_for": match req.wait_for { UpdateWait::Accepted => "accepted", UpdateWait::Completed => "completed" },
        "wait_timed_out": out.wait_timed_out,
        "wait_timeout_seconds": wait_timeout_seconds,
        "accepted_at": format_timestamp(u.accepted_at_ms),
        "closed_at": ts(u.closed_at_ms),
    });
    let obj = body.as_object_mut().expect("invariant: built as an object");
    let status = match u.status {
        UpdateStatus::Accepted => {
            obj.insert("outcome".into(), json!("update_accepted"));
            StatusCode::ACCEPTED
        }
        UpdateStatus::Completed => {
            obj.insert("outcome".into(), json!("update_completed"));
            obj.insert("result".into(), u.result.clone().unwrap_or(Value::Null));
            obj.insert(
                "result_envelope".into(),
                u.result.clone().unwrap_or(Value::Null),
            );
            obj.insert("applied_at".into(), json!(ts(u.closed_at_ms)));
            StatusCode::OK
        }
        UpdateStatus::Failed => {
            let message = u
                .failure_message
                .clone()
                .unwrap_or_else(|| "update failed".into());
            let mut error = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "update_failed",
                message.clone(),
            )
            .with("outcome", "update_failed")
            .with("failure_message", message.clone())
            .with(
                "failure",
                json!({"type": u.failure_type, "message": message}),
            );
            for (k, v) in obj.iter() {
                if !error.extra.contains_key(k) {
                    error = error.with(k, v.clone());
                }
            }
            let control = control_block("update", &u.workflow_id, &error.body());
            return Err(error.with("control_plane", control));
        }
    };
    Ok(Reply::json(
        status,
        &with_control(body, "update", &req.workflow_id),
    ))
}

async fn close(
    state: &AppState,
    call: &Call,
    run_id: Option<String>,
    command: CloseCommand,
) -> Result<Reply, ApiError> {
    let mut f = Fields::new(&call.body)?;
    let reason = f.optional_str("reason", 1000);
    request_id(&mut f);
    f.finish()?;
    let operation = match command {
        CloseCommand::Cancel => "cancel",
        CloseCommand::Terminate => "terminate",
    };
    let workflow_id = call.param(0);
    let receipt = state
        .engine
        .close_workflow(
            &call.namespace,
            workflow_id,
            run_id.as_deref(),
            command,
            reason.as_deref(),
        )
        .await?;
    Ok(Reply::json(
        StatusCode::OK,
        &with_control(receipt, operation, workflow_id),
    ))
}
