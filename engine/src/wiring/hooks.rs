//! Who reacts to which [`Event`]: the one list of cross-subsystem reactions. Each runs in
//! the transaction that raised the event, before its commit.

use crate::clock::Millis;
use crate::kernel::{self, Effects, Event, TxFuture};
use crate::storage::KvTxn;

pub(super) struct Hooks {
    /// The outbound settings a `start_service_operation` command's admission checks.
    pub service_http: crate::kernel::ServiceHttpConfig,
    /// Leases of new ready tasks to parked pollers, before commit.
    pub eager: crate::workflow::EagerLeases,
}

impl kernel::Hooks for Hooks {
    fn before_commit<'t>(
        &'t self,
        txn: &'t mut dyn KvTxn,
        fx: &'t mut Effects,
    ) -> TxFuture<'t, ()> {
        Box::pin(crate::workflow::lease_eagerly(&self.eager, txn, fx))
    }

    fn react<'t>(
        &'t self,
        txn: &'t mut dyn KvTxn,
        event: Event,
        now: Millis,
        fx: &'t mut Effects,
    ) -> TxFuture<'t, ()> {
        // Each reaction's own future is boxed: this one is moved into its box on every
        // event, and would otherwise be as large as the largest reaction (~13 KB).
        Box::pin(async move {
            match event {
                Event::RunClosed {
                    namespace,
                    workflow_id,
                    run_id,
                    reason,
                    schedule_id,
                    closed_at_ms,
                } => {
                    // Retention and closed-run visibility.
                    crate::system::index_closed_run(
                        txn,
                        &namespace,
                        &workflow_id,
                        &run_id,
                        closed_at_ms,
                    );
                    // Service calls this run carried out or waited on.
                    Box::pin(crate::services::on_run_closed(
                        txn,
                        &namespace,
                        &workflow_id,
                        &run_id,
                        &reason,
                        now,
                        fx,
                    ))
                    .await?;
                    // A schedule waiting for this run (buffered fires) learns of the close.
                    if let Some(schedule_id) = schedule_id {
                        crate::schedules::on_run_closed(
                            txn,
                            &namespace,
                            &schedule_id,
                            &workflow_id,
                            &reason,
                            now,
                            fx,
                        )?;
                    }
                    Ok(())
                }
                Event::UpdateClosed {
                    namespace,
                    run_id,
                    update_id,
                } => {
                    // A service call carried out by this update closes with it.
                    Box::pin(crate::services::on_update_closed(
                        txn, &namespace, &run_id, &update_id, now, fx,
                    ))
                    .await
                }
                Event::ServiceCallRequested {
                    namespace,
                    workflow_id,
                    run_id,
                    sequence,
                    command,
                } => {
                    Box::pin(crate::services::admit_workflow_call(
                        txn,
                        &namespace,
                        &workflow_id,
                        &run_id,
                        sequence,
                        &command,
                        &self.service_http,
                        now,
                        fx,
                    ))
                    .await
                }
                Event::WorkerSessionEnded {
                    namespace,
                    session_id,
                    reason,
                } => {
                    // Its open activities fail; the workflows see why.
                    Box::pin(crate::workflow::fail_session_activities(
                        txn,
                        &namespace,
                        &session_id,
                        &reason,
                        now,
                        fx,
                    ))
                    .await
                }
            }
        })
    }
}
