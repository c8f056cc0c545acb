//! Control-plane reads and operator commands over runs: the workflow list, a workflow
//! id's runs, the history export bundle, the debug view, repair and archive.

use hyper::StatusCode;
use keel_engine::clock::format_timestamp;
use keel_engine::model::RunRecord;
use keel_engine::workflow::{CommandOutcome, ListQuery, RunTarget, MAX_PAGE_SIZE};
use serde_json::{json, Value};

use crate::call::{AppState, Call, Reply};
use crate::error::ApiError;
use crate::handlers::control::control_block;
use crate::router::Op;
use crate::validate::Fields;

/// Serves the operations of this module.
pub async fn handle(state: &AppState, op: Op, call: Call) -> Result<Reply, ApiError> {
    match op {
        Op::ListWorkflows => list_workflows(state, call).await,
        Op::ListRuns => list_runs(state, call).await,
        Op::ExportRunHistory => {
            let mut bundle = state
                .engine
                .export_history(&call.namespace, call.param(0), call.param(1))
                .await?;
            // Payloads travel by reference; every one is fetched and verified here, so an
            // export whose blob is missing, changed, outside the namespace's storage or on
            // an unavailable provider fails with that reason instead of exporting a hole.
            // The checksum covers the payloads themselves (the form a client holds once it
            // has resolved the references), not the references.
            let blobs = state
                .engine
                .resolve_payloads(&call.namespace, &bundle)
                .await?;
            if !blobs.is_empty() {
                let resolved = keel_engine::payloads::inline_payloads(&bundle, &blobs);
                bundle["integrity"]["checksum"] =
                    json!(keel_engine::workflow::bundle_checksum(&resolved));
            }
            Ok(Reply::json(StatusCode::OK, &bundle))
        }
        Op::DebugWorkflow | Op::DebugRun => {
            let run_id = (op == Op::DebugRun).then(|| call.param(1));
            let include = call
                .query
                .get("include_last_event_payload")
                .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "yes"));
            let view = state
                .engine
                .debug_run(&call.namespace, call.param(0), run_id, include)
                .await?;
            Ok(Reply::json(StatusCode::OK, &view))
        }
        Op::RepairWorkflow | Op::RepairRun => {
            let mut f = Fields::new(&call.body)?;
            f.optional_str("request_id", 255);
            f.finish()?;
            let target = target(op == Op::RepairRun, &call);
            let out = state
                .engine
                .repair_workflow(&call.namespace, call.param(0), target)
                .await?;
            Ok(Reply::json(StatusCode::OK, &command_json(&out, "repair")))
        }
        Op::ArchiveWorkflow | Op::ArchiveRun => {
            let mut f = Fields::new(&call.body)?;
            let reason = f.optional_str("reason", 1000);
            f.optional_str("request_id", 255);
            f.finish()?;
            let target = target(op == Op::ArchiveRun, &call);
            let out = state
                .engine
                .archive_workflow(&call.namespace, call.param(0), target, reason.as_deref())
                .await?;
            Ok(Reply::json(StatusCode::OK, &command_json(&out, "archive")))
        }
        _ => Err(super::unrouted(op)),
    }
}

fn target(run_scoped: bool, call: &Call) -> RunTarget<'_> {
    if run_scoped {
        RunTarget::Run(call.param(1))
    } else {
        RunTarget::Current
    }
}

fn command_json(out: &CommandOutcome, operation: &str) -> Value {
    let mut body = serde_json::to_value(out).unwrap_or(Value::Null);
    if let Some(obj) = body.as_object_mut() {
        obj.insert("resolved_run_id".into(), json!(out.run_id));
        obj.insert("command_source".into(), json!("control_plane"));
        obj.insert("reason".into(), Value::Null);
        obj.insert("rejection_reason".into(), Value::Null);
        obj.insert("validation_errors".into(), json!([]));
        obj.insert(
            "control_plane".into(),
            control_block(
                operation,
                &out.workflow_id,
                json!({"run_id": out.run_id, "outcome": out.outcome, "command_id": out.command_id}),
            ),
        );
    }
    body
}

fn summary_json(run: &RunRecord) -> Value {
    json!({
        "workflow_id": run.workflow_id,
        "run_id": run.run_id,
        "namespace": run.namespace,
        "workflow_type": run.workflow_type,
        "business_key": null,
        "status": run.status.as_str(),
        "status_bucket": run.status.bucket(),
        "is_terminal": run.status.is_terminal(),
        "closed_reason": run.closed_reason,
        "task_queue": run.task_queue,
        "run_number": run.run_number,
        "payload_codec": "avro",
        "memo": run.memo,
        "search_attributes": run.search_attributes,
        "started_at": format_timestamp(run.started_at_ms),
        "closed_at": run.closed_at_ms.map(format_timestamp),
        "last_progress_at": format_timestamp(run.last_progress_at_ms),
    })
}

async fn list_workflows(state: &AppState, call: Call) -> Result<Reply, ApiError> {
    let text = |k: &str| {
        call.query
            .get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let page_size = match text("page_size") {
        None => 50,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            _ => {
                return Err(ApiError::field(
                    "page_size",
                    format!("must be an integer between 1 and {MAX_PAGE_SIZE}"),
                ))
            }
        },
    };
    let status_bucket = match text("status").as_deref() {
        None => None,
        Some(s @ ("running" | "completed" | "failed")) => Some(s.to_string()),
        Some(_) => {
            return Err(ApiError::field(
                "status",
                "must be one of: running, completed, failed",
            ))
        }
    };
    let query = ListQuery {
        workflow_type: text("workflow_type"),
        status_bucket,
        query: text("query"),
        page_size,
        page_token: text("next_page_token"),
    };
    let page = state.engine.list_workflows(&call.namespace, &query).await?;
    let workflows: Vec<Value> = page.runs.iter().map(summary_json).collect();
    Ok(Reply::json(
        StatusCode::OK,
        &json!({
            "workflows": workflows,
            "workflow_count": page.workflow_count,
            "next_page_token": page.next_page_token,
        }),
    ))
}

async fn list_runs(state: &AppState, call: Call) -> Result<Reply, ApiError> {
    let workflow_id = call.param(0);
    let (instance, runs) = state.engine.list_runs(&call.namespace, workflow_id).await?;
    let runs: Vec<Value> = runs
        .iter()
        .map(|run| {
            let mut v = summary_json(run);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("run_count".into(), json!(instance.run_count));
                obj.insert(
                    "is_current_run".into(),
                    json!(run.run_id == instance.current_run_id),
                );
                obj.insert(
                    "continued_from_run_id".into(),
                    json!(run.lifecycle.continued_from_run_id),
                );
                obj.insert(
                    "continued_to_run_id".into(),
                    json!(run.lifecycle.continued_to_run_id),
                );
            }
            v
        })
        .collect();
    Ok(Reply::json(
        StatusCode::OK,
        &json!({
            "workflow_id": workflow_id,
            "run_count": instance.run_count,
            "current_run_id": instance.current_run_id,
            "runs": runs,
        }),
    ))
}
