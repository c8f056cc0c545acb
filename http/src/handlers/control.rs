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
            Ok(Reply::json(StatusCode::OK, &run_reply(&view, "describe")))
        }
        Op::DescribeRun => {
            let view = state
                .engine
                .describe(&call.namespace, call.param(0), Some(call.param(1)))
                .await?;
            Ok(Reply::json(
                StatusCode::OK,
                &run_reply(&view, "describe_run"),
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

/// The `schema` of every control-plane block.
const CONTROL_PLANE_SCHEMA: &str = "durable-workflow.v2.control-plane-response";

pub(crate) fn control_block(operation: &str, workflow_id: &str, projected: Value) -> Value {
    let mut block = json!({
        "schema": CONTROL_PLANE_SCHEMA,
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

/// A run as describe answers it. Its fields are in name order, the order serde_json
/// gave them when this reply was built as a `Value` map, so the bytes did not change when
/// it became a struct (serialized straight from the run, nothing built in between).
#[derive(Serialize)]
struct RunReply<'a> {
    actions: RunActions,
    archived_at: Option<String>,
    business_key: Option<()>,
    closed_at: Option<String>,
    closed_reason: &'a Option<String>,
    compatibility: &'a Option<String>,
    continued_from_run_id: &'a Option<String>,
    continued_to_run_id: &'a Option<String>,
    control_plane: RunControlBlock<'a>,
    execution_deadline_at: Option<String>,
    execution_timeout_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<Map<String, Value>>,
    history_event_count: u64,
    input: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_envelope: Option<&'a Value>,
    is_current_run: bool,
    is_terminal: bool,
    last_progress_at: String,
    memo: &'a Value,
    namespace: &'a str,
    output: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_envelope: Option<&'a Value>,
    parent_run_id: Option<&'a str>,
    parent_workflow_id: Option<&'a str>,
    payload_codec: &'static str,
    run_count: u32,
    run_deadline_at: Option<String>,
    run_id: &'a str,
    run_number: u32,
    run_timeout_seconds: Option<u64>,
    search_attributes: &'a Value,
    started_at: String,
    status: &'static str,
    status_bucket: &'static str,
    task_queue: &'a str,
    wait_kind: Option<&'static str>,
    wait_reason: Option<&'static str>,
    workflow_id: &'a str,
    workflow_task_failure: Option<TaskFailureReply<'a>>,
    workflow_type: &'a str,
}

/// What the caller may do with the run (fields in name order, see [`RunReply`]).
#[derive(Serialize)]
struct RunActions {
    can_archive: bool,
    can_cancel: bool,
    can_query: bool,
    can_repair: bool,
    can_signal: bool,
    can_terminate: bool,
    can_update: bool,
}

/// [`control_block`] of a run reply (fields in name order, see [`RunReply`]).
#[derive(Serialize)]
struct RunControlBlock<'a> {
    operation: &'a str,
    run_id: &'a str,
    schema: &'static str,
    status: &'static str,
    version: u32,
    workflow_id: &'a str,
}

/// The run's workflow task failing (fields in name order, see [`RunReply`]).
#[derive(Serialize)]
struct TaskFailureReply<'a> {
    failure_count: u32,
    failure_type: &'a str,
    last_failed_at: String,
    message: &'a str,
}

fn run_reply<'a>(view: &'a RunView, operation: &'a str) -> RunReply<'a> {
    let run = &view.run;
    let ts = |ms: Option<i64>| ms.map(format_timestamp);
    let terminal = run.status.is_terminal();
    let (wait_kind, wait_reason) = match run.status {
        RunStatus::Waiting if !run.open_activities.is_empty() => {
            (Some("activity"), Some("waiting for activity results"))
        }
        RunStatus::Waiting if !run.lifecycle.open_children.is_empty() => {
            (Some("child"), Some("waiting for child workflows"))
        }
        RunStatus::Waiting if !run.waits.timers.is_empty() => {
            (Some("timer"), Some("waiting for a durable timer"))
        }
        RunStatus::Waiting if !run.waits.signal_waits.is_empty() => {
            (Some("signal"), Some("waiting for a signal"))
        }
        RunStatus::Waiting if run.waits.condition.is_some() => (
            Some("condition"),
            Some("waiting for a condition (signals and updates wake it)"),
        ),
        RunStatus::Pending | RunStatus::Running if run.workflow_task_failure.is_some() => (
            Some("workflow_task"),
            Some("workflow task failing; retried with backoff (see workflow_task_failure)"),
        ),
        RunStatus::Pending | RunStatus::Running => (
            Some("workflow_task"),
            Some("workflow task ready or running"),
        ),
        _ => (None, None),
    };
    let open_and_current = !terminal && view.is_current_run;
    let lifecycle = &run.lifecycle;
    let failure = (terminal && run.status != RunStatus::Completed).then(|| {
        view.close_payload
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
            .unwrap_or_default()
    });
    RunReply {
        // Repair serves open runs; archive closed runs not archived yet.
        actions: RunActions {
            can_archive: terminal && lifecycle.archived_at_ms.is_none(),
            can_cancel: open_and_current,
            can_query: true,
            can_repair: !terminal,
            can_signal: open_and_current,
            can_terminate: open_and_current,
            can_update: open_and_current,
        },
        archived_at: ts(lifecycle.archived_at_ms),
        business_key: None,
        closed_at: ts(run.closed_at_ms),
        closed_reason: &run.closed_reason,
        compatibility: &run.build_id,
        continued_from_run_id: &lifecycle.continued_from_run_id,
        continued_to_run_id: &lifecycle.continued_to_run_id,
        control_plane: RunControlBlock {
            operation,
            run_id: &run.run_id,
            schema: CONTROL_PLANE_SCHEMA,
            status: run.status.as_str(),
            version: 1,
            workflow_id: &run.workflow_id,
        },
        execution_deadline_at: ts(run.execution_deadline_ms),
        execution_timeout_seconds: run.execution_timeout_seconds,
        failure,
        history_event_count: run.last_event_seq,
        input: &view.input,
        input_envelope: is_envelope(&view.input).then_some(&view.input),
        is_current_run: view.is_current_run,
        is_terminal: terminal,
        last_progress_at: format_timestamp(run.last_progress_at_ms),
        memo: &run.memo,
        namespace: &run.namespace,
        output: &view.output,
        output_envelope: is_envelope(&view.output).then_some(&view.output),
        parent_run_id: lifecycle.parent.as_ref().map(|p| p.run_id.as_str()),
        parent_workflow_id: lifecycle.parent.as_ref().map(|p| p.workflow_id.as_str()),
        payload_codec: "avro",
        run_count: view.run_count,
        run_deadline_at: ts(run.run_deadline_ms),
        run_id: &run.run_id,
        run_number: run.run_number,
        run_timeout_seconds: run.run_timeout_seconds,
        search_attributes: &run.search_attributes,
        started_at: format_timestamp(run.started_at_ms),
        status: run.status.as_str(),
        status_bucket: run.status.bucket(),
        task_queue: &run.task_queue,
        wait_kind,
        wait_reason,
        workflow_id: &run.workflow_id,
        workflow_task_failure: run
            .workflow_task_failure
            .as_ref()
            .map(|f| TaskFailureReply {
                failure_count: f.failures,
                failure_type: &f.failure_type,
                last_failed_at: format_timestamp(f.at_ms),
                message: &f.message,
            }),
        workflow_type: &run.workflow_type,
    }
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

#[cfg(test)]
mod tests {
    use super::{
        format_timestamp, json, run_reply, RunStatus, RunView, Value, CONTROL_PLANE_SCHEMA,
    };

    /// A failed run, archived, continued from another and started by a parent.
    fn failed_run(input: Value, close_payload: Value) -> RunView {
        let run = json!({
            "namespace": "default", "workflow_id": "w", "run_id": "r", "run_number": 2,
            "workflow_type": "t", "task_queue": "q", "status": "failed", "priority": 5,
            "build_id": "b1", "memo": {"m": 1}, "search_attributes": {"s": "x"},
            "started_at_ms": 1_000, "closed_at_ms": 5_000, "last_progress_at_ms": 4_000,
            "execution_timeout_seconds": null, "run_timeout_seconds": 60,
            "execution_deadline_ms": null, "run_deadline_ms": 61_000, "last_event_seq": 7,
            "last_workflow_sequence": 1, "open_activities": [], "closed_reason": "failed",
            "lifecycle": {"parent": {"workflow_id": "pw", "run_id": "pr", "sequence": 2},
                "continued_from_run_id": "r0", "close_event_seq": 7, "archived_at_ms": 6_000},
        });
        RunView {
            run: serde_json::from_value(run).expect("a run record"),
            run_count: 2,
            is_current_run: true,
            input,
            output: Value::Null,
            close_payload,
        }
    }

    #[test]
    fn a_run_reply_names_its_fields_in_order_and_keeps_only_the_failures_summary() {
        let envelope = json!({"codec": "avro", "blob": "AA=="});
        let close =
            json!({"message": "boom", "exception_type": "E", "stack": "long", "details": [1]});
        let view = failed_run(envelope.clone(), close);
        let reply = serde_json::to_value(run_reply(&view, "describe")).expect("serializes");
        let text = serde_json::to_string(&run_reply(&view, "describe")).expect("serializes");
        // Name order at every level, as the map it replaced wrote it: a `Value` (a sorted
        // map) writes the same bytes.
        assert_eq!(text, serde_json::to_string(&reply).expect("serializes"));

        assert_eq!(
            reply["failure"],
            json!({"message": "boom", "exception_type": "E"})
        );
        assert_eq!(reply["input_envelope"], envelope);
        assert!(
            reply.get("output_envelope").is_none(),
            "no output: no envelope"
        );
        assert_eq!(reply["wait_kind"], Value::Null);
        assert_eq!(
            reply["actions"],
            json!({"can_archive": false, "can_cancel": false, "can_query": true,
                "can_repair": false, "can_signal": false, "can_terminate": false,
                "can_update": false})
        );
        assert_eq!(
            (&reply["parent_workflow_id"], &reply["parent_run_id"]),
            (&json!("pw"), &json!("pr"))
        );
        assert_eq!(reply["continued_from_run_id"], "r0");
        assert_eq!(reply["archived_at"], format_timestamp(6_000));
        assert_eq!(reply["run_deadline_at"], format_timestamp(61_000));
        assert_eq!(reply["execution_deadline_at"], Value::Null);
        assert_eq!(reply["business_key"], Value::Null);
        assert_eq!(
            reply["control_plane"],
            json!({"operation": "describe", "run_id": "r", "schema": CONTROL_PLANE_SCHEMA,
                "status": "failed", "version": 1, "workflow_id": "w"})
        );
    }

    #[test]
    fn an_open_run_reply_says_what_it_waits_for_and_has_no_failure() {
        let mut view = failed_run(json!([1]), Value::Null);
        view.run.status = RunStatus::Running;
        view.run.closed_at_ms = None;
        view.run.lifecycle.archived_at_ms = None;
        let reply = serde_json::to_value(run_reply(&view, "describe_run")).expect("serializes");
        assert!(reply.get("failure").is_none());
        assert!(reply.get("input_envelope").is_none(), "not an envelope");
        assert_eq!(reply["wait_kind"], "workflow_task");
        assert_eq!(reply["is_terminal"], false);
        assert_eq!(reply["actions"]["can_signal"], true);
        assert_eq!(reply["actions"]["can_repair"], true);
        assert_eq!(reply["control_plane"]["operation"], "describe_run");
    }
}
