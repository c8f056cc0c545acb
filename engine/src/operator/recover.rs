//! `recover-stuck-workflow`: prepares one workflow id for a fresh start.
//!
//! The decision is taken under the workflow id's lock: one transaction that reads the
//! instance record and its current run (a start, a continue-as-new or another recover
//! on the same id conflicts with it and is serialised). Only the current run of an id
//! can be open (continue-as-new closes the previous one), so it decides:
//!
//! * open with no failure evidence (**active**: running, waiting on a timer, a signal
//!   or a healthy activity) → refused, `retry_blocked` / `run_active`;
//! * completed (**succeeded**) → refused, `retry_blocked` / `previous_run_succeeded`;
//! * open with failure evidence (**stuck**: an activity retrying after failed attempts,
//!   a workflow task failing) → terminated in that same transaction, through the
//!   engine's terminate path;
//! * failed, timed out, cancelled or terminated → nothing to end.
//!
//! Then the runs are purged, one bounded transaction each (history and updates go by
//! range clears, so a transaction's size does not grow with history): older runs of the
//! chain first, oldest first, then the current run together with the instance record
//! and its command receipts, so the next start of the id begins blank. A crash in
//! between leaves the id with closed runs only, which the same call finishes.

use serde_json::json;

use super::audit::{put_audit, Actor, AuditEntry};
use super::inspect::failure_evidence;
use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::kernel;
use crate::kernel::Engine;
use crate::keys::{prefix, Key};
use crate::model::{InstanceRecord, RunRecord, RunStatus};
use crate::workflow::{CloseCommand, MAX_CHAIN_RUNS};
use crate::{ids, tables};

/// A `recover-stuck-workflow` request.
#[derive(Debug, Clone)]
pub struct RecoverRequest {
    /// Workflow type (`serviceName`).
    pub service_name: String,
    /// Workflow id (`serviceKey`).
    pub service_key: String,
}

/// What `recover-stuck-workflow` did.
#[derive(Debug, Clone, Default)]
pub struct RecoverOutcome {
    /// Runs terminated (the stuck current run, if it was open).
    pub terminated: Vec<String>,
    /// Runs purged (history, updates, record), oldest first.
    pub purged: Vec<String>,
    /// Whether the instance record and its receipts were deleted by this call (false:
    /// a concurrent call finished first).
    pub state_cleared: bool,
}

struct Plan {
    current_run_id: String,
    older: Vec<String>,
    terminated: Vec<String>,
}

fn retry_blocked(
    blocked: &'static str,
    message: String,
    req: &RecoverRequest,
    run: &RunRecord,
) -> Error {
    Error::conflict("retry_blocked", message)
        .with("blockedReason", blocked)
        .with("invocationIds", vec![run.run_id.clone()])
        .with("serviceName", req.service_name.as_str())
        .with("serviceKey", req.service_key.as_str())
        .with("runStatus", run.status.as_str())
}

fn not_found(req: &RecoverRequest, message: String) -> Error {
    Error::not_found("instance_not_found", message)
        .with("serviceName", req.service_name.as_str())
        .with("serviceKey", req.service_key.as_str())
}

/// Deletes one closed run of `workflow_id`: its history, updates, retention-index entry,
/// whatever task or timer it still names, and its record; with `current`, also its
/// workflow-list entry. Returns whether it was there. Idempotent.
async fn purge_run(
    tx: &mut kernel::Tx<'_>,
    ns: &str,
    workflow_id: &str,
    run_id: &str,
    current: bool,
    stores: &crate::payloads::PayloadStores,
    released: &mut crate::payloads::Released,
) -> Result<bool> {
    let txn = tx.txn.as_mut();
    let fx = &mut tx.fx;
    let rkey = tables::run_key(ns, run_id);
    let Some(run) = tables::get::<RunRecord>(txn, &rkey).await? else {
        return Ok(false);
    };
    if run.workflow_id != workflow_id || !run.status.is_terminal() {
        return Err(Error::corrupt(format!(
            "run '{run_id}' is not a closed run of workflow '{workflow_id}'"
        )));
    }
    // A closed run holds no task or timer; should one remain, it goes with the run
    // rather than be stranded.
    for task_id in run.workflow_task.iter().chain(run.open_activities.iter()) {
        kernel::delete_task(txn, task_id, fx).await?;
    }
    if let Some(timer) = &run.deadline_timer {
        txn.clear(&tables::timer_key(timer));
    }
    for open in run.waits.timers.values() {
        txn.clear(&tables::timer_key(&open.timer));
    }
    if let Some(timer) = run.waits.condition.as_ref().and_then(|c| c.timer.as_ref()) {
        txn.clear(&tables::timer_key(timer));
    }
    // Its stored payloads go with it unless another run's history references them.
    crate::payloads::release_run(txn, stores, ns, run_id, released).await?;
    txn.clear_range(&Key::new(prefix::HISTORY).str(ns).str(run_id).range());
    txn.clear_range(&Key::new(prefix::UPDATE).str(ns).str(run_id).range());
    if let Some(closed_at) = run.closed_at_ms {
        txn.clear(
            &Key::new(prefix::CLOSED_RUN)
                .str(ns)
                .i64(closed_at)
                .str(run_id)
                .into_bytes(),
        );
    }
    // Only the current run of an id is on the workflow list (older runs left it when
    // continued).
    if current {
        crate::workflow::unlist_run(txn, &run);
    }
    tables::delete(txn, &rkey).await?;
    Ok(true)
}

impl Engine {
    /// Ends and purges the runs of one workflow id and clears its state, unless a run is
    /// active or the latest run succeeded (409 `retry_blocked`). See the module docs.
    pub async fn recover_stuck_workflow(
        &self,
        ns: &str,
        req: &RecoverRequest,
        actor: &Actor,
    ) -> Result<RecoverOutcome> {
        let now = self.now_ms();
        let audit = AuditEntry::new(
            ns,
            "recover-stuck-workflow",
            actor,
            json!({"serviceName": req.service_name, "serviceKey": req.service_key}),
            now,
        );
        match self.recover_inner(ns, req, actor, &audit, now).await {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                self.audit_failure(audit, &e).await;
                Err(e)
            }
        }
    }

    async fn recover_inner(
        &self,
        ns: &str,
        req: &RecoverRequest,
        actor: &Actor,
        audit: &AuditEntry,
        now: Millis,
    ) -> Result<RecoverOutcome> {
        let mut errors = std::collections::BTreeMap::new();
        for (field, value) in [
            ("serviceName", &req.service_name),
            ("serviceKey", &req.service_key),
        ] {
            if !super::valid_operator_key(value) {
                errors.insert(
                    field.to_string(),
                    vec![format!(
                        "The {field} field must be 1 to 255 letters, digits, '_' or '-'."
                    )],
                );
            }
        }
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        let workflow_id = req.service_key.as_str();
        let command_id = ids::new_id(now);
        let reason = format!(
            "killed by operator {}: recover-stuck-workflow",
            actor.principal
        );
        let (command_id, reason) = (&command_id, &reason);
        // The decision, under the workflow id's lock.
        let plan = self
            .transact(move |tx| Box::pin(async move {
let txn = tx.txn.as_mut();
let fx = &mut tx.fx;
                let t = txn;
                kernel::require_namespace(t, ns).await?;
                let Some(instance) =
                    tables::get::<InstanceRecord>(t, &tables::instance_key(ns, workflow_id)).await?
                else {
                    return Err(not_found(
                        req,
                        format!("workflow '{workflow_id}' does not exist (nothing to recover)"),
                    ));
                };
                let current: RunRecord =
                    tables::get(t, &tables::run_key(ns, &instance.current_run_id))
                        .await?
                        .ok_or_else(|| Error::corrupt("instance without its current run"))?;
                if current.workflow_type != req.service_name {
                    return Err(not_found(
                        req,
                        format!(
                            "workflow '{workflow_id}' is of type '{}', not '{}'",
                            current.workflow_type, req.service_name
                        ),
                    ));
                }
                let mut older = Vec::new();
                let mut next = current.lifecycle.continued_from_run_id.clone();
                while let Some(run_id) = next.take() {
                    if older.len() + 1 >= MAX_CHAIN_RUNS {
                        break;
                    }
                    let Some(run) =
                        tables::get_snapshot::<RunRecord>(t, &tables::run_key(ns, &run_id)).await?
                    else {
                        break;
                    };
                    next = run.lifecycle.continued_from_run_id.clone();
                    older.push(run.run_id);
                }
                older.reverse();
                let mut terminated = Vec::new();
                if !current.status.is_terminal() {
                    let Some(evidence) = failure_evidence(t, &current).await? else {
                        return Err(retry_blocked(
                            "run_active",
                            format!(
                                "run '{}' of workflow '{workflow_id}' is {} and shows no failure; \
                                 it is not stuck (cancel or terminate it first to discard it)",
                                current.run_id,
                                current.status.as_str()
                            ),
                            req,
                            &current,
                        ));
                    };
                    tracing::info!(namespace = ns, workflow_id, run_id = %current.run_id,
                        evidence = %evidence.error_message, "recover-stuck-workflow terminates a stuck run");
                    crate::workflow::close_in_txn(
                        t,
                        ns,
                        workflow_id,
                        Some(&current.run_id),
                        CloseCommand::Terminate,
                        Some(reason),
                        command_id,
                        now,
                        fx,
                    )
                    .await?;
                    terminated.push(current.run_id.clone());
                } else if current.status == RunStatus::Completed {
                    return Err(retry_blocked(
                        "previous_run_succeeded",
                        format!(
                            "the latest run '{}' of workflow '{workflow_id}' completed successfully; \
                             recovering would repeat a finished workflow",
                            current.run_id
                        ),
                        req,
                        &current,
                    ));
                }
                let entry = audit.clone().with_outcome(
                    "in_progress",
                    None,
                    json!({"terminated": terminated, "runs": older.len() + 1,
                           "currentRunId": current.run_id}),
                );
                put_audit(t, &entry)?;
                Ok(Plan {
                    current_run_id: current.run_id,
                    older,
                    terminated,
                })
            }))
            .await?;

        let mut purged = Vec::new();
        let stores = &self.config().payloads;
        for run_id in &plan.older {
            let (done, released) = self
                .transact(move |tx| {
                    Box::pin(async move {
                        let mut released = crate::payloads::Released::default();
                        let done =
                            purge_run(tx, ns, workflow_id, run_id, false, stores, &mut released)
                                .await?;
                        Ok((done, released))
                    })
                })
                .await?;
            crate::payloads::delete_released(&released);
            if done {
                purged.push(run_id.clone());
            }
        }
        let current_run_id = &plan.current_run_id;
        let (cleared, current_purged, released) = self
            .transact(move |tx| {
                Box::pin(async move {
                    let mut released = crate::payloads::Released::default();
                    let ikey = tables::instance_key(ns, workflow_id);
                    match tables::get::<InstanceRecord>(tx.txn.as_mut(), &ikey).await? {
                        // A concurrent recover finished first (and maybe a new run started):
                        // nothing of ours is left to clear.
                        None => return Ok((false, false, released)),
                        Some(i) if i.current_run_id != *current_run_id => {
                            return Ok((false, false, released))
                        }
                        Some(_) => {}
                    }
                    let done = purge_run(
                        tx,
                        ns,
                        workflow_id,
                        current_run_id,
                        true,
                        stores,
                        &mut released,
                    )
                    .await?;
                    let t = tx.txn.as_mut();
                    tables::delete(t, &ikey).await?;
                    // Command receipts are per workflow id: a resent request id after the
                    // recovery must not return an answer about the purged runs.
                    t.clear_range(
                        &Key::new(prefix::COMMAND_RECEIPT)
                            .str(ns)
                            .str(workflow_id)
                            .range(),
                    );
                    Ok((true, done, released))
                })
            })
            .await?;
        crate::payloads::delete_released(&released);
        if current_purged {
            purged.push(plan.current_run_id.clone());
        }
        let outcome = RecoverOutcome {
            terminated: plan.terminated,
            purged,
            state_cleared: cleared,
        };
        let entry = AuditEntry {
            completed_at_ms: Some(self.now_ms()),
            ..audit.clone().with_outcome(
                "acknowledged",
                None,
                json!({"terminated": outcome.terminated, "purged": outcome.purged,
                       "stateCleared": outcome.state_cleared}),
            )
        };
        self.record_audit(&entry).await?;
        tracing::info!(namespace = ns, workflow_id, terminated = outcome.terminated.len(),
            purged = outcome.purged.len(), principal = %actor.principal,
            "operator recover-stuck-workflow");
        Ok(outcome)
    }
}
