//! Timer dispatch: each durable timer's action goes to the subsystem that owns it.

use crate::error::Result;
use crate::kernel;
use crate::model::{TimerAction, TimerKey};
use crate::storage::ReadOptions;
use crate::{keys, tables};

use crate::kernel::Engine;

impl Engine {
    /// Fires every timer due now, inline: durable ones (at most `limit`) and in-memory
    /// ones; returns how many fired. The timer service does the same in the background;
    /// both are idempotent, so tests and operator passes can use this to settle time
    /// deterministically.
    pub async fn fire_due_timers(&self, limit: usize) -> Result<usize> {
        let due = {
            let mut txn = self.inner.store.begin().await?;
            txn.get_range(
                &tables::timers_before(self.now_ms() + 1),
                ReadOptions::limit(limit).snapshot(),
            )
            .await?
        };
        let mut fired = 0;
        for (key, _) in due {
            let mut r = keys::KeyReader::new(&key);
            if let (Some(fire_at_ms), Some(timer_id)) = (r.i64(), r.str()) {
                self.fire_timer(TimerKey {
                    fire_at_ms,
                    timer_id,
                })
                .await?;
                fired += 1;
            }
        }
        for (timer, action) in self.inner.timers.in_memory_due(self.now_ms()) {
            self.fire_timer_with(timer.clone(), Some(action)).await?;
            self.inner.timers.cancel_in_memory(&timer);
            fired += 1;
        }
        Ok(fired)
    }

    /// Fires one durable timer (idempotent: the row is deleted in the transaction that
    /// acts on it, and a missing row means it already fired).
    pub async fn fire_timer(&self, timer: TimerKey) -> Result<()> {
        self.fire_timer_with(timer, None).await
    }

    /// Fires a durable timer (`action` None) or an in-memory one with its `action`
    /// (idempotent as its owner checks the timer is still current).
    pub(crate) async fn fire_timer_with(
        &self,
        timer: TimerKey,
        action: Option<TimerAction>,
    ) -> Result<()> {
        let timer = &timer;
        let action = &action;
        let http = &self.inner.config.service_http;
        let dispatched = self
            .transact(move |tx| {
                Box::pin(async move {
                    let now = tx.now;
                    let (txn, fx) = (tx.txn.as_mut(), &mut tx.fx);
                    let action = match action {
                        Some(action) => action.clone(),
                        None => {
                            let key = tables::timer_key(timer);
                            let Some(action) = tables::get::<TimerAction>(txn, &key).await? else {
                                return Ok(None);
                            };
                            tables::delete(txn, &key).await?;
                            action
                        }
                    };
                    if let TimerAction::ServiceCallDispatch {
                        namespace,
                        endpoint_name,
                        service_name,
                        operation_name,
                        service_call_id,
                    } = &action
                    {
                        return crate::services::lease_dispatch(
                            txn,
                            namespace,
                            endpoint_name,
                            service_name,
                            operation_name,
                            service_call_id,
                            timer,
                            http,
                            now,
                            fx,
                        )
                        .await;
                    }
                    let fired = match action {
                        TimerAction::LeaseExpiry { task_id } => {
                            kernel::fire_lease_expiry(txn, &task_id, timer, now, fx).await
                        }
                        TimerAction::TaskBackoff { task_id } => {
                            kernel::fire_task_backoff(txn, &task_id, timer, now, fx).await
                        }
                        TimerAction::RunDeadline { namespace, run_id } => {
                            crate::workflow::time_out_run(txn, &namespace, &run_id, timer, now, fx)
                                .await
                        }
                        TimerAction::ActivityTimeout {
                            task_id,
                            timeout_kind,
                            attempt_id,
                            ..
                        } => {
                            crate::workflow::fire_activity_timeout(
                                txn,
                                timer,
                                &task_id,
                                &timeout_kind,
                                attempt_id.as_deref(),
                                now,
                                fx,
                            )
                            .await
                        }
                        TimerAction::ParentClosePolicy {
                            namespace,
                            child_workflow_id,
                            parent_run_id,
                            policy,
                        } => {
                            crate::workflow::apply_parent_close_policy(
                                txn,
                                &namespace,
                                &child_workflow_id,
                                &parent_run_id,
                                &policy,
                                now,
                                fx,
                            )
                            .await
                        }
                        TimerAction::ScheduleFire {
                            namespace,
                            schedule_id,
                        } => {
                            crate::schedules::fire(txn, &namespace, &schedule_id, timer, now, fx)
                                .await
                        }
                        TimerAction::ScheduleRunClosed {
                            namespace,
                            schedule_id,
                            workflow_id,
                        } => {
                            crate::schedules::run_closed(
                                txn,
                                &namespace,
                                &schedule_id,
                                &workflow_id,
                                now,
                                fx,
                            )
                            .await
                        }
                        TimerAction::ServiceCallDeadline {
                            namespace,
                            endpoint_name,
                            service_name,
                            operation_name,
                            service_call_id,
                        } => {
                            crate::services::fire_deadline(
                                txn,
                                &namespace,
                                &endpoint_name,
                                &service_name,
                                &operation_name,
                                &service_call_id,
                                timer,
                                now,
                                fx,
                            )
                            .await
                        }
                        TimerAction::WorkerSessionDeadline {
                            namespace,
                            session_id,
                        } => {
                            crate::sessions::fire_deadline(
                                txn,
                                &namespace,
                                &session_id,
                                timer,
                                now,
                                fx,
                            )
                            .await
                        }
                        action @ (TimerAction::WorkflowTimer { .. }
                        | TimerAction::ConditionTimeout { .. }
                        | TimerAction::ForgetClosedTask { .. }) => {
                            crate::workflow::waits::fire(txn, action, timer, now, fx).await
                        }
                        TimerAction::ServiceCallDispatch { .. } => Ok(()),
                    };
                    fired.map(|()| None)
                })
            })
            .await?;
        // A leased service-call attempt runs off the timer service (it may wait on a
        // remote endpoint or a worker); its lease timer covers a crash meanwhile.
        if let Some(d) = dispatched {
            let engine = self.clone();
            tokio::spawn(async move { engine.run_dispatch(d).await });
        }
        Ok(())
    }
}
