//! Fleet and task-queue visibility for operators: workers, queues with their backlog and
//! pollers, and build-id cohorts with their drain intent.

use std::collections::{BTreeMap, BTreeSet};

use hyper::StatusCode;
use keel_engine::clock::format_timestamp;
use keel_engine::model::{CohortRecord, TaskKind, WorkerRecord};
use serde_json::{json, Value};

use crate::call::{AppState, Call, Reply};
use crate::error::ApiError;
use crate::router::Op;

/// A worker with no heartbeat for this long is reported stale (the SDK heartbeats every
/// 60 s).
pub const STALE_AFTER_SECONDS: i64 = keel_engine::WORKER_STALE_AFTER_MS / 1000;
const MAX_WORKERS: usize = 10_000;

/// Fleet and queue operations.
pub async fn handle(state: &AppState, op: Op, call: Call) -> Result<Reply, ApiError> {
    let ns = call.namespace.as_str();
    match op {
        Op::ListWorkers => {
            let drains = DrainView::load(state, ns, None).await?;
            let status = call.query.get("status").map(String::as_str);
            let queue = call.query.get("task_queue").map(String::as_str);
            let workers: Vec<Value> = state
                .engine
                .workers(ns, MAX_WORKERS)
                .await?
                .iter()
                .filter(|w| queue.is_none_or(|q| w.task_queue == q))
                .map(|w| worker_json(state, w, &drains))
                .filter(|w| status.is_none_or(|s| w["status"] == s))
                .collect();
            Ok(Reply::json(
                StatusCode::OK,
                &json!({"namespace": ns, "workers": workers, "stale_after_seconds": STALE_AFTER_SECONDS}),
            ))
        }
        Op::DescribeWorker => {
            let worker = find_worker(state, ns, call.param(0)).await?;
            let drains = DrainView::load(state, ns, Some(&worker.task_queue)).await?;
            Ok(Reply::json(
                StatusCode::OK,
                &worker_json(state, &worker, &drains),
            ))
        }
        Op::DeleteWorker => {
            let id = call.param(0);
            state.engine.deregister_worker(ns, id).await?;
            Ok(Reply::json(
                StatusCode::OK,
                &json!({"worker_id": id, "namespace": ns, "outcome": "deregistered"}),
            ))
        }
        Op::ListTaskQueues => {
            let counts = state.engine.queue_counts(ns).await?;
            let workers = state.engine.workers(ns, MAX_WORKERS).await?;
            let names: BTreeSet<String> = counts
                .iter()
                .map(|c| c.queue.clone())
                .chain(workers.iter().map(|w| w.task_queue.clone()))
                .collect();
            let queues: Vec<Value> = names
                .iter()
                .map(|q| queue_json(state, ns, q, &counts, &workers))
                .collect();
            Ok(Reply::json(
                StatusCode::OK,
                &json!({"namespace": ns, "task_queues": queues}),
            ))
        }
        Op::DescribeTaskQueue => {
            let queue = call.param(0);
            let counts = state.engine.queue_counts(ns).await?;
            let workers = state.engine.workers(ns, MAX_WORKERS).await?;
            Ok(Reply::json(
                StatusCode::OK,
                &queue_json(state, ns, queue, &counts, &workers),
            ))
        }
        Op::ListBuildIds => build_ids(state, ns, call.param(0)).await,
        Op::DrainBuildId | Op::ResumeBuildId => {
            let build_id = match call.body.get("build_id") {
                Some(Value::String(b)) if !b.is_empty() => Some(b.clone()),
                Some(Value::Null) => None,
                _ => return Err(ApiError::field(
                    "build_id",
                    "The build_id field is required: a string, or null for the unversioned cohort.",
                )),
            };
            let queue = call.param(0);
            let record = state
                .engine
                .set_cohort_draining(ns, queue, build_id.as_deref(), op == Op::DrainBuildId)
                .await?;
            Ok(Reply::json(StatusCode::OK, &cohort_json(&record)))
        }
        _ => Err(super::unrouted(op)),
    }
}

async fn find_worker(state: &AppState, ns: &str, id: &str) -> Result<WorkerRecord, ApiError> {
    match state.engine.worker(ns, id).await? {
        Some(w) => Ok((*w).clone()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "worker_not_found",
            format!("worker '{id}' is not registered"),
        )),
    }
}

/// Drain intents by `(queue, build_id)`.
struct DrainView(BTreeMap<(String, Option<String>), CohortRecord>);

impl DrainView {
    async fn load(state: &AppState, ns: &str, queue: Option<&str>) -> Result<Self, ApiError> {
        let queues: Vec<String> = match queue {
            Some(q) => vec![q.to_string()],
            None => state
                .engine
                .workers(ns, MAX_WORKERS)
                .await?
                .into_iter()
                .map(|w| w.task_queue)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        let mut map = BTreeMap::new();
        for q in queues {
            for c in state.engine.cohorts(ns, &q).await? {
                map.insert((c.task_queue.clone(), c.build_id.clone()), c);
            }
        }
        Ok(DrainView(map))
    }

    fn draining(&self, queue: &str, build_id: Option<&str>) -> bool {
        self.0
            .get(&(queue.to_string(), build_id.map(str::to_string)))
            .is_some_and(|c| c.draining)
    }
}

fn worker_status(state: &AppState, w: &WorkerRecord, draining: bool) -> &'static str {
    if draining {
        "draining"
    } else if state.engine.now_ms() - w.last_heartbeat_at_ms > STALE_AFTER_SECONDS * 1000 {
        "stale"
    } else {
        "active"
    }
}

fn worker_json(state: &AppState, w: &WorkerRecord, drains: &DrainView) -> Value {
    let draining = drains.draining(&w.task_queue, w.build_id.as_deref());
    json!({
        "worker_id": w.worker_id,
        "namespace": w.namespace,
        "task_queue": w.task_queue,
        "runtime": w.runtime,
        "sdk_version": w.sdk_version,
        "build_id": w.build_id,
        "status": worker_status(state, w, draining),
        "supported_workflow_types": w.supported_workflow_types,
        "supported_activity_types": w.supported_activity_types,
        "capabilities": w.capabilities,
        "registered_at": format_timestamp(w.registered_at_ms),
        "last_heartbeat_at": format_timestamp(w.last_heartbeat_at_ms),
    })
}

fn queue_json(
    state: &AppState,
    ns: &str,
    queue: &str,
    counts: &[keel_engine::QueueCounts],
    workers: &[WorkerRecord],
) -> Value {
    let limits = state.engine.config().park_limits;
    let kind_stats = |kind: TaskKind| {
        let c = counts.iter().find(|c| c.queue == queue && c.kind == kind);
        let parked = state.engine.queue_stats(ns, queue, kind).pollers;
        json!({
            "ready": c.map_or(0, |c| c.ready),
            "leased": c.map_or(0, |c| c.leased),
            "parked_pollers": parked,
        })
    };
    let pollers: Vec<Value> = workers
        .iter()
        .filter(|w| w.task_queue == queue)
        .map(|w| {
            json!({
                "worker_id": w.worker_id,
                "build_id": w.build_id,
                "runtime": w.runtime,
                "last_heartbeat_at": format_timestamp(w.last_heartbeat_at_ms),
                "status": worker_status(state, w, false),
            })
        })
        .collect();
    let workflow = kind_stats(TaskKind::Workflow);
    let activity = kind_stats(TaskKind::Activity);
    let leases =
        workflow["leased"].as_u64().unwrap_or(0) + activity["leased"].as_u64().unwrap_or(0);
    json!({
        "name": queue,
        "namespace": ns,
        "stats": {"workflow_tasks": workflow, "activity_tasks": activity},
        "admission": {
            "workflow_tasks": {"max_parked_polls_per_queue": limits.per_queue, "max_parked_polls_per_node": limits.per_node},
            "activity_tasks": {"max_parked_polls_per_queue": limits.per_queue, "max_parked_polls_per_node": limits.per_node},
            "query_tasks": null,
        },
        "pollers": pollers,
        "current_leases": leases,
    })
}

fn cohort_json(c: &CohortRecord) -> Value {
    json!({
        "namespace": c.namespace,
        "task_queue": c.task_queue,
        "build_id": c.build_id,
        "drain_intent": if c.draining { "draining" } else { "active" },
        "drained_at": c.drained_at_ms.map(format_timestamp),
        "resumed_at": c.resumed_at_ms.map(format_timestamp),
        "promoted_at": c.promoted_at_ms.map(format_timestamp),
        "rolled_back_at": c.rolled_back_at_ms.map(format_timestamp),
        "new_start_selected": false,
        "deployment": null,
    })
}

async fn build_ids(state: &AppState, ns: &str, queue: &str) -> Result<Reply, ApiError> {
    let workers: Vec<WorkerRecord> = state
        .engine
        .workers(ns, MAX_WORKERS)
        .await?
        .into_iter()
        .filter(|w| w.task_queue == queue)
        .collect();
    let cohorts = state.engine.cohorts(ns, queue).await?;
    let mut ids: BTreeSet<Option<String>> = workers.iter().map(|w| w.build_id.clone()).collect();
    ids.extend(cohorts.iter().map(|c| c.build_id.clone()));
    let entries: Vec<Value> = ids
        .into_iter()
        .map(|build_id| {
            let members: Vec<&WorkerRecord> = workers.iter().filter(|w| w.build_id == build_id).collect();
            let cohort = cohorts.iter().find(|c| c.build_id == build_id);
            let draining = cohort.is_some_and(|c| c.draining);
            let count = |s: &str| members.iter().filter(|w| worker_status(state, w, draining) == s).count();
            let runtimes: BTreeSet<&str> = members.iter().filter_map(|w| w.runtime.as_deref()).collect();
            let sdks: BTreeSet<&str> = members.iter().filter_map(|w| w.sdk_version.as_deref()).collect();
            json!({
                "build_id": build_id,
                "rollout_status": if draining { "draining" } else if members.is_empty() { "inactive" } else { "active" },
                "active_worker_count": count("active"),
                "draining_worker_count": count("draining"),
                "stale_worker_count": count("stale"),
                "total_worker_count": members.len(),
                "runtimes": runtimes,
                "sdk_versions": sdks,
                "last_heartbeat_at": members.iter().map(|w| w.last_heartbeat_at_ms).max().map(format_timestamp),
                "first_seen_at": members.iter().map(|w| w.registered_at_ms).min().map(format_timestamp),
                "drain_intent": if draining { "draining" } else { "active" },
                "drained_at": cohort.and_then(|c| c.drained_at_ms).map(format_timestamp),
                "promoted_at": cohort.and_then(|c| c.promoted_at_ms).map(format_timestamp),
                "rolled_back_at": cohort.and_then(|c| c.rolled_back_at_ms).map(format_timestamp),
                "new_start_selected": false,
                "workflow_definition_fingerprint_count": 0,
                "workflow_definition_fingerprint_conflicts": 0,
            })
        })
        .collect();
    Ok(Reply::json(
        StatusCode::OK,
        &json!({"namespace": ns, "task_queue": queue, "stale_after_seconds": STALE_AFTER_SECONDS, "build_ids": entries}),
    ))
}
