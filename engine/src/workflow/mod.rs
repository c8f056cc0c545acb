//! Workflow semantics: starting runs, leasing and completing workflow tasks (applying
//! their commands to history), and closing runs.
//!
//! Invariant (one workflow task per run): `RunRecord::workflow_task` names the run's only
//! workflow task, ready, leased or backing off. Events that arrive while it is leased only
//! grow history (signals are held out of it until the lease ends: `messages`); when the
//! task closes, the same transaction creates the next task if history grew past
//! `TaskRecord::history_seen`, the last event the worker was given.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::clock::{format_timestamp, Millis};
use crate::error::{Error, RejectKind, Result};
use crate::history;
use crate::kernel::{self, Effects, Engine, Event, Tx, TxFuture};
use crate::matching::{QueueKey, Take, TaskHint};
use crate::model::{
    ActivityState, InstanceRecord, Lease, RunRecord, RunStatus, TaskKind, TaskRecord, TaskStatus,
    TimerAction, TimerKey,
};
use crate::storage::KvTxn;
use crate::{ids, tables};

mod activities;
mod activity_timeouts;
mod children;
mod commands;
mod export;
mod listing;
mod messages;
mod poll;
mod repair;
mod standalone;
pub mod waits;

pub(crate) use activity_timeouts::{
    arm_on_lease as arm_activity_timeouts_on_lease, fire as fire_activity_timeout,
};
pub(crate) use children::apply_parent_close_policy;
pub use export::{canonical as bundle_canonical, checksum as bundle_checksum, DebugView};
pub(crate) use listing::unindex as unlist_run;
pub use listing::{ListQuery, WorkflowListPage, MAX_CHAIN_RUNS, MAX_PAGE_SIZE};
pub(crate) use messages::{
    accept_update_in_txn, close_in_txn, deferred_signals, flush_deferred_signals, signal_in_txn,
    update_key,
};
pub use messages::{CloseCommand, SignalRequest, UpdateOutcome, UpdateRequest, UpdateWait};
pub(crate) use poll::{fail_session_activities, lease_eagerly, EagerLeases};
pub use repair::{CommandOutcome, RunTarget};
pub(crate) use standalone::start_standalone_in_txn;
pub use standalone::{StandaloneActivityView, StartActivity, STANDALONE_HOST_TYPE};
mod tasks;

/// How a start treats an existing workflow id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicatePolicy {
    /// Reject (409).
    Fail,
    /// Return the existing run while it is open.
    UseExisting,
}

/// A request to start a workflow.
#[derive(Debug, Clone)]
pub struct StartWorkflow {
    /// Workflow id (generated when absent).
    pub workflow_id: Option<String>,
    pub workflow_type: String,
    pub task_queue: String,
    /// Input payload envelope.
    pub input: Value,
    /// Execution timeout in seconds.
    pub execution_timeout_seconds: Option<u64>,
    /// Run timeout in seconds.
    pub run_timeout_seconds: Option<u64>,
    /// Duplicate handling.
    pub duplicate_policy: DuplicatePolicy,
    /// Memo object.
    pub memo: Value,
    /// Search attributes object.
    pub search_attributes: Value,
    /// 0 (first) to 9.
    pub priority: u8,
    /// Build id to pin to.
    pub build_id: Option<String>,
}

impl StartWorkflow {
    /// A start of `workflow_type` on `task_queue` with `input` and nothing else: a
    /// generated id, no timeouts, refused when the id has an open run, empty memo and
    /// search attributes, priority 5, no build id.
    pub fn new(
        workflow_type: impl Into<String>,
        task_queue: impl Into<String>,
        input: Value,
    ) -> Self {
        StartWorkflow {
            workflow_id: None,
            workflow_type: workflow_type.into(),
            task_queue: task_queue.into(),
            input,
            execution_timeout_seconds: None,
            run_timeout_seconds: None,
            duplicate_policy: DuplicatePolicy::Fail,
            memo: json!({}),
            search_attributes: json!({}),
            priority: 5,
            build_id: None,
        }
    }
}

/// The result of a start.
#[derive(Debug, Clone)]
pub struct StartOutcome {
    /// A new run was created (false: an open run was returned).
    pub started_new: bool,
    pub run: RunRecord,
}

/// A run with the payloads kept in its history.
#[derive(Debug, Clone)]
pub struct RunView {
    pub run: RunRecord,
    /// Runs of the workflow id so far.
    pub run_count: u32,
    /// Whether this is the newest run.
    pub is_current_run: bool,
    /// The start input.
    pub input: Value,
    /// The result, when completed.
    pub output: Value,
    /// The terminal event's payload, when closed.
    pub close_payload: Value,
}

/// A workflow task handed to a worker, in the protocol's shape.
#[derive(Debug, Serialize)]
pub struct WorkflowTaskView {
    pub task_id: String,
    /// Kind discriminator.
    pub task_kind: &'static str,
    /// Fencing token.
    pub workflow_task_attempt: u32,
    pub workflow_id: String,
    pub run_id: String,
    pub workflow_type: String,
    /// Always `avro`.
    pub payload_codec: &'static str,
    /// Start input.
    pub arguments: Value,
    /// First page of history.
    pub history_events: Vec<Box<RawValue>>,
    /// Token of the next page, if any.
    pub next_history_page_token: Option<String>,
    /// History length the task covers.
    pub total_history_events: u64,
    /// Same as `total_history_events`.
    pub last_history_sequence: u64,
    /// The polling worker.
    pub lease_owner: String,
    /// When the lease lapses.
    pub lease_expires_at: String,
    pub namespace: String,
    /// Queue.
    pub task_queue: String,
    pub run_status: &'static str,
    /// The accepted update this task runs; the worker runs only its handler.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_update_id: Option<String>,
    /// `sticky_hit_expected` when the polling worker cached this run's history at its
    /// last completion: the inline page is then only the first event, and the worker
    /// fetches just the tail after its cached prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky_replay_mode: Option<&'static str>,
}

/// An activity task handed to a worker, in the protocol's shape.
#[derive(Debug, Serialize)]
pub struct ActivityTaskView {
    pub task_id: String,
    /// The attempt's id; echoed on every later call.
    pub activity_attempt_id: String,
    /// Stable id across attempts.
    pub activity_execution_id: String,
    pub activity_type: String,
    /// Always `avro`.
    pub payload_codec: &'static str,
    pub arguments: Value,
    /// 1 for the first attempt.
    pub attempt_number: u32,
    /// Owning workflow id.
    pub workflow_id: String,
    /// Owning run.
    pub run_id: String,
    /// Retry policy as scheduled.
    pub retry_policy: Value,
    /// Queue.
    pub task_queue: String,
    /// The polling worker.
    pub lease_owner: String,
    /// When the lease lapses.
    pub lease_expires_at: String,
    pub namespace: String,
    /// The worker session the activity runs in (`workerSessionTaskAffinity`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_session: Option<Value>,
}

/// A poll's parameters.
#[derive(Debug, Clone)]
pub struct Poll {
    pub namespace: String,
    /// Polling worker.
    pub worker_id: String,
    /// Queue.
    pub task_queue: String,
    /// Longest wait.
    pub timeout: std::time::Duration,
    /// Events in the first history page (workflow tasks).
    pub history_page_size: usize,
    /// Idempotency key: a retried poll with the same id gets the same leased task back.
    pub poll_request_id: Option<String>,
}

/// What a completion or failure did.
#[derive(Debug, Clone, Serialize)]
pub struct TaskOutcome {
    pub task_id: String,
    /// `completed`, `failed` or `ignored`.
    pub outcome: &'static str,
    /// Whether the report changed state.
    pub recorded: bool,
    pub run_id: String,
    /// Run status after the report.
    pub run_status: &'static str,
    /// The next workflow task, when one was created.
    pub next_task_id: Option<String>,
}

/// A fresh workflow task for `run`, unless it already has one.
pub(crate) fn ensure_workflow_task(
    txn: &mut dyn KvTxn,
    run: &mut RunRecord,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    // A standalone activity's host run has no workflow code to run.
    if run.workflow_task.is_some()
        || run.status.is_terminal()
        || run.workflow_type == standalone::STANDALONE_HOST_TYPE
    {
        return Ok(());
    }
    let task = TaskRecord {
        task_id: ids::new_id(now),
        kind: TaskKind::Workflow,
        namespace: run.namespace.clone(),
        task_queue: run.task_queue.clone(),
        workflow_id: run.workflow_id.clone(),
        run_id: run.run_id.clone(),
        type_name: run.workflow_type.clone(),
        priority: run.priority,
        status: TaskStatus::Ready,
        attempt: 0,
        ready_at_ms: now,
        lease: None,
        history_seen: 0,
        failures: 0,
        backoff_timer: None,
        activity: None,
        compatibility: run.build_id.clone(),
        // Accepted updates run before anything else; see `waits`.
        workflow_update_id: run.waits.pending_updates.first().cloned(),
    };
    kernel::put_ready_task(txn, &task, fx)?;
    run.workflow_task = Some(task.task_id);
    if run.status == RunStatus::Waiting {
        run.status = RunStatus::Running;
    }
    Ok(())
}

/// Appends a service call's event (`ServiceCallStarted`/`Completed`/`Failed`/`Cancelled`)
/// to a caller run's history, waking it when `wake` (an event the worker must see to
/// continue). A caller that closed in the meantime records nothing; returns whether the
/// event was recorded.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn record_service_call_event(
    txn: &mut dyn KvTxn,
    ns: &str,
    run_id: &str,
    event_type: &str,
    payload: Value,
    wake: bool,
    now: Millis,
    fx: &mut Effects,
) -> Result<bool> {
    let key = tables::run_key(ns, run_id);
    let Some(mut run) = tables::get::<RunRecord>(txn, &key).await? else {
        return Ok(false);
    };
    if run.status.is_terminal() {
        return Ok(false);
    }
    history::append(txn, &mut run, event_type, payload, now, None);
    if wake {
        ensure_workflow_task(txn, &mut run, now, fx)?;
    }
    tables::put(txn, &key, &run)?;
    Ok(true)
}

/// Ends a run: deletes its open tasks and deadline timer. History and status are the
/// caller's.
async fn close_run(
    txn: &mut dyn KvTxn,
    run: &mut RunRecord,
    status: RunStatus,
    reason: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    run.status = status;
    run.closed_at_ms = Some(now);
    run.closed_reason = Some(reason.to_string());
    fx.raise(Event::RunClosed {
        namespace: run.namespace.clone(),
        workflow_id: run.workflow_id.clone(),
        run_id: run.run_id.clone(),
        reason: reason.to_string(),
        schedule_id: run.lifecycle.schedule_id.clone(),
        closed_at_ms: now,
    });
    // Timers, the condition wait and pending updates end with the run; leased activity
    // attempts get tombstones so their next heartbeat learns why.
    waits::on_close(txn, run, status, now, fx).await?;
    if let Some(task_id) = run.workflow_task.take() {
        kernel::delete_task(txn, &task_id, fx).await?;
    }
    for task_id in std::mem::take(&mut run.open_activities) {
        kernel::delete_task(txn, &task_id, fx).await?;
    }
    if let Some(timer) = run.deadline_timer.take() {
        kernel::clear_timer(txn, &timer);
    }
    // Visibility, the parent's wake-up and the parent-close policy of open children.
    children::on_run_closed(txn, run, now, fx).await
}

/// Fails a run whose deadline timer fired (idempotent).
pub(crate) async fn time_out_run(
    txn: &mut dyn KvTxn,
    ns: &str,
    run_id: &str,
    timer: &TimerKey,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let key = tables::run_key(ns, run_id);
    let Some(mut run) = tables::get::<RunRecord>(txn, &key).await? else {
        return Ok(());
    };
    if run.status.is_terminal() || run.deadline_timer.as_ref() != Some(timer) {
        return Ok(());
    }
    run.deadline_timer = None;
    let kind = if run.run_deadline_ms.is_some_and(|d| d <= now) {
        "run"
    } else {
        "execution"
    };
    let payload = json!({
            "timeout_kind": format!("{kind}_timeout"),
            "failure_category": "timeout",
            "message": format!("workflow {kind} timeout exceeded"),
            "exception_class": "WorkflowTimedOut",
            "execution_deadline_at": run.execution_deadline_ms.map(format_timestamp),
            "run_deadline_at": run.run_deadline_ms.map(format_timestamp),
    });
    flush_deferred_signals(txn, &mut run, now).await?;
    history::append(txn, &mut run, "WorkflowTimedOut", payload, now, None);
    close_run(txn, &mut run, RunStatus::Failed, "timed_out", now, fx).await?;
    tables::put(txn, &key, &run)
}

/// Checks that the caller holds the task's current lease.
fn check_lease(task: &TaskRecord, owner: &str, now: Millis) -> Result<()> {
    let Some(lease) = task
        .lease
        .as_ref()
        .filter(|_| task.status == TaskStatus::Leased)
    else {
        return Err(Error::conflict(
            "task_not_leased",
            format!("task '{}' is not leased", task.task_id),
        )
        .with(
            "task_status",
            serde_json::to_value(task.status).unwrap_or(Value::Null),
        ));
    };
    if lease.owner != owner {
        return Err(Error::conflict(
            "lease_owner_mismatch",
            format!("task '{}' is leased to another worker", task.task_id),
        ));
    }
    if lease.expires_at_ms <= now {
        return Err(Error::conflict(
            "lease_expired",
            format!("the lease on task '{}' has expired", task.task_id),
        )
        .with("task_status", "leased"));
    }
    Ok(())
}

/// Rejections that mean "you no longer hold this lease".
pub(crate) fn is_lease_loss(reason: &str) -> bool {
    matches!(
        reason,
        "task_not_found"
            | "task_not_leased"
            | "lease_expired"
            | "lease_owner_mismatch"
            | "workflow_task_attempt_mismatch"
    )
}

async fn load_task(
    txn: &mut dyn KvTxn,
    ns: &str,
    task_id: &str,
    kind: TaskKind,
) -> Result<TaskRecord> {
    match tables::get::<TaskRecord>(txn, &tables::task_key(task_id)).await? {
        Some(task) if task.namespace == ns && task.kind == kind => Ok(task),
        _ => Err(Error::not_found(
            "task_not_found",
            format!("task '{task_id}' does not exist"),
        )),
    }
}

fn check_workflow_lease(task: &TaskRecord, owner: &str, attempt: u32, now: Millis) -> Result<()> {
    check_lease(task, owner, now)?;
    if task.attempt != attempt {
        return Err(Error::conflict(
            "workflow_task_attempt_mismatch",
            format!(
                "task '{}' is at attempt {}, not {attempt}",
                task.task_id, task.attempt
            ),
        )
        .with("current_attempt", task.attempt));
    }
    Ok(())
}

fn check_activity_lease(
    task: &TaskRecord,
    owner: &str,
    attempt_id: &str,
    now: Millis,
) -> Result<()> {
    check_lease(task, owner, now)?;
    let current = task.activity.as_ref().and_then(|a| a.attempt_id.as_deref());
    if current != Some(attempt_id) {
        return Err(Error::conflict(
            "lease_expired",
            format!(
                "attempt '{attempt_id}' is no longer the current attempt of task '{}'",
                task.task_id
            ),
        ));
    }
    Ok(())
}

/// Parallel-group and selection fields that the server copies from a command into its
/// events, so the SDK can reorder group results on replay.
fn group_fields(command: &Map<String, Value>) -> Map<String, Value> {
    command
        .iter()
        .filter(|(k, _)| k.starts_with("parallel_group_") || k.starts_with("selection_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn merge(mut base: Value, extra: &Map<String, Value>) -> Value {
    if let Some(obj) = base.as_object_mut() {
        for (k, v) in extra {
            obj.insert(k.clone(), v.clone());
        }
    }
    base
}

fn invalid_commands(message: impl Into<String>) -> Error {
    Error::reject(RejectKind::Invalid, "invalid_commands", message)
}

/// Starts a run inside `txn` (the body of [`Engine::start_workflow`]): checks the
/// workflow id against its instance, then writes `WorkflowStarted`, the deadline timer,
/// the first workflow task, the run, the instance and the list entry. `run_id` is chosen
/// by the caller before its transaction, so a retry after an unknown commit recognizes
/// its own run.
pub(crate) async fn start_in_txn(
    txn: &mut dyn KvTxn,
    ns: &str,
    req: &StartWorkflow,
    workflow_id: &str,
    run_id: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<StartOutcome> {
    kernel::require_namespace(txn, ns).await?;
    crate::model::check_memo_size(&req.memo)?;
    let ikey = tables::instance_key(ns, workflow_id);
    if let Some(instance) = tables::get::<InstanceRecord>(txn, &ikey).await? {
        let run: RunRecord = tables::get(txn, &tables::run_key(ns, &instance.current_run_id))
            .await?
            .ok_or_else(|| Error::corrupt("instance without its current run"))?;
        if instance.current_run_id == run_id {
            // Our own earlier attempt committed (commit-unknown retry).
            return Ok(StartOutcome {
                started_new: true,
                run,
            });
        }
        if req.duplicate_policy == DuplicatePolicy::UseExisting && !run.status.is_terminal() {
            return Ok(StartOutcome {
                started_new: false,
                run,
            });
        }
        return Err(Error::conflict(
            "duplicate_not_allowed",
            format!(
                "workflow '{workflow_id}' already exists (run '{}', {})",
                run.run_id,
                run.status.as_str()
            ),
        )
        .with("workflow_id", workflow_id)
        .with("run_id", run.run_id.as_str())
        .with("outcome", "rejected_duplicate"));
    }
    let execution_deadline_ms = req.execution_timeout_seconds.map(|s| now + s as i64 * 1000);
    let run_deadline_ms = req.run_timeout_seconds.map(|s| now + s as i64 * 1000);
    // A start naming no build id is pinned to the queue's promoted deployment, if any.
    let build_id = match &req.build_id {
        Some(b) => Some(b.clone()),
        None => kernel::new_start_build(txn, ns, &req.task_queue).await?,
    };
    let mut run = RunRecord {
        namespace: ns.to_string(),
        workflow_id: workflow_id.to_string(),
        run_id: run_id.to_string(),
        run_number: 1,
        workflow_type: req.workflow_type.clone(),
        task_queue: req.task_queue.clone(),
        status: RunStatus::Pending,
        priority: req.priority,
        build_id,
        memo: req.memo.clone(),
        memo_blob: None,
        workflow_task_failure: None,
        search_attributes: req.search_attributes.clone(),
        started_at_ms: now,
        closed_at_ms: None,
        last_progress_at_ms: now,
        execution_timeout_seconds: req.execution_timeout_seconds,
        run_timeout_seconds: req.run_timeout_seconds,
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
        lifecycle: Default::default(),
        waits: Default::default(),
    };
    history::append(
        txn,
        &mut run,
        "WorkflowStarted",
        json!({
            "workflow_type": req.workflow_type,
            "workflow_instance_id": workflow_id,
            "workflow_run_id": run_id,
            "task_queue": req.task_queue,
            "input": req.input,
            "payload_codec": "avro",
            "memo": req.memo,
            "search_attributes": req.search_attributes,
            "execution_timeout_seconds": req.execution_timeout_seconds,
            "run_timeout_seconds": req.run_timeout_seconds,
            "execution_deadline_at": execution_deadline_ms.map(format_timestamp),
            "run_deadline_at": run_deadline_ms.map(format_timestamp),
            "timestamp": format_timestamp(now),
        }),
        now,
        None,
    );
    let deadline = match (execution_deadline_ms, run_deadline_ms) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(at) = deadline {
        let action = TimerAction::RunDeadline {
            namespace: ns.to_string(),
            run_id: run_id.to_string(),
        };
        run.deadline_timer = Some(kernel::put_timer(txn, at, &action, fx)?);
    }
    ensure_workflow_task(txn, &mut run, now, fx)?;
    let instance = InstanceRecord {
        workflow_id: workflow_id.to_string(),
        current_run_id: run_id.to_string(),
        run_count: 1,
        created_at_ms: now,
    };
    tables::put(txn, &ikey, &instance)?;
    tables::put(txn, &tables::run_key(ns, run_id), &run)?;
    listing::index_new_run(txn, &run)?;
    Ok(StartOutcome {
        started_new: true,
        run,
    })
}

impl Engine {
    /// Like [`Engine::transact`], for a worker's report on a task it leased. When an
    /// attempt's commit result was unknown and the retry then finds the lease gone, that
    /// attempt applied the report: the caller gets success, not a lease error.
    pub(crate) async fn transact_report<'env, F>(
        &self,
        task_id: &str,
        outcome: &'static str,
        body: F,
    ) -> Result<TaskOutcome>
    where
        F: for<'t> FnMut(&'t mut Tx<'env>) -> TxFuture<'t, TaskOutcome>,
    {
        match self.transact_noting_unknown(body).await {
            (Err(Error::Rejected { reason, .. }), true) if is_lease_loss(reason) => {
                Ok(TaskOutcome {
                    task_id: task_id.to_string(),
                    outcome,
                    recorded: true,
                    run_id: String::new(),
                    run_status: "unknown",
                    next_task_id: None,
                })
            }
            (result, _) => result,
        }
    }

    /// Starts a workflow run (or returns the open one under `UseExisting`).
    pub async fn start_workflow(&self, ns: &str, req: StartWorkflow) -> Result<StartOutcome> {
        let now = self.now_ms();
        let run_id = ids::new_id(now);
        let workflow_id = req.workflow_id.clone().unwrap_or_else(|| ids::new_id(now));
        let (req, run_id, workflow_id) = (&req, &run_id, &workflow_id);
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                let fx = &mut tx.fx;
                let outcome = start_in_txn(txn, ns, req, workflow_id, run_id, now, fx).await?;
                Ok(outcome)
            })
        })
        .await
    }

    /// Describes the current run of a workflow id, or a given run.
    pub async fn describe(
        &self,
        ns: &str,
        workflow_id: &str,
        run_id: Option<&str>,
    ) -> Result<RunView> {
        let mut txn = self.inner.store.begin().await?;
        let txn = txn.as_mut();
        kernel::require_namespace(txn, ns).await?;
        let instance: InstanceRecord =
            tables::get_snapshot(txn, &tables::instance_key(ns, workflow_id))
                .await?
                .ok_or_else(|| {
                    Error::not_found(
                        "instance_not_found",
                        format!("workflow '{workflow_id}' does not exist"),
                    )
                })?;
        let run_id = run_id.unwrap_or(&instance.current_run_id);
        let run: RunRecord = tables::get_snapshot::<RunRecord>(txn, &tables::run_key(ns, run_id))
            .await?
            .filter(|r| r.workflow_id == workflow_id)
            .ok_or_else(|| {
                Error::not_found(
                    "run_not_found",
                    format!("run '{run_id}' of workflow '{workflow_id}' does not exist"),
                )
            })?;
        let input = history::workflow_input(txn, ns, &run.run_id).await?;
        let close_payload = if run.status.is_terminal() {
            // Events recorded after the close (archive) follow the terminal one.
            let seq = run.lifecycle.close_event_seq.unwrap_or(run.last_event_seq);
            history::event_payload(txn, ns, &run.run_id, seq)
                .await?
                .unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        let output = if run.status == RunStatus::Completed {
            close_payload.get("output").cloned().unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        Ok(RunView {
            is_current_run: instance.current_run_id == run.run_id,
            run_count: instance.run_count,
            input,
            output,
            close_payload,
            run,
        })
    }

    /// One page of a run's history after sequence `after`.
    pub async fn history(
        &self,
        ns: &str,
        workflow_id: &str,
        run_id: &str,
        after: u64,
        page_size: usize,
    ) -> Result<history::Page> {
        let view_run = {
            let mut txn = self.inner.store.begin().await?;
            kernel::require_namespace(txn.as_mut(), ns).await?;
            if tables::get_snapshot::<InstanceRecord>(
                txn.as_mut(),
                &tables::instance_key(ns, workflow_id),
            )
            .await?
            .is_none()
            {
                return Err(Error::not_found(
                    "instance_not_found",
                    format!("workflow '{workflow_id}' does not exist"),
                ));
            }
            tables::get_snapshot::<RunRecord>(txn.as_mut(), &tables::run_key(ns, run_id))
                .await?
                .filter(|r| r.workflow_id == workflow_id)
                .ok_or_else(|| {
                    Error::not_found(
                        "run_not_found",
                        format!("run '{run_id}' of workflow '{workflow_id}' does not exist"),
                    )
                })?
        };
        history::read_page(
            self.inner.store.as_ref(),
            ns,
            run_id,
            // A token past the end (even `u64::MAX`) reads an empty page.
            after.saturating_add(1),
            view_run.last_event_seq,
            page_size,
        )
        .await
    }
}
