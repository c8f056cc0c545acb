//! Durable service calls through the execute route, for operations bound to
//! `start_workflow`: the call and its linked workflow start commit in one transaction;
//! the call's status is the linked run's (read when the call is described), so no
//! reaction to the run's close is needed.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::clock::Millis;
use crate::engine::Engine;
use crate::error::{Error, RejectKind, Result};
use crate::keys::{prefix, Key};
use crate::model::{RunRecord, RunStatus};
use crate::workflow::{close_in_txn, start_in_txn, CloseCommand, DuplicatePolicy, StartWorkflow};
use crate::{history, ids, kernel, tables};

use super::catalog::{load_operation, normalize_name, OperationRecord};

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
    /// The workflow id the started workflow gets (default `svc-{call id}`).
    pub target_workflow_instance_id: Option<String>,
    /// Task queue of the started workflow when the binding names none.
    pub queue: Option<String>,
    pub business_key: Option<String>,
    /// `return_existing_active` (default) or `reject_duplicate`.
    pub reject_duplicate: bool,
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
    pub linked_workflow_instance_id: String,
    pub linked_workflow_run_id: String,
    /// The operation's policies when the call was accepted.
    pub policies: Value,
    /// Set when the call was cancelled through its cancel route.
    pub cancel_reason: Option<String>,
    pub accepted_at_ms: Millis,
    pub cancelled_at_ms: Option<Millis>,
}

/// A call with what its linked run says now.
#[derive(Debug, Clone)]
pub struct ServiceCallView {
    pub call: ServiceCallRecord,
    /// `started`, `completed`, `failed` or `cancelled`.
    pub status: &'static str,
    /// The linked run's output envelope, when completed.
    pub output: Value,
    /// The failure message, when failed or cancelled.
    pub message: Option<String>,
    pub closed_at_ms: Option<Millis>,
    /// Whether an earlier request with the same idempotency key created it.
    pub idempotent_replay: bool,
}

fn call_key(ns: &str, op: &OperationRecord, id: &str) -> Vec<u8> {
    Key::new(prefix::SERVICE_CALL)
        .str(ns)
        .str(&op.endpoint_name)
        .str(&op.service_name)
        .str(&op.operation_name)
        .str(id)
        .into_bytes()
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

fn unsupported_binding(op: &OperationRecord) -> Error {
    Error::reject(
        RejectKind::Conflict,
        "binding_not_supported",
        format!(
            "operation '{}' is bound to {}; Keel executes only start_workflow bindings so far",
            op.operation_name, op.spec.handler_binding_kind
        ),
    )
    .with(
        "handler_binding_kind",
        op.spec.handler_binding_kind.as_str(),
    )
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

/// The workflow type and task queue a `start_workflow` binding names.
fn start_target(op: &OperationRecord, queue: Option<&str>) -> (String, String) {
    let b = &op.spec.handler_binding;
    let workflow_type = b
        .get("workflow_type")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| op.spec.handler_target_reference.clone())
        .unwrap_or_default();
    let task_queue = b
        .get("task_queue")
        .and_then(Value::as_str)
        .or(queue)
        .unwrap_or("default")
        .to_string();
    (workflow_type, task_queue)
}

async fn view(
    txn: &mut dyn crate::storage::KvTxn,
    call: ServiceCallRecord,
    idempotent_replay: bool,
) -> Result<ServiceCallView> {
    let run: Option<RunRecord> = tables::get_snapshot(
        txn,
        &tables::run_key(&call.namespace, &call.linked_workflow_run_id),
    )
    .await?;
    let mut v = ServiceCallView {
        call,
        status: "started",
        output: Value::Null,
        message: None,
        closed_at_ms: None,
        idempotent_replay,
    };
    let Some(run) = run else {
        // The linked run was purged by retention: the call's outcome is gone with it.
        v.status = "failed";
        v.message = Some("the linked workflow run no longer exists".into());
        return Ok(v);
    };
    if !run.status.is_terminal() {
        return Ok(v);
    }
    let seq = run.lifecycle.close_event_seq.unwrap_or(run.last_event_seq);
    let payload = history::event_payload(txn, &run.namespace, &run.run_id, seq)
        .await?
        .unwrap_or(Value::Null);
    v.closed_at_ms = run.closed_at_ms;
    match run.status {
        RunStatus::Completed => {
            v.status = "completed";
            v.output = payload.get("output").cloned().unwrap_or(Value::Null);
        }
        RunStatus::Cancelled => {
            v.status = "cancelled";
            v.message = Some(
                v.call
                    .cancel_reason
                    .clone()
                    .unwrap_or_else(|| "the linked workflow was cancelled".into()),
            );
        }
        other => {
            v.status = "failed";
            v.message = Some(
                payload
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("the linked workflow ended {}", other.as_str())),
            );
        }
    }
    Ok(v)
}

impl Engine {
    /// Executes an operation: creates the durable call and starts its linked workflow in
    /// one transaction. A repeated `idempotency_key` (per operation and caller namespace)
    /// returns the first call. 409 `binding_not_supported` for bindings other than
    /// `start_workflow`.
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
        let (endpoint, service, operation, req, call_id, run_id) =
            (&endpoint, &service, &operation, &req, &call_id, &run_id);
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                let fx = &mut tx.fx;
                kernel::require_namespace(txn, ns).await?;
                let op = load_operation(txn, ns, endpoint, service, operation).await?;
                let caller_ns = req
                    .caller_namespace
                    .clone()
                    .unwrap_or_else(|| ns.to_string());
                let ikey = req
                    .idempotency_key
                    .as_deref()
                    .map(|k| idempotency_key(ns, &op, &caller_ns, k));
                if let Some(ikey) = &ikey {
                    if let Some(existing) = tables::get::<String>(txn, ikey).await? {
                        let call =
                            tables::get::<ServiceCallRecord>(txn, &call_key(ns, &op, &existing))
                                .await?
                                .ok_or_else(|| {
                                    Error::corrupt("idempotency index without its call")
                                })?;
                        let own = existing == *call_id;
                        return view(txn, call, !own).await;
                    }
                }
                if op.spec.handler_binding_kind != "start_workflow" {
                    return Err(unsupported_binding(&op));
                }
                let (workflow_type, task_queue) = start_target(&op, req.queue.as_deref());
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
                let start = StartWorkflow {
                    workflow_id: Some(workflow_id.clone()),
                    workflow_type: workflow_type.clone(),
                    task_queue,
                    input: req.arguments.clone(),
                    execution_timeout_seconds: op
                        .spec
                        .deadline_policy
                        .get("timeout_seconds")
                        .and_then(Value::as_u64),
                    run_timeout_seconds: None,
                    duplicate_policy: if req.reject_duplicate {
                        DuplicatePolicy::Fail
                    } else {
                        DuplicatePolicy::UseExisting
                    },
                    memo: json!({}),
                    search_attributes: json!({}),
                    priority: 5,
                    build_id: None,
                };
                let started = start_in_txn(txn, ns, &start, &workflow_id, run_id, now, fx).await?;
                let call = ServiceCallRecord {
                    id: call_id.clone(),
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
                    operation_mode: req
                        .mode_override
                        .clone()
                        .unwrap_or_else(|| op.spec.operation_mode.clone()),
                    resolved_binding_kind: "start_workflow".into(),
                    resolved_target_reference: workflow_type,
                    linked_workflow_instance_id: started.run.workflow_id.clone(),
                    linked_workflow_run_id: started.run.run_id.clone(),
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
                };
                tables::put(txn, &call_key(ns, &op, call_id), &call)?;
                if let Some(ikey) = &ikey {
                    tables::put(txn, ikey, call_id)?;
                }
                view(txn, call, false).await
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
        let (endpoint, service, operation) = (
            normalize_name(endpoint),
            normalize_name(service),
            normalize_name(operation),
        );
        let mut txn = self.inner.store.begin().await?;
        let txn = txn.as_mut();
        kernel::require_namespace(txn, ns).await?;
        let op = load_operation(txn, ns, &endpoint, &service, &operation).await?;
        let call = tables::get_snapshot::<ServiceCallRecord>(txn, &call_key(ns, &op, call_id))
            .await?
            .ok_or_else(|| call_not_found(&op, call_id))?;
        view(txn, call, false).await
    }

    /// Cancels a call: its linked workflow is cancelled (an already closed one is left
    /// as it ended, and the call answers with that outcome).
    pub async fn cancel_service_call(
        &self,
        ns: &str,
        endpoint: &str,
        service: &str,
        operation: &str,
        call_id: &str,
        reason: Option<String>,
    ) -> Result<ServiceCallView> {
        let now = self.now_ms();
        let command_id = ids::new_id(now);
        let (endpoint, service, operation) = (
            normalize_name(endpoint),
            normalize_name(service),
            normalize_name(operation),
        );
        let (endpoint, service, operation, reason, command_id) =
            (&endpoint, &service, &operation, &reason, &command_id);
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                let fx = &mut tx.fx;
                kernel::require_namespace(txn, ns).await?;
                let op = load_operation(txn, ns, endpoint, service, operation).await?;
                let key = call_key(ns, &op, call_id);
                let mut call = tables::get::<ServiceCallRecord>(txn, &key)
                    .await?
                    .ok_or_else(|| call_not_found(&op, call_id))?;
                let run: Option<RunRecord> =
                    tables::get(txn, &tables::run_key(ns, &call.linked_workflow_run_id)).await?;
                if run.is_some_and(|r| !r.status.is_terminal()) {
                    close_in_txn(
                        txn,
                        ns,
                        &call.linked_workflow_instance_id,
                        Some(&call.linked_workflow_run_id),
                        CloseCommand::Cancel,
                        reason.as_deref(),
                        command_id,
                        now,
                        fx,
                    )
                    .await?;
                    call.cancel_reason = Some(
                        reason
                            .clone()
                            .unwrap_or_else(|| "the service call was cancelled".into()),
                    );
                    call.cancelled_at_ms = Some(now);
                    tables::put(txn, &key, &call)?;
                }
                view(txn, call, false).await
            })
        })
        .await
    }
}
