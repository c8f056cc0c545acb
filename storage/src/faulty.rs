//! A decorator that injects faults into *any* [`KvStore`], in the manner of
//! `object_store`'s throttled and faulty wrappers: spurious conflicts, commit-unknown
//! results that did or did not apply, transient unavailability and latency, decided by a
//! seeded random number generator ([`FaultConfig`]). Wrap your backend in a
//! [`FaultyStore`] to run fault-tolerant callers (the engine model, the retry-runner
//! cases of `keel-conformance`, the engine's own tests) against that backend's real
//! behaviour plus the failures a networked store produces. The simulated backend is the
//! memory backend with limits behind this same decorator.
//!
//! Where each fault is injected, which is where a real backend can fail that way:
//!
//! * **Spurious conflict** (`conflict`): at the commit of a transaction that writes; the
//!   inner transaction is dropped uncommitted, so nothing is written.
//! * **Commit unknown, not applied** (`unknown_not_applied`): the same, answered with
//!   [`StorageError::CommitUnknown`].
//! * **Commit unknown, applied** (`unknown_applied`): the inner transaction commits, then
//!   the caller hears [`StorageError::CommitUnknown`].
//! * **Transient unavailability** (`unavailable`): [`KvStore::begin`] fails with
//!   [`StorageError::Unavailable`] before the inner store is asked (nothing began).
//! * **Latency** (`max_delay`): every begin, read and commit first waits a random time.
//!
//! Read-only commits get no injected faults (FoundationDB does not commit them), only
//! the delay. The same seed and the same sequence of calls inject the same faults.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{
    Capabilities, CommitInfo, KeyRange, KeyValue, KvStore, KvTxn, ReadOptions, Result,
    StorageError, Version, WatchFuture,
};

/// Which faults a [`FaultyStore`] (or the simulated store) injects, and how often.
///
/// `conflict`, `unknown_applied` and `unknown_not_applied` are probabilities per commit
/// of a transaction that writes (their sum at most 1); `unavailable` is a probability
/// per [`KvStore::begin`]. Each in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultConfig {
    /// Seed of the random number generator that decides every fault.
    pub seed: u64,
    /// Probability of a spurious `Conflict` (nothing written).
    pub conflict: f64,
    /// Probability of `CommitUnknown` although the writes were applied.
    pub unknown_applied: f64,
    /// Probability of `CommitUnknown` when the writes were not applied.
    pub unknown_not_applied: f64,
    /// Probability that `begin` fails with `Unavailable` (nothing began).
    pub unavailable: f64,
    /// Each begin, read and commit first waits a random time up to this (zero: no delay;
    /// under 1 ms: a yield to the scheduler).
    pub max_delay: Duration,
}

impl FaultConfig {
    /// No faults and no delays: the inner store as it is.
    pub fn none() -> Self {
        FaultConfig {
            seed: 0,
            conflict: 0.0,
            unknown_applied: 0.0,
            unknown_not_applied: 0.0,
            unavailable: 0.0,
            max_delay: Duration::ZERO,
        }
    }

    /// A mix of every commit fault, often enough that a few hundred commits see each
    /// kind, and small delays (no unavailability: see [`FaultConfig::all`]).
    pub fn chaos(seed: u64) -> Self {
        FaultConfig {
            seed,
            conflict: 0.05,
            unknown_applied: 0.03,
            unknown_not_applied: 0.03,
            unavailable: 0.0,
            max_delay: Duration::from_micros(200),
        }
    }

    /// [`FaultConfig::chaos`] plus transient unavailability at begin.
    pub fn all(seed: u64) -> Self {
        FaultConfig {
            unavailable: 0.03,
            ..FaultConfig::chaos(seed)
        }
    }

    /// Only delays, no failures: every caller that works on the inner store works through
    /// it, with concurrent transactions reordered.
    pub fn latency(seed: u64, max_delay: Duration) -> Self {
        FaultConfig {
            seed,
            max_delay,
            ..FaultConfig::none()
        }
    }

    /// Whether any fault (not counting delays) has a non-zero probability.
    pub fn injects_faults(&self) -> bool {
        self.conflict > 0.0
            || self.unknown_applied > 0.0
            || self.unknown_not_applied > 0.0
            || self.unavailable > 0.0
    }
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig::none()
    }
}

/// How many faults a [`FaultyStore`] injected so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InjectedFaults {
    /// Conflicts reported although nothing conflicted (nothing was written).
    pub conflicts: u64,
    /// `CommitUnknown` after the inner commit succeeded.
    pub unknown_applied: u64,
    /// `CommitUnknown` with the inner transaction dropped uncommitted.
    pub unknown_not_applied: u64,
    /// `Unavailable` at begin.
    pub unavailable: u64,
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
    unavailable: AtomicU64,
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

    /// The fault configuration in force.
    pub fn faults(&self) -> FaultConfig {
        self.dice.config()
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn KvStore> {
        &self.inner
    }

    /// The faults injected so far.
    pub fn injected(&self) -> InjectedFaults {
        InjectedFaults {
            conflicts: self.counts.conflicts.load(Ordering::Relaxed),
            unknown_applied: self.counts.unknown_applied.load(Ordering::Relaxed),
            unknown_not_applied: self.counts.unknown_not_applied.load(Ordering::Relaxed),
            unavailable: self.counts.unavailable.load(Ordering::Relaxed),
        }
    }
}

#[async_trait]
impl KvStore for FaultyStore {
    async fn begin(&self) -> Result<Box<dyn KvTxn>> {
        self.dice.delay().await;
        if self.dice.config().unavailable > 0.0 {
            let (config, sample) = self.dice.roll();
            if sample < config.unavailable {
                self.counts.unavailable.fetch_add(1, Ordering::Relaxed);
                return Err(StorageError::Unavailable(
                    "injected fault: store transiently unavailable".into(),
                ));
            }
        }
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

    fn withdraw(&mut self, key: &[u8]) {
        self.inner.withdraw(key);
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
            ..FaultConfig::none()
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

    #[tokio::test]
    async fn injected_unavailability_fails_begin_and_later_begins_succeed() {
        let inner = Arc::new(MemoryStore::new());
        let store = FaultyStore::new(
            inner.clone(),
            FaultConfig {
                unavailable: 1.0,
                ..FaultConfig::none()
            },
        );
        assert!(matches!(
            store.begin().await.map(|_| ()),
            Err(StorageError::Unavailable(_))
        ));
        assert_eq!(store.injected().unavailable, 1);
        store.set_faults(FaultConfig::none());
        write(&store, b"a").await.expect("available again");
        assert_eq!(read(inner.as_ref(), b"a").await, Some(b"v".to_vec()));
    }

    #[tokio::test]
    async fn the_same_seed_injects_the_same_faults() {
        async fn outcomes(seed: u64) -> Vec<String> {
            let store = FaultyStore::new(
                Arc::new(MemoryStore::new()),
                FaultConfig {
                    max_delay: Duration::ZERO,
                    ..FaultConfig::all(seed)
                },
            );
            let mut out = Vec::new();
            for i in 0..300u16 {
                out.push(format!(
                    "{:?}",
                    write(&store, &i.to_be_bytes()).await.map(|_| ())
                ));
            }
            out
        }
        let a = outcomes(11).await;
        assert_eq!(a, outcomes(11).await);
        for kind in ["Conflict", "CommitUnknown", "Unavailable"] {
            assert!(
                a.iter().any(|o| o.contains(kind)),
                "{kind} injected in 300 commits"
            );
        }
    }
}
