//! The commands of a workflow task completion, each applied to the run's history.

use super::waits::opt_str;
use super::{
    close_run, group_fields, history, ids, invalid_commands, json, merge, ActivityState, Effects,
    Event, KvTxn, Map, Millis, Result, RunRecord, RunStatus, TaskKind, TaskRecord, TaskStatus,
    Value,
};
use crate::kernel;

/// Whether `command` closes the run (it must then be the completion's last).
pub(super) fn is_terminal_command(command: &Value) -> bool {
    matches!(
        command.get("type").and_then(Value::as_str),
        Some("complete_workflow" | "fail_workflow" | "continue_as_new")
    )
}

/// Applies one command of a workflow-task completion to the run.
pub(super) async fn apply_command(
    txn: &mut dyn KvTxn,
    run: &mut RunRecord,
    command: &Value,
    is_last: bool,
    task_id: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let Some(cmd) = command.as_object() else {
        return Err(invalid_commands("each command must be an object"));
    };
    let kind = cmd.get("type").and_then(Value::as_str).unwrap_or("");
    if is_terminal_command(command) && !is_last {
        return Err(invalid_commands(format!(
            "terminal command '{kind}' must be the last command"
        )));
    }
    let field = |k: &str| cmd.get(k).cloned().unwrap_or(Value::Null);
    match kind {
        "schedule_activity" => {
            let activity_type = opt_str(cmd, "activity_type")
                .ok_or_else(|| invalid_commands("schedule_activity needs activity_type"))?;
            if run.open_activities.len() >= crate::model::MAX_PENDING_ACTIVITIES {
                return Err(invalid_commands(format!(
                    "a run may have at most {} activities pending",
                    crate::model::MAX_PENDING_ACTIVITIES
                ))
                .with(
                    "max_pending_activities",
                    crate::model::MAX_PENDING_ACTIVITIES as u64,
                ));
            }
            run.last_workflow_sequence += 1;
            let sequence = run.last_workflow_sequence;
            let queue = cmd
                .get("queue")
                .and_then(Value::as_str)
                .filter(|q| !q.is_empty())
                .unwrap_or(&run.task_queue)
                .to_string();
            let worker_session = match cmd.get("worker_session") {
                None | Some(Value::Null) => None,
                Some(v) => Some(crate::model::SessionOptions::from_wire(v).map_err(
                    |(field, message)| {
                        let path = if field.is_empty() {
                            "worker_session".to_string()
                        } else {
                            format!("worker_session.{field}")
                        };
                        invalid_commands(format!("schedule_activity {path}: {message}"))
                            .with("field", path)
                    },
                )?),
            };
            let group = group_fields(cmd);
            let options: Map<String, Value> = cmd
                .iter()
                .filter(|(k, _)| k.ends_with("_timeout") || *k == "cancellation_policy")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let activity = ActivityState {
                activity_execution_id: ids::new_id(now),
                sequence,
                arguments: field("arguments"),
                retry_policy: cmd.get("retry_policy").cloned(),
                attempt_number: 1,
                attempt_id: None,
                options: Value::Object(options),
                group: Value::Object(group.clone()),
                scheduled_at_ms: now,
                heartbeat_details: None,
                timeouts: super::activity_timeouts::from_command(cmd)?,
                last_failure: None,
                worker_session,
            };
            let payload = merge(
                json!({
                    "sequence": sequence,
                    "activity_type": activity_type,
                    "activity_execution_id": activity.activity_execution_id,
                    "task_queue": queue,
                }),
                &group,
            );
            history::append(txn, run, "ActivityScheduled", payload, now, Some(task_id));
            // The arguments live on the task, not in history: their stored payloads
            // belong to the run all the same.
            history::index_payload_references(
                txn,
                &run.namespace,
                &run.run_id,
                &activity.arguments,
            );
            let mut task = TaskRecord {
                task_id: ids::new_id(now),
                kind: TaskKind::Activity,
                namespace: run.namespace.clone(),
                task_queue: queue,
                workflow_id: run.workflow_id.clone(),
                run_id: run.run_id.clone(),
                type_name: activity_type.clone(),
                priority: run.priority,
                status: TaskStatus::Ready,
                attempt: 0,
                ready_at_ms: now,
                lease: None,
                history_seen: 0,
                failures: 0,
                backoff_timer: None,
                activity: Some(activity),
                compatibility: run.build_id.clone(),
                workflow_update_id: None,
            };
            super::activity_timeouts::arm_on_schedule(txn, &mut task, now, fx)?;
            kernel::put_ready_task(txn, &task, fx)?;
            kernel::sessions::index_session_task(txn, &task);
            run.open_activities.push(task.task_id);
        }
        "record_local_activity" => record_local_activity(txn, run, cmd, task_id, now)?,
        "start_child_workflow" => {
            if run.lifecycle.open_children.len() >= crate::model::MAX_PENDING_CHILDREN {
                return Err(invalid_commands(format!(
                    "a run may have at most {} child workflows pending",
                    crate::model::MAX_PENDING_CHILDREN
                ))
                .with(
                    "max_pending_children",
                    crate::model::MAX_PENDING_CHILDREN as u64,
                ));
            }
            super::children::start_child(txn, run, cmd, task_id, now, fx).await?;
        }
        "start_service_operation" => {
            check_service_operation(cmd)?;
            run.last_workflow_sequence += 1;
            // The service-call subsystem admits the call in this transaction and records
            // `ServiceCallStarted` (or `ServiceCallFailed`) at this sequence.
            fx.raise(Event::ServiceCallRequested {
                namespace: run.namespace.clone(),
                workflow_id: run.workflow_id.clone(),
                run_id: run.run_id.clone(),
                sequence: run.last_workflow_sequence,
                command: command.clone(),
            });
        }
        "continue_as_new" => {
            super::children::continue_as_new(txn, run, cmd, task_id, now, fx).await?;
        }
        "complete_workflow" => {
            history::append(
                txn,
                run,
                "WorkflowCompleted",
                json!({ "output": field("result"), "payload_codec": "avro" }),
                now,
                Some(task_id),
            );
            close_run(txn, run, RunStatus::Completed, "completed", now, fx).await?;
        }
        "fail_workflow" => {
            let exception = cmd.get("exception").cloned().unwrap_or(Value::Null);
            history::append(
                txn,
                run,
                "WorkflowFailed",
                json!({
                    "message": field("message"),
                    "exception_type": field("exception_type"),
                    "exception_class": field("exception_class"),
                    "exception": exception,
                    "non_retryable": cmd.get("non_retryable").and_then(Value::as_bool).unwrap_or(false),
                    "failure_category": "application",
                    "source_kind": "workflow",
                }),
                now,
                Some(task_id),
            );
            close_run(txn, run, RunStatus::Failed, "failed", now, fx).await?;
        }
        kind if super::waits::handles(kind) => {
            super::waits::apply(txn, run, kind, cmd, task_id, now, fx).await?;
        }
        other => {
            return Err(
                invalid_commands(format!("unsupported command type '{other}'"))
                    .with("command_type", other),
            );
        }
    }
    Ok(())
}

/// The shape of a `start_service_operation` command (sdk-protocol §8.1): names, the
/// request payload (a raw blob or an envelope), and the waiting options.
fn check_service_operation(cmd: &Map<String, Value>) -> Result<()> {
    for field in ["endpoint_name", "service_name", "operation_name"] {
        if opt_str(cmd, field).is_none_or(|v| v.trim().is_empty()) {
            return Err(invalid_commands(format!(
                "start_service_operation needs a non-empty {field}"
            ))
            .with("field", field));
        }
    }
    let one_of = |field: &str, allowed: &[&str]| -> Result<()> {
        match cmd.get(field) {
            None | Some(Value::Null) => Ok(()),
            Some(Value::String(v)) if allowed.contains(&v.as_str()) => Ok(()),
            Some(_) => Err(invalid_commands(format!(
                "start_service_operation {field} must be one of: {}",
                allowed.join(", ")
            ))
            .with("field", field)),
        }
    };
    one_of("mode_override", &["sync", "async"])?;
    one_of("wait_for", &["accepted", "completed"])?;
    match cmd.get("request_payload") {
        None | Some(Value::Null | Value::String(_) | Value::Object(_)) => {}
        Some(_) => {
            return Err(invalid_commands(
                "start_service_operation request_payload must be a payload blob or envelope",
            )
            .with("field", "request_payload"))
        }
    }
    for field in [
        "namespace",
        "caller_namespace",
        "idempotency_key",
        "target_workflow_instance_id",
        "target_workflow_run_id",
        "queue",
    ] {
        if !matches!(cmd.get(field), None | Some(Value::Null | Value::String(_))) {
            return Err(invalid_commands(format!(
                "start_service_operation {field} must be a string"
            ))
            .with("field", field));
        }
    }
    Ok(())
}

/// Records an activity the worker already ran inside its workflow task (sdk-protocol
/// §7.2): `ActivityScheduled` and the terminal event at one workflow sequence, both with
/// `execution_mode: "local"` so replay matches them to the local call and never to a
/// scheduled activity. No task is created.
fn record_local_activity(
    txn: &mut dyn KvTxn,
    run: &mut RunRecord,
    cmd: &Map<String, Value>,
    task_id: &str,
    now: Millis,
) -> Result<()> {
    let activity_type = opt_str(cmd, "activity_type")
        .ok_or_else(|| invalid_commands("record_local_activity needs activity_type"))?;
    let outcome = cmd.get("outcome").and_then(Value::as_str).unwrap_or("");
    let event = match outcome {
        "completed" if cmd.contains_key("result") => "ActivityCompleted",
        "completed" => {
            return Err(invalid_commands(
                "record_local_activity with outcome completed needs result",
            ))
        }
        "failed" => "ActivityFailed",
        "timed_out" => "ActivityTimedOut",
        "cancelled" => "ActivityCancelled",
        _ => {
            return Err(invalid_commands(
                "record_local_activity needs outcome completed, failed, timed_out or cancelled",
            ))
        }
    };
    let attempts = cmd.get("attempts").and_then(Value::as_array);
    let last_attempt = attempts.and_then(|a| a.last());
    let attempt_number = last_attempt
        .and_then(|a| a.get("attempt_number"))
        .and_then(Value::as_u64)
        .unwrap_or_else(|| attempts.map_or(1, |a| a.len().max(1) as u64));
    run.last_workflow_sequence += 1;
    let sequence = run.last_workflow_sequence;
    let field = |k: &str| cmd.get(k).cloned().unwrap_or(Value::Null);
    let group = group_fields(cmd);
    let base = merge(
        json!({
            "sequence": sequence,
            "activity_type": activity_type,
            "execution_mode": "local",
            "local_activity": true,
        }),
        &group,
    );
    let scheduled = merge(
        json!({"arguments": field("arguments"), "retry_policy": field("retry_policy")}),
        base.as_object().unwrap_or(&Map::new()),
    );
    history::append(txn, run, "ActivityScheduled", scheduled, now, Some(task_id));
    let closing = match event {
        "ActivityCompleted" => json!({"result": field("result"), "payload_codec": "avro"}),
        _ => local_failure(cmd, event, outcome),
    };
    let mut closing = merge(closing, base.as_object().unwrap_or(&Map::new()));
    if let Some(obj) = closing.as_object_mut() {
        obj.insert("attempt_number".into(), json!(attempt_number));
        obj.insert("attempts".into(), field("attempts"));
        if let Some(id) = last_attempt.and_then(|a| a.get("attempt_id")) {
            obj.insert("activity_attempt_id".into(), id.clone());
        }
    }
    history::append(txn, run, event, closing, now, Some(task_id));
    Ok(())
}

/// The failure fields of a local activity's terminal event, as the worker reported them;
/// a timeout or cancellation is non-retryable unless the worker said otherwise.
fn local_failure(cmd: &Map<String, Value>, event: &str, outcome: &str) -> Value {
    let message = cmd
        .get("message")
        .cloned()
        .unwrap_or_else(|| json!(format!("local activity {outcome}")));
    let exception_type = cmd
        .get("exception_type")
        .cloned()
        .unwrap_or_else(|| json!(event));
    let non_retryable = cmd
        .get("non_retryable")
        .and_then(Value::as_bool)
        .unwrap_or(event != "ActivityFailed");
    let category = if event == "ActivityTimedOut" {
        "timeout"
    } else {
        "activity"
    };
    json!({
        "message": message,
        "exception_type": exception_type,
        "exception_class": exception_type,
        "non_retryable": non_retryable,
        "timeout_kind": cmd.get("timeout_kind").cloned().unwrap_or(Value::Null),
        "failure_category": category,
        "exception": {"type": exception_type, "message": message},
    })
}
