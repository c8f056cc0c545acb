//! The engine: opens on a store, owns the matching index and the timer service, and
//! runs every state transition as one idempotent transaction through the retry runner.
//! Post-commit effects (hints for pollers, timers for the timer service) are applied only
//! after the transaction is durable.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::{Clock, Millis};
use crate::error::{Error, Result};
use crate::kernel::{self, Effects, Tx, TxFuture};
use crate::matching::{Matching, QueueKey, TaskHint};
use crate::model::{NamespaceRecord, TaskKind, TimerKey, WorkerRecord};
use crate::storage::{KvStore, ReadOptions};
use crate::sync::Arc;
use crate::timers::{TimerHandler, Timers};
use crate::{keys, tables};

mod hooks;
mod timers;

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

    /// Runs `body` as one transaction through the kernel's runner (events dispatched to
    /// the hooks before commit), then applies its effects.
    pub(crate) async fn transact<'env, T, F>(&self, body: F) -> Result<T>
    where
        F: for<'t> FnMut(&'t mut Tx<'env>) -> TxFuture<'t, T>,
    {
        self.transact_noting_unknown(body).await.0
    }

    /// Like [`Engine::transact`], for a worker's report on a task it leased. When an
    /// attempt's commit result was unknown and the retry then finds the lease gone, that
    /// attempt applied the report: the caller gets success, not a lease error.
    pub(crate) async fn transact_report<'env, F>(
        &self,
        task_id: &str,
        outcome: &'static str,
        body: F,
    ) -> Result<crate::workflow::TaskOutcome>
    where
        F: for<'t> FnMut(&'t mut Tx<'env>) -> TxFuture<'t, crate::workflow::TaskOutcome>,
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
    async fn transact_noting_unknown<'env, T, F>(&self, body: F) -> (Result<T>, bool)
    where
        F: for<'t> FnMut(&'t mut Tx<'env>) -> TxFuture<'t, T>,
    {
        let mut unknown = false;
        let result = kernel::run(
            self.inner.store.as_ref(),
            self.inner.clock.as_ref(),
            &hooks::Hooks,
            body,
            |effects| {
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
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                let key = tables::namespace_key(name);
                if tables::get::<NamespaceRecord>(txn, &key).await?.is_none() {
                    let record = NamespaceRecord {
                        name: name.clone(),
                        description: None,
                        retention_days: 30,
                        created_at_ms: now,
                        updated_at_ms: now,
                        ..NamespaceRecord::default()
                    };
                    tables::put(txn, &key, &record)?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Reads a namespace.
    pub async fn namespace(&self, ns: &str) -> Result<Option<NamespaceRecord>> {
        let mut txn = self.inner.store.begin().await?;
        tables::get_snapshot(txn.as_mut(), &tables::namespace_key(ns)).await
    }
}
