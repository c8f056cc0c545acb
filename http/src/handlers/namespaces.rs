//! Namespace resolution (the pipeline's last gate) and the namespace and search-attribute
//! routes.
//!
//! A namespace a token is not bound to is answered exactly like one that does not exist
//! (404 `namespace_not_found`), so a bound token cannot learn which namespaces exist.

use hyper::StatusCode;
use keel_engine::clock::format_timestamp;
use keel_engine::model::NamespaceRecord;
use keel_engine::namespaces::{
    valid_attribute_name, valid_namespace_name, NamespacePatch, NamespaceSpec, SearchAttributeType,
    DEFAULT_RETENTION_DAYS, SYSTEM_SEARCH_ATTRIBUTES,
};
use serde_json::{json, Map, Value};

use crate::auth::Principal;
use crate::call::{AppState, Call, Reply};
use crate::error::ApiError;
use crate::router::Op;
use crate::validate::Fields;

/// Most namespaces a list returns.
const LIST_LIMIT: usize = 1000;

/// Routes that manage namespaces themselves: they name their namespace in the path, so
/// the request's `X-Namespace` need not exist (a client may create the namespace it is
/// configured for).
pub fn is_namespace_admin(op: Op) -> bool {
    matches!(
        op,
        Op::ListNamespaces
            | Op::CreateNamespace
            | Op::DescribeNamespace
            | Op::UpdateNamespace
            | Op::SetNamespaceExternalStorage
    )
}

fn not_visible(ns: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "namespace_not_found",
        format!("namespace '{ns}' does not exist"),
    )
    .with("namespace", ns)
    .with(
        "remediation",
        "Create the namespace with POST /api/namespaces, or use a token bound to it.",
    )
}

/// Resolves the request namespace: 404 `namespace_not_found` when it does not exist or
/// the caller's token is not bound to it (the two are indistinguishable on purpose).
pub async fn resolve(state: &AppState, principal: &Principal, ns: &str) -> Result<(), ApiError> {
    if !principal.can_see(ns) {
        return Err(not_visible(ns));
    }
    if state.engine.namespace_exists(ns).await? {
        Ok(())
    } else {
        Err(not_visible(ns))
    }
}

fn namespace_json(engine: &keel_engine::Engine, r: &NamespaceRecord) -> Value {
    let storage = super::payloads::storage_block(engine, r.external_payload_storage.as_ref());
    json!({
        "name": r.name,
        "description": r.description,
        "retention_days": r.retention_days,
        "retention_mode": "closed_run_retention_pass",
        "status": "active",
        "metadata": if r.metadata.is_null() { json!({}) } else { r.metadata.clone() },
        "external_payload_storage": storage,
        "custom_search_attribute_count": r.search_attributes.len(),
        "created_at": format_timestamp(r.created_at_ms),
        "updated_at": format_timestamp(r.updated_at_ms),
    })
}

/// The namespace named in the path, lowercased, visible to the caller.
fn path_namespace(call: &Call) -> Result<String, ApiError> {
    let ns = call.param(0).to_ascii_lowercase();
    if !call.principal.can_see(&ns) {
        return Err(not_visible(&ns));
    }
    Ok(ns)
}

/// Namespace and search-attribute routes.
pub async fn handle(state: &AppState, op: Op, call: Call) -> Result<Reply, ApiError> {
    let engine = &state.engine;
    match op {
        Op::ListNamespaces => {
            let list: Vec<Value> = engine
                .list_namespaces(LIST_LIMIT)
                .await?
                .iter()
                .filter(|r| call.principal.can_see(&r.name))
                .map(|r| namespace_json(engine, r))
                .collect();
            Ok(Reply::json(StatusCode::OK, &json!({"namespaces": list})))
        }
        Op::CreateNamespace => {
            let mut f = Fields::new(&call.body)?;
            let name = f.required_str("name", 128).map(|n| n.to_ascii_lowercase());
            if name
                .as_deref()
                .is_some_and(|n| !n.is_empty() && !valid_namespace_name(n))
            {
                f.error(
                    "name",
                    "The name field may contain only letters, digits, '.', '_' and '-'.",
                );
            }
            let description = f.optional_str("description", 1000);
            let retention_days = f.optional_int("retention_days", 1, 365);
            let metadata = f.optional_object("metadata");
            f.finish()?;
            let name = name.unwrap_or_default();
            if !call.principal.can_see(&name) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this token is bound to other namespaces and cannot create this one",
                )
                .with("auth_failure", "namespace_not_permitted"));
            }
            let record = engine
                .create_namespace(NamespaceSpec {
                    name,
                    description,
                    retention_days: retention_days.map_or(DEFAULT_RETENTION_DAYS, |d| d as u32),
                    metadata: metadata.unwrap_or_else(|| json!({})),
                })
                .await?;
            tracing::info!(namespace = %record.name, "namespace created");
            Ok(Reply::json(
                StatusCode::CREATED,
                &namespace_json(engine, &record),
            ))
        }
        Op::DescribeNamespace => {
            let ns = path_namespace(&call)?;
            let record = engine.describe_namespace(&ns).await?;
            Ok(Reply::json(
                StatusCode::OK,
                &namespace_json(engine, &record),
            ))
        }
        Op::UpdateNamespace => {
            let ns = path_namespace(&call)?;
            let mut f = Fields::new(&call.body)?;
            let patch = NamespacePatch {
                description: f.optional_str("description", 1000),
                retention_days: f.optional_int("retention_days", 1, 365).map(|d| d as u32),
                metadata: f.optional_object("metadata"),
            };
            f.finish()?;
            let record = engine.update_namespace(&ns, patch).await?;
            Ok(Reply::json(
                StatusCode::OK,
                &namespace_json(engine, &record),
            ))
        }
        Op::SetNamespaceExternalStorage => {
            let ns = path_namespace(&call)?;
            let policy = external_storage_policy(&call.body)?;
            // The policy takes effect: it must be one this server can store payloads with.
            if let Some(parsed) = keel_engine::payloads::Policy::from_record(Some(&policy)) {
                engine.validate_payload_policy(&parsed)?;
            }
            let record = engine.set_external_storage(&ns, policy).await?;
            Ok(Reply::json(
                StatusCode::OK,
                &namespace_json(engine, &record),
            ))
        }
        Op::ListSearchAttributes => {
            let custom = engine.search_attributes(&call.namespace).await?;
            let system: Map<String, Value> = SYSTEM_SEARCH_ATTRIBUTES
                .iter()
                .map(|(n, t)| (n.to_string(), json!(t.as_str())))
                .collect();
            Ok(Reply::json(
                StatusCode::OK,
                &json!({
                    "namespace": call.namespace,
                    "system_attributes": system,
                    "custom_attributes": custom,
                }),
            ))
        }
        Op::CreateSearchAttribute => {
            let mut f = Fields::new(&call.body)?;
            let name = f.required_str("name", 128);
            if name
                .as_deref()
                .is_some_and(|n| !n.is_empty() && !valid_attribute_name(n))
            {
                f.error(
                    "name",
                    "The name field must start with a letter and contain only letters, digits and '_'.",
                );
            }
            let kind = f.required_str("type", 32);
            let parsed = kind.as_deref().and_then(SearchAttributeType::parse);
            if kind.is_some() && parsed.is_none() {
                f.error(
                    "type",
                    "The type field must be one of: keyword, text, int, double, bool, datetime, keyword_list.",
                );
            }
            f.finish()?;
            let (name, kind) = (
                name.unwrap_or_default(),
                parsed.unwrap_or(SearchAttributeType::Keyword),
            );
            engine
                .register_search_attribute(&call.namespace, &name, kind)
                .await?;
            Ok(Reply::json(
                StatusCode::CREATED,
                &json!({"namespace": call.namespace, "name": name, "type": kind.as_str(), "outcome": "created"}),
            ))
        }
        Op::DeleteSearchAttribute => {
            let name = call.param(0);
            engine
                .delete_search_attribute(&call.namespace, name)
                .await?;
            // A JSON object, not 204: the SDK requires an object body here.
            Ok(Reply::json(
                StatusCode::OK,
                &json!({"namespace": call.namespace, "name": name, "outcome": "deleted"}),
            ))
        }
        _ => Err(super::unrouted(op)),
    }
}

const DRIVERS: &[&str] = &["local", "s3", "gcs", "azure"];
const CONFIG_KEYS: &[&str] = &[
    "uri",
    "bucket",
    "disk",
    "prefix",
    "region",
    "endpoint",
    "auth_profile",
];

fn external_storage_policy(body: &Value) -> Result<Value, ApiError> {
    let mut f = Fields::new(body)?;
    let driver = f.required_str("driver", 32);
    if driver
        .as_deref()
        .is_some_and(|d| !d.is_empty() && !DRIVERS.contains(&d))
    {
        f.error(
            "driver",
            "The driver field must be one of: local, s3, gcs, azure.",
        );
    }
    let enabled = match body.get("enabled") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            f.error("enabled", "The enabled field must be a boolean.");
            true
        }
    };
    let threshold = f.optional_int("threshold_bytes", 1, i64::from(u32::MAX));
    let config = f.optional_object("config").unwrap_or_else(|| json!({}));
    if let Some(obj) = config.as_object() {
        for (k, v) in obj {
            if !CONFIG_KEYS.contains(&k.as_str()) {
                f.error(
                    &format!("config.{k}"),
                    format!(
                        "Unknown config key; expected one of: {}.",
                        CONFIG_KEYS.join(", ")
                    ),
                );
            } else if !(v.is_string() || v.is_null()) {
                f.error(&format!("config.{k}"), "Config values must be strings.");
            }
        }
    }
    f.finish()?;
    Ok(json!({
        "driver": driver,
        "enabled": enabled,
        "threshold_bytes": threshold.unwrap_or(keel_engine::payloads::DEFAULT_THRESHOLD_BYTES as i64),
        "config": config,
    }))
}
