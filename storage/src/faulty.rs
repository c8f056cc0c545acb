//! A decorator that injects faults into *any* [`KvStore`]: spurious conflicts,
//! commit-unknown results that did or did not apply, and delays, decided by a seeded
//! random number generator ([`FaultConfig`], the simulated store's settings). Wrap a real
//! backend in it to run the conformance suite's fault-tolerant callers (the engine model,
//! the engine's own tests) against that backend's real behaviour plus faults.
//!
//! Faults are injected only at the commit of a transaction that writes, where a real
//! backend can fail in these ways; reads and read-only commits pass through (delayed).
//! An injected conflict or not-applied unknown drops the inner transaction uncommitted;
//! an applied unknown commits it and then reports `CommitUnknown`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::simulated::FaultConfig;
use crate::{
    Capabilities, CommitInfo, KeyRange, KeyValue, KvStore, KvTxn, ReadOptions, Result,
    StorageError, Version, WatchFuture,
};

/// How many faults a [`FaultyStore`] injected so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InjectedFaults {
    /// Conflicts reported although nothing conflicted (nothing was written).
    pub conflicts: u64,
    /// `CommitUnknown` after the inner commit succeeded.
    pub unknown_applied: u64,
    /// `CommitUnknown` with the inner transaction dropped uncommitted.
    pub unknown_not_applied: u64,
}

/// The seeded generator deciding faults and delays, shared by the clones of one store
/// (the simulated store uses it too).
pub(crate) struct Dice(Mutex<(FaultConfig, StdRng)>);

impl Dice {
    pub(crate) fn new(config: FaultConfig) -> Self {
        Dice(Mutex::new((config, StdRng::seed_from_u64(config.seed))))
    }

    /// Replaces the configuration and reseeds the generator from `config.seed`.
    pub(crate) fn set(&self, config: FaultConfig) {
        *self.0.lock().expect("invariant: dice lock not poisoned") =
            (config, StdRng::seed_from_u64(config.seed));
    }

    pub(crate) fn config(&self) -> FaultConfig {
        self.0.lock().expect("invariant: dice lock not poisoned").0
    }

    /// A uniform sample in `[0, 1)` and the configuration it was drawn under.
    pub(crate) fn roll(&self) -> (FaultConfig, f64) {
        let mut guard = self.0.lock().expect("invariant: dice lock not poisoned");
        let config = guard.0;
        (config, guard.1.random::<f64>())
    }

    /// Waits a random time up to the configured maximum. tokio's timer works in whole
    /// milliseconds, so a draw under 1 ms yields to the scheduler instead: it still lets
    /// other tasks run first, which is what reorders concurrent transactions.
    pub(crate) async fn delay(&self) {
        let nanos = {
            let mut guard = self.0.lock().expect("invariant: dice lock not poisoned");
            let max = guard.0.max_delay;
            if max.is_zero() {
                return;
            }
            guard
                .1
                .random_range(0..=u64::try_from(max.as_nanos()).unwrap_or(u64::MAX))
        };
        let delay = Duration::from_nanos(nanos);
        if delay < Duration::from_millis(1) {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(delay).await;
        }
    }
}

#[derive(Default)]
struct Counts {
    conflicts: AtomicU64,
    unknown_applied: AtomicU64,
    unknown_not_applied: AtomicU64,
}

/// `inner` with injected faults. Cheap to clone; clones share the dice.
#[derive(Clone)]
pub struct FaultyStore {
    inner: Arc<dyn KvStore>,
    dice: Arc<Dice>,
    counts: Arc<Counts>,
}

impl FaultyStore {
    /// Wraps `inner`, injecting faults as `config` says.
    pub fn new(inner: Arc<dyn KvStore>, config: FaultConfig) -> Self {
        FaultyStore {
            inner,
            dice: Arc::new(Dice::new(config)),
            counts: Arc::new(Counts::default()),
        }
    }

    /// Changes the faults injected from now on (the generator is reseeded).
    pub fn set_faults(&self, config: FaultConfig) {
        self.dice.set(config);
    }

    /// The faults injected so far.
    pub fn injected(&self) -> InjectedFaults {
        InjectedFaults {
            conflicts: self.counts.conflicts.load(Ordering::Relaxed),
            unknown_applied: self.counts.unknown_applied.load(Ordering::Relaxed),
            unknown_not_applied: self.counts.unknown_not_applied.load(Ordering::Relaxed),
        }
    }
}

#[async_trait]
impl KvStore for FaultyStore {
    async fn begin(&self) -> Result<Box<dyn KvTxn>> {
        self.dice.delay().await;
        Ok(Box::new(FaultyTxn {
            inner: self.inner.begin().await?,
            dice: self.dice.clone(),
            counts: self.counts.clone(),
            writes: false,
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

struct FaultyTxn {
    inner: Box<dyn KvTxn>,
    dice: Arc<Dice>,
    counts: Arc<Counts>,
    writes: bool,
}

#[async_trait]
impl KvTxn for FaultyTxn {
    fn read_version(&self) -> Version {
        self.inner.read_version()
    }

    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.dice.delay().await;
        self.inner.get(key).await
    }

    async fn get_snapshot(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.dice.delay().await;
        self.inner.get_snapshot(key).await
    }

    async fn get_range(&mut self, range: &KeyRange, opts: ReadOptions) -> Result<Vec<KeyValue>> {
        self.dice.delay().await;
        self.inner.get_range(range, opts).await
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.writes = true;
        self.inner.set(key, value);
    }

    fn clear(&mut self, key: &[u8]) {
        self.writes = true;
        self.inner.clear(key);
    }

    fn clear_range(&mut self, range: &KeyRange) {
        self.writes = true;
        self.inner.clear_range(range);
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) {
        self.writes = true;
        self.inner.atomic_add(key, delta);
    }

    fn add_read_conflict(&mut self, key: &[u8]) {
        self.inner.add_read_conflict(key);
    }

    fn relax_durability(&mut self) {
        self.inner.relax_durability();
    }

    async fn commit(self: Box<Self>) -> Result<CommitInfo> {
        let FaultyTxn {
            inner,
            dice,
            counts,
            writes,
        } = *self;
        dice.delay().await;
        if !writes {
            return inner.commit().await;
        }
        let (config, sample) = dice.roll();
        let conflict = config.conflict;
        let not_applied = conflict + config.unknown_not_applied;
        let applied = not_applied + config.unknown_applied;
        if sample < conflict {
            counts.conflicts.fetch_add(1, Ordering::Relaxed);
            return Err(StorageError::Conflict);
        }
        if sample < not_applied {
            counts.unknown_not_applied.fetch_add(1, Ordering::Relaxed);
            return Err(StorageError::CommitUnknown);
        }
        let committed = inner.commit().await?;
        if sample < applied {
            counts.unknown_applied.fetch_add(1, Ordering::Relaxed);
            return Err(StorageError::CommitUnknown);
        }
        Ok(committed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;

    fn faults(conflict: f64, unknown_applied: f64, unknown_not_applied: f64) -> FaultConfig {
        FaultConfig {
            seed: 3,
            conflict,
            unknown_applied,
            unknown_not_applied,
            max_delay: Duration::ZERO,
        }
    }

    async fn write(store: &dyn KvStore, key: &[u8]) -> Result<CommitInfo> {
        let mut txn = store.begin().await?;
        txn.set(key, b"v");
        txn.commit().await
    }

    async fn read(store: &dyn KvStore, key: &[u8]) -> Option<Vec<u8>> {
        let mut txn = store.begin().await.expect("begin");
        txn.get(key).await.expect("read")
    }

    #[tokio::test]
    async fn an_injected_conflict_or_unapplied_unknown_writes_nothing() {
        let inner = Arc::new(MemoryStore::new());
        let conflicting = FaultyStore::new(inner.clone(), faults(1.0, 0.0, 0.0));
        assert!(matches!(
            write(&conflicting, b"a").await,
            Err(StorageError::Conflict)
        ));
        let lost = FaultyStore::new(inner.clone(), faults(0.0, 0.0, 1.0));
        assert!(matches!(
            write(&lost, b"b").await,
            Err(StorageError::CommitUnknown)
        ));
        assert_eq!(read(inner.as_ref(), b"a").await, None);
        assert_eq!(read(inner.as_ref(), b"b").await, None);
        assert_eq!(conflicting.injected().conflicts, 1);
        assert_eq!(lost.injected().unknown_not_applied, 1);
    }

    #[tokio::test]
    async fn an_applied_unknown_is_written_although_the_commit_reported_unknown() {
        let inner = Arc::new(MemoryStore::new());
        let store = FaultyStore::new(inner.clone(), faults(0.0, 1.0, 0.0));
        assert!(matches!(
            write(&store, b"a").await,
            Err(StorageError::CommitUnknown)
        ));
        assert_eq!(read(inner.as_ref(), b"a").await, Some(b"v".to_vec()));
    }

    #[tokio::test]
    async fn reads_and_read_only_commits_pass_through_whatever_the_faults() {
        let inner = Arc::new(MemoryStore::new());
        write(inner.as_ref(), b"a").await.expect("writes");
        let store = FaultyStore::new(inner, faults(1.0, 0.0, 0.0));
        let mut txn = store.begin().await.expect("begin");
        assert_eq!(txn.get(b"a").await.expect("read"), Some(b"v".to_vec()));
        txn.commit()
            .await
            .expect("a read-only commit is never failed");
    }
}
