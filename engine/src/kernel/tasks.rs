//! Task rows, the ready index and the per-queue counters, kept in step.
//!
//! Invariant: a task row's status names the one index entry or timer it holds — `Ready`:
//! its ready-index key (and the Ready count); `Leased`: its lease timer (and the Leased
//! count); `Backoff`: its backoff timer. Every change of status goes through here. The
//! counts are kept as `queue_counts` says (durable rows or in memory, by store).
//!
//! Lease-scoped timers — a lease's timer, and the start-to-close and heartbeat timeouts
//! of the activity attempt it holds — are kept like the counts: on a **multi-node**
//! store a durable timer row (whichever node fires timers must find it, also after this
//! node died); on a **single-node** store an in-memory timer of the timer service, armed
//! and cancelled only after commit and re-armed at open from the leased task rows
//! ([`lease_timers_of`]), as the row's `lease.timer` and attempt timers are the truth.
//! Either way firing compares the timer with the task's current one of its kind, so a
//! timer of an earlier lease or attempt never touches the task.

use crate::clock::Millis;
use crate::error::Result;
use crate::ids;
use crate::model::{TaskRecord, TaskStatus, TimerAction, TimerKey};
use crate::storage::KvTxn;
use crate::tables::{self, QueueCounter};

use super::queue_counts::count;
use super::{put_timer, Effects};

/// The ready-index key of `task` (in `Ready` state).
pub(crate) fn ready_key(task: &TaskRecord) -> Vec<u8> {
    tables::ready_key(
        &task.namespace,
        &task.task_queue,
        task.kind,
        task.priority,
        task.ready_at_ms,
        &task.task_id,
    )
}

/// Creates a task record in `Ready` state with its ready-index entry.
pub(crate) fn put_ready_task(
    txn: &mut dyn KvTxn,
    task: &TaskRecord,
    fx: &mut Effects,
) -> Result<()> {
    tables::put(txn, &tables::task_key(&task.task_id), task)?;
    txn.set(
        &ready_key(task),
        &tables::ready_value(
            &task.type_name,
            task.compatibility.as_deref(),
            task_session(task),
        ),
    );
    count(txn, fx, task, QueueCounter::Ready, 1);
    fx.ready(task);
    fx.indexed_here.push(task.task_id.as_str().into());
    Ok(())
}

/// The worker session an activity task runs in, if any.
pub(crate) fn task_session(task: &TaskRecord) -> Option<&str> {
    task.activity
        .as_ref()
        .and_then(|a| a.worker_session.as_ref())
        .map(|o| o.session_id.as_str())
}

/// Deletes a task with its index entry and timers.
pub(crate) async fn delete_task(
    txn: &mut dyn KvTxn,
    task_id: &str,
    fx: &mut Effects,
) -> Result<()> {
    let key = tables::task_key(task_id);
    let Some(task) = tables::get::<TaskRecord>(txn, &key).await? else {
        return Ok(());
    };
    delete_loaded_task(txn, &task, fx).await
}

/// Deletes `task`, as this transaction read it and has not changed it since, with its
/// index entry and timers (saves [`delete_task`]'s second decode of the record).
pub(crate) async fn delete_loaded_task(
    txn: &mut dyn KvTxn,
    task: &TaskRecord,
    fx: &mut Effects,
) -> Result<()> {
    let key = tables::task_key(&task.task_id);
    clear_task_state(txn, task, fx);
    if let Some(session) = task_session(task) {
        txn.clear(&tables::worker_session_task_key(
            &task.namespace,
            session,
            &task.task_id,
        ));
    }
    clear_activity_timeouts(txn, task, fx);
    tables::delete(txn, &key).await
}

/// Ends every timeout timer of an activity task (it is being deleted).
fn clear_activity_timeouts(txn: &mut dyn KvTxn, task: &TaskRecord, fx: &mut Effects) {
    if let Some(a) = &task.activity {
        for timer in a.timeouts.activity_timers() {
            txn.clear(&tables::timer_key(timer));
        }
        for (timer, _) in a.timeouts.attempt_timers() {
            end_lease_scoped_timer(txn, timer, fx);
        }
    }
}

/// Clears whatever index entry or timer the task's current state holds.
pub(crate) fn clear_task_state(txn: &mut dyn KvTxn, task: &TaskRecord, fx: &mut Effects) {
    match task.status {
        TaskStatus::Ready => {
            txn.clear(&ready_key(task));
            count(txn, fx, task, QueueCounter::Ready, -1);
        }
        TaskStatus::Leased => {
            if let Some(lease) = &task.lease {
                end_lease_scoped_timer(txn, &lease.timer, fx);
            }
            count(txn, fx, task, QueueCounter::Leased, -1);
            fx.session_slot_freed(task);
        }
        TaskStatus::Backoff => {
            if let Some(timer) = &task.backoff_timer {
                txn.clear(&tables::timer_key(timer));
            }
        }
    }
}

/// Returns a task to the ready index (after a lapsed lease or a backoff).
pub(crate) fn make_ready(
    txn: &mut dyn KvTxn,
    task: &mut TaskRecord,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    // A lapsed lease's timer row is the one firing (already deleted): only the count.
    if task.status == TaskStatus::Leased {
        count(txn, fx, task, QueueCounter::Leased, -1);
        fx.session_slot_freed(task);
    }
    task.status = TaskStatus::Ready;
    task.lease = None;
    task.backoff_timer = None;
    task.ready_at_ms = now;
    if let Some(activity) = task.activity.as_mut() {
        activity.attempt_id = None;
    }
    put_ready_task(txn, task, fx)
}

/// A lease timer fired: a lease renewed by heartbeats is re-armed at its new expiry; a
/// lapsed one makes the task ready again. A timer that is no longer the task's current
/// lease timer does nothing (a stale lease never touches the task).
pub(crate) async fn fire_lease_expiry(
    txn: &mut dyn KvTxn,
    task_id: &str,
    timer: &TimerKey,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let key = tables::task_key(task_id);
    let Some(mut task) = tables::get::<TaskRecord>(txn, &key).await? else {
        return Ok(());
    };
    let current = task.lease.as_ref().is_some_and(|l| l.timer == *timer);
    if task.status != TaskStatus::Leased || !current {
        return Ok(());
    }
    let expires = task.lease.as_ref().map_or(now, |l| l.expires_at_ms);
    if expires > now {
        let next = arm_lease_timer(txn, task_id, expires, fx)?;
        if let Some(lease) = task.lease.as_mut() {
            lease.timer = next;
        }
        tables::put(txn, &key, &task)
    } else {
        tracing::info!(task_id = %task.task_id, attempt = task.attempt, "lease expired; task is ready again");
        crate::metrics::lease_expired(task.kind);
        make_ready(txn, &mut task, now, fx)
    }
}

/// Arms the timer that ends a lease of `task_id` at `expires_at_ms` and returns it.
pub(crate) fn arm_lease_timer(
    txn: &mut dyn KvTxn,
    task_id: &str,
    expires_at_ms: Millis,
    fx: &mut Effects,
) -> Result<TimerKey> {
    arm_lease_scoped_timer(txn, expires_at_ms, lease_expiry(task_id), fx)
}

/// Arms a lease-scoped timer firing `action` at `fire_at_ms` (a durable row or an
/// in-memory timer, by store: see the module docs) and returns it.
pub(crate) fn arm_lease_scoped_timer(
    txn: &mut dyn KvTxn,
    fire_at_ms: Millis,
    action: TimerAction,
    fx: &mut Effects,
) -> Result<TimerKey> {
    if fx.multi_node {
        return put_timer(txn, fire_at_ms, &action, fx);
    }
    let timer = TimerKey {
        fire_at_ms,
        timer_id: ids::new_id(fire_at_ms),
    };
    fx.lease_timers.push((timer.clone(), action));
    Ok(timer)
}

/// Ends a lease-scoped timer (its lease or attempt ended another way than by it firing).
pub(crate) fn end_lease_scoped_timer(txn: &mut dyn KvTxn, timer: &TimerKey, fx: &mut Effects) {
    if fx.multi_node {
        txn.clear(&tables::timer_key(timer));
    } else {
        fx.lease_timers_ended.push(timer.clone());
    }
}

/// The action of `task_id`'s lease timer.
fn lease_expiry(task_id: &str) -> TimerAction {
    TimerAction::LeaseExpiry {
        task_id: task_id.to_string(),
    }
}

/// The lease-scoped timers a leased `task` holds, with their actions (to re-arm them or
/// write them as rows): its lease timer and its attempt's start-to-close and heartbeat
/// timers.
pub(crate) fn lease_timers_of(task: &TaskRecord) -> Vec<(TimerKey, TimerAction)> {
    let Some(lease) = task
        .lease
        .as_ref()
        .filter(|_| task.status == TaskStatus::Leased)
    else {
        return Vec::new();
    };
    let mut timers = vec![(lease.timer.clone(), lease_expiry(&task.task_id))];
    if let Some(activity) = &task.activity {
        let attempt = activity.attempt_id.as_deref();
        timers.extend(
            activity
                .timeouts
                .attempt_timers()
                .map(|(timer, kind)| (timer.clone(), task.activity_timeout_action(kind, attempt))),
        );
    }
    timers
}

/// A backoff timer fired: the task is ready again if this is still its backoff.
pub(crate) async fn fire_task_backoff(
    txn: &mut dyn KvTxn,
    task_id: &str,
    timer: &TimerKey,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let Some(mut task) = tables::get::<TaskRecord>(txn, &tables::task_key(task_id)).await? else {
        return Ok(());
    };
    if task.status == TaskStatus::Backoff && task.backoff_timer.as_ref() == Some(timer) {
        make_ready(txn, &mut task, now, fx)?;
    }
    Ok(())
}
