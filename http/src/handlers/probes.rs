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

use crate::call::{AppState, Call, Reply};
use crate::error::ApiError;
use crate::gates::{Readiness, ReadySnapshot};
use crate::metrics::WriteRefusal;
use crate::router::Op;

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
        Op::PrometheusMetrics => Ok(Reply::bytes(
            StatusCode::OK,
            crate::metrics::scrape(
                &state.engine,
                state.storage_backend(),
                state.storage_stats(),
            )
            .await
            .into(),
            "text/plain; version=0.0.4; charset=utf-8",
        )),
        _ => Err(super::unrouted(op)),
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
    let mut database = json!({"status": status(snap.storage_ok, "unavailable")});
    // A store that refuses writes still answers reads, so the bootstrap gate lets reads
    // through; readiness says the node cannot take writes, and why.
    let refusal = state
        .storage_stats()
        .and_then(|stats| stats().write_refusal);
    if let Some(refusal) = &refusal {
        database = write_refusal_check(refusal);
    }
    if let Some(backend) = state.storage_backend() {
        database["backend"] = json!(backend.backend);
        database["durable"] = json!(backend.durable);
        database["multi_node"] = json!(backend.multi_node);
    }
    let ok = blocked.is_empty() && refusal.is_none();
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
                "database": database,
                "migrations": migrations,
                "default_namespace": default_namespace,
                "auth": auth_check(state),
                "workflow_v2": Readiness::workflow_v2_check(&snap),
            },
            "topology": state.topology,
        }),
    )
}

/// The `database` check while the store refuses writes.
fn write_refusal_check(refusal: &WriteRefusal) -> Value {
    let (summary, remediation) = if refusal.reason == "disk_full" {
        (
            "Disk full: the filesystem holding the data directory has no space left, so writes \
             are refused (503 storage_unavailable); reads are still served.",
            "Free space on the filesystem holding the data directory. Writes resume by \
             themselves, without a restart, within seconds of enough space being free (RocksDB \
             waits for its memtable size, 16 MiB by default).",
        )
    } else {
        (
            "Storage write failed: writes are refused (503 storage_unavailable); reads are \
             still served.",
            "Check the server log and the disk holding the data directory. Writes resume by \
             themselves once a probe write succeeds.",
        )
    };
    json!({
        "status": "read_only",
        "reason": refusal.reason,
        "message": format!("{summary} Storage said: {}", refusal.message),
        "reads": "ok",
        "writes": "refused",
        "refused_for_seconds": refusal.refused_for.as_secs(),
        "remediation": remediation,
    })
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
    // The nodes sharing the store, alive now (this node alone on an unshared store).
    let nodes = match state.engine.cluster_nodes().await {
        Ok(Some(nodes)) => json!(nodes
            .iter()
            .map(|n| json!({
                "node_id": n.node_id,
                "roles": n.roles,
                "address": n.address,
                "fires_timers": n.scheduler,
                "started_at": format_timestamp(n.started_at_ms),
                "last_heartbeat_at": format_timestamp(n.heartbeat_at_ms),
            }))
            .collect::<Vec<_>>()),
        Ok(None) => json!([{
            "node_id": state.server_id,
            "roles": state.node.roles(),
            "fires_timers": state.engine.fires_timers(),
        }]),
        Err(e) => json!({"status": "unavailable", "error": e.to_string()}),
    };
    if let Some(topology) = info.get_mut("topology").and_then(Value::as_object_mut) {
        topology.insert("nodes".into(), nodes);
    }
    // The namespace's payload storage: with a policy that can store payloads, the runtime
    // transport manifest and the capability switch the SDK checks together.
    let storage = match state.engine.describe_namespace(&namespace).await {
        Ok(record) => {
            super::payloads::storage_block(&state.engine, record.external_payload_storage.as_ref())
        }
        Err(_) => None,
    };
    let transport = storage
        .as_ref()
        .is_some_and(|s| s.get("transport").is_some());
    if transport {
        if let Some(caps) = info
            .pointer_mut("/worker_protocol/server_capabilities")
            .and_then(Value::as_object_mut)
        {
            caps.insert("runtime_external_payload_transport".into(), json!(true));
        }
    }
    if let Some(obj) = info.as_object_mut() {
        obj.insert(
            "namespace".into(),
            json!({"name": namespace, "external_payload_storage": storage}),
        );
        obj.insert("worker_fleet".into(), worker_fleet(state, &namespace).await);
        obj.insert(
            "coordination_health".into(),
            coordination_health(state, &namespace).await,
        );
        obj.insert(
            "task_repair".into(),
            json!({
                "policy": crate::handlers::system::repair_policy(state),
                "candidates": {"status": "not_scanned", "inspect": "GET /api/system/repair"},
            }),
        );
    }
    Ok(Reply::json(StatusCode::OK, &info))
}
