//! Standalone activities: an activity run as a top-level durable job. Each is anchored
//! by a host run (workflow id = activity id, type [`STANDALONE_HOST_TYPE`]) that has no
//! workflow code: its start schedules the one activity at once (no workflow task ever
//! exists for it), the activity runs on the ordinary activity route with the usual
//! retries and timeouts, and its final outcome closes the host run (`ActivityCompleted`
//! completes it with the result as output; `ActivityFailed` and `ActivityTimedOut` fail
//! it). Cancel and terminate are the workflow routes' (`/workflows/{activity_id}/cancel`),
//! which close the run and tombstone the activity's attempt, so its next heartbeat
//! learns it was cancelled.

use super::{
    close_run, history, ids, json, start_in_txn, tables, Effects, Engine, Error, KvTxn, ListQuery,
    Millis, RejectKind, Result, RunRecord, RunStatus, StartWorkflow, TaskRecord, Value,
    WorkflowListPage,
};
use crate::model::StandaloneActivity;

/// The workflow type of a standalone activity's host run.
pub const STANDALONE_HOST_TYPE: &str = "durable-workflow.standalone-activity";

/// A request to start a standalone activity.
#[derive(Debug, Clone, Default)]
pub struct StartActivity {
    /// Generated when absent.
    pub activity_id: Option<String>,
    pub activity_type: String,
    pub activity_class: Option<String>,
    pub business_key: Option<String>,
    pub task_queue: String,
    /// The arguments' payload envelope (`{codec, blob}`), or null.
    pub input: Value,
    pub retry_policy: Option<Value>,
    pub start_to_close_timeout_seconds: Option<u64>,
    pub schedule_to_start_timeout_seconds: Option<u64>,
    pub schedule_to_close_timeout_seconds: Option<u64>,
    pub heartbeat_timeout_seconds: Option<u64>,
}

/// A standalone activity as operators and the SDK see it.
#[derive(Debug, Clone)]
pub struct StandaloneActivityView {
    /// The host run.
    pub run: RunRecord,
    pub activity: StandaloneActivity,
    /// The open attempt's task, while the activity runs.
    pub task: Option<TaskRecord>,
    /// The host run's terminal event payload (`output` when completed).
    pub close_payload: Value,
}

/// Closes a host run with its activity's final event (`payload` is that event's).
pub(super) async fn close_host(
    txn: &mut dyn KvTxn,
    run: &mut RunRecord,
    event: &str,
    payload: &Value,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let field = |k: &str| payload.get(k).cloned().unwrap_or(Value::Null);
    if event == "ActivityCompleted" {
        history::append(
            txn,
            run,
            "WorkflowCompleted",
            json!({"output": field("result"), "payload_codec": "avro"}),
            now,
            None,
        );
        return close_run(txn, run, RunStatus::Completed, "completed", now, fx).await;
    }
    history::append(
        txn,
        run,
        "WorkflowFailed",
        json!({
            "message": field("message"),
            "exception_type": field("exception_type"),
            "exception_class": field("exception_class"),
            "exception": field("exception"),
            "non_retryable": true,
            "failure_category": if event == "ActivityTimedOut" { "timeout" } else { "activity" },
            "source_kind": "activity",
            "activity_execution_id": field("activity_execution_id"),
        }),
        now,
        None,
    );
    close_run(txn, run, RunStatus::Failed, "failed", now, fx).await
}

/// Starts a standalone activity inside `txn` (the body of
/// [`Engine::start_standalone_activity`], also a service call's `activity_execution`
/// binding): its host run and the activity's first attempt. Returns the host run and the
/// attempt's task; a host run that is not a standalone activity's comes back without
/// `lifecycle.standalone_activity` (the caller refuses it).
pub(crate) async fn start_standalone_in_txn(
    txn: &mut dyn KvTxn,
    ns: &str,
    req: &StartActivity,
    activity_id: &str,
    run_id: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<(RunRecord, Option<TaskRecord>)> {
    let start = StartWorkflow {
        workflow_id: Some(activity_id.to_string()),
        ..StartWorkflow::new(
            STANDALONE_HOST_TYPE,
            req.task_queue.clone(),
            req.input.clone(),
        )
    };
    let mut command = json!({
        "type": "schedule_activity",
        "activity_type": req.activity_type,
        "arguments": req.input,
        "queue": req.task_queue,
    });
    if let Some(obj) = command.as_object_mut() {
        if let Some(p) = &req.retry_policy {
            obj.insert("retry_policy".into(), p.clone());
        }
        for (k, v) in [
            ("start_to_close_timeout", req.start_to_close_timeout_seconds),
            (
                "schedule_to_start_timeout",
                req.schedule_to_start_timeout_seconds,
            ),
            (
                "schedule_to_close_timeout",
                req.schedule_to_close_timeout_seconds,
            ),
            ("heartbeat_timeout", req.heartbeat_timeout_seconds),
        ] {
            if let Some(v) = v {
                obj.insert(k.into(), json!(v));
            }
        }
    }
    let outcome = start_in_txn(txn, ns, &start, activity_id, run_id, now, fx).await?;
    let mut run = outcome.run;
    if run.run_id != run_id || run.lifecycle.standalone_activity.is_some() {
        // A retry after an unknown commit found our own run: done.
        let task = match run.open_activities.first() {
            Some(t) => tables::get(txn, &tables::task_key(t)).await?,
            None => None,
        };
        return Ok((run, task));
    }
    super::commands::apply_command(txn, &mut run, &command, true, "", now, fx).await?;
    let task_id = run
        .open_activities
        .first()
        .cloned()
        .ok_or_else(|| Error::corrupt("scheduled activity without a task"))?;
    let task: TaskRecord = tables::get(txn, &tables::task_key(&task_id))
        .await?
        .ok_or_else(|| Error::corrupt("scheduled activity without a task"))?;
    let execution_id = task
        .activity
        .as_ref()
        .map(|a| a.activity_execution_id.clone())
        .unwrap_or_default();
    run.lifecycle.standalone_activity = Some(StandaloneActivity {
        activity_type: req.activity_type.clone(),
        activity_class: req.activity_class.clone(),
        business_key: req.business_key.clone(),
        activity_execution_id: execution_id,
    });
    // Waiting on its activity: not a run missing its workflow task.
    run.status = RunStatus::Waiting;
    tables::put(txn, &tables::run_key(ns, &run.run_id), &run)?;
    Ok((run, Some(task)))
}

impl Engine {
    /// Starts a standalone activity: its host run and the activity's first attempt, in
    /// one transaction. An id already in use by an open run is refused
    /// (`duplicate_not_allowed`).
    pub async fn start_standalone_activity(
        &self,
        ns: &str,
        req: StartActivity,
    ) -> Result<StandaloneActivityView> {
        let now = self.now_ms();
        let run_id = ids::new_id(now);
        let activity_id = req.activity_id.clone().unwrap_or_else(|| ids::new_id(now));
        let (req, run_id, activity_id) = (&req, &run_id, &activity_id);
        let (run, task) = self
            .transact(move |tx| {
                Box::pin(async move {
                    start_standalone_in_txn(
                        tx.txn.as_mut(),
                        ns,
                        req,
                        activity_id,
                        run_id,
                        now,
                        &mut tx.fx,
                    )
                    .await
                })
            })
            .await?;
        let activity = run.lifecycle.standalone_activity.clone().ok_or_else(|| {
            Error::conflict(
                "duplicate_not_allowed",
                format!("'{activity_id}' is a workflow, not a standalone activity"),
            )
        })?;
        Ok(StandaloneActivityView {
            run,
            activity,
            task,
            close_payload: Value::Null,
        })
    }

    /// One standalone activity (the current host run of `activity_id`);
    /// `activity_not_found` when there is none.
    pub async fn standalone_activity(
        &self,
        ns: &str,
        activity_id: &str,
    ) -> Result<StandaloneActivityView> {
        let not_found = || {
            Error::not_found(
                "activity_not_found",
                format!("standalone activity '{activity_id}' does not exist"),
            )
        };
        let view = match self.describe(ns, activity_id, None).await {
            Ok(v) => v,
            Err(Error::Rejected {
                kind: RejectKind::NotFound,
                reason: "instance_not_found" | "run_not_found",
                ..
            }) => return Err(not_found()),
            Err(e) => return Err(e),
        };
        let Some(activity) = view.run.lifecycle.standalone_activity.clone() else {
            return Err(not_found());
        };
        let task = match view.run.open_activities.first() {
            Some(t) => {
                let mut txn = self.inner.store.begin().await?;
                tables::get_snapshot(txn.as_mut(), &tables::task_key(t)).await?
            }
            None => None,
        };
        Ok(StandaloneActivityView {
            run: view.run,
            activity,
            task,
            close_payload: view.close_payload,
        })
    }

    /// A page of standalone activities (their host runs, newest first), optionally of
    /// one status bucket (`running`, `completed`, `failed`).
    pub async fn standalone_activities(
        &self,
        ns: &str,
        status_bucket: Option<String>,
        page_size: usize,
        page_token: Option<String>,
    ) -> Result<WorkflowListPage> {
        self.list_workflows(
            ns,
            &ListQuery {
                workflow_type: Some(STANDALONE_HOST_TYPE.to_string()),
                status_bucket,
                query: None,
                page_size,
                page_token,
            },
        )
        .await
    }
}
