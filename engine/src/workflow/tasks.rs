//! Workflow task reports: completion (applying commands) and failure.

use super::commands::{apply_command, is_terminal_command};
use super::{
    check_workflow_lease, ensure_workflow_task, flush_deferred_signals, invalid_commands,
    load_task, tables, waits, Engine, Error, Result, RunRecord, RunStatus, TaskKind, TaskOutcome,
    TaskStatus, TimerAction, Value,
};
use crate::kernel;
use crate::model::WorkflowTaskFailure;

impl Engine {
    /// Completes a workflow task with its commands.
    pub async fn complete_workflow_task(
        &self,
        ns: &str,
        task_id: &str,
        owner: &str,
        attempt: u32,
        commands: &[Value],
    ) -> Result<TaskOutcome> {
        if commands.is_empty() {
            return Err(invalid_commands("a completion needs at least one command"));
        }
        let now = self.now_ms();
        self.transact_report(task_id, "completed", move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                let fx = &mut tx.fx;
                let task = load_task(txn, ns, task_id, TaskKind::Workflow).await?;
                check_workflow_lease(&task, owner, attempt, now)?;
                let rkey = tables::run_key(ns, &task.run_id);
                let mut run: RunRecord = tables::get(txn, &rkey)
                    .await?
                    .ok_or_else(|| Error::corrupt("task without run"))?;
                if run.status.is_terminal() {
                    kernel::delete_loaded_task(txn, &task, fx).await?;
                    return Err(Error::conflict(
                        "run_already_closed",
                        format!("run '{}' is already closed", run.run_id),
                    )
                    .with("run_status", run.status.as_str()));
                }
                let grew = run.last_event_seq > task.history_seen;
                waits::check_completion(&task, commands)?;
                // The task closes first: a terminal command then finds no open workflow task.
                kernel::delete_loaded_task(txn, &task, fx).await?;
                run.workflow_task = None;
                let last = commands.len() - 1;
                // A run does not close over signals its worker has not seen: with signals
                // deferred during this lease, the closing command is dropped and the next
                // task decides again with them in history.
                let applied = if run.deferred_signals > 0 && is_terminal_command(&commands[last]) {
                    last
                } else {
                    commands.len()
                };
                for (i, command) in commands.iter().enumerate().take(applied) {
                    apply_command(txn, &mut run, command, i == last, task_id, now, fx).await?;
                }
                let mut next_task_id = None;
                if !run.status.is_terminal() {
                    let wake = waits::end_completion(txn, &mut run, &task);
                    let signalled = flush_deferred_signals(txn, &mut run, now).await?;
                    if grew || wake || signalled {
                        ensure_workflow_task(txn, &mut run, now, fx)?;
                        next_task_id = run.workflow_task.clone();
                    } else {
                        run.status = RunStatus::Waiting;
                    }
                }
                run.workflow_task_failure = None;
                tables::put(txn, &rkey, &run)?;
                let outcome = TaskOutcome {
                    task_id: task_id.to_string(),
                    outcome: "completed",
                    recorded: true,
                    run_id: run.run_id.clone(),
                    run_status: run.status.as_str(),
                    next_task_id,
                };
                Ok(outcome)
            })
        })
        .await
    }

    /// Fails a workflow task. `WorkflowTaskWaitingForHistory` is the SDK's "nothing new
    /// to decide" and closes the task like an empty completion; any other failure keeps
    /// the task and retries it after a capped backoff.
    pub async fn fail_workflow_task(
        &self,
        ns: &str,
        task_id: &str,
        owner: &str,
        attempt: u32,
        failure: &Value,
    ) -> Result<TaskOutcome> {
        let now = self.now_ms();
        let waiting =
            failure.get("type").and_then(Value::as_str) == Some("WorkflowTaskWaitingForHistory");
        self.transact_report(task_id, "failed", move |tx| Box::pin(async move {
let txn = tx.txn.as_mut();
let fx = &mut tx.fx;
            let mut task = load_task(txn, ns, task_id, TaskKind::Workflow).await?;
            check_workflow_lease(&task, owner, attempt, now)?;
            let rkey = tables::run_key(ns, &task.run_id);
            let mut run: RunRecord = tables::get(txn, &rkey).await?.ok_or_else(|| Error::corrupt("task without run"))?;
            // The next attempt decides with the signals deferred during this one; the run
            // record is written on both paths below.
            flush_deferred_signals(txn, &mut run, now).await?;
            let mut next_task_id = None;
            let outcome = if waiting {
                let grew = run.last_event_seq > task.history_seen;
                kernel::delete_loaded_task(txn, &task, fx).await?;
                run.workflow_task = None;
                if grew || waits::needs_task(&run, &task) {
                    ensure_workflow_task(txn, &mut run, now, fx)?;
                    next_task_id = run.workflow_task.clone();
                } else if !run.status.is_terminal() {
                    run.status = RunStatus::Waiting;
                }
                tables::put(txn, &rkey, &run)?;
                "completed"
            } else {
                kernel::clear_task_state(txn, &task, fx);
                task.failures += 1;
                let backoff_s = (1i64 << (task.failures - 1).min(6))
                    .min(crate::model::WORKFLOW_TASK_FAILURE_BACKOFF_MAX_SECONDS as i64);
                let action = TimerAction::TaskBackoff { task_id: task_id.to_string() };
                let timer = kernel::put_timer(txn, now + backoff_s * 1000, &action, fx)?;
                let text = |k: &str| failure.get(k).and_then(Value::as_str).unwrap_or("");
                let failure_type = text("type");
                tracing::warn!(task_id, run_id = %task.run_id, failures = task.failures, failure_type,
                    "workflow task failed; retrying after backoff");
                task.status = TaskStatus::Backoff;
                task.lease = None;
                task.backoff_timer = Some(timer);
                tables::put(txn, &tables::task_key(task_id), &task)?;
                let message = if text("message").is_empty() { text("reason") } else { text("message") };
                run.workflow_task_failure = Some(WorkflowTaskFailure {
                    failures: task.failures,
                    failure_type: failure_type.to_string(),
                    message: crate::model::truncate_message(message),
                    at_ms: now,
                });
                tables::put(txn, &rkey, &run)?;
                "failed"
            };
            let result = TaskOutcome {
                task_id: task_id.to_string(),
                outcome,
                recorded: true,
                run_id: run.run_id.clone(),
                run_status: run.status.as_str(),
                next_task_id,
            };
            Ok(result)
        }))
        .await
    }
}
