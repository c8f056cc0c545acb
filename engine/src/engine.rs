//! The engine: opens on a store, owns the matching index and the timer service, and
//! runs every state transition as one idempotent transaction through the retry runner.
//! Post-commit effects (hints for pollers, timers for the timer service) are applied only
//! after the transaction is durable.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::clock::{Clock, Millis};
use crate::error::{Error, Result};
use crate::matching::{Matching, QueueKey, TaskHint};
use crate::model::{NamespaceRecord, TaskKind, TaskRecord, TaskStatus, TimerKey, WorkerRecord};
use crate::storage::retry::{self, RetryPolicy};
use crate::storage::{KvStore, KvTxn, ReadOptions};
use crate::sync::Arc;
use crate::timers::{TimerHandler, Timers};
use crate::{ids, keys, tables};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How long a workflow task lease lasts unless renewed.
    pub workflow_task_lease: Duration,
    /// How long an activity task lease lasts unless renewed.
    pub activity_task_lease: Duration,
    /// The namespace created at first start.
    pub default_namespace: String,
    /// Longest long-poll a worker may ask for.
    pub max_poll_timeout: Duration,
    /// Bounds on parked long-polls.
    pub park_limits: crate::matching::ParkLimits,
    /// Admission: at most this many leased tasks per queue and kind (`None`: unbounded).
    pub max_leases_per_queue: Option<u64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workflow_task_lease: Duration::from_secs(300),
            activity_task_lease: Duration::from_secs(300),
            default_namespace: "default".into(),
            max_poll_timeout: Duration::from_secs(60),
            park_limits: crate::matching::ParkLimits::default(),
            max_leases_per_queue: None,
        }
    }
}

/// What a committed transaction asks of the in-memory side.
#[derive(Default)]
pub(crate) struct Effects {
    pub ready: Vec<(QueueKey, TaskHint)>,
    pub timers: Vec<TimerKey>,
    /// Updates whose status changed: their waiting callers re-read them.
    pub updates: Vec<String>,
}

impl Effects {
    pub fn ready(&mut self, task: &TaskRecord) {
        self.ready.push((
            QueueKey::new(&task.namespace, &task.task_queue, task.kind),
            TaskHint {
                task_id: task.task_id.as_str().into(),
                type_name: task.type_name.as_str().into(),
                priority: task.priority,
                ready_at_ms: task.ready_at_ms,
                compatibility: task.compatibility.as_deref().map(Into::into),
            },
        ));
    }
}

pub(crate) struct Inner {
    pub store: Arc<dyn KvStore>,
    pub clock: Arc<dyn Clock>,
    pub config: EngineConfig,
    pub matching: Matching,
    pub timers: Arc<Timers>,
    pub workers: Mutex<HashMap<(String, String), Arc<WorkerRecord>>>,
    /// Namespaces known to exist (namespaces are never deleted, so a hit stays true).
    pub namespaces: Mutex<std::collections::HashSet<String>>,
    /// Drain intent per cohort key, cached from storage.
    pub cohorts: Mutex<HashMap<Vec<u8>, bool>>,
    /// Recent polls by `poll_request_id`, so a retried poll gets its task back.
    pub poll_requests: crate::workflow::PollRequests,
    /// Query tasks and callers waiting on updates (in memory only).
    pub queries: crate::queries::Queries,
    /// Which worker cached which run's history, and until when (advisory, in memory).
    pub sticky: crate::workflow::StickyRuns,
    pub stop: watch::Sender<bool>,
    /// The timer service task, awaited by [`Engine::stop`].
    pub timer_service: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

struct TimerBridge(std::sync::Weak<Inner>);

impl TimerHandler for TimerBridge {
    fn fire(
        &self,
        timer: TimerKey,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + '_>> {
        Box::pin(async move {
            match self.0.upgrade() {
                Some(inner) => Engine { inner }.fire_timer(timer).await,
                None => Ok(()),
            }
        })
    }
}

impl Engine {
    /// Opens the engine on `store`: creates the default namespace on first start,
    /// rebuilds the ready index from storage, and starts the timer service.
    pub async fn open(
        store: Arc<dyn KvStore>,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
    ) -> Result<Engine> {
        let (stop, stop_rx) = watch::channel(false);
        let park_limits = config.park_limits;
        let inner = Arc::new(Inner {
            store,
            clock,
            config,
            matching: Matching::with_limits(park_limits),
            timers: Arc::new(Timers::default()),
            workers: Mutex::new(HashMap::new()),
            namespaces: Mutex::new(std::collections::HashSet::new()),
            cohorts: Mutex::new(HashMap::new()),
            poll_requests: Default::default(),
            queries: Default::default(),
            sticky: Default::default(),
            stop,
            timer_service: Mutex::new(None),
        });
        let engine = Engine { inner };
        engine.ensure_schema_version().await?;
        engine
            .ensure_namespace(&engine.inner.config.default_namespace.clone())
            .await?;
        engine.rebuild_ready_index().await?;
        let handler: Arc<dyn TimerHandler> = Arc::new(TimerBridge(Arc::downgrade(&engine.inner)));
        let service = tokio::spawn(engine.inner.timers.clone().run(
            engine.inner.store.clone(),
            engine.inner.clock.clone(),
            handler,
            stop_rx,
        ));
        *engine
            .inner
            .timer_service
            .lock()
            .expect("invariant: handle lock not poisoned") = Some(service);
        Ok(engine)
    }

    /// Asks the timer service to stop. In-flight requests finish; the store stays open.
    pub fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
    }

    /// Stops the timer service and waits until it has (a timer it was firing has then
    /// committed or not, and nothing of this engine fires any more).
    pub async fn stop(&self) {
        self.shutdown();
        let service = self
            .inner
            .timer_service
            .lock()
            .expect("invariant: handle lock not poisoned")
            .take();
        if let Some(service) = service {
            let _ = service.await;
        }
    }

    /// The current time on the engine's clock.
    pub fn now_ms(&self) -> Millis {
        self.inner.clock.now_ms()
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The store the engine runs on.
    pub fn store(&self) -> &Arc<dyn KvStore> {
        &self.inner.store
    }

    /// Runs `body` as one transaction through the retry runner, then applies its effects.
    pub(crate) async fn transact<T, F, Fut>(&self, body: F) -> Result<T>
    where
        F: FnMut(Box<dyn KvTxn>, Effects) -> Fut,
        Fut: std::future::Future<Output = Result<(Box<dyn KvTxn>, (T, Effects))>>,
    {
        self.transact_noting_unknown(body).await.0
    }

    /// Like [`Engine::transact`], for a worker's report on a task it leased. When an
    /// attempt's commit result was unknown and the retry then finds the lease gone, that
    /// attempt applied the report: the caller gets success, not a lease error.
    pub(crate) async fn transact_report<F, Fut>(
        &self,
        task_id: &str,
        outcome: &'static str,
        body: F,
    ) -> Result<crate::workflow::TaskOutcome>
    where
        F: FnMut(Box<dyn KvTxn>, Effects) -> Fut,
        Fut: std::future::Future<
            Output = Result<(Box<dyn KvTxn>, (crate::workflow::TaskOutcome, Effects))>,
        >,
    {
        match self.transact_noting_unknown(body).await {
            (Err(Error::Rejected { reason, .. }), true)
                if crate::workflow::is_lease_loss(reason) =>
            {
                Ok(crate::workflow::TaskOutcome {
                    task_id: task_id.to_string(),
                    outcome,
                    recorded: true,
                    run_id: String::new(),
                    run_status: "unknown",
                    next_task_id: None,
                })
            }
            (result, _) => result,
        }
    }

    /// Runs a transaction; also tells whether some attempt's commit result was unknown.
    async fn transact_noting_unknown<T, F, Fut>(&self, mut body: F) -> (Result<T>, bool)
    where
        F: FnMut(Box<dyn KvTxn>, Effects) -> Fut,
        Fut: std::future::Future<Output = Result<(Box<dyn KvTxn>, (T, Effects))>>,
    {
        let mut unknown = false;
        // Effects of an attempt whose commit may have applied are applied too: hints and
        // timers are re-checked against storage, so a spurious one costs a lookup, while a
        // missing one would strand a ready task or a lease.
        let result = retry::run_reporting_unknown(
            self.inner.store.as_ref(),
            RetryPolicy::default(),
            |txn, _| body(txn, Effects::default()),
            |(_, effects): (T, Effects)| {
                unknown = true;
                self.apply(effects);
            },
        )
        .await;
        match result {
            Ok((value, effects)) => {
                self.apply(effects);
                (Ok(value), unknown)
            }
            Err(e) => (Err(e), unknown),
        }
    }

    pub(crate) fn apply(&self, effects: Effects) {
        for (key, hint) in effects.ready {
            self.inner.matching.offer(&key, hint);
        }
        for timer in effects.timers {
            self.inner.timers.schedule(timer);
        }
        for update_id in effects.updates {
            self.inner.queries.wake_update(&update_id);
        }
    }

    async fn rebuild_ready_index(&self) -> Result<()> {
        let mut range = tables::ready_range();
        let mut total = 0usize;
        loop {
            let mut txn = self.inner.store.begin().await?;
            let page = txn
                .get_range(&range, ReadOptions::limit(1024).snapshot())
                .await?;
            let full = page.len() == 1024;
            for (key, value) in &page {
                let mut r = keys::KeyReader::new(key);
                let parsed = (|| {
                    let ns = r.str()?;
                    let queue = r.str()?;
                    let kind = match r.u8()? {
                        1 => TaskKind::Workflow,
                        2 => TaskKind::Activity,
                        _ => return None,
                    };
                    let priority = r.u8()?;
                    let ready_at_ms = r.i64()?;
                    let task_id = r.str()?;
                    Some((
                        QueueKey::new(&ns, &queue, kind),
                        priority,
                        ready_at_ms,
                        task_id,
                    ))
                })();
                let Some((qk, priority, ready_at_ms, task_id)) = parsed else {
                    return Err(Error::corrupt("ready index key"));
                };
                let (type_name, compatibility) = tables::decode_ready_value(value);
                self.inner.matching.offer(
                    &qk,
                    TaskHint {
                        task_id: task_id.into(),
                        type_name: type_name.into(),
                        priority,
                        ready_at_ms,
                        compatibility: compatibility.map(Into::into),
                    },
                );
                total += 1;
            }
            match (full, page.last()) {
                (true, Some((last, _))) => range.start = std::ops::Bound::Excluded(last.clone()),
                _ => break,
            }
        }
        tracing::info!(ready_tasks = total, "ready index rebuilt from storage");
        Ok(())
    }

    /// Creates a namespace if it does not exist yet.
    pub async fn ensure_namespace(&self, name: &str) -> Result<()> {
        let now = self.now_ms();
        let name = name.to_string();
        let name = &name;
        self.transact(move |mut txn, fx| async move {
            let key = tables::namespace_key(name);
            if tables::get::<NamespaceRecord>(txn.as_mut(), &key)
                .await?
                .is_none()
            {
                let record = NamespaceRecord {
                    name: name.clone(),
                    description: None,
                    retention_days: 30,
                    created_at_ms: now,
                    updated_at_ms: now,
                    ..NamespaceRecord::default()
                };
                tables::put(txn.as_mut(), &key, &record)?;
            }
            Ok((txn, ((), fx)))
        })
        .await
    }

    /// Fails with `namespace_not_found` unless `ns` exists.
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

    /// Reads a namespace.
    pub async fn namespace(&self, ns: &str) -> Result<Option<NamespaceRecord>> {
        let mut txn = self.inner.store.begin().await?;
        tables::get_snapshot(txn.as_mut(), &tables::namespace_key(ns)).await
    }

    // ---- tasks and timers, shared by the workflow and activity paths ----

    /// Creates a task record in `Ready` state with its ready-index entry.
    pub(crate) fn put_ready_task(
        txn: &mut dyn KvTxn,
        task: &TaskRecord,
        fx: &mut Effects,
    ) -> Result<()> {
        tables::put(txn, &tables::task_key(&task.task_id), task)?;
        txn.set(
            &tables::ready_key(
                &task.namespace,
                &task.task_queue,
                task.kind,
                task.priority,
                task.ready_at_ms,
                &task.task_id,
            ),
            &tables::ready_value(&task.type_name, task.compatibility.as_deref()),
        );
        Self::count(txn, task, tables::QueueCounter::Ready, 1);
        fx.ready(task);
        Ok(())
    }

    /// Adjusts a per-queue counter (an atomic add: never a conflict between transitions).
    pub(crate) fn count(
        txn: &mut dyn KvTxn,
        task: &TaskRecord,
        counter: tables::QueueCounter,
        delta: i64,
    ) {
        txn.atomic_add(
            &tables::queue_counter_key(&task.namespace, &task.task_queue, task.kind, counter),
            delta,
        );
    }

    /// Writes a timer row and returns its key.
    pub(crate) fn put_timer(
        txn: &mut dyn KvTxn,
        fire_at_ms: Millis,
        action: &crate::model::TimerAction,
        fx: &mut Effects,
    ) -> Result<TimerKey> {
        let key = TimerKey {
            fire_at_ms,
            timer_id: ids::new_id(fire_at_ms),
        };
        tables::put(txn, &tables::timer_key(&key), action)?;
        fx.timers.push(key.clone());
        Ok(key)
    }

    /// Deletes a task with its index entry and timers.
    pub(crate) async fn delete_task(txn: &mut dyn KvTxn, task_id: &str) -> Result<()> {
        let key = tables::task_key(task_id);
        let Some(task) = tables::get::<TaskRecord>(txn, &key).await? else {
            return Ok(());
        };
        Self::clear_task_state(txn, &task);
        crate::workflow::clear_activity_timeouts(txn, &task);
        tables::delete(txn, &key).await
    }

    /// Clears whatever index entry or timer the task's current state holds.
    pub(crate) fn clear_task_state(txn: &mut dyn KvTxn, task: &TaskRecord) {
        match task.status {
            TaskStatus::Ready => {
                txn.clear(&tables::ready_key(
                    &task.namespace,
                    &task.task_queue,
                    task.kind,
                    task.priority,
                    task.ready_at_ms,
                    &task.task_id,
                ));
                Self::count(txn, task, tables::QueueCounter::Ready, -1);
            }
            TaskStatus::Leased => {
                if let Some(lease) = &task.lease {
                    txn.clear(&tables::timer_key(&lease.timer));
                }
                Self::count(txn, task, tables::QueueCounter::Leased, -1);
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
            Self::count(txn, task, tables::QueueCounter::Leased, -1);
        }
        task.status = TaskStatus::Ready;
        task.lease = None;
        task.backoff_timer = None;
        task.ready_at_ms = now;
        if let Some(activity) = task.activity.as_mut() {
            activity.attempt_id = None;
        }
        Self::put_ready_task(txn, task, fx)
    }

    /// Fires every durable timer due now, inline (at most `limit`); returns how many
    /// fired. The timer service does the same in the background; both are idempotent,
    /// so tests and operator passes can use this to settle time deterministically.
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
        Ok(fired)
    }

    /// Fires one durable timer (idempotent).
    pub async fn fire_timer(&self, timer: TimerKey) -> Result<()> {
        let now = self.now_ms();
        let timer = &timer;
        self.transact(move |mut txn, mut fx| async move {
            let key = tables::timer_key(timer);
            let Some(action) = tables::get::<crate::model::TimerAction>(txn.as_mut(), &key).await? else {
                return Ok((txn, ((), fx)));
            };
            tables::delete(txn.as_mut(), &key).await?;
            match action {
                crate::model::TimerAction::LeaseExpiry { task_id } => {
                    let tkey = tables::task_key(&task_id);
                    if let Some(mut task) = tables::get::<TaskRecord>(txn.as_mut(), &tkey).await? {
                        let current = task.lease.as_ref().is_some_and(|l| l.timer == *timer);
                        if task.status == TaskStatus::Leased && current {
                            let expires = task.lease.as_ref().map(|l| l.expires_at_ms).unwrap_or(now);
                            if expires > now {
                                // Renewed by heartbeats: re-arm at the new expiry.
                                let next = Self::put_timer(
                                    txn.as_mut(),
                                    expires,
                                    &crate::model::TimerAction::LeaseExpiry { task_id: task_id.clone() },
                                    &mut fx,
                                )?;
                                if let Some(lease) = task.lease.as_mut() {
                                    lease.timer = next;
                                }
                                tables::put(txn.as_mut(), &tkey, &task)?;
                            } else {
                                tracing::info!(task_id = %task.task_id, attempt = task.attempt, "lease expired; task is ready again");
                                crate::metrics::lease_expired(task.kind);
                                Self::make_ready(txn.as_mut(), &mut task, now, &mut fx)?;
                            }
                        }
                    }
                }
                crate::model::TimerAction::TaskBackoff { task_id } => {
                    let tkey = tables::task_key(&task_id);
                    if let Some(mut task) = tables::get::<TaskRecord>(txn.as_mut(), &tkey).await? {
                        if task.status == TaskStatus::Backoff && task.backoff_timer.as_ref() == Some(timer) {
                            Self::make_ready(txn.as_mut(), &mut task, now, &mut fx)?;
                        }
                    }
                }
                crate::model::TimerAction::RunDeadline { namespace, run_id } => {
                    crate::workflow::time_out_run(txn.as_mut(), &namespace, &run_id, timer, now, &mut fx).await?;
                }
                crate::model::TimerAction::ActivityTimeout { task_id, timeout_kind, attempt_id, .. } => {
                    crate::workflow::fire_activity_timeout(
                        txn.as_mut(), timer, &task_id, &timeout_kind, attempt_id.as_deref(), now, &mut fx,
                    )
                    .await?;
                }
                crate::model::TimerAction::ParentClosePolicy { namespace, child_workflow_id, parent_run_id, policy } => {
                    crate::workflow::apply_parent_close_policy(
                        txn.as_mut(), &namespace, &child_workflow_id, &parent_run_id, &policy, now, &mut fx,
                    )
                    .await?;
                }
                crate::model::TimerAction::ScheduleFire { namespace, schedule_id } => {
                    crate::schedules::fire(txn.as_mut(), &namespace, &schedule_id, timer, now, &mut fx).await?;
                }
                crate::model::TimerAction::ScheduleRunClosed { namespace, schedule_id, workflow_id } => {
                    crate::schedules::run_closed(txn.as_mut(), &namespace, &schedule_id, &workflow_id, now, &mut fx).await?;
                }
                action @ (crate::model::TimerAction::WorkflowTimer { .. }
                | crate::model::TimerAction::ConditionTimeout { .. }
                | crate::model::TimerAction::ForgetClosedTask { .. }) => {
                    crate::workflow::waits::fire(txn.as_mut(), action, timer, now, &mut fx).await?;
                }
            }
            Ok((txn, ((), fx)))
        })
        .await
    }
}

/// Reads a JSON value as a `u64` when it is a non-negative integer.
pub(crate) fn as_u64(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64)
}
