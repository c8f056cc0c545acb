//! The engine: opens on a store, owns the matching index and the timer service, and
//! runs every state transition as one idempotent transaction through the retry runner.
//! Post-commit effects (hints for pollers, timers for the timer service) are applied only
//! after the transaction is durable.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::clock::{Clock, Millis};
use crate::error::{Error, RejectKind, Result};
use crate::matching::{Matching, QueueKey, TaskHint, TypeFilter};
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
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workflow_task_lease: Duration::from_secs(300),
            activity_task_lease: Duration::from_secs(300),
            default_namespace: "default".into(),
            max_poll_timeout: Duration::from_secs(60),
        }
    }
}

/// What a committed transaction asks of the in-memory side.
#[derive(Default)]
pub(crate) struct Effects {
    pub ready: Vec<(QueueKey, TaskHint)>,
    pub timers: Vec<TimerKey>,
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
    pub stop: watch::Sender<bool>,
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
        let inner = Arc::new(Inner {
            store,
            clock,
            config,
            matching: Matching::new(),
            timers: Arc::new(Timers::default()),
            workers: Mutex::new(HashMap::new()),
            stop,
        });
        let engine = Engine { inner };
        engine
            .ensure_namespace(&engine.inner.config.default_namespace.clone())
            .await?;
        engine.rebuild_ready_index().await?;
        let handler: Arc<dyn TimerHandler> = Arc::new(TimerBridge(Arc::downgrade(&engine.inner)));
        tokio::spawn(engine.inner.timers.clone().run(
            engine.inner.store.clone(),
            engine.inner.clock.clone(),
            handler,
            stop_rx,
        ));
        Ok(engine)
    }

    /// Stops the timer service. In-flight requests finish; the store stays open.
    pub fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
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
    pub(crate) async fn transact<T, F, Fut>(&self, mut body: F) -> Result<T>
    where
        F: FnMut(Box<dyn KvTxn>, Effects) -> Fut,
        Fut: std::future::Future<Output = Result<(Box<dyn KvTxn>, (T, Effects))>>,
    {
        // Effects of an attempt whose commit may have applied are applied too: hints and
        // timers are re-checked against storage, so a spurious one costs a lookup, while a
        // missing one would strand a ready task or a lease.
        let (value, effects) = retry::run_reporting_unknown(
            self.inner.store.as_ref(),
            RetryPolicy::default(),
            |txn, _| body(txn, Effects::default()),
            |(_, effects): (T, Effects)| self.apply(effects),
        )
        .await?;
        self.apply(effects);
        Ok(value)
    }

    pub(crate) fn apply(&self, effects: Effects) {
        for (key, hint) in effects.ready {
            self.inner.matching.offer(&key, hint);
        }
        for timer in effects.timers {
            self.inner.timers.schedule(timer);
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
                let type_name = String::from_utf8_lossy(value).into_owned();
                self.inner.matching.offer(
                    &qk,
                    TaskHint {
                        task_id: task_id.into(),
                        type_name: type_name.into(),
                        priority,
                        ready_at_ms,
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

    // ---- workers ----

    /// Registers (or re-registers) a worker.
    pub async fn register_worker(&self, mut worker: WorkerRecord) -> Result<WorkerRecord> {
        let now = self.now_ms();
        worker.last_heartbeat_at_ms = now;
        let w = &worker;
        let saved = self
            .transact(move |mut txn, fx| async move {
                Self::require_namespace(txn.as_mut(), &w.namespace).await?;
                let key = tables::worker_key(&w.namespace, &w.worker_id);
                let mut record = w.clone();
                if let Some(existing) = tables::get::<WorkerRecord>(txn.as_mut(), &key).await? {
                    record.registered_at_ms = existing.registered_at_ms;
                }
                tables::put(txn.as_mut(), &key, &record)?;
                Ok((txn, (record, fx)))
            })
            .await?;
        self.cache_worker(saved.clone());
        Ok(saved)
    }

    fn cache_worker(&self, worker: WorkerRecord) {
        let key = (worker.namespace.clone(), worker.worker_id.clone());
        self.inner
            .workers
            .lock()
            .expect("invariant: worker cache not poisoned")
            .insert(key, Arc::new(worker));
    }

    /// Reads a worker registration (cached).
    pub async fn worker(&self, ns: &str, worker_id: &str) -> Result<Option<Arc<WorkerRecord>>> {
        let key = (ns.to_string(), worker_id.to_string());
        if let Some(w) = self
            .inner
            .workers
            .lock()
            .expect("invariant: worker cache not poisoned")
            .get(&key)
        {
            return Ok(Some(w.clone()));
        }
        let mut txn = self.inner.store.begin().await?;
        let found: Option<WorkerRecord> =
            tables::get_snapshot(txn.as_mut(), &tables::worker_key(ns, worker_id)).await?;
        Ok(found.map(|w| {
            self.cache_worker(w.clone());
            Arc::new(w)
        }))
    }

    /// Records a worker heartbeat; `worker_not_registered` if unknown.
    pub async fn heartbeat_worker(&self, ns: &str, worker_id: &str) -> Result<WorkerRecord> {
        let now = self.now_ms();
        let saved = self
            .transact(move |mut txn, fx| async move {
                let key = tables::worker_key(ns, worker_id);
                let Some(mut record) = tables::get::<WorkerRecord>(txn.as_mut(), &key).await?
                else {
                    return Err(Error::not_found(
                        "worker_not_registered",
                        format!("worker '{worker_id}' is not registered"),
                    ));
                };
                record.last_heartbeat_at_ms = now;
                tables::put(txn.as_mut(), &key, &record)?;
                Ok((txn, (record, fx)))
            })
            .await?;
        self.cache_worker(saved.clone());
        Ok(saved)
    }

    /// Removes a worker registration; `worker_not_found` if unknown.
    pub async fn deregister_worker(&self, ns: &str, worker_id: &str) -> Result<()> {
        self.transact(move |mut txn, fx| async move {
            let key = tables::worker_key(ns, worker_id);
            if tables::get::<WorkerRecord>(txn.as_mut(), &key)
                .await?
                .is_none()
            {
                return Err(Error::not_found(
                    "worker_not_found",
                    format!("worker '{worker_id}' is not registered"),
                ));
            }
            txn.clear(&key);
            Ok((txn, ((), fx)))
        })
        .await?;
        self.inner
            .workers
            .lock()
            .expect("invariant: worker cache not poisoned")
            .remove(&(ns.to_string(), worker_id.to_string()));
        Ok(())
    }

    /// The poll filter of a registered worker for `kind`, checking its queue.
    pub(crate) async fn poll_filter(
        &self,
        ns: &str,
        worker_id: &str,
        queue: &str,
        kind: TaskKind,
    ) -> Result<TypeFilter> {
        let Some(worker) = self.worker(ns, worker_id).await? else {
            return Err(Error::reject(
                RejectKind::Precondition,
                "worker_not_registered",
                format!("worker '{worker_id}' must register before polling"),
            ));
        };
        if worker.task_queue != queue {
            return Err(Error::conflict(
                "task_queue_mismatch",
                format!(
                    "worker '{worker_id}' registered for queue '{}', polled '{queue}'",
                    worker.task_queue
                ),
            ));
        }
        let types = match kind {
            TaskKind::Workflow => &worker.supported_workflow_types,
            TaskKind::Activity => &worker.supported_activity_types,
        };
        Ok(if types.is_empty() {
            None
        } else {
            Some(Arc::new(types.iter().cloned().collect::<HashSet<_>>()))
        })
    }

    /// Statistics of one matching queue (in-memory).
    pub fn queue_stats(
        &self,
        ns: &str,
        queue: &str,
        kind: TaskKind,
    ) -> crate::matching::QueueStats {
        self.inner.matching.stats(&QueueKey::new(ns, queue, kind))
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
            task.type_name.as_bytes(),
        );
        fx.ready(task);
        Ok(())
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
        tables::delete(txn, &key).await
    }

    /// Clears whatever index entry or timer the task's current state holds.
    pub(crate) fn clear_task_state(txn: &mut dyn KvTxn, task: &TaskRecord) {
        match task.status {
            TaskStatus::Ready => txn.clear(&tables::ready_key(
                &task.namespace,
                &task.task_queue,
                task.kind,
                task.priority,
                task.ready_at_ms,
                &task.task_id,
            )),
            TaskStatus::Leased => {
                if let Some(lease) = &task.lease {
                    txn.clear(&tables::timer_key(&lease.timer));
                }
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
        task.status = TaskStatus::Ready;
        task.lease = None;
        task.backoff_timer = None;
        task.ready_at_ms = now;
        if let Some(activity) = task.activity.as_mut() {
            activity.attempt_id = None;
        }
        Self::put_ready_task(txn, task, fx)
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
