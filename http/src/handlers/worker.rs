//! Worker-plane handlers: registration, long-polls, and task reports.

use std::time::Duration;

use hyper::StatusCode;
use keel_engine::clock::format_timestamp;
use keel_engine::history;
use keel_engine::model::WorkerRecord;
use keel_engine::workflow::Poll;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::call::{AppState, Call, Reply, WorkerReply};
use crate::discovery::{worker_capability_manifest, WORKER_CAPABILITIES};
use crate::error::ApiError;
use crate::router::Op;
use crate::validate::Fields;

const HEARTBEAT_INTERVAL_SECONDS: u64 = 60;

/// The fields of each `start_service_operation` command, named by their path
/// (`commands.{i}.{field}`): non-empty names, a payload blob or envelope, the waiting
/// options from their sets, string identifiers and a positive wait.
fn check_service_commands(commands: &[Value]) -> Result<(), ApiError> {
    let mut errors = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (i, c) in commands.iter().enumerate() {
        if c.get("type").and_then(Value::as_str) != Some("start_service_operation") {
            continue;
        }
        let mut bad = |field: &str, message: &str| {
            errors
                .entry(format!("commands.{i}.{field}"))
                .or_default()
                .push(message.to_string());
        };
        for field in ["endpoint_name", "service_name", "operation_name"] {
            match c.get(field).and_then(Value::as_str) {
                Some(v) if !v.trim().is_empty() && v.len() <= 191 => {}
                _ => bad(field, "A non-empty name of at most 191 bytes is required."),
            }
        }
        for (field, allowed) in [
            ("mode_override", &["sync", "async"][..]),
            ("wait_for", &["accepted", "completed"][..]),
            (
                "duplicate_start_policy",
                &["reject_duplicate", "return_existing_active"][..],
            ),
        ] {
            match c.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::String(v)) if allowed.contains(&v.as_str()) => {}
                Some(_) => bad(field, &format!("Must be one of: {}.", allowed.join(", "))),
            }
        }
        if !matches!(
            c.get("request_payload"),
            None | Some(Value::Null | Value::String(_) | Value::Object(_))
        ) {
            bad("request_payload", "Must be a payload blob or envelope.");
        }
        for field in [
            "namespace",
            "caller_namespace",
            "idempotency_key",
            "target_workflow_instance_id",
            "target_workflow_run_id",
            "queue",
            "business_key",
            "payload_codec",
        ] {
            match c.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::String(v)) if !v.is_empty() && v.len() <= 255 => {}
                Some(_) => bad(field, "Must be a non-empty string of at most 255 bytes."),
            }
        }
        match c.get("wait_timeout_seconds") {
            None | Some(Value::Null) => {}
            Some(v) if v.as_u64().is_some_and(|n| n > 0) => {}
            Some(_) => bad("wait_timeout_seconds", "Must be a positive integer."),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

/// Cross-namespace authority of `start_service_operation`: the worker's token must
/// reach the target namespace as well as its own. A command naming a namespace the token
/// cannot see is marked so the engine records it as `ServiceCallFailed` with
/// `namespace_not_found` (the same answer as a namespace that does not exist), which the
/// workflow observes as a typed failure instead of a task that can never complete.
fn deny_unseen_service_targets(call: &Call, commands: &[Value]) -> Option<Vec<Value>> {
    let unseen = |c: &Value| {
        c.get("type").and_then(Value::as_str) == Some("start_service_operation")
            && c.get("namespace")
                .and_then(Value::as_str)
                .is_some_and(|ns| !call.principal.can_see(&ns.to_ascii_lowercase()))
    };
    if !commands.iter().any(unseen) {
        return None;
    }
    Some(
        commands
            .iter()
            .map(|c| {
                let mut c = c.clone();
                if unseen(&c) {
                    c[keel_engine::services::TARGET_NAMESPACE_DENIED] = Value::Bool(true);
                }
                c
            })
            .collect(),
    )
}

/// Worker-plane operations.
pub async fn handle(state: &AppState, op: Op, call: Call) -> Result<Reply, ApiError> {
    match op {
        Op::RegisterWorker => register(state, call).await,
        Op::HeartbeatWorker => {
            let mut f = Fields::new(&call.body)?;
            let worker_id = f.required_id_str("worker_id", 255);
            f.finish()?;
            let w = state
                .engine
                .heartbeat_worker(&call.namespace, &worker_id)
                .await?;
            reply(
                state,
                StatusCode::OK,
                json!({"worker_id": w.worker_id, "acknowledged": true, "heartbeat_interval_seconds": HEARTBEAT_INTERVAL_SECONDS}),
            )
        }
        Op::DeregisterWorker => {
            let worker_id = call.param(0);
            state
                .engine
                .deregister_worker(&call.namespace, worker_id)
                .await?;
            reply(
                state,
                StatusCode::OK,
                json!({"worker_id": worker_id, "outcome": "deregistered", "recovered_workflow_task_count": 0}),
            )
        }
        Op::PollWorkflowTask => {
            let poll = poll_request(&call, true)?;
            let task = state
                .engine
                .poll_workflow_task(&poll)
                .await
                .inspect_err(|_| {
                    keel_engine::metrics::poll_outcome(
                        keel_engine::model::TaskKind::Workflow,
                        "error",
                    )
                })
                .map_err(poll_error)?;
            let status = if task.is_some() { "leased" } else { "empty" };
            keel_engine::metrics::poll_outcome(keel_engine::model::TaskKind::Workflow, status);
            reply(
                state,
                StatusCode::OK,
                PollReply {
                    task,
                    poll_status: status,
                },
            )
        }
        Op::PollActivityTask => {
            let poll = poll_request(&call, false)?;
            let task = state
                .engine
                .poll_activity_task(&poll)
                .await
                .inspect_err(|_| {
                    keel_engine::metrics::poll_outcome(
                        keel_engine::model::TaskKind::Activity,
                        "error",
                    )
                })
                .map_err(poll_error)?;
            let status = if task.is_some() { "leased" } else { "empty" };
            keel_engine::metrics::poll_outcome(keel_engine::model::TaskKind::Activity, status);
            reply(
                state,
                StatusCode::OK,
                PollReply {
                    task,
                    poll_status: status,
                },
            )
        }
        Op::WorkflowTaskHistory => workflow_task_history(state, call).await,
        Op::HeartbeatWorkflowTask => {
            let (owner, attempt) = workflow_lease(&call)?;
            let task_id = call.param(0);
            let (expires, run_status) = state
                .engine
                .heartbeat_workflow_task(&call.namespace, task_id, &owner, attempt)
                .await?;
            reply(
                state,
                StatusCode::OK,
                json!({
                    "task_id": task_id, "lease_owner": owner, "workflow_task_attempt": attempt, "renewed": true,
                    "lease_expires_at": format_timestamp(expires), "task_status": "leased", "reason": null,
                    "run_status": run_status.as_str(), "cancellation_request": null,
                }),
            )
        }
        Op::CompleteWorkflowTask => {
            let (owner, attempt) = workflow_lease(&call)?;
            let commands = match call.body.get("commands") {
                Some(Value::Array(c)) if !c.is_empty() => c,
                _ => {
                    return Err(ApiError::field(
                        "commands",
                        "The commands field must be a non-empty list.",
                    ))
                }
            };
            let inlined = inline_memo_entries(state, &call.namespace, commands).await?;
            let commands = inlined.as_deref().unwrap_or(commands);
            check_service_commands(commands)?;
            let denied = deny_unseen_service_targets(&call, commands);
            let commands = denied.as_deref().unwrap_or(commands);
            let out = state
                .engine
                .complete_workflow_task(&call.namespace, call.param(0), &owner, attempt, commands)
                .await?;
            if !out.run_id.is_empty() {
                state
                    .engine
                    .note_sticky_cache(&out.run_id, call.body.get("sticky_cache"));
            }
            reply(state, StatusCode::OK, with_attempt(out, attempt))
        }
        Op::FailWorkflowTask => {
            let (owner, attempt) = workflow_lease(&call)?;
            let failure = failure(&call)?;
            let out = state
                .engine
                .fail_workflow_task(&call.namespace, call.param(0), &owner, attempt, &failure)
                .await?;
            reply(state, StatusCode::OK, with_attempt(out, attempt))
        }
        Op::HeartbeatActivityTask => {
            let (attempt_id, owner) = activity_lease(&call)?;
            let task_id = call.param(0);
            let details = call.body.get("details").filter(|d| !d.is_null());
            let heartbeat = state
                .engine
                .heartbeat_activity_task(&call.namespace, task_id, &attempt_id, &owner, details)
                .await;
            let expires = match heartbeat {
                Ok(expires) => expires,
                // The run closed and deleted the task: tell the attempt to stop.
                Err(e) => {
                    let body = crate::handlers::query_tasks::closed_activity_reply(
                        state,
                        &call,
                        task_id,
                        &attempt_id,
                        &owner,
                        e,
                    )
                    .await?;
                    return reply(state, StatusCode::OK, body);
                }
            };
            let now = format_timestamp(state.engine.now_ms());
            reply(
                state,
                StatusCode::OK,
                json!({
                    "task_id": task_id, "activity_attempt_id": attempt_id, "lease_owner": owner,
                    "cancel_requested": false, "can_continue": true, "heartbeat_recorded": true, "reason": null,
                    "lease_expires_at": format_timestamp(expires), "last_heartbeat_at": now,
                }),
            )
        }
        Op::CompleteActivityTask => {
            let (attempt_id, owner) = activity_lease(&call)?;
            let result = call.body.get("result").cloned().unwrap_or(Value::Null);
            let out = state
                .engine
                .complete_activity_task(
                    &call.namespace,
                    call.param(0),
                    &attempt_id,
                    &owner,
                    &result,
                )
                .await;
            let out = match out {
                Ok(out) => out,
                // The run closed and deleted the task: the report is moot, not an error.
                Err(e) => {
                    let body = crate::handlers::query_tasks::closed_activity_report(
                        state,
                        &call,
                        call.param(0),
                        &attempt_id,
                        &owner,
                        e,
                    )
                    .await?;
                    return reply(state, StatusCode::OK, body);
                }
            };
            reply(state, StatusCode::OK, activity_outcome(out, &attempt_id))
        }
        Op::FailActivityTask => {
            let (attempt_id, owner) = activity_lease(&call)?;
            let failure = failure(&call)?;
            let out = state
                .engine
                .fail_activity_task(
                    &call.namespace,
                    call.param(0),
                    &attempt_id,
                    &owner,
                    &failure,
                )
                .await;
            let out = match out {
                Ok(out) => out,
                // The run closed and deleted the task: the report is moot, not an error.
                Err(e) => {
                    let body = crate::handlers::query_tasks::closed_activity_report(
                        state,
                        &call,
                        call.param(0),
                        &attempt_id,
                        &owner,
                        e,
                    )
                    .await?;
                    return reply(state, StatusCode::OK, body);
                }
            };
            reply(state, StatusCode::OK, activity_outcome(out, &attempt_id))
        }
        _ => Err(super::unrouted(op)),
    }
}

/// A poll that could not be served still says so in `poll_status`, with `task: null`.
fn poll_error(e: keel_engine::Error) -> ApiError {
    let e = ApiError::from(e);
    if e.status == StatusCode::SERVICE_UNAVAILABLE && !e.extra.contains_key("poll_status") {
        return e
            .with("poll_status", "unavailable")
            .with("task", Value::Null);
    }
    e
}

fn reply<T: Serialize>(state: &AppState, status: StatusCode, body: T) -> Result<Reply, ApiError> {
    Ok(Reply::json(status, &WorkerReply::new(state, body)))
}

#[derive(Serialize)]
struct PollReply<T: Serialize> {
    task: Option<T>,
    poll_status: &'static str,
}

async fn register(state: &AppState, call: Call) -> Result<Reply, ApiError> {
    let mut f = Fields::new(&call.body)?;
    let worker_id = f.optional_str("worker_id", 255);
    let task_queue = f.required_id_str("task_queue", 255);
    let runtime = f.optional_str("runtime", 64);
    let sdk_version = f.optional_str("sdk_version", 128);
    let build_id = f.optional_str("build_id", 255);
    let supported_workflow_types = f.optional_str_list("supported_workflow_types");
    let supported_activity_types = f.optional_str_list("supported_activity_types");
    let capabilities = f.optional_str_list("capabilities");
    // Keel extension: the operator deployment (`force-redeploy`) this worker answers for.
    let service_url = f.optional_str("service_url", 2048);
    if let Some(Err(m)) = service_url
        .as_deref()
        .map(keel_engine::operator::normalize_service_url)
    {
        f.error("service_url", format!("The service_url field {m}."));
    }
    f.finish()?;
    let contracts = crate::handlers::query_tasks::parse_contracts(&call.body)?;
    let now = state.engine.now_ms();
    let worker = WorkerRecord {
        worker_id: worker_id.unwrap_or_else(|| keel_engine::ids::new_id(now)),
        namespace: call.namespace.clone(),
        task_queue,
        runtime,
        sdk_version,
        build_id,
        supported_workflow_types,
        supported_activity_types,
        capabilities,
        registered_at_ms: now,
        last_heartbeat_at_ms: now,
    };
    let saved = state
        .engine
        .register_worker_endpoint(worker, service_url)
        .await?;
    state
        .engine
        .declare_command_contracts(&call.namespace, &saved.task_queue, &contracts)
        .await?;
    let accepted: Vec<&String> = saved
        .capabilities
        .iter()
        .filter(|c| WORKER_CAPABILITIES.contains(&c.as_str()))
        .collect();
    reply(
        state,
        StatusCode::CREATED,
        json!({
            "worker_id": saved.worker_id, "registered": true, "namespace": saved.namespace,
            "task_queue": saved.task_queue, "heartbeat_interval_seconds": HEARTBEAT_INTERVAL_SECONDS,
            "build_id": saved.build_id, "capabilities": accepted,
            "capability_manifest": worker_capability_manifest(),
        }),
    )
}

fn poll_request(call: &Call, workflow: bool) -> Result<Poll, ApiError> {
    let mut f = Fields::new(&call.body)?;
    let worker_id = f.required_id_str("worker_id", 255);
    let task_queue = f.required_id_str("task_queue", 255);
    let timeout = f.optional_int("timeout_seconds", 0, 60).unwrap_or(30);
    let page = if workflow {
        f.optional_int("history_page_size", 1, 1000).unwrap_or(500)
    } else {
        500
    };
    let poll_request_id = f.optional_str("poll_request_id", 255);
    f.finish()?;
    Ok(Poll {
        namespace: call.namespace.clone(),
        worker_id,
        task_queue,
        timeout: Duration::from_secs(timeout as u64),
        history_page_size: page as usize,
        poll_request_id,
    })
}

fn workflow_lease(call: &Call) -> Result<(String, u32), ApiError> {
    let mut f = Fields::new(&call.body)?;
    let owner = f.required_id_str("lease_owner", 255);
    let attempt = f.required_int("workflow_task_attempt", 1, u32::MAX as i64);
    f.finish()?;
    Ok((owner, attempt as u32))
}

fn activity_lease(call: &Call) -> Result<(String, String), ApiError> {
    let mut f = Fields::new(&call.body)?;
    let attempt_id = f
        .optional_str("activity_attempt_id", 255)
        .or_else(|| f.optional_str("attempt_id", 255));
    let owner = f.required_id_str("lease_owner", 255);
    if attempt_id.is_none() {
        f.error(
            "activity_attempt_id",
            "The activity_attempt_id field is required.",
        );
    }
    f.finish()?;
    Ok((attempt_id.unwrap_or_default(), owner))
}

fn failure(call: &Call) -> Result<Value, ApiError> {
    match call.body.get("failure") {
        Some(f @ Value::Object(_)) if f.get("message").is_some_and(Value::is_string) => {
            Ok(f.clone())
        }
        _ => Err(ApiError::field(
            "failure",
            "The failure field must be an object with a message.",
        )),
    }
}

fn with_attempt(outcome: keel_engine::workflow::TaskOutcome, attempt: u32) -> Value {
    let mut v = serde_json::to_value(outcome).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("workflow_task_attempt".into(), json!(attempt));
        obj.insert("reason".into(), Value::Null);
    }
    v
}

fn activity_outcome(outcome: keel_engine::workflow::TaskOutcome, attempt_id: &str) -> Value {
    let mut v = serde_json::to_value(outcome).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("activity_attempt_id".into(), json!(attempt_id));
        obj.insert("reason".into(), Value::Null);
    }
    v
}

#[derive(Serialize)]
struct HistoryPageReply<'a> {
    task_id: &'a str,
    workflow_task_attempt: u32,
    history_events: Vec<Box<RawValue>>,
    next_history_page_token: Option<String>,
}

async fn workflow_task_history(state: &AppState, call: Call) -> Result<Reply, ApiError> {
    let (owner, attempt) = workflow_lease(&call)?;
    let token = call
        .body
        .get("next_history_page_token")
        .and_then(Value::as_str)
        .unwrap_or("MA==");
    let after = history::decode_token(token).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_page_token",
            "next_history_page_token is not a token this server issued",
        )
    })?;
    let page_size = call
        .body
        .get("history_page_size")
        .and_then(Value::as_u64)
        .unwrap_or(500)
        .clamp(1, 1000) as usize;
    let task_id = call.param(0);
    let page = state
        .engine
        .workflow_task_history(&call.namespace, task_id, &owner, attempt, after, page_size)
        .await?;
    let next = page.more.then(|| history::encode_token(page.last_seq));
    reply(
        state,
        StatusCode::OK,
        HistoryPageReply {
            task_id,
            workflow_task_attempt: attempt,
            history_events: page.events,
            next_history_page_token: next,
        },
    )
}

/// `upsert_memo` entries the SDK sent by reference (its encoded map passed the namespace's
/// payload threshold), fetched and verified, so the engine merges the map itself: the
/// memo is state Keel reads, not a payload it only carries. `None` when no command needs
/// it.
async fn inline_memo_entries(
    state: &AppState,
    ns: &str,
    commands: &[Value],
) -> Result<Option<Vec<Value>>, ApiError> {
    let by_reference = |c: &Value| {
        c.get("type").and_then(Value::as_str) == Some("upsert_memo")
            && c.get("entries")
                .is_some_and(|e| e.get("external_payload").is_some())
    };
    if !commands.iter().any(by_reference) {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(commands.len());
    for c in commands {
        let mut c = c.clone();
        if by_reference(&c) {
            let blobs = state.engine.resolve_payloads(ns, &c["entries"]).await?;
            c["entries"] = keel_engine::payloads::inline_payloads(&c["entries"], &blobs);
        }
        out.push(c);
    }
    Ok(Some(out))
}
