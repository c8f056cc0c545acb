//! Long-polls and leases: a poll takes a ready hint or parks, then leases the task in a
//! storage transaction that re-checks it.

use crate::kernel::{self, Begin, PollRequestKey};
use crate::matching::Unparked;

use super::{
    check_workflow_lease, flush_deferred_signals, format_timestamp, history, ids, json, load_task,
    merge, tables, ActivityTaskView, Effects, Engine, Error, KvTxn, Lease, Map, Millis, Poll,
    QueueKey, RejectKind, Result, RunRecord, RunStatus, Take, TaskHint, TaskKind, TaskRecord,
    TaskStatus, Value, WorkflowTaskView,
};

impl Engine {
    /// Long-polls for a task of `kind`: leases the best ready task the worker accepts, or
    /// waits for one until the timeout. Returns the leased task record.
    ///
    /// With a `poll_request_id`, a retried poll (the SDK resends a poll whose response it
    /// lost) gets the task the first one leased, while that lease is still the worker's;
    /// concurrent duplicates wait for the first one's result.
    async fn poll_task(&self, poll: &Poll, kind: TaskKind) -> Result<Option<TaskRecord>> {
        let filter = self
            .poll_filter(&poll.namespace, &poll.worker_id, &poll.task_queue, kind)
            .await?;
        let Some(request_id) = poll.poll_request_id.as_deref() else {
            return self.poll_once(poll, kind, &filter).await;
        };
        let key = PollRequestKey {
            namespace: poll.namespace.clone(),
            queue: poll.task_queue.clone(),
            worker_id: poll.worker_id.clone(),
            request_id: request_id.to_string(),
            kind,
        };
        loop {
            match self.inner.poll_requests.begin(&key, self.now_ms()) {
                Begin::Lead(leader) => {
                    let result = self.poll_once(poll, kind, &filter).await;
                    if let Ok(task) = &result {
                        leader.finish(task.as_ref().map(|t| (t.task_id.clone(), t.attempt)));
                    }
                    return result;
                }
                Begin::Wait(mut done) => {
                    let _ = done.changed().await;
                }
                Begin::Done(Some((task_id, attempt))) => {
                    if let Some(task) = self
                        .still_leased(&poll.namespace, &task_id, attempt, &poll.worker_id)
                        .await?
                    {
                        return Ok(Some(task));
                    }
                    self.inner.poll_requests.forget(&key);
                }
                Begin::Done(None) => self.inner.poll_requests.forget(&key),
            }
        }
    }

    /// The task if it is still leased to `owner` at `attempt` with an unexpired lease.
    async fn still_leased(
        &self,
        ns: &str,
        task_id: &str,
        attempt: u32,
        owner: &str,
    ) -> Result<Option<TaskRecord>> {
        let mut txn = self.inner.store.begin().await?;
        let task: Option<TaskRecord> =
            tables::get_snapshot(txn.as_mut(), &tables::task_key(task_id)).await?;
        let now = self.now_ms();
        Ok(task.filter(|t| {
            t.namespace == ns
                && t.status == TaskStatus::Leased
                && t.attempt == attempt
                && t.lease
                    .as_ref()
                    .is_some_and(|l| l.owner == owner && l.expires_at_ms > now)
        }))
    }

    /// One long-poll without idempotency.
    async fn poll_once(
        &self,
        poll: &Poll,
        kind: TaskKind,
        filter: &crate::matching::PollFilter,
    ) -> Result<Option<TaskRecord>> {
        let key = QueueKey::new(&poll.namespace, &poll.task_queue, kind);
        let timeout = poll.timeout.min(self.inner.config.max_poll_timeout);
        let deadline = self.now_ms() + timeout.as_millis() as Millis;
        'poll: loop {
            let waiter_id = self.inner.matching.waiter_id();
            let hint = match self.inner.matching.take_or_park(&key, filter, waiter_id) {
                Take::Hint(hint) => hint,
                Take::Full => {
                    return Err(Error::reject(
                        RejectKind::Throttled,
                        "long_poll_capacity_exhausted",
                        "too many long-polls are parked on this server; retry shortly",
                    )
                    .with("poll_status", "long_poll_capacity_exhausted")
                    .with("task", Value::Null)
                    .with(
                        "task_kind",
                        match kind {
                            TaskKind::Workflow => "workflow_task",
                            TaskKind::Activity => "activity_task",
                        },
                    )
                    .with("task_queue", poll.task_queue.as_str())
                    .with("retryable", true)
                    .with("retry_after_seconds", 1));
                }
                Take::Parked(slot) => {
                    // Tasks made ready on other nodes sharing the store reach us this way.
                    if let Some(cluster) = &self.inner.cluster {
                        cluster.poller_parked(&key);
                    }
                    let mut guard = ParkGuard {
                        engine: self,
                        key: &key,
                        waiter_id,
                        slot: &slot,
                        armed: true,
                    };
                    if self.now_ms() < deadline {
                        tokio::select! {
                            _ = slot.notify.notified() => {}
                            _ = self.inner.clock.sleep_until(deadline) => {}
                        }
                    }
                    loop {
                        match guard.unpark() {
                            Unparked::Hint(hint) => break hint,
                            Unparked::Leased(task) => {
                                crate::metrics::eager_lease(kind, "delivered");
                                return Ok(Some(*task));
                            }
                            // A transaction is leasing this poller a task: its commit
                            // decides, within the time of a commit.
                            Unparked::Reserved => slot.notify.notified().await,
                            Unparked::Nothing if self.now_ms() >= deadline => return Ok(None),
                            Unparked::Nothing => continue 'poll,
                        }
                    }
                }
            };
            let generation = hint
                .session
                .as_deref()
                .map(|s| self.inner.matching.session_generation(&key.namespace, s));
            // Should this poll be cancelled during the lease, the hint goes back.
            let mut held = HeldHint {
                matching: &self.inner.matching,
                key: &key,
                hint: Some(hint),
            };
            let outcome = self.lease(&key, &poll.worker_id, held.hint()).await;
            let hint = held.take();
            match outcome {
                Ok(Leased::Task(task)) => return Ok(Some(*task)),
                // A stale hint (the task was leased elsewhere or is gone): try the next
                // one; the loop ends when the index has nothing left for this poller.
                Ok(Leased::Stale) => {}
                // Another worker holds the task's session: matching learns it, and the
                // hint goes back for that worker's pollers.
                Ok(Leased::HeldBy(owner, until)) => {
                    if let Some(session) = hint.session.as_deref() {
                        self.inner.matching.set_session_holder(
                            &key.namespace,
                            session,
                            Some((&owner, until)),
                        );
                    }
                    self.inner.matching.offer(&key, hint);
                }
                // The session runs as many activities as it may: the hint waits until one
                // of them leaves its lease.
                Ok(Leased::Full) => {
                    let session = hint.session.clone().unwrap_or_else(|| "".into());
                    if let Some(hint) = self.inner.matching.hold_for_session(
                        &session,
                        generation.unwrap_or(0),
                        &key,
                        hint,
                    ) {
                        self.inner.matching.offer(&key, hint);
                    }
                }
                Err(e) => {
                    self.inner.matching.offer(&key, hint);
                    return Err(e);
                }
            }
        }
    }

    /// Leases the task behind `hint` if it is still ready (re-checked in storage), and,
    /// for an activity of a worker session, if the session admits the worker.
    async fn lease(&self, key: &QueueKey, worker_id: &str, hint: &TaskHint) -> Result<Leased> {
        let now = self.now_ms();
        let lease_ms = self.lease_ms(key.kind);
        let limit = self
            .inner
            .config
            .max_leases_per_queue
            .map(|max| (max, &self.inner.counts));
        self.transact(move |tx| {
            Box::pin(async move {
                // A lease lost to an OS crash is a lease that expired: the task is ready
                // again, and a report through the lost lease is refused unless the same
                // worker has leased the task again. So a lease need not wait for a sync;
                // the report that completes the task does.
                tx.txn.relax_durability();
                lease_task(
                    tx.txn.as_mut(),
                    key,
                    worker_id,
                    &hint.task_id,
                    now,
                    lease_ms,
                    limit,
                    &mut tx.fx,
                )
                .await
            })
        })
        .await
    }

    /// How long a lease of a `kind` task lasts, in milliseconds.
    fn lease_ms(&self, kind: TaskKind) -> Millis {
        match kind {
            TaskKind::Workflow => self.inner.config.workflow_task_lease,
            TaskKind::Activity => self.inner.config.activity_task_lease,
        }
        .as_millis() as Millis
    }

    /// Hands back a lease made eagerly for a poller that left before it was delivered:
    /// the task is ready again at the attempt it had, unless something else happened to
    /// it meanwhile. Should this fail, the lease lapses at its expiry like any other.
    pub(crate) fn hand_back(&self, leased: Box<TaskRecord>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        crate::metrics::eager_lease(leased.kind, "handed_back");
        let engine = self.clone();
        let handing_back = runtime.spawn(async move {
            let leased = &leased;
            let result = engine
                .transact(move |tx| {
                    Box::pin(async move {
                        let txn = tx.txn.as_mut();
                        let key = tables::task_key(&leased.task_id);
                        let Some(mut task) = tables::get::<TaskRecord>(txn, &key).await? else {
                            return Ok(());
                        };
                        let unchanged = task.status == TaskStatus::Leased
                            && task.attempt == leased.attempt
                            && task.lease == leased.lease;
                        if !unchanged {
                            return Ok(());
                        }
                        if let Some(lease) = &task.lease {
                            kernel::end_lease_scoped_timer(txn, &lease.timer, &mut tx.fx);
                        }
                        kernel::make_ready(txn, &mut task, tx.now, &mut tx.fx)?;
                        task.attempt = task.attempt.saturating_sub(1);
                        tables::put(txn, &key, &task)
                    })
                })
                .await;
            if let Err(e) = result {
                tracing::warn!(task_id = %leased.task_id, error = %e, "could not hand back an undelivered lease; it lapses at its expiry");
            }
        });
        // `stop` waits for it: a hand-back must not land after the engine stopped (a new
        // engine on the store would not learn of the task it made ready).
        let mut services = self
            .inner
            .services
            .lock()
            .expect("invariant: handle lock not poisoned");
        services.retain(|s| !s.is_finished());
        services.push(handing_back);
    }

    /// Long-polls for a workflow task.
    pub async fn poll_workflow_task(&self, poll: &Poll) -> Result<Option<WorkflowTaskView>> {
        let Some(task) = self.poll_task(poll, TaskKind::Workflow).await? else {
            return Ok(None);
        };
        let lease = task
            .lease
            .as_ref()
            .expect("invariant: a polled task is leased");
        let sticky_hit = self
            .inner
            .sticky
            .expects_hit(&task.run_id, &lease.owner, self.now_ms());
        // A sticky-capable worker gets only the first event inline, so it pages (and so
        // learns a resume token): later tasks then send only the tail after its cache.
        let sticky_capable = self
            .worker(&poll.namespace, &poll.worker_id)
            .await?
            .is_some_and(|w| w.capabilities.iter().any(|c| c == "sticky_execution"));
        let inline = if sticky_capable {
            1
        } else {
            poll.history_page_size
        };
        let mut txn = self.inner.store.begin().await?;
        let page = history::read_page_in(
            txn.as_mut(),
            &task.namespace,
            &task.run_id,
            1,
            task.history_seen,
            inline,
        )
        .await?;
        // The workflow's input is in its first event, which the page starts with.
        let arguments = match page.events.first() {
            Some(first) => history::started_input(first)?,
            None => history::workflow_input(txn.as_mut(), &task.namespace, &task.run_id).await?,
        };
        Ok(Some(WorkflowTaskView {
            task_kind: "workflow",
            workflow_task_attempt: task.attempt,
            workflow_id: task.workflow_id.clone(),
            run_id: task.run_id.clone(),
            workflow_type: task.type_name.clone(),
            payload_codec: "avro",
            arguments,
            next_history_page_token: page.more.then(|| history::encode_token(page.last_seq)),
            history_events: page.events,
            total_history_events: task.history_seen,
            last_history_sequence: task.history_seen,
            lease_owner: lease.owner.clone(),
            lease_expires_at: format_timestamp(lease.expires_at_ms),
            namespace: task.namespace.clone(),
            task_queue: task.task_queue.clone(),
            run_status: "running",
            workflow_update_id: task.workflow_update_id.clone(),
            sticky_replay_mode: sticky_hit.then_some("sticky_hit_expected"),
            task_id: task.task_id.clone(),
        }))
    }

    /// Long-polls for an activity task.
    pub async fn poll_activity_task(&self, poll: &Poll) -> Result<Option<ActivityTaskView>> {
        let Some(task) = self.poll_task(poll, TaskKind::Activity).await? else {
            return Ok(None);
        };
        let lease = task
            .lease
            .as_ref()
            .expect("invariant: a polled task is leased");
        let activity = task
            .activity
            .as_ref()
            .ok_or_else(|| Error::corrupt("activity task without activity state"))?;
        let worker_session = match &activity.worker_session {
            Some(options) => {
                let mut txn = self.inner.store.begin().await?;
                let record: Option<crate::model::WorkerSessionRecord> = tables::get_snapshot(
                    txn.as_mut(),
                    &tables::worker_session_key(&task.namespace, &options.session_id),
                )
                .await?;
                record.map(|r| r.affinity(self.now_ms()))
            }
            None => None,
        };
        Ok(Some(ActivityTaskView {
            task_id: task.task_id.clone(),
            activity_attempt_id: activity.attempt_id.clone().unwrap_or_default(),
            activity_execution_id: activity.activity_execution_id.clone(),
            activity_type: task.type_name.clone(),
            payload_codec: "avro",
            arguments: activity.arguments.clone(),
            attempt_number: activity.attempt_number,
            workflow_id: task.workflow_id.clone(),
            run_id: task.run_id.clone(),
            retry_policy: activity.retry_policy.clone().unwrap_or(Value::Null),
            task_queue: task.task_queue.clone(),
            lease_owner: lease.owner.clone(),
            lease_expires_at: format_timestamp(lease.expires_at_ms),
            namespace: task.namespace.clone(),
            worker_session,
        }))
    }

    /// Pages history for a leased workflow task: events after `after`, up to what the
    /// task covers.
    pub async fn workflow_task_history(
        &self,
        ns: &str,
        task_id: &str,
        owner: &str,
        attempt: u32,
        after: u64,
        page_size: usize,
    ) -> Result<history::Page> {
        let now = self.now_ms();
        let task = {
            let mut txn = self.inner.store.begin().await?;
            let task = load_task(txn.as_mut(), ns, task_id, TaskKind::Workflow).await?;
            check_workflow_lease(&task, owner, attempt, now)?;
            task
        };
        history::read_page(
            self.inner.store.as_ref(),
            ns,
            &task.run_id,
            // A token past the end (even `u64::MAX`) reads an empty page.
            after.saturating_add(1),
            task.history_seen,
            page_size,
        )
        .await
    }

    /// Renews a workflow task lease; returns the new expiry and the run's status (the
    /// Rust SDK keeps a claim only while the run is still open).
    pub async fn heartbeat_workflow_task(
        &self,
        ns: &str,
        task_id: &str,
        owner: &str,
        attempt: u32,
    ) -> Result<(Millis, RunStatus)> {
        let now = self.now_ms();
        let lease_ms = self.inner.config.workflow_task_lease.as_millis() as Millis;
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                let mut task = load_task(txn, ns, task_id, TaskKind::Workflow).await?;
                check_workflow_lease(&task, owner, attempt, now)?;
                let run: RunRecord = tables::get_snapshot(txn, &tables::run_key(ns, &task.run_id))
                    .await?
                    .ok_or_else(|| Error::corrupt("task without run"))?;
                let expires = now + lease_ms;
                if let Some(lease) = task.lease.as_mut() {
                    lease.expires_at_ms = expires;
                }
                tables::put(txn, &tables::task_key(task_id), &task)?;
                Ok((expires, run.status))
            })
        })
        .await
    }
}

/// Leases `task_id` to `worker_id` if it is still ready on `key`'s queue (re-checked in
/// `txn`), within the per-queue lease `limit` and, for an activity of a worker session, if
/// the session admits the worker. The one lease, whether a poll asked for it or the
/// transaction that made the task ready made it eagerly.
#[allow(clippy::too_many_arguments)]
async fn lease_task(
    txn: &mut dyn KvTxn,
    key: &QueueKey,
    worker_id: &str,
    task_id: &str,
    now: Millis,
    lease_ms: Millis,
    limit: Option<(u64, &kernel::QueueTally)>,
    fx: &mut Effects,
) -> Result<Leased> {
    let tkey = tables::task_key(task_id);
    let Some(mut task) = tables::get::<TaskRecord>(txn, &tkey).await? else {
        return Ok(Leased::Stale);
    };
    if task.status != TaskStatus::Ready
        || task.namespace != *key.namespace
        || task.task_queue != *key.queue
    {
        return Ok(Leased::Stale);
    }
    if let Some((max, counts)) = limit {
        let leased = counts
            .leased(txn, &task.namespace, &task.task_queue, task.kind)
            .await?;
        if leased >= max as i64 {
            return Err(Error::reject(
                RejectKind::Throttled,
                "queue_lease_limit_reached",
                format!(
                    "queue '{}' already has {leased} leased tasks (limit {max})",
                    task.task_queue
                ),
            )
            .with("poll_status", "throttled")
            .with("task", Value::Null)
            .with("retryable", true)
            .with("retry_after_seconds", 1));
        }
    }
    let session = task
        .activity
        .as_ref()
        .and_then(|a| a.worker_session.clone());
    if let Some(options) = session {
        use kernel::sessions::Admission;
        match kernel::sessions::admit(txn, &task, &options, worker_id, now, fx).await? {
            Admission::Admitted => {}
            Admission::HeldBy(owner, until) => return Ok(Leased::HeldBy(owner, until)),
            Admission::Full => return Ok(Leased::Full),
            Admission::Refused(reason) => {
                fail_session_activity(txn, &task, &reason, now, fx).await?;
                return Ok(Leased::Stale);
            }
        }
    }
    kernel::clear_task_state(txn, &task, fx);
    if task.kind == TaskKind::Workflow {
        let run: Option<RunRecord> =
            tables::get(txn, &tables::run_key(&task.namespace, &task.run_id)).await?;
        match run {
            Some(mut run) if !run.status.is_terminal() => {
                // Signals deferred under a lease that ended without a report
                // (it expired, or the task was repaired) join history now.
                if flush_deferred_signals(txn, &mut run, now).await? {
                    tables::put(txn, &tables::run_key(&run.namespace, &run.run_id), &run)?;
                }
                task.history_seen = run.last_event_seq
            }
            _ => {
                tables::delete(txn, &tkey).await?;
                return Ok(Leased::Stale);
            }
        }
    }
    let expires_at_ms = now + lease_ms;
    let timer = kernel::arm_lease_timer(txn, &task.task_id, expires_at_ms, fx)?;
    task.status = TaskStatus::Leased;
    kernel::count(txn, fx, &task, tables::QueueCounter::Leased, 1);
    task.attempt += 1;
    task.lease = Some(Lease {
        owner: worker_id.to_string(),
        expires_at_ms,
        timer,
    });
    if let Some(activity) = task.activity.as_mut() {
        activity.attempt_id = Some(ids::new_id(now));
    }
    super::arm_activity_timeouts_on_lease(txn, &mut task, now, fx)?;
    tables::put(txn, &tkey, &task)?;
    Ok(Leased::Task(Box::new(task)))
}

/// Eager leases, run in a transaction before its commit: each task it made ready whose
/// queue has a parked poller that accepts it is leased to that poller here, and delivered
/// once committed (the poll's own lease transaction is saved). Only pollers parked on
/// this node (another node's are reached through the durable ready index), and not with a
/// per-queue lease limit (its refusal would fail the transaction that made the task).
pub(crate) async fn lease_eagerly(
    leases: &EagerLeases,
    txn: &mut dyn KvTxn,
    fx: &mut Effects,
) -> Result<()> {
    if !leases.enabled || fx.ready.is_empty() {
        return Ok(());
    }
    // The lease starts now, not when the transaction began: its poller may have parked
    // since, and must get the whole lease.
    let now = leases.clock.now_ms();
    let mut i = 0;
    while i < fx.ready.len() {
        let (key, hint) = &fx.ready[i];
        let Some(reservation) = crate::matching::Matching::reserve(&leases.matching, key, hint)
        else {
            i += 1;
            continue;
        };
        let (key, hint) = (key.clone(), hint.clone());
        let lease_ms = match key.kind {
            TaskKind::Workflow => leases.workflow_lease_ms,
            TaskKind::Activity => leases.activity_lease_ms,
        };
        let worker_id = reservation.worker_id().to_string();
        // A refusal drops the reservation: the poller goes back to its queue. Boxed: most
        // transactions lease nothing, and this future should not weigh on theirs.
        match Box::pin(lease_task(
            txn,
            &key,
            &worker_id,
            &hint.task_id,
            now,
            lease_ms,
            None,
            fx,
        ))
        .await?
        {
            Leased::Task(task) => {
                // Its ready-index entry, set and cleared in this transaction, need not
                // reach storage at all.
                if fx.indexed_here.iter().any(|id| **id == *task.task_id) {
                    txn.withdraw(&kernel::ready_key(&task));
                }
                fx.ready.remove(i);
                fx.eager.push((reservation, task));
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// What eager leasing needs (see [`lease_eagerly`]).
pub(crate) struct EagerLeases {
    pub enabled: bool,
    pub clock: crate::sync::Arc<dyn crate::clock::Clock>,
    pub matching: crate::sync::Arc<crate::matching::Matching>,
    pub workflow_lease_ms: Millis,
    pub activity_lease_ms: Millis,
}

/// What a lease attempt found.
enum Leased {
    /// The task, now leased to the poller.
    Task(Box<TaskRecord>),
    /// The hint was stale (the task is gone, leased, or just failed).
    Stale,
    /// Another worker holds the task's session (until the given time at least).
    HeldBy(String, Millis),
    /// The poller holds the task's session, which runs as many activities as it may.
    Full,
}

/// Fails a session activity that its session can no longer run (`reason`: why): an
/// `ActivityFailed` the workflow sees as `WorkerSessionUnavailable`, non-retryable.
pub(super) async fn fail_session_activity(
    txn: &mut dyn KvTxn,
    task: &TaskRecord,
    reason: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let Some(activity) = task.activity.clone() else {
        return Ok(());
    };
    let session_id = activity
        .worker_session
        .as_ref()
        .map(|o| o.session_id.clone())
        .unwrap_or_default();
    let message = format!("worker session '{session_id}' is unavailable: {reason}");
    let mut payload = json!({
        "sequence": activity.sequence,
        "activity_type": task.type_name,
        "activity_execution_id": activity.activity_execution_id,
        "activity_attempt_id": activity.attempt_id,
        "attempt_number": activity.attempt_number,
        "message": message,
        "exception_type": "WorkerSessionUnavailable",
        "exception_class": null,
        "code": null,
        "non_retryable": true,
        "failure_category": "worker_session",
        "worker_session_id": session_id,
        "reason": reason,
        "exception": {
            "type": "WorkerSessionUnavailable",
            "class": null,
            "message": message,
            "stack_trace": null,
            "details": null,
        },
    });
    payload = merge(payload, activity.group.as_object().unwrap_or(&Map::new()));
    Engine::resolve_activity(
        txn,
        &task.namespace,
        task,
        "ActivityFailed",
        payload,
        now,
        fx,
    )
    .await?;
    Ok(())
}

/// A worker session ended for good: its open activities (ready, backing off or running)
/// fail with `reason`. Runs in the transaction that ended it.
pub(crate) async fn fail_session_activities(
    txn: &mut dyn KvTxn,
    ns: &str,
    session_id: &str,
    reason: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    for task in kernel::sessions::session_tasks(txn, ns, session_id).await? {
        tracing::info!(task_id = %task.task_id, session_id, reason, "session activity fails: its session ended");
        fail_session_activity(txn, &task, reason, now, fx).await?;
    }
    Ok(())
}

/// Unparks a poller when its wait ends or its future is dropped (client gone), and
/// re-offers a hint it was handed but will not use, so no hint is lost.
struct ParkGuard<'a> {
    engine: &'a Engine,
    key: &'a QueueKey,
    waiter_id: u64,
    slot: &'a crate::matching::Slot,
    armed: bool,
}

impl ParkGuard<'_> {
    /// Leaves the queue ([`crate::matching::Matching::unpark`]); the guard is done unless
    /// a reservation is pending.
    fn unpark(&mut self) -> Unparked {
        let unparked = self
            .engine
            .inner
            .matching
            .unpark(self.key, self.waiter_id, self.slot);
        self.armed = matches!(unparked, Unparked::Reserved);
        unparked
    }
}

/// A hint a poll is leasing: should the poll be cancelled before the lease's outcome is
/// known, the hint goes back to the index (a task whose lease did commit meanwhile only
/// costs the next poller a stale hint; a lost hint would strand a ready task).
struct HeldHint<'a> {
    matching: &'a crate::matching::Matching,
    key: &'a QueueKey,
    hint: Option<TaskHint>,
}

impl HeldHint<'_> {
    fn hint(&self) -> &TaskHint {
        self.hint.as_ref().expect("invariant: held until taken")
    }

    fn take(&mut self) -> TaskHint {
        self.hint.take().expect("invariant: taken once")
    }
}

impl Drop for HeldHint<'_> {
    fn drop(&mut self) {
        if let Some(hint) = self.hint.take() {
            self.matching.offer(self.key, hint);
        }
    }
}

/// A poll cancelled while parked: what was handed to it goes back, a hint to the index
/// and an eager lease to storage.
impl Drop for ParkGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let matching = &self.engine.inner.matching;
        match matching.abandon(self.key, self.waiter_id, self.slot) {
            Unparked::Hint(hint) => matching.offer(self.key, hint),
            Unparked::Leased(task) => self.engine.hand_back(task),
            Unparked::Nothing | Unparked::Reserved => {}
        }
    }
}

impl Engine {
    /// Notes a completion's `sticky_cache` claim (or its absence) for the run.
    pub fn note_sticky_cache(&self, run_id: &str, claim: Option<&Value>) {
        let worker = claim
            .and_then(|c| c.get("worker_id"))
            .and_then(Value::as_str);
        match worker {
            Some(worker) => {
                let ttl = claim
                    .and_then(|c| c.get("ttl_seconds"))
                    .and_then(Value::as_u64)
                    .unwrap_or(300);
                self.inner
                    .sticky
                    .remember(run_id, worker, ttl, self.now_ms());
            }
            None => self.inner.sticky.forget(run_id),
        }
    }
}
