//! Metric names the engine records, and the functions that record them, through the
//! `metrics` facade (a no-op until a recorder is installed; the `keel` binary installs the
//! Prometheus one). Labels are bounded vocabularies only: task kinds, outcomes, never ids.
//!
//! [`MeteredStore`] wraps any [`KvStore`] and times its commits, so commit latency is
//! measured the same way on every backend.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
use metrics::{Counter, Histogram};

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

/// Set once the process-wide recorder is installed: from then on a registered handle is
/// final and may be kept (before, it would be the no-op recorder's for good).
static RECORDER_INSTALLED: AtomicBool = AtomicBool::new(false);

/// Marks the process-wide recorder installed, so [`HandleCache`]s start keeping handles
/// (`keel_http::metrics::handle` calls it once it installed the Prometheus recorder).
pub fn recorder_installed() {
    RECORDER_INSTALLED.store(true, Ordering::Release);
}

/// Metric handles kept per label set. `counter!` and `histogram!` register their metric
/// on every call (hash the name and labels, look them up: 1–2 k instructions), several
/// times per request; a cache lookup is a lock and a small map. Until the recorder is
/// installed every call registers afresh. Keys are bounded label sets (routes, statuses,
/// outcomes), never ids.
pub struct HandleCache<K, H>(Mutex<BTreeMap<K, H>>);

impl<K: Ord, H: Clone> HandleCache<K, H> {
    /// An empty cache (for a `static`).
    pub const fn new() -> Self {
        HandleCache(Mutex::new(BTreeMap::new()))
    }

    /// The handles of `key`, registered by `register` the first time.
    pub fn get(&self, key: K, register: impl FnOnce() -> H) -> H {
        self.get_kept(RECORDER_INSTALLED.load(Ordering::Acquire), key, register)
    }

    fn get_kept(&self, keep: bool, key: K, register: impl FnOnce() -> H) -> H {
        if !keep {
            return register();
        }
        self.0
            .lock()
            .expect("invariant: metric handle cache lock not poisoned")
            .entry(key)
            .or_insert_with(register)
            .clone()
    }
}

impl<K: Ord, H: Clone> Default for HandleCache<K, H> {
    fn default() -> Self {
        Self::new()
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
    static POLL_COUNTERS: HandleCache<(&'static str, &'static str), Counter> = HandleCache::new();
    let kind = kind_label(kind);
    POLL_COUNTERS
        .get(
            (kind, outcome),
            || metrics::counter!(POLLS, "kind" => kind, "outcome" => outcome),
        )
        .increment(1);
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
        static COMMIT_METRICS: HandleCache<&'static str, (Histogram, Counter)> = HandleCache::new();
        let (seconds, commits) = COMMIT_METRICS.get(outcome, || {
            (
                metrics::histogram!(STORAGE_COMMIT_SECONDS),
                metrics::counter!(STORAGE_COMMITS, "outcome" => outcome),
            )
        });
        seconds.record(started.elapsed().as_secs_f64());
        commits.increment(1);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::{HandleCache, Ordering};
    use std::sync::atomic::AtomicU32;

    #[test]
    fn a_handle_cache_registers_every_time_until_the_recorder_is_installed_then_once_per_key() {
        let cache: HandleCache<&'static str, u32> = HandleCache::new();
        let registered = AtomicU32::new(0);
        let register = || registered.fetch_add(1, Ordering::SeqCst);
        cache.get_kept(false, "ok", register);
        cache.get_kept(false, "ok", register);
        assert_eq!(registered.load(Ordering::SeqCst), 2, "nothing kept before");
        let first = cache.get_kept(true, "ok", register);
        assert_eq!(cache.get_kept(true, "ok", register), first);
        cache.get_kept(true, "conflict", register);
        assert_eq!(registered.load(Ordering::SeqCst), 4, "once per key after");
    }
}
