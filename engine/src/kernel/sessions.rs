//! Worker-session records as every subsystem needs them inside a transaction: reading and
//! writing one, arming its deadline timer, admitting an activity lease under it, and
//! ending it. The `sessions` subsystem serves the worker and operator routes on top; the
//! workflow subsystem admits session activities at lease time.
//!
//! Invariants:
//! * An `Active` session has one holder (`lease_owner`) until its lease lapses; a lease of
//!   one of its activities is granted only to that holder and only while fewer than
//!   `max_concurrent_activities` of its activities are leased. Every admission writes the
//!   record, so two concurrent admissions conflict and the cap is exact.
//! * A session's deadline timer fires at the earlier of its lease and TTL deadlines as
//!   they were when it was armed; a renewal only moves `lease_expires_at_ms`, and the
//!   firing re-arms the timer when the deadline moved.
//! * `Closed` is terminal for the session id; its open activities fail in the transaction
//!   that closes it ([`Event::WorkerSessionEnded`]).

use crate::clock::Millis;
use crate::error::Result;
use crate::matching::QueueKey;
use crate::model::{
    SessionOptions, SessionStatus, TaskRecord, TaskStatus, TimerAction, WorkerSessionRecord,
};
use crate::storage::{KvTxn, ReadOptions};
use crate::tables;

use super::{clear_timer, put_timer, Effects, Event};

/// Open session tasks read at most when counting or ending a session.
pub(crate) const MAX_SESSION_TASKS: usize = 10_000;

/// Reads a session record.
pub(crate) async fn load_session(
    txn: &mut dyn KvTxn,
    ns: &str,
    session_id: &str,
) -> Result<Option<WorkerSessionRecord>> {
    tables::get(txn, &tables::worker_session_key(ns, session_id)).await
}

/// Writes a session record.
pub(crate) fn put_session(txn: &mut dyn KvTxn, record: &WorkerSessionRecord) -> Result<()> {
    tables::put(
        txn,
        &tables::worker_session_key(&record.namespace, &record.options.session_id),
        record,
    )
}

/// The lease deadline a renewal by `lease_seconds` at `now` sets (never past the TTL).
pub(crate) fn lease_deadline(
    record: &WorkerSessionRecord,
    lease_seconds: u64,
    now: Millis,
) -> Millis {
    (now + lease_seconds as Millis * 1000).min(record.ttl_expires_at_ms)
}

/// (Re-)arms the session's deadline timer at its next deadline (the lease's while
/// active, the TTL's otherwise), replacing the one it had.
pub(crate) fn arm_deadline(
    txn: &mut dyn KvTxn,
    record: &mut WorkerSessionRecord,
    fx: &mut Effects,
) -> Result<()> {
    if let Some(old) = record.timer.take() {
        clear_timer(txn, &old);
    }
    if record.status == SessionStatus::Closed {
        return Ok(());
    }
    let at = match record.status {
        SessionStatus::Active => record.lease_expires_at_ms.min(record.ttl_expires_at_ms),
        _ => record.ttl_expires_at_ms,
    };
    let action = TimerAction::WorkerSessionDeadline {
        namespace: record.namespace.clone(),
        session_id: record.options.session_id.clone(),
    };
    record.timer = Some(put_timer(txn, at, &action, fx)?);
    Ok(())
}

/// A new active session held by `worker_id`.
pub(crate) fn new_session(
    ns: &str,
    options: &SessionOptions,
    worker_id: &str,
    now: Millis,
) -> WorkerSessionRecord {
    let ttl = now + options.ttl_seconds as Millis * 1000;
    WorkerSessionRecord {
        namespace: ns.to_string(),
        options: options.clone(),
        status: SessionStatus::Active,
        lease_owner: Some(worker_id.to_string()),
        lease_expires_at_ms: (now + options.lease_seconds as Millis * 1000).min(ttl),
        ttl_expires_at_ms: ttl,
        timer: None,
        failure_reason: None,
        close_reason: None,
        closed_at_ms: None,
        last_heartbeat_at_ms: Some(now),
        created_at_ms: now,
        updated_at_ms: now,
    }
}

/// Makes `worker_id` the holder of a session whose previous holder's lease lapsed.
pub(crate) async fn reacquire(
    txn: &mut dyn KvTxn,
    record: &mut WorkerSessionRecord,
    worker_id: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    record.status = SessionStatus::Active;
    record.lease_owner = Some(worker_id.to_string());
    record.lease_expires_at_ms = lease_deadline(record, record.options.lease_seconds, now);
    record.failure_reason = None;
    record.last_heartbeat_at_ms = Some(now);
    record.updated_at_ms = now;
    arm_deadline(txn, record, fx)?;
    announce_holder(txn, record, fx).await
}

/// Tells matching (after commit) who holds the session now; when nobody does, the queues
/// of its open tasks are re-matched so that parked pollers of any worker may try them.
pub(crate) async fn announce_holder(
    txn: &mut dyn KvTxn,
    record: &WorkerSessionRecord,
    fx: &mut Effects,
) -> Result<()> {
    // Announced as the session changes (at `updated_at_ms`).
    let holder = match held_until(txn, record, record.updated_at_ms).await? {
        Some(until) => record.lease_owner.clone().map(|owner| (owner, until)),
        None => None,
    };
    let queues = if holder.is_none() {
        let mut queues: Vec<QueueKey> = Vec::new();
        for task in session_tasks(txn, &record.namespace, &record.options.session_id).await? {
            let key = QueueKey::new(&task.namespace, &task.task_queue, task.kind);
            if !queues.contains(&key) {
                queues.push(key);
            }
        }
        queues
    } else {
        Vec::new()
    };
    fx.session_holders.push((
        record.namespace.clone(),
        record.options.session_id.clone(),
        holder,
        queues,
    ));
    Ok(())
}

/// Ends a session for good: `Closed`, its timer cleared, its holder released, and
/// [`Event::WorkerSessionEnded`] raised so its open activities fail in this transaction.
pub(crate) async fn end_session(
    txn: &mut dyn KvTxn,
    record: &mut WorkerSessionRecord,
    reason: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    record.status = SessionStatus::Closed;
    record.closed_at_ms = Some(now);
    record.updated_at_ms = now;
    if reason != "session_closed" {
        record.failure_reason = Some(reason.to_string());
    }
    arm_deadline(txn, record, fx)?;
    put_session(txn, record)?;
    announce_holder(txn, record, fx).await?;
    fx.raise(Event::WorkerSessionEnded {
        namespace: record.namespace.clone(),
        session_id: record.options.session_id.clone(),
        reason: reason.to_string(),
    });
    Ok(())
}

/// The open tasks of a session (entries whose task is gone are cleared on the way).
pub(crate) async fn session_tasks(
    txn: &mut dyn KvTxn,
    ns: &str,
    session_id: &str,
) -> Result<Vec<TaskRecord>> {
    let pairs = txn
        .get_range(
            &tables::worker_session_tasks_range(ns, session_id),
            ReadOptions::limit(MAX_SESSION_TASKS),
        )
        .await?;
    let mut out = Vec::with_capacity(pairs.len());
    for (key, _) in pairs {
        let mut r = crate::keys::KeyReader::new(&key);
        let (Some(_), Some(_), Some(task_id)) = (r.str(), r.str(), r.str()) else {
            continue;
        };
        match tables::get::<TaskRecord>(txn, &tables::task_key(&task_id)).await? {
            Some(task) => out.push(task),
            None => txn.clear(&key),
        }
    }
    Ok(out)
}

/// Activities of the session leased now, besides `except`.
pub(crate) async fn leased_count(
    txn: &mut dyn KvTxn,
    ns: &str,
    session_id: &str,
    except: &str,
) -> Result<usize> {
    Ok(session_tasks(txn, ns, session_id)
        .await?
        .iter()
        .filter(|t| t.status == TaskStatus::Leased && t.task_id != except)
        .count())
}

/// A holder whose registration is gone, or has sent no heartbeat for this long, has lost
/// its sessions (the fleet's staleness threshold).
pub(crate) const HOLDER_STALE_AFTER_MS: Millis = 120_000;

/// Until when the session is held, if it is now: active, its lease unexpired, and its
/// holder still registered and heartbeating (`registered_worker_heartbeat_staleness`).
/// The horizon is the earlier of the lease deadline and the holder's staleness.
pub(crate) async fn held_until(
    txn: &mut dyn KvTxn,
    record: &WorkerSessionRecord,
    now: Millis,
) -> Result<Option<Millis>> {
    if record.status != SessionStatus::Active || record.lease_expires_at_ms <= now {
        return Ok(None);
    }
    let Some(owner) = record.lease_owner.as_deref() else {
        return Ok(None);
    };
    let worker: Option<crate::model::WorkerRecord> =
        tables::get_snapshot(txn, &tables::worker_key(&record.namespace, owner)).await?;
    Ok(worker
        .map(|w| w.last_heartbeat_at_ms + HOLDER_STALE_AFTER_MS)
        .filter(|stale_at| *stale_at >= now)
        .map(|stale_at| stale_at.min(record.lease_expires_at_ms)))
}

/// Whether the session is held now (see [`held_until`]).
pub(crate) async fn held(
    txn: &mut dyn KvTxn,
    record: &WorkerSessionRecord,
    now: Millis,
) -> Result<bool> {
    Ok(held_until(txn, record, now).await?.is_some())
}

/// Whether a worker may lease an activity of a session now.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Yes: the worker holds the session (it was created, reused or reacquired).
    Admitted,
    /// Another worker holds it, until the given time at least.
    HeldBy(String, Millis),
    /// The worker holds it, but its activity cap is reached.
    Full,
    /// The session cannot run the activity: it fails with this reason.
    Refused(String),
}

/// Decides whether `worker_id` may lease `task` (an activity of session `options`), and
/// records the admission: creates the session if it may, reacquires a lapsed one if it
/// may, renews the holder's lease.
pub(crate) async fn admit(
    txn: &mut dyn KvTxn,
    task: &TaskRecord,
    options: &SessionOptions,
    worker_id: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<Admission> {
    let ns = task.namespace.as_str();
    let Some(mut record) = load_session(txn, ns, &options.session_id).await? else {
        if !options.create_if_missing {
            return Ok(Admission::Refused("session_missing".into()));
        }
        let mut record = new_session(ns, options, worker_id, now);
        arm_deadline(txn, &mut record, fx)?;
        put_session(txn, &record)?;
        announce_holder(txn, &record, fx).await?;
        return Ok(Admission::Admitted);
    };
    if record.status == SessionStatus::Closed {
        let reason = record
            .failure_reason
            .clone()
            .unwrap_or_else(|| "session_closed".into());
        return Ok(Admission::Refused(reason));
    }
    if now >= record.ttl_expires_at_ms {
        // Its timer ends it (and fails the rest) shortly.
        return Ok(Admission::Refused("ttl_expired".into()));
    }
    let until = held_until(txn, &record, now).await?;
    let owner = record.lease_owner.clone().unwrap_or_default();
    if let (Some(until), false) = (until, owner == worker_id) {
        return Ok(Admission::HeldBy(owner, until));
    }
    if until.is_some() {
        let max = record.options.max_concurrent_activities.max(1) as usize;
        if leased_count(txn, ns, &options.session_id, &task.task_id).await? >= max {
            return Ok(Admission::Full);
        }
        record.lease_expires_at_ms = lease_deadline(&record, record.options.lease_seconds, now);
        record.updated_at_ms = now;
        put_session(txn, &record)?;
        return Ok(Admission::Admitted);
    }
    // The holder's lease lapsed (its timer may not have fired yet), or the holder is gone.
    if !record.options.allow_reacquire_after_failure {
        return Ok(Admission::Refused("session_reacquire_disallowed".into()));
    }
    // Attempts the lost holder still runs keep their own leases, and count.
    let max = record.options.max_concurrent_activities.max(1) as usize;
    if leased_count(txn, ns, &options.session_id, &task.task_id).await? >= max {
        return Ok(Admission::Full);
    }
    reacquire(txn, &mut record, worker_id, now, fx).await?;
    put_session(txn, &record)?;
    Ok(Admission::Admitted)
}

/// Binds a newly scheduled activity task to its session (so ending the session finds it).
pub(crate) fn index_session_task(txn: &mut dyn KvTxn, task: &TaskRecord) {
    if let Some(session) = super::tasks::task_session(task) {
        txn.set(
            &tables::worker_session_task_key(&task.namespace, session, &task.task_id),
            b"",
        );
    }
}

/// Renews the holder's lease of an active session (an activity heartbeat of the holder);
/// anything else is left alone. The deadline timer catches up when it fires.
pub(crate) async fn renew_by_holder(
    txn: &mut dyn KvTxn,
    ns: &str,
    session_id: &str,
    worker_id: &str,
    now: Millis,
) -> Result<()> {
    let Some(mut record) = load_session(txn, ns, session_id).await? else {
        return Ok(());
    };
    if record.status != SessionStatus::Active
        || record.lease_expires_at_ms <= now
        || record.lease_owner.as_deref() != Some(worker_id)
    {
        return Ok(());
    }
    record.lease_expires_at_ms = lease_deadline(&record, record.options.lease_seconds, now);
    record.last_heartbeat_at_ms = Some(now);
    record.updated_at_ms = now;
    put_session(txn, &record)
}
