//! Control-plane commands on a run: signals, updates, cancel and terminate; the command
//! contracts workers declare (which signal, query and update names a workflow type
//! accepts) and the receipts that make a resent `request_id` idempotent.
//!
//! Every command is one transaction: it resolves the target run, checks it is open,
//! appends its history and wakes the workflow through `ensure_workflow_task` (one
//! workflow task per run).
//!
//! Invariant (signals in the order workers saw them): a signal accepted while the run's
//! workflow task is leased is held out of history (`DEFERRED_SIGNAL`) until that lease
//! ends, then recorded after the task's commands (`flush_deferred_signals`). The SDK
//! binds a `SignalReceived` to the condition wait it follows (sdk-protocol §8.4): one
//! recorded before the commands of a task whose worker never saw it would be replayed
//! at an earlier wait than the one it woke, and the replay would contradict the
//! worker's own reopened wait. The task's completion or failure flushes them, as does
//! any close of the run (before its closing events); a lease that ends otherwise
//! (expiry, repair) leaves them to the next lease, and a signal recorded with no lease
//! held flushes them first, so they keep their arrival order and are never stranded.

use crate::kernel;
use std::collections::BTreeMap;
use std::time::Duration;

use super::{
    close_run, ensure_workflow_task, history, ids, invalid_commands, json, tables, waits, Effects,
    Engine, Error, Event, InstanceRecord, KvTxn, Map, Millis, Result, RunRecord, RunStatus,
    TaskRecord, TaskStatus, Value,
};
use crate::model::{CommandContract, CommandReceipt, UpdateRecord, UpdateStatus};

/// Signal names reserved by the SDK's own features (message streams); never unknown.
const RESERVED_SIGNAL_PREFIX: &str = "__durable_workflow";

/// A signal for a workflow.
#[derive(Debug, Clone)]
pub struct SignalRequest {
    pub workflow_id: String,
    /// The targeted run (`None`: the current run).
    pub run_id: Option<String>,
    pub signal_name: String,
    /// Argument envelope.
    pub input: Value,
    /// Caller command key.
    pub request_id: Option<String>,
}

/// How long an update call waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateWait {
    /// Until the update is durably accepted.
    Accepted,
    /// Until a worker completed (or failed) it, or the wait timed out.
    Completed,
}

/// An update for a workflow.
#[derive(Debug, Clone)]
pub struct UpdateRequest {
    pub workflow_id: String,
    /// The targeted run (`None`: the current run).
    pub run_id: Option<String>,
    pub update_name: String,
    /// Argument envelope.
    pub input: Value,
    /// Caller command key.
    pub request_id: Option<String>,
    /// What to wait for.
    pub wait_for: UpdateWait,
    /// Longest wait for completion.
    pub wait_timeout: Duration,
}

/// What an update call saw.
#[derive(Debug, Clone)]
pub struct UpdateOutcome {
    /// The update as last read.
    pub update: UpdateRecord,
    /// The run's workflow type.
    pub workflow_type: String,
    /// Whether the call targeted a specific run.
    pub run_targeted: bool,
    /// Whether an earlier call with the same `request_id` admitted it.
    pub retained: bool,
    /// Whether the completion wait ran out before the update finished.
    pub wait_timed_out: bool,
}

/// Cancel or terminate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCommand {
    /// Close as `cancelled` (`CancelRequested` + `WorkflowCancelled`).
    Cancel,
    /// Close as `terminated` (`TerminateRequested` + `WorkflowTerminated`).
    Terminate,
}

impl CloseCommand {
    fn name(self) -> &'static str {
        match self {
            CloseCommand::Cancel => "cancel",
            CloseCommand::Terminate => "terminate",
        }
    }
}

/// Key of an update.
pub(crate) fn update_key(ns: &str, run_id: &str, update_id: &str) -> Vec<u8> {
    crate::keys::Key::new(crate::keys::prefix::UPDATE)
        .str(ns)
        .str(run_id)
        .str(update_id)
        .into_bytes()
}

fn receipt_key(ns: &str, workflow_id: &str, kind: &str, request_id: &str) -> Vec<u8> {
    crate::keys::Key::new(crate::keys::prefix::COMMAND_RECEIPT)
        .str(ns)
        .str(workflow_id)
        .str(kind)
        .str(request_id)
        .into_bytes()
}

fn contract_key(ns: &str, queue: &str, workflow_type: &str) -> Vec<u8> {
    crate::keys::Key::new(crate::keys::prefix::COMMAND_CONTRACT)
        .str(ns)
        .str(queue)
        .str(workflow_type)
        .into_bytes()
}

/// FNV-1a of the arguments' JSON: tells a resent command from a different one under
/// the same `request_id` (not a security boundary).
fn digest(v: &Value) -> String {
    let bytes = serde_json::to_vec(v).expect("invariant: a json Value always serializes");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The `control_plane` block rejections carry, so the SDK maps them by operation.
fn control_plane(operation: &str, outcome: &str, workflow_id: &str, run_id: &str) -> Value {
    json!({
        "schema": "durable-workflow.v2.control-plane-response",
        "version": 1,
        "operation": operation,
        "outcome": outcome,
        "workflow_id": workflow_id,
        "run_id": run_id,
    })
}

/// The run a command targets: the current run, or `run_id` if it is the current one.
async fn target_run(
    txn: &mut dyn KvTxn,
    ns: &str,
    workflow_id: &str,
    run_id: Option<&str>,
    operation: &str,
) -> Result<RunRecord> {
    kernel::require_namespace(txn, ns).await?;
    let Some(instance) =
        tables::get::<InstanceRecord>(txn, &tables::instance_key(ns, workflow_id)).await?
    else {
        return Err(Error::not_found(
            "instance_not_found",
            format!("workflow '{workflow_id}' does not exist"),
        )
        .with("workflow_id", workflow_id));
    };
    if let Some(run_id) = run_id.filter(|r| *r != instance.current_run_id) {
        let exists = tables::get_snapshot::<RunRecord>(txn, &tables::run_key(ns, run_id))
            .await?
            .is_some_and(|r| r.workflow_id == workflow_id);
        if !exists {
            return Err(Error::not_found(
                "run_not_found",
                format!("run '{run_id}' of workflow '{workflow_id}' does not exist"),
            )
            .with("workflow_id", workflow_id)
            .with("run_id", run_id));
        }
        return Err(Error::conflict(
            "historical_run_command_rejected",
            format!("run '{run_id}' is not the current run of workflow '{workflow_id}'"),
        )
        .with("outcome", "rejected_not_current")
        .with("command_status", "rejected")
        .with("workflow_id", workflow_id)
        .with("requested_run_id", run_id)
        .with("current_run_id", instance.current_run_id.as_str())
        .with(
            "control_plane",
            control_plane(operation, "rejected_not_current", workflow_id, run_id),
        ));
    }
    tables::get::<RunRecord>(txn, &tables::run_key(ns, &instance.current_run_id))
        .await?
        .ok_or_else(|| Error::corrupt("instance without its current run"))
}

/// `run_not_active` for a command on a closed run.
fn not_active(run: &RunRecord, operation: &str) -> Error {
    Error::conflict(
        "run_not_active",
        format!(
            "run '{}' of workflow '{}' is {}; it accepts no {operation}",
            run.run_id,
            run.workflow_id,
            run.status.as_str()
        ),
    )
    .with("outcome", "rejected_not_active")
    .with("command_status", "rejected")
    .with("workflow_id", run.workflow_id.as_str())
    .with("run_id", run.run_id.as_str())
    .with("run_status", run.status.as_str())
    .with("control_plane_operation", operation)
    .with(
        "control_plane",
        control_plane(
            operation,
            "rejected_not_active",
            &run.workflow_id,
            &run.run_id,
        ),
    )
}

/// The contract the run's workflow type declared on its queue, if any worker declared one.
pub(crate) async fn contract(
    txn: &mut dyn KvTxn,
    run: &RunRecord,
) -> Result<Option<CommandContract>> {
    tables::get_snapshot(
        txn,
        &contract_key(&run.namespace, &run.task_queue, &run.workflow_type),
    )
    .await
}

/// Sends a signal inside `txn` (the body of [`Engine::signal_workflow`], also a service
/// call's `signal_workflow` binding): records `SignalReceived` (deferred while the run's
/// workflow task is leased) and wakes the workflow. A resent `request_id` returns the
/// original receipt and changes nothing.
pub(crate) async fn signal_in_txn(
    txn: &mut dyn KvTxn,
    ns: &str,
    req: &SignalRequest,
    command_id: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<Value> {
    let arguments_digest = &digest(&req.input);
    let command_id = &command_id.to_string();
    let rkey = req
        .request_id
        .as_deref()
        .map(|r| receipt_key(ns, &req.workflow_id, "signal", r));
    if let (Some(rkey), Some(request_id)) = (&rkey, req.request_id.as_deref()) {
        if let Some(found) = tables::get::<CommandReceipt>(txn, rkey).await? {
            let receipt = replay_receipt(
                found,
                "signal",
                &req.signal_name,
                req.run_id.as_deref(),
                arguments_digest,
                request_id,
            )?;
            return Ok(receipt);
        }
    }
    let mut run = target_run(txn, ns, &req.workflow_id, req.run_id.as_deref(), "signal").await?;
    if run.status.is_terminal() {
        return Err(not_active(&run, "signal"));
    }
    let declared = contract(txn, &run).await?;
    if let Some(declared) =
        declared.filter(|_| !req.signal_name.starts_with(RESERVED_SIGNAL_PREFIX))
    {
        if !declared.signals.contains(&req.signal_name) {
            return Err(unknown_operation(
                &run,
                Operation::Signal,
                &req.signal_name,
                &declared.signals,
            ));
        }
    }
    let signal_id = command_id.clone();
    let payload = json!({
        "workflow_command_id": command_id,
        "signal_id": signal_id,
        "workflow_instance_id": run.workflow_id,
        "workflow_run_id": run.run_id,
        "signal_name": req.signal_name,
        "arguments": req.input,
        "payload_codec": "avro",
    });
    run.last_command_sequence += 1;
    let command_sequence = run.last_command_sequence;
    if workflow_task_is_leased(txn, &run).await? {
        let key = tables::deferred_signal_key(ns, &run.run_id, run.deferred_signals);
        tables::put(txn, &key, &payload)?;
        run.deferred_signals += 1;
    } else {
        flush_deferred_signals(txn, &mut run, now).await?;
        waits::record_signal(txn, &mut run, payload, now);
        ensure_workflow_task(txn, &mut run, now, fx)?;
    }
    tables::put(txn, &tables::run_key(ns, &run.run_id), &run)?;
    let receipt = json!({
        "outcome": "signal_received",
        "command_id": command_id,
        "command_type": "signal",
        "command_status": "accepted",
        "command_sequence": command_sequence,
        "target_scope": if req.run_id.is_some() { "run" } else { "instance" },
        "workflow_id": run.workflow_id,
        "run_id": run.run_id,
        "requested_run_id": req.run_id,
        "resolved_run_id": run.run_id,
        "workflow_type": run.workflow_type,
        "signal_name": req.signal_name,
        "signal_id": signal_id,
        "request_id": req.request_id,
        "retained": false,
        "intent_verified": req.request_id.is_some(),
    });
    if let (Some(rkey), Some(_)) = (&rkey, req.request_id.as_deref()) {
        let record = CommandReceipt {
            command_type: "signal".into(),
            command_id: command_id.clone(),
            name: req.signal_name.clone(),
            run_id: run.run_id.clone(),
            requested_run_id: req.run_id.clone(),
            arguments_digest: arguments_digest.clone(),
            receipt: receipt.clone(),
        };
        tables::put(txn, rkey, &record)?;
    }
    Ok(receipt)
}

/// Accepts an update inside `txn` (the body of [`Engine::update_workflow`], also a
/// service call's `update_workflow` binding): records `UpdateAccepted` and hands it to the
/// run's workflow task. Returns `(run_id, update_id, retained)`; a resent `request_id`
/// returns the first update (`retained`).
pub(crate) async fn accept_update_in_txn(
    txn: &mut dyn KvTxn,
    ns: &str,
    req: &UpdateRequest,
    new_update_id: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<(String, String, bool)> {
    let arguments_digest = &digest(&req.input);
    let new_update_id = &new_update_id.to_string();
    let rkey = req
        .request_id
        .as_deref()
        .map(|r| receipt_key(ns, &req.workflow_id, "update", r));
    if let (Some(rkey), Some(request_id)) = (&rkey, req.request_id.as_deref()) {
        if let Some(found) = tables::get::<CommandReceipt>(txn, rkey).await? {
            let run_id = found.run_id.clone();
            let receipt = replay_receipt(
                found,
                "update",
                &req.update_name,
                req.run_id.as_deref(),
                arguments_digest,
                request_id,
            )?;
            let update_id = receipt
                .get("update_id")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::corrupt("update receipt without update_id"))?
                .to_string();
            return Ok((run_id, update_id, true));
        }
    }
    let mut run = target_run(txn, ns, &req.workflow_id, req.run_id.as_deref(), "update").await?;
    if run.status.is_terminal() {
        return Err(not_active(&run, "update"));
    }
    if let Some(declared) = contract(txn, &run).await? {
        if !declared.updates.contains(&req.update_name) {
            return Err(unknown_operation(
                &run,
                Operation::Update,
                &req.update_name,
                &declared.updates,
            ));
        }
    }
    let update_id = new_update_id.clone();
    let command_id = update_id.clone();
    let payload = json!({
        "workflow_command_id": command_id,
        "update_id": update_id,
        "workflow_instance_id": run.workflow_id,
        "workflow_run_id": run.run_id,
        "update_name": req.update_name,
        "arguments": req.input,
        "payload_codec": "avro",
    });
    let accepted_event_seq = history::append(txn, &mut run, "UpdateAccepted", payload, now, None);
    let record = UpdateRecord {
        update_id: update_id.clone(),
        namespace: ns.to_string(),
        workflow_id: run.workflow_id.clone(),
        run_id: run.run_id.clone(),
        update_name: req.update_name.clone(),
        command_id: command_id.clone(),
        request_id: req.request_id.clone(),
        arguments: req.input.clone(),
        status: UpdateStatus::Accepted,
        result: None,
        failure_message: None,
        failure_type: None,
        accepted_event_seq,
        accepted_at_ms: now,
        closed_at_ms: None,
    };
    tables::put(txn, &update_key(ns, &run.run_id, &update_id), &record)?;
    run.waits.pending_updates.push(update_id.clone());
    match run.workflow_task.clone() {
        None => ensure_workflow_task(txn, &mut run, now, fx)?,
        Some(task_id) => {
            // A ready task no worker holds yet runs the update first; a
            // leased one is left alone and its close hands the update on.
            let tkey = tables::task_key(&task_id);
            if let Some(mut task) = tables::get::<TaskRecord>(txn, &tkey).await? {
                if task.status != TaskStatus::Leased && task.workflow_update_id.is_none() {
                    task.workflow_update_id = run.waits.pending_updates.first().cloned();
                    tables::put(txn, &tkey, &task)?;
                }
            }
        }
    }
    tables::put(txn, &tables::run_key(ns, &run.run_id), &run)?;
    if let (Some(rkey), Some(_)) = (&rkey, req.request_id.as_deref()) {
        let receipt = CommandReceipt {
            command_type: "update".into(),
            command_id: command_id.clone(),
            name: req.update_name.clone(),
            run_id: run.run_id.clone(),
            requested_run_id: req.run_id.clone(),
            arguments_digest: arguments_digest.clone(),
            receipt: json!({"outcome": "update_accepted", "update_id": update_id}),
        };
        tables::put(txn, rkey, &receipt)?;
    }
    Ok((run.run_id.clone(), update_id, false))
}

/// Checks a resent command against its receipt: the same intent returns the original
/// answer, a different one is a `request_id_conflict`.
fn replay_receipt(
    found: CommandReceipt,
    kind: &str,
    name: &str,
    requested_run_id: Option<&str>,
    arguments_digest: &str,
    request_id: &str,
) -> Result<Value> {
    if found.name == name
        && found.requested_run_id.as_deref() == requested_run_id
        && found.arguments_digest == arguments_digest
    {
        let mut receipt = found.receipt;
        if let Some(obj) = receipt.as_object_mut() {
            obj.insert("retained".into(), json!(true));
        }
        return Ok(receipt);
    }
    Err(Error::conflict(
        "request_id_conflict",
        format!("request_id '{request_id}' was already used for a different {kind}"),
    )
    .with("request_id", request_id)
    .with("retained_command_id", found.command_id.as_str())
    .with("retained_command_type", found.command_type.as_str())
    .with(
        "retained_outcome",
        found.receipt.get("outcome").cloned().unwrap_or(Value::Null),
    )
    .with("conflict", "intent_mismatch")
    .with("control_plane_operation", kind)
    .with(
        "control_plane",
        json!({"operation": kind, "outcome": "rejected_request_id_conflict"}),
    ))
}

/// Applies a `complete_update` or `fail_update` command: records `UpdateApplied` (so
/// later replays re-run a successful handler at this point) and `UpdateCompleted`.
pub(super) async fn finish_update(
    txn: &mut dyn KvTxn,
    run: &mut RunRecord,
    kind: &str,
    cmd: &Map<String, Value>,
    task_id: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let Some(update_id) = cmd.get("update_id").and_then(Value::as_str) else {
        return Err(invalid_commands(format!("{kind} needs an update_id")));
    };
    if !run.waits.pending_updates.iter().any(|u| u == update_id) {
        return Err(invalid_commands(format!(
            "update '{update_id}' is not an accepted, unfinished update of this run"
        ))
        .with("update_id", update_id));
    }
    let key = update_key(&run.namespace, &run.run_id, update_id);
    let mut update: UpdateRecord = tables::get(txn, &key)
        .await?
        .ok_or_else(|| Error::corrupt("pending update without its record"))?;
    if kind == "complete_update" {
        let result = cmd.get("result").cloned().unwrap_or(Value::Null);
        history::append(
            txn,
            run,
            "UpdateApplied",
            json!({
                "workflow_command_id": update.command_id,
                "update_id": update.update_id,
                "update_name": update.update_name,
                "arguments": update.arguments,
                "payload_codec": "avro",
            }),
            now,
            Some(task_id),
        );
        history::append(
            txn,
            run,
            "UpdateCompleted",
            json!({
                "workflow_command_id": update.command_id,
                "update_id": update.update_id,
                "update_name": update.update_name,
                "result": result,
                "payload_codec": "avro",
                "outcome": "completed",
            }),
            now,
            Some(task_id),
        );
        update.status = UpdateStatus::Completed;
        update.result = Some(result);
    } else {
        // A failed handler is not recorded as applied: replaying it would raise again.
        let message = cmd
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("update failed")
            .to_string();
        let field = |k: &str| cmd.get(k).cloned().unwrap_or(Value::Null);
        history::append(
            txn,
            run,
            "UpdateCompleted",
            json!({
                "workflow_command_id": update.command_id,
                "update_id": update.update_id,
                "update_name": update.update_name,
                "outcome": "failed",
                "failure_category": "application",
                "message": message,
                "exception_type": field("exception_type"),
                "exception_class": field("exception_class"),
                "non_retryable": cmd.get("non_retryable").and_then(Value::as_bool).unwrap_or(false),
            }),
            now,
            Some(task_id),
        );
        update.status = UpdateStatus::Failed;
        update.failure_message = Some(message);
        update.failure_type = cmd
            .get("exception_type")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    update.closed_at_ms = Some(now);
    tables::put(txn, &key, &update)?;
    run.waits.pending_updates.retain(|u| u != update_id);
    fx.updates.push(update_id.to_string());
    fx.raise(Event::UpdateClosed {
        namespace: run.namespace.clone(),
        run_id: run.run_id.clone(),
        update_id: update_id.to_string(),
    });
    Ok(())
}

impl Engine {
    /// Records the signal, query and update names each workflow type declared at worker
    /// registration, per queue (the latest declaration wins).
    pub async fn declare_command_contracts(
        &self,
        ns: &str,
        queue: &str,
        contracts: &BTreeMap<String, CommandContract>,
    ) -> Result<()> {
        if contracts.is_empty() {
            return Ok(());
        }
        let now = self.now_ms();
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                for (workflow_type, contract) in contracts {
                    let mut record = contract.clone();
                    record.declared_at_ms = now;
                    tables::put(txn, &contract_key(ns, queue, workflow_type), &record)?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Sends a signal: records `SignalReceived` and wakes the workflow. A resent
    /// `request_id` returns the original receipt and changes nothing.
    pub async fn signal_workflow(&self, ns: &str, req: &SignalRequest) -> Result<Value> {
        let now = self.now_ms();
        let command_id = ids::new_id(now);
        let command_id = &command_id;
        self.transact(move |tx| {
            Box::pin(async move {
                signal_in_txn(tx.txn.as_mut(), ns, req, command_id, now, &mut tx.fx).await
            })
        })
        .await
    }

    /// Accepts an update (`UpdateAccepted`) and hands it to the run's workflow task;
    /// with `UpdateWait::Completed`, waits for a worker to finish it.
    pub async fn update_workflow(&self, ns: &str, req: &UpdateRequest) -> Result<UpdateOutcome> {
        let now = self.now_ms();
        let deadline = now + req.wait_timeout.as_millis() as Millis;
        let new_update_id = ids::new_id(now);
        let new_update_id = &new_update_id;
        let (run_id, update_id, retained) = self
            .transact(move |tx| {
                Box::pin(async move {
                    accept_update_in_txn(tx.txn.as_mut(), ns, req, new_update_id, now, &mut tx.fx)
                        .await
                })
            })
            .await?;
        let key = update_key(ns, &run_id, &update_id);
        let read = || async {
            let mut txn = self.inner.store.begin().await?;
            let update: UpdateRecord = tables::get_snapshot(txn.as_mut(), &key)
                .await?
                .ok_or_else(|| Error::corrupt("receipt of a missing update"))?;
            let run: Option<RunRecord> =
                tables::get_snapshot(txn.as_mut(), &tables::run_key(ns, &run_id)).await?;
            Ok::<_, Error>((update, run.map(|r| r.workflow_type).unwrap_or_default()))
        };
        let mut wait_timed_out = false;
        let (update, workflow_type) = if req.wait_for == UpdateWait::Completed {
            let waiter = self.inner.queries.update_waiter(&update_id);
            loop {
                let notified = waiter.notify().notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let (update, workflow_type) = read().await?;
                let now = self.now_ms();
                if update.status != UpdateStatus::Accepted {
                    break (update, workflow_type);
                }
                if now >= deadline {
                    wait_timed_out = true;
                    break (update, workflow_type);
                }
                // The notification is the fast path; a run closed by a path that posts
                // none (a deadline) is still seen within a second.
                tokio::select! {
                    _ = notified => {}
                    _ = self.inner.clock.sleep_until(deadline.min(now + 1_000)) => {}
                }
            }
        } else {
            read().await?
        };
        Ok(UpdateOutcome {
            update,
            workflow_type,
            run_targeted: req.run_id.is_some(),
            retained,
            wait_timed_out,
        })
    }

    /// Cancels or terminates a run: records the request and the terminal event, then
    /// closes the run (its tasks and timers go; workflow code does not run again).
    pub async fn close_workflow(
        &self,
        ns: &str,
        workflow_id: &str,
        run_id: Option<&str>,
        command: CloseCommand,
        reason: Option<&str>,
    ) -> Result<Value> {
        let now = self.now_ms();
        let command_id = ids::new_id(now);
        let command_id = &command_id;
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                let fx = &mut tx.fx;
                let receipt = close_in_txn(
                    txn,
                    ns,
                    workflow_id,
                    run_id,
                    command,
                    reason,
                    command_id,
                    now,
                    fx,
                )
                .await?;
                Ok(receipt)
            })
        })
        .await
    }
}

/// Whether the run's workflow task is leased (read with a conflict, so a lease or
/// report racing this transaction retries it).
async fn workflow_task_is_leased(txn: &mut dyn KvTxn, run: &RunRecord) -> Result<bool> {
    let Some(task_id) = run.workflow_task.as_deref() else {
        return Ok(false);
    };
    let task: Option<TaskRecord> = tables::get(txn, &tables::task_key(task_id)).await?;
    Ok(task.is_some_and(|t| t.status == TaskStatus::Leased))
}

/// The payloads of the run's deferred signals, in arrival order.
pub(crate) async fn deferred_signals(txn: &mut dyn KvTxn, run: &RunRecord) -> Result<Vec<Value>> {
    let mut payloads = Vec::with_capacity(run.deferred_signals as usize);
    for index in 0..run.deferred_signals {
        let key = tables::deferred_signal_key(&run.namespace, &run.run_id, index);
        let payload: Value = tables::get(txn, &key)
            .await?
            .ok_or_else(|| Error::corrupt("missing deferred signal"))?;
        payloads.push(payload);
    }
    Ok(payloads)
}

/// Records the run's deferred signals in history, in arrival order; returns whether
/// there were any. Callers that end a lease create the next workflow task.
pub(crate) async fn flush_deferred_signals(
    txn: &mut dyn KvTxn,
    run: &mut RunRecord,
    now: Millis,
) -> Result<bool> {
    if run.deferred_signals == 0 {
        return Ok(false);
    }
    for payload in deferred_signals(txn, run).await? {
        waits::record_signal(txn, run, payload, now);
    }
    txn.clear_range(&tables::deferred_signals_range(&run.namespace, &run.run_id));
    run.deferred_signals = 0;
    Ok(true)
}

/// Cancels or terminates a run inside `txn` (the body of [`Engine::close_workflow`], also
/// used by schedules' `cancel_other` and `terminate_other` overlap policies); returns the
/// command receipt.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn close_in_txn(
    txn: &mut dyn KvTxn,
    ns: &str,
    workflow_id: &str,
    run_id: Option<&str>,
    command: CloseCommand,
    reason: Option<&str>,
    command_id: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<Value> {
    let operation = command.name();
    let mut run = target_run(txn, ns, workflow_id, run_id, operation).await?;
    if run.status.is_terminal() {
        return Err(not_active(&run, operation));
    }
    let (requested, closed, status, outcome, category) = match command {
        CloseCommand::Cancel => (
            "CancelRequested",
            "WorkflowCancelled",
            RunStatus::Cancelled,
            "cancelled",
            "cancelled",
        ),
        CloseCommand::Terminate => (
            "TerminateRequested",
            "WorkflowTerminated",
            RunStatus::Terminated,
            "terminated",
            "terminated",
        ),
    };
    let message = format!("workflow was {outcome}");
    // `get_result` raises with the terminal event's `reason`: never leave it null.
    let reason = reason
        .map(str::to_string)
        .unwrap_or_else(|| message.clone());
    let payload = json!({
        "workflow_command_id": command_id,
        "workflow_instance_id": run.workflow_id,
        "workflow_run_id": run.run_id,
        "command_type": operation,
        "reason": reason,
    });
    flush_deferred_signals(txn, &mut run, now).await?;
    run.last_command_sequence += 1;
    let command_sequence = run.last_command_sequence;
    history::append(txn, &mut run, requested, payload, now, None);
    let payload = json!({
        "workflow_command_id": command_id,
        "workflow_instance_id": run.workflow_id,
        "workflow_run_id": run.run_id,
        "failure_category": category,
        "closed_reason": outcome,
        "message": message,
        "reason": reason,
    });
    history::append(txn, &mut run, closed, payload, now, None);
    close_run(txn, &mut run, status, outcome, now, fx).await?;
    tables::put(txn, &tables::run_key(ns, &run.run_id), &run)?;
    let receipt = json!({
        "outcome": outcome,
        "command_id": command_id,
        "command_type": operation,
        "command_status": "accepted",
        "command_sequence": command_sequence,
        "target_scope": if run_id.is_some() { "run" } else { "instance" },
        "workflow_id": run.workflow_id,
        "run_id": run.run_id,
        "requested_run_id": run_id,
        "resolved_run_id": run.run_id,
        "workflow_type": run.workflow_type,
        "status": run.status.as_str(),
        "reason": reason,
    });
    Ok(receipt)
}

/// The message kinds a workflow declares in its command contract.
#[derive(Clone, Copy)]
enum Operation {
    Signal,
    Update,
}

/// 404 for a signal or update name outside the contract the worker declared.
fn unknown_operation(run: &RunRecord, op: Operation, name: &str, declared: &[String]) -> Error {
    let (kind, reason, outcome, name_field, declared_field) = match op {
        Operation::Signal => (
            "signal",
            "unknown_signal",
            "rejected_unknown_signal",
            "signal_name",
            "declared_signals",
        ),
        Operation::Update => (
            "update",
            "unknown_update",
            "rejected_unknown_update",
            "update_name",
            "declared_updates",
        ),
    };
    Error::not_found(
        reason,
        format!(
            "workflow type '{}' declares no {kind} '{name}'",
            run.workflow_type
        ),
    )
    .with("outcome", outcome)
    .with("command_status", "rejected")
    .with(name_field, name)
    .with(declared_field, declared.to_vec())
    .with("workflow_id", run.workflow_id.as_str())
    .with("run_id", run.run_id.as_str())
    .with(
        "control_plane",
        control_plane(kind, outcome, &run.workflow_id, &run.run_id),
    )
}
