//! The kernel: the engine handle and its settings, the transaction context and runner,
//! the in-memory registries every subsystem shares (poll memories, query tasks), and the
//! table operations every subsystem shares (tasks with their ready index and counts,
//! timer rows, the namespace check). It depends on storage, keys, tables, model, clock,
//! matching, timers and cluster, never on a subsystem; subsystems react to each other
//! through [`Event`]s it carries, which `wiring` routes.

mod config;
mod effects;
mod handle;
mod polls;
mod query_tasks;
mod queue_counts;
pub(crate) mod sessions;
mod tasks;
mod timers;
mod tx;

pub use config::{EngineConfig, PayloadStores, ServiceHttpConfig};
pub use handle::Engine;
pub(crate) use handle::Inner;
pub(crate) use polls::{Begin, PollRequestKey, PollRequests, StickyRuns};
pub use query_tasks::{Queries, QueryTaskView, UpdateWaiter};
pub(crate) use query_tasks::{QueryTask, Resolution, TaskGuard};

pub(crate) use effects::{Effects, Event};
pub use queue_counts::QueueCounts;
pub(crate) use queue_counts::{count, rewrite_counter_and_lease_rows, QueueTally};
pub(crate) use tasks::{
    arm_lease_scoped_timer, arm_lease_timer, clear_task_state, delete_loaded_task, delete_task,
    end_lease_scoped_timer, fire_lease_expiry, fire_task_backoff, make_ready, put_ready_task,
    ready_key, task_session,
};
pub(crate) use timers::{clear_timer, put_timer};
pub(crate) use tx::{run, Hooks, Tx, TxFuture};

use crate::error::{Error, Result};
use crate::storage::KvTxn;
use crate::tables;

/// Fails with `namespace_not_found` unless `ns` exists (a snapshot read: namespaces are
/// never deleted, so this adds no conflict).
pub(crate) async fn require_namespace(txn: &mut dyn KvTxn, ns: &str) -> Result<()> {
    // Presence only: the record (with its search-attribute registry) is not decoded.
    if txn
        .get_snapshot(&tables::namespace_key(ns))
        .await?
        .is_none()
    {
        return Err(Error::not_found(
            "namespace_not_found",
            format!("namespace '{ns}' does not exist"),
        )
        .with("namespace", ns)
        .with(
            "remediation",
            "Create the namespace with POST /api/namespaces.",
        ));
    }
    Ok(())
}

/// Key of a queue's new-start build: the build id fresh starts on the queue without one
/// are pinned to (the promoted deployment's), a JSON string or null.
pub(crate) fn new_start_build_key(ns: &str, queue: &str) -> Vec<u8> {
    crate::keys::Key::new(crate::keys::prefix::NEW_START_BUILD)
        .str(ns)
        .str(queue)
        .into_bytes()
}

/// The new-start build of a queue inside `txn` (snapshot read): the build id fresh
/// starts without one are pinned to, while a versioned deployment of the queue is
/// promoted and not draining.
pub(crate) async fn new_start_build(
    txn: &mut dyn KvTxn,
    ns: &str,
    queue: &str,
) -> Result<Option<String>> {
    let sel: Option<Option<String>> =
        tables::get_snapshot(txn, &new_start_build_key(ns, queue)).await?;
    Ok(sel.flatten())
}
