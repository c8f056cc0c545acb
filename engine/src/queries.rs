//! Query tasks: ephemeral requests routed to a worker that replays the run and runs the
//! query handler (sdk-protocol §6.8). They never touch history or storage beyond reads,
//! so they live in memory only: a server restart drops them and their callers retry.
//!
//! Flow: `query_workflow` snapshots the run's history into a task, queues it on the
//! run's task queue and waits (bounded) for its answer; a worker long-polls with
//! `poll_query_task`, then reports `complete_query_task` or `fail_query_task`, which
//! answers the waiting caller. A caller that gives up (timeout or dropped request)
//! removes its task.
//!
//! The same in-memory registry holds the wake-ups of callers waiting for an update.

use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::clock::{format_timestamp, Millis};
use crate::error::{Error, RejectKind, Result};
use crate::kernel::Engine;
use crate::kernel::{self, QueryTask, Resolution, TaskGuard};
pub use crate::kernel::{Queries, QueryTaskView, UpdateWaiter};
use crate::model::{InstanceRecord, RunRecord, WorkerRecord};
use crate::{history, ids, tables};

/// Most query tasks waiting on one queue; more are refused with `query_task_queue_full`.
pub const MAX_PENDING_PER_QUEUE: usize = 1024;
/// A worker whose last heartbeat is older than this does not count as able to answer.
const WORKER_STALE_MS: Millis = 180_000;
/// Most worker registrations scanned when looking for a query-capable worker.
const WORKER_SCAN_LIMIT: usize = 4096;
/// Most history events a query task carries inline.
const MAX_QUERY_HISTORY: usize = 1_000_000;

/// A query from the control plane.
#[derive(Debug, Clone)]
pub struct QueryRequest {
    pub workflow_id: String,
    /// A specific run (`None`: the current run).
    pub run_id: Option<String>,
    pub query_name: String,
    /// Argument envelope.
    pub input: Value,
    /// How long to wait for a worker's answer.
    pub timeout: Duration,
}

/// A query's answer.
#[derive(Debug, Clone)]
pub struct QueryAnswer {
    pub workflow_id: String,
    /// The run that was queried.
    pub run_id: String,
    pub workflow_type: String,
    pub query_name: String,
    /// The worker's plain-JSON result.
    pub result: Value,
    /// The worker's result envelope.
    pub result_envelope: Value,
}

fn query_error(reason: &'static str, kind: RejectKind, message: impl Into<String>) -> Error {
    Error::reject(kind, reason, message)
}

/// Whether a worker registration can answer queries of `workflow_type` on `queue`.
fn can_answer(w: &WorkerRecord, queue: &str, workflow_type: &str, now: Millis) -> bool {
    w.task_queue == queue
        && w.capabilities.iter().any(|c| c == "query_tasks")
        && (w.supported_workflow_types.is_empty()
            || w.supported_workflow_types
                .iter()
                .any(|t| t == workflow_type))
        && now - w.last_heartbeat_at_ms <= WORKER_STALE_MS
}

impl Engine {
    /// Runs a query: routes a query task to a worker of the run's queue and waits for
    /// its answer, at most `req.timeout`.
    pub async fn query_workflow(&self, ns: &str, req: &QueryRequest) -> Result<QueryAnswer> {
        let now = self.now_ms();
        let (run, history_events, workflow_arguments) = self.query_snapshot(ns, req).await?;
        let queries = &self.inner.queries;
        if queries.pending(ns, &run.task_queue) >= MAX_PENDING_PER_QUEUE {
            return Err(query_error(
                "query_task_queue_full",
                RejectKind::Throttled,
                format!("too many queries are waiting on queue '{}'", run.task_queue),
            )
            .with("retry_after_seconds", 1));
        }
        let deadline = now + req.timeout.as_millis() as Millis;
        let task_id = ids::new_id(now);
        let (tx, rx) = oneshot::channel();
        let view = QueryTaskView {
            query_task_id: task_id.clone(),
            query_task_attempt: 0,
            lease_owner: String::new(),
            lease_expires_at: format_timestamp(deadline),
            namespace: ns.to_string(),
            task_queue: run.task_queue.clone(),
            workflow_id: run.workflow_id.clone(),
            run_id: run.run_id.clone(),
            workflow_type: run.workflow_type.clone(),
            query_name: req.query_name.clone(),
            payload_codec: "avro",
            history_events,
            workflow_arguments,
            query_arguments: req.input.clone(),
        };
        let notify = {
            let mut state = queries.lock();
            state.tasks.insert(
                task_id.clone(),
                QueryTask {
                    view,
                    leased: None,
                    reply: Some(tx),
                },
            );
            let q = state
                .queues
                .entry((ns.to_string(), run.task_queue.clone()))
                .or_default();
            q.order.push_back(task_id.clone());
            q.notify.clone()
        };
        let _guard = TaskGuard {
            queries,
            task_id: task_id.clone(),
        };
        notify.notify_waiters();
        let resolution = tokio::select! {
            r = rx => r.ok(),
            _ = self.inner.clock.sleep_until(deadline) => None,
        };
        let answer = |result: Value, result_envelope: Value| QueryAnswer {
            workflow_id: run.workflow_id.clone(),
            run_id: run.run_id.clone(),
            workflow_type: run.workflow_type.clone(),
            query_name: req.query_name.clone(),
            result,
            result_envelope,
        };
        match resolution {
            Some(Resolution::Completed { result, envelope }) => Ok(answer(result, envelope)),
            Some(Resolution::Failed { reason, message }) => Err(match reason.as_str() {
                "rejected_unknown_query" => {
                    query_error("query_not_found", RejectKind::NotFound, message)
                        .with("query_name", req.query_name.as_str())
                }
                "query_workflow_state_unavailable" => query_error(
                    "query_workflow_state_unavailable",
                    RejectKind::Conflict,
                    message,
                ),
                "query_workflow_type_not_registered" => {
                    query_error("query_worker_incompatible", RejectKind::Conflict, message)
                }
                "invalid_query_arguments" => {
                    query_error("invalid_query_arguments", RejectKind::Invalid, message)
                }
                _ => query_error("query_rejected", RejectKind::Conflict, message),
            }
            .with("worker_reason", reason.as_str())
            .with("query_name", req.query_name.as_str())
            .with("workflow_id", run.workflow_id.as_str())
            .with("run_id", run.run_id.as_str())),
            None => Err(query_error(
                "query_worker_timeout",
                RejectKind::Timeout,
                format!(
                    "no worker answered query '{}' within {} s",
                    req.query_name,
                    req.timeout.as_secs()
                ),
            )
            .with("query_name", req.query_name.as_str())
            .with("workflow_id", run.workflow_id.as_str())
            .with("run_id", run.run_id.as_str())),
        }
    }

    /// Reads what a query task carries, after the checks that need no worker: the run
    /// exists, the query name is declared, and some worker can answer.
    async fn query_snapshot(
        &self,
        ns: &str,
        req: &QueryRequest,
    ) -> Result<(RunRecord, Box<RawValue>, Value)> {
        let now = self.now_ms();
        let mut txn = self.inner.store.begin().await?;
        let txn = txn.as_mut();
        kernel::require_namespace(txn, ns).await?;
        let instance: InstanceRecord =
            tables::get_snapshot(txn, &tables::instance_key(ns, &req.workflow_id))
                .await?
                .ok_or_else(|| {
                    Error::not_found(
                        "instance_not_found",
                        format!("workflow '{}' does not exist", req.workflow_id),
                    )
                })?;
        let run_id = req.run_id.as_deref().unwrap_or(&instance.current_run_id);
        let run: RunRecord = tables::get_snapshot::<RunRecord>(txn, &tables::run_key(ns, run_id))
            .await?
            .filter(|r| r.workflow_id == req.workflow_id)
            .ok_or_else(|| {
                Error::not_found(
                    "run_not_found",
                    format!(
                        "run '{run_id}' of workflow '{}' does not exist",
                        req.workflow_id
                    ),
                )
            })?;
        if let Some(contract) = crate::workflow::waits::declared_contract(txn, &run).await? {
            if !contract.queries.contains(&req.query_name) {
                return Err(Error::not_found(
                    "query_not_found",
                    format!(
                        "workflow type '{}' declares no query '{}'",
                        run.workflow_type, req.query_name
                    ),
                )
                .with("outcome", "rejected_unknown_query")
                .with("query_name", req.query_name.as_str())
                .with("declared_queries", contract.queries.clone()));
            }
        }
        let mut rest = Some(tables::workers_range(ns));
        let mut able = false;
        let mut scanned = 0;
        while let Some(range) = rest.take().filter(|_| !able && scanned < WORKER_SCAN_LIMIT) {
            let (records, next) = tables::read_records(txn, range, 256).await?;
            scanned += records.len();
            rest = next;
            able = records.iter().any(|(_, bytes)| {
                tables::decode_record::<WorkerRecord>(bytes)
                    .is_ok_and(|w| can_answer(&w, &run.task_queue, &run.workflow_type, now))
            });
        }
        if !able {
            return Err(Error::conflict(
                "query_worker_unavailable",
                format!(
                    "no registered worker on queue '{}' answers queries for '{}'",
                    run.task_queue, run.workflow_type
                ),
            )
            .with("task_queue", run.task_queue.as_str())
            .with("workflow_type", run.workflow_type.as_str())
            .with("query_name", req.query_name.as_str()));
        }
        let page = history::read_page_in(
            txn,
            ns,
            &run.run_id,
            1,
            run.last_event_seq,
            MAX_QUERY_HISTORY,
        )
        .await?;
        let mut joined: Vec<&str> = page.events.iter().map(|e| e.get()).collect();
        // Signals deferred while a workflow task is leased are accepted state: a query
        // sees them, at the end of history where they will be recorded.
        let now = self.now_ms();
        let deferred: Vec<String> = crate::workflow::deferred_signals(txn, &run)
            .await?
            .into_iter()
            .zip(run.last_event_seq + 1..)
            .map(|(payload, seq)| {
                let bytes = history::event_bytes(&run, seq, "SignalReceived", payload, now, None);
                String::from_utf8(bytes).expect("invariant: serde_json writes UTF-8")
            })
            .collect();
        joined.extend(deferred.iter().map(String::as_str));
        let history_events =
            RawValue::from_string(format!("[{}]", joined.join(","))).map_err(Error::corrupt)?;
        let arguments = history::workflow_input(txn, ns, &run.run_id).await?;
        Ok((run, history_events, arguments))
    }

    /// Long-polls for a query task on the worker's queue.
    pub async fn poll_query_task(
        &self,
        ns: &str,
        worker_id: &str,
        queue: &str,
        timeout: Duration,
    ) -> Result<Option<QueryTaskView>> {
        let Some(worker) = self.worker(ns, worker_id).await? else {
            return Err(Error::reject(
                RejectKind::Precondition,
                "worker_not_registered",
                format!("worker '{worker_id}' must register before polling"),
            ));
        };
        if worker.task_queue != queue {
            return Err(Error::conflict(
                "task_queue_mismatch",
                format!(
                    "worker '{worker_id}' registered for queue '{}', polled '{queue}'",
                    worker.task_queue
                ),
            ));
        }
        let types = worker.supported_workflow_types.clone();
        let accepts = move |t: &str| types.is_empty() || types.iter().any(|x| x == t);
        let queries = &self.inner.queries;
        let notify = queries.queue_notify(ns, queue);
        let timeout = timeout.min(self.inner.config.max_poll_timeout);
        let deadline = self.now_ms() + timeout.as_millis() as Millis;
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(view) = queries.take(ns, queue, worker_id, &accepts) {
                return Ok(Some(view));
            }
            if self.now_ms() >= deadline {
                return Ok(None);
            }
            tokio::select! {
                _ = notified => {}
                _ = self.inner.clock.sleep_until(deadline) => {}
            }
        }
    }

    /// Answers a leased query task with the worker's result.
    pub fn complete_query_task(
        &self,
        ns: &str,
        task_id: &str,
        owner: &str,
        attempt: u32,
        result: Value,
        result_envelope: Value,
    ) -> Result<Value> {
        self.resolve_query_task(
            ns,
            task_id,
            owner,
            attempt,
            Resolution::Completed {
                result,
                envelope: result_envelope,
            },
        )
    }

    /// Answers a leased query task with the worker's failure.
    pub fn fail_query_task(
        &self,
        ns: &str,
        task_id: &str,
        owner: &str,
        attempt: u32,
        reason: &str,
        message: &str,
    ) -> Result<Value> {
        self.resolve_query_task(
            ns,
            task_id,
            owner,
            attempt,
            Resolution::Failed {
                reason: reason.to_string(),
                message: message.to_string(),
            },
        )
    }

    fn resolve_query_task(
        &self,
        ns: &str,
        task_id: &str,
        owner: &str,
        attempt: u32,
        resolution: Resolution,
    ) -> Result<Value> {
        let queries = &self.inner.queries;
        let reply = {
            let mut state = queries.lock();
            let task = state
                .tasks
                .get_mut(task_id)
                .filter(|t| t.view.namespace == ns)
                .ok_or_else(|| {
                    Error::not_found(
                        "query_task_not_found",
                        format!("query task '{task_id}' does not exist or already ended"),
                    )
                })?;
            let Some((lease_owner, lease_attempt)) = task.leased.clone() else {
                return Err(Error::conflict(
                    "query_task_not_leased",
                    format!("query task '{task_id}' is not leased"),
                ));
            };
            if lease_owner != owner {
                return Err(Error::conflict(
                    "lease_owner_mismatch",
                    format!("query task '{task_id}' is leased to another worker"),
                ));
            }
            if lease_attempt != attempt {
                return Err(Error::conflict(
                    "query_task_attempt_mismatch",
                    format!("query task '{task_id}' is at attempt {lease_attempt}, not {attempt}"),
                )
                .with("current_attempt", lease_attempt));
            }
            task.reply.take()
        };
        queries.remove(task_id);
        let outcome = match &resolution {
            Resolution::Completed { .. } => "completed",
            Resolution::Failed { .. } => "failed",
        };
        // A caller that already gave up dropped its receiver; the report still counts.
        let delivered = reply.is_some_and(|tx| tx.send(resolution).is_ok());
        Ok(json!({
            "query_task_id": task_id,
            "query_task_attempt": attempt,
            "outcome": outcome,
            "recorded": delivered,
        }))
    }
}
