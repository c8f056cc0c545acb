//! The service catalog routes (`/api/service-endpoints/...`, admin): endpoints, services
//! under an endpoint, operations under a service. Names are matched case-insensitively
//! and answered lowercase; deletes answer 200 with `outcome: "deleted"`.

use hyper::StatusCode;
use keel_engine::avro::{decode_blob, envelope, AvroValue};
use keel_engine::clock::format_timestamp;
use keel_engine::services::outbound::parse_http_url;
use keel_engine::services::{
    valid_catalog_name, CatalogPatch, EndpointRecord, ExecuteRequest, OperationPatch,
    OperationRecord, OperationSpec, ServiceCallView, ServiceRecord, BINDING_KINDS,
    MAX_CATALOG_NAME, OPERATION_MODES,
};
use serde_json::{json, Value};

use crate::call::{AppState, Call, Reply};
use crate::error::ApiError;
use crate::router::Op;
use crate::validate::Fields;

const MAX_DESCRIPTION: usize = 1000;
const MAX_TARGET_REFERENCE: usize = 191;
/// Policy fields of an operation: each an object or null.
const POLICIES: &[&str] = &[
    "deadline_policy",
    "idempotency_policy",
    "cancellation_policy",
    "retry_policy",
    "boundary_policy",
];

fn endpoint_json(r: &EndpointRecord) -> Value {
    json!({
        "id": r.id,
        "namespace": r.namespace,
        "endpoint_name": r.endpoint_name,
        "description": r.description,
        "metadata": r.metadata,
        "created_at": format_timestamp(r.created_at_ms),
        "updated_at": format_timestamp(r.updated_at_ms),
    })
}

fn service_json(r: &ServiceRecord) -> Value {
    json!({
        "id": r.id,
        "namespace": r.namespace,
        "endpoint_id": r.endpoint_id,
        "endpoint_name": r.endpoint_name,
        "service_name": r.service_name,
        "description": r.description,
        "metadata": r.metadata,
        "created_at": format_timestamp(r.created_at_ms),
        "updated_at": format_timestamp(r.updated_at_ms),
    })
}

fn operation_json(r: &OperationRecord) -> Value {
    let s = &r.spec;
    json!({
        "id": r.id,
        "namespace": r.namespace,
        "endpoint_id": r.endpoint_id,
        "endpoint_name": r.endpoint_name,
        "service_id": r.service_id,
        "service_name": r.service_name,
        "operation_name": r.operation_name,
        "description": s.description,
        "operation_mode": s.operation_mode,
        "handler_binding_kind": s.handler_binding_kind,
        "handler_target_reference": s.handler_target_reference,
        "handler_binding": s.handler_binding,
        "deadline_policy": s.deadline_policy,
        "idempotency_policy": s.idempotency_policy,
        "cancellation_policy": s.cancellation_policy,
        "retry_policy": s.retry_policy,
        "boundary_policy": s.boundary_policy,
        "metadata": s.metadata,
        "created_at": format_timestamp(r.created_at_ms),
        "updated_at": format_timestamp(r.updated_at_ms),
    })
}

/// A catalog name in a body: required, `[A-Za-z0-9._-]+`, at most 191 bytes.
fn catalog_name(f: &mut Fields<'_>, field: &str) -> String {
    let name = f.required_str(field, MAX_CATALOG_NAME).unwrap_or_default();
    if !name.is_empty() && !valid_catalog_name(&name) {
        f.error(
            field,
            format!("The {field} field may contain only letters, digits, '.', '_' and '-'."),
        );
    }
    name
}

/// A name in the path: the same rule, reported on the path parameter.
fn path_name(call: &Call, i: usize, field: &str) -> Result<String, ApiError> {
    let name = call.param(i);
    if valid_catalog_name(name) {
        Ok(name.to_string())
    } else {
        Err(ApiError::field(
            field,
            format!(
                "The {field} path segment may contain only letters, digits, '.', '_' and '-' (at most {MAX_CATALOG_NAME} bytes)."
            ),
        ))
    }
}

/// `Some(value)` when `field` is present (null included), for fields a PUT may clear.
fn present<'a>(body: &'a Value, field: &str) -> Option<&'a Value> {
    body.as_object().and_then(|m| m.get(field))
}

/// An optional nullable object: `None` absent, `Some(Null)` explicitly cleared.
fn nullable_object(f: &mut Fields<'_>, body: &Value, field: &str) -> Option<Value> {
    match present(body, field) {
        None => None,
        Some(Value::Null) => Some(Value::Null),
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => {
            f.error(
                field,
                format!("The {field} field must be an object or null."),
            );
            None
        }
    }
}

/// A PUT's description: absent leaves it, null clears it.
fn description_patch(f: &mut Fields<'_>, body: &Value) -> Option<Option<String>> {
    match present(body, "description") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(_) => f.optional_str("description", MAX_DESCRIPTION).map(Some),
    }
}

fn catalog_patch(body: &Value, renames: &[(&str, &str)]) -> Result<CatalogPatch, ApiError> {
    let mut f = Fields::new(body)?;
    for (field, current) in renames {
        if let Some(v) = present(body, field) {
            if v.as_str().map(str::to_ascii_lowercase).as_deref() != Some(*current) {
                f.error(field, format!("The {field} field cannot be changed."));
            }
        }
    }
    let description = description_patch(&mut f, body);
    let metadata =
        nullable_object(&mut f, body, "metadata").map(|m| if m.is_null() { json!({}) } else { m });
    f.finish()?;
    Ok(CatalogPatch {
        description,
        metadata,
    })
}

fn one_of(
    f: &mut Fields<'_>,
    field: &str,
    value: Option<String>,
    allowed: &[&str],
) -> Option<String> {
    let v = value?;
    if allowed.contains(&v.as_str()) {
        Some(v)
    } else {
        f.error(
            field,
            format!("The {field} field must be one of: {}.", allowed.join(", ")),
        );
        None
    }
}

fn operation_spec(body: &Value) -> Result<(String, OperationSpec), ApiError> {
    let mut f = Fields::new(body)?;
    let name = catalog_name(&mut f, "operation_name");
    let description = f.optional_str("description", MAX_DESCRIPTION);
    let mode = f.required_str("operation_mode", 16);
    let mode = one_of(&mut f, "operation_mode", mode, OPERATION_MODES);
    let kind = f.required_str("handler_binding_kind", 64);
    let kind = one_of(&mut f, "handler_binding_kind", kind, BINDING_KINDS);
    let target = f.optional_str("handler_target_reference", MAX_TARGET_REFERENCE);
    let binding = nullable_object(&mut f, body, "handler_binding").unwrap_or(Value::Null);
    let mut policies = Vec::with_capacity(POLICIES.len());
    for p in POLICIES {
        policies.push(nullable_object(&mut f, body, p).unwrap_or(Value::Null));
    }
    let metadata = f.optional_object("metadata").unwrap_or_else(|| json!({}));
    let spec = OperationSpec {
        description,
        operation_mode: mode.unwrap_or_default(),
        handler_binding_kind: kind.unwrap_or_default(),
        handler_target_reference: target,
        handler_binding: binding,
        deadline_policy: policies[0].clone(),
        idempotency_policy: policies[1].clone(),
        cancellation_policy: policies[2].clone(),
        retry_policy: policies[3].clone(),
        boundary_policy: policies[4].clone(),
        metadata,
    };
    let has_target = spec
        .handler_target_reference
        .as_deref()
        .is_some_and(|r| !r.trim().is_empty())
        || spec
            .handler_binding
            .as_object()
            .is_some_and(|b| !b.is_empty());
    if !has_target {
        f.error(
            "handler_target_reference",
            "Provide handler_target_reference or a non-empty handler_binding.",
        );
    } else if spec.handler_binding_kind == "invocable_http" {
        // The URL's shape is checked here; its host against the allow-list when a call
        // is made (the list is this server's configuration, not the catalog's).
        let url = spec
            .handler_binding
            .get("url")
            .and_then(Value::as_str)
            .or(spec.handler_target_reference.as_deref());
        let field = if spec.handler_binding.get("url").is_some() {
            "handler_binding.url"
        } else {
            "handler_target_reference"
        };
        match url.map(parse_http_url) {
            None => f.error(
                "handler_binding.url",
                "An invocable_http operation needs handler_binding.url, an http:// URL.",
            ),
            Some(Err(why)) => f.error(field, format!("The URL is not usable: {why}.")),
            Some(Ok(_)) => {}
        }
    }
    f.finish()?;
    Ok((name, spec))
}

fn operation_patch(body: &Value, current: &str) -> Result<OperationPatch, ApiError> {
    let mut f = Fields::new(body)?;
    if let Some(v) = present(body, "operation_name") {
        if v.as_str().map(str::to_ascii_lowercase).as_deref() != Some(current) {
            f.error(
                "operation_name",
                "The operation_name field cannot be changed.",
            );
        }
    }
    let description = description_patch(&mut f, body);
    let mode = f.optional_str("operation_mode", 16);
    let mode = one_of(&mut f, "operation_mode", mode, OPERATION_MODES);
    let kind = f.optional_str("handler_binding_kind", 64);
    let kind = one_of(&mut f, "handler_binding_kind", kind, BINDING_KINDS);
    let target = match present(body, "handler_target_reference") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(_) => f
            .optional_str("handler_target_reference", MAX_TARGET_REFERENCE)
            .map(Some),
    };
    let binding = nullable_object(&mut f, body, "handler_binding");
    let mut policies = Vec::with_capacity(POLICIES.len());
    for p in POLICIES {
        policies.push(nullable_object(&mut f, body, p));
    }
    let metadata =
        nullable_object(&mut f, body, "metadata").map(|m| if m.is_null() { json!({}) } else { m });
    f.finish()?;
    Ok(OperationPatch {
        description,
        operation_mode: mode,
        handler_binding_kind: kind,
        handler_target_reference: target,
        handler_binding: binding,
        deadline_policy: policies[0].clone(),
        idempotency_policy: policies[1].clone(),
        cancellation_policy: policies[2].clone(),
        retry_policy: policies[3].clone(),
        boundary_policy: policies[4].clone(),
        metadata,
    })
}

/// Service catalog routes.
pub async fn handle(state: &AppState, op: Op, call: Call) -> Result<Reply, ApiError> {
    let engine = &state.engine;
    let ns = call.namespace.as_str();
    match op {
        Op::ListServiceEndpoints => {
            let list: Vec<Value> = engine
                .list_service_endpoints(ns)
                .await?
                .iter()
                .map(endpoint_json)
                .collect();
            Ok(Reply::json(
                StatusCode::OK,
                &json!({"namespace": ns, "service_endpoints": list}),
            ))
        }
        Op::CreateServiceEndpoint => {
            let mut f = Fields::new(&call.body)?;
            let name = catalog_name(&mut f, "endpoint_name");
            let description = f.optional_str("description", MAX_DESCRIPTION);
            let metadata = f.optional_object("metadata").unwrap_or_else(|| json!({}));
            f.finish()?;
            let r = engine
                .create_service_endpoint(ns, &name, description, metadata)
                .await?;
            Ok(Reply::json(StatusCode::CREATED, &endpoint_json(&r)))
        }
        Op::DescribeServiceEndpoint => {
            let e = path_name(&call, 0, "endpoint_name")?;
            let r = engine.describe_service_endpoint(ns, &e).await?;
            Ok(Reply::json(StatusCode::OK, &endpoint_json(&r)))
        }
        Op::UpdateServiceEndpoint => {
            let e = path_name(&call, 0, "endpoint_name")?;
            let patch = catalog_patch(&call.body, &[("endpoint_name", &e.to_ascii_lowercase())])?;
            let r = engine.update_service_endpoint(ns, &e, patch).await?;
            Ok(Reply::json(StatusCode::OK, &endpoint_json(&r)))
        }
        Op::DeleteServiceEndpoint => {
            let e = path_name(&call, 0, "endpoint_name")?;
            let name = engine.delete_service_endpoint(ns, &e).await?;
            Ok(Reply::json(
                StatusCode::OK,
                &json!({"namespace": ns, "endpoint_name": name, "outcome": "deleted"}),
            ))
        }
        Op::ListServices => {
            let e = path_name(&call, 0, "endpoint_name")?;
            let list: Vec<Value> = engine
                .list_services(ns, &e)
                .await?
                .iter()
                .map(service_json)
                .collect();
            Ok(Reply::json(
                StatusCode::OK,
                &json!({"namespace": ns, "endpoint_name": e.to_ascii_lowercase(), "services": list}),
            ))
        }
        Op::CreateService => {
            let e = path_name(&call, 0, "endpoint_name")?;
            let mut f = Fields::new(&call.body)?;
            let name = catalog_name(&mut f, "service_name");
            let description = f.optional_str("description", MAX_DESCRIPTION);
            let metadata = f.optional_object("metadata").unwrap_or_else(|| json!({}));
            f.finish()?;
            let r = engine
                .create_service(ns, &e, &name, description, metadata)
                .await?;
            Ok(Reply::json(StatusCode::CREATED, &service_json(&r)))
        }
        Op::DescribeService => {
            let e = path_name(&call, 0, "endpoint_name")?;
            let s = path_name(&call, 1, "service_name")?;
            let r = engine.describe_service(ns, &e, &s).await?;
            Ok(Reply::json(StatusCode::OK, &service_json(&r)))
        }
        Op::UpdateService => {
            let e = path_name(&call, 0, "endpoint_name")?;
            let s = path_name(&call, 1, "service_name")?;
            let patch = catalog_patch(
                &call.body,
                &[
                    ("endpoint_name", &e.to_ascii_lowercase()),
                    ("service_name", &s.to_ascii_lowercase()),
                ],
            )?;
            let r = engine.update_service(ns, &e, &s, patch).await?;
            Ok(Reply::json(StatusCode::OK, &service_json(&r)))
        }
        Op::DeleteService => {
            let e = path_name(&call, 0, "endpoint_name")?;
            let s = path_name(&call, 1, "service_name")?;
            engine.delete_service(ns, &e, &s).await?;
            Ok(Reply::json(
                StatusCode::OK,
                &json!({
                    "namespace": ns,
                    "endpoint_name": e.to_ascii_lowercase(),
                    "service_name": s.to_ascii_lowercase(),
                    "outcome": "deleted",
                }),
            ))
        }
        Op::ListOperations => {
            let e = path_name(&call, 0, "endpoint_name")?;
            let s = path_name(&call, 1, "service_name")?;
            let list: Vec<Value> = engine
                .list_operations(ns, &e, &s)
                .await?
                .iter()
                .map(operation_json)
                .collect();
            Ok(Reply::json(
                StatusCode::OK,
                &json!({
                    "namespace": ns,
                    "endpoint_name": e.to_ascii_lowercase(),
                    "service_name": s.to_ascii_lowercase(),
                    "operations": list,
                }),
            ))
        }
        Op::CreateOperation => {
            let e = path_name(&call, 0, "endpoint_name")?;
            let s = path_name(&call, 1, "service_name")?;
            let (name, spec) = operation_spec(&call.body)?;
            let r = engine.create_operation(ns, &e, &s, &name, spec).await?;
            Ok(Reply::json(StatusCode::CREATED, &operation_json(&r)))
        }
        Op::DescribeOperation => {
            let e = path_name(&call, 0, "endpoint_name")?;
            let s = path_name(&call, 1, "service_name")?;
            let o = path_name(&call, 2, "operation_name")?;
            let r = engine.describe_operation(ns, &e, &s, &o).await?;
            Ok(Reply::json(StatusCode::OK, &operation_json(&r)))
        }
        Op::UpdateOperation => {
            let e = path_name(&call, 0, "endpoint_name")?;
            let s = path_name(&call, 1, "service_name")?;
            let o = path_name(&call, 2, "operation_name")?;
            let patch = operation_patch(&call.body, &o.to_ascii_lowercase())?;
            let r = engine.update_operation(ns, &e, &s, &o, patch).await?;
            Ok(Reply::json(StatusCode::OK, &operation_json(&r)))
        }
        Op::DeleteOperation => {
            let e = path_name(&call, 0, "endpoint_name")?;
            let s = path_name(&call, 1, "service_name")?;
            let o = path_name(&call, 2, "operation_name")?;
            engine.delete_operation(ns, &e, &s, &o).await?;
            Ok(Reply::json(
                StatusCode::OK,
                &json!({
                    "namespace": ns,
                    "endpoint_name": e.to_ascii_lowercase(),
                    "service_name": s.to_ascii_lowercase(),
                    "operation_name": o.to_ascii_lowercase(),
                    "outcome": "deleted",
                }),
            ))
        }
        _ => Err(super::unrouted(op)),
    }
}

// ---- service calls (the execute route, describe, cancel) ----

fn call_json(v: &ServiceCallView) -> Value {
    let c = &v.call;
    let ts = |ms: Option<i64>| ms.map(format_timestamp);
    let closed = |s: &str| {
        if v.status == s {
            ts(v.closed_at_ms)
        } else {
            None
        }
    };
    let result = match &v.output {
        Value::Object(m) if m.get("codec").and_then(Value::as_str) == Some("avro") => m
            .get("blob")
            .and_then(Value::as_str)
            .and_then(|b| decode_blob(b).ok())
            .map_or(Value::Null, |a| a.to_json()),
        other => other.clone(),
    };
    let outcome = match v.status {
        "started" => "accepted",
        s => s,
    };
    let failed = matches!(v.status, "failed" | "cancelled" | "timed_out");
    let mut out = json!({
        "id": c.id,
        "service_call_id": c.id,
        "namespace": c.namespace,
        "target_namespace": c.namespace,
        "endpoint_id": c.endpoint_id,
        "endpoint_name": c.endpoint_name,
        "service_id": c.service_id,
        "service_name": c.service_name,
        "operation_id": c.operation_id,
        "operation_name": c.operation_name,
        "caller_namespace": c.caller_namespace,
        "caller_workflow_instance_id": c.caller_workflow_instance_id,
        "caller_workflow_run_id": c.caller_workflow_run_id,
        "linked_workflow_instance_id": c.linked_workflow_instance_id,
        "linked_workflow_run_id": c.linked_workflow_run_id,
        "linked_workflow_update_id": c.linked_workflow_update_id,
        "status": v.status,
        "outcome": outcome,
        "accepted": !failed,
        "operation_mode": c.operation_mode,
        "resolved_binding_kind": c.resolved_binding_kind,
        "resolved_target_reference": c.resolved_target_reference,
        "payload_codec": "avro",
        "input_payload_reference": null,
        "output_payload_reference": null,
        "result": result,
        "result_envelope": if v.output.is_null() { Value::Null } else { v.output.clone() },
        "message": v.message,
        "failure_message": if failed { json!(v.message) } else { Value::Null },
        "reason": if failed { json!(v.status) } else { Value::Null },
        "service_error_type": if failed { json!(c.error_type) } else { Value::Null },
        "typed_error_message": if failed { json!(v.message) } else { Value::Null },
        "deadline_at": ts(c.deadline_at_ms),
        "idempotency_key": c.idempotency_key,
        "idempotent_replay": v.idempotent_replay,
        "accepted_at": format_timestamp(c.accepted_at_ms),
        "started_at": format_timestamp(c.accepted_at_ms),
        "completed_at": closed("completed"),
        "failed_at": closed("failed").or_else(|| closed("timed_out")),
        "cancelled_at": ts(c.cancelled_at_ms).or_else(|| closed("cancelled")),
    });
    if let (Some(obj), Some(policies)) = (out.as_object_mut(), c.policies.as_object()) {
        for (k, p) in policies {
            obj.insert(k.clone(), p.clone());
        }
    }
    out
}

/// The execute/describe/cancel answer: the snapshot under `service_call` and flat; an
/// execute whose call is still running answers 202, everything else 200.
fn call_reply(v: &ServiceCallView, execute: bool) -> Reply {
    let snapshot = call_json(v);
    let mut body = snapshot.clone();
    body["service_call"] = snapshot;
    let status = if execute && v.status == "started" {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Reply::json(status, &body)
}

/// Longest `wait_timeout_seconds` of an execute.
const MAX_WAIT_SECONDS: i64 = 300;
/// A synchronous execute waits this long when it names no timeout.
const DEFAULT_WAIT_SECONDS: u64 = 30;

async fn execute(state: &AppState, call: &Call) -> Result<Reply, ApiError> {
    let e = path_name(call, 0, "endpoint_name")?;
    let s = path_name(call, 1, "service_name")?;
    let o = path_name(call, 2, "operation_name")?;
    let body = &call.body;
    let mut f = Fields::new(body)?;
    let codec = f
        .optional_str("payload_codec", 191)
        .unwrap_or_else(|| "avro".into());
    let arguments = match present(body, "arguments") {
        None | Some(Value::Null) => envelope(&AvroValue::Array(Vec::new())),
        Some(Value::String(blob)) => json!({"codec": codec, "blob": blob}),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            f.error(
                "arguments",
                "The arguments field must be a payload blob or envelope.",
            );
            Value::Null
        }
    };
    let mode = f.optional_str("mode_override", 16);
    let mode = one_of(&mut f, "mode_override", mode, OPERATION_MODES);
    let wait_for = f.optional_str("wait_for", 16);
    let wait_for = one_of(&mut f, "wait_for", wait_for, &["accepted", "completed"]);
    let wait_timeout = f.optional_int("wait_timeout_seconds", 0, MAX_WAIT_SECONDS);
    let idempotency_key = f.optional_str("idempotency_key", 191);
    let caller_namespace = f
        .optional_str("caller_namespace", 255)
        .map(|n| n.to_ascii_lowercase());
    let caller_workflow_instance_id = f.optional_str("caller_workflow_instance_id", 191);
    let caller_workflow_run_id = f.optional_str("caller_workflow_run_id", 191);
    let target_workflow_instance_id = f.optional_id("target_workflow_instance_id", 191);
    let target_workflow_run_id = f.optional_id("target_workflow_run_id", 191);
    let queue = f.optional_str("queue", 191);
    let business_key = f.optional_str("business_key", 191);
    let duplicate = f.optional_str("duplicate_start_policy", 32);
    let duplicate = one_of(
        &mut f,
        "duplicate_start_policy",
        duplicate,
        &["reject_duplicate", "return_existing_active"],
    );
    // `labels` is accepted and not used (a started workflow has no labels).
    f.optional_object("labels");
    let memo = f.optional_object("memo");
    let search_attributes = f.optional_object("search_attributes");
    f.finish()?;
    // Cross-namespace authority: the token must reach the caller namespace too (the
    // target namespace was resolved by the pipeline).
    if let Some(caller) = &caller_namespace {
        if !call.principal.can_see(caller) || !state.engine.namespace_exists(caller).await? {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "namespace_not_found",
                format!("caller namespace '{caller}' does not exist"),
            )
            .with("namespace", caller.as_str())
            .with("field", "caller_namespace"));
        }
    }
    let request = ExecuteRequest {
        arguments,
        mode_override: mode.clone(),
        idempotency_key,
        caller_namespace,
        caller_workflow_instance_id,
        caller_workflow_run_id,
        target_workflow_instance_id,
        queue,
        business_key,
        reject_duplicate: duplicate.as_deref() == Some("reject_duplicate"),
        target_workflow_run_id,
        memo,
        search_attributes,
    };
    let ns = call.namespace.as_str();
    let mut view = state
        .engine
        .execute_operation(ns, &e, &s, &o, request)
        .await?;
    let sync = match wait_for.as_deref() {
        Some("completed") => true,
        Some(_) => false,
        None => view.call.operation_mode == "sync",
    };
    if sync && view.status == "started" {
        let wait = wait_timeout.map_or(DEFAULT_WAIT_SECONDS, |w| w as u64);
        let deadline = state.engine.now_ms() + (wait as i64) * 1000;
        // Woken by the call's close (a watch on its record), bounded by the wait.
        view = state
            .engine
            .wait_service_call(ns, &e, &s, &o, &view.call.id, deadline)
            .await?;
    }
    Ok(call_reply(&view, true))
}

/// Execute, describe and cancel of service calls.
pub async fn handle_calls(state: &AppState, op: Op, call: Call) -> Result<Reply, ApiError> {
    let ns = call.namespace.as_str();
    match op {
        Op::ExecuteOperation => execute(state, &call).await,
        Op::DescribeServiceCall | Op::CancelServiceCall => {
            let e = path_name(&call, 0, "endpoint_name")?;
            let s = path_name(&call, 1, "service_name")?;
            let o = path_name(&call, 2, "operation_name")?;
            let id = call.param(3).to_string();
            let view = if op == Op::DescribeServiceCall {
                state
                    .engine
                    .describe_service_call(ns, &e, &s, &o, &id)
                    .await?
            } else {
                let mut f = Fields::new(&call.body)?;
                let reason = f.optional_str("reason", 1000);
                f.finish()?;
                state
                    .engine
                    .cancel_service_call(ns, &e, &s, &o, &id, reason)
                    .await?
            };
            Ok(call_reply(&view, false))
        }
        _ => Err(super::unrouted(op)),
    }
}
