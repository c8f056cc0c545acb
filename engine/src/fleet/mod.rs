//! The worker fleet: registrations, build-id cohorts and their drain state, and what a
//! registered worker's poll may take.

use std::collections::HashSet;

mod deployments;

pub use deployments::{
    parse_deployment_name, Blockage, DeploymentAction, DeploymentOutcome, DeploymentState,
    WorkerDeployment, WORKER_STALE_AFTER_MS,
};

use crate::error::{Error, RejectKind, Result};
use crate::kernel;
use crate::kernel::Engine;
use crate::matching::{PollFilter, QueueKey};
use crate::model::{CohortRecord, TaskKind, WorkerRecord};
use crate::storage::{KvTxn, ReadOptions};
use crate::sync::Arc;
use crate::tables;

impl Engine {
    /// Registers (or re-registers) a worker.
    pub async fn register_worker(&self, mut worker: WorkerRecord) -> Result<WorkerRecord> {
        let now = self.now_ms();
        worker.last_heartbeat_at_ms = now;
        let w = &worker;
        let saved = self
            .transact(move |tx| {
                Box::pin(async move {
                    let txn = tx.txn.as_mut();
                    let record = Self::put_worker(txn, w).await?;
                    Ok(record)
                })
            })
            .await?;
        self.cache_worker(saved.clone());
        Ok(saved)
    }

    /// Writes a worker registration inside `txn` (keeping its first registration time).
    pub(crate) async fn put_worker(txn: &mut dyn KvTxn, w: &WorkerRecord) -> Result<WorkerRecord> {
        kernel::require_namespace(txn, &w.namespace).await?;
        let key = tables::worker_key(&w.namespace, &w.worker_id);
        let mut record = w.clone();
        if let Some(existing) = tables::get::<WorkerRecord>(txn, &key).await? {
            record.registered_at_ms = existing.registered_at_ms;
        }
        tables::put(txn, &key, &record)?;
        Ok(record)
    }

    pub(crate) fn cache_worker(&self, worker: WorkerRecord) {
        let key = (worker.namespace.clone(), worker.worker_id.clone());
        let now = self.now_ms();
        self.inner
            .workers
            .lock()
            .expect("invariant: worker cache not poisoned")
            .insert(key, (Arc::new(worker), now));
    }

    /// Reads a worker registration (cached).
    pub async fn worker(&self, ns: &str, worker_id: &str) -> Result<Option<Arc<WorkerRecord>>> {
        let key = (ns.to_string(), worker_id.to_string());
        let cached = self
            .inner
            .workers
            .lock()
            .expect("invariant: worker cache not poisoned")
            .get(&key)
            .cloned();
        if let Some((w, at)) = cached {
            if self.cache_fresh(at) {
                return Ok(Some(w));
            }
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
            .transact(move |tx| {
                Box::pin(async move {
                    let txn = tx.txn.as_mut();
                    let key = tables::worker_key(ns, worker_id);
                    let Some(mut record) = tables::get::<WorkerRecord>(txn, &key).await? else {
                        return Err(Error::not_found(
                            "worker_not_registered",
                            format!("worker '{worker_id}' is not registered"),
                        ));
                    };
                    record.last_heartbeat_at_ms = now;
                    tables::put(txn, &key, &record)?;
                    Ok(record)
                })
            })
            .await?;
        self.cache_worker(saved.clone());
        Ok(saved)
    }

    /// Removes a worker registration; `worker_not_found` if unknown.
    pub async fn deregister_worker(&self, ns: &str, worker_id: &str) -> Result<()> {
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                let key = tables::worker_key(ns, worker_id);
                if tables::get::<WorkerRecord>(txn, &key).await?.is_none() {
                    return Err(Error::not_found(
                        "worker_not_found",
                        format!("worker '{worker_id}' is not registered"),
                    ));
                }
                txn.clear(&key);
                // The service URL it announced goes with it.
                txn.clear(&tables::worker_endpoint_key(ns, worker_id));
                Ok(())
            })
        })
        .await?;
        self.inner
            .workers
            .lock()
            .expect("invariant: worker cache not poisoned")
            .remove(&(ns.to_string(), worker_id.to_string()));
        Ok(())
    }

    /// The poll filter of a registered worker for `kind`: checks its registration and
    /// queue, and refuses it while its build-id cohort is draining.
    pub(crate) async fn poll_filter(
        &self,
        ns: &str,
        worker_id: &str,
        queue: &str,
        kind: TaskKind,
    ) -> Result<PollFilter> {
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
        if self
            .cohort_draining(ns, queue, worker.build_id.as_deref())
            .await?
        {
            return Err(Error::conflict(
                "worker_draining",
                format!(
                    "the build-id cohort of worker '{worker_id}' is draining; it gets no new tasks"
                ),
            )
            .with("poll_status", "draining")
            .with("task", serde_json::Value::Null)
            .with("build_id", worker.build_id.clone()));
        }
        let types = match kind {
            TaskKind::Workflow => &worker.supported_workflow_types,
            TaskKind::Activity => &worker.supported_activity_types,
        };
        Ok(PollFilter {
            types: (!types.is_empty())
                .then(|| Arc::new(types.iter().cloned().collect::<HashSet<_>>())),
            build_id: worker.build_id.as_deref().map(Into::into),
            worker_id: Some(worker_id.into()),
            now_ms: self.now_ms(),
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

    /// Whether the cohort is draining (cached; drains and resumes update the cache).
    pub async fn cohort_draining(
        &self,
        ns: &str,
        queue: &str,
        build_id: Option<&str>,
    ) -> Result<bool> {
        let key = tables::cohort_key(ns, queue, build_id);
        let cached = self
            .inner
            .cohorts
            .lock()
            .expect("invariant: cohort cache not poisoned")
            .get(&key)
            .copied();
        if let Some((draining, at)) = cached {
            if self.cache_fresh(at) {
                return Ok(draining);
            }
        }
        let mut txn = self.inner.store.begin().await?;
        let record: Option<CohortRecord> = tables::get_snapshot(txn.as_mut(), &key).await?;
        let draining = record.is_some_and(|c| c.draining);
        self.inner
            .cohorts
            .lock()
            .expect("invariant: cohort cache not poisoned")
            .insert(key, (draining, self.now_ms()));
        Ok(draining)
    }

    /// Sets a cohort's drain intent (idempotent) and returns the cohort.
    pub async fn set_cohort_draining(
        &self,
        ns: &str,
        queue: &str,
        build_id: Option<&str>,
        draining: bool,
    ) -> Result<CohortRecord> {
        let now = self.now_ms();
        let key = tables::cohort_key(ns, queue, build_id);
        let record = self
            .transact(move |tx| {
                Box::pin(async move {
                    let txn = tx.txn.as_mut();
                    kernel::require_namespace(txn, ns).await?;
                    let record =
                        Self::put_cohort_draining(txn, ns, queue, build_id, draining, now).await?;
                    Ok(record)
                })
            })
            .await?;
        self.inner
            .cohorts
            .lock()
            .expect("invariant: cohort cache not poisoned")
            .insert(key, (draining, self.now_ms()));
        Ok(record)
    }

    /// Writes a cohort's drain intent inside `txn` (idempotent: unchanged intent writes
    /// nothing) and returns the cohort. The caller refreshes the cache after the commit
    /// ([`Engine::forget_cohort`]).
    pub(crate) async fn put_cohort_draining(
        txn: &mut dyn KvTxn,
        ns: &str,
        queue: &str,
        build_id: Option<&str>,
        draining: bool,
        now: crate::clock::Millis,
    ) -> Result<CohortRecord> {
        let key = tables::cohort_key(ns, queue, build_id);
        let mut record = tables::get::<CohortRecord>(txn, &key)
            .await?
            .unwrap_or(CohortRecord {
                namespace: ns.to_string(),
                task_queue: queue.to_string(),
                build_id: build_id.map(str::to_string),
                draining: false,
                drained_at_ms: None,
                resumed_at_ms: None,
                promoted_at_ms: None,
                rolled_back_at_ms: None,
                updated_at_ms: now,
            });
        if record.draining != draining {
            record.draining = draining;
            record.updated_at_ms = now;
            if draining {
                record.drained_at_ms = Some(now);
            } else {
                record.resumed_at_ms = Some(now);
            }
            tables::put(txn, &key, &record)?;
            // A draining cohort is nobody's new-start build; a resumed promoted one is
            // again (see `deployments`).
            let nskey = kernel::new_start_build_key(ns, queue);
            let this = build_id.map(str::to_string);
            let selected: Option<Option<String>> = tables::get(txn, &nskey).await?;
            if draining && selected.as_ref() == Some(&this) {
                txn.clear(&nskey);
            } else if !draining && record.promoted_at_ms.is_some() && build_id.is_some() {
                tables::put(txn, &nskey, &this)?;
            }
        }
        Ok(record)
    }

    /// Drops a cohort's cached drain intent, so the next poll reads it from storage.
    pub(crate) fn forget_cohort(&self, ns: &str, queue: &str, build_id: Option<&str>) {
        self.inner
            .cohorts
            .lock()
            .expect("invariant: cohort cache not poisoned")
            .remove(&tables::cohort_key(ns, queue, build_id));
    }

    /// The cohorts with a recorded drain intent on one queue.
    pub async fn cohorts(&self, ns: &str, queue: &str) -> Result<Vec<CohortRecord>> {
        let mut txn = self.inner.store.begin().await?;
        let pairs = txn
            .get_range(
                &tables::cohorts_range(ns, queue),
                ReadOptions::limit(1000).snapshot(),
            )
            .await?;
        let (records, _) = tables::assemble(pairs)?;
        records
            .into_iter()
            .map(|(_, b)| tables::decode_record(&b))
            .collect()
    }

    /// Registered workers of a namespace (at most `limit`).
    pub async fn workers(&self, ns: &str, limit: usize) -> Result<Vec<WorkerRecord>> {
        let mut txn = self.inner.store.begin().await?;
        kernel::require_namespace(txn.as_mut(), ns).await?;
        let pairs = txn
            .get_range(
                &tables::workers_range(ns),
                ReadOptions::limit(limit).snapshot(),
            )
            .await?;
        let (records, _) = tables::assemble(pairs)?;
        records
            .into_iter()
            .map(|(_, b)| tables::decode_record(&b))
            .collect()
    }
}
