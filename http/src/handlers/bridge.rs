//! Webhook bridge adapters: `POST /api/bridge-adapters/webhook/{adapter}` takes one event
//! and answers the outcome document (202 accepted, 200 duplicate, 422 rejected, the
//! last also for a malformed event, with `errors` by field); `GET /api/bridge-adapters`
//! and `GET/PUT/DELETE /api/bridge-adapters/webhook/{adapter}` configure the namespace's
//! adapters (admin).

use hyper::StatusCode;
use keel_engine::avro::{envelope, AvroValue};
use keel_engine::clock::format_timestamp;
use keel_engine::services::{
    AdapterSpec, BridgeAction, BridgeAdapterRecord, BridgeEvent, BridgeOutcome, BridgeTarget,
    BRIDGE_ACTIONS,
};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

use crate::call::{AppState, Call, Reply};
use crate::error::ApiError;
use crate::router::Op;
use crate::validate::Fields;

/// The outcome document's schema id.
pub const OUTCOME_SCHEMA: &str = "durable-workflow.v2.bridge-adapter-outcome.contract";
const MAX_ADAPTER_NAME: usize = 128;
const MAX_KEY: usize = 191;
const MAX_NAME: usize = 255;
const MAX_LIST: usize = 100;

/// Whether `name` is an adapter key: `[A-Za-z0-9._:-]+`, at most 128 bytes.
fn valid_adapter(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ADAPTER_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn adapter_param(call: &Call) -> Result<String, ApiError> {
    let a = call.param(0);
    if valid_adapter(a) {
        Ok(a.to_string())
    } else {
        Err(ApiError::field(
            "adapter",
            "The adapter path segment may contain only letters, digits, '.', '_', ':' and '-' (at most 128 bytes).",
        ))
    }
}

fn outcome_json(ns: &str, o: &BridgeOutcome) -> Value {
    let mut v = json!({
        "schema": OUTCOME_SCHEMA,
        "version": 1,
        "namespace": ns,
        "adapter": o.adapter,
        "action": o.action,
        "accepted": o.accepted,
        "outcome": o.outcome,
        "idempotency_key": o.idempotency_key,
        "reason": o.reason,
        "message": o.message,
        "target": o.target,
        "correlation": o.correlation,
        "workflow_id": o.workflow_id,
        "run_id": o.run_id,
        "workflow_type": o.workflow_type,
        "control_plane_outcome": o.control_plane_outcome,
        "request_id": o.request_id,
        "update_id": o.update_id,
        "recorded_at": format_timestamp(o.recorded_at_ms),
    });
    if o.outcome == "rejected" {
        v["rejection_reason"] = json!(o.reason);
    }
    v
}

fn outcome_reply(ns: &str, o: &BridgeOutcome) -> Reply {
    let status = match o.outcome.as_str() {
        "accepted" => StatusCode::ACCEPTED,
        "duplicate" => StatusCode::OK,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    Reply::json(status, &outcome_json(ns, o))
}

/// A refusal before the engine saw the event (unknown action, malformed fields): the
/// outcome document with `errors` by field, so the SDK's bridge client reads it too.
fn refuse(
    ns: &str,
    adapter: &str,
    action: Value,
    key: Value,
    reason: &str,
    message: &str,
    errors: Option<BTreeMap<String, Vec<String>>>,
) -> Reply {
    let mut v = json!({
        "schema": OUTCOME_SCHEMA,
        "version": 1,
        "namespace": ns,
        "adapter": adapter,
        "action": action,
        "accepted": false,
        "outcome": "rejected",
        "idempotency_key": key,
        "reason": reason,
        "rejection_reason": reason,
        "message": message,
        "target": {},
        "correlation": null,
        "workflow_id": null,
        "run_id": null,
        "workflow_type": null,
        "control_plane_outcome": format!("rejected_{reason}"),
    });
    if let Some(errors) = errors {
        v["errors"] = json!(errors);
    }
    Reply::json(StatusCode::UNPROCESSABLE_ENTITY, &v)
}

/// The workflow arguments of an event's `input`: a payload envelope as it is, a list as
/// the argument list, anything else as the one argument; absent means no arguments.
fn arguments(input: Option<&Value>) -> Value {
    match input {
        None | Some(Value::Null) => envelope(&AvroValue::Array(Vec::new())),
        Some(Value::Object(m))
            if m.get("codec").is_some_and(Value::is_string)
                && m.get("blob").is_some_and(Value::is_string) =>
        {
            Value::Object(m.clone())
        }
        Some(Value::Array(items)) => envelope(&AvroValue::Array(
            items.iter().map(AvroValue::from_json).collect(),
        )),
        Some(v) => envelope(&AvroValue::Array(vec![AvroValue::from_json(v)])),
    }
}

fn push(errors: &mut BTreeMap<String, Vec<String>>, field: &str, message: &str) {
    errors
        .entry(field.to_string())
        .or_default()
        .push(message.to_string());
}

fn target_str(
    target: &Map<String, Value>,
    field: &str,
    required: bool,
    errors: &mut BTreeMap<String, Vec<String>>,
) -> Option<String> {
    let path = format!("target.{field}");
    match target.get(field) {
        None | Some(Value::Null) => {
            if required {
                errors
                    .entry(path)
                    .or_default()
                    .push(format!("The target.{field} field is required."));
            }
            None
        }
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_NAME => Some(s.clone()),
        Some(_) => {
            errors.entry(path).or_default().push(format!(
                "The target.{field} field must be a non-empty string of at most {MAX_NAME} characters."
            ));
            None
        }
    }
}

async fn webhook(state: &AppState, call: &Call) -> Result<Reply, ApiError> {
    let ns = call.namespace.as_str();
    let adapter = call.param(0).to_string();
    let body = call.body.as_object();
    let field = |k: &str| body.and_then(|b| b.get(k));
    let action_value = field("action").cloned().unwrap_or(Value::Null);
    let key_value = field("idempotency_key").cloned().unwrap_or(Value::Null);
    let mut errors: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if body.is_none() {
        push(&mut errors, "body", "The body must be a JSON object.");
    }
    if !valid_adapter(&adapter) {
        push(&mut errors, "adapter",
            "The adapter path segment may contain only letters, digits, '.', '_', ':' and '-' (at most 128 bytes).",
        );
    }
    let action = match &action_value {
        Value::String(s) => match BridgeAction::parse(s) {
            Some(a) => Some(a),
            None if errors.is_empty() => {
                return Ok(refuse(
                    ns,
                    &adapter,
                    action_value.clone(),
                    key_value,
                    "unsupported_action",
                    &format!(
                        "action '{s}' is not supported; expected one of: {}",
                        BRIDGE_ACTIONS.join(", ")
                    ),
                    None,
                ));
            }
            None => None,
        },
        Value::Null => {
            push(&mut errors, "action", "The action field is required.");
            None
        }
        _ => {
            push(&mut errors, "action", "The action field must be a string.");
            None
        }
    };
    let key = match &key_value {
        Value::String(s) if !s.is_empty() && s.len() <= MAX_KEY => Some(s.clone()),
        Value::Null => {
            push(
                &mut errors,
                "idempotency_key",
                "The idempotency_key field is required.",
            );
            None
        }
        _ => {
            push(&mut errors, "idempotency_key",
                &format!("The idempotency_key field must be a non-empty string of at most {MAX_KEY} characters."),
            );
            None
        }
    };
    let correlation = match field("correlation") {
        None | Some(Value::Null) => Value::Null,
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            push(
                &mut errors,
                "correlation",
                "The correlation field must be an object.",
            );
            Value::Null
        }
    };
    let empty = Map::new();
    let target_map = match field("target") {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => {
            push(&mut errors, "target", "The target field is required.");
            &empty
        }
        Some(_) => {
            push(&mut errors, "target", "The target field must be an object.");
            &empty
        }
    };
    let mut target = BridgeTarget::default();
    if let Some(a) = action {
        target.workflow_id = target_str(
            target_map,
            "workflow_id",
            a != BridgeAction::StartWorkflow,
            &mut errors,
        );
        target.workflow_type = target_str(
            target_map,
            "workflow_type",
            a == BridgeAction::StartWorkflow,
            &mut errors,
        );
        target.task_queue = target_str(target_map, "task_queue", false, &mut errors);
        target.business_key = target_str(target_map, "business_key", false, &mut errors);
        target.signal_name = target_str(
            target_map,
            "signal_name",
            a == BridgeAction::SignalWorkflow,
            &mut errors,
        );
        target.update_name = target_str(
            target_map,
            "update_name",
            a == BridgeAction::UpdateWorkflow,
            &mut errors,
        );
        match target_str(target_map, "duplicate_policy", false, &mut errors).as_deref() {
            None | Some("use_existing") => {}
            Some("reject_duplicate") => target.reject_duplicate = true,
            Some(_) => errors
                .entry("target.duplicate_policy".into())
                .or_default()
                .push(
                "The target.duplicate_policy field must be one of: reject_duplicate, use_existing."
                    .into(),
            ),
        }
        if let Some(id) = &target.workflow_id {
            let ok = id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
            if !ok {
                errors.entry("target.workflow_id".into()).or_default().push(
                    "The target.workflow_id field may contain only letters, digits, '.', '_', ':' and '-'.".into(),
                );
            }
        }
    }
    let (Some(action), Some(key), true) = (action, key, errors.is_empty()) else {
        return Ok(refuse(
            ns,
            &adapter,
            action_value,
            key_value,
            "malformed_payload",
            "The event is malformed; see errors.",
            Some(errors),
        ));
    };
    let event = BridgeEvent {
        adapter,
        action,
        idempotency_key: key,
        target,
        input: arguments(field("input")),
        correlation,
    };
    let outcome = state.engine.bridge_webhook(ns, &event).await?;
    tracing::info!(
        namespace = %ns,
        adapter = %event.adapter,
        action = event.action.as_str(),
        outcome = %outcome.outcome,
        reason = outcome.reason.as_deref().unwrap_or(""),
        "bridge event"
    );
    Ok(outcome_reply(ns, &outcome))
}

fn adapter_json(r: &BridgeAdapterRecord) -> Value {
    let s = &r.spec;
    json!({
        "namespace": r.namespace,
        "adapter": r.adapter,
        "kind": "webhook",
        "path": format!("/api/bridge-adapters/webhook/{}", r.adapter),
        "description": s.description,
        "enabled": s.enabled,
        "actions": s.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        "workflow_types": s.workflow_types,
        "task_queues": s.task_queues,
        "signal_names": s.signal_names,
        "update_names": s.update_names,
        "created_at": format_timestamp(r.created_at_ms),
        "updated_at": format_timestamp(r.updated_at_ms),
    })
}

fn name_list(f: &mut Fields<'_>, field: &str) -> Vec<String> {
    let list = f.optional_str_list(field);
    if list.len() > MAX_LIST {
        f.error(
            field,
            format!("The {field} field holds at most {MAX_LIST} names."),
        );
    }
    for (i, n) in list.iter().enumerate() {
        if n.is_empty() || n.len() > MAX_NAME {
            f.error(
                &format!("{field}.{i}"),
                format!("Each name must be a non-empty string of at most {MAX_NAME} characters."),
            );
        }
    }
    list
}

fn adapter_spec(body: &Value) -> Result<AdapterSpec, ApiError> {
    let mut f = Fields::new(body)?;
    let description = f.optional_str("description", 1000);
    let enabled = match body.get("enabled") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            f.error("enabled", "The enabled field must be a boolean.");
            true
        }
    };
    let actions = match body.get("actions") {
        None | Some(Value::Null) => vec![
            BridgeAction::StartWorkflow,
            BridgeAction::SignalWorkflow,
            BridgeAction::UpdateWorkflow,
        ],
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str().and_then(BridgeAction::parse) {
                    Some(a) if !out.contains(&a) => out.push(a),
                    Some(_) => {}
                    None => f.error(
                        &format!("actions.{i}"),
                        format!("Each action must be one of: {}.", BRIDGE_ACTIONS.join(", ")),
                    ),
                }
            }
            if items.is_empty() {
                f.error(
                    "actions",
                    "The actions field must name at least one action.",
                );
            }
            out
        }
        Some(_) => {
            f.error("actions", "The actions field must be a list of strings.");
            Vec::new()
        }
    };
    let workflow_types = name_list(&mut f, "workflow_types");
    let task_queues = name_list(&mut f, "task_queues");
    let signal_names = name_list(&mut f, "signal_names");
    let update_names = name_list(&mut f, "update_names");
    if workflow_types.is_empty() {
        f.error(
            "workflow_types",
            "The workflow_types field must name the workflow types this adapter may start, signal or update.",
        );
    }
    if actions.contains(&BridgeAction::StartWorkflow) && task_queues.is_empty() {
        f.error(
            "task_queues",
            "An adapter that may start workflows must name the task queues it may start on.",
        );
    }
    f.finish()?;
    Ok(AdapterSpec {
        description,
        enabled,
        actions,
        workflow_types,
        task_queues,
        signal_names,
        update_names,
    })
}

/// Bridge routes.
pub async fn handle(state: &AppState, op: Op, call: Call) -> Result<Reply, ApiError> {
    let engine = &state.engine;
    let ns = call.namespace.as_str();
    match op {
        Op::BridgeWebhook => webhook(state, &call).await,
        Op::ListBridgeAdapters => {
            let list: Vec<Value> = engine
                .list_bridge_adapters(ns)
                .await?
                .iter()
                .map(adapter_json)
                .collect();
            Ok(Reply::json(
                StatusCode::OK,
                &json!({"namespace": ns, "adapters": list}),
            ))
        }
        Op::DescribeBridgeAdapter => {
            let a = adapter_param(&call)?;
            let r = engine.describe_bridge_adapter(ns, &a).await?;
            Ok(Reply::json(StatusCode::OK, &adapter_json(&r)))
        }
        Op::PutBridgeAdapter => {
            let a = adapter_param(&call)?;
            let spec = adapter_spec(&call.body)?;
            let (r, created) = engine.put_bridge_adapter(ns, &a, spec).await?;
            tracing::info!(namespace = %ns, adapter = %a, created, "bridge adapter configured");
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(Reply::json(status, &adapter_json(&r)))
        }
        Op::DeleteBridgeAdapter => {
            let a = adapter_param(&call)?;
            engine.delete_bridge_adapter(ns, &a).await?;
            Ok(Reply::json(
                StatusCode::OK,
                &json!({"namespace": ns, "adapter": a, "outcome": "deleted"}),
            ))
        }
        _ => Err(super::unrouted(op)),
    }
}
