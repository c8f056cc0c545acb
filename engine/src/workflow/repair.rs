//! Operator commands on a run: repair (re-ready or recreate what a stuck run needs) and
//! archive (mark a closed run archived). Both target the current run of a workflow id, or
//! a named run that must be the current one.

use super::{
    ensure_workflow_task, history, ids, json, merge, tables, Effects, Engine, Error,
    InstanceRecord, KvTxn, Millis, Result, RunRecord, RunStatus, Serialize, TaskRecord, TaskStatus,
};
use crate::kernel;

/// Which run a command targets.
#[derive(Debug, Clone, Copy)]
pub enum RunTarget<'a> {
    /// The workflow id's current run (`target_scope: instance`).
    Current,
    /// This run, which must be the current one (`target_scope: run`).
    Run(&'a str),
}

/// The outcome of an operator command, in the protocol's `CommandResponse` terms.
#[derive(Debug, Clone, Serialize)]
pub struct CommandOutcome {
    pub workflow_id: String,
    /// The run the command applied to.
    pub run_id: String,
    /// The run the caller named, if any.
    pub requested_run_id: Option<String>,
    /// Workflow type of the run.
    pub workflow_type: String,
    /// e.g. `repair_dispatched`, `repair_not_needed`, `archived`, `archive_not_needed`.
    pub outcome: &'static str,
    /// `accepted`.
    pub command_status: &'static str,
    /// Id of this command (recorded in history when it changed something).
    pub command_id: String,
    /// `instance` or `run`.
    pub target_scope: &'static str,
    /// Run status after the command.
    pub run_status: &'static str,
}

/// Resolves the target run inside `txn` (conflict-tracked, since the command writes it).
async fn target_run(
    txn: &mut dyn KvTxn,
    ns: &str,
    workflow_id: &str,
    target: RunTarget<'_>,
) -> Result<RunRecord> {
    kernel::require_namespace(txn, ns).await?;
    let instance: InstanceRecord = tables::get(txn, &tables::instance_key(ns, workflow_id))
        .await?
        .ok_or_else(|| {
            Error::not_found(
                "instance_not_found",
                format!("workflow '{workflow_id}' does not exist"),
            )
        })?;
    let run_id = match target {
        RunTarget::Current => instance.current_run_id.clone(),
        RunTarget::Run(r) => r.to_string(),
    };
    let run: RunRecord = tables::get::<RunRecord>(txn, &tables::run_key(ns, &run_id))
        .await?
        .filter(|r| r.workflow_id == workflow_id)
        .ok_or_else(|| {
            Error::not_found(
                "run_not_found",
                format!("run '{run_id}' of workflow '{workflow_id}' does not exist"),
            )
        })?;
    if run_id != instance.current_run_id {
        return Err(Error::conflict(
            "historical_run_command_rejected",
            format!(
                "run '{run_id}' is not the current run of workflow '{workflow_id}' (current: '{}')",
                instance.current_run_id
            ),
        )
        .with("workflow_id", workflow_id)
        .with("requested_run_id", run_id.as_str())
        .with("current_run_id", instance.current_run_id.as_str()));
    }
    Ok(run)
}

fn outcome(
    run: &RunRecord,
    target: RunTarget<'_>,
    outcome: &'static str,
    command_id: String,
) -> CommandOutcome {
    CommandOutcome {
        workflow_id: run.workflow_id.clone(),
        run_id: run.run_id.clone(),
        requested_run_id: match target {
            RunTarget::Current => None,
            RunTarget::Run(r) => Some(r.to_string()),
        },
        workflow_type: run.workflow_type.clone(),
        outcome,
        command_status: "accepted",
        command_id,
        target_scope: match target {
            RunTarget::Current => "instance",
            RunTarget::Run(_) => "run",
        },
        run_status: run.status.as_str(),
    }
}

/// Repairs one task of the run: `true` when it changed anything.
async fn repair_task(
    txn: &mut dyn KvTxn,
    task_id: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<Option<bool>> {
    let tkey = tables::task_key(task_id);
    let Some(mut task) = tables::get::<TaskRecord>(txn, &tkey).await? else {
        return Ok(None);
    };
    let lapsed = task.lease.as_ref().is_some_and(|l| l.expires_at_ms <= now);
    match task.status {
        TaskStatus::Ready => {
            // The durable index is the truth; its entry may be lost, the hint surely helps.
            let key = kernel::ready_key(&task);
            if txn.get(&key).await?.is_none() {
                kernel::clear_task_state(txn, &task, fx);
                kernel::make_ready(txn, &mut task, now, fx)?;
                tables::put(txn, &tkey, &task)?;
                return Ok(Some(true));
            }
            fx.ready(&task);
            Ok(Some(false))
        }
        // A failed workflow task waiting out its retry backoff, or a lease whose expiry
        // timer has not fired: make it ready now.
        TaskStatus::Backoff => {
            kernel::clear_task_state(txn, &task, fx);
            kernel::make_ready(txn, &mut task, now, fx)?;
            tables::put(txn, &tkey, &task)?;
            Ok(Some(true))
        }
        TaskStatus::Leased if lapsed => {
            // `make_ready` settles the leased count; only the lease's timer remains.
            if let Some(lease) = &task.lease {
                kernel::end_lease_scoped_timer(txn, &lease.timer, fx);
            }
            kernel::make_ready(txn, &mut task, now, fx)?;
            tables::put(txn, &tkey, &task)?;
            Ok(Some(true))
        }
        TaskStatus::Leased => Ok(Some(false)),
    }
}

impl Engine {
    /// Re-readies or recreates what the run needs to make progress: its workflow task
    /// (missing, backing off after a failure, or holding a lapsed lease) and activity tasks
    /// with a lapsed lease. A run with no workflow task and nothing it is known to wait
    /// for gets a fresh workflow task (a replay that finds nothing new is a no-op).
    pub async fn repair_workflow(
        &self,
        ns: &str,
        workflow_id: &str,
        target: RunTarget<'_>,
    ) -> Result<CommandOutcome> {
        let now = self.now_ms();
        let command_id = ids::new_id(now);
        let command_id = &command_id;
        self.transact(move |tx| Box::pin(async move {
let txn = tx.txn.as_mut();
let fx = &mut tx.fx;
            let mut run = target_run(txn, ns, workflow_id, target).await?;
            if run.status.is_terminal() {
                let out = outcome(&run, target, "repair_not_needed", command_id.clone());
                return Ok(out);
            }
            let mut changed = false;
            let mut repaired_task: Option<(String, &'static str)> = None;
            if let Some(task_id) = run.workflow_task.clone() {
                match repair_task(txn, &task_id, now, fx).await? {
                    Some(true) => {
                        changed = true;
                        repaired_task = Some((task_id, "workflow"));
                    }
                    Some(false) => {}
                    None => run.workflow_task = None,
                }
            }
            let mut live_activities = Vec::new();
            for task_id in run.open_activities.clone() {
                match repair_task(txn, &task_id, now, fx).await? {
                    Some(fixed) => {
                        if fixed {
                            changed = true;
                            repaired_task.get_or_insert((task_id.clone(), "activity"));
                        }
                        live_activities.push(task_id);
                    }
                    // Its state is gone; replay re-derives nothing for it, so drop it.
                    None => changed = true,
                }
            }
            run.open_activities = live_activities;
            let waits_on_something =
                !run.open_activities.is_empty() || !run.lifecycle.open_children.is_empty();
            let stuck = run.workflow_task.is_none()
                && (!waits_on_something || matches!(run.status, RunStatus::Pending | RunStatus::Running));
            let wait_kind = if !run.open_activities.is_empty() {
                "activity"
            } else if !run.lifecycle.open_children.is_empty() {
                "child"
            } else {
                "workflow_task"
            };
            if stuck {
                ensure_workflow_task(txn, &mut run, now, fx)?;
                changed = true;
                repaired_task = run.workflow_task.clone().map(|t| (t, "workflow"));
            }
            if !changed {
                let out = outcome(&run, target, "repair_not_needed", command_id.clone());
                return Ok(out);
            }
            let (task_id, task_type) = repaired_task.unwrap_or_default();
            let payload = json!({
                    "workflow_command_id": command_id,
                    "workflow_instance_id": run.workflow_id,
                    "workflow_run_id": run.run_id,
                    "command_type": "repair",
                    "outcome": "repair_dispatched",
                    "liveness_state": if stuck { "workflow_task_missing" } else { "task_redispatched" },
                    "wait_kind": wait_kind,
                    "task_id": task_id,
                    "task_type": task_type,
            });
            history::append(txn, &mut run, "RepairRequested", payload, now, None);
            tables::put(txn, &tables::run_key(ns, &run.run_id), &run)?;
            tracing::info!(workflow_id, run_id = %run.run_id, "repair dispatched");
            let out = outcome(&run, target, "repair_dispatched", command_id.clone());
            Ok(out)
        }))
        .await
    }

    /// Archives a closed run: records `ArchiveRequested` and `WorkflowArchived` and sets
    /// its archive time. An open run is refused (`run_not_closed`).
    pub async fn archive_workflow(
        &self,
        ns: &str,
        workflow_id: &str,
        target: RunTarget<'_>,
        reason: Option<&str>,
    ) -> Result<CommandOutcome> {
        let now = self.now_ms();
        let command_id = ids::new_id(now);
        let command_id = &command_id;
        self.transact(move |tx| Box::pin(async move {
let txn = tx.txn.as_mut();
            let mut run = target_run(txn, ns, workflow_id, target).await?;
            if !run.status.is_terminal() {
                return Err(Error::conflict(
                    "run_not_closed",
                    format!(
                        "run '{}' of workflow '{workflow_id}' is {}; only closed runs can be archived",
                        run.run_id,
                        run.status.as_str()
                    ),
                )
                .with("workflow_id", workflow_id)
                .with("run_id", run.run_id.as_str())
                .with("run_status", run.status.as_str())
                .with("outcome", "rejected_run_not_closed"));
            }
            if run.lifecycle.archived_at_ms.is_some() {
                let out = outcome(&run, target, "archive_not_needed", command_id.clone());
                return Ok(out);
            }
            let ids = json!({
                "workflow_command_id": command_id,
                "workflow_instance_id": run.workflow_id,
                "workflow_run_id": run.run_id,
                "reason": reason,
            });
            let requested = merge(
                ids.clone(),
                json!({"command_type": "archive", "outcome": "archived"})
                    .as_object()
                    .expect("invariant: built as an object"),
            );
            history::append(txn, &mut run, "ArchiveRequested", requested, now, None);
            let archived = merge(
                ids,
                json!({"archive_command_id": command_id})
                    .as_object()
                    .expect("invariant: built as an object"),
            );
            history::append(txn, &mut run, "WorkflowArchived", archived, now, None);
            run.lifecycle.archived_at_ms = Some(now);
            tables::put(txn, &tables::run_key(ns, &run.run_id), &run)?;
            let out = outcome(&run, target, "archived", command_id.clone());
            Ok(out)
        }))
        .await
    }
}
