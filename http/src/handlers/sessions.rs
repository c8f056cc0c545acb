//! Worker sessions: the holder's lifecycle calls on the worker plane
//! (`POST /worker/sessions`, `POST /worker/sessions/{id}/heartbeat`,
//! `DELETE /worker/sessions/{id}`) and the operator's reads
//! (`GET /worker-sessions[/{id}]`). The semantics are `keel_engine::sessions`'.

use hyper::StatusCode;
use keel_engine::model::{whole_number, SessionOptions, MAX_SESSION_SECONDS};
use keel_engine::sessions::{SessionOutcome, SessionSnapshot, MAX_SESSION_PAGE};
use serde_json::{json, Value};

use crate::call::{AppState, Call, Reply, WorkerReply};
use crate::error::ApiError;
use crate::router::Op;
use crate::validate::Fields;

/// Sessions a list returns unless `page_size` says otherwise.
const DEFAULT_PAGE_SIZE: usize = 50;

/// Worker-session operations.
pub async fn handle(state: &AppState, op: Op, call: Call) -> Result<Reply, ApiError> {
    match op {
        Op::CreateWorkerSession => create(state, call).await,
        Op::HeartbeatWorkerSession => heartbeat(state, call).await,
        Op::CloseWorkerSession => close(state, call).await,
        Op::ListWorkerSessions => list(state, call).await,
        Op::DescribeWorkerSession => {
            let session_id = path_session_id(&call)?;
            let snapshot = state
                .engine
                .worker_session(&call.namespace, &session_id)
                .await?;
            Ok(Reply::json(
                StatusCode::OK,
                &json!({"namespace": call.namespace, "session": snapshot.to_json()}),
            ))
        }
        _ => Err(super::unrouted(op)),
    }
}

/// The `{id}` of the path: at most 255 bytes (the router guarantees it is not empty).
fn path_session_id(call: &Call) -> Result<String, ApiError> {
    let id = call.param(0);
    if id.len() > 255 || id.trim().is_empty() {
        return Err(ApiError::field(
            "session_id",
            "The session_id must be a non-empty string of at most 255 characters.",
        ));
    }
    Ok(id.to_string())
}

/// `workerSessionOperationResult` in the worker envelope.
fn operation_reply(
    state: &AppState,
    outcome: SessionOutcome,
    snapshot: &SessionSnapshot,
) -> Result<Reply, ApiError> {
    let status = if outcome == SessionOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = json!({
        "admitted": true,
        "outcome": outcome.as_str(),
        "session": snapshot.to_json(),
        "activity_task_id": null,
        "status": status.as_u16(),
        "reason": null,
    });
    Ok(Reply::json(status, &WorkerReply::new(state, body)))
}

async fn create(state: &AppState, call: Call) -> Result<Reply, ApiError> {
    let mut f = Fields::new(&call.body)?;
    let worker_id = f.required_id_str("worker_id", 255);
    let options = match SessionOptions::from_wire(&call.body) {
        Ok(options) => Some(options),
        Err((field, message)) => {
            f.error(if field.is_empty() { "body" } else { &field }, message);
            None
        }
    };
    f.finish()?;
    let options = options.expect("invariant: finish() reported every field error");
    let (outcome, snapshot) = state
        .engine
        .create_worker_session(&call.namespace, &worker_id, options)
        .await?;
    operation_reply(state, outcome, &snapshot)
}

async fn heartbeat(state: &AppState, call: Call) -> Result<Reply, ApiError> {
    let session_id = path_session_id(&call)?;
    let mut f = Fields::new(&call.body)?;
    let worker_id = f.required_id_str("worker_id", 255);
    let lease_seconds = match call.body.get("lease_seconds") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match whole_number(n) {
            Some(s) if (1..=MAX_SESSION_SECONDS).contains(&s) => Some(s),
            _ => {
                f.error(
                    "lease_seconds",
                    format!(
                        "The lease_seconds field must be an integer between 1 and {MAX_SESSION_SECONDS}."
                    ),
                );
                None
            }
        },
        Some(_) => {
            f.error(
                "lease_seconds",
                "The lease_seconds field must be an integer.",
            );
            None
        }
    };
    f.finish()?;
    let snapshot = state
        .engine
        .heartbeat_worker_session(&call.namespace, &session_id, &worker_id, lease_seconds)
        .await?;
    operation_reply(state, SessionOutcome::HeartbeatRecorded, &snapshot)
}

async fn close(state: &AppState, call: Call) -> Result<Reply, ApiError> {
    let session_id = path_session_id(&call)?;
    let mut f = Fields::new(&call.body)?;
    let worker_id = f.required_id_str("worker_id", 255);
    let reason = f.optional_str("reason", 255);
    f.finish()?;
    let (outcome, snapshot) = state
        .engine
        .close_worker_session(&call.namespace, &session_id, &worker_id, reason.as_deref())
        .await?;
    operation_reply(state, outcome, &snapshot)
}

async fn list(state: &AppState, call: Call) -> Result<Reply, ApiError> {
    let text = |k: &str| {
        call.query
            .get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let page_size = match text("page_size") {
        None => DEFAULT_PAGE_SIZE,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_SESSION_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::field(
                    "page_size",
                    format!("must be an integer between 1 and {MAX_SESSION_PAGE}"),
                ))
            }
        },
    };
    let page = state
        .engine
        .worker_sessions(
            &call.namespace,
            page_size,
            text("next_page_token").as_deref(),
        )
        .await?;
    let sessions: Vec<Value> = page.sessions.iter().map(SessionSnapshot::to_json).collect();
    Ok(Reply::json(
        StatusCode::OK,
        &json!({
            "namespace": call.namespace,
            "metrics": page.metrics.to_json(),
            "sessions": sessions,
            "next_page_token": page.next_page_token,
        }),
    ))
}
