//! The kernel: the transaction context and runner, and the table operations every
//! subsystem shares (tasks with their ready index and counters, timer rows, the namespace
//! check). It depends on storage, keys, tables, model, clock and matching's hint types,
//! never on a subsystem; subsystems react to each other through [`Event`]s it carries.

mod effects;
mod tasks;
mod timers;
mod tx;

pub(crate) use effects::{Effects, Event};
pub(crate) use tasks::{
    clear_task_state, count, delete_task, fire_lease_expiry, fire_task_backoff, make_ready,
    put_ready_task, ready_key,
};
pub(crate) use timers::{clear_timer, put_timer};
pub(crate) use tx::{run, Hooks, Tx, TxFuture};

use crate::error::{Error, Result};
use crate::model::NamespaceRecord;
use crate::storage::KvTxn;
use crate::tables;

/// Fails with `namespace_not_found` unless `ns` exists (a snapshot read: namespaces are
/// never deleted, so this adds no conflict).
pub(crate) async fn require_namespace(txn: &mut dyn KvTxn, ns: &str) -> Result<()> {
    if tables::get_snapshot::<NamespaceRecord>(txn, &tables::namespace_key(ns))
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
