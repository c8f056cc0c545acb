//! Workflow semantics: starting runs, leasing and completing workflow tasks (applying
//! their commands to history), and closing runs.
//!
//! Invariant (one workflow task per run): `RunRecord::workflow_task` names the run's only
//! workflow task, ready, leased or backing off. Events that arrive while it is leased only
//! grow history; when the task closes, the same transaction creates the next task if
//! history grew past `TaskRecord::history_seen`, the last event the worker was given.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::clock::{format_timestamp, Millis};
use crate::engine::{as_u64, Effects, Engine};
use crate::error::{Error, RejectKind, Result};
use crate::history;
use crate::matching::{QueueKey, Take, TaskHint};
use crate::model::{
    ActivityState, InstanceRecord, Lease, RunRecord, RunStatus, TaskKind, TaskRecord, TaskStatus,
    TimerAction, TimerKey,
};
use crate::storage::KvTxn;
use crate::{ids, tables};

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
    /// Workflow type.
    pub workflow_type: String,
    /// Task queue.
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

/// The result of a start.
#[derive(Debug, Clone)]
pub struct StartOutcome {
    /// A new run was created (false: an open run was returned).
    pub started_new: bool,
    /// The run.
    pub run: RunRecord,
}

/// A run with the payloads kept in its history.
#[derive(Debug, Clone)]
pub struct RunView {
    /// The run.
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
    /// Task id.
    pub task_id: String,
    /// Kind discriminator.
    pub task_kind: &'static str,
    /// Fencing token.
    pub workflow_task_attempt: u32,
    /// Workflow id.
    pub workflow_id: String,
    /// Run id.
    pub run_id: String,
    /// Workflow type.
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
    /// Namespace.
    pub namespace: String,
    /// Queue.
    pub task_queue: String,
    /// Run status.
    pub run_status: &'static str,
}

/// An activity task handed to a worker, in the protocol's shape.
#[derive(Debug, Serialize)]
pub struct ActivityTaskView {
    /// Task id.
    pub task_id: String,
    /// The attempt's id; echoed on every later call.
    pub activity_attempt_id: String,
    /// Stable id across attempts.
    pub activity_execution_id: String,
    /// Activity type.
    pub activity_type: String,
    /// Always `avro`.
    pub payload_codec: &'static str,
    /// Arguments.
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
    /// Namespace.
    pub namespace: String,
}

/// A poll's parameters.
#[derive(Debug, Clone)]
pub struct Poll {
    /// Namespace.
    pub namespace: String,
    /// Polling worker.
    pub worker_id: String,
    /// Queue.
    pub task_queue: String,
    /// Longest wait.
    pub timeout: std::time::Duration,
    /// Events in the first history page (workflow tasks).
    pub history_page_size: usize,
}

/// What a completion or failure did.
#[derive(Debug, Clone, Serialize)]
pub struct TaskOutcome {
    /// Task id.
    pub task_id: String,
    /// `completed`, `failed` or `ignored`.
    pub outcome: &'static str,
    /// Whether the report changed state.
    pub recorded: bool,
    /// Run id.
    pub run_id: String,
    /// Run status after the report.
    pub run_status: &'static str,
    /// The next workflow task, when one was created.
    pub next_task_id: Option<String>,
}

/// A fresh workflow task for `run`, unless it already has one.
fn ensure_workflow_task(
    txn: &mut dyn KvTxn,
    run: &mut RunRecord,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    if run.workflow_task.is_some() || run.status.is_terminal() {
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
    };
    Engine::put_ready_task(txn, &task, fx)?;
    run.workflow_task = Some(task.task_id);
    if run.status == RunStatus::Waiting {
        run.status = RunStatus::Running;
    }
    Ok(())
}

/// Ends a run: deletes its open tasks and deadline timer. History and status are the
/// caller's.
async fn close_run(
    txn: &mut dyn KvTxn,
    run: &mut RunRecord,
    status: RunStatus,
    reason: &str,
    now: Millis,
) -> Result<()> {
    run.status = status;
    run.closed_at_ms = Some(now);
    run.closed_reason = Some(reason.to_string());
    if let Some(task_id) = run.workflow_task.take() {
        Engine::delete_task(txn, &task_id).await?;
    }
    for task_id in std::mem::take(&mut run.open_activities) {
        Engine::delete_task(txn, &task_id).await?;
    }
    if let Some(timer) = run.deadline_timer.take() {
        txn.clear(&tables::timer_key(&timer));
    }
    Ok(())
}

/// Fails a run whose deadline timer fired (idempotent).
pub(crate) async fn time_out_run(
    txn: &mut dyn KvTxn,
    ns: &str,
    run_id: &str,
    timer: &TimerKey,
    now: Millis,
    _fx: &mut Effects,
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
    history::append(txn, &mut run, "WorkflowTimedOut", payload, now, None);
    close_run(txn, &mut run, RunStatus::Failed, "timed_out", now).await?;
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

fn lease_timer_action(task_id: &str) -> TimerAction {
    TimerAction::LeaseExpiry {
        task_id: task_id.to_string(),
    }
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

impl Engine {
    /// Starts a workflow run (or returns the open one under `UseExisting`).
    pub async fn start_workflow(&self, ns: &str, req: StartWorkflow) -> Result<StartOutcome> {
        let now = self.now_ms();
        let run_id = ids::new_id(now);
        let workflow_id = req.workflow_id.clone().unwrap_or_else(|| ids::new_id(now));
        let (req, run_id, workflow_id) = (&req, &run_id, &workflow_id);
        self.transact(move |mut txn, mut fx| async move {
            Self::require_namespace(txn.as_mut(), ns).await?;
            let ikey = tables::instance_key(ns, workflow_id);
            if let Some(instance) = tables::get::<InstanceRecord>(txn.as_mut(), &ikey).await? {
                let run: RunRecord =
                    tables::get(txn.as_mut(), &tables::run_key(ns, &instance.current_run_id))
                        .await?
                        .ok_or_else(|| Error::corrupt("instance without its current run"))?;
                if instance.current_run_id == *run_id {
                    // Our own earlier attempt committed (commit-unknown retry).
                    return Ok((
                        txn,
                        (
                            StartOutcome {
                                started_new: true,
                                run,
                            },
                            fx,
                        ),
                    ));
                }
                if req.duplicate_policy == DuplicatePolicy::UseExisting && !run.status.is_terminal()
                {
                    return Ok((
                        txn,
                        (
                            StartOutcome {
                                started_new: false,
                                run,
                            },
                            fx,
                        ),
                    ));
                }
                return Err(Error::conflict(
                    "duplicate_not_allowed",
                    format!(
                        "workflow '{workflow_id}' already exists (run '{}', {})",
                        run.run_id,
                        run.status.as_str()
                    ),
                )
                .with("workflow_id", workflow_id.as_str())
                .with("run_id", run.run_id.as_str())
                .with("outcome", "rejected_duplicate"));
            }
            let execution_deadline_ms =
                req.execution_timeout_seconds.map(|s| now + s as i64 * 1000);
            let run_deadline_ms = req.run_timeout_seconds.map(|s| now + s as i64 * 1000);
            let mut run = RunRecord {
                namespace: ns.to_string(),
                workflow_id: workflow_id.clone(),
                run_id: run_id.clone(),
                run_number: 1,
                workflow_type: req.workflow_type.clone(),
                task_queue: req.task_queue.clone(),
                status: RunStatus::Pending,
                priority: req.priority,
                build_id: req.build_id.clone(),
                memo: req.memo.clone(),
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
                workflow_task: None,
                open_activities: Vec::new(),
                closed_reason: None,
            };
            history::append(
                txn.as_mut(),
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
                    run_id: run_id.clone(),
                };
                run.deadline_timer = Some(Self::put_timer(txn.as_mut(), at, &action, &mut fx)?);
            }
            ensure_workflow_task(txn.as_mut(), &mut run, now, &mut fx)?;
            let instance = InstanceRecord {
                workflow_id: workflow_id.clone(),
                current_run_id: run_id.clone(),
                run_count: 1,
                created_at_ms: now,
            };
            tables::put(txn.as_mut(), &ikey, &instance)?;
            tables::put(txn.as_mut(), &tables::run_key(ns, run_id), &run)?;
            Ok((
                txn,
                (
                    StartOutcome {
                        started_new: true,
                        run,
                    },
                    fx,
                ),
            ))
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
        Self::require_namespace(txn, ns).await?;
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
        let started = history::event_payload(txn, ns, &run.run_id, 1)
            .await?
            .unwrap_or(Value::Null);
        let close_payload = if run.status.is_terminal() {
            history::event_payload(txn, ns, &run.run_id, run.last_event_seq)
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
            input: started.get("input").cloned().unwrap_or(Value::Null),
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
            Self::require_namespace(txn.as_mut(), ns).await?;
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
            after + 1,
            view_run.last_event_seq,
            page_size,
        )
        .await
    }

    /// Long-polls for a task of `kind`: leases the best ready task the worker accepts, or
    /// waits for one until the timeout. Returns the leased task record.
    async fn poll_task(&self, poll: &Poll, kind: TaskKind) -> Result<Option<TaskRecord>> {
        let filter = self
            .poll_filter(&poll.namespace, &poll.worker_id, &poll.task_queue, kind)
            .await?;
        let key = QueueKey::new(&poll.namespace, &poll.task_queue, kind);
        let timeout = poll.timeout.min(self.inner.config.max_poll_timeout);
        let deadline = self.now_ms() + timeout.as_millis() as Millis;
        loop {
            let waiter_id = self.inner.matching.waiter_id();
            let hint = match self.inner.matching.take_or_park(&key, &filter, waiter_id) {
                Take::Hint(hint) => hint,
                Take::Parked(slot) => {
                    let guard = ParkGuard {
                        engine: self,
                        key: &key,
                        waiter_id,
                        slot: &slot,
                        armed: true,
                    };
                    if self.now_ms() < deadline {
                        tokio::select! {
                            _ = slot.notify.notified() => {}
                            _ = self.inner.clock.sleep_until(deadline) => {}
                        }
                    }
                    match guard.disarm() {
                        Some(hint) => hint,
                        None if self.now_ms() >= deadline => return Ok(None),
                        None => continue,
                    }
                }
            };
            match self.lease(&key, &poll.worker_id, &hint).await {
                Ok(Some(task)) => return Ok(Some(task)),
                Ok(None) => {
                    if self.now_ms() >= deadline {
                        return Ok(None);
                    }
                }
                Err(e) => {
                    self.inner.matching.offer(&key, hint);
                    return Err(e);
                }
            }
        }
    }

    /// Leases the task behind `hint` if it is still ready (re-checked in storage).
    async fn lease(
        &self,
        key: &QueueKey,
        worker_id: &str,
        hint: &TaskHint,
    ) -> Result<Option<TaskRecord>> {
        let now = self.now_ms();
        let lease_ms = match key.kind {
            TaskKind::Workflow => self.inner.config.workflow_task_lease,
            TaskKind::Activity => self.inner.config.activity_task_lease,
        }
        .as_millis() as Millis;
        self.transact(move |mut txn, mut fx| async move {
            let tkey = tables::task_key(&hint.task_id);
            let Some(mut task) = tables::get::<TaskRecord>(txn.as_mut(), &tkey).await? else {
                return Ok((txn, (None, fx)));
            };
            if task.status != TaskStatus::Ready
                || task.namespace != *key.namespace
                || task.task_queue != *key.queue
            {
                return Ok((txn, (None, fx)));
            }
            Self::clear_task_state(txn.as_mut(), &task);
            if task.kind == TaskKind::Workflow {
                let run: Option<RunRecord> = tables::get(
                    txn.as_mut(),
                    &tables::run_key(&task.namespace, &task.run_id),
                )
                .await?;
                match run {
                    Some(run) if !run.status.is_terminal() => {
                        task.history_seen = run.last_event_seq
                    }
                    _ => {
                        tables::delete(txn.as_mut(), &tkey).await?;
                        return Ok((txn, (None, fx)));
                    }
                }
            }
            let expires_at_ms = now + lease_ms;
            let timer = Self::put_timer(
                txn.as_mut(),
                expires_at_ms,
                &lease_timer_action(&task.task_id),
                &mut fx,
            )?;
            task.status = TaskStatus::Leased;
            task.attempt += 1;
            task.lease = Some(Lease {
                owner: worker_id.to_string(),
                expires_at_ms,
                timer,
            });
            if let Some(activity) = task.activity.as_mut() {
                activity.attempt_id = Some(ids::new_id(now));
            }
            tables::put(txn.as_mut(), &tkey, &task)?;
            Ok((txn, (Some(task), fx)))
        })
        .await
    }

    /// Long-polls for a workflow task.
    pub async fn poll_workflow_task(&self, poll: &Poll) -> Result<Option<WorkflowTaskView>> {
        let Some(task) = self.poll_task(poll, TaskKind::Workflow).await? else {
            return Ok(None);
        };
        let page = history::read_page(
            self.inner.store.as_ref(),
            &task.namespace,
            &task.run_id,
            1,
            task.history_seen,
            poll.history_page_size,
        )
        .await?;
        let arguments = {
            let mut txn = self.inner.store.begin().await?;
            history::event_payload(txn.as_mut(), &task.namespace, &task.run_id, 1)
                .await?
                .and_then(|mut p| p.get_mut("input").map(Value::take))
                .unwrap_or(Value::Null)
        };
        let lease = task
            .lease
            .as_ref()
            .expect("invariant: a polled task is leased");
        Ok(Some(WorkflowTaskView {
            task_kind: "workflow",
            workflow_task_attempt: task.attempt,
            workflow_id: task.workflow_id.clone(),
            run_id: task.run_id.clone(),
            workflow_type: task.type_name.clone(),
            payload_codec: "avro",
            arguments,
            next_history_page_token: page.more.then(|| history::encode_token(page.last_seq)),
            history_events: page.events,
            total_history_events: task.history_seen,
            last_history_sequence: task.history_seen,
            lease_owner: lease.owner.clone(),
            lease_expires_at: format_timestamp(lease.expires_at_ms),
            namespace: task.namespace.clone(),
            task_queue: task.task_queue.clone(),
            run_status: "running",
            task_id: task.task_id,
        }))
    }

    /// Long-polls for an activity task.
    pub async fn poll_activity_task(&self, poll: &Poll) -> Result<Option<ActivityTaskView>> {
        let Some(task) = self.poll_task(poll, TaskKind::Activity).await? else {
            return Ok(None);
        };
        let lease = task
            .lease
            .as_ref()
            .expect("invariant: a polled task is leased");
        let activity = task
            .activity
            .as_ref()
            .ok_or_else(|| Error::corrupt("activity task without activity state"))?;
        Ok(Some(ActivityTaskView {
            task_id: task.task_id.clone(),
            activity_attempt_id: activity.attempt_id.clone().unwrap_or_default(),
            activity_execution_id: activity.activity_execution_id.clone(),
            activity_type: task.type_name.clone(),
            payload_codec: "avro",
            arguments: activity.arguments.clone(),
            attempt_number: activity.attempt_number,
            workflow_id: task.workflow_id.clone(),
            run_id: task.run_id.clone(),
            retry_policy: activity.retry_policy.clone().unwrap_or(Value::Null),
            task_queue: task.task_queue.clone(),
            lease_owner: lease.owner.clone(),
            lease_expires_at: format_timestamp(lease.expires_at_ms),
            namespace: task.namespace.clone(),
        }))
    }

    /// Pages history for a leased workflow task: events after `after`, up to what the
    /// task covers.
    pub async fn workflow_task_history(
        &self,
        ns: &str,
        task_id: &str,
        owner: &str,
        attempt: u32,
        after: u64,
        page_size: usize,
    ) -> Result<history::Page> {
        let now = self.now_ms();
        let task = {
            let mut txn = self.inner.store.begin().await?;
            let task = load_task(txn.as_mut(), ns, task_id, TaskKind::Workflow).await?;
            check_workflow_lease(&task, owner, attempt, now)?;
            task
        };
        history::read_page(
            self.inner.store.as_ref(),
            ns,
            &task.run_id,
            after + 1,
            task.history_seen,
            page_size,
        )
        .await
    }

    /// Renews a workflow task lease; returns the new expiry.
    pub async fn heartbeat_workflow_task(
        &self,
        ns: &str,
        task_id: &str,
        owner: &str,
        attempt: u32,
    ) -> Result<Millis> {
        let now = self.now_ms();
        let lease_ms = self.inner.config.workflow_task_lease.as_millis() as Millis;
        self.transact(move |mut txn, fx| async move {
            let mut task = load_task(txn.as_mut(), ns, task_id, TaskKind::Workflow).await?;
            check_workflow_lease(&task, owner, attempt, now)?;
            let expires = now + lease_ms;
            if let Some(lease) = task.lease.as_mut() {
                lease.expires_at_ms = expires;
            }
            tables::put(txn.as_mut(), &tables::task_key(task_id), &task)?;
            Ok((txn, (expires, fx)))
        })
        .await
    }

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
        self.transact(move |mut txn, mut fx| async move {
            let task = load_task(txn.as_mut(), ns, task_id, TaskKind::Workflow).await?;
            check_workflow_lease(&task, owner, attempt, now)?;
            let rkey = tables::run_key(ns, &task.run_id);
            let mut run: RunRecord = tables::get(txn.as_mut(), &rkey)
                .await?
                .ok_or_else(|| Error::corrupt("task without run"))?;
            if run.status.is_terminal() {
                Self::delete_task(txn.as_mut(), task_id).await?;
                return Err(Error::conflict(
                    "run_already_closed",
                    format!("run '{}' is already closed", run.run_id),
                )
                .with("run_status", run.status.as_str()));
            }
            let grew = run.last_event_seq > task.history_seen;
            // The task closes first: a terminal command then finds no open workflow task.
            Self::delete_task(txn.as_mut(), task_id).await?;
            run.workflow_task = None;
            let last = commands.len() - 1;
            for (i, command) in commands.iter().enumerate() {
                apply_command(
                    txn.as_mut(),
                    &mut run,
                    command,
                    i == last,
                    task_id,
                    now,
                    &mut fx,
                )
                .await?;
            }
            let mut next_task_id = None;
            if !run.status.is_terminal() {
                if grew {
                    ensure_workflow_task(txn.as_mut(), &mut run, now, &mut fx)?;
                    next_task_id = run.workflow_task.clone();
                } else {
                    run.status = RunStatus::Waiting;
                }
            }
            tables::put(txn.as_mut(), &rkey, &run)?;
            let outcome = TaskOutcome {
                task_id: task_id.to_string(),
                outcome: "completed",
                recorded: true,
                run_id: run.run_id.clone(),
                run_status: run.status.as_str(),
                next_task_id,
            };
            Ok((txn, (outcome, fx)))
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
        self.transact(move |mut txn, mut fx| async move {
            let mut task = load_task(txn.as_mut(), ns, task_id, TaskKind::Workflow).await?;
            check_workflow_lease(&task, owner, attempt, now)?;
            let rkey = tables::run_key(ns, &task.run_id);
            let mut run: RunRecord = tables::get(txn.as_mut(), &rkey).await?.ok_or_else(|| Error::corrupt("task without run"))?;
            let mut next_task_id = None;
            let outcome = if waiting {
                let grew = run.last_event_seq > task.history_seen;
                Self::delete_task(txn.as_mut(), task_id).await?;
                run.workflow_task = None;
                if grew {
                    ensure_workflow_task(txn.as_mut(), &mut run, now, &mut fx)?;
                    next_task_id = run.workflow_task.clone();
                } else if !run.status.is_terminal() {
                    run.status = RunStatus::Waiting;
                }
                tables::put(txn.as_mut(), &rkey, &run)?;
                "completed"
            } else {
                Self::clear_task_state(txn.as_mut(), &task);
                task.failures += 1;
                let backoff_s = 1i64 << (task.failures - 1).min(6);
                let action = TimerAction::TaskBackoff { task_id: task_id.to_string() };
                let timer = Self::put_timer(txn.as_mut(), now + backoff_s.min(60) * 1000, &action, &mut fx)?;
                let failure_type = failure.get("type").and_then(Value::as_str).unwrap_or("");
                tracing::warn!(task_id, run_id = %task.run_id, failures = task.failures, failure_type,
                    "workflow task failed; retrying after backoff");
                task.status = TaskStatus::Backoff;
                task.lease = None;
                task.backoff_timer = Some(timer);
                tables::put(txn.as_mut(), &tables::task_key(task_id), &task)?;
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
            Ok((txn, (result, fx)))
        })
        .await
    }

    /// Completes an activity attempt with its result.
    pub async fn complete_activity_task(
        &self,
        ns: &str,
        task_id: &str,
        attempt_id: &str,
        owner: &str,
        result: &Value,
    ) -> Result<TaskOutcome> {
        let now = self.now_ms();
        self.transact(move |mut txn, mut fx| async move {
            let task = load_task(txn.as_mut(), ns, task_id, TaskKind::Activity).await?;
            check_activity_lease(&task, owner, attempt_id, now)?;
            let activity = task
                .activity
                .clone()
                .ok_or_else(|| Error::corrupt("activity task without state"))?;
            let mut payload = json!({
                "sequence": activity.sequence,
                "activity_type": task.type_name,
                "activity_execution_id": activity.activity_execution_id,
                "activity_attempt_id": attempt_id,
                "attempt_number": activity.attempt_number,
                "result": result,
                "payload_codec": "avro",
            });
            payload = merge(payload, activity.group.as_object().unwrap_or(&Map::new()));
            let outcome = Self::resolve_activity(
                txn.as_mut(),
                ns,
                &task,
                "ActivityCompleted",
                payload,
                now,
                &mut fx,
            )
            .await?;
            Ok((txn, (outcome, fx)))
        })
        .await
    }

    /// Fails an activity attempt: retried per its retry policy, or recorded as
    /// `ActivityFailed` once no retry remains (the SDK treats that event as final).
    pub async fn fail_activity_task(
        &self,
        ns: &str,
        task_id: &str,
        attempt_id: &str,
        owner: &str,
        failure: &Value,
    ) -> Result<TaskOutcome> {
        let now = self.now_ms();
        self.transact(move |mut txn, mut fx| async move {
            let mut task = load_task(txn.as_mut(), ns, task_id, TaskKind::Activity).await?;
            check_activity_lease(&task, owner, attempt_id, now)?;
            let activity = task
                .activity
                .clone()
                .ok_or_else(|| Error::corrupt("activity task without state"))?;
            let policy = activity.retry_policy.clone().unwrap_or(Value::Null);
            let max_attempts = as_u64(policy.get("max_attempts")).unwrap_or(1).max(1) as u32;
            let failure_type = failure.get("type").and_then(Value::as_str).unwrap_or("");
            let non_retryable = failure
                .get("non_retryable")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                || policy
                    .get("non_retryable_error_types")
                    .and_then(Value::as_array)
                    .is_some_and(|types| types.iter().any(|t| t.as_str() == Some(failure_type)));
            if !non_retryable && activity.attempt_number < max_attempts {
                let backoffs = policy.get("backoff_seconds").and_then(Value::as_array);
                let index = activity.attempt_number as usize - 1;
                let backoff_s = backoffs
                    .and_then(|b| b.get(index).or(b.last()))
                    .and_then(Value::as_u64)
                    .unwrap_or(1);
                Self::clear_task_state(txn.as_mut(), &task);
                let action = TimerAction::TaskBackoff {
                    task_id: task_id.to_string(),
                };
                let timer = Self::put_timer(
                    txn.as_mut(),
                    now + backoff_s as i64 * 1000,
                    &action,
                    &mut fx,
                )?;
                task.status = TaskStatus::Backoff;
                task.lease = None;
                task.backoff_timer = Some(timer);
                if let Some(a) = task.activity.as_mut() {
                    a.attempt_number += 1;
                    a.attempt_id = None;
                }
                tables::put(txn.as_mut(), &tables::task_key(task_id), &task)?;
                let outcome = TaskOutcome {
                    task_id: task_id.to_string(),
                    outcome: "failed",
                    recorded: true,
                    run_id: task.run_id.clone(),
                    run_status: "running",
                    next_task_id: Some(task_id.to_string()),
                };
                return Ok((txn, (outcome, fx)));
            }
            let text = |k: &str| failure.get(k).cloned().unwrap_or(Value::Null);
            let mut payload = json!({
                "sequence": activity.sequence,
                "activity_type": task.type_name,
                "activity_execution_id": activity.activity_execution_id,
                "activity_attempt_id": attempt_id,
                "attempt_number": activity.attempt_number,
                "message": text("message"),
                "exception_type": text("type"),
                "exception_class": text("class"),
                "code": text("code"),
                "non_retryable": non_retryable,
                "failure_category": "activity",
                "exception": {
                    "type": text("type"),
                    "class": text("class"),
                    "message": text("message"),
                    "stack_trace": text("stack_trace"),
                    "details": text("details"),
                },
            });
            payload = merge(payload, activity.group.as_object().unwrap_or(&Map::new()));
            let outcome = Self::resolve_activity(
                txn.as_mut(),
                ns,
                &task,
                "ActivityFailed",
                payload,
                now,
                &mut fx,
            )
            .await?;
            Ok((txn, (outcome, fx)))
        })
        .await
    }

    /// Records an activity's final event, deletes its task and wakes the workflow.
    async fn resolve_activity(
        txn: &mut dyn KvTxn,
        ns: &str,
        task: &TaskRecord,
        event: &str,
        payload: Value,
        now: Millis,
        fx: &mut Effects,
    ) -> Result<TaskOutcome> {
        Self::delete_task(txn, &task.task_id).await?;
        let rkey = tables::run_key(ns, &task.run_id);
        let mut run: RunRecord = tables::get(txn, &rkey)
            .await?
            .ok_or_else(|| Error::corrupt("task without run"))?;
        if run.status.is_terminal() {
            return Ok(TaskOutcome {
                task_id: task.task_id.clone(),
                outcome: "ignored",
                recorded: false,
                run_id: run.run_id.clone(),
                run_status: run.status.as_str(),
                next_task_id: None,
            });
        }
        run.open_activities.retain(|t| *t != task.task_id);
        history::append(txn, &mut run, event, payload, now, None);
        ensure_workflow_task(txn, &mut run, now, fx)?;
        tables::put(txn, &rkey, &run)?;
        Ok(TaskOutcome {
            task_id: task.task_id.clone(),
            outcome: if event == "ActivityCompleted" {
                "completed"
            } else {
                "failed"
            },
            recorded: true,
            run_id: run.run_id.clone(),
            run_status: run.status.as_str(),
            next_task_id: run.workflow_task.clone(),
        })
    }

    /// Records an activity heartbeat and renews its lease. Returns the new expiry and
    /// whether the workflow asked for cancellation.
    pub async fn heartbeat_activity_task(
        &self,
        ns: &str,
        task_id: &str,
        attempt_id: &str,
        owner: &str,
        details: Option<&Value>,
    ) -> Result<Millis> {
        let now = self.now_ms();
        let lease_ms = self.inner.config.activity_task_lease.as_millis() as Millis;
        self.transact(move |mut txn, fx| async move {
            let mut task = load_task(txn.as_mut(), ns, task_id, TaskKind::Activity).await?;
            check_activity_lease(&task, owner, attempt_id, now)?;
            let expires = now + lease_ms;
            if let Some(lease) = task.lease.as_mut() {
                lease.expires_at_ms = expires;
            }
            if let (Some(a), Some(d)) = (task.activity.as_mut(), details) {
                a.heartbeat_details = Some(d.clone());
            }
            tables::put(txn.as_mut(), &tables::task_key(task_id), &task)?;
            Ok((txn, (expires, fx)))
        })
        .await
    }
}

/// Unparks a poller when its wait ends or its future is dropped (client gone), and
/// re-offers a hint it was handed but will not use, so no hint is lost.
struct ParkGuard<'a> {
    engine: &'a Engine,
    key: &'a QueueKey,
    waiter_id: u64,
    slot: &'a crate::matching::Slot,
    armed: bool,
}

impl ParkGuard<'_> {
    fn disarm(mut self) -> Option<TaskHint> {
        self.armed = false;
        self.engine
            .inner
            .matching
            .unpark(self.key, self.waiter_id, self.slot)
    }
}

impl Drop for ParkGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Some(hint) =
                self.engine
                    .inner
                    .matching
                    .unpark(self.key, self.waiter_id, self.slot)
            {
                self.engine.inner.matching.offer(self.key, hint);
            }
        }
    }
}

/// Applies one command of a workflow-task completion to the run.
async fn apply_command(
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
    let terminal = matches!(kind, "complete_workflow" | "fail_workflow");
    if terminal && !is_last {
        return Err(invalid_commands(format!(
            "terminal command '{kind}' must be the last command"
        )));
    }
    let field = |k: &str| cmd.get(k).cloned().unwrap_or(Value::Null);
    match kind {
        "schedule_activity" => {
            let Some(activity_type) = cmd
                .get("activity_type")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            else {
                return Err(invalid_commands("schedule_activity needs activity_type"));
            };
            run.last_workflow_sequence += 1;
            let sequence = run.last_workflow_sequence;
            let queue = cmd
                .get("queue")
                .and_then(Value::as_str)
                .filter(|q| !q.is_empty())
                .unwrap_or(&run.task_queue)
                .to_string();
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
            let task = TaskRecord {
                task_id: ids::new_id(now),
                kind: TaskKind::Activity,
                namespace: run.namespace.clone(),
                task_queue: queue,
                workflow_id: run.workflow_id.clone(),
                run_id: run.run_id.clone(),
                type_name: activity_type.to_string(),
                priority: run.priority,
                status: TaskStatus::Ready,
                attempt: 0,
                ready_at_ms: now,
                lease: None,
                history_seen: 0,
                failures: 0,
                backoff_timer: None,
                activity: Some(activity),
            };
            Engine::put_ready_task(txn, &task, fx)?;
            run.open_activities.push(task.task_id);
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
            close_run(txn, run, RunStatus::Completed, "completed", now).await?;
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
            close_run(txn, run, RunStatus::Failed, "failed", now).await?;
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
