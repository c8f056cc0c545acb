//! Activity task reports: completion, failure with server-side retries, heartbeats.

use super::{
    check_activity_lease, ensure_workflow_task, history, json, load_task, merge, tables, Effects,
    Engine, Error, KvTxn, Map, Millis, Result, RunRecord, TaskKind, TaskOutcome, TaskRecord, Value,
};
use crate::kernel;

impl Engine {
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
        self.transact_report(task_id, "completed", move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                let fx = &mut tx.fx;
                let task = load_task(txn, ns, task_id, TaskKind::Activity).await?;
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
                let outcome =
                    Self::resolve_activity(txn, ns, &task, "ActivityCompleted", payload, now, fx)
                        .await?;
                Ok(outcome)
            })
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
        self.transact_report(task_id, "failed", move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                let fx = &mut tx.fx;
                let mut task = load_task(txn, ns, task_id, TaskKind::Activity).await?;
                check_activity_lease(&task, owner, attempt_id, now)?;
                let activity = task
                    .activity
                    .clone()
                    .ok_or_else(|| Error::corrupt("activity task without state"))?;
                let failure_type = failure.get("type").and_then(Value::as_str).unwrap_or("");
                let reported_non_retryable = failure
                    .get("non_retryable")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let retry = super::activity_timeouts::retry_backoff_s(
                    &activity,
                    failure_type,
                    reported_non_retryable,
                );
                if let Some(backoff_s) = retry {
                    if let Some(a) = task.activity.as_mut() {
                        let message = failure.get("message").and_then(Value::as_str).unwrap_or("");
                        a.last_failure = Some(crate::model::AttemptFailure {
                            at_ms: now,
                            attempt_number: a.attempt_number,
                            message: crate::model::truncate_message(message),
                        });
                    }
                    super::activity_timeouts::schedule_retry(txn, &mut task, backoff_s, now, fx)?;
                    let outcome = TaskOutcome {
                        task_id: task_id.to_string(),
                        outcome: "failed",
                        recorded: true,
                        run_id: task.run_id.clone(),
                        run_status: "running",
                        next_task_id: Some(task_id.to_string()),
                    };
                    return Ok(outcome);
                }
                // No attempt remains; `non_retryable` says whether the failure itself ruled
                // retries out (rather than the attempt budget).
                let non_retryable = reported_non_retryable
                    || activity
                        .retry_policy
                        .as_ref()
                        .and_then(|p| p.get("non_retryable_error_types"))
                        .and_then(Value::as_array)
                        .is_some_and(|types| {
                            types.iter().any(|t| t.as_str() == Some(failure_type))
                        });
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
                let outcome =
                    Self::resolve_activity(txn, ns, &task, "ActivityFailed", payload, now, fx)
                        .await?;
                Ok(outcome)
            })
        })
        .await
    }

    /// Records an activity's final event, deletes its task and wakes the workflow.
    pub(super) async fn resolve_activity(
        txn: &mut dyn KvTxn,
        ns: &str,
        task: &TaskRecord,
        event: &str,
        payload: Value,
        now: Millis,
        fx: &mut Effects,
    ) -> Result<TaskOutcome> {
        kernel::delete_task(txn, &task.task_id, fx).await?;
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
        let host = run.lifecycle.standalone_activity.is_some();
        let closing = host.then(|| payload.clone());
        history::append(txn, &mut run, event, payload, now, None);
        match closing {
            // A standalone activity's outcome is its host run's.
            Some(p) => super::standalone::close_host(txn, &mut run, event, &p, now, fx).await?,
            None => ensure_workflow_task(txn, &mut run, now, fx)?,
        }
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
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                let mut task = load_task(txn, ns, task_id, TaskKind::Activity).await?;
                check_activity_lease(&task, owner, attempt_id, now)?;
                let expires = now + lease_ms;
                if let Some(lease) = task.lease.as_mut() {
                    lease.expires_at_ms = expires;
                }
                if let (Some(a), Some(d)) = (task.activity.as_mut(), details) {
                    a.heartbeat_details = Some(d.clone());
                }
                super::activity_timeouts::on_heartbeat(&mut task, now);
                tables::put(txn, &tables::task_key(task_id), &task)?;
                // An activity heartbeat renews the worker session it runs in, while its
                // holder is the one heartbeating.
                if let Some(session) = kernel::task_session(&task) {
                    kernel::sessions::renew_by_holder(txn, ns, session, owner, now).await?;
                }
                Ok(expires)
            })
        })
        .await
    }
}
