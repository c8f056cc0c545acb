//! Metric names the engine records, and the functions that record them, through the
//! `metrics` facade (a no-op until a recorder is installed; the `keel` binary installs the
//! Prometheus one). Labels are bounded vocabularies only: task kinds, outcomes, never ids.
//!
//! [`MeteredStore`] wraps any [`KvStore`] and times its commits, so commit latency is
//! measured the same way on every backend.

use std::time::Instant;

use async_trait::async_trait;

use crate::model::TaskKind;
use crate::storage::{
    Capabilities, CommitInfo, KeyRange, KeyValue, KvStore, KvTxn, ReadOptions, Result, Version,
    WatchFuture,
};

/// Counter: task leases that lapsed and returned their task to the ready index. Label
/// `kind` (`workflow`, `activity`).
pub const LEASE_EXPIRIES: &str = "keel_lease_expiries_total";
/// Counter: tasks leased to a parked poller inside the transaction that made them ready.
/// Labels `kind`, `outcome` (`delivered`; `handed_back`: the poller had left).
pub const EAGER_LEASES: &str = "keel_eager_leases_total";
/// Counter: worker long-polls by outcome. Labels `kind`, `outcome` (`leased`, `empty`,
/// `error`).
pub const POLLS: &str = "keel_polls_total";
/// Histogram: seconds from begin to the end of a successful or failed commit.
pub const STORAGE_COMMIT_SECONDS: &str = "keel_storage_commit_seconds";
/// Counter: commits by outcome (`ok`, `conflict`, `unknown`, `error`).
pub const STORAGE_COMMITS: &str = "keel_storage_commits_total";

fn kind_label(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Workflow => "workflow",
        TaskKind::Activity => "activity",
    }
}

/// Records a lapsed lease.
pub fn lease_expired(kind: TaskKind) {
    metrics::counter!(LEASE_EXPIRIES, "kind" => kind_label(kind)).increment(1);
}

/// Records an eager lease's outcome (`delivered` or `handed_back`).
pub fn eager_lease(kind: TaskKind, outcome: &'static str) {
    metrics::counter!(EAGER_LEASES, "kind" => kind_label(kind), "outcome" => outcome).increment(1);
}

/// Records the outcome of a long-poll (`leased`, `empty` or `error`).
pub fn poll_outcome(kind: TaskKind, outcome: &'static str) {
    metrics::counter!(POLLS, "kind" => kind_label(kind), "outcome" => outcome).increment(1);
}

/// A [`KvStore`] decorator that times every commit.
pub struct MeteredStore<S: ?Sized> {
    inner: std::sync::Arc<S>,
}

impl<S: KvStore + ?Sized> MeteredStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: std::sync::Arc<S>) -> Self {
        MeteredStore { inner }
    }
}

#[async_trait]
impl<S: KvStore + ?Sized> KvStore for MeteredStore<S> {
    async fn begin(&self) -> Result<Box<dyn KvTxn>> {
        Ok(Box::new(MeteredTxn {
            inner: self.inner.begin().await?,
        }))
    }

    fn watch(&self, key: &[u8], since: Version) -> WatchFuture {
        self.inner.watch(key, since)
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn shutdown(&self) -> Result<()> {
        self.inner.shutdown().await
    }
}

struct MeteredTxn {
    inner: Box<dyn KvTxn>,
}

#[async_trait]
impl KvTxn for MeteredTxn {
    fn read_version(&self) -> Version {
        self.inner.read_version()
    }

    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(key).await
    }

    async fn get_snapshot(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get_snapshot(key).await
    }

    async fn get_range(&mut self, range: &KeyRange, opts: ReadOptions) -> Result<Vec<KeyValue>> {
        self.inner.get_range(range, opts).await
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.inner.set(key, value)
    }

    fn clear(&mut self, key: &[u8]) {
        self.inner.clear(key)
    }

    fn withdraw(&mut self, key: &[u8]) {
        self.inner.withdraw(key)
    }

    fn clear_range(&mut self, range: &KeyRange) {
        self.inner.clear_range(range)
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) {
        self.inner.atomic_add(key, delta)
    }

    fn add_read_conflict(&mut self, key: &[u8]) {
        self.inner.add_read_conflict(key)
    }

    fn relax_durability(&mut self) {
        self.inner.relax_durability()
    }

    async fn commit(self: Box<Self>) -> Result<CommitInfo> {
        let started = Instant::now();
        let result = self.inner.commit().await;
        let outcome = match &result {
            // A read-only transaction commits without touching the backend's write path.
            Ok(info) if info.version == 0 => return result,
            Ok(_) => "ok",
            Err(crate::storage::StorageError::Conflict) => "conflict",
            Err(crate::storage::StorageError::CommitUnknown) => "unknown",
            Err(_) => "error",
        };
        metrics::histogram!(STORAGE_COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::counter!(STORAGE_COMMITS, "outcome" => outcome).increment(1);
        result
    }
}
