//! Child workflows and continue-as-new: runs that other runs create.
//!
//! * `start_child_workflow` creates the child's instance and first run in the parent's
//!   completion transaction and records `ChildWorkflowScheduled` and `ChildRunStarted`.
//!   The SDK sends no child workflow id, so the id is derived from the parent run and the
//!   command's workflow sequence (`{parent_run_id}:{sequence}`), which is unique and
//!   stable across retries of that transaction.
//! * When a run closes, [`on_run_closed`] (called by `close_run`, same transaction)
//!   updates the workflow list, records the child's outcome in its parent's history
//!   (`ChildRunCompleted`/`Failed`/`Cancelled`/`Terminated`) and wakes the parent, and
//!   schedules the parent-close policy of its open children as durable timers due now, so
//!   each child closes in its own small transaction (and its own children after it).
//! * `continue_as_new` closes the run as `completed` with `closed_reason: "continued"`
//!   and `WorkflowContinuedAsNew`, and starts run `n + 1` of the same workflow id in the
//!   same transaction. The execution deadline spans the chain; the run deadline restarts.
//!   A continued child keeps its parent link, so the parent hears from the last run.

use super::{
    close_run, ensure_workflow_task, format_timestamp, group_fields, history, ids,
    invalid_commands, json, listing, merge, tables, Effects, Error, InstanceRecord, KvTxn, Map,
    Millis, Result, RunRecord, RunStatus, TaskRecord, TaskStatus, TimerAction, Value,
};
use crate::kernel;
use crate::model::{ChildLink, ParentLink, RunLifecycle};

/// Parent-close policies the SDK may send (`request_cancel` is the legacy spelling).
const PARENT_CLOSE_POLICIES: &[&str] = &[
    "abandon",
    "request_cancel",
    "request_cancellation",
    "terminate",
];
/// Child cancellation policies the SDK may send.
const CHILD_CANCELLATION_POLICIES: &[&str] =
    &["try_cancel", "wait_cancellation_completed", "abandon"];

/// The Avro single-object encoding of an empty argument list.
const EMPTY_ARGUMENTS_BLOB: &str = "wwHioz3/VYAiNwwA";

/// What a new run starts from.
pub(super) struct NewRun<'a> {
    pub namespace: &'a str,
    pub workflow_id: String,
    pub run_id: String,
    pub run_number: u32,
    pub workflow_type: String,
    pub task_queue: String,
    pub input: Value,
    pub priority: u8,
    pub build_id: Option<String>,
    pub memo: Value,
    pub search_attributes: Value,
    pub execution_timeout_seconds: Option<u64>,
    pub run_timeout_seconds: Option<u64>,
    /// The chain's execution deadline, when inherited (continue-as-new).
    pub execution_deadline_ms: Option<Millis>,
    pub lifecycle: RunLifecycle,
    /// Extra `WorkflowStarted` payload fields (parent and continuation links).
    pub started_extra: Map<String, Value>,
}

/// Creates a run inside `txn`: its `WorkflowStarted`, deadline timer, first workflow task,
/// record and list entry. The instance record is the caller's.
pub(super) fn create_run(
    txn: &mut dyn KvTxn,
    new: NewRun<'_>,
    now: Millis,
    fx: &mut Effects,
) -> Result<RunRecord> {
    let execution_deadline_ms = new.execution_deadline_ms.or_else(|| {
        new.execution_timeout_seconds
            .map(|s| now + s as Millis * 1000)
    });
    let run_deadline_ms = new.run_timeout_seconds.map(|s| now + s as Millis * 1000);
    let mut run = RunRecord {
        namespace: new.namespace.to_string(),
        workflow_id: new.workflow_id,
        run_id: new.run_id,
        run_number: new.run_number,
        workflow_type: new.workflow_type,
        task_queue: new.task_queue,
        status: RunStatus::Pending,
        priority: new.priority,
        build_id: new.build_id,
        memo: new.memo,
        memo_blob: None,
        workflow_task_failure: None,
        search_attributes: new.search_attributes,
        started_at_ms: now,
        closed_at_ms: None,
        last_progress_at_ms: now,
        execution_timeout_seconds: new.execution_timeout_seconds,
        run_timeout_seconds: new.run_timeout_seconds,
        execution_deadline_ms,
        run_deadline_ms,
        deadline_timer: None,
        last_event_seq: 0,
        last_workflow_sequence: 0,
        last_command_sequence: 0,
        deferred_signals: 0,
        workflow_task: None,
        open_activities: Vec::new(),
        closed_reason: None,
        lifecycle: new.lifecycle,
        waits: Default::default(),
    };
    let payload = merge(
        json!({
            "workflow_type": run.workflow_type,
            "workflow_instance_id": run.workflow_id,
            "workflow_run_id": run.run_id,
            "task_queue": run.task_queue,
            "input": new.input,
            "payload_codec": "avro",
            "memo": run.memo,
            "search_attributes": run.search_attributes,
            "execution_timeout_seconds": run.execution_timeout_seconds,
            "run_timeout_seconds": run.run_timeout_seconds,
            "execution_deadline_at": execution_deadline_ms.map(format_timestamp),
            "run_deadline_at": run_deadline_ms.map(format_timestamp),
            "timestamp": format_timestamp(now),
        }),
        &new.started_extra,
    );
    history::append(txn, &mut run, "WorkflowStarted", payload, now, None);
    let deadline = match (execution_deadline_ms, run_deadline_ms) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(at) = deadline {
        let action = TimerAction::RunDeadline {
            namespace: run.namespace.clone(),
            run_id: run.run_id.clone(),
        };
        // A deadline already behind (a long chain's execution budget) fires at once.
        run.deadline_timer = Some(kernel::put_timer(txn, at.max(now), &action, fx)?);
    }
    ensure_workflow_task(txn, &mut run, now, fx)?;
    listing::index_new_run(txn, &run)?;
    tables::put(txn, &tables::run_key(&run.namespace, &run.run_id), &run)?;
    Ok(run)
}

fn optional_str<'a>(cmd: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>> {
    match cmd.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
        Some(_) => Err(
            invalid_commands(format!("{field} must be a non-empty string")).with("field", field),
        ),
    }
}

fn optional_seconds(cmd: &Map<String, Value>, field: &str) -> Result<Option<u64>> {
    match cmd.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=10 * 365 * 86_400).contains(&n) => Ok(Some(n)),
            _ => Err(invalid_commands(format!(
                "{field} must be an integer number of seconds >= 1"
            ))
            .with("field", field)),
        },
    }
}

fn policy(cmd: &Map<String, Value>, field: &str, allowed: &[&str]) -> Result<String> {
    match optional_str(cmd, field)? {
        None => Ok("abandon".to_string()),
        Some(p) if allowed.contains(&p) => Ok(p.to_string()),
        Some(p) => Err(invalid_commands(format!(
            "{field} '{p}' is not one of: {}",
            allowed.join(", ")
        ))
        .with("field", field)),
    }
}

fn arguments(cmd: &Map<String, Value>) -> Value {
    match cmd.get("arguments") {
        None | Some(Value::Null) => json!({"codec": "avro", "blob": EMPTY_ARGUMENTS_BLOB}),
        Some(v) => v.clone(),
    }
}

/// Applies `start_child_workflow`: creates the child run and records its scheduling.
pub(super) async fn start_child(
    txn: &mut dyn KvTxn,
    run: &mut RunRecord,
    cmd: &Map<String, Value>,
    task_id: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let Some(child_type) = optional_str(cmd, "workflow_type")? else {
        return Err(invalid_commands("start_child_workflow needs workflow_type"));
    };
    let parent_close_policy = policy(cmd, "parent_close_policy", PARENT_CLOSE_POLICIES)?;
    let cancellation_policy = policy(cmd, "cancellation_policy", CHILD_CANCELLATION_POLICIES)?;
    let queue = optional_str(cmd, "queue")?
        .unwrap_or(&run.task_queue)
        .to_string();
    let execution_timeout_seconds = optional_seconds(cmd, "execution_timeout_seconds")?;
    let run_timeout_seconds = optional_seconds(cmd, "run_timeout_seconds")?;
    run.last_workflow_sequence += 1;
    let sequence = run.last_workflow_sequence;
    let ns = run.namespace.clone();
    let mut child_id = format!("{}:{sequence}", run.run_id);
    if tables::get::<InstanceRecord>(txn, &tables::instance_key(&ns, &child_id))
        .await?
        .is_some()
    {
        // Only a client that started this exact id by hand gets here; stay out of its way.
        child_id = format!("{child_id}:{}", ids::new_id(now));
    }
    let child_run_id = ids::new_id(now);
    let group = group_fields(cmd);
    let mut started_extra = Map::new();
    started_extra.insert("parent_workflow_instance_id".into(), json!(run.workflow_id));
    started_extra.insert("parent_workflow_run_id".into(), json!(run.run_id));
    started_extra.insert("parent_sequence".into(), json!(sequence));
    started_extra.insert("parent_close_policy".into(), json!(parent_close_policy));
    let child = create_run(
        txn,
        NewRun {
            namespace: &ns,
            workflow_id: child_id.clone(),
            run_id: child_run_id.clone(),
            run_number: 1,
            workflow_type: child_type.to_string(),
            task_queue: queue.clone(),
            input: arguments(cmd),
            priority: run.priority,
            build_id: None,
            memo: json!({}),
            search_attributes: json!({}),
            execution_timeout_seconds,
            run_timeout_seconds,
            execution_deadline_ms: None,
            lifecycle: RunLifecycle {
                parent: Some(ParentLink {
                    workflow_id: run.workflow_id.clone(),
                    run_id: run.run_id.clone(),
                    sequence,
                }),
                ..RunLifecycle::default()
            },
            started_extra,
        },
        now,
        fx,
    )?;
    let instance = InstanceRecord {
        workflow_id: child_id.clone(),
        current_run_id: child_run_id.clone(),
        run_count: 1,
        created_at_ms: now,
    };
    tables::put(txn, &tables::instance_key(&ns, &child_id), &instance)?;
    let ids = json!({
        "sequence": sequence,
        "child_workflow_instance_id": child_id,
        "child_workflow_run_id": child_run_id,
        "child_workflow_type": child_type,
        "child_run_number": 1,
        "parent_close_policy": parent_close_policy,
        "cancellation_policy": cancellation_policy,
    });
    let scheduled = merge(
        merge(
            ids.clone(),
            json!({
                "task_queue": queue,
                "retry_policy": cmd.get("retry_policy").cloned().unwrap_or(Value::Null),
                "timeout_policy": {
                    "execution_timeout_seconds": execution_timeout_seconds,
                    "run_timeout_seconds": run_timeout_seconds,
                },
            })
            .as_object()
            .expect("invariant: built as an object"),
        ),
        &group,
    );
    history::append(
        txn,
        run,
        "ChildWorkflowScheduled",
        scheduled,
        now,
        Some(task_id),
    );
    let started = merge(
        merge(
            ids,
            json!({
                "child_status": child.status.as_str(),
                "execution_timeout_seconds": execution_timeout_seconds,
                "run_timeout_seconds": run_timeout_seconds,
                "execution_deadline_at": child.execution_deadline_ms.map(format_timestamp),
                "run_deadline_at": child.run_deadline_ms.map(format_timestamp),
                "retry_attempt": 1,
            })
            .as_object()
            .expect("invariant: built as an object"),
        ),
        &group,
    );
    history::append(txn, run, "ChildRunStarted", started, now, Some(task_id));
    run.lifecycle.open_children.push(ChildLink {
        sequence,
        workflow_id: child_id,
        first_run_id: child_run_id,
        workflow_type: child_type.to_string(),
        parent_close_policy,
        retry_policy: cmd.get("retry_policy").filter(|p| p.is_object()).cloned(),
        attempt: 1,
    });
    Ok(())
}

/// Applies `continue_as_new` (terminal): closes `run` and starts its successor.
pub(super) async fn continue_as_new(
    txn: &mut dyn KvTxn,
    run: &mut RunRecord,
    cmd: &Map<String, Value>,
    task_id: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let workflow_type = optional_str(cmd, "workflow_type")?
        .unwrap_or(&run.workflow_type)
        .to_string();
    let queue = optional_str(cmd, "queue")?
        .unwrap_or(&run.task_queue)
        .to_string();
    let ns = run.namespace.clone();
    let ikey = tables::instance_key(&ns, &run.workflow_id);
    let mut instance: InstanceRecord = tables::get(txn, &ikey)
        .await?
        .ok_or_else(|| Error::corrupt("run without its instance"))?;
    let new_run_id = ids::new_id(now);
    let run_number = run.run_number + 1;
    history::append(
        txn,
        run,
        "WorkflowContinuedAsNew",
        json!({
            "continued_to_run_id": new_run_id,
            "continued_to_run_number": run_number,
            "closed_reason": "continued",
            "workflow_type": workflow_type,
            "task_queue": queue,
        }),
        now,
        Some(task_id),
    );
    run.lifecycle.continued_to_run_id = Some(new_run_id.clone());
    close_run(txn, run, RunStatus::Completed, "continued", now, fx).await?;
    // The workflow id is listed at its newest run only.
    listing::unindex(txn, run);
    let mut started_extra = Map::new();
    started_extra.insert("continued_from_run_id".into(), json!(run.run_id));
    if let Some(parent) = &run.lifecycle.parent {
        started_extra.insert(
            "parent_workflow_instance_id".into(),
            json!(parent.workflow_id),
        );
        started_extra.insert("parent_workflow_run_id".into(), json!(parent.run_id));
        started_extra.insert("parent_sequence".into(), json!(parent.sequence));
    }
    create_run(
        txn,
        NewRun {
            namespace: &ns,
            workflow_id: run.workflow_id.clone(),
            run_id: new_run_id.clone(),
            run_number,
            workflow_type,
            task_queue: queue,
            input: arguments(cmd),
            priority: run.priority,
            build_id: run.build_id.clone(),
            memo: run.memo.clone(),
            search_attributes: run.search_attributes.clone(),
            execution_timeout_seconds: run.execution_timeout_seconds,
            run_timeout_seconds: run.run_timeout_seconds,
            execution_deadline_ms: run.execution_deadline_ms,
            lifecycle: RunLifecycle {
                parent: run.lifecycle.parent.clone(),
                continued_from_run_id: Some(run.run_id.clone()),
                schedule_id: run.lifecycle.schedule_id.clone(),
                ..RunLifecycle::default()
            },
            started_extra,
        },
        now,
        fx,
    )?;
    instance.current_run_id = new_run_id;
    instance.run_count = instance.run_count.max(run.run_number) + 1;
    tables::put(txn, &ikey, &instance)
}

/// Everything that follows a run's close in the same transaction: the list entry, the
/// parent's wake-up, and the parent-close policy of its open children.
pub(super) async fn on_run_closed(
    txn: &mut dyn KvTxn,
    run: &mut RunRecord,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    run.lifecycle.close_event_seq = Some(run.last_event_seq);
    listing::on_close(txn, run)?;
    if run.closed_reason.as_deref() != Some("continued") {
        notify_parent(txn, run, now, fx).await?;
    }
    for child in &run.lifecycle.open_children {
        if child.parent_close_policy == "abandon" {
            continue;
        }
        let action = TimerAction::ParentClosePolicy {
            namespace: run.namespace.clone(),
            child_workflow_id: child.workflow_id.clone(),
            parent_run_id: run.run_id.clone(),
            policy: child.parent_close_policy.clone(),
        };
        kernel::put_timer(txn, now, &action, fx)?;
    }
    Ok(())
}

/// Records a closed child's outcome in its parent's history and wakes the parent, or,
/// when the child failed and its retry policy has attempts left, starts the retry.
async fn notify_parent(
    txn: &mut dyn KvTxn,
    child: &mut RunRecord,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let Some(link) = child.lifecycle.parent.clone() else {
        return Ok(());
    };
    let pkey = tables::run_key(&child.namespace, &link.run_id);
    let Some(mut parent) = tables::get::<RunRecord>(txn, &pkey).await? else {
        return Ok(());
    };
    if parent.status.is_terminal() {
        return Ok(());
    }
    // The open-children entry makes the notification happen once.
    let Some(index) = parent
        .lifecycle
        .open_children
        .iter()
        .position(|c| c.sequence == link.sequence)
    else {
        return Ok(());
    };
    let close = history::event_payload(txn, &child.namespace, &child.run_id, child.last_event_seq)
        .await?
        .unwrap_or(Value::Null);
    if child.status == RunStatus::Failed {
        let entry = &parent.lifecycle.open_children[index];
        if let Some(backoff_s) = child_retry_backoff_s(entry, &close) {
            retry_child(txn, child, &mut parent, index, backoff_s, now, fx).await?;
            return tables::put(txn, &pkey, &parent);
        }
    }
    let entry = parent.lifecycle.open_children.remove(index);
    let text = |k: &str| close.get(k).cloned().unwrap_or(Value::Null);
    let mut payload = json!({
        "sequence": link.sequence,
        "child_workflow_instance_id": child.workflow_id,
        "child_workflow_run_id": child.run_id,
        "child_workflow_type": entry.workflow_type,
        "child_run_number": child.run_number,
        "child_status": child.status.as_str(),
        "closed_reason": child.closed_reason,
        "closed_at": child.closed_at_ms.map(format_timestamp),
        "parent_close_policy": entry.parent_close_policy,
    });
    let event = match child.status {
        RunStatus::Completed => {
            let output = text("output");
            payload = merge(
                payload,
                json!({"output": output, "result": output, "payload_codec": "avro"})
                    .as_object()
                    .expect("invariant: built as an object"),
            );
            "ChildRunCompleted"
        }
        status => {
            let (event, category) = match status {
                RunStatus::Cancelled => ("ChildRunCancelled", "cancelled"),
                RunStatus::Terminated => ("ChildRunTerminated", "terminated"),
                _ => ("ChildRunFailed", "child_workflow"),
            };
            let message = close
                .get("message")
                .filter(|m| m.is_string())
                .or_else(|| close.get("reason").filter(|m| m.is_string()))
                .cloned()
                .unwrap_or(Value::Null);
            payload = merge(
                payload,
                json!({
                    "message": message,
                    "exception_class": text("exception_class"),
                    "exception_type": text("exception_type"),
                    "exception": text("exception"),
                    "timeout_kind": text("timeout_kind"),
                    "failure_category": category,
                })
                .as_object()
                .expect("invariant: built as an object"),
            );
            event
        }
    };
    history::append(txn, &mut parent, event, payload, now, None);
    ensure_workflow_task(txn, &mut parent, now, fx)?;
    tables::put(txn, &pkey, &parent)
}

/// The backoff before retrying a failed child, or `None` when its retry policy (if any)
/// has no attempt left or rules the failure out. An exhausted execution budget is final.
fn child_retry_backoff_s(entry: &ChildLink, close: &Value) -> Option<u64> {
    let policy = entry.retry_policy.as_ref()?;
    let attempt = entry.attempt.max(1);
    let max_attempts = policy
        .get("max_attempts")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .max(1) as u32;
    let non_retryable = close.get("non_retryable").and_then(Value::as_bool) == Some(true)
        || close.get("timeout_kind").and_then(Value::as_str) == Some("execution_timeout");
    let listed = policy
        .get("non_retryable_error_types")
        .and_then(Value::as_array)
        .is_some_and(|types| {
            types.iter().filter_map(Value::as_str).any(|t| {
                ["exception_type", "exception_class"]
                    .iter()
                    .any(|k| close.get(*k).and_then(Value::as_str) == Some(t))
            })
        });
    if non_retryable || listed || attempt >= max_attempts {
        return None;
    }
    let backoffs = policy.get("backoff_seconds").and_then(Value::as_array);
    Some(
        backoffs
            .and_then(|b| b.get(attempt as usize - 1).or(b.last()))
            .and_then(Value::as_u64)
            .unwrap_or(1),
    )
}

/// Starts the next attempt of a failed child as the next run of its workflow id, whose
/// first workflow task waits out `backoff_s`; the parent records `ChildRunStarted` for it
/// and keeps waiting.
async fn retry_child(
    txn: &mut dyn KvTxn,
    failed: &mut RunRecord,
    parent: &mut RunRecord,
    index: usize,
    backoff_s: u64,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let ns = failed.namespace.clone();
    let ikey = tables::instance_key(&ns, &failed.workflow_id);
    let mut instance: InstanceRecord = tables::get(txn, &ikey)
        .await?
        .ok_or_else(|| Error::corrupt("run without its instance"))?;
    let input = history::event_payload(txn, &ns, &failed.run_id, 1)
        .await?
        .and_then(|mut p| p.get_mut("input").map(Value::take))
        .unwrap_or(Value::Null);
    let entry = &mut parent.lifecycle.open_children[index];
    entry.attempt = entry.attempt.max(1) + 1;
    let attempt = entry.attempt;
    let new_run_id = ids::new_id(now);
    failed.lifecycle.continued_to_run_id = Some(new_run_id.clone());
    // The workflow id is listed at its newest run.
    listing::unindex(txn, failed);
    let link = failed
        .lifecycle
        .parent
        .clone()
        .expect("invariant: only a child is retried");
    let mut started_extra = Map::new();
    started_extra.insert(
        "parent_workflow_instance_id".into(),
        json!(link.workflow_id),
    );
    started_extra.insert("parent_workflow_run_id".into(), json!(link.run_id));
    started_extra.insert("parent_sequence".into(), json!(link.sequence));
    started_extra.insert("retry_attempt".into(), json!(attempt));
    started_extra.insert(
        "retry_of_child_workflow_run_id".into(),
        json!(failed.run_id),
    );
    started_extra.insert("continued_from_run_id".into(), json!(failed.run_id));
    let mut run = create_run(
        txn,
        NewRun {
            namespace: &ns,
            workflow_id: failed.workflow_id.clone(),
            run_id: new_run_id.clone(),
            run_number: failed.run_number + 1,
            workflow_type: failed.workflow_type.clone(),
            task_queue: failed.task_queue.clone(),
            input,
            priority: failed.priority,
            build_id: failed.build_id.clone(),
            memo: failed.memo.clone(),
            search_attributes: failed.search_attributes.clone(),
            execution_timeout_seconds: failed.execution_timeout_seconds,
            run_timeout_seconds: failed.run_timeout_seconds,
            execution_deadline_ms: failed.execution_deadline_ms,
            lifecycle: RunLifecycle {
                parent: Some(link.clone()),
                continued_from_run_id: Some(failed.run_id.clone()),
                ..RunLifecycle::default()
            },
            started_extra,
        },
        now,
        fx,
    )?;
    if backoff_s > 0 {
        // Hold the first workflow task back for the backoff (a hint already handed to
        // the matcher is re-checked at lease time and skipped).
        if let Some(task_id) = run.workflow_task.clone() {
            let tkey = tables::task_key(&task_id);
            if let Some(mut task) = tables::get::<TaskRecord>(txn, &tkey).await? {
                kernel::clear_task_state(txn, &task, fx);
                let action = TimerAction::TaskBackoff {
                    task_id: task_id.clone(),
                };
                let timer = kernel::put_timer(txn, now + backoff_s as Millis * 1000, &action, fx)?;
                task.status = TaskStatus::Backoff;
                task.backoff_timer = Some(timer);
                tables::put(txn, &tkey, &task)?;
            }
        }
    }
    run.status = RunStatus::Pending;
    tables::put(txn, &tables::run_key(&ns, &run.run_id), &run)?;
    instance.current_run_id = new_run_id.clone();
    instance.run_count = instance.run_count.max(failed.run_number) + 1;
    tables::put(txn, &ikey, &instance)?;
    let entry = &parent.lifecycle.open_children[index];
    let payload = json!({
        "sequence": link.sequence,
        "child_workflow_instance_id": failed.workflow_id,
        "child_workflow_run_id": new_run_id,
        "child_workflow_type": entry.workflow_type,
        "child_run_number": run.run_number,
        "child_status": run.status.as_str(),
        "parent_close_policy": entry.parent_close_policy,
        "retry_attempt": attempt,
        "retry_of_child_workflow_run_id": failed.run_id,
        "retry_backoff_seconds": backoff_s,
        "execution_deadline_at": run.execution_deadline_ms.map(format_timestamp),
        "run_deadline_at": run.run_deadline_ms.map(format_timestamp),
    });
    tracing::info!(workflow_id = %failed.workflow_id, failed_run_id = %failed.run_id, attempt, backoff_s, "retrying a failed child workflow");
    history::append(txn, parent, "ChildRunStarted", payload, now, None);
    Ok(())
}

/// Applies a closed parent's close policy to its child's current run (a fired
/// `ParentClosePolicy` timer; idempotent: a closed or unrelated run is left alone).
pub(crate) async fn apply_parent_close_policy(
    txn: &mut dyn KvTxn,
    ns: &str,
    child_workflow_id: &str,
    parent_run_id: &str,
    policy: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let Some(instance) =
        tables::get::<InstanceRecord>(txn, &tables::instance_key(ns, child_workflow_id)).await?
    else {
        return Ok(());
    };
    let rkey = tables::run_key(ns, &instance.current_run_id);
    let Some(mut run) = tables::get::<RunRecord>(txn, &rkey).await? else {
        return Ok(());
    };
    let ours = run
        .lifecycle
        .parent
        .as_ref()
        .is_some_and(|p| p.run_id == parent_run_id);
    if run.status.is_terminal() || !ours {
        return Ok(());
    }
    let (status, event, category) = if policy == "terminate" {
        (RunStatus::Terminated, "WorkflowTerminated", "terminated")
    } else {
        (RunStatus::Cancelled, "WorkflowCancelled", "cancelled")
    };
    let reason = format!("parent run {parent_run_id} closed (parent_close_policy {policy})");
    tracing::info!(workflow_id = child_workflow_id, run_id = %run.run_id, policy, "applying parent-close policy");
    let payload = json!({
            "workflow_instance_id": run.workflow_id,
            "workflow_run_id": run.run_id,
            "reason": reason,
            "message": reason,
            "closed_reason": category,
            "failure_category": category,
            "parent_close_policy": policy,
    });
    super::flush_deferred_signals(txn, &mut run, now).await?;
    history::append(txn, &mut run, event, payload, now, None);
    close_run(txn, &mut run, status, category, now, fx).await?;
    tables::put(txn, &rkey, &run)
}
