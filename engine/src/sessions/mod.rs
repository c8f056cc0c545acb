//! Worker sessions: a lease one registered worker holds on a session id, so that the
//! activities a workflow schedules with `worker_session` run on that worker only.
//!
//! The worker routes create (or reacquire) a session, renew its lease and close it; the
//! operator routes read them. The session record, its deadline timer and the admission
//! of an activity lease live in the kernel (`kernel::sessions`), since the workflow
//! subsystem admits session activities when a worker leases one.
//!
//! Lifecycle: `active` (held) → `expired` when the holder's lease lapses and another
//! worker may reacquire it → `active` again on reacquisition; `closed` (terminal) when
//! its holder closes it, when its TTL passes, or when its lease lapses and reacquisition
//! is not allowed. A session that ends for good fails its open activities with
//! `WorkerSessionUnavailable` (the reason names why).

use serde_json::{json, Value};

use crate::clock::{format_timestamp, Millis};
use crate::error::{Error, RejectKind, Result};
use crate::kernel::sessions::{
    announce_holder, arm_deadline, end_session, lease_deadline, leased_count, load_session,
    new_session, put_session, reacquire,
};
use crate::kernel::Engine;
use crate::kernel::{self, Effects};
use crate::model::{SessionOptions, SessionStatus, TimerKey, WorkerRecord, WorkerSessionRecord};
use crate::storage::KvTxn;
use crate::sync::Arc;
use crate::tables;

/// Longest session page a list returns.
pub const MAX_SESSION_PAGE: usize = 500;

use crate::kernel::sessions::HOLDER_STALE_AFTER_MS;

/// What a lifecycle call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOutcome {
    Created,
    Reused,
    Reacquired,
    HeartbeatRecorded,
    AlreadyClosed,
    Closed,
}

impl SessionOutcome {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionOutcome::Created => "created",
            SessionOutcome::Reused => "reused",
            SessionOutcome::Reacquired => "reacquired",
            SessionOutcome::HeartbeatRecorded => "heartbeat_recorded",
            SessionOutcome::AlreadyClosed => "already_closed",
            SessionOutcome::Closed => "closed",
        }
    }
}

/// A session as the routes show it.
#[derive(Debug, Clone)]
pub struct SessionSnapshot {
    pub record: WorkerSessionRecord,
    /// Its activities leased now.
    pub active_activity_count: usize,
    /// The holder's registration, when it is registered.
    pub holder: Option<Arc<WorkerRecord>>,
    /// When it was read.
    pub now: Millis,
}

impl SessionSnapshot {
    /// `workerSessionSnapshot`.
    pub fn to_json(&self) -> Value {
        let r = &self.record;
        let ts = |ms: Option<Millis>| ms.map(format_timestamp);
        let holder = r.lease_owner.as_ref().map(|owner| match &self.holder {
            Some(w) => json!({
                "worker_id": owner,
                "task_queue": w.task_queue,
                "status": "registered",
                "last_heartbeat_at": format_timestamp(w.last_heartbeat_at_ms),
                "is_stale": self.now - w.last_heartbeat_at_ms > HOLDER_STALE_AFTER_MS,
            }),
            None => json!({
                "worker_id": owner,
                "task_queue": null,
                "status": "not_registered",
                "last_heartbeat_at": null,
                "is_stale": true,
            }),
        });
        json!({
            "session_id": r.options.session_id,
            "namespace": r.namespace,
            "connection": r.options.connection,
            "queue": r.options.queue,
            "requirements": r.options.requirements,
            "status": r.status_at(self.now).as_str(),
            "lease_owner": r.lease_owner,
            "holder": holder,
            "lease_expires_at": format_timestamp(r.lease_expires_at_ms),
            "ttl_expires_at": format_timestamp(r.ttl_expires_at_ms),
            "closed_at": ts(r.closed_at_ms),
            "failure_reason": r.failure_reason,
            "close_reason": r.close_reason,
            "lease_seconds": r.options.lease_seconds,
            "ttl_seconds": r.options.ttl_seconds,
            "max_concurrent_activities": r.options.max_concurrent_activities,
            "create_if_missing": r.options.create_if_missing,
            "allow_reacquire_after_failure": r.options.allow_reacquire_after_failure,
            "active_activity_count": self.active_activity_count,
            "last_heartbeat_at": ts(r.last_heartbeat_at_ms),
            "created_at": format_timestamp(r.created_at_ms),
            "updated_at": format_timestamp(r.updated_at_ms),
        })
    }
}

/// Counts of a namespace's sessions by status (`workerSessionMetrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionMetrics {
    pub total: u64,
    pub active: u64,
    pub closed: u64,
    pub expired: u64,
}

impl SessionMetrics {
    /// `workerSessionMetrics` (Keel has no `failed` or `orphaned` state: always 0).
    pub fn to_json(&self) -> Value {
        json!({
            "total": self.total, "active": self.active, "closed": self.closed,
            "expired": self.expired, "failed": 0, "orphaned": 0,
        })
    }
}

/// One page of a namespace's sessions, in session id order.
#[derive(Debug, Clone)]
pub struct SessionPage {
    pub sessions: Vec<SessionSnapshot>,
    pub metrics: SessionMetrics,
    /// Opaque: the next page starts after this.
    pub next_page_token: Option<String>,
}

fn not_found(session_id: &str) -> Error {
    Error::not_found(
        "session_not_found",
        format!("worker session '{session_id}' does not exist"),
    )
    .with("session_id", session_id)
}

fn closed(record: &WorkerSessionRecord) -> Error {
    Error::conflict(
        "session_closed",
        format!(
            "worker session '{}' is closed; a closed session id is never reused",
            record.options.session_id
        ),
    )
    .with("session_id", record.options.session_id.as_str())
    .with("failure_reason", record.failure_reason.clone())
}

fn encode_token(session_id: &str) -> String {
    session_id
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_token(token: &str) -> Option<String> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

impl Engine {
    /// `POST /worker/sessions`: `worker_id` creates the session, reuses the one it holds
    /// (renewing its lease), or reacquires one whose holder's lease lapsed.
    pub async fn create_worker_session(
        &self,
        ns: &str,
        worker_id: &str,
        options: SessionOptions,
    ) -> Result<(SessionOutcome, SessionSnapshot)> {
        let Some(worker) = self.worker(ns, worker_id).await? else {
            return Err(Error::reject(
                RejectKind::Precondition,
                "worker_not_registered",
                format!("worker '{worker_id}' must register before it holds a session"),
            ));
        };
        let missing: Vec<&String> = options
            .requirements
            .iter()
            .filter(|r| !worker.capabilities.contains(r))
            .collect();
        if !missing.is_empty() {
            return Err(Error::conflict(
                "session_requirements_not_met",
                "the worker did not register every capability the session requires",
            )
            .with("missing_requirements", json!(missing)));
        }
        let now = self.now_ms();
        let options = &options;
        let (outcome, record, active) = self
            .transact(move |tx| {
                Box::pin(async move {
                    let txn = tx.txn.as_mut();
                    let fx = &mut tx.fx;
                    kernel::require_namespace(txn, ns).await?;
                    let sid = options.session_id.as_str();
                    let Some(mut record) = load_session(txn, ns, sid).await? else {
                        if !options.create_if_missing {
                            return Err(Error::conflict(
                                "session_missing",
                                format!(
                                    "worker session '{sid}' does not exist and create_if_missing is false"
                                ),
                            ));
                        }
                        let mut record = new_session(ns, options, worker_id, now);
                        arm_deadline(txn, &mut record, fx)?;
                        put_session(txn, &record)?;
                        announce_holder(txn, &record, fx).await?;
                        return Ok((SessionOutcome::Created, record, 0));
                    };
                    if record.status == SessionStatus::Closed || now >= record.ttl_expires_at_ms {
                        return Err(closed(&record));
                    }
                    let held = kernel::sessions::held(txn, &record, now).await?;
                    let outcome = if held {
                        if record.lease_owner.as_deref() != Some(worker_id) {
                            return Err(Error::conflict(
                                "session_owned_by_another_worker",
                                format!("worker session '{sid}' is held by another worker"),
                            )
                            .with("lease_owner", record.lease_owner.clone()));
                        }
                        record.lease_expires_at_ms =
                            lease_deadline(&record, record.options.lease_seconds, now);
                        record.last_heartbeat_at_ms = Some(now);
                        record.updated_at_ms = now;
                        SessionOutcome::Reused
                    } else {
                        if !record.options.allow_reacquire_after_failure {
                            return Err(Error::conflict(
                                "session_reacquire_disallowed",
                                format!(
                                    "the holder of worker session '{sid}' lost it and the session does not allow reacquisition"
                                ),
                            ));
                        }
                        reacquire(txn, &mut record, worker_id, now, fx).await?;
                        SessionOutcome::Reacquired
                    };
                    put_session(txn, &record)?;
                    let active = leased_count(txn, ns, sid, "").await?;
                    Ok((outcome, record, active))
                })
            })
            .await?;
        Ok((outcome, self.snapshot(record, active, now).await?))
    }

    /// `POST /worker/sessions/{id}/heartbeat`: the holder renews its lease (by
    /// `lease_seconds`, or the session's own lease length).
    pub async fn heartbeat_worker_session(
        &self,
        ns: &str,
        session_id: &str,
        worker_id: &str,
        lease_seconds: Option<u64>,
    ) -> Result<SessionSnapshot> {
        let now = self.now_ms();
        let (record, active) = self
            .transact(move |tx| {
                Box::pin(async move {
                    let txn = tx.txn.as_mut();
                    let fx = &mut tx.fx;
                    let Some(mut record) = load_session(txn, ns, session_id).await? else {
                        return Err(not_found(session_id));
                    };
                    if record.status == SessionStatus::Closed {
                        return Err(closed(&record));
                    }
                    if record.status_at(now) != SessionStatus::Active {
                        return Err(Error::conflict(
                            "session_not_active",
                            format!(
                                "the lease on worker session '{session_id}' lapsed; create it again to reacquire it"
                            ),
                        )
                        .with("status", record.status_at(now).as_str()));
                    }
                    if record.lease_owner.as_deref() != Some(worker_id) {
                        return Err(Error::conflict(
                            "session_owner_mismatch",
                            format!("worker session '{session_id}' is held by another worker"),
                        )
                        .with("lease_owner", record.lease_owner.clone()));
                    }
                    let lease = lease_seconds.unwrap_or(record.options.lease_seconds);
                    record.lease_expires_at_ms = lease_deadline(&record, lease, now);
                    record.last_heartbeat_at_ms = Some(now);
                    record.updated_at_ms = now;
                    // A shorter lease than the armed timer expects needs an earlier timer.
                    if record
                        .timer
                        .as_ref()
                        .is_none_or(|t| t.fire_at_ms > record.lease_expires_at_ms)
                    {
                        arm_deadline(txn, &mut record, fx)?;
                    }
                    put_session(txn, &record)?;
                    let active = leased_count(txn, ns, session_id, "").await?;
                    Ok((record, active))
                })
            })
            .await?;
        self.snapshot(record, active, now).await
    }

    /// `DELETE /worker/sessions/{id}`: its holder (or last holder) closes it for good;
    /// its open activities fail. Closing a closed session is `already_closed`.
    pub async fn close_worker_session(
        &self,
        ns: &str,
        session_id: &str,
        worker_id: &str,
        reason: Option<&str>,
    ) -> Result<(SessionOutcome, SessionSnapshot)> {
        let now = self.now_ms();
        let (outcome, record) = self
            .transact(move |tx| {
                Box::pin(async move {
                    let txn = tx.txn.as_mut();
                    let fx = &mut tx.fx;
                    let Some(mut record) = load_session(txn, ns, session_id).await? else {
                        return Err(not_found(session_id));
                    };
                    if record.status == SessionStatus::Closed {
                        return Ok((SessionOutcome::AlreadyClosed, record));
                    }
                    if record.lease_owner.as_deref() != Some(worker_id) {
                        return Err(Error::conflict(
                            "session_owner_mismatch",
                            format!("worker session '{session_id}' is held by another worker"),
                        )
                        .with("lease_owner", record.lease_owner.clone()));
                    }
                    record.close_reason = reason.map(str::to_string);
                    end_session(txn, &mut record, "session_closed", now, fx).await?;
                    Ok((SessionOutcome::Closed, record))
                })
            })
            .await?;
        Ok((outcome, self.snapshot(record, 0, now).await?))
    }

    /// One session (`GET /worker-sessions/{id}`).
    pub async fn worker_session(&self, ns: &str, session_id: &str) -> Result<SessionSnapshot> {
        let now = self.now_ms();
        let mut txn = self.inner.store.begin().await?;
        kernel::require_namespace(txn.as_mut(), ns).await?;
        let Some(record) = load_session(txn.as_mut(), ns, session_id).await? else {
            return Err(not_found(session_id));
        };
        let active = leased_count(txn.as_mut(), ns, session_id, "").await?;
        drop(txn);
        self.snapshot(record, active, now).await
    }

    /// A page of a namespace's sessions (`GET /worker-sessions`), with the namespace's
    /// counts by status.
    pub async fn worker_sessions(
        &self,
        ns: &str,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<SessionPage> {
        let now = self.now_ms();
        let after = match page_token {
            None => None,
            Some(t) => Some(decode_token(t).ok_or_else(|| {
                Error::invalid(
                    "next_page_token",
                    "next_page_token is not a token this server issued",
                )
            })?),
        };
        let page_size = page_size.clamp(1, MAX_SESSION_PAGE);
        let mut txn = self.inner.store.begin().await?;
        kernel::require_namespace(txn.as_mut(), ns).await?;
        // Counts over every session of the namespace (bounded scan).
        let mut metrics = SessionMetrics::default();
        let mut rest = Some(tables::worker_sessions_range(ns));
        let mut page: Vec<WorkerSessionRecord> = Vec::new();
        let mut more = false;
        while let Some(range) = rest {
            let (records, next) = tables::read_records(txn.as_mut(), range, 1024).await?;
            rest = next;
            for (_, bytes) in records {
                let record: WorkerSessionRecord = tables::decode_record(&bytes)?;
                metrics.total += 1;
                match record.status_at(now) {
                    SessionStatus::Active => metrics.active += 1,
                    SessionStatus::Expired => metrics.expired += 1,
                    SessionStatus::Closed => metrics.closed += 1,
                }
                let past_token = after
                    .as_deref()
                    .is_none_or(|a| record.options.session_id.as_str() > a);
                if past_token {
                    if page.len() < page_size {
                        page.push(record);
                    } else {
                        more = true;
                    }
                }
            }
            if metrics.total >= 100_000 {
                break;
            }
        }
        let mut sessions = Vec::with_capacity(page.len());
        let mut counts = Vec::with_capacity(page.len());
        for record in &page {
            counts.push(leased_count(txn.as_mut(), ns, &record.options.session_id, "").await?);
        }
        drop(txn);
        let next_page_token = more
            .then(|| page.last().map(|r| encode_token(&r.options.session_id)))
            .flatten();
        for (record, active) in page.into_iter().zip(counts) {
            sessions.push(self.snapshot(record, active, now).await?);
        }
        Ok(SessionPage {
            sessions,
            metrics,
            next_page_token,
        })
    }

    async fn snapshot(
        &self,
        record: WorkerSessionRecord,
        active_activity_count: usize,
        now: Millis,
    ) -> Result<SessionSnapshot> {
        let holder = match &record.lease_owner {
            Some(owner) => self.worker(&record.namespace, owner).await?,
            None => None,
        };
        Ok(SessionSnapshot {
            record,
            active_activity_count,
            holder,
            now,
        })
    }
}

/// A session's deadline timer fired: a TTL that passed ends the session; a lease that
/// lapsed makes it `expired` (reacquirable) or ends it; a deadline that moved re-arms
/// the timer. Stale unless the session still names this timer.
pub(crate) async fn fire_deadline(
    txn: &mut dyn KvTxn,
    ns: &str,
    session_id: &str,
    timer: &TimerKey,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let Some(mut record) = load_session(txn, ns, session_id).await? else {
        return Ok(());
    };
    if record.timer.as_ref() != Some(timer) || record.status == SessionStatus::Closed {
        return Ok(());
    }
    record.timer = None;
    if now >= record.ttl_expires_at_ms {
        tracing::info!(session_id, "worker session ttl expired");
        return end_session(txn, &mut record, "ttl_expired", now, fx).await;
    }
    if record.status == SessionStatus::Active && now >= record.lease_expires_at_ms {
        if !record.options.allow_reacquire_after_failure {
            tracing::info!(session_id, "worker session lease lapsed; session ends");
            return end_session(txn, &mut record, "lease_expired", now, fx).await;
        }
        tracing::info!(
            session_id,
            "worker session lease lapsed; it may be reacquired"
        );
        record.status = SessionStatus::Expired;
        record.failure_reason = Some("lease_expired".into());
        record.updated_at_ms = now;
        arm_deadline(txn, &mut record, fx)?;
        put_session(txn, &record)?;
        return announce_holder(txn, &record, fx).await;
    }
    arm_deadline(txn, &mut record, fx)?;
    put_session(txn, &record)
}
