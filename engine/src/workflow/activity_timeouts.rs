//! Activity timeouts, enforced by the durable timer service.
//!
//! * `schedule_to_close` spans the whole execution, every attempt included: armed when the
//!   activity is scheduled, it records `ActivityTimedOut` whatever attempt is running.
//! * `schedule_to_start` limits how long an attempt waits in the queue: armed whenever an
//!   attempt becomes ready (first schedule and every retry), cleared when it is leased. No
//!   retry follows, since another attempt would wait in the same queue.
//! * `start_to_close` and `heartbeat` limit one leased attempt. A timed-out attempt is
//!   retried like a failed one while the retry policy has attempts left; otherwise the
//!   activity records `ActivityTimedOut`, which the SDK's replayer raises as
//!   `ActivityFailed` in workflow code.
//!
//! Every timer names its kind and attempt; the task keeps the key of each armed timer,
//! so a firing is applied only when it is still the task's current timer of that kind
//! (an earlier attempt's timer, or one replaced since, is ignored). The attempt-scoped
//! timers are lease-scoped: on a single-node store they live in memory like the lease's
//! own timer and are re-armed at open from the task row (see `kernel/tasks.rs`), so a
//! leased attempt writes no timer row. Heartbeats only move `heartbeat_deadline_ms`; the
//! heartbeat timer re-arms itself at that deadline when it fires early, so a heartbeat
//! arms no timer.

use super::{
    format_timestamp, invalid_commands, json, merge, tables, ActivityState, Effects, Engine, KvTxn,
    Map, Millis, Result, TaskRecord, TaskStatus, TimerAction, TimerKey, Value,
};
use crate::kernel;
use crate::model::ActivityTimeouts;

pub(crate) use crate::model::timeout_kind::{
    HEARTBEAT, SCHEDULE_TO_CLOSE, SCHEDULE_TO_START, START_TO_CLOSE,
};

/// Reads the timeouts of a `schedule_activity` command (whole seconds ≥ 1).
pub(super) fn from_command(cmd: &Map<String, Value>) -> Result<ActivityTimeouts> {
    let read = |name: &str| -> Result<Option<u64>> {
        match cmd.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => Ok(Some(n)),
                _ => Err(invalid_commands(format!(
                    "schedule_activity {name} must be an integer number of seconds >= 1"
                ))
                .with("field", name)),
            },
        }
    };
    Ok(ActivityTimeouts {
        schedule_to_start_s: read("schedule_to_start_timeout")?,
        start_to_close_s: read("start_to_close_timeout")?,
        schedule_to_close_s: read("schedule_to_close_timeout")?,
        heartbeat_s: read("heartbeat_timeout")?,
        ..ActivityTimeouts::default()
    })
}

fn timer_action(task: &TaskRecord, kind: &str, attempt_id: Option<&str>) -> TimerAction {
    task.activity_timeout_action(kind, attempt_id)
}

fn clear(txn: &mut dyn KvTxn, timer: &mut Option<TimerKey>) {
    if let Some(t) = timer.take() {
        txn.clear(&tables::timer_key(&t));
    }
}

/// Ends an attempt-scoped timer (see the module docs).
fn end_attempt_timer(txn: &mut dyn KvTxn, timer: &mut Option<TimerKey>, fx: &mut Effects) {
    if let Some(t) = timer.take() {
        kernel::end_lease_scoped_timer(txn, &t, fx);
    }
}

/// Arms the timers of a newly scheduled activity (before its task is first written).
pub(super) fn arm_on_schedule(
    txn: &mut dyn KvTxn,
    task: &mut TaskRecord,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let Some(t) = task.activity.as_ref().map(|a| a.timeouts.clone()) else {
        return Ok(());
    };
    if let Some(s) = t.schedule_to_close_s {
        let action = timer_action(task, SCHEDULE_TO_CLOSE, None);
        let key = kernel::put_timer(txn, now + s as Millis * 1000, &action, fx)?;
        if let Some(a) = task.activity.as_mut() {
            a.timeouts.schedule_to_close_timer = Some(key);
        }
    }
    arm_on_ready(txn, task, now, fx)
}

/// Arms the schedule-to-start timer of the attempt that becomes ready at `ready_at`.
pub(super) fn arm_on_ready(
    txn: &mut dyn KvTxn,
    task: &mut TaskRecord,
    ready_at: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let Some(s) = task
        .activity
        .as_ref()
        .and_then(|a| a.timeouts.schedule_to_start_s)
    else {
        return Ok(());
    };
    let action = timer_action(task, SCHEDULE_TO_START, None);
    let key = kernel::put_timer(txn, ready_at + s as Millis * 1000, &action, fx)?;
    if let Some(a) = task.activity.as_mut() {
        clear(txn, &mut a.timeouts.schedule_to_start_timer);
        a.timeouts.schedule_to_start_timer = Some(key);
    }
    Ok(())
}

/// Arms the attempt-scoped timers of an activity task that was just leased (its
/// `attempt_id` already set); the attempt has started, so schedule-to-start is over.
pub(crate) fn arm_on_lease(
    txn: &mut dyn KvTxn,
    task: &mut TaskRecord,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let Some(activity) = task.activity.as_ref() else {
        return Ok(());
    };
    let attempt_id = activity.attempt_id.clone();
    let t = activity.timeouts.clone();
    let stc = t
        .start_to_close_s
        .map(|s| {
            kernel::arm_lease_scoped_timer(
                txn,
                now + s as Millis * 1000,
                timer_action(task, START_TO_CLOSE, attempt_id.as_deref()),
                fx,
            )
        })
        .transpose()?;
    let hb = t
        .heartbeat_s
        .map(|s| {
            let at = now + s as Millis * 1000;
            kernel::arm_lease_scoped_timer(
                txn,
                at,
                timer_action(task, HEARTBEAT, attempt_id.as_deref()),
                fx,
            )
            .map(|k| (k, at))
        })
        .transpose()?;
    if let Some(a) = task.activity.as_mut() {
        let timeouts = &mut a.timeouts;
        clear(txn, &mut timeouts.schedule_to_start_timer);
        end_attempt_timer(txn, &mut timeouts.start_to_close_timer, fx);
        end_attempt_timer(txn, &mut timeouts.heartbeat_timer, fx);
        timeouts.start_to_close_timer = stc;
        timeouts.heartbeat_deadline_ms = hb.as_ref().map(|(_, at)| *at);
        timeouts.heartbeat_timer = hb.map(|(k, _)| k);
        timeouts.last_heartbeat_at_ms = None;
    }
    Ok(())
}

/// Records a heartbeat: moves the heartbeat deadline (the timer follows lazily).
pub(super) fn on_heartbeat(task: &mut TaskRecord, now: Millis) {
    if let Some(a) = task.activity.as_mut() {
        a.timeouts.last_heartbeat_at_ms = Some(now);
        if let Some(s) = a.timeouts.heartbeat_s {
            a.timeouts.heartbeat_deadline_ms = Some(now + s as Millis * 1000);
        }
    }
}

/// How the retry policy answers a failed or timed-out attempt: the backoff before the next
/// attempt, or `None` when no attempt remains.
pub(super) fn retry_backoff_s(
    activity: &ActivityState,
    failure_type: &str,
    non_retryable: bool,
) -> Option<u64> {
    let policy = activity.retry_policy.clone().unwrap_or(Value::Null);
    let max_attempts = policy
        .get("max_attempts")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .max(1) as u32;
    let listed = policy
        .get("non_retryable_error_types")
        .and_then(Value::as_array)
        .is_some_and(|types| types.iter().any(|t| t.as_str() == Some(failure_type)));
    if non_retryable || listed || activity.attempt_number >= max_attempts {
        return None;
    }
    let backoffs = policy.get("backoff_seconds").and_then(Value::as_array);
    let index = activity.attempt_number as usize - 1;
    Some(
        backoffs
            .and_then(|b| b.get(index).or(b.last()))
            .and_then(Value::as_u64)
            .unwrap_or(1),
    )
}

/// Moves an activity task to its next attempt after `backoff_s`: the current lease (if
/// any) and attempt timers end, a backoff timer makes the task ready later.
pub(super) fn schedule_retry(
    txn: &mut dyn KvTxn,
    task: &mut TaskRecord,
    backoff_s: u64,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    kernel::clear_task_state(txn, task, fx);
    let ready_at = now + backoff_s as Millis * 1000;
    let action = TimerAction::TaskBackoff {
        task_id: task.task_id.clone(),
    };
    let timer = kernel::put_timer(txn, ready_at, &action, fx)?;
    task.status = TaskStatus::Backoff;
    task.lease = None;
    task.backoff_timer = Some(timer);
    if let Some(a) = task.activity.as_mut() {
        a.attempt_number += 1;
        a.attempt_id = None;
        end_attempt_timer(txn, &mut a.timeouts.start_to_close_timer, fx);
        end_attempt_timer(txn, &mut a.timeouts.heartbeat_timer, fx);
        a.timeouts.heartbeat_deadline_ms = None;
    }
    arm_on_ready(txn, task, ready_at, fx)?;
    tables::put(txn, &tables::task_key(&task.task_id), task)
}

/// Applies a fired activity-timeout timer (idempotent: the timer row is already gone, and
/// a timer that is no longer the task's current one of its kind changes nothing).
pub(crate) async fn fire(
    txn: &mut dyn KvTxn,
    timer: &TimerKey,
    task_id: &str,
    kind: &str,
    attempt_id: Option<&str>,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let tkey = tables::task_key(task_id);
    let Some(mut task) = tables::get::<TaskRecord>(txn, &tkey).await? else {
        return Ok(());
    };
    let Some(activity) = task.activity.clone() else {
        return Ok(());
    };
    let t = &activity.timeouts;
    let current = match kind {
        SCHEDULE_TO_CLOSE => t.schedule_to_close_timer.as_ref() == Some(timer),
        SCHEDULE_TO_START => {
            t.schedule_to_start_timer.as_ref() == Some(timer) && task.status != TaskStatus::Leased
        }
        START_TO_CLOSE => {
            t.start_to_close_timer.as_ref() == Some(timer)
                && task.status == TaskStatus::Leased
                && activity.attempt_id.as_deref() == attempt_id
        }
        HEARTBEAT => {
            t.heartbeat_timer.as_ref() == Some(timer)
                && task.status == TaskStatus::Leased
                && activity.attempt_id.as_deref() == attempt_id
        }
        _ => false,
    };
    if !current {
        return Ok(());
    }
    if kind == HEARTBEAT {
        if let Some(deadline) = t.heartbeat_deadline_ms.filter(|d| *d > now) {
            // Heartbeats moved the deadline since this timer was armed: follow it.
            let action = timer_action(&task, HEARTBEAT, attempt_id);
            let next = kernel::arm_lease_scoped_timer(txn, deadline, action, fx)?;
            if let Some(a) = task.activity.as_mut() {
                a.timeouts.heartbeat_timer = Some(next);
            }
            return tables::put(txn, &tkey, &task);
        }
    }
    // The fired timer is gone (its row deleted, or in memory); forget it so it is not
    // ended twice.
    if let Some(a) = task.activity.as_mut() {
        let slot = match kind {
            SCHEDULE_TO_CLOSE => &mut a.timeouts.schedule_to_close_timer,
            SCHEDULE_TO_START => &mut a.timeouts.schedule_to_start_timer,
            START_TO_CLOSE => &mut a.timeouts.start_to_close_timer,
            _ => &mut a.timeouts.heartbeat_timer,
        };
        *slot = None;
    }
    let seconds = match kind {
        SCHEDULE_TO_CLOSE => t.schedule_to_close_s,
        SCHEDULE_TO_START => t.schedule_to_start_s,
        START_TO_CLOSE => t.start_to_close_s,
        _ => t.heartbeat_s,
    }
    .unwrap_or(0);
    let retryable = matches!(kind, START_TO_CLOSE | HEARTBEAT);
    if retryable {
        if let Some(backoff) = retry_backoff_s(&activity, "ActivityTimedOut", false) {
            tracing::info!(task_id, run_id = %task.run_id, timeout_kind = kind,
                attempt = activity.attempt_number, "activity attempt timed out; retrying");
            if let Some(a) = task.activity.as_mut() {
                a.last_failure = Some(crate::model::AttemptFailure {
                    at_ms: now,
                    attempt_number: a.attempt_number,
                    message: format!(
                        "activity {} timeout of {seconds}s exceeded",
                        kind.replace('_', "-")
                    ),
                });
            }
            return schedule_retry(txn, &mut task, backoff, now, fx);
        }
    }
    tracing::info!(task_id, run_id = %task.run_id, timeout_kind = kind,
        attempt = activity.attempt_number, "activity timed out");
    let deadline =
        |timer: &Option<TimerKey>| timer.as_ref().map(|k| format_timestamp(k.fire_at_ms));
    let mut payload = json!({
        "sequence": activity.sequence,
        "activity_type": task.type_name,
        "activity_execution_id": activity.activity_execution_id,
        "activity_attempt_id": activity.attempt_id,
        "attempt_number": activity.attempt_number,
        "timeout_kind": kind,
        "failure_category": "timeout",
        "message": format!("activity {} timeout of {seconds}s exceeded", kind.replace('_', "-")),
        "exception_type": "ActivityTimedOut",
        "exception_class": "ActivityTimedOut",
        "non_retryable": true,
        "schedule_deadline_at": deadline(&t.schedule_to_start_timer),
        "close_deadline_at": deadline(&t.start_to_close_timer),
        "schedule_to_close_deadline_at": deadline(&t.schedule_to_close_timer),
        "heartbeat_deadline_at": t.heartbeat_deadline_ms.map(format_timestamp),
        "heartbeat_details": activity.heartbeat_details,
    });
    payload = merge(payload, activity.group.as_object().unwrap_or(&Map::new()));
    tables::put(txn, &tkey, &task)?;
    Engine::resolve_activity(
        txn,
        &task.namespace.clone(),
        &task,
        "ActivityTimedOut",
        payload,
        now,
        fx,
    )
    .await
    .map(|_| ())
}
