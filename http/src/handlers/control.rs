//! Control-plane handlers (discovery and health live in `probes`).

use hyper::StatusCode;
use keel_engine::clock::format_timestamp;
use keel_engine::history;
use keel_engine::model::RunStatus;
use keel_engine::workflow::{DuplicatePolicy, RunView, StartWorkflow};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::call::{AppState, Call, Reply};
use crate::error::ApiError;
use crate::router::Op;
use crate::validate::Fields;

/// Control-plane operations.
pub async fn handle(state: &AppState, op: Op, call: Call) -> Result<Reply, ApiError> {
    match op {
        Op::StartWorkflow => start(state, call).await,
        Op::DescribeWorkflow => {
            let view = state
                .engine
                .describe(&call.namespace, call.param(0), None)
                .await?;
            Ok(Reply::json(StatusCode::OK, &run_json(&view, "describe")))
        }
        Op::DescribeRun => {
            let view = state
                .engine
                .describe(&call.namespace, call.param(0), Some(call.param(1)))
                .await?;
            Ok(Reply::json(
                StatusCode::OK,
                &run_json(&view, "describe_run"),
            ))
        }
        Op::RunHistory => run_history(state, call).await,
        _ => Err(super::unrouted(op)),
    }
}

/// The payload envelope of an empty argument list: Avro single-object framing around an
/// empty `ArrayValue`.
pub(crate) fn empty_arguments() -> Value {
    use base64::Engine as _;
    let bytes = [
        0xC3, 0x01, 0xE2, 0xA3, 0x3D, 0xFF, 0x55, 0x80, 0x22, 0x37, 0x0C, 0x00,
    ];
    json!({"codec": "avro", "blob": base64::engine::general_purpose::STANDARD.encode(bytes)})
}

const REJECTED_START_FIELDS: &[&str] = &[
    "workflow_execution_timeout",
    "workflow_run_timeout",
    "workflow_task_timeout",
    "retry_policy",
    "idempotency_key",
    "request_id",
];

async fn start(state: &AppState, call: Call) -> Result<Reply, ApiError> {
    let mut f = Fields::new(&call.body)?;
    for name in REJECTED_START_FIELDS {
        f.reject_present(name, "is not supported on start");
    }
    let workflow_type = f.required_str("workflow_type", 255);
    if workflow_type.as_deref() == Some(keel_engine::workflow::STANDALONE_HOST_TYPE) {
        f.error(
            "workflow_type",
            "is reserved for the host runs of standalone activities (POST /api/activities)",
        );
    }
    let workflow_id = f.optional_id("workflow_id", 128);
    let task_queue = f.required_str("task_queue", 255);
    let execution_timeout_seconds =
        f.optional_int("execution_timeout_seconds", 1, 10 * 365 * 86_400);
    let run_timeout_seconds = f.optional_int("run_timeout_seconds", 1, 10 * 365 * 86_400);
    let priority = f.optional_int("priority", 0, 9).unwrap_or(5) as u8;
    // `reject` is the seed's spelling of `fail` (its own start example sends it).
    let duplicate_policy = match f.optional_str("duplicate_policy", 32).as_deref() {
        None | Some("fail" | "reject") => DuplicatePolicy::Fail,
        Some("use-existing") => DuplicatePolicy::UseExisting,
        Some(_) => {
            f.error(
                "duplicate_policy",
                "must be one of: fail (or its alias reject), use-existing",
            );
            DuplicatePolicy::Fail
        }
    };
    let memo = f.optional_object("memo");
    let search_attributes = f.optional_object("search_attributes");
    let build_id = f.optional_str("build_id", 255);
    let input = match call.body.get("input") {
        None | Some(Value::Null) => empty_arguments(),
        Some(v @ (Value::Object(_) | Value::Array(_) | Value::String(_))) => v.clone(),
        Some(_) => {
            f.error(
                "input",
                "must be a payload envelope, an array or a blob string",
            );
            Value::Null
        }
    };
    f.finish()?;
    if let Some(attributes) = &search_attributes {
        state
            .engine
            .validate_search_attributes(&call.namespace, attributes)
            .await?;
    }
    let request = StartWorkflow {
        workflow_id,
        workflow_type: workflow_type.unwrap_or_default(),
        task_queue: task_queue.unwrap_or_default(),
        input,
        execution_timeout_seconds: execution_timeout_seconds.map(|v| v as u64),
        run_timeout_seconds: run_timeout_seconds.map(|v| v as u64),
        duplicate_policy,
        memo: memo.unwrap_or_else(|| json!({})),
        search_attributes: search_attributes.unwrap_or_else(|| json!({})),
        priority,
        build_id,
    };
    let outcome = state
        .engine
        .start_workflow(&call.namespace, request)
        .await?;
    let run = &outcome.run;
    let (status, label) = if outcome.started_new {
        (StatusCode::CREATED, "started_new")
    } else {
        (StatusCode::OK, "returned_existing_active")
    };
    Ok(Reply::json(
        status,
        &json!({
            "workflow_id": run.workflow_id,
            "run_id": run.run_id,
            "workflow_type": run.workflow_type,
            "namespace": run.namespace,
            "task_queue": run.task_queue,
            "status": run.status.as_str(),
            "business_key": null,
            "payload_codec": "avro",
            "outcome": label,
            "control_plane": control_block("start", &run.workflow_id, json!({"run_id": run.run_id, "outcome": label})),
        }),
    ))
}

pub(crate) fn control_block(operation: &str, workflow_id: &str, projected: Value) -> Value {
    let mut block = json!({
        "schema": "durable-workflow.v2.control-plane-response",
        "version": 1,
        "operation": operation,
        "workflow_id": workflow_id,
    });
    if let (Some(b), Some(p)) = (block.as_object_mut(), projected.as_object()) {
        for (k, v) in p {
            b.insert(k.clone(), v.clone());
        }
    }
    block
}

/// An inline envelope `{codec, blob}`, a runtime reference `{codec, external_payload}`
/// or an SDK-side driver reference `{codec, external_storage}`.
pub(crate) fn is_envelope(v: &Value) -> bool {
    v.get("codec").is_some()
        && (v.get("blob").is_some()
            || v.get("external_payload").is_some()
            || v.get("external_storage").is_some())
}

pub(crate) fn run_json(view: &RunView, operation: &str) -> Value {
    let run = &view.run;
    let ts = |ms: Option<i64>| ms.map(format_timestamp);
    let terminal = run.status.is_terminal();
    let (wait_kind, wait_reason) = match run.status {
        RunStatus::Waiting if !run.open_activities.is_empty() => {
            (json!("activity"), json!("waiting for activity results"))
        }
        RunStatus::Waiting if !run.lifecycle.open_children.is_empty() => {
            (json!("child"), json!("waiting for child workflows"))
        }
        RunStatus::Waiting if !run.waits.timers.is_empty() => {
            (json!("timer"), json!("waiting for a durable timer"))
        }
        RunStatus::Waiting if !run.waits.signal_waits.is_empty() => {
            (json!("signal"), json!("waiting for a signal"))
        }
        RunStatus::Waiting if run.waits.condition.is_some() => (
            json!("condition"),
            json!("waiting for a condition (signals and updates wake it)"),
        ),
        RunStatus::Pending | RunStatus::Running if run.workflow_task_failure.is_some() => (
            json!("workflow_task"),
            json!("workflow task failing; retried with backoff (see workflow_task_failure)"),
        ),
        RunStatus::Pending | RunStatus::Running => (
            json!("workflow_task"),
            json!("workflow task ready or running"),
        ),
        _ => (Value::Null, Value::Null),
    };
    let mut out = json!({
        "workflow_id": run.workflow_id,
        "run_id": run.run_id,
        "namespace": run.namespace,
        "workflow_type": run.workflow_type,
        "business_key": null,
        "status": run.status.as_str(),
        "status_bucket": run.status.bucket(),
        "is_terminal": terminal,
        "closed_reason": run.closed_reason,
        "task_queue": run.task_queue,
        "run_number": run.run_number,
        "run_count": view.run_count,
        "is_current_run": view.is_current_run,
        "compatibility": run.build_id,
        "payload_codec": "avro",
        "execution_timeout_seconds": run.execution_timeout_seconds,
        "run_timeout_seconds": run.run_timeout_seconds,
        "execution_deadline_at": ts(run.execution_deadline_ms),
        "run_deadline_at": ts(run.run_deadline_ms),
        "input": view.input,
        "output": view.output,
        "memo": run.memo,
        "search_attributes": run.search_attributes,
        "started_at": format_timestamp(run.started_at_ms),
        "closed_at": ts(run.closed_at_ms),
        "last_progress_at": format_timestamp(run.last_progress_at_ms),
        "wait_kind": wait_kind,
        "wait_reason": wait_reason,
        "history_event_count": run.last_event_seq,
        "workflow_task_failure": run.workflow_task_failure.as_ref().map(|f| json!({
            "failure_count": f.failures,
            "failure_type": f.failure_type,
            "message": f.message,
            "last_failed_at": format_timestamp(f.at_ms),
        })),
        "actions": {
            "can_signal": !terminal && view.is_current_run, "can_query": true,
            "can_update": !terminal && view.is_current_run,
            "can_cancel": !terminal && view.is_current_run,
            "can_terminate": !terminal && view.is_current_run,
            "can_repair": false, "can_archive": false,
        },
        "control_plane": control_block(operation, &run.workflow_id, json!({"run_id": run.run_id, "status": run.status.as_str()})),
    });
    let obj = out.as_object_mut().expect("invariant: built as an object");
    // Repair serves open runs; archive closed runs not archived yet.
    if let Some(actions) = obj.get_mut("actions").and_then(Value::as_object_mut) {
        actions.insert("can_repair".into(), json!(!terminal));
        actions.insert(
            "can_archive".into(),
            json!(terminal && run.lifecycle.archived_at_ms.is_none()),
        );
    }
    let lifecycle = &run.lifecycle;
    obj.insert("archived_at".into(), json!(ts(lifecycle.archived_at_ms)));
    obj.insert(
        "continued_from_run_id".into(),
        json!(lifecycle.continued_from_run_id),
    );
    obj.insert(
        "continued_to_run_id".into(),
        json!(lifecycle.continued_to_run_id),
    );
    obj.insert(
        "parent_workflow_id".into(),
        json!(lifecycle.parent.as_ref().map(|p| &p.workflow_id)),
    );
    obj.insert(
        "parent_run_id".into(),
        json!(lifecycle.parent.as_ref().map(|p| &p.run_id)),
    );
    if is_envelope(&view.input) {
        obj.insert("input_envelope".into(), view.input.clone());
    }
    if is_envelope(&view.output) {
        obj.insert("output_envelope".into(), view.output.clone());
    }
    if terminal && run.status != RunStatus::Completed {
        let failure: Map<String, Value> = view
            .close_payload
            .as_object()
            .map(|p| {
                p.iter()
                    .filter(|(k, _)| {
                        matches!(
                            k.as_str(),
                            "message"
                                | "exception_type"
                                | "exception_class"
                                | "timeout_kind"
                                | "failure_category"
                        )
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        obj.insert("failure".into(), Value::Object(failure));
    }
    out
}

#[derive(Serialize)]
struct HistoryReply<'a> {
    workflow_id: &'a str,
    run_id: &'a str,
    events: Vec<Box<RawValue>>,
    next_page_token: Option<String>,
}

async fn run_history(state: &AppState, call: Call) -> Result<Reply, ApiError> {
    let page_size = match call.query.get("page_size") {
        None => 100,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ApiError::field(
                    "page_size",
                    "must be an integer between 1 and 1000",
                ))
            }
        },
    };
    let after = match call.query.get("next_page_token").filter(|t| !t.is_empty()) {
        None => 0,
        Some(token) => history::decode_token(token).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_page_token",
                "next_page_token is not a token this server issued",
            )
        })?,
    };
    let (workflow_id, run_id) = (call.param(0), call.param(1));
    let page = state
        .engine
        .history(&call.namespace, workflow_id, run_id, after, page_size)
        .await?;
    let next_page_token = page.more.then(|| history::encode_token(page.last_seq));
    Ok(Reply::json(
        StatusCode::OK,
        &HistoryReply {
            workflow_id,
            run_id,
            events: page.events,
            next_page_token,
        },
    ))
}
