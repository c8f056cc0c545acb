//! The control-plane audit trail, recorded at one place: the request pipeline calls
//! [`Pending::start`] before a control-plane mutation's handler and [`Pending::finish`]
//! with its answer, and [`Refusals::observe`] on every 401 and 403. Entries go to
//! [`keel_engine::Engine::record_trail`] and are read through
//! `GET /api/v2/admin/audit` (see `handlers::operator`).
//!
//! **What is audited**: control-plane mutations ([`audited`]) — namespaces (create,
//! update, external storage), search attributes, schedules (create, update, delete,
//! pause, resume, trigger, backfill), workflow cancel, terminate, repair and archive,
//! build-id and deployment drains, resumes, promotions and rollbacks, worker deletion,
//! the service catalog and bridge adapters, imports, the operator recovery actions, the
//! system passes — and token reloads. Not worker traffic, and not application traffic
//! (starts, signals, queries, updates, activity and service calls): those are the
//! workload, already recorded in history.
//!
//! **Each entry** names who (the token's label and roles, never the token), what (the
//! route, the namespace, the target ids: the path's ids and a few named id fields of the
//! body, never payloads), when, and the outcome: `ok` (2xx), `refused` (4xx) or `failed`
//! (5xx), with the status and the refusal's `reason`.
//!
//! **Durability**: an entry is written in its own transaction right after the mutation
//! answered and before the reply is sent (bounded by [`AUDIT_WRITE_TIMEOUT`], or
//! [`FAILED_WRITE_TIMEOUT`] after a 5xx), for
//! successes and refusals alike; it is not in the mutation's own transaction, so a crash
//! between the two, or a failed audit write (logged and counted in
//! `keel_audit_write_failures_total`), leaves a mutation without its entry.
//!
//! **Refused credentials** (401, 403) are counted per route in `keel_http_refusals_total`
//! and sampled into the trail's system scope: at most one entry per (route, reason,
//! label) per [`SAMPLE_WINDOW_MS`], whose `count` is the refusals it stands for (the
//! first of a window is written at once with `count` 1; the next one written, after the
//! window, carries those counted in between). At most [`MAX_SAMPLE_KEYS`] keys are
//! tracked; beyond them refusals are only counted in metrics.

use std::time::Duration;

use keel_engine::operator::{Actor, AuditEntry, SYSTEM_AUDIT_SCOPE};
use keel_engine::Engine;
use serde_json::{json, Map, Value};

use crate::auth::Principal;
use crate::call::{Call, Reply};
use crate::error::ApiError;
use crate::router::Op;
use crate::trail::write;
pub use crate::trail::{
    Refusals, AUDIT_WRITE_TIMEOUT, DEFAULT_RETENTION_DAYS, MAX_SAMPLE_KEYS, SAMPLE_WINDOW_MS,
};

/// The same for the entry of a mutation that failed with a 5xx (storage trouble).
pub const FAILED_WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// Body fields recorded as target ids when present as strings.
const TARGET_FIELDS: &[&str] = &[
    "name",
    "schedule_id",
    "workflow_id",
    "run_id",
    "task_queue",
    "build_id",
    "serviceUrl",
    "serviceName",
    "serviceKey",
    "deploymentId",
];
/// Longest id recorded (longer ones are cut).
const MAX_TARGET_LEN: usize = 256;

/// Whether `op` is a control-plane mutation the trail records.
pub fn audited(op: Op) -> bool {
    use Op::*;
    matches!(
        op,
        CreateNamespace
            | UpdateNamespace
            | SetNamespaceExternalStorage
            | CreateSearchAttribute
            | DeleteSearchAttribute
            | SystemRepairPass
            | SystemActivityTimeoutsPass
            | SystemRetentionPass
            | CreateSchedule
            | UpdateSchedule
            | DeleteSchedule
            | PauseSchedule
            | ResumeSchedule
            | TriggerSchedule
            | BackfillSchedule
            | RepairWorkflow
            | RepairRun
            | ArchiveWorkflow
            | ArchiveRun
            | CancelWorkflow
            | CancelRun
            | TerminateWorkflow
            | TerminateRun
            | DeleteWorker
            | DrainBuildId
            | ResumeBuildId
            | PromoteBuildId
            | PromoteDeployment
            | DrainDeployment
            | ResumeDeployment
            | RollbackDeployment
            | OperatorForceRedeploy
            | OperatorCleanupStaleDeployments
            | OperatorRecoverStuckWorkflow
            | CreateServiceEndpoint
            | UpdateServiceEndpoint
            | DeleteServiceEndpoint
            | CreateService
            | UpdateService
            | DeleteService
            | CreateOperation
            | UpdateOperation
            | DeleteOperation
            | CancelServiceCall
            | PutBridgeAdapter
            | DeleteBridgeAdapter
            | ImportEmbeddedV2
    )
}

/// The actor of `principal`: label and roles, never the token.
pub fn actor(principal: &Principal) -> Actor {
    Actor {
        principal: principal.label.clone(),
        roles: principal
            .roles
            .names()
            .into_iter()
            .map(str::to_string)
            .collect(),
    }
}

fn cut(s: &str) -> String {
    let mut end = s.len().min(MAX_TARGET_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A mutation about to run, remembered for its trail entry.
pub struct Pending {
    op: Op,
    namespace: String,
    actor: Actor,
    target: Value,
    at_ms: i64,
}

impl Pending {
    /// `Some` when `op` is audited.
    pub fn start(engine: &Engine, op: Op, call: &Call) -> Option<Pending> {
        if !audited(op) {
            return None;
        }
        let mut target = Map::new();
        if !call.params.is_empty() {
            target.insert(
                "ids".into(),
                json!(call.params.iter().map(|p| cut(p)).collect::<Vec<_>>()),
            );
        }
        if let Value::Object(body) = &call.body {
            for field in TARGET_FIELDS {
                if let Some(Value::String(v)) = body.get(*field) {
                    target.insert((*field).into(), json!(cut(v)));
                }
            }
        }
        Some(Pending {
            op,
            namespace: call.namespace.clone(),
            actor: actor(&call.principal),
            target: Value::Object(target),
            at_ms: engine.now_ms(),
        })
    }

    /// Writes the entry for the mutation's answer.
    pub async fn finish(self, engine: &Engine, result: &Result<Reply, ApiError>) {
        let (status, reason) = match result {
            Ok(reply) => (reply.status.as_u16(), None),
            Err(e) => (e.status.as_u16(), Some(e.reason)),
        };
        let outcome = match status {
            200..=399 => "ok",
            400..=499 => "refused",
            _ => "failed",
        };
        let route = self.op.name();
        let entry = AuditEntry {
            route: Some(route.to_string()),
            target: self.target,
            status: Some(status),
            completed_at_ms: Some(engine.now_ms()),
            ..AuditEntry::new(&self.namespace, route, &self.actor, Value::Null, self.at_ms)
                .with_outcome(outcome, reason, Value::Null)
        };
        // A mutation that failed on the server's side (storage) is answered promptly:
        // its entry gets a short bound rather than the full one.
        let bound = if status >= 500 {
            FAILED_WRITE_TIMEOUT
        } else {
            AUDIT_WRITE_TIMEOUT
        };
        write(engine, entry, bound).await;
    }
}

/// Records a token reload (`applied` or `refused`) in the system scope.
pub async fn token_reload(engine: &Engine, trigger: &'static str, outcome: Result<Value, ()>) {
    let now = engine.now_ms();
    let system = Actor {
        principal: "system".into(),
        roles: Vec::new(),
    };
    let (outcome, reason, details) = match outcome {
        Ok(details) => ("ok", None, details),
        Err(()) => ("refused", Some("reload_refused"), Value::Null),
    };
    let entry = AuditEntry {
        route: Some("token_reload".into()),
        target: json!({ "trigger": trigger }),
        completed_at_ms: Some(now),
        ..AuditEntry::new(
            SYSTEM_AUDIT_SCOPE,
            "token_reload",
            &system,
            Value::Null,
            now,
        )
        .with_outcome(outcome, reason, details)
    };
    write(engine, entry, AUDIT_WRITE_TIMEOUT).await;
}
