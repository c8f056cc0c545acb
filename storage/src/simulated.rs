//! The simulated backend: the in-memory store held strictly to FoundationDB's limits, with
//! faults injected from a seeded random number generator.
//!
//! It exists for tests (the conformance suite, the engine's tests, and the multi-node case
//! that cannot run against a real FoundationDB here) but is an ordinary public module.
//!
//! * **Limits.** Keys ≤ [`MAX_KEY_BYTES`], values ≤ [`MAX_VALUE_BYTES`], written bytes per
//!   transaction ≤ [`MAX_TXN_BYTES`] fail the commit with [`StorageError::LimitExceeded`];
//!   a transaction older than [`MAX_TXN_DURATION`] fails reads and commit with
//!   [`StorageError::TransactionTooOld`]. Age is measured on the store's own clock, which
//!   tests move forward with [`SimulatedStore::advance_time`] instead of sleeping.
//! * **Faults** (see [`FaultConfig`]): the fault-injecting decorator
//!   ([`crate::faulty::FaultyStore`]) wraps the limited store, so the simulated store
//!   injects exactly what the decorator injects on any other backend: a spurious
//!   [`StorageError::Conflict`] at commit (nothing written), [`StorageError::CommitUnknown`]
//!   after the writes *were* applied, `CommitUnknown` when they were *not*, transient
//!   [`StorageError::Unavailable`] at begin, and small random delays before begins, reads
//!   and commits. Read-only commits get no injected faults (FoundationDB does not commit
//!   them).
//! * **Sharing.** The store is `Clone`; clones share data, watches, clock and fault state,
//!   so two engine instances given clones behave like two nodes on one cluster.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::faulty::FaultyStore;
use super::memory::{MemoryInner, MemoryStore};
use super::occ::{CommitRequest, CommittedReader, Committer, OccTxn};
use super::{
    Capabilities, CommitInfo, EnforcedLimits, KeyRange, KeyValue, KvStore, KvTxn, ReadOptions,
    Result, StorageError, Version, WatchFuture, MAX_TXN_BYTES, MAX_TXN_DURATION,
};

pub use super::faulty::FaultConfig;

/// How many faults and limit rejections the store has produced so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Spurious conflicts injected.
    pub spurious_conflicts: u64,
    /// `CommitUnknown` results whose writes were applied.
    pub unknown_applied: u64,
    /// `CommitUnknown` results whose writes were not applied.
    pub unknown_not_applied: u64,
    /// `Unavailable` injected at begin.
    pub unavailable: u64,
    /// Commits rejected with `LimitExceeded` or `TransactionTooOld`.
    pub limit_rejections: u64,
}

/// Clock and limit state shared by every clone of one store.
struct SimState {
    /// Simulated time that has passed beyond the real clock, in nanoseconds.
    skew_nanos: AtomicU64,
    closed: AtomicBool,
    limit_rejections: AtomicU64,
}

impl SimState {
    fn now(&self) -> Instant {
        Instant::now() + Duration::from_nanos(self.skew_nanos.load(Ordering::Acquire))
    }

    fn reject(&self) {
        self.limit_rejections.fetch_add(1, Ordering::Relaxed);
    }
}

/// The commit path and committed reads of the simulated store: the memory backend's,
/// with the transaction size limit in front.
struct SimBackend {
    memory: Arc<MemoryInner>,
    state: Arc<SimState>,
}

impl CommittedReader for SimBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.memory.get(key)
    }

    fn range(&self, range: &KeyRange, limit: usize, reverse: bool) -> Result<Vec<KeyValue>> {
        self.memory.range(range, limit, reverse)
    }
}

#[async_trait]
impl Committer for SimBackend {
    async fn commit(&self, request: CommitRequest) -> Result<CommitInfo> {
        if self.state.closed.load(Ordering::Acquire) {
            return Err(StorageError::Unavailable("store is shut down".into()));
        }
        let written = request.written_bytes();
        if !request.is_read_only() && written > MAX_TXN_BYTES {
            // Counted by `SimTxn::commit`, which sees every `LimitExceeded`.
            return Err(StorageError::LimitExceeded(format!(
                "transaction writes {written} bytes"
            )));
        }
        self.memory.commit(request).await
    }
}

/// A transaction of the simulated store: an [`OccTxn`] whose age is checked on the
/// store's clock before every read and at commit.
struct SimTxn {
    txn: OccTxn<SimBackend>,
    state: Arc<SimState>,
    started_at: Instant,
}

impl SimTxn {
    fn check_age(&self) -> Result<()> {
        if self.state.now().saturating_duration_since(self.started_at) > MAX_TXN_DURATION {
            return Err(StorageError::TransactionTooOld);
        }
        Ok(())
    }
}

#[async_trait]
impl KvTxn for SimTxn {
    fn read_version(&self) -> Version {
        self.txn.read_version()
    }

    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check_age()?;
        self.txn.get(key).await
    }

    async fn get_snapshot(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check_age()?;
        self.txn.get_snapshot(key).await
    }

    async fn get_range(&mut self, range: &KeyRange, opts: ReadOptions) -> Result<Vec<KeyValue>> {
        self.check_age()?;
        self.txn.get_range(range, opts).await
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.txn.set(key, value)
    }

    fn clear(&mut self, key: &[u8]) {
        self.txn.clear(key)
    }

    fn withdraw(&mut self, key: &[u8]) {
        self.txn.withdraw(key)
    }

    fn clear_range(&mut self, range: &KeyRange) {
        self.txn.clear_range(range)
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) {
        self.txn.atomic_add(key, delta)
    }

    fn add_read_conflict(&mut self, key: &[u8]) {
        self.txn.add_read_conflict(key)
    }

    fn relax_durability(&mut self) {
        self.txn.relax_durability()
    }

    async fn commit(self: Box<Self>) -> Result<CommitInfo> {
        if let Err(e) = self.check_age() {
            self.state.reject();
            return Err(e);
        }
        // OccTxn's commit rejects oversized keys and values before reaching the backend,
        // which rejects oversized transactions.
        let result = Box::new(self.txn).commit().await;
        if matches!(result, Err(StorageError::LimitExceeded(_))) {
            self.state.reject();
        }
        result
    }
}

/// The memory store held to FoundationDB's limits, on a movable clock; no faults (the
/// decorator in front of it injects those).
struct LimitedStore {
    memory: MemoryStore,
    backend: Arc<SimBackend>,
}

#[async_trait]
impl KvStore for LimitedStore {
    async fn begin(&self) -> Result<Box<dyn KvTxn>> {
        let state = &self.backend.state;
        if state.closed.load(Ordering::Acquire) {
            return Err(StorageError::Unavailable("store is shut down".into()));
        }
        Ok(Box::new(SimTxn {
            txn: OccTxn::new(self.backend.clone(), self.memory.version()),
            state: state.clone(),
            started_at: state.now(),
        }))
    }

    fn watch(&self, key: &[u8], since: Version) -> WatchFuture {
        self.memory.watch(key, since)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            backend: "simulated",
            durable: false,
            reopenable: false,
            multi_node: true,
            limits: EnforcedLimits {
                key_and_value_sizes: true,
                transaction_bytes: true,
                transaction_duration: true,
            },
        }
    }

    async fn shutdown(&self) -> Result<()> {
        self.backend.state.closed.store(true, Ordering::Release);
        self.memory.shutdown().await
    }
}

/// The in-memory store with FoundationDB's limits and injected faults; see the module docs.
#[derive(Clone)]
pub struct SimulatedStore {
    limited: Arc<LimitedStore>,
    faulty: FaultyStore,
}

impl SimulatedStore {
    /// An empty store injecting the faults of `config`.
    pub fn new(config: FaultConfig) -> Self {
        let memory = MemoryStore::new();
        let state = Arc::new(SimState {
            skew_nanos: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            limit_rejections: AtomicU64::new(0),
        });
        let backend = Arc::new(SimBackend {
            memory: memory.inner().clone(),
            state,
        });
        let limited = Arc::new(LimitedStore { memory, backend });
        let faulty = FaultyStore::new(limited.clone(), config);
        SimulatedStore { limited, faulty }
    }

    /// Replaces the fault configuration (for every clone) and reseeds the generator from
    /// `config.seed`; `FaultConfig::none()` turns faults off.
    pub fn set_faults(&self, config: FaultConfig) {
        self.faulty.set_faults(config);
    }

    /// The fault configuration in force.
    pub fn faults(&self) -> FaultConfig {
        self.faulty.faults()
    }

    /// Whether any fault has a non-zero probability.
    pub fn injects_faults(&self) -> bool {
        self.faults().injects_faults()
    }

    /// What the store has injected and rejected so far (shared by every clone).
    pub fn fault_stats(&self) -> FaultStats {
        let injected = self.faulty.injected();
        FaultStats {
            spurious_conflicts: injected.conflicts,
            unknown_applied: injected.unknown_applied,
            unknown_not_applied: injected.unknown_not_applied,
            unavailable: injected.unavailable,
            limit_rejections: self
                .limited
                .backend
                .state
                .limit_rejections
                .load(Ordering::Relaxed),
        }
    }

    /// Moves the store's clock forward by `by`: open transactions age without a sleep.
    pub fn advance_time(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.limited
            .backend
            .state
            .skew_nanos
            .fetch_add(nanos, Ordering::AcqRel);
    }

    /// The latest committed version.
    pub fn version(&self) -> Version {
        self.limited.memory.version()
    }
}

impl Default for SimulatedStore {
    fn default() -> Self {
        SimulatedStore::new(FaultConfig::none())
    }
}

#[async_trait]
impl KvStore for SimulatedStore {
    async fn begin(&self) -> Result<Box<dyn KvTxn>> {
        if self.limited.backend.state.closed.load(Ordering::Acquire) {
            return Err(StorageError::Unavailable("store is shut down".into()));
        }
        self.faulty.begin().await
    }

    fn watch(&self, key: &[u8], since: Version) -> WatchFuture {
        self.faulty.watch(key, since)
    }

    fn capabilities(&self) -> Capabilities {
        self.limited.capabilities()
    }

    async fn shutdown(&self) -> Result<()> {
        self.faulty.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MAX_KEY_BYTES, MAX_VALUE_BYTES};

    async fn read(store: &SimulatedStore, key: &[u8]) -> Option<Vec<u8>> {
        let mut txn = store.begin().await.expect("begin");
        txn.get(key).await.expect("get")
    }

    async fn write(store: &SimulatedStore, key: &[u8], value: &[u8]) -> Result<CommitInfo> {
        let mut txn = store.begin().await.expect("begin");
        txn.set(key, value);
        txn.commit().await
    }

    #[tokio::test]
    async fn without_faults_commits_succeed() {
        let store = SimulatedStore::new(FaultConfig::none());
        for i in 0..50u8 {
            write(&store, &[i], b"v")
                .await
                .expect("no faults configured");
        }
        assert_eq!(store.fault_stats(), FaultStats::default());
        assert_eq!(store.version(), 50);
    }

    #[tokio::test]
    async fn oversized_key_value_and_transaction_are_rejected() {
        let store = SimulatedStore::new(FaultConfig::none());
        let big_key = vec![b'k'; MAX_KEY_BYTES + 1];
        assert!(matches!(
            write(&store, &big_key, b"v").await,
            Err(StorageError::LimitExceeded(_))
        ));
        let big_value = vec![0u8; MAX_VALUE_BYTES + 1];
        assert!(matches!(
            write(&store, b"k", &big_value).await,
            Err(StorageError::LimitExceeded(_))
        ));
        write(&store, b"k", &big_value[..MAX_VALUE_BYTES])
            .await
            .expect("value at the limit fits");

        let mut txn = store.begin().await.expect("begin");
        let value = vec![0u8; MAX_VALUE_BYTES];
        for i in 0..(MAX_TXN_BYTES / MAX_VALUE_BYTES) as u32 {
            txn.set(&i.to_be_bytes(), &value);
        }
        assert!(matches!(
            txn.commit().await,
            Err(StorageError::LimitExceeded(_))
        ));
        assert_eq!(
            read(&store, &0u32.to_be_bytes()).await,
            None,
            "rejected transaction wrote nothing"
        );
        assert_eq!(store.fault_stats().limit_rejections, 3);
    }

    #[tokio::test]
    async fn transaction_older_than_limit_is_too_old() {
        let store = SimulatedStore::new(FaultConfig::none());
        let mut txn = store.begin().await.expect("begin");
        txn.set(b"k", b"v");
        store.advance_time(MAX_TXN_DURATION + Duration::from_millis(1));
        assert!(matches!(
            txn.get(b"k").await,
            Err(StorageError::TransactionTooOld)
        ));
        assert!(matches!(
            txn.commit().await,
            Err(StorageError::TransactionTooOld)
        ));
        assert_eq!(read(&store, b"k").await, None);

        let mut young = store.begin().await.expect("begin after the clock moved");
        young.set(b"k", b"v");
        young
            .commit()
            .await
            .expect("a fresh transaction is not too old");
    }

    #[tokio::test]
    async fn spurious_conflict_writes_nothing() {
        let store = SimulatedStore::new(FaultConfig {
            conflict: 1.0,
            ..FaultConfig::none()
        });
        assert!(matches!(
            write(&store, b"k", b"v").await,
            Err(StorageError::Conflict)
        ));
        assert_eq!(read(&store, b"k").await, None);
        assert_eq!(store.fault_stats().spurious_conflicts, 1);
    }

    #[tokio::test]
    async fn commit_unknown_may_or_may_not_have_applied() {
        let store = SimulatedStore::new(FaultConfig {
            unknown_applied: 1.0,
            ..FaultConfig::none()
        });
        assert!(matches!(
            write(&store, b"a", b"v").await,
            Err(StorageError::CommitUnknown)
        ));
        assert_eq!(
            read(&store, b"a").await.as_deref(),
            Some(&b"v"[..]),
            "applied despite unknown"
        );

        store.set_faults(FaultConfig {
            unknown_not_applied: 1.0,
            ..FaultConfig::none()
        });
        assert!(matches!(
            write(&store, b"b", b"v").await,
            Err(StorageError::CommitUnknown)
        ));
        assert_eq!(read(&store, b"b").await, None, "not applied");

        store.set_faults(FaultConfig::none());
        write(&store, b"c", b"v").await.expect("faults turned off");
        let stats = store.fault_stats();
        assert_eq!((stats.unknown_applied, stats.unknown_not_applied), (1, 1));
    }

    #[tokio::test]
    async fn read_only_commits_get_no_faults() {
        let store = SimulatedStore::new(FaultConfig {
            conflict: 1.0,
            ..FaultConfig::none()
        });
        let mut txn = store.begin().await.expect("begin");
        txn.get(b"k").await.expect("get");
        assert_eq!(txn.commit().await.expect("read-only commit").version, 0);
    }

    #[tokio::test]
    async fn same_seed_injects_the_same_faults() {
        async fn outcomes(seed: u64) -> Vec<bool> {
            let store = SimulatedStore::new(FaultConfig {
                max_delay: Duration::ZERO,
                ..FaultConfig::chaos(seed)
            });
            let mut out = Vec::new();
            for i in 0..200u8 {
                out.push(write(&store, &[i], b"v").await.is_ok());
            }
            out
        }
        let a = outcomes(7).await;
        assert_eq!(a, outcomes(7).await);
        assert!(
            a.iter().any(|ok| !ok),
            "chaos injects some faults in 200 commits"
        );
    }

    #[tokio::test]
    async fn clones_share_data_and_watches() {
        let node_a = SimulatedStore::new(FaultConfig::none());
        let node_b = node_a.clone();
        let since = node_a.begin().await.expect("begin").read_version();
        let watch = node_a.watch(b"k", since);
        write(&node_b, b"k", b"from b").await.expect("commit on b");
        watch.await.expect("a's watch fires on b's write");
        assert_eq!(read(&node_a, b"k").await.as_deref(), Some(&b"from b"[..]));
    }

    #[tokio::test]
    async fn shutdown_rejects_new_transactions() {
        let store = SimulatedStore::new(FaultConfig::none());
        let other = store.clone();
        store.shutdown().await.expect("shutdown");
        assert!(matches!(
            other.begin().await,
            Err(StorageError::Unavailable(_))
        ));
    }
}
