//! Worker deployments: the lifecycle (promote, drain, resume, rollback) of build-id
//! cohorts, named `namespace/task_queue@build_id`. A refused transition is a 409 whose
//! `reason` is the first blockage's, with the deployment and every blockage.

use hyper::StatusCode;
use keel_engine::clock::format_timestamp;
use keel_engine::{
    parse_deployment_name, Blockage, DeploymentAction, DeploymentOutcome, WorkerDeployment,
};
use serde_json::{json, Value};

use crate::call::{AppState, Call, Reply};
use crate::error::ApiError;
use crate::router::Op;

/// Deployment operations (and the build-id promote route, the same lifecycle).
pub async fn handle(state: &AppState, op: Op, call: Call) -> Result<Reply, ApiError> {
    let ns = call.namespace.as_str();
    let action = match op {
        Op::ListDeployments => {
            let deployments: Vec<Value> = state
                .engine
                .worker_deployments(ns)
                .await?
                .iter()
                .map(deployment_json)
                .collect();
            return Ok(Reply::json(
                StatusCode::OK,
                &json!({"namespace": ns, "deployments": deployments}),
            ));
        }
        Op::DescribeDeployment => {
            let (queue, build_id) = name_in_namespace(ns, call.param(0))?;
            return match state
                .engine
                .worker_deployment(ns, &queue, build_id.as_deref())
                .await?
            {
                Some(d) => Ok(Reply::json(StatusCode::OK, &deployment_json(&d))),
                None => Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "deployment_not_found",
                    format!("no deployment is registered for '{}'", call.param(0)),
                )),
            };
        }
        Op::PromoteBuildId => {
            let build_id = build_id_field(&call.body)?;
            let outcome = state
                .engine
                .deployment_action(
                    ns,
                    call.param(0),
                    build_id.as_deref(),
                    DeploymentAction::Promote,
                )
                .await?;
            return answer(ns, call.param(0), build_id.as_deref(), outcome);
        }
        Op::PromoteDeployment => DeploymentAction::Promote,
        Op::DrainDeployment => DeploymentAction::Drain,
        Op::ResumeDeployment => DeploymentAction::Resume,
        Op::RollbackDeployment => DeploymentAction::Rollback,
        _ => return Err(super::unrouted(op)),
    };
    let (queue, build_id) = name_in_namespace(ns, call.param(0))?;
    let outcome = state
        .engine
        .deployment_action(ns, &queue, build_id.as_deref(), action)
        .await?;
    answer(ns, &queue, build_id.as_deref(), outcome)
}

fn answer(
    ns: &str,
    queue: &str,
    build_id: Option<&str>,
    outcome: DeploymentOutcome,
) -> Result<Reply, ApiError> {
    match outcome {
        DeploymentOutcome::Done(d) => Ok(Reply::json(StatusCode::OK, &deployment_json(&d))),
        DeploymentOutcome::Refused(d, blockages) => {
            let first = blockages
                .first()
                .map_or(("incompatible_policy", String::new()), |b| {
                    (b.reason, b.message.clone())
                });
            let scope = json!({
                "namespace": ns,
                "task_queue": queue,
                "build_id": build_id,
                "state": d.as_ref().map(|d| d.state.as_str()),
            });
            Err(ApiError::new(StatusCode::CONFLICT, first.0, first.1)
                .with(
                    "deployment",
                    d.as_ref().map_or(Value::Null, deployment_json),
                )
                .with(
                    "blockages",
                    blockages
                        .iter()
                        .map(|b| blockage_json(b, &scope))
                        .collect::<Vec<_>>(),
                ))
        }
    }
}

/// The `build_id` body field of the build-id routes: a string, or null (unversioned).
fn build_id_field(body: &Value) -> Result<Option<String>, ApiError> {
    match body.get("build_id") {
        Some(Value::String(b)) if !b.is_empty() => Ok(Some(b.clone())),
        Some(Value::Null) => Ok(None),
        _ => Err(ApiError::field(
            "build_id",
            "The build_id field is required: a string, or null for the unversioned cohort.",
        )),
    }
}

/// Parses a deployment name and checks it names the request's namespace.
fn name_in_namespace(ns: &str, name: &str) -> Result<(String, Option<String>), ApiError> {
    let (name_ns, queue, build_id) =
        parse_deployment_name(name).map_err(|m| ApiError::field("name", m))?;
    if name_ns != ns {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "namespace_mismatch",
            format!(
                "deployment '{name}' is in namespace '{name_ns}' but the request targets '{ns}'"
            ),
        )
        .with("namespace", ns)
        .with("deployment_namespace", name_ns));
    }
    Ok((queue, build_id))
}

fn deployment_json(d: &WorkerDeployment) -> Value {
    json!({
        "name": d.name(),
        "namespace": d.namespace,
        "task_queue": d.task_queue,
        "build_id": d.build_id,
        "state": d.state.as_str(),
        "accepts_new_work": d.state.accepts_new_work(),
        "compatibility_policy": "pinned",
        "required_compatibility": d.build_id,
        "recorded_fingerprint": null,
        "workflow_types": d.workflow_types,
        "promoted_at": d.promoted_at_ms.map(format_timestamp),
        "drained_at": d.drained_at_ms.map(format_timestamp),
        "resumed_at": d.resumed_at_ms.map(format_timestamp),
        "rolled_back_at": d.rolled_back_at_ms.map(format_timestamp),
        "new_start_selected": d.new_start_selected,
        "drain_intent": if d.drained_at_ms.is_some() { "draining" } else { "active" },
        "active_worker_count": d.live_workers,
        "stale_worker_count": d.stale_workers,
        "total_worker_count": d.live_workers + d.stale_workers,
    })
}

fn blockage_json(b: &Blockage, scope: &Value) -> Value {
    json!({
        "reason": b.reason,
        "message": b.message,
        "scope": scope,
        "expected_resolution": b.expected_resolution,
    })
}
