//! The engine handle: the store, the clock, the matching index, the timer service, the
//! in-memory memories, and the one entry point every state transition goes through
//! ([`Engine::transact`]: an idempotent transaction through the retry runner, whose
//! post-commit effects (hints for pollers, timers for the timer service) are applied
//! only after it is durable). Subsystems add their operations in `impl Engine` blocks;
//! `wiring` opens it and installs the cross-subsystem reactions.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::clock::{Clock, Millis};
use crate::cluster::Cluster;
use crate::error::Result;
use crate::matching::Matching;
use crate::model::{NamespaceRecord, WorkerRecord};
use crate::storage::{KvStore, ReadOptions};
use crate::sync::Arc;
use crate::tables;
use crate::timers::Timers;

use super::{Effects, EngineConfig, Tx, TxFuture};

/// How long a node sharing the store trusts its caches of other nodes' writes (worker
/// registrations, cohort drain intent).
const CLUSTER_CACHE_MS: Millis = 1_000;

/// `(namespace, worker_id)`.
type WorkerId = (String, String);

pub(crate) struct Inner {
    pub store: Arc<dyn KvStore>,
    pub clock: Arc<dyn Clock>,
    pub config: EngineConfig,
    pub matching: Arc<Matching>,
    pub timers: Arc<Timers>,
    /// Per-queue task counts (durable rows or in memory: see `queue_counts`).
    pub counts: super::QueueTally,
    /// Set when several nodes share the store.
    pub cluster: Option<Arc<Cluster>>,
    /// Worker registrations read or written here, with when they were cached.
    pub workers: Mutex<HashMap<WorkerId, (Arc<WorkerRecord>, Millis)>>,
    /// Namespaces known to exist (namespaces are never deleted, so a hit stays true).
    pub namespaces: Mutex<std::collections::HashSet<String>>,
    /// Drain intent per cohort key, cached from storage, with when it was cached.
    pub cohorts: Mutex<HashMap<Vec<u8>, (bool, Millis)>>,
    /// Recent polls by `poll_request_id`, so a retried poll gets its task back.
    pub poll_requests: super::PollRequests,
    /// Query tasks and callers waiting on updates (in memory only).
    pub queries: super::Queries,
    /// Which worker cached which run's history, and until when (advisory, in memory).
    pub sticky: super::StickyRuns,
    /// The cross-subsystem reactions every transaction runs (installed by `wiring`).
    pub hooks: Box<dyn super::Hooks>,
    pub stop: watch::Sender<bool>,
    /// The timer service and cluster tasks, awaited by [`Engine::stop`].
    pub services: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl Engine {
    /// Asks the timer service (and the cluster heartbeat) to stop. In-flight requests
    /// finish; the store stays open. On a shared store this node's record and scheduler
    /// lease stay until they lapse, as after a crash; [`Engine::stop`] gives them up.
    pub fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
    }

    /// Stops the timer service and waits until it has (a timer it was firing has then
    /// committed or not, and nothing of this engine fires any more); on a shared store,
    /// then leaves the cluster so another node takes over the timers at once.
    pub async fn stop(&self) {
        self.shutdown();
        // Until none is left: a service ending may start another (a lease handed back by
        // the timer service's last transaction).
        loop {
            let services = std::mem::take(
                &mut *self
                    .inner
                    .services
                    .lock()
                    .expect("invariant: handle lock not poisoned"),
            );
            if services.is_empty() {
                break;
            }
            for service in services {
                let _ = service.await;
            }
        }
        if let Some(cluster) = &self.inner.cluster {
            if let Err(e) = cluster.leave().await {
                tracing::warn!(error = %e, "leaving the cluster failed; the lease will lapse");
            }
        }
    }

    /// How long a cached registration or drain intent may be used: for ever alone on the
    /// store (every change goes through this node), briefly when other nodes share it.
    pub(crate) fn cache_fresh(&self, cached_at_ms: Millis) -> bool {
        self.inner.cluster.is_none() || self.now_ms() - cached_at_ms < CLUSTER_CACHE_MS
    }

    /// The live nodes sharing the store, when this node is one of several (`None`: it
    /// runs alone).
    pub async fn cluster_nodes(&self) -> Result<Option<Vec<crate::cluster::NodeRecord>>> {
        match &self.inner.cluster {
            Some(_) => Ok(Some(
                crate::cluster::nodes(self.inner.store.as_ref(), self.now_ms()).await?,
            )),
            None => Ok(None),
        }
    }

    /// Whether this node fires timers and schedules now (always, alone on the store).
    pub fn fires_timers(&self) -> bool {
        self.inner.timers.enabled()
    }

    /// How many in-memory timers are armed (a single-node store's lease timers: one per
    /// leased task).
    pub fn in_memory_timers(&self) -> usize {
        self.inner.timers.in_memory_len()
    }

    /// How many long-polls are parked on this node, waiting for a task.
    pub fn parked_polls(&self) -> usize {
        self.inner.matching.parked()
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

    /// Runs a transaction; also tells whether some attempt's commit result was unknown.
    pub(crate) async fn transact_noting_unknown<'env, T, F>(&self, body: F) -> (Result<T>, bool)
    where
        F: for<'t> FnMut(&'t mut Tx<'env>) -> TxFuture<'t, T>,
    {
        let mut unknown = false;
        let result = super::run(
            self.inner.store.as_ref(),
            self.inner.clock.as_ref(),
            self.inner.hooks.as_ref(),
            self.inner
                .cluster
                .as_ref()
                .and_then(|c| c.announce_horizon()),
            body,
            |mut effects| {
                unknown = true;
                // Counted only once known committed (see `queue_counts`), and a lease
                // timer is cancelled only then (a lease that stays with no timer would
                // strand its task; a spurious firing is a no-op).
                effects.counts.clear();
                effects.lease_timers_ended.clear();
                // An eager lease of an attempt that may not have committed is not handed
                // to its poller (the poller goes back to its queue); if it did commit,
                // the lease is handed back (a no-op otherwise).
                for (reservation, task) in std::mem::take(&mut effects.eager) {
                    drop(reservation);
                    self.hand_back(task);
                }
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
        self.inner.counts.apply(&effects.counts);
        // Session routing first, so the hints below are offered under it.
        for (ns, session, holder, queues) in effects.session_holders {
            self.inner.matching.set_session_holder(
                &ns,
                &session,
                holder.as_ref().map(|(h, until)| (h.as_str(), *until)),
            );
            for queue in queues {
                self.inner.matching.rematch(&queue);
            }
        }
        for (key, hint) in effects.ready {
            self.inner.matching.offer(&key, hint);
        }
        for (ns, session) in effects.session_slots {
            for (key, hint) in self.inner.matching.session_slot_freed(&ns, &session) {
                self.inner.matching.offer(&key, hint);
            }
        }
        for timer in effects.timers {
            self.inner.timers.schedule(timer);
        }
        for timer in &effects.lease_timers_ended {
            self.inner.timers.cancel_in_memory(timer);
        }
        for (timer, action) in effects.lease_timers {
            self.inner.timers.schedule_in_memory(timer, action);
        }
        for update_id in effects.updates {
            self.inner.queries.wake_update(&update_id);
        }
        // Last, so the lease's timer is armed before its worker can end it.
        for (reservation, task) in effects.eager {
            if let Some(task) = reservation.deliver(task) {
                self.hand_back(task);
            }
        }
    }

    pub(crate) async fn rebuild_ready_index(&self) -> Result<()> {
        let mut range = tables::ready_range();
        let mut total = 0usize;
        loop {
            let mut txn = self.inner.store.begin().await?;
            let page = txn
                .get_range(&range, ReadOptions::limit(1024).snapshot())
                .await?;
            let full = page.len() == 1024;
            for (key, value) in &page {
                let (queue, hint) = crate::cluster::ready_hint(key, value)?;
                self.inner.matching.offer(&queue, hint);
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
