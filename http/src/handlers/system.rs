//! The admin system routes: namespace-scoped health and metrics snapshots, and the
//! repair, activity-timeout and retention passes with their inspection routes. Every
//! response is bounded: scans stop at fixed limits and say so (`truncated`).

use hyper::StatusCode;
use keel_engine::clock::format_timestamp;
use keel_engine::model::TaskKind;
use serde_json::{json, Value};

use crate::call::{AppState, Call, Reply};
use crate::error::ApiError;
use crate::router::Op;
use crate::validate::Fields;

/// Runs examined by the run-count and repair scans of a snapshot.
const SNAPSHOT_SCAN: usize = 5_000;
/// Queues listed in a snapshot.
const SNAPSHOT_QUEUES: usize = 100;
/// Default and largest batch of a pass.
const DEFAULT_PASS_LIMIT: i64 = 100;
const MAX_PASS_LIMIT: i64 = 1000;

fn kind(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Workflow => "workflow",
        TaskKind::Activity => "activity",
    }
}

/// The namespace-scoped operator metrics snapshot.
async fn operator_metrics(state: &AppState, ns: &str) -> Result<Value, ApiError> {
    let engine = &state.engine;
    let runs = engine.run_counts(ns, SNAPSHOT_SCAN).await?;
    let mut queues = engine.queue_counts(ns).await?;
    queues.sort_by_key(|q| std::cmp::Reverse(q.ready));
    let (ready, leased) = queues
        .iter()
        .fold((0u64, 0u64), |(r, l), q| (r + q.ready, l + q.leased));
    let queue_count = queues.len();
    let workers = engine.workers(ns, 1000).await?;
    let now = engine.now_ms();
    let active = workers
        .iter()
        .filter(|w| now - w.last_heartbeat_at_ms <= 120_000)
        .count();
    let repair = engine.repair_scan(ns, SNAPSHOT_SCAN).await?;
    let retention = engine.retention_backlog(ns, 1000).await?;
    let overdue = engine.overdue_activity_timers(ns, 1000).await?;
    Ok(json!({
        "namespace": ns,
        "generated_at": format_timestamp(now),
        "runs": {
            "open": runs.open,
            "by_status": runs.by_status,
            "scanned": runs.scanned,
            "truncated": runs.truncated,
        },
        "backlog": {
            "ready_tasks": ready,
            "leased_tasks": leased,
            "queue_count": queue_count,
            "queues": queues.iter().take(SNAPSHOT_QUEUES).map(|q| json!({
                "task_queue": q.queue, "kind": kind(q.kind), "ready": q.ready, "leased": q.leased,
            })).collect::<Vec<_>>(),
            "queues_truncated": queue_count > SNAPSHOT_QUEUES,
        },
        "repair": {
            "candidates": repair.candidates.len(),
            "scanned": repair.scanned,
            "truncated": repair.truncated,
        },
        "retention": {
            "retention_days": retention.retention_days,
            "eligible": retention.eligible,
            "truncated": retention.truncated,
        },
        "activity_timeouts": {"overdue": overdue.len()},
        "workers": {"registered": workers.len(), "active": active},
        "structural_limits": structural_limits(),
    }))
}

fn structural_limits() -> Value {
    json!({
        "max_payload_bytes": crate::discovery::MAX_PAYLOAD_BYTES,
        "max_search_attributes": keel_engine::namespaces::MAX_SEARCH_ATTRIBUTES,
        "max_value_bytes": keel_engine::storage::MAX_VALUE_BYTES,
        "max_transaction_bytes": keel_engine::storage::MAX_TXN_BYTES,
    })
}

/// Repair candidates listed by run in `GET /api/system/repair` (in the order a pass
/// would take them).
const LISTED_CANDIDATES: usize = 100;

/// The task-repair policy (the `taskRepairPolicy` object of the upstream
/// repair-actionability schema), as Keel carries it out:
///
/// * `redispatch_after_seconds`: a task is never stranded while ready (every ready task is
///   in the durable ready index, offered to every poller of its queue), so what
///   redispatches is the lease: a leased workflow task unreported for the workflow-task
///   lease is offered again.
/// * `loop_throttle_seconds`: no sweep loop looks for stuck tasks; lease expiries and
///   backoffs are durable timers, and one node (the scheduler-lease holder) scans the
///   timer table once per window of this length.
/// * `scan_limit` / `scan_strategy`: what `POST /api/system/repair/pass` reads, and how it
///   picks among more candidates than its limit (round robin across task queues).
/// * `failure_backoff_*`: a failed workflow task is offered again after 1, 2, 4, ... s
///   (doubling with its failure count) up to the maximum.
pub(crate) fn repair_policy(state: &AppState) -> Value {
    let lease = state.engine.config().workflow_task_lease.as_secs().max(1);
    json!({
        "mode": "operator_pass",
        "redispatch_after_seconds": lease,
        "redispatch_basis": "workflow_task_lease_expiry",
        "loop_throttle_seconds": (keel_engine::timers::WINDOW_MS / 1000).max(1),
        "loop": "durable_timer_service",
        "scan_limit": keel_engine::system::MAX_SCAN,
        "scan_strategy": keel_engine::system::REPAIR_SCAN_STRATEGY,
        "failure_backoff_max_seconds": keel_engine::model::WORKFLOW_TASK_FAILURE_BACKOFF_MAX_SECONDS,
        "failure_backoff_strategy": "exponential_by_repair_count",
        "failure_backoff_basis": "workflow_task_failure_count",
        "inspect": "GET /api/system/repair",
        "pass": "POST /api/system/repair/pass",
        "criteria": "open run with an event its workflow has not been given and no workflow task, or a dangling workflow task reference",
    })
}

/// The `taskRepairCandidates` object: counts per scope (task queue). Every candidate
/// Keel finds is a missing task (a run without its workflow task, or naming one that does
/// not exist); existing tasks are never candidates, since their lease expiries and
/// backoffs are durable timers.
fn repair_candidates(
    candidates: &[keel_engine::system::RepairCandidate],
    truncated: bool,
) -> Value {
    let mut scopes: Vec<(&str, usize)> = Vec::new();
    for c in candidates {
        match scopes.iter_mut().find(|(q, _)| *q == c.task_queue) {
            Some((_, n)) => *n += 1,
            None => scopes.push((&c.task_queue, 1)),
        }
    }
    json!({
        "existing_task_candidates": 0,
        "missing_task_candidates": candidates.len(),
        "total_candidates": candidates.len(),
        "selected_total_candidates": candidates.len().min(LISTED_CANDIDATES),
        "scan_limit": keel_engine::system::MAX_SCAN,
        "scan_strategy": keel_engine::system::REPAIR_SCAN_STRATEGY,
        "scan_pressure": truncated,
        "scopes": scopes.iter().map(|(queue, n)| json!({
            "scope_key": queue,
            "connection": null,
            "queue": queue,
            "compatibility": null,
            "existing_task_candidates": 0,
            "missing_task_candidates": n,
            "total_candidates": n,
            "scan_limited_by_global_policy": truncated,
        })).collect::<Vec<_>>(),
    })
}

fn pass_limit(f: &mut Fields<'_>) -> usize {
    f.optional_int("limit", 1, MAX_PASS_LIMIT)
        .unwrap_or(DEFAULT_PASS_LIMIT) as usize
}

fn run_ids(f: &mut Fields<'_>, field: &str) -> Option<Vec<String>> {
    let ids = f.optional_str_list(field);
    (!ids.is_empty()).then_some(ids)
}

/// System routes.
pub async fn handle(state: &AppState, op: Op, call: Call) -> Result<Reply, ApiError> {
    let engine = &state.engine;
    let ns = call.namespace.as_str();
    let ok = |v: Value| Ok(Reply::json(StatusCode::OK, &v));
    match op {
        Op::SystemHealth => {
            let metrics = operator_metrics(state, ns).await?;
            let snap = state.readiness.snapshot();
            let blocked = snap.blocked_by();
            let coordination = crate::handlers::probes::coordination_health(state, ns).await;
            let repair = metrics["repair"]["candidates"].as_u64().unwrap_or(0);
            let overdue = metrics["activity_timeouts"]["overdue"]
                .as_u64()
                .unwrap_or(0);
            let checks = json!({
                "bootstrap": {"status": if blocked.is_empty() { "ok" } else { "blocked" }, "blocked_by": blocked},
                "task_repair": {"status": if repair == 0 { "ok" } else { "warning" }, "candidates": repair},
                "activity_timeouts": {"status": if overdue == 0 { "ok" } else { "warning" }, "overdue": overdue},
                "coordination": {"status": coordination["status"]},
            });
            let healthy = blocked.is_empty();
            let status = if !healthy {
                "unhealthy"
            } else if repair > 0 || overdue > 0 {
                "degraded"
            } else {
                "healthy"
            };
            ok(json!({
                "namespace": ns,
                "health": {
                    "status": status,
                    "healthy": healthy,
                    "checks": checks,
                    "categories": {
                        "readiness": {"status": if healthy { "ok" } else { "blocked" }},
                        "repair": {"status": checks["task_repair"]["status"]},
                        "timeouts": {"status": checks["activity_timeouts"]["status"]},
                        "coordination": {"status": coordination["status"]},
                    },
                    "operator_metrics": metrics,
                    "structural_limits": structural_limits(),
                },
            }))
        }
        Op::SystemMetrics => {
            // POST takes an (ignored) object, like every other body; GET none.
            Fields::new(&call.body)?.finish()?;
            let metrics = operator_metrics(state, ns).await?;
            let storage = state.storage_stats().map(|s| {
                let s = s();
                json!({"commits": s.commits, "conflicts": s.conflicts, "group_commits": s.batches, "largest_group_commit": s.largest_batch})
            });
            ok(json!({
                "namespace": ns,
                "generated_at": metrics["generated_at"],
                "bounded": true,
                "metrics": {
                    "runs": metrics["runs"],
                    "backlog": metrics["backlog"],
                    "workers": metrics["workers"],
                    "storage": storage,
                },
            }))
        }
        Op::SystemOperatorMetrics => {
            let metrics = operator_metrics(state, ns).await?;
            ok(json!({"namespace": ns, "operator_metrics": metrics}))
        }
        Op::SystemRepair => {
            let scan = engine
                .repair_scan(ns, keel_engine::system::MAX_SCAN)
                .await?;
            let candidates = keel_engine::system::scope_fair_round_robin(scan.candidates);
            ok(json!({
                "namespace": ns,
                "policy": repair_policy(state),
                "candidates": repair_candidates(&candidates, scan.truncated),
                "scanned": scan.scanned,
                "truncated": scan.truncated,
                "candidate_count": candidates.len(),
                "candidate_runs": candidates.iter().take(LISTED_CANDIDATES).collect::<Vec<_>>(),
            }))
        }
        Op::SystemRepairPass => {
            let mut f = Fields::new(&call.body)?;
            let mut ids = run_ids(&mut f, "run_ids");
            let instance = f.optional_str("instance_id", 255);
            let limit = pass_limit(&mut f);
            f.finish()?;
            if let Some(workflow_id) = instance {
                let view = engine.describe(ns, &workflow_id, None).await?;
                ids.get_or_insert_with(Vec::new).push(view.run.run_id);
            }
            let repaired = engine.repair_pass(ns, limit, ids.as_deref()).await?;
            ok(json!({
                "namespace": ns,
                "outcome": if repaired.is_empty() { "repair_not_needed" } else { "repair_dispatched" },
                "repaired_count": repaired.len(),
                "repaired": repaired,
            }))
        }
        Op::SystemActivityTimeouts => {
            let overdue = engine.overdue_activity_timers(ns, 1000).await?;
            ok(json!({
                "namespace": ns,
                "grace_seconds": keel_engine::system::OVERDUE_GRACE_MS / 1000,
                "overdue_count": overdue.len(),
                "overdue": overdue.iter().take(100).collect::<Vec<_>>(),
            }))
        }
        Op::SystemActivityTimeoutsPass => {
            let mut f = Fields::new(&call.body)?;
            f.optional_str_list("execution_ids");
            let limit = pass_limit(&mut f);
            f.finish()?;
            let fired = engine.activity_timeout_pass(ns, limit).await?;
            ok(json!({
                "namespace": ns,
                "fired_count": fired.len(),
                "fired": fired,
            }))
        }
        Op::SystemRetention => {
            const SCAN_LIMIT: usize = 1000;
            let backlog = engine.retention_backlog(ns, SCAN_LIMIT).await?;
            // The field names of the upstream `system:retention-status` document.
            ok(json!({
                "namespace": ns,
                "retention_days": backlog.retention_days,
                "cutoff": format_timestamp(backlog.cutoff_ms),
                "expired_run_count": backlog.eligible,
                "expired_run_ids": backlog.candidates.iter().map(|c| c.run_id.as_str()).collect::<Vec<_>>(),
                "scan_limit": SCAN_LIMIT,
                "scan_pressure": backlog.truncated,
            }))
        }
        Op::SystemRetentionPass => {
            let mut f = Fields::new(&call.body)?;
            let ids = run_ids(&mut f, "run_ids");
            let limit = pass_limit(&mut f);
            f.finish()?;
            let out = engine.retention_pass(ns, limit, ids.as_deref()).await?;
            // Keel's counts, and the upstream `system:retention-pass` summary (a pass
            // prunes every run it takes or fails the whole transaction: nothing is
            // skipped or failed one by one).
            let results: Vec<Value> = out
                .run_ids
                .iter()
                .map(|id| json!({"run_id": id, "outcome": "pruned"}))
                .collect();
            // The audit tables' retention runs with the runs' (see `crate::audit`).
            let cutoff = engine.now_ms() - i64::from(state.audit_retention_days) * 86_400_000;
            let deleted_audit_entries = engine.prune_audit(ns, cutoff).await?;
            ok(json!({
                "namespace": ns,
                "deleted_audit_entries": deleted_audit_entries,
                "processed": out.deleted_runs,
                "pruned": out.deleted_runs,
                "skipped": 0,
                "failed": 0,
                "results": results,
                "deleted_runs": out.deleted_runs,
                "deleted_instances": out.deleted_instances,
                "deleted_payloads": out.deleted_payloads,
                "run_ids": out.run_ids,
                "more": out.more,
            }))
        }
        _ => Err(super::unrouted(op)),
    }
}
