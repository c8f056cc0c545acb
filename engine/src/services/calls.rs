//! Durable service calls: created by the execute route or by a workflow's
//! `start_service_operation` command, both through [`admit_in_txn`].
//!
//! * **Bindings.** `start_workflow` starts the linked workflow in the target namespace in
//!   the call's own transaction; the call stays open until that run closes.
//!   `signal_workflow` signals an existing workflow (the binding's or the request's
//!   `target_workflow_instance_id`) with the command key `service-call:{id}` and closes
//!   the call at once. `update_workflow` sends an update the same way and closes the call
//!   with the update's outcome (the kernel's `UpdateClosed` event). `activity_execution`
//!   runs a standalone activity whose host run is the linked run. `invocable_http` and
//!   `query_workflow` are *dispatched*: the call is admitted with a dispatch timer due at
//!   once; when it fires, [`lease_dispatch`] leases an attempt (a new dispatch timer at
//!   the attempt's timeout plus a margin is its lease), the engine runs the HTTP request
//!   or the query outside any transaction, and [`finish_dispatch`] records the outcome,
//!   fenced by the lease. A lapsed lease (a crash mid-request) redelivers the attempt:
//!   at least once, with the call id as the request's `Idempotency-Key`. 2xx completes
//!   the call with the body as its result; 4xx fails it; 5xx, connect errors and
//!   timeouts are retried under the operation's `retry_policy` (`max_attempts`,
//!   `backoff_seconds` or `initial_interval_seconds`/`backoff_coefficient`/
//!   `maximum_interval_seconds`, `non_retryable_error_types`). An `invocable_http` URL
//!   whose host is not on the operator's allow-list is refused at admission (409
//!   `invocable_http_host_not_allowed`) and again at each attempt. Other binding kinds
//!   are refused with 409 `binding_not_supported`.
//! * **Idempotency.** A call is indexed by `(target namespace, operation, caller
//!   namespace, idempotency_key)`: a resent execute or a replayed command finds the first
//!   call and never creates a second one.
//! * **Closing.** A call closes once: when its linked run closes (the kernel's `RunClosed`
//!   event, routed here by `wiring/hooks.rs`), when it is cancelled, or when its deadline
//!   timer fires. The stored status is then final, so a cancel racing a completion
//!   leaves whichever committed first. Closing records the outcome in every waiting
//!   caller's history (`ServiceCallCompleted`/`Failed`/`Cancelled`) and wakes it.
//! * **Callers.** A workflow caller gets `ServiceCallStarted` at its command's sequence.
//!   With `wait_for: accepted` or mode `async` that event resolves the SDK's step and the
//!   caller hears nothing more; otherwise the caller waits for the closing event. When a
//!   waiting caller's run closes first, its open calls are cancelled (their linked runs
//!   too), unless the operation's `cancellation_policy.mode` is `abandon`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::avro::{envelope, AvroValue};
use crate::clock::{format_timestamp, Millis};
use crate::error::{Error, RejectKind, Result};
use crate::kernel::Engine;
use crate::kernel::{self, Effects};
use crate::keys::{prefix, Key};
use crate::model::{
    InstanceRecord, RunRecord, RunStatus, TimerAction, TimerKey, UpdateRecord, UpdateStatus,
};
use crate::storage::{KvTxn, ReadOptions};
use crate::workflow::{
    accept_update_in_txn, close_in_txn, record_service_call_event, signal_in_txn, start_in_txn,
    start_standalone_in_txn, update_key, CloseCommand, DuplicatePolicy, SignalRequest,
    StartActivity, StartWorkflow, UpdateRequest, UpdateWait,
};
use crate::{history, ids, tables};

use crate::namespaces::{check_attributes, search_attribute_registry};

use super::catalog::{load_operation, normalize_name, OperationRecord};
use super::outbound::{host_allowed, parse_http_url};
use crate::kernel::ServiceHttpConfig;

/// Set on a `start_service_operation` command by the HTTP front when the worker's token
/// cannot reach the command's target namespace: the call is refused as if the namespace
/// did not exist.
pub const TARGET_NAMESPACE_DENIED: &str = "keel_target_namespace_denied";

/// Why an `invocable_http` call to a host outside the operator's allow-list is refused.
pub const HOST_NOT_ALLOWED: &str = "invocable_http_host_not_allowed";

/// Most open calls one run closing visits in its transaction (as caller or as linked run).
const MAX_CALLS_PER_RUN: usize = 256;

/// A request to execute an operation (validated by the HTTP front).
#[derive(Debug, Clone, Default)]
pub struct ExecuteRequest {
    /// The arguments envelope.
    pub arguments: Value,
    pub mode_override: Option<String>,
    pub idempotency_key: Option<String>,
    /// The namespace the call comes from (defaults to the target namespace).
    pub caller_namespace: Option<String>,
    pub caller_workflow_instance_id: Option<String>,
    pub caller_workflow_run_id: Option<String>,
    /// The workflow id the started workflow gets (default `svc-{call id}`); for a
    /// `signal_workflow` binding, the workflow signalled when the binding names none.
    pub target_workflow_instance_id: Option<String>,
    /// Task queue of the started workflow when the binding names none.
    pub queue: Option<String>,
    pub business_key: Option<String>,
    /// `return_existing_active` (default) or `reject_duplicate`.
    pub reject_duplicate: bool,
    /// The run a `signal_workflow`, `update_workflow` or `query_workflow` binding targets
    /// (default: the workflow's current run).
    pub target_workflow_run_id: Option<String>,
    /// Memo of the workflow a `start_workflow` binding starts (a plain JSON map).
    pub memo: Option<Value>,
    /// Search attributes of the workflow a `start_workflow` binding starts (checked
    /// against the target namespace's registry).
    pub search_attributes: Option<Value>,
}

/// A workflow that called an operation through `start_service_operation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallerLink {
    pub namespace: String,
    pub workflow_id: String,
    pub run_id: String,
    /// The command's workflow sequence: every event for this caller carries it.
    pub sequence: u64,
    /// Whether the caller waits for the outcome (sync mode waiting for completion);
    /// otherwise `ServiceCallStarted` resolved its step.
    pub waits: bool,
    /// Fields copied into each of its events as its command named them (the SDK compares
    /// names, idempotency key, target namespace, mode and `wait_for` on replay).
    pub echo: Value,
}

/// One durable service call, stored under its operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceCallRecord {
    pub id: String,
    /// The target namespace (the catalog's).
    pub namespace: String,
    pub endpoint_id: String,
    pub endpoint_name: String,
    pub service_id: String,
    pub service_name: String,
    pub operation_id: String,
    pub operation_name: String,
    pub caller_namespace: String,
    pub caller_workflow_instance_id: Option<String>,
    pub caller_workflow_run_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub operation_mode: String,
    pub resolved_binding_kind: String,
    pub resolved_target_reference: String,
    /// The run that carries the call out (started or signalled).
    pub linked_workflow_instance_id: String,
    pub linked_workflow_run_id: String,
    /// The operation's policies when the call was accepted.
    pub policies: Value,
    /// Set when the call was cancelled through its cancel route or its caller closed.
    pub cancel_reason: Option<String>,
    pub accepted_at_ms: Millis,
    pub cancelled_at_ms: Option<Millis>,
    /// The final status once closed (`completed`, `failed`, `cancelled`, `timed_out`);
    /// `None` while open. Set once: a later close attempt changes nothing.
    #[serde(default)]
    pub status: Option<String>,
    /// The result envelope of a completed call.
    #[serde(default)]
    pub output: Value,
    /// Why a call failed, was cancelled or timed out.
    #[serde(default)]
    pub message: Option<String>,
    /// The linked workflow's failure type, when it failed.
    #[serde(default)]
    pub error_type: Option<String>,
    #[serde(default)]
    pub closed_at_ms: Option<Millis>,
    /// Workflows that called it (a replayed command adds none).
    #[serde(default)]
    pub callers: Vec<CallerLink>,
    /// The deadline timer while open.
    #[serde(default)]
    pub deadline_timer: Option<TimerKey>,
    #[serde(default)]
    pub deadline_at_ms: Option<Millis>,
    /// The update that carries the call out (`update_workflow` bindings).
    #[serde(default)]
    pub linked_workflow_update_id: Option<String>,
    /// The arguments envelope, kept for the bindings Keel carries out itself
    /// (`invocable_http`, `query_workflow`); null for the others.
    #[serde(default)]
    pub arguments: Value,
    /// The timer that runs the next attempt of a dispatched binding, or whose firing
    /// means the current attempt's lease lapsed (its outcome was never recorded).
    #[serde(default)]
    pub dispatch_timer: Option<TimerKey>,
    /// Attempts of a dispatched binding started so far.
    #[serde(default)]
    pub attempts: u32,
    /// Attempts whose lease lapsed without an outcome (a crash mid-request).
    #[serde(default)]
    pub lapsed_attempts: u32,
    /// Why the last failed attempt failed (a retry follows).
    #[serde(default)]
    pub last_attempt_failure: Option<String>,
    /// An attempt was leased and its outcome is not recorded yet.
    #[serde(default)]
    pub attempt_in_flight: bool,
}

/// A call as answered to clients.
#[derive(Debug, Clone)]
pub struct ServiceCallView {
    pub call: ServiceCallRecord,
    /// `started`, `completed`, `failed`, `cancelled` or `timed_out`.
    pub status: &'static str,
    /// The result envelope, when completed.
    pub output: Value,
    /// The failure message, when failed, cancelled or timed out.
    pub message: Option<String>,
    pub closed_at_ms: Option<Millis>,
    /// Whether an earlier request with the same idempotency key created it.
    pub idempotent_replay: bool,
}

/// How a call ends.
struct Outcome {
    status: &'static str,
    output: Value,
    message: Option<String>,
    error_type: Option<String>,
}

fn static_status(s: &str) -> &'static str {
    match s {
        "completed" => "completed",
        "failed" => "failed",
        "cancelled" => "cancelled",
        "timed_out" => "timed_out",
        _ => "started",
    }
}

fn call_key_parts(ns: &str, endpoint: &str, service: &str, operation: &str, id: &str) -> Vec<u8> {
    Key::new(prefix::SERVICE_CALL)
        .str(ns)
        .str(endpoint)
        .str(service)
        .str(operation)
        .str(id)
        .into_bytes()
}

fn call_key(ns: &str, op: &OperationRecord, id: &str) -> Vec<u8> {
    call_key_parts(
        ns,
        &op.endpoint_name,
        &op.service_name,
        &op.operation_name,
        id,
    )
}

fn record_key(call: &ServiceCallRecord) -> Vec<u8> {
    call_key_parts(
        &call.namespace,
        &call.endpoint_name,
        &call.service_name,
        &call.operation_name,
        &call.id,
    )
}

fn idempotency_key(ns: &str, op: &OperationRecord, caller_ns: &str, key: &str) -> Vec<u8> {
    Key::new(prefix::SERVICE_CALL_KEY)
        .str(ns)
        .str(&op.endpoint_name)
        .str(&op.service_name)
        .str(&op.operation_name)
        .str(caller_ns)
        .str(key)
        .into_bytes()
}

/// Writes the index entry `index` → `call_key`, marking its namespace as one with
/// service-call indexes (written once, so closing runs that read the mark conflict with
/// at most that first write).
async fn put_index(txn: &mut dyn KvTxn, index: Key, ns: &str, call_key: &[u8]) -> Result<()> {
    let mark = Key::new(prefix::SERVICE_CALL_NAMESPACE)
        .str(ns)
        .into_bytes();
    if txn.get_snapshot(&mark).await?.is_none() {
        txn.set(&mark, &[]);
    }
    tables::put_bytes(txn, &index.into_bytes(), call_key);
    Ok(())
}

/// Whether any service-call index entry was ever written in `ns` (a conflict-tracked
/// read: a first entry written concurrently makes the reader retry and see it).
async fn has_indexes(txn: &mut dyn KvTxn, ns: &str) -> Result<bool> {
    let mark = Key::new(prefix::SERVICE_CALL_NAMESPACE)
        .str(ns)
        .into_bytes();
    Ok(txn.get(&mark).await?.is_some())
}

fn by_run_key(ns: &str, run_id: &str, call_id: &str) -> Key {
    Key::new(prefix::SERVICE_CALL_BY_RUN)
        .str(ns)
        .str(run_id)
        .str(call_id)
}

fn by_update_key(ns: &str, run_id: &str, update_id: &str, call_id: &str) -> Key {
    Key::new(prefix::SERVICE_CALL_BY_UPDATE)
        .str(ns)
        .str(run_id)
        .str(update_id)
        .str(call_id)
}

fn by_caller_key(ns: &str, run_id: &str, call_id: &str) -> Key {
    Key::new(prefix::SERVICE_CALL_BY_CALLER)
        .str(ns)
        .str(run_id)
        .str(call_id)
}

/// The call keys an index range (`by_run` or `by_caller` of one run) points at.
async fn indexed_calls(
    txn: &mut dyn KvTxn,
    index_prefix: u8,
    ns: &str,
    run_id: &str,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let range = Key::new(index_prefix).str(ns).str(run_id).range();
    let pairs = txn
        .get_range(&range, ReadOptions::limit(MAX_CALLS_PER_RUN))
        .await?;
    let (records, _) = tables::assemble(pairs)?;
    Ok(records)
}

fn unsupported_binding(op: &OperationRecord) -> Error {
    Error::reject(
        RejectKind::Conflict,
        "binding_not_supported",
        format!(
            "operation '{}' is bound to {}, which Keel does not execute (it runs start_workflow, signal_workflow, update_workflow and activity_execution bindings)",
            op.operation_name, op.spec.handler_binding_kind
        ),
    )
    .with(
        "handler_binding_kind",
        op.spec.handler_binding_kind.as_str(),
    )
}

fn bad_url(op: &OperationRecord, why: &str) -> Error {
    Error::reject(
        RejectKind::Conflict,
        "invocable_http_url_invalid",
        format!(
            "operation '{}' is bound to an unusable URL: {why}",
            op.operation_name
        ),
    )
    .with("operation_name", op.operation_name.as_str())
}

fn host_not_allowed(op: &OperationRecord, authority: &str) -> Error {
    Error::reject(
        RejectKind::Conflict,
        HOST_NOT_ALLOWED,
        format!(
            "operation '{}' calls {authority}, which is not on this server's --service-http-allow list",
            op.operation_name
        ),
    )
    .with("operation_name", op.operation_name.as_str())
    .with("host", authority)
}

/// The run a signal, update or query binding targets: the request's, else the
/// binding's, else none (the current run).
fn target_run(op: &OperationRecord, req: &ExecuteRequest) -> Option<String> {
    req.target_workflow_run_id
        .clone()
        .or_else(|| binding_str(op, &["run_id", "workflow_run_id"]).map(str::to_string))
}

fn call_not_found(op: &OperationRecord, id: &str) -> Error {
    Error::not_found(
        "service_call_not_found",
        format!(
            "service call '{id}' not found under operation '{}'",
            op.operation_name
        ),
    )
    .with("operation_name", op.operation_name.as_str())
    .with("service_call_id", id)
}

fn binding_str<'a>(op: &'a OperationRecord, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| {
        op.spec
            .handler_binding
            .get(*k)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    })
}

/// The workflow type and task queue a `start_workflow` binding names.
fn start_target(op: &OperationRecord, queue: Option<&str>) -> (String, String) {
    let workflow_type = binding_str(op, &["workflow_type"])
        .map(str::to_string)
        .or_else(|| op.spec.handler_target_reference.clone())
        .unwrap_or_default();
    let task_queue = binding_str(op, &["task_queue"])
        .or(queue)
        .unwrap_or("default")
        .to_string();
    (workflow_type, task_queue)
}

/// The deadline an operation gives its calls, in seconds.
fn deadline_seconds(op: &OperationRecord) -> Option<u64> {
    op.spec
        .deadline_policy
        .get("timeout_seconds")
        .and_then(Value::as_u64)
        .filter(|s| *s > 0)
}

/// Whether an operation leaves its calls running when their waiting caller closes.
fn abandons_on_caller_close(call: &ServiceCallRecord) -> bool {
    let policy = call.policies.get("cancellation_policy");
    let mode = policy
        .and_then(|p| p.get("mode").or_else(|| p.get("policy")))
        .and_then(Value::as_str);
    mode == Some("abandon")
}

/// Whether the call is carried out by a run it started (and closes with that run).
fn carries_a_run(call: &ServiceCallRecord) -> bool {
    matches!(
        call.resolved_binding_kind.as_str(),
        "start_workflow" | "activity_execution"
    )
}

fn view(call: ServiceCallRecord, idempotent_replay: bool) -> ServiceCallView {
    ServiceCallView {
        status: call.status.as_deref().map_or("started", static_status),
        output: call.output.clone(),
        message: call.message.clone(),
        closed_at_ms: call.closed_at_ms,
        call,
        idempotent_replay,
    }
}

/// How a closed run ends the call it carries out.
async fn run_outcome(
    txn: &mut dyn KvTxn,
    call: &ServiceCallRecord,
    run: &RunRecord,
) -> Result<Outcome> {
    let seq = run.lifecycle.close_event_seq.unwrap_or(run.last_event_seq);
    let payload = history::event_payload(txn, &run.namespace, &run.run_id, seq)
        .await?
        .unwrap_or(Value::Null);
    let text = |k: &str| {
        payload
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    Ok(match run.status {
        RunStatus::Completed => Outcome {
            status: "completed",
            output: payload.get("output").cloned().unwrap_or(Value::Null),
            message: None,
            error_type: None,
        },
        RunStatus::Cancelled => Outcome {
            status: "cancelled",
            output: Value::Null,
            message: Some(
                call.cancel_reason
                    .clone()
                    .or_else(|| text("reason"))
                    .unwrap_or_else(|| "the linked workflow was cancelled".into()),
            ),
            error_type: None,
        },
        other => Outcome {
            status: "failed",
            output: Value::Null,
            message: Some(
                text("message")
                    .or_else(|| text("reason"))
                    .unwrap_or_else(|| format!("the linked workflow ended {}", other.as_str())),
            ),
            error_type: text("exception_type")
                .or_else(|| text("exception_class"))
                .or_else(|| Some(format!("Workflow{}", title(other.as_str())))),
        },
    })
}

fn title(s: &str) -> String {
    s.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The call as the caller's events carry it (`service_call`), with the names its command
/// used.
fn caller_snapshot(call: &ServiceCallRecord, link: &CallerLink) -> Value {
    let status = call.status.as_deref().unwrap_or("started");
    let failed = matches!(status, "failed" | "cancelled" | "timed_out");
    let mut snapshot = json!({
        "id": call.id,
        "service_call_id": call.id,
        "namespace": call.namespace,
        "caller_namespace": call.caller_namespace,
        "linked_workflow_instance_id": call.linked_workflow_instance_id,
        "linked_workflow_run_id": call.linked_workflow_run_id,
        "resolved_binding_kind": call.resolved_binding_kind,
        "resolved_target_reference": call.resolved_target_reference,
        "status": status,
        "outcome": if status == "started" { "accepted" } else { status },
        "accepted": !failed,
        "message": call.message,
        "result_envelope": if call.output.is_null() { Value::Null } else { call.output.clone() },
        "accepted_at": format_timestamp(call.accepted_at_ms),
        "closed_at": call.closed_at_ms.map(format_timestamp),
    });
    if failed {
        snapshot["reason"] = json!(status);
        snapshot["service_error_type"] = json!(call.error_type);
        snapshot["typed_error_message"] = json!(call.message);
    }
    merge_echo(
        &mut snapshot,
        link,
        &[
            "endpoint_name",
            "service_name",
            "operation_name",
            "target_namespace",
            "idempotency_key",
        ],
    );
    snapshot
}

fn merge_echo(into: &mut Value, link: &CallerLink, keys: &[&str]) {
    if let (Some(obj), Some(echo)) = (into.as_object_mut(), link.echo.as_object()) {
        for k in keys {
            if let Some(v) = echo.get(*k) {
                obj.insert((*k).to_string(), v.clone());
            }
        }
    }
}

/// The payload of a caller's `ServiceCall*` event.
fn caller_payload(call: &ServiceCallRecord, link: &CallerLink, request: Option<&Value>) -> Value {
    let status = call.status.as_deref().unwrap_or("started");
    let mut payload = json!({
        "sequence": link.sequence,
        "service_call_id": call.id,
        "service_call": caller_snapshot(call, link),
        "payload_codec": "avro",
        "caller_workflow_instance_id": link.workflow_id,
        "caller_workflow_run_id": link.run_id,
        "status": status,
    });
    merge_echo(
        &mut payload,
        link,
        &[
            "endpoint_name",
            "service_name",
            "operation_name",
            "operation_mode",
            "wait_for",
            "target_namespace",
            "idempotency_key",
        ],
    );
    if let Some(request) = request {
        payload["request_payload"] = request.clone();
    }
    match status {
        "completed" => payload["response_payload"] = call.output.clone(),
        "started" => {}
        _ => {
            payload["message"] = json!(call.message);
            payload["exception_type"] = json!(match status {
                "cancelled" => "ServiceCallCancelled",
                "timed_out" => "ServiceCallTimedOut",
                _ => "NexusOperationFailed",
            });
        }
    }
    payload
}

fn closing_event(status: &str) -> &'static str {
    match status {
        "completed" => "ServiceCallCompleted",
        "cancelled" => "ServiceCallCancelled",
        _ => "ServiceCallFailed",
    }
}

/// Closes an open call with `outcome` (a closed one is left as it is: returns false):
/// stores the outcome, clears its deadline timer and indexes, and records the closing
/// event in every waiting caller's history, waking it.
async fn close_call(
    txn: &mut dyn KvTxn,
    call: &mut ServiceCallRecord,
    outcome: Outcome,
    now: Millis,
    fx: &mut Effects,
) -> Result<bool> {
    if call.status.is_some() {
        return Ok(false);
    }
    call.status = Some(outcome.status.to_string());
    call.output = outcome.output;
    call.message = outcome.message;
    call.error_type = outcome.error_type;
    call.closed_at_ms = Some(now);
    if let Some(timer) = call.deadline_timer.take() {
        kernel::clear_timer(txn, &timer);
    }
    if let Some(timer) = call.dispatch_timer.take() {
        kernel::clear_timer(txn, &timer);
    }
    if carries_a_run(call) {
        let key = by_run_key(&call.namespace, &call.linked_workflow_run_id, &call.id);
        tables::delete(txn, &key.into_bytes()).await?;
    }
    if let Some(update_id) = &call.linked_workflow_update_id {
        let key = by_update_key(
            &call.namespace,
            &call.linked_workflow_run_id,
            update_id,
            &call.id,
        );
        tables::delete(txn, &key.into_bytes()).await?;
    }
    for link in call.callers.clone() {
        if !link.waits {
            continue;
        }
        let key = by_caller_key(&link.namespace, &link.run_id, &call.id);
        tables::delete(txn, &key.into_bytes()).await?;
        let event = closing_event(outcome.status);
        let payload = caller_payload(call, &link, None);
        record_service_call_event(
            txn,
            &link.namespace,
            &link.run_id,
            event,
            payload,
            true,
            now,
            fx,
        )
        .await?;
    }
    tables::put(txn, &record_key(call), call)?;
    Ok(true)
}

/// Creates the durable call for `req` on `op` and runs its binding, or returns the call
/// an earlier request with the same idempotency key created (`true`). `caller` joins the
/// call's callers (a replayed command's caller is there already).
#[allow(clippy::too_many_arguments)]
async fn admit_in_txn(
    txn: &mut dyn KvTxn,
    ns: &str,
    op: &OperationRecord,
    req: &ExecuteRequest,
    http: &ServiceHttpConfig,
    call_id: &str,
    run_id: &str,
    caller: Option<CallerLink>,
    now: Millis,
    fx: &mut Effects,
) -> Result<(ServiceCallRecord, bool)> {
    let caller_ns = req
        .caller_namespace
        .clone()
        .unwrap_or_else(|| ns.to_string());
    let ikey = req
        .idempotency_key
        .as_deref()
        .map(|k| idempotency_key(ns, op, &caller_ns, k));
    if let Some(ikey) = &ikey {
        if let Some(existing) = tables::get::<String>(txn, ikey).await? {
            let key = call_key(ns, op, &existing);
            let mut call = tables::get::<ServiceCallRecord>(txn, &key)
                .await?
                .ok_or_else(|| Error::corrupt("idempotency index without its call"))?;
            if let Some(link) = caller {
                let known = call
                    .callers
                    .iter()
                    .any(|c| c.run_id == link.run_id && c.sequence == link.sequence);
                if !known {
                    if link.waits && call.status.is_none() {
                        let k = by_caller_key(&link.namespace, &link.run_id, &call.id);
                        put_index(txn, k, &link.namespace, &key).await?;
                    }
                    call.callers.push(link);
                    tables::put(txn, &key, &call)?;
                }
            }
            let own = existing == call_id;
            return Ok((call, !own));
        }
    }
    let mode = req
        .mode_override
        .clone()
        .unwrap_or_else(|| op.spec.operation_mode.clone());
    let mut call = ServiceCallRecord {
        id: call_id.to_string(),
        namespace: ns.to_string(),
        endpoint_id: op.endpoint_id.clone(),
        endpoint_name: op.endpoint_name.clone(),
        service_id: op.service_id.clone(),
        service_name: op.service_name.clone(),
        operation_id: op.id.clone(),
        operation_name: op.operation_name.clone(),
        caller_namespace: caller_ns,
        caller_workflow_instance_id: req.caller_workflow_instance_id.clone(),
        caller_workflow_run_id: req.caller_workflow_run_id.clone(),
        idempotency_key: req.idempotency_key.clone(),
        operation_mode: mode,
        resolved_binding_kind: op.spec.handler_binding_kind.clone(),
        resolved_target_reference: String::new(),
        linked_workflow_instance_id: String::new(),
        linked_workflow_run_id: String::new(),
        policies: json!({
            "deadline_policy": op.spec.deadline_policy,
            "idempotency_policy": op.spec.idempotency_policy,
            "cancellation_policy": op.spec.cancellation_policy,
            "retry_policy": op.spec.retry_policy,
            "boundary_policy": op.spec.boundary_policy,
        }),
        cancel_reason: None,
        accepted_at_ms: now,
        cancelled_at_ms: None,
        status: None,
        output: Value::Null,
        message: None,
        error_type: None,
        closed_at_ms: None,
        callers: Vec::new(),
        deadline_timer: None,
        deadline_at_ms: None,
        linked_workflow_update_id: None,
        arguments: Value::Null,
        dispatch_timer: None,
        attempts: 0,
        lapsed_attempts: 0,
        last_attempt_failure: None,
        attempt_in_flight: false,
    };
    let key = call_key(ns, op, call_id);
    // Bindings whose work runs outside this transaction (see `lease_dispatch`).
    let mut dispatched = false;
    match op.spec.handler_binding_kind.as_str() {
        "start_workflow" => {
            let (workflow_type, task_queue) = start_target(op, req.queue.as_deref());
            if workflow_type.is_empty() {
                return Err(Error::invalid(
                    "handler_target_reference",
                    "The operation names no workflow type to start.",
                ));
            }
            let workflow_id = req
                .target_workflow_instance_id
                .clone()
                .unwrap_or_else(|| format!("svc-{call_id}"));
            if let Some(Value::Object(attributes)) = &req.search_attributes {
                let registry = search_attribute_registry(txn, ns).await?;
                check_attributes(&registry, attributes)?;
            }
            let start = StartWorkflow {
                workflow_id: Some(workflow_id.clone()),
                workflow_type: workflow_type.clone(),
                task_queue,
                input: req.arguments.clone(),
                execution_timeout_seconds: None,
                run_timeout_seconds: None,
                duplicate_policy: if req.reject_duplicate {
                    DuplicatePolicy::Fail
                } else {
                    DuplicatePolicy::UseExisting
                },
                memo: req.memo.clone().unwrap_or_else(|| json!({})),
                search_attributes: req.search_attributes.clone().unwrap_or_else(|| json!({})),
                priority: 5,
                build_id: None,
            };
            let started = start_in_txn(txn, ns, &start, &workflow_id, run_id, now, fx).await?;
            call.resolved_target_reference = workflow_type;
            call.linked_workflow_instance_id = started.run.workflow_id.clone();
            call.linked_workflow_run_id = started.run.run_id.clone();
            let index = by_run_key(ns, &started.run.run_id, call_id);
            put_index(txn, index, ns, &key).await?;
        }
        "signal_workflow" => {
            let signal_name = binding_str(op, &["signal_name", "signal"])
                .map(str::to_string)
                .or_else(|| op.spec.handler_target_reference.clone())
                .unwrap_or_default();
            let workflow_id = req
                .target_workflow_instance_id
                .clone()
                .or_else(|| {
                    binding_str(op, &["workflow_id", "workflow_instance_id"]).map(str::to_string)
                })
                .ok_or_else(|| {
                    Error::invalid(
                        "target_workflow_instance_id",
                        "The operation's binding names no workflow to signal: give target_workflow_instance_id.",
                    )
                })?;
            let signal = SignalRequest {
                workflow_id,
                run_id: target_run(op, req),
                signal_name: signal_name.clone(),
                input: req.arguments.clone(),
                request_id: Some(format!("service-call:{call_id}")),
            };
            let receipt = signal_in_txn(txn, ns, &signal, call_id, now, fx).await?;
            let field = |k: &str| {
                receipt
                    .get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            call.resolved_target_reference = signal_name;
            call.linked_workflow_instance_id = field("workflow_id");
            call.linked_workflow_run_id = field("run_id");
            // Delivered: the call's work is done (a signal has no result).
            call.status = Some("completed".into());
            call.closed_at_ms = Some(now);
        }
        "update_workflow" => {
            // The update's outcome (its handler's result or failure, or the run closing
            // first) closes the call.
            let update_name = binding_str(op, &["update_name", "update"])
                .map(str::to_string)
                .or_else(|| op.spec.handler_target_reference.clone())
                .unwrap_or_default();
            let workflow_id = req
                .target_workflow_instance_id
                .clone()
                .or_else(|| {
                    binding_str(op, &["workflow_id", "workflow_instance_id"]).map(str::to_string)
                })
                .ok_or_else(|| {
                    Error::invalid(
                        "target_workflow_instance_id",
                        "The operation's binding names no workflow to update: give target_workflow_instance_id.",
                    )
                })?;
            let update = UpdateRequest {
                workflow_id: workflow_id.clone(),
                run_id: target_run(op, req),
                update_name: update_name.clone(),
                input: req.arguments.clone(),
                request_id: Some(format!("service-call:{call_id}")),
                wait_for: UpdateWait::Accepted,
                wait_timeout: std::time::Duration::ZERO,
            };
            let (update_run_id, update_id, _) =
                accept_update_in_txn(txn, ns, &update, call_id, now, fx).await?;
            call.resolved_target_reference = update_name;
            call.linked_workflow_instance_id = workflow_id;
            call.linked_workflow_run_id = update_run_id.clone();
            call.linked_workflow_update_id = Some(update_id.clone());
            let index = by_update_key(ns, &update_run_id, &update_id, call_id);
            put_index(txn, index, ns, &key).await?;
        }
        "activity_execution" => {
            // A standalone activity (its host run is the linked run): its final outcome
            // closes the host run, whose close closes the call.
            let activity_type = binding_str(op, &["activity_type"])
                .map(str::to_string)
                .or_else(|| op.spec.handler_target_reference.clone())
                .unwrap_or_default();
            if activity_type.is_empty() {
                return Err(Error::invalid(
                    "handler_target_reference",
                    "The operation names no activity type to run.",
                ));
            }
            let seconds = |k: &str| op.spec.handler_binding.get(k).and_then(Value::as_u64);
            let activity_id = req
                .target_workflow_instance_id
                .clone()
                .unwrap_or_else(|| format!("svc-{call_id}"));
            let start = StartActivity {
                activity_id: Some(activity_id.clone()),
                activity_type: activity_type.clone(),
                activity_class: None,
                business_key: req.business_key.clone(),
                task_queue: binding_str(op, &["task_queue"])
                    .or(req.queue.as_deref())
                    .unwrap_or("default")
                    .to_string(),
                input: req.arguments.clone(),
                retry_policy: op
                    .spec
                    .retry_policy
                    .as_object()
                    .map(|_| op.spec.retry_policy.clone()),
                start_to_close_timeout_seconds: seconds("start_to_close_timeout_seconds"),
                schedule_to_start_timeout_seconds: seconds("schedule_to_start_timeout_seconds"),
                schedule_to_close_timeout_seconds: seconds("schedule_to_close_timeout_seconds"),
                heartbeat_timeout_seconds: seconds("heartbeat_timeout_seconds"),
            };
            let (run, _) =
                start_standalone_in_txn(txn, ns, &start, &activity_id, run_id, now, fx).await?;
            if run.lifecycle.standalone_activity.is_none() || run.status.is_terminal() {
                return Err(Error::conflict(
                    "duplicate_not_allowed",
                    format!("'{activity_id}' is already in use"),
                )
                .with("workflow_id", activity_id.as_str()));
            }
            call.resolved_target_reference = activity_type;
            call.linked_workflow_instance_id = run.workflow_id.clone();
            call.linked_workflow_run_id = run.run_id.clone();
            let index = by_run_key(ns, &run.run_id, call_id);
            put_index(txn, index, ns, &key).await?;
        }
        "invocable_http" => {
            // The request goes out after this transaction commits, from the durable
            // record (at least once; the call id is its `Idempotency-Key`).
            let url = binding_str(op, &["url"])
                .map(str::to_string)
                .or_else(|| op.spec.handler_target_reference.clone())
                .unwrap_or_default();
            let target = parse_http_url(&url).map_err(|why| bad_url(op, &why))?;
            if !host_allowed(&http.allow, &target) {
                return Err(host_not_allowed(op, &target.authority));
            }
            call.resolved_target_reference = url;
            call.arguments = req.arguments.clone();
            dispatched = true;
        }
        "query_workflow" => {
            // Answered by a worker through the query path, after this transaction.
            let query_name = binding_str(op, &["query_name", "query"])
                .map(str::to_string)
                .or_else(|| op.spec.handler_target_reference.clone())
                .unwrap_or_default();
            if query_name.is_empty() {
                return Err(Error::invalid(
                    "handler_target_reference",
                    "The operation names no query to run.",
                ));
            }
            let workflow_id = req
                .target_workflow_instance_id
                .clone()
                .or_else(|| {
                    binding_str(op, &["workflow_id", "workflow_instance_id"]).map(str::to_string)
                })
                .ok_or_else(|| {
                    Error::invalid(
                        "target_workflow_instance_id",
                        "The operation's binding names no workflow to query: give target_workflow_instance_id.",
                    )
                })?;
            call.resolved_target_reference = query_name;
            call.linked_workflow_instance_id = workflow_id;
            call.linked_workflow_run_id = target_run(op, req).unwrap_or_default();
            call.arguments = req.arguments.clone();
            dispatched = true;
        }
        _ => return Err(unsupported_binding(op)),
    }
    if dispatched {
        let action = dispatch_action(&call);
        call.dispatch_timer = Some(kernel::put_timer(txn, now, &action, fx)?);
    }
    if call.status.is_none() {
        if let Some(seconds) = deadline_seconds(op) {
            let at = now + seconds as Millis * 1000;
            let action = TimerAction::ServiceCallDeadline {
                namespace: ns.to_string(),
                endpoint_name: op.endpoint_name.clone(),
                service_name: op.service_name.clone(),
                operation_name: op.operation_name.clone(),
                service_call_id: call_id.to_string(),
            };
            call.deadline_timer = Some(kernel::put_timer(txn, at, &action, fx)?);
            call.deadline_at_ms = Some(at);
        }
    }
    if let Some(link) = caller {
        if link.waits && call.status.is_none() {
            let k = by_caller_key(&link.namespace, &link.run_id, call_id);
            put_index(txn, k, &link.namespace, &key).await?;
        }
        call.callers.push(link);
    }
    tables::put(txn, &key, &call)?;
    if let Some(ikey) = &ikey {
        tables::put(txn, ikey, &call_id.to_string())?;
    }
    Ok((call, false))
}

/// A `start_service_operation` command accepted at `sequence` of a caller run (raised by
/// the workflow subsystem, routed by `wiring/hooks.rs`): admits the call in the target
/// namespace and records the caller's `ServiceCallStarted` (and the closing event when
/// the call already closed), or `ServiceCallFailed` when it cannot be admitted.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn admit_workflow_call(
    txn: &mut dyn KvTxn,
    caller_ns: &str,
    workflow_id: &str,
    run_id: &str,
    sequence: u64,
    command: &Value,
    http: &ServiceHttpConfig,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let text = |k: &str| {
        command
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let raw_target = text("namespace");
    let target_ns = raw_target
        .as_deref()
        .map_or_else(|| caller_ns.to_string(), str::to_ascii_lowercase);
    let codec = text("payload_codec").unwrap_or_else(|| "avro".into());
    let request_payload = command
        .get("request_payload")
        .cloned()
        .unwrap_or(Value::Null);
    let arguments = match &request_payload {
        Value::String(blob) => json!({"codec": codec, "blob": blob}),
        Value::Object(_) => request_payload.clone(),
        _ => envelope(&AvroValue::Array(Vec::new())),
    };
    let (endpoint, service, operation) = (
        text("endpoint_name").unwrap_or_default(),
        text("service_name").unwrap_or_default(),
        text("operation_name").unwrap_or_default(),
    );
    let mut echo = Map::new();
    for (k, v) in [
        ("endpoint_name", Some(endpoint.clone())),
        ("service_name", Some(service.clone())),
        ("operation_name", Some(operation.clone())),
        ("idempotency_key", text("idempotency_key")),
        (
            "target_namespace",
            Some(raw_target.clone().unwrap_or_else(|| target_ns.clone())),
        ),
    ] {
        if let Some(v) = v {
            echo.insert(k.into(), json!(v));
        }
    }
    let mut link = CallerLink {
        namespace: caller_ns.to_string(),
        workflow_id: workflow_id.to_string(),
        run_id: run_id.to_string(),
        sequence,
        waits: false,
        echo: Value::Null,
    };
    let denied = command.get(TARGET_NAMESPACE_DENIED) == Some(&Value::Bool(true));
    let resolved = async {
        if denied {
            return Err(Error::not_found(
                "namespace_not_found",
                format!("namespace '{target_ns}' does not exist"),
            ));
        }
        kernel::require_namespace(txn, &target_ns).await?;
        load_operation(
            txn,
            &target_ns,
            &normalize_name(&endpoint),
            &normalize_name(&service),
            &normalize_name(&operation),
        )
        .await
    }
    .await;
    let op = match resolved {
        Ok(op) => op,
        Err(e @ Error::Rejected { .. }) => {
            link.echo = Value::Object(echo);
            return refuse_caller(txn, &link, &e, &request_payload, now, fx).await;
        }
        Err(e) => return Err(e),
    };
    let mode = text("mode_override").unwrap_or_else(|| op.spec.operation_mode.clone());
    let wait_for = text("wait_for").unwrap_or_else(|| {
        if mode == "async" {
            "accepted"
        } else {
            "completed"
        }
        .to_string()
    });
    link.waits = mode == "sync" && wait_for == "completed";
    echo.insert("operation_mode".into(), json!(mode));
    echo.insert("wait_for".into(), json!(wait_for));
    link.echo = Value::Object(echo);
    let req = ExecuteRequest {
        arguments,
        mode_override: Some(mode),
        idempotency_key: text("idempotency_key"),
        caller_namespace: Some(caller_ns.to_string()),
        caller_workflow_instance_id: Some(workflow_id.to_string()),
        caller_workflow_run_id: Some(run_id.to_string()),
        target_workflow_instance_id: text("target_workflow_instance_id"),
        queue: text("queue"),
        business_key: text("business_key"),
        reject_duplicate: text("duplicate_start_policy").as_deref() == Some("reject_duplicate"),
        target_workflow_run_id: text("target_workflow_run_id"),
        memo: command.get("memo").filter(|v| v.is_object()).cloned(),
        search_attributes: command
            .get("search_attributes")
            .filter(|v| v.is_object())
            .cloned(),
    };
    let call_id = ids::new_id(now).to_ascii_lowercase();
    let linked_run_id = ids::new_id(now);
    let admitted = admit_in_txn(
        txn,
        &target_ns,
        &op,
        &req,
        http,
        &call_id,
        &linked_run_id,
        Some(link.clone()),
        now,
        fx,
    )
    .await;
    let call = match admitted {
        Ok((call, _)) => call,
        // A refused call (or a request the binding cannot use: its fields named) fails
        // the caller's step; the workflow task itself still completes.
        Err(e @ (Error::Rejected { .. } | Error::Validation(_))) => {
            return refuse_caller(txn, &link, &e, &request_payload, now, fx).await
        }
        Err(e) => return Err(e),
    };
    // `ServiceCallStarted` carries the call as accepted; it resolves the SDK's step
    // unless the caller waits for the outcome.
    let mut started = call.clone();
    started.status = None;
    started.output = Value::Null;
    started.message = None;
    let payload = caller_payload(&started, &link, Some(&request_payload));
    record_service_call_event(
        txn,
        caller_ns,
        run_id,
        "ServiceCallStarted",
        payload,
        !link.waits,
        now,
        fx,
    )
    .await?;
    if let (true, Some(status)) = (link.waits, call.status.as_deref()) {
        let payload = caller_payload(&call, &link, None);
        record_service_call_event(
            txn,
            caller_ns,
            run_id,
            closing_event(status),
            payload,
            true,
            now,
            fx,
        )
        .await?;
        let k = by_caller_key(caller_ns, run_id, &call.id);
        tables::delete(txn, &k.into_bytes()).await?;
    }
    Ok(())
}

/// Records `ServiceCallFailed` for a command that could not be admitted (an unknown
/// namespace or operation, an unsupported binding, a refused target) and wakes the
/// caller: its step resolves as failed and no call exists.
async fn refuse_caller(
    txn: &mut dyn KvTxn,
    link: &CallerLink,
    e: &Error,
    request_payload: &Value,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let (reason, message) = match e {
        Error::Rejected {
            reason, message, ..
        } => (*reason, message.clone()),
        Error::Validation(fields) => (
            "validation_failed",
            fields
                .iter()
                .map(|(field, messages)| format!("{field}: {}", messages.join(" ")))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        _ => ("service_call_rejected", e.to_string()),
    };
    let mut snapshot = json!({
        "status": "failed",
        "outcome": format!("rejected_{reason}"),
        "reason": reason,
        "accepted": false,
        "message": message,
        "typed_error_message": message,
    });
    merge_echo(
        &mut snapshot,
        link,
        &[
            "endpoint_name",
            "service_name",
            "operation_name",
            "target_namespace",
            "idempotency_key",
        ],
    );
    let mut payload = json!({
        "sequence": link.sequence,
        "service_call": snapshot,
        "status": "failed",
        "reason": reason,
        "message": message,
        "exception_type": reason,
        "payload_codec": "avro",
        "request_payload": request_payload,
        "caller_workflow_instance_id": link.workflow_id,
        "caller_workflow_run_id": link.run_id,
    });
    merge_echo(
        &mut payload,
        link,
        &[
            "endpoint_name",
            "service_name",
            "operation_name",
            "operation_mode",
            "wait_for",
            "target_namespace",
            "idempotency_key",
        ],
    );
    record_service_call_event(
        txn,
        &link.namespace,
        &link.run_id,
        "ServiceCallFailed",
        payload,
        true,
        now,
        fx,
    )
    .await?;
    Ok(())
}

/// A run closed (routed by `wiring/hooks.rs` from the kernel's `RunClosed`): the calls it
/// carried out close with its outcome (a continued run hands them to its successor), and
/// the calls it waited on as a caller are cancelled, with their linked runs, unless
/// their operation abandons them.
pub(crate) async fn on_run_closed(
    txn: &mut dyn KvTxn,
    ns: &str,
    workflow_id: &str,
    run_id: &str,
    reason: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    if !has_indexes(txn, ns).await? {
        return Ok(());
    }
    // Boxed: every run closes through here, and most namespaces have no service calls.
    Box::pin(close_run_calls(
        txn,
        ns,
        workflow_id,
        run_id,
        reason,
        now,
        fx,
    ))
    .await
}

async fn close_run_calls(
    txn: &mut dyn KvTxn,
    ns: &str,
    workflow_id: &str,
    run_id: &str,
    reason: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    for (index, key) in indexed_calls(txn, prefix::SERVICE_CALL_BY_RUN, ns, run_id).await? {
        let Some(mut call) = tables::get::<ServiceCallRecord>(txn, &key).await? else {
            tables::delete(txn, &index).await?;
            continue;
        };
        if reason == "continued" {
            // The call follows the workflow to its next run.
            let instance: Option<InstanceRecord> =
                tables::get(txn, &tables::instance_key(ns, workflow_id)).await?;
            if let Some(next) = instance.filter(|i| i.current_run_id != run_id) {
                tables::delete(txn, &index).await?;
                call.linked_workflow_run_id = next.current_run_id.clone();
                let moved = by_run_key(ns, &next.current_run_id, &call.id);
                put_index(txn, moved, ns, &key).await?;
                tables::put(txn, &key, &call)?;
                continue;
            }
        }
        let Some(run) = tables::get::<RunRecord>(txn, &tables::run_key(ns, run_id)).await? else {
            continue;
        };
        let outcome = run_outcome(txn, &call, &run).await?;
        close_call(txn, &mut call, outcome, now, fx).await?;
    }
    let waited = indexed_calls(txn, prefix::SERVICE_CALL_BY_CALLER, ns, run_id).await?;
    for (index, key) in waited {
        tables::delete(txn, &index).await?;
        let Some(mut call) = tables::get::<ServiceCallRecord>(txn, &key).await? else {
            continue;
        };
        if call.status.is_some() || abandons_on_caller_close(&call) {
            continue;
        }
        let why = format!("the calling workflow closed ({reason})");
        cancel_in_txn(txn, &mut call, Some(why), now, fx).await?;
    }
    Ok(())
}

/// An update finished (routed by `wiring/hooks.rs` from the kernel's `UpdateClosed`): the
/// calls it carried out close with its outcome.
pub(crate) async fn on_update_closed(
    txn: &mut dyn KvTxn,
    ns: &str,
    run_id: &str,
    update_id: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    if !has_indexes(txn, ns).await? {
        return Ok(());
    }
    let range = Key::new(prefix::SERVICE_CALL_BY_UPDATE)
        .str(ns)
        .str(run_id)
        .str(update_id)
        .range();
    let pairs = txn
        .get_range(&range, ReadOptions::limit(MAX_CALLS_PER_RUN))
        .await?;
    let (entries, _) = tables::assemble(pairs)?;
    if entries.is_empty() {
        return Ok(());
    }
    let Some(update) = tables::get::<UpdateRecord>(txn, &update_key(ns, run_id, update_id)).await?
    else {
        return Ok(());
    };
    for (index, key) in entries {
        let Some(mut call) = tables::get::<ServiceCallRecord>(txn, &key).await? else {
            tables::delete(txn, &index).await?;
            continue;
        };
        let outcome = match update.status {
            UpdateStatus::Completed => Outcome {
                status: "completed",
                output: update.result.clone().unwrap_or(Value::Null),
                message: None,
                error_type: None,
            },
            _ => Outcome {
                status: "failed",
                output: Value::Null,
                message: Some(
                    update
                        .failure_message
                        .clone()
                        .unwrap_or_else(|| "the update failed".into()),
                ),
                error_type: update.failure_type.clone(),
            },
        };
        close_call(txn, &mut call, outcome, now, fx).await?;
    }
    Ok(())
}

/// Cancels an open call: it closes as `cancelled` (recorded for its waiting callers) and
/// its linked run, still open, is cancelled too. A closed call is left as it ended.
async fn cancel_in_txn(
    txn: &mut dyn KvTxn,
    call: &mut ServiceCallRecord,
    reason: Option<String>,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    if call.status.is_some() {
        return Ok(());
    }
    let message = reason.unwrap_or_else(|| "the service call was cancelled".into());
    call.cancel_reason = Some(message.clone());
    call.cancelled_at_ms = Some(now);
    let outcome = Outcome {
        status: "cancelled",
        output: Value::Null,
        message: Some(message.clone()),
        error_type: None,
    };
    close_call(txn, call, outcome, now, fx).await?;
    stop_linked_run(txn, call, &message, now, fx).await
}

/// Cancels a call's linked run when it is still open (`start_workflow` bindings).
async fn stop_linked_run(
    txn: &mut dyn KvTxn,
    call: &ServiceCallRecord,
    reason: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    if !carries_a_run(call) {
        return Ok(());
    }
    let run: Option<RunRecord> = tables::get(
        txn,
        &tables::run_key(&call.namespace, &call.linked_workflow_run_id),
    )
    .await?;
    if run.is_some_and(|r| !r.status.is_terminal()) {
        let command_id = ids::new_id(now);
        close_in_txn(
            txn,
            &call.namespace,
            &call.linked_workflow_instance_id,
            Some(&call.linked_workflow_run_id),
            CloseCommand::Cancel,
            Some(reason),
            &command_id,
            now,
            fx,
        )
        .await?;
    }
    Ok(())
}

/// A call's deadline timer fired: a call still open times out (recorded for its waiting
/// callers) and its linked run is cancelled. Stale when the call closed meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn fire_deadline(
    txn: &mut dyn KvTxn,
    ns: &str,
    endpoint: &str,
    service: &str,
    operation: &str,
    call_id: &str,
    timer: &TimerKey,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let key = call_key_parts(ns, endpoint, service, operation, call_id);
    let Some(mut call) = tables::get::<ServiceCallRecord>(txn, &key).await? else {
        return Ok(());
    };
    if call.status.is_some() || call.deadline_timer.as_ref() != Some(timer) {
        return Ok(());
    }
    call.deadline_timer = None;
    let seconds = call
        .deadline_at_ms
        .map_or(0, |d| (d - call.accepted_at_ms) / 1000);
    let message = format!("the service call exceeded its deadline of {seconds} s");
    let outcome = Outcome {
        status: "timed_out",
        output: Value::Null,
        message: Some(message.clone()),
        error_type: Some("ServiceCallTimedOut".into()),
    };
    close_call(txn, &mut call, outcome, now, fx).await?;
    stop_linked_run(txn, &call, &message, now, fx).await
}

/// Most lapsed attempts (leases that ran out without an outcome) before a call fails.
const MAX_LAPSED_ATTEMPTS: u32 = 3;
/// How long an attempt's lease outlives its own timeout (the margin for recording it).
const LEASE_MARGIN_MS: Millis = 30_000;

/// The external work of one attempt of a dispatched call, run outside any transaction
/// by the engine (see [`lease_dispatch`]).
#[derive(Debug, Clone)]
pub enum DispatchWork {
    /// One HTTP request to an `invocable_http` binding's URL.
    Http {
        url: String,
        method: String,
        /// The binding's headers, then `Idempotency-Key` (the call id) and the attempt.
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        timeout: std::time::Duration,
    },
    /// One query through the query path (`query_workflow` bindings).
    Query {
        workflow_id: String,
        run_id: Option<String>,
        query_name: String,
        input: Value,
        timeout: std::time::Duration,
    },
}

/// An attempt leased by [`lease_dispatch`]: its outcome goes to [`finish_dispatch`].
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub namespace: String,
    pub endpoint_name: String,
    pub service_name: String,
    pub operation_name: String,
    pub service_call_id: String,
    /// The lease: the timer that redelivers the attempt if its outcome is never recorded.
    pub lease: TimerKey,
    /// 1-based.
    pub attempt: u32,
    pub work: DispatchWork,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum DispatchOutcome {
    /// The result envelope.
    Completed(Value),
    /// `reason` names the failure (it becomes the call's `service_error_type` when final);
    /// `retryable` failures are retried under the operation's `retry_policy`.
    Failed {
        reason: String,
        message: String,
        retryable: bool,
    },
}

fn dispatch_action(call: &ServiceCallRecord) -> TimerAction {
    TimerAction::ServiceCallDispatch {
        namespace: call.namespace.clone(),
        endpoint_name: call.endpoint_name.clone(),
        service_name: call.service_name.clone(),
        operation_name: call.operation_name.clone(),
        service_call_id: call.id.clone(),
    }
}

/// The binding's `timeout_seconds`, else `default`, at most the client's cap.
fn attempt_timeout(call_binding: &Value, default: std::time::Duration) -> std::time::Duration {
    call_binding
        .get("timeout_seconds")
        .and_then(Value::as_u64)
        .filter(|s| *s > 0)
        .map_or(default, std::time::Duration::from_secs)
        .min(super::outbound::MAX_REQUEST_TIMEOUT)
}

/// The retry policy's `max_attempts` (default 1).
fn max_attempts(call: &ServiceCallRecord) -> u32 {
    call.policies
        .get("retry_policy")
        .and_then(|p| p.get("max_attempts"))
        .and_then(Value::as_u64)
        .map_or(1, |n| n.clamp(1, 100) as u32)
}

/// Seconds before the next attempt after failed attempt `attempt` (1-based): the retry
/// policy's `backoff_seconds` list (its last entry repeats), else
/// `initial_interval_seconds` grown by `backoff_coefficient` up to
/// `maximum_interval_seconds`, else 1 s.
fn backoff_seconds(call: &ServiceCallRecord, attempt: u32) -> u64 {
    let policy = call
        .policies
        .get("retry_policy")
        .cloned()
        .unwrap_or(Value::Null);
    if let Some(list) = policy.get("backoff_seconds").and_then(Value::as_array) {
        let index = (attempt as usize).saturating_sub(1);
        if let Some(s) = list.get(index).or(list.last()).and_then(Value::as_u64) {
            return s;
        }
    }
    let initial = policy
        .get("initial_interval_seconds")
        .and_then(Value::as_f64)
        .unwrap_or(1.0)
        .max(0.0);
    let coefficient = policy
        .get("backoff_coefficient")
        .and_then(Value::as_f64)
        .unwrap_or(1.0)
        .clamp(1.0, 100.0);
    let maximum = policy
        .get("maximum_interval_seconds")
        .and_then(Value::as_f64)
        .unwrap_or(3600.0);
    let grown = initial * coefficient.powi(attempt.saturating_sub(1).min(60) as i32);
    grown.min(maximum).ceil() as u64
}

/// Whether the retry policy names `reason` in `non_retryable_error_types`.
fn listed_non_retryable(call: &ServiceCallRecord, reason: &str) -> bool {
    call.policies
        .get("retry_policy")
        .and_then(|p| p.get("non_retryable_error_types"))
        .and_then(Value::as_array)
        .is_some_and(|types| types.iter().any(|t| t.as_str() == Some(reason)))
}

/// The JSON body an `invocable_http` attempt posts: the call's identity and its
/// arguments as plain JSON (the argument list), with the envelope they came in.
fn http_body(call: &ServiceCallRecord, attempt: u32) -> Vec<u8> {
    let arguments = match &call.arguments {
        Value::Object(m) if m.get("codec").and_then(Value::as_str) == Some("avro") => m
            .get("blob")
            .and_then(Value::as_str)
            .and_then(|b| crate::avro::decode_blob(b).ok())
            .map_or(Value::Null, |a| a.to_json()),
        other => other.clone(),
    };
    let body = json!({
        "service_call_id": call.id,
        "attempt": attempt,
        "namespace": call.namespace,
        "endpoint_name": call.endpoint_name,
        "service_name": call.service_name,
        "operation_name": call.operation_name,
        "caller_namespace": call.caller_namespace,
        "caller_workflow_instance_id": call.caller_workflow_instance_id,
        "caller_workflow_run_id": call.caller_workflow_run_id,
        "idempotency_key": call.idempotency_key,
        "arguments": arguments,
        "arguments_envelope": call.arguments,
    });
    serde_json::to_vec(&body).expect("invariant: a JSON value serializes")
}

/// A dispatch timer fired (routed by `wiring/timers.rs`): leases the next attempt of an
/// open dispatched call and returns its work, to be run after this transaction commits.
/// The lease is a new dispatch timer at the attempt's timeout plus a margin: if the
/// attempt's outcome is never recorded (a crash mid-request), that timer redelivers it,
/// so delivery is at least once. `None` when the timer is stale (the call closed or
/// names another timer).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn lease_dispatch(
    txn: &mut dyn KvTxn,
    ns: &str,
    endpoint: &str,
    service: &str,
    operation: &str,
    call_id: &str,
    timer: &TimerKey,
    http: &ServiceHttpConfig,
    now: Millis,
    fx: &mut Effects,
) -> Result<Option<Dispatch>> {
    let key = call_key_parts(ns, endpoint, service, operation, call_id);
    let Some(mut call) = tables::get::<ServiceCallRecord>(txn, &key).await? else {
        return Ok(None);
    };
    if call.status.is_some() || call.dispatch_timer.as_ref() != Some(timer) {
        return Ok(None);
    }
    call.dispatch_timer = None;
    // With an attempt in flight, this timer firing means its lease lapsed.
    if call.attempt_in_flight {
        call.lapsed_attempts += 1;
        if call.lapsed_attempts > MAX_LAPSED_ATTEMPTS {
            let outcome = Outcome {
                status: "failed",
                output: Value::Null,
                message: Some(format!(
                    "{MAX_LAPSED_ATTEMPTS} attempts ended without a recorded outcome"
                )),
                error_type: Some("service_call_dispatch_lost".into()),
            };
            close_call(txn, &mut call, outcome, now, fx).await?;
            return Ok(None);
        }
    }
    let load = load_operation(txn, ns, endpoint, service, operation).await;
    let binding = load
        .as_ref()
        .map(|op| op.spec.handler_binding.clone())
        .unwrap_or(Value::Null);
    call.attempts += 1;
    call.attempt_in_flight = true;
    let attempt = call.attempts;
    let work = match call.resolved_binding_kind.as_str() {
        "invocable_http" => {
            let mut headers: Vec<(String, String)> = binding
                .get("headers")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .filter(|(k, v)| valid_header(k, v))
                        .collect()
                })
                .unwrap_or_default();
            headers.push(("Content-Type".into(), "application/json".into()));
            headers.push(("Idempotency-Key".into(), call.id.clone()));
            headers.push(("X-Keel-Service-Call-Attempt".into(), attempt.to_string()));
            let method = binding
                .get("method")
                .and_then(Value::as_str)
                .map(str::to_ascii_uppercase)
                .filter(|m| matches!(m.as_str(), "POST" | "PUT" | "PATCH"))
                .unwrap_or_else(|| "POST".into());
            DispatchWork::Http {
                url: call.resolved_target_reference.clone(),
                method,
                headers,
                body: http_body(&call, attempt),
                timeout: attempt_timeout(&binding, http.request_timeout),
            }
        }
        _ => DispatchWork::Query {
            workflow_id: call.linked_workflow_instance_id.clone(),
            run_id: Some(call.linked_workflow_run_id.clone()).filter(|r| !r.is_empty()),
            query_name: call.resolved_target_reference.clone(),
            input: call.arguments.clone(),
            timeout: attempt_timeout(&binding, http.request_timeout),
        },
    };
    let timeout = match &work {
        DispatchWork::Http { timeout, .. } | DispatchWork::Query { timeout, .. } => *timeout,
    };
    let lease_at = now + timeout.as_millis() as Millis + LEASE_MARGIN_MS;
    let lease = kernel::put_timer(txn, lease_at, &dispatch_action(&call), fx)?;
    call.dispatch_timer = Some(lease.clone());
    tables::put(txn, &key, &call)?;
    Ok(Some(Dispatch {
        namespace: ns.to_string(),
        endpoint_name: endpoint.to_string(),
        service_name: service.to_string(),
        operation_name: operation.to_string(),
        service_call_id: call_id.to_string(),
        lease,
        attempt,
        work,
    }))
}

/// A header name and value an operator's binding may set (token characters; no CR/LF;
/// not one the client sets itself).
fn valid_header(name: &str, value: &str) -> bool {
    let reserved = [
        "host",
        "content-length",
        "connection",
        "transfer-encoding",
        "idempotency-key",
        "content-type",
    ];
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
        && !reserved.contains(&name.to_ascii_lowercase().as_str())
        && !value.chars().any(|c| c == '\r' || c == '\n')
}

/// Records an attempt's outcome (fenced by its lease: an attempt whose lease lapsed, or
/// a call that closed meanwhile, changes nothing). Completed closes the call with the
/// result; a retryable failure schedules the next attempt while the retry policy allows
/// one; any other failure closes the call as failed with `reason` as its error type.
pub(crate) async fn finish_dispatch(
    txn: &mut dyn KvTxn,
    d: &Dispatch,
    outcome: DispatchOutcome,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let key = call_key_parts(
        &d.namespace,
        &d.endpoint_name,
        &d.service_name,
        &d.operation_name,
        &d.service_call_id,
    );
    let Some(mut call) = tables::get::<ServiceCallRecord>(txn, &key).await? else {
        return Ok(());
    };
    if call.status.is_some() || call.dispatch_timer.as_ref() != Some(&d.lease) {
        return Ok(());
    }
    kernel::clear_timer(txn, &d.lease);
    call.dispatch_timer = None;
    call.attempt_in_flight = false;
    let closing = match outcome {
        DispatchOutcome::Completed(output) => Outcome {
            status: "completed",
            output,
            message: None,
            error_type: None,
        },
        DispatchOutcome::Failed {
            reason,
            message,
            retryable,
        } => {
            let retry = retryable
                && call.attempts < max_attempts(&call)
                && !listed_non_retryable(&call, &reason);
            if retry {
                let at = now + backoff_seconds(&call, call.attempts) as Millis * 1000;
                call.dispatch_timer =
                    Some(kernel::put_timer(txn, at, &dispatch_action(&call), fx)?);
                call.last_attempt_failure = Some(format!("{reason}: {message}"));
                tables::put(txn, &key, &call)?;
                return Ok(());
            }
            Outcome {
                status: "failed",
                output: Value::Null,
                message: Some(message),
                error_type: Some(reason),
            }
        }
    };
    close_call(txn, &mut call, closing, now, fx).await?;
    Ok(())
}

impl Engine {
    /// Marks every namespace that holds a service-call index entry with
    /// `SERVICE_CALL_NAMESPACE` (run at open: stores written before the mark existed,
    /// and imports, get it here; closing runs skip their index scans without it). One
    /// range read per index table and namespace found.
    pub(crate) async fn mark_service_call_namespaces(&self) -> Result<()> {
        self.transact(|tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                for table in [
                    prefix::SERVICE_CALL_BY_RUN,
                    prefix::SERVICE_CALL_BY_CALLER,
                    prefix::SERVICE_CALL_BY_UPDATE,
                ] {
                    let mut range = Key::new(table).range();
                    loop {
                        let first = txn
                            .get_range(&range, ReadOptions::limit(1).snapshot())
                            .await?;
                        let Some((key, _)) = first.first() else { break };
                        let Some(ns) = crate::keys::KeyReader::new(key).str() else {
                            return Err(Error::corrupt("service-call index key without namespace"));
                        };
                        let mark = Key::new(prefix::SERVICE_CALL_NAMESPACE)
                            .str(&ns)
                            .into_bytes();
                        if txn.get_snapshot(&mark).await?.is_none() {
                            txn.set(&mark, &[]);
                        }
                        // On to the next namespace: past every key of this one.
                        let std::ops::Bound::Excluded(next) = Key::new(table).str(&ns).range().end
                        else {
                            break;
                        };
                        range.start = std::ops::Bound::Included(next);
                    }
                }
                Ok(())
            })
        })
        .await
    }

    /// Executes an operation: creates the durable call and runs its binding in one
    /// transaction (a dispatched binding's work starts once it commits). A repeated
    /// `idempotency_key` (per operation and caller namespace) returns the first call.
    pub async fn execute_operation(
        &self,
        ns: &str,
        endpoint: &str,
        service: &str,
        operation: &str,
        req: ExecuteRequest,
    ) -> Result<ServiceCallView> {
        let now = self.now_ms();
        let call_id = ids::new_id(now).to_ascii_lowercase();
        let run_id = ids::new_id(now);
        let (endpoint, service, operation) = (
            normalize_name(endpoint),
            normalize_name(service),
            normalize_name(operation),
        );
        let http = &self.inner.config.service_http;
        let (endpoint, service, operation, req, call_id, run_id) =
            (&endpoint, &service, &operation, &req, &call_id, &run_id);
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                let fx = &mut tx.fx;
                kernel::require_namespace(txn, ns).await?;
                let op = load_operation(txn, ns, endpoint, service, operation).await?;
                let (call, replay) =
                    admit_in_txn(txn, ns, &op, req, http, call_id, run_id, None, now, fx).await?;
                Ok(view(call, replay))
            })
        })
        .await
    }

    /// Describes a call; 404 names the missing level or `service_call_not_found`.
    pub async fn describe_service_call(
        &self,
        ns: &str,
        endpoint: &str,
        service: &str,
        operation: &str,
        call_id: &str,
    ) -> Result<ServiceCallView> {
        let mut txn = self.inner.store.begin().await?;
        read_call(txn.as_mut(), ns, endpoint, service, operation, call_id).await
    }

    /// Waits until a call closes or the clock reaches `deadline_ms`, then answers it as
    /// [`Engine::describe_service_call`] does. Wakes on a storage watch of the call's
    /// record (written when it closes, on whichever node), never by polling.
    pub async fn wait_service_call(
        &self,
        ns: &str,
        endpoint: &str,
        service: &str,
        operation: &str,
        call_id: &str,
        deadline_ms: Millis,
    ) -> Result<ServiceCallView> {
        loop {
            let mut txn = self.inner.store.begin().await?;
            let version = txn.read_version();
            let v = read_call(txn.as_mut(), ns, endpoint, service, operation, call_id).await?;
            drop(txn);
            if v.status != "started" || self.now_ms() >= deadline_ms {
                return Ok(v);
            }
            let key = record_key(&v.call);
            tokio::select! {
                changed = self.inner.store.watch(&key, version) => changed?,
                _ = self.inner.clock.sleep_until(deadline_ms) => {}
            }
        }
    }

    /// Cancels a call: it closes as `cancelled` and its linked workflow, still open, is
    /// cancelled. A closed call is left as it ended and answered with that outcome.
    pub async fn cancel_service_call(
        &self,
        ns: &str,
        endpoint: &str,
        service: &str,
        operation: &str,
        call_id: &str,
        reason: Option<String>,
    ) -> Result<ServiceCallView> {
        let (endpoint, service, operation) = (
            normalize_name(endpoint),
            normalize_name(service),
            normalize_name(operation),
        );
        let (endpoint, service, operation, reason) = (&endpoint, &service, &operation, &reason);
        self.transact(move |tx| {
            Box::pin(async move {
                let now = tx.now;
                let txn = tx.txn.as_mut();
                let fx = &mut tx.fx;
                kernel::require_namespace(txn, ns).await?;
                let op = load_operation(txn, ns, endpoint, service, operation).await?;
                let key = call_key(ns, &op, call_id);
                let mut call = tables::get::<ServiceCallRecord>(txn, &key)
                    .await?
                    .ok_or_else(|| call_not_found(&op, call_id))?;
                cancel_in_txn(txn, &mut call, reason.clone(), now, fx).await?;
                Ok(view(call, false))
            })
        })
        .await
    }
}

async fn read_call(
    txn: &mut dyn KvTxn,
    ns: &str,
    endpoint: &str,
    service: &str,
    operation: &str,
    call_id: &str,
) -> Result<ServiceCallView> {
    let (endpoint, service, operation) = (
        normalize_name(endpoint),
        normalize_name(service),
        normalize_name(operation),
    );
    kernel::require_namespace(txn, ns).await?;
    let op = load_operation(txn, ns, &endpoint, &service, &operation).await?;
    let call = tables::get_snapshot::<ServiceCallRecord>(txn, &call_key(ns, &op, call_id))
        .await?
        .ok_or_else(|| call_not_found(&op, call_id))?;
    Ok(view(call, false))
}
