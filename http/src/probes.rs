//! Health, readiness, `cluster/info` and the Prometheus scrape.
//!
//! `cluster/info` is the static document from `discovery` (identity, capabilities,
//! contracts, topology) plus live blocks computed per request: `worker_fleet` for the
//! requested namespace, `coordination_health`, `task_repair`.
//!
//! It validates against the upstream `cluster-info-envelope.schema.json` with one
//! deliberate deviation: `worker_protocol.version` is the string `"1.20"`, where the
//! schema types it as an integer. The SDK parses it as `"MAJOR.MINOR"` and refuses any
//! other form (an integer `1` would read as `"1"` and fail its minor ≥ 20 check), and the
//! SDK outranks the schema. `control_plane.version` is the integer `2`, which satisfies
//! both (the SDK compares `str(version)`).

use hyper::StatusCode;
use keel_engine::clock::format_timestamp;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::gates::{Readiness, ReadySnapshot};
use crate::router::Op;
use crate::server::{AppState, Call, Reply};

/// A worker is counted active when it heartbeated within this window.
const ACTIVE_WORKER_WINDOW_MS: i64 = 120_000;
/// Most workers listed in `worker_fleet`.
const FLEET_LIMIT: usize = 100;

/// Health, readiness, discovery and the scrape.
pub async fn handle(state: &AppState, op: Op, call: Call) -> Result<Reply, ApiError> {
    match op {
        Op::Health => Ok(health(state).await),
        Op::Ready => Ok(ready(state).await),
        Op::ClusterInfo => cluster_info(state, &call).await,
        Op::PrometheusMetrics => Ok(Reply {
            status: StatusCode::OK,
            body: crate::metrics::scrape(state).await.into(),
        }),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such discovery route",
        )),
    }
}

async fn health(state: &AppState) -> Reply {
    let ok = state.engine.storage_reachable().await.is_ok();
    Reply::json(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &json!({
            "status": if ok { "serving" } else { "degraded" },
            "timestamp": format_timestamp(state.engine.now_ms()),
            "checks": {"database": if ok { "ok" } else { "unavailable" }},
            "topology": state.topology,
        }),
    )
}

fn auth_check(state: &AppState) -> Value {
    if state.auth.is_open() {
        json!({
            "status": "ok",
            "driver": "none",
            "mode": "open_loopback",
            "message": "No tokens are configured; the server accepts every request and listens on loopback only.",
        })
    } else {
        let roles: Map<String, Value> = state
            .auth
            .summary()
            .into_iter()
            .map(|(role, n)| (role.to_string(), json!(n)))
            .collect();
        json!({"status": "ok", "driver": "token", "tokens_by_role": roles})
    }
}

async fn ready(state: &AppState) -> Reply {
    let snap: ReadySnapshot = state.readiness.refresh(&state.engine).await;
    let blocked = snap.blocked_by();
    let status = |ok: bool, bad: &str| {
        if ok {
            "ok".to_string()
        } else {
            bad.to_string()
        }
    };
    let schema_current = snap.schema.is_some_and(|s| s.is_current());
    let mut migrations = json!({
        "status": status(schema_current, if snap.storage_ok { "pending" } else { "unavailable" }),
        "schema_version": snap.schema.and_then(|s| s.stored),
        "expected_schema_version": keel_engine::namespaces::SCHEMA_VERSION,
        "repository_exists": snap.storage_ok,
        "pending_migrations": [],
        "adoptable_migrations": [],
        "blocking_migrations": if schema_current || !snap.storage_ok { json!([]) } else {
            json!([{"migration": format!("schema_version_{}", keel_engine::namespaces::SCHEMA_VERSION)}])
        },
        "missing_tables": [],
        "operator_surface": {"available": snap.storage_ok, "required_tables": []},
        "readiness_contract": {"version": 1},
    });
    if !schema_current {
        migrations["remediation"] = json!(snap.remediation());
    }
    let mut default_namespace = json!({
        "status": status(snap.default_namespace_ok, if snap.storage_ok { "missing" } else { "unavailable" }),
        "namespace": state.engine.config().default_namespace,
    });
    if !snap.default_namespace_ok {
        default_namespace["remediation"] =
            json!("Restart Keel so that it recreates the default namespace.");
    }
    let ok = blocked.is_empty();
    Reply::json(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &json!({
            "status": if ok { "ready" } else { "not_ready" },
            "timestamp": format_timestamp(state.engine.now_ms()),
            "checks": {
                "database": {"status": status(snap.storage_ok, "unavailable")},
                "migrations": migrations,
                "default_namespace": default_namespace,
                "auth": auth_check(state),
                "workflow_v2": Readiness::workflow_v2_check(&snap),
            },
            "topology": state.topology,
        }),
    )
}

/// The live `coordination_health` block.
pub async fn coordination_health(state: &AppState, namespace: &str) -> Value {
    let snap = state.readiness.snapshot();
    let blocked = snap.blocked_by();
    let overdue = state
        .engine
        .overdue_activity_timers(namespace, 100)
        .await
        .map(|t| t.len())
        .ok();
    let activity_status = match overdue {
        Some(0) => "ok",
        Some(_) => "warning",
        None => "unavailable",
    };
    let mut block = json!({
        "schema": "durable-workflow.v2.coordination-health.contract",
        "version": 1,
        "status": if blocked.is_empty() { "healthy" } else { "blocked" },
        "http_status": if blocked.is_empty() { 200 } else { 503 },
        "namespace": namespace,
        "checks": [
            {"name": "bootstrap", "status": if blocked.is_empty() { "ok" } else { "blocked" }},
            {"name": "activity_path", "status": activity_status,
             "timeout_overdue": overdue, "scan_limit": 100},
            {"name": "task_transport", "status": "ok", "mode": "durable_ready_index"},
            {"name": "worker_compatibility", "status": "not_evaluated"},
            {"name": "routing_health", "status": "not_evaluated"},
            {"name": "durable_resume_paths", "status": "ok", "mode": "durable_timers"},
        ],
        "routing_drains": {"queues_with_drains": 0, "queues": []},
    });
    if !blocked.is_empty() {
        block["blocked_by"] = json!(blocked);
        block["message"] = json!("Rollout-safety evaluation is blocked by readiness failures.");
        block["remediation"] = json!(snap.remediation());
    }
    block
}

/// The live `worker_fleet` block of `namespace`.
pub async fn worker_fleet(state: &AppState, namespace: &str) -> Value {
    let workers = state
        .engine
        .workers(namespace, FLEET_LIMIT)
        .await
        .unwrap_or_default();
    let now = state.engine.now_ms();
    let active: Vec<_> = workers
        .iter()
        .filter(|w| now - w.last_heartbeat_at_ms <= ACTIVE_WORKER_WINDOW_MS)
        .collect();
    let mut queues: Vec<&str> = active.iter().map(|w| w.task_queue.as_str()).collect();
    queues.sort_unstable();
    queues.dedup();
    let mut build_ids: Vec<Option<&str>> = active.iter().map(|w| w.build_id.as_deref()).collect();
    build_ids.sort_unstable();
    build_ids.dedup();
    json!({
        "namespace": namespace,
        "active_workers": active.len(),
        "queues": queues,
        "build_ids": build_ids,
        "workers": active.iter().map(|w| json!({
            "worker_id": w.worker_id,
            "task_queue": w.task_queue,
            "runtime": w.runtime,
            "sdk_version": w.sdk_version,
            "build_id": w.build_id,
            "last_heartbeat_at": format_timestamp(w.last_heartbeat_at_ms),
        })).collect::<Vec<_>>(),
        "list_limit": FLEET_LIMIT,
    })
}

async fn cluster_info(state: &AppState, call: &Call) -> Result<Reply, ApiError> {
    // Discovery resolves no namespace (it must answer before one exists); it reports the
    // requested one only when the caller may see it and it exists.
    let default = &state.engine.config().default_namespace;
    let namespace = if call.principal.can_see(&call.namespace)
        && state
            .engine
            .namespace_exists(&call.namespace)
            .await
            .unwrap_or(false)
    {
        call.namespace.clone()
    } else {
        default.clone()
    };
    let mut info = state.cluster_info.clone();
    if let Some(obj) = info.as_object_mut() {
        obj.insert("worker_fleet".into(), worker_fleet(state, &namespace).await);
        obj.insert(
            "coordination_health".into(),
            coordination_health(state, &namespace).await,
        );
        obj.insert(
            "task_repair".into(),
            json!({
                "policy": {
                    "mode": "operator_pass",
                    "inspect": "GET /api/system/repair",
                    "pass": "POST /api/system/repair/pass",
                    "criteria": "open run with an event its workflow has not been given and no workflow task, or a dangling workflow task reference",
                    "scan_limit": keel_engine::system::MAX_SCAN,
                },
                "candidates": {"status": "not_scanned", "inspect": "GET /api/system/repair"},
            }),
        );
    }
    Ok(Reply::json(StatusCode::OK, &info))
}

/// Adds the contract manifests the envelope schema requires, and fills in limits others
/// did not set. Values already present win (other modules own their capabilities).
pub fn add_manifests(info: &mut Value) {
    use keel_engine::namespaces::{
        MAX_SEARCH_ATTRIBUTES, MAX_SEARCH_ATTRIBUTE_KEY_BYTES, MAX_SEARCH_ATTRIBUTE_VALUE_BYTES,
    };
    let Some(obj) = info.as_object_mut() else {
        return;
    };
    if let Some(limits) = obj.get_mut("limits").and_then(Value::as_object_mut) {
        for (k, v) in [
            ("max_search_attributes", json!(MAX_SEARCH_ATTRIBUTES)),
            (
                "max_search_attribute_key_length",
                json!(MAX_SEARCH_ATTRIBUTE_KEY_BYTES),
            ),
            (
                "max_search_attribute_value_bytes",
                json!(MAX_SEARCH_ATTRIBUTE_VALUE_BYTES),
            ),
            ("max_operation_name_length", json!(256)),
            ("max_pending_activities", json!(2000)),
            ("max_pending_children", json!(2000)),
        ] {
            limits.entry(k).or_insert(v);
        }
    }
    let defaults = json!({
        "supported_sdk_versions": {"python": ">=2.12.0"},
        "structural_limits": {
            "max_payload_bytes": crate::discovery::MAX_PAYLOAD_BYTES,
            "max_value_bytes": keel_engine::storage::MAX_VALUE_BYTES,
            "max_transaction_bytes": keel_engine::storage::MAX_TXN_BYTES,
            "history_page_size_max": 1000,
        },
        "client_compatibility": {
            "authority": "protocol_manifests",
            "manifests": ["control_plane", "worker_protocol", "auth_composition_contract"],
        },
        "surface_stability_contract": {
            "schema": "durable-workflow.v2.surface-stability.contract",
            "version": 1,
            "authority_url": "https://durable-workflow.github.io/docs/2.0/compatibility",
            "stability_levels": ["stable", "experimental", "deprecated"],
            "release_rules": {"additive_minor_breaking_major": true},
            "field_visibility_rule": "unknown_fields_ignored",
            "surface_families": {
                "server_api": {"stability": "stable", "authority_manifest": "control_plane"},
                "worker_protocol": {"stability": "stable", "authority_manifest": "worker_protocol"},
                "cluster_info_manifests": {"stability": "stable", "authority_manifest": "cluster_info"},
            },
            "release_check": {"status": "not_run_by_this_server"},
        },
        "platform_protocol_specs": {
            "schema": "durable-workflow.v2.platform-protocol-specs.catalog",
            "version": 16,
            "catalog_url": "https://durable-workflow.github.io/platform-protocol-specs.json",
            "authority_url": "https://durable-workflow.github.io/docs/2.0/platform-protocol-specs",
            "formats": ["openapi", "json_schema", "asyncapi"],
            "owner_repos": ["durable-workflow/workflow", "durable-workflow/server"],
            "status_levels": ["published", "in_progress", "planned"],
            "evolution_rules": ["additive_minor_breaking_major", "parallel_primitive_only"],
            "specs": {
                "control_plane_api": {"spec_id": "durable-workflow.v2.control-plane-api", "format": "openapi", "server_coverage": "partial"},
                "worker_protocol_api": {"spec_id": "durable-workflow.v2.worker-protocol-api", "format": "openapi", "server_coverage": "partial"},
                "cluster_info_envelope": {"spec_id": "durable-workflow.v2.cluster-info-envelope", "format": "json_schema", "server_coverage": "full_with_documented_deviation"},
            },
            "release_check": {"status": "not_run_by_this_server"},
        },
        "platform_conformance_suite": {
            "schema": "durable-workflow.v2.platform-conformance.suite",
            "version": 41,
            "authority_doc": "https://durable-workflow.github.io/docs/2.0/platform-conformance",
            "surface_stability_authority": "surface_stability_contract",
            "result_schema": "durable-workflow.v2.platform-conformance.result",
            "result_version": 1,
            "conformance_levels": ["full", "partial", "provisional", "nonconforming"],
            "targets": {"standalone_server": {"claimed_level": "partial"}},
            "fixture_catalog": {},
            "pass_fail_rules": {},
            "harness_contract": {},
            "release_gates": {},
        },
        "sdk_neutrality_contract": {
            "schema": "durable-workflow.v2.sdk-neutrality.contract",
            "version": 1,
            "authority_url": "https://durable-workflow.github.io/docs/2.0/sdk-neutrality",
        },
        "bridge_adapter_outcome_contract": {
            "schema": "durable-workflow.v2.bridge-adapter-outcome.contract",
            "version": 1,
            "supported": false,
        },
        "replay_verification_contract": {
            "schema": "durable-workflow.v2.replay-verification.contract",
            "version": 1,
            "supported": false,
        },
    });
    if let Value::Object(defaults) = defaults {
        for (k, v) in defaults {
            obj.entry(k).or_insert(v);
        }
    }
}
