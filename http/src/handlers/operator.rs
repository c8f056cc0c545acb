//! The operator recovery routes (`/api/v2/admin/operator/restate/*`), the operator
//! audit log (`GET /api/v2/admin/operator/audit`) and the control-plane audit trail
//! (`GET /api/v2/admin/audit`, admin only; see [`crate::audit`]).
//!
//! Both audit reads page newest first: `limit` (1 to 200, default 50) and `before` (an
//! entry `id`: only older entries); the reply's `next_before` is the cursor of the next
//! page (`null` on the last). The trail reads the request's namespace, or with
//! `scope=system` the entries that belong to none (token reloads, sampled 401/403
//! refusals), which only a token bound to no namespace may read.
//!
//! Every route needs the `operator` role (`admin` included); the control-plane version
//! header is optional (the version is in the path) but a wrong one is a 400. Routes are
//! namespace-scoped (`X-Namespace`, default `default`). Errors use Keel's envelope:
//!
//! | condition | status | `reason` |
//! |---|---|---|
//! | no or unknown token / wrong role | 401 / 403 | `unauthorized` / `forbidden` |
//! | malformed field | 422 | `validation_failed` (field `errors`) |
//! | `serviceUrl` matches no deployment | 404 | `deployment_not_found` |
//! | no worker answers for `serviceUrl` | 422 | `discovery_failed` |
//! | unknown `(serviceName, serviceKey)` | 404 | `instance_not_found` |
//! | active or succeeded run | 409 | `retry_blocked` (`blockedReason`, `invocationIds`) |
//! | storage (the admin surface) unreachable | 503 | `admin_unreachable` (retryable) |
//!
//! `doctor` never fails for a component: each probe runs in its own task under one
//! deadline, and one that does not answer in time is reported `unreachable` while the
//! others answer.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use keel_engine::clock::format_timestamp;
use keel_engine::operator::{
    self, Actor, AuditEntry, CleanupRequest, DeploymentRecord, FailureItem, RecoverRequest,
    RedeployRequest, ServiceRecord,
};
use keel_engine::Engine;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::Principal;
use crate::call::{AppState, Call, Reply};
use crate::error::ApiError;
use crate::router::{self, Access, Op};
use crate::validate::Fields;

/// Default probe deadline of `doctor`.
const DEFAULT_PROBE_TIMEOUT_MS: i64 = 2_000;
/// Largest probe deadline a caller may ask for.
const MAX_PROBE_TIMEOUT_MS: i64 = 10_000;
/// Audit entries `doctor` shows.
const DOCTOR_AUDIT_ITEMS: usize = 10;
/// A worker is live when it registered or heartbeat this recently.
const LIVE_WORKER_MS: i64 = 120_000;
/// Largest ingress answer read.
const INGRESS_READ_LIMIT: u64 = 64 * 1024;

/// Serves one operator route.
pub async fn handle(state: &AppState, op: Op, call: Call) -> Result<Reply, ApiError> {
    if op == Op::AuditTrail {
        if call.query.get("scope").map(String::as_str) == Some("system") {
            if call.principal.namespaces.is_some() {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "the system audit scope is readable only with a token bound to no namespace",
                )
                .with("auth_failure", "namespace_bound"));
            }
            return audit_page(state, &call, operator::SYSTEM_AUDIT_SCOPE, true).await;
        }
        resolve_namespace(state, &call, false).await?;
        return audit_page(state, &call, &call.namespace, true).await;
    }
    if op == Op::OperatorDoctor {
        // Doctor answers even when storage does not: the namespace check must not
        // fail it, the probes report what is unreachable.
        resolve_namespace(state, &call, true).await?;
        return doctor(state, &call).await;
    }
    resolve_namespace(state, &call, false).await?;
    if op != Op::OperatorAudit {
        crate::gates::topology(
            &state.node,
            &router::Policy {
                access: Access::Operator,
                bootstrap_gated: false,
                required_roles: router::CONTROL_ROLES,
            },
        )?;
    }
    match op {
        Op::OperatorForceRedeploy => force_redeploy(state, &call).await,
        Op::OperatorCleanupStaleDeployments => cleanup(state, &call).await,
        Op::OperatorRecoverStuckWorkflow => recover(state, &call).await,
        Op::OperatorAudit => audit_page(state, &call, &call.namespace, false).await,
        _ => Err(super::unrouted(op)),
    }
}

fn actor(p: &Principal) -> Actor {
    Actor {
        principal: p.label.clone(),
        roles: p.roles.names().into_iter().map(str::to_string).collect(),
    }
}

/// 503 `admin_unreachable`: the engine's admin surface (its storage) did not answer;
/// nothing was acknowledged.
fn admin_unreachable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "admin_unreachable",
        "the admin surface (storage) could not be reached; nothing was acknowledged",
    )
    .with("retryable", true)
    .with("retry_after_seconds", 1)
    .with(
        "remediation",
        "Check storage connectivity, then rerun doctor.",
    )
}

fn op_error(e: keel_engine::Error) -> ApiError {
    match e {
        keel_engine::Error::Storage(s) if s.is_retryable() => {
            tracing::warn!(error = %s, "operator route: storage unreachable");
            admin_unreachable()
        }
        other => ApiError::from(other),
    }
}

fn namespace_not_found(ns: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "namespace_not_found",
        format!("namespace '{ns}' does not exist"),
    )
    .with("namespace", ns)
}

/// The pipeline resolves namespaces only on the control and worker planes; operator
/// routes do it here so that `doctor` (`lenient`) survives a storage outage.
async fn resolve_namespace(state: &AppState, call: &Call, lenient: bool) -> Result<(), ApiError> {
    let ns = &call.namespace;
    if !call.principal.can_see(ns) {
        return Err(namespace_not_found(ns));
    }
    match state.engine.namespace_exists(ns).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(namespace_not_found(ns)),
        Err(_) if lenient => Ok(()),
        Err(e) => Err(op_error(e)),
    }
}

/// An optional boolean field.
fn optional_bool(f: &mut Fields<'_>, body: &Value, field: &str, default: bool) -> bool {
    match body.get(field) {
        None | Some(Value::Null) => default,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            f.error(field, format!("The {field} field must be true or false."));
            default
        }
    }
}

/// Records a request refused before it reached the engine (best effort).
async fn audit_refusal(state: &AppState, call: &Call, action: &str, e: &ApiError) {
    let engine = &state.engine;
    let now = engine.now_ms();
    let request = match &call.body {
        Value::Object(m) => Value::Object(m.clone()),
        _ => Value::Null,
    };
    let entry = AuditEntry {
        completed_at_ms: Some(now),
        ..AuditEntry::new(
            &call.namespace,
            action,
            &actor(&call.principal),
            request,
            now,
        )
        .with_outcome("refused", Some(e.reason), Value::Null)
    };
    if let Err(write) = engine.record_audit(&entry).await {
        tracing::warn!(action, error = %write, "could not record an operator audit entry");
    }
}

// ---- force-redeploy ----

async fn force_redeploy(state: &AppState, call: &Call) -> Result<Reply, ApiError> {
    let parsed = (|| {
        let mut f = Fields::new(&call.body)?;
        let service_url = f.required_str("serviceUrl", 2048);
        let force = optional_bool(&mut f, &call.body, "force", true);
        let task_queue = f.optional_str("taskQueue", 255);
        let build_id = f.optional_str("buildId", 255);
        if build_id.is_some() && task_queue.is_none() {
            f.error("buildId", "The buildId field requires taskQueue.");
        }
        f.finish()?;
        Ok::<_, ApiError>(RedeployRequest {
            service_url: service_url.unwrap_or_default(),
            force,
            task_queue,
            build_id,
        })
    })();
    let req = match parsed {
        Ok(r) => r,
        Err(e) => {
            audit_refusal(state, call, "force-redeploy", &e).await;
            return Err(e);
        }
    };
    let out = state
        .engine
        .force_redeploy(&call.namespace, &req, &actor(&call.principal))
        .await
        .map_err(op_error)?;
    let d = &out.deployment;
    Ok(Reply::json(
        StatusCode::OK,
        &json!({
            "acknowledged": true,
            "deploymentId": d.deployment_id,
            "result": out.result,
            "serviceUrl": d.service_url,
            "createdAt": format_timestamp(d.created_at_ms),
            "cohorts": d.cohorts.iter().map(cohort_json).collect::<Vec<_>>(),
            "services": d.services.iter().map(|s| json!({
                "name": s.name, "kind": s.kind.as_str(), "revision": s.revision,
            })).collect::<Vec<_>>(),
            "revisionsBumped": out.bumped,
        }),
    ))
}

fn cohort_json(c: &operator::CohortRef) -> Value {
    json!({"taskQueue": c.task_queue, "buildId": c.build_id})
}

// ---- cleanup-stale-deployments ----

async fn cleanup(state: &AppState, call: &Call) -> Result<Reply, ApiError> {
    let parsed = (|| {
        let mut f = Fields::new(&call.body)?;
        let service_url = f.required_str("serviceUrl", 2048);
        let force_drain = optional_bool(&mut f, &call.body, "forceDrain", false);
        f.finish()?;
        Ok::<_, ApiError>(CleanupRequest {
            service_url: service_url.unwrap_or_default(),
            force_drain,
        })
    })();
    let req = match parsed {
        Ok(r) => r,
        Err(e) => {
            audit_refusal(state, call, "cleanup-stale-deployments", &e).await;
            return Err(e);
        }
    };
    let out = state
        .engine
        .cleanup_stale_deployments(&call.namespace, &req, &actor(&call.principal))
        .await
        .map_err(op_error)?;
    Ok(Reply::json(
        StatusCode::OK,
        &json!({
            "acknowledged": true,
            "keptDeploymentId": out.kept.deployment_id,
            "drained": out.drained,
            "removed": out.removed,
            "skipped": out.skipped.iter().map(|s| json!({
                "deploymentId": s.deployment_id,
                "serviceUrl": s.service_url,
                "reason": s.reason,
                "unfinishedRuns": s.unfinished_runs,
                "invocationIds": s.run_ids,
            })).collect::<Vec<_>>(),
            "terminatedInvocationIds": out.terminated_runs,
            "sharedCohorts": out.shared_cohorts.iter().map(cohort_json).collect::<Vec<_>>(),
            "runsScanned": out.runs_scanned,
            "scanTruncated": out.scan_truncated,
        }),
    ))
}

// ---- recover-stuck-workflow ----

async fn recover(state: &AppState, call: &Call) -> Result<Reply, ApiError> {
    let parsed = (|| {
        let mut f = Fields::new(&call.body)?;
        let service_name = f.required_str("serviceName", 255);
        let service_key = f.required_str("serviceKey", 255);
        for (field, value) in [("serviceName", &service_name), ("serviceKey", &service_key)] {
            if value
                .as_deref()
                .is_some_and(|v| !v.is_empty() && !operator::valid_operator_key(v))
            {
                f.error(
                    field,
                    format!("The {field} field may contain only letters, digits, '_' and '-'."),
                );
            }
        }
        f.finish()?;
        Ok::<_, ApiError>(RecoverRequest {
            service_name: service_name.unwrap_or_default(),
            service_key: service_key.unwrap_or_default(),
        })
    })();
    let req = match parsed {
        Ok(r) => r,
        Err(e) => {
            audit_refusal(state, call, "recover-stuck-workflow", &e).await;
            return Err(e);
        }
    };
    let out = state
        .engine
        .recover_stuck_workflow(&call.namespace, &req, &actor(&call.principal))
        .await
        .map_err(op_error)?;
    Ok(Reply::json(
        StatusCode::OK,
        &json!({
            "acknowledged": true,
            "serviceName": req.service_name,
            "serviceKey": req.service_key,
            "terminatedInvocationIds": out.terminated,
            "purgedInvocationIds": out.purged,
            "stateCleared": out.state_cleared,
        }),
    ))
}

// ---- audit ----

fn audit_json(e: &AuditEntry) -> Value {
    let mut v = json!({
        "id": e.audit_id,
        "namespace": e.namespace,
        "action": e.action,
        "principal": e.actor.principal,
        "roles": e.actor.roles,
        "at": format_timestamp(e.at_ms),
        "request": e.request,
        "outcome": e.outcome,
        "reason": e.reason,
        "details": e.details,
        "completedAt": e.completed_at_ms.map(format_timestamp),
    });
    if let Some(obj) = v.as_object_mut() {
        if let Some(route) = &e.route {
            obj.insert("route".into(), json!(route));
        }
        if !e.target.is_null() {
            obj.insert("target".into(), e.target.clone());
        }
        if let Some(status) = e.status {
            obj.insert("status".into(), json!(status));
        }
        if let Some(count) = e.count {
            obj.insert("count".into(), json!(count));
        }
    }
    v
}

async fn audit_page(
    state: &AppState,
    call: &Call,
    scope: &str,
    trail: bool,
) -> Result<Reply, ApiError> {
    let limit = match call.query.get("limit") {
        None => 50,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=operator::AUDIT_PAGE_MAX).contains(&n) => n,
            _ => {
                return Err(ApiError::field(
                    "limit",
                    format!(
                        "The limit field must be an integer between 1 and {}.",
                        operator::AUDIT_PAGE_MAX
                    ),
                ))
            }
        },
    };
    let before = call.query.get("before").map(String::as_str);
    if before.is_some_and(|b| b.len() != 26 || !b.bytes().all(|c| c.is_ascii_alphanumeric())) {
        return Err(ApiError::field(
            "before",
            "The before field must be an audit entry id.",
        ));
    }
    let entries = if trail {
        state.engine.audit_trail(scope, limit, before).await
    } else {
        state.engine.audit_page(scope, limit, before).await
    }
    .map_err(op_error)?;
    let next_before = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.audit_id.clone()))
        .flatten();
    Ok(Reply::json(
        StatusCode::OK,
        &json!({
            "namespace": if scope == operator::SYSTEM_AUDIT_SCOPE { Value::Null } else { json!(scope) },
            "scope": if scope == operator::SYSTEM_AUDIT_SCOPE { "system" } else { "namespace" },
            "items": entries.iter().map(audit_json).collect::<Vec<_>>(),
            "next_before": next_before,
        }),
    ))
}

// ---- doctor ----

/// What one probe found.
struct Found {
    /// `ok` or `degraded`.
    status: &'static str,
    /// Component fields (seed shape plus Keel's additions).
    fields: Map<String, Value>,
}

/// Why a probe could not say `ok` or `degraded` itself.
struct ProbeFailure {
    /// `unreachable` (could not complete) or `degraded` (answered unexpectedly).
    status: &'static str,
    message: String,
}

impl From<keel_engine::Error> for ProbeFailure {
    fn from(e: keel_engine::Error) -> Self {
        let status = match &e {
            keel_engine::Error::Storage(s) if s.is_retryable() => "unreachable",
            // Undecodable records and other answers of the wrong shape.
            _ => "degraded",
        };
        ProbeFailure {
            status,
            message: e.to_string(),
        }
    }
}

type ProbeResult = Result<Found, ProbeFailure>;

/// Runs `probe` in its own task under `deadline`: a probe stuck on storage or the
/// network is abandoned (aborted) and reported `unreachable`, never stalls the route.
/// `empty` holds the component's fields for when it could not answer.
async fn run_probe<F>(deadline: Duration, empty: Map<String, Value>, probe: F) -> Value
where
    F: Future<Output = ProbeResult> + Send + 'static,
{
    let started = Instant::now();
    let task = tokio::spawn(probe);
    let abort = task.abort_handle();
    let outcome = match tokio::time::timeout(deadline, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(ProbeFailure {
            status: "unreachable",
            message: format!("the probe did not complete: {join}"),
        }),
        Err(_) => {
            abort.abort();
            Err(ProbeFailure {
                status: "unreachable",
                message: format!(
                    "no answer within the probe deadline of {} ms",
                    deadline.as_millis()
                ),
            })
        }
    };
    let latency = started.elapsed().as_millis() as u64;
    let (status, mut fields) = match outcome {
        Ok(found) => {
            let mut fields = found.fields;
            fields.entry("error").or_insert(Value::Null);
            (found.status, fields)
        }
        Err(failure) => {
            let mut fields = empty;
            fields.insert("error".into(), Value::from(failure.message));
            (failure.status, fields)
        }
    };
    fields.insert("status".into(), Value::from(status));
    fields.insert("latencyMs".into(), Value::from(latency));
    Value::Object(fields)
}

fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Where the server's own listener answers over loopback.
fn ingress_target(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// `GET /api/health` on the server's own listener (the token-free health route, as
/// Restate's ingress `/restate/health`): proves it accepts connections and serves
/// requests, not just that this handler runs. Health reads storage, so with storage down
/// it answers 503 (`degraded`) and with storage stuck it does not answer in time
/// (`unreachable`); `connected` tells those apart from a listener that is gone.
async fn probe_ingress(addr: Option<SocketAddr>, connected: Arc<AtomicBool>) -> ProbeResult {
    let unreachable = |message: String| ProbeFailure {
        status: "unreachable",
        message,
    };
    let addr = addr.ok_or_else(|| unreachable("the listen address is not known".into()))?;
    let target = ingress_target(addr);
    let mut stream = tokio::net::TcpStream::connect(target)
        .await
        .map_err(|e| unreachable(format!("cannot connect to {target}: {e}")))?;
    connected.store(true, Ordering::SeqCst);
    let request = format!(
        "GET /api/health HTTP/1.1\r\nHost: {target}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| unreachable(format!("cannot send to {target}: {e}")))?;
    let mut raw = Vec::new();
    stream
        .take(INGRESS_READ_LIMIT)
        .read_to_end(&mut raw)
        .await
        .map_err(|e| unreachable(format!("cannot read from {target}: {e}")))?;
    let text = String::from_utf8_lossy(&raw);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok());
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let health: Value = serde_json::from_str(body.trim()).unwrap_or(Value::Null);
    let serving = health.get("status").and_then(Value::as_str);
    let mut out = Map::new();
    out.insert("url".into(), format!("http://{target}/api/health").into());
    out.insert("connected".into(), Value::from(true));
    out.insert("httpStatus".into(), code.map_or(Value::Null, Value::from));
    let status = match (code, serving) {
        (Some(200), Some(_)) => "ok",
        _ => {
            out.insert(
                "error".into(),
                Value::from(format!(
                    "unexpected answer: HTTP {} with status {:?}",
                    code.map_or("?".to_string(), |c| c.to_string()),
                    serving
                )),
            );
            "degraded"
        }
    };
    Ok(Found {
        status,
        fields: out,
    })
}

/// The admin surface: the engine's own storage answers a read and holds this binary's
/// schema.
async fn probe_admin(engine: Engine) -> ProbeResult {
    engine.storage_reachable().await?;
    let schema = engine.schema_status().await?;
    let mut out = fields(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "schemaVersion": schema.stored,
        "expectedSchemaVersion": schema.expected,
    }));
    let status = if schema.is_current() {
        "ok"
    } else {
        out.insert(
            "error".into(),
            Value::from("the stored schema version is not this binary's"),
        );
        "degraded"
    };
    Ok(Found {
        status,
        fields: out,
    })
}

fn deployment_json(
    d: &DeploymentRecord,
    cohort_state: &[(operator::CohortRef, bool)],
    workers: (usize, usize),
) -> Value {
    json!({
        "id": d.deployment_id,
        "serviceUrl": d.service_url,
        "createdAt": format_timestamp(d.created_at_ms),
        "updatedAt": format_timestamp(d.updated_at_ms),
        "status": if d.draining { "draining" } else { "active" },
        "cohorts": cohort_state.iter().map(|(c, draining)| json!({
            "taskQueue": c.task_queue, "buildId": c.build_id, "draining": draining,
        })).collect::<Vec<_>>(),
        "services": d.services.iter().map(|s| json!({
            "name": s.name, "kind": s.kind.as_str(), "revision": s.revision,
        })).collect::<Vec<_>>(),
        "workers": workers.0,
        "liveWorkers": workers.1,
    })
}

/// The deployments, each with its cohorts' drain state and workers. Degraded when a
/// cohort's drain state disagrees with its deployment's (a drain applied outside the
/// deployment, or a half-applied one).
async fn probe_deployments(engine: Engine, ns: String) -> ProbeResult {
    let deployments = engine.deployments(&ns).await?;
    let workers = engine.workers(&ns, 10_000).await?;
    let now = engine.now_ms();
    let active_cohorts: Vec<&operator::CohortRef> = deployments
        .iter()
        .filter(|d| !d.draining)
        .flat_map(|d| d.cohorts.iter())
        .collect();
    let mut items = Vec::new();
    let mut warnings = Vec::new();
    for d in &deployments {
        let mut cohort_state = Vec::new();
        let (mut registered, mut live) = (0, 0);
        for c in &d.cohorts {
            let draining = engine
                .cohort_draining(&ns, &c.task_queue, c.build_id.as_deref())
                .await?;
            let expected = d.draining && !active_cohorts.contains(&c);
            if draining != expected {
                warnings.push(format!(
                    "deployment {} is {} but cohort ({}, {:?}) is {}",
                    d.deployment_id,
                    if d.draining { "draining" } else { "active" },
                    c.task_queue,
                    c.build_id,
                    if draining { "draining" } else { "not draining" }
                ));
            }
            for w in workers
                .iter()
                .filter(|w| w.task_queue == c.task_queue && w.build_id == c.build_id)
            {
                registered += 1;
                if now - w.last_heartbeat_at_ms <= LIVE_WORKER_MS {
                    live += 1;
                }
            }
            cohort_state.push((c.clone(), draining));
        }
        items.push(deployment_json(d, &cohort_state, (registered, live)));
    }
    let mut out = fields(json!({"items": items, "warnings": warnings}));
    let status = if warnings.is_empty() {
        "ok"
    } else {
        out.insert("error".into(), Value::from(warnings.join("; ")));
        "degraded"
    };
    Ok(Found {
        status,
        fields: out,
    })
}

fn service_json(s: &ServiceRecord) -> Value {
    json!({
        "name": s.name,
        "revision": s.revision,
        "kind": s.kind.as_str(),
        "deploymentId": s.deployment_id,
        "updatedAt": format_timestamp(s.updated_at_ms),
    })
}

/// The service registry. Degraded when a service's active revision names a deployment
/// that no longer exists.
async fn probe_services(engine: Engine, ns: String) -> ProbeResult {
    let services = engine.services(&ns).await?;
    let deployments = engine.deployments(&ns).await?;
    let dangling: Vec<String> = services
        .iter()
        .filter(|s| {
            !deployments
                .iter()
                .any(|d| d.deployment_id == s.deployment_id)
        })
        .map(|s| s.name.clone())
        .collect();
    let mut out = fields(json!({"items": services.iter().map(service_json).collect::<Vec<_>>()}));
    let status = if dangling.is_empty() {
        "ok"
    } else {
        out.insert(
            "error".into(),
            Value::from(format!(
                "services whose deployment is gone: {}",
                dangling.join(", ")
            )),
        );
        "degraded"
    };
    Ok(Found {
        status,
        fields: out,
    })
}

fn failure_json(f: &FailureItem) -> Value {
    json!({
        "id": f.id,
        "serviceName": f.service_name,
        "serviceKey": f.service_key,
        "failedAt": format_timestamp(f.failed_at_ms),
        "errorMessage": f.error_message,
        "status": f.status,
        "source": f.source,
    })
}

/// Runs by status and recent failures. Business failures do not degrade it: only an
/// infrastructure problem does.
async fn probe_invocations(
    engine: Engine,
    ns: String,
    failure_limit: usize,
    budget: Duration,
) -> ProbeResult {
    let counts = engine.invocation_counts(&ns, budget).await?;
    let closed = engine.recent_closed_failures(&ns, failure_limit).await?;
    let recent = operator::merge_failures(closed, &counts.open_failures, failure_limit);
    Ok(Found {
        status: "ok",
        fields: fields(json!({
            "byStatus": counts.by_status,
            "recentFailures": recent.iter().map(failure_json).collect::<Vec<_>>(),
            "total": counts.total,
            "scanned": counts.scanned,
            "truncated": counts.truncated,
            "stuck": counts.stuck,
        })),
    })
}

async fn probe_audit(engine: Engine, ns: String) -> ProbeResult {
    let entries = engine.audit_log(&ns, DOCTOR_AUDIT_ITEMS).await?;
    Ok(Found {
        status: "ok",
        fields: fields(json!({"items": entries.iter().map(audit_json).collect::<Vec<_>>()})),
    })
}

async fn doctor(state: &AppState, call: &Call) -> Result<Reply, ApiError> {
    let mut f = Fields::new(&call.body)?;
    let timeout_ms = f
        .optional_int("probeTimeoutMs", 50, MAX_PROBE_TIMEOUT_MS)
        .unwrap_or(DEFAULT_PROBE_TIMEOUT_MS);
    let failure_limit = f
        .optional_int("failureLimit", 0, operator::MAX_RECENT_FAILURES as i64)
        .unwrap_or(operator::MAX_RECENT_FAILURES as i64) as usize;
    f.finish()?;
    let deadline = Duration::from_millis(timeout_ms as u64);
    let (engine, ns) = (&state.engine, &call.namespace);
    let list = || fields(json!({"items": [], "error": null}));
    let connected = Arc::new(AtomicBool::new(false));
    let (mut ingress, admin, deployments, services, invocations, audit) = tokio::join!(
        run_probe(
            deadline,
            Map::new(),
            probe_ingress(state.listen_addr(), connected.clone())
        ),
        run_probe(
            deadline,
            fields(json!({"version": env!("CARGO_PKG_VERSION")})),
            probe_admin(engine.clone())
        ),
        run_probe(
            deadline,
            list(),
            probe_deployments(engine.clone(), ns.clone())
        ),
        run_probe(deadline, list(), probe_services(engine.clone(), ns.clone())),
        run_probe(
            deadline,
            fields(json!({"byStatus": {}, "recentFailures": []})),
            // Counting stops at three quarters of the deadline: partial counts
            // (`truncated`) beat an unreachable probe.
            probe_invocations(engine.clone(), ns.clone(), failure_limit, deadline * 3 / 4)
        ),
        run_probe(deadline, list(), probe_audit(engine.clone(), ns.clone())),
    );
    if let Some(obj) = ingress.as_object_mut() {
        let connected = connected.load(Ordering::SeqCst);
        obj.entry("connected").or_insert(Value::from(connected));
        if connected && obj.get("status").and_then(Value::as_str) == Some("unreachable") {
            obj.insert(
                "error".into(),
                Value::from(format!(
                    "the listener accepted the connection but /api/health did not answer within {timeout_ms} ms (it reads storage)"
                )),
            );
        }
    }
    let status_of = |v: &Value| v["status"].as_str().unwrap_or("unreachable").to_string();
    let statuses: Vec<String> = [&ingress, &admin, &deployments, &services, &invocations]
        .iter()
        .map(|v| status_of(v))
        .collect();
    let overall = if statuses.iter().all(|s| s == "ok") {
        "ok"
    } else if statuses[1..].iter().all(|s| s == "unreachable") {
        // Everything behind storage is gone.
        "unreachable"
    } else {
        "degraded"
    };
    let now = engine.now_ms();
    let summary = json!({
        "status": overall,
        "ingress": statuses[0], "admin": statuses[1], "deployments": statuses[2],
        "services": statuses[3], "invocations": statuses[4],
    });
    // The audit write is bounded like a probe: an unreachable store must not stall the
    // answer (the entry is then missing, which doctor's own output explains).
    let entry = AuditEntry {
        completed_at_ms: Some(now),
        ..AuditEntry::new(ns, "doctor", &actor(&call.principal), json!({}), now)
            .with_outcome("ok", None, summary)
    };
    let writer = engine.clone();
    let write = tokio::spawn(async move { writer.record_audit(&entry).await });
    let write_abort = write.abort_handle();
    match tokio::time::timeout(deadline, write).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "could not record the doctor audit entry"),
        Ok(Err(_)) | Err(_) => {
            write_abort.abort();
            tracing::warn!("the doctor audit entry was not written within the probe deadline");
        }
    }
    Ok(Reply::json(
        StatusCode::OK,
        &json!({
            "status": overall,
            "checkedAt": format_timestamp(now),
            "namespace": ns,
            "probeTimeoutMs": timeout_ms,
            "ingress": ingress,
            "admin": admin,
            "deployments": deployments,
            "services": services,
            "invocations": invocations,
            "audit": audit,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::{ingress_target, SocketAddr};

    #[test]
    fn ingress_of_an_unspecified_address_is_probed_on_loopback() {
        let any4: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        assert_eq!(ingress_target(any4).to_string(), "127.0.0.1:8080");
        let any6: SocketAddr = "[::]:9000".parse().expect("addr");
        assert_eq!(ingress_target(any6).to_string(), "[::1]:9000");
        let own: SocketAddr = "127.0.0.1:7000".parse().expect("addr");
        assert_eq!(ingress_target(own), own);
    }
}
