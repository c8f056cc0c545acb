//! The transactional ordered key-value contract every Keel storage backend implements.
//!
//! # The contract
//!
//! A backend stores an ordered map from byte-string keys to byte-string values and runs
//! **serializable, optimistic transactions** over it, in the manner of FoundationDB:
//!
//! * [`KvStore::begin`] opens a transaction at a *read version*: every non-snapshot read
//!   inside it behaves as if it saw the store as of that version or detects, at commit,
//!   that it did not (and fails with [`StorageError::Conflict`]).
//! * Reads ([`KvTxn::get`], [`KvTxn::get_range`]) see the transaction's own buffered
//!   writes first (read-your-writes) and add the key or range they touched to the
//!   transaction's *read conflict set*. Snapshot reads ([`KvTxn::get_snapshot`],
//!   [`ReadOptions::snapshot`]) add nothing to it: use them for data whose change must not
//!   abort the transaction (e.g. statistics, hints re-checked later).
//! * Writes ([`KvTxn::set`], [`KvTxn::clear`], [`KvTxn::clear_range`],
//!   [`KvTxn::atomic_add`]) are buffered and become visible to others only when
//!   [`KvTxn::commit`] succeeds. `atomic_add` adds a little-endian `i64` delta to a counter
//!   at commit time *without* a read conflict, so shared counters never make transitions
//!   conflict with each other.
//! * [`KvTxn::commit`] returns `Ok` **only after the writes are durable** (for an
//!   on-disk backend: synced to its write-ahead log), unless the transaction opted into
//!   [`KvTxn::relax_durability`]. It fails with
//!   [`StorageError::Conflict`] when another transaction committed, after this one's read
//!   version, a write to anything in this one's read conflict set; nothing was written
//!   then. It fails with [`StorageError::CommitUnknown`] when the backend cannot tell
//!   whether the writes were applied: callers must make every transaction idempotent (see
//!   [`retry`]).
//! * [`KvStore::watch`] resolves once a committed transaction has written the key (or
//!   immediately if it changed since the given version). Watches are how one node learns
//!   of another's writes; within one process the engine also notifies itself directly.
//!
//! # Limits (FoundationDB's, enforced by the simulated backend)
//!
//! Keys ≤ [`MAX_KEY_BYTES`], values ≤ [`MAX_VALUE_BYTES`], a transaction's total written
//! bytes ≤ [`MAX_TXN_BYTES`], and a transaction lives at most [`MAX_TXN_DURATION`] from
//! begin to commit (older ones fail with [`StorageError::TransactionTooOld`], retryable).
//! The engine splits large values across keys to respect them.
//!
//! # Porting guide
//!
//! Start from [`not_implemented::NotImplementedStore`]: it implements the whole surface
//! with [`StorageError::NotImplemented`], so the conformance suite (`keel-conformance`)
//! names exactly what is missing. Backends that lack native optimistic concurrency can
//! reuse [`occ::ConflictTracker`] with a single committer, as the memory and RocksDB
//! backends do.

pub mod faulty;
pub mod memory;
pub mod not_implemented;
pub mod occ;
pub mod retry;
pub mod simulated;

use std::future::Future;
use std::ops::Bound;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;

/// Largest key a backend must accept (FoundationDB's limit).
pub const MAX_KEY_BYTES: usize = 10_000;
/// Largest value a backend must accept (FoundationDB's limit).
pub const MAX_VALUE_BYTES: usize = 100_000;
/// Largest total of keys and values one transaction may write (FoundationDB's limit).
pub const MAX_TXN_BYTES: usize = 10_000_000;
/// Longest a transaction may stay open (FoundationDB's limit).
pub const MAX_TXN_DURATION: Duration = Duration::from_secs(5);

/// A monotonically increasing commit version. Version 0 is the empty store.
pub type Version = u64;

/// Everything a storage operation can fail with. Non-exhaustive: a later contract may
/// add kinds, so callers match the ones they handle and treat the rest as fatal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Another transaction wrote something this one read; nothing was written.
    #[error("transaction conflict")]
    Conflict,
    /// The commit may or may not have been applied.
    #[error("commit result unknown")]
    CommitUnknown,
    /// The transaction outlived its read version's retention window.
    #[error("transaction too old")]
    TransactionTooOld,
    /// The backend is temporarily unreachable or shutting down.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The backend refuses writes until an outside condition clears (a full disk, a
    /// failed write it must probe before trusting the disk again); reads are still
    /// served. Not retryable: running the transaction again at once meets the same
    /// refusal, so the caller answers now (HTTP: 503 with the backend's explanation).
    #[error("storage refuses writes: {0}")]
    WritesRefused(String),
    /// A key, value or transaction exceeded a backend limit; retrying cannot help.
    #[error("storage limit exceeded: {0}")]
    LimitExceeded(String),
    /// Stored bytes could not be decoded or failed an integrity check.
    #[error("storage corruption: {0}")]
    Corruption(String),
    /// The backend does not implement this operation (porting skeleton).
    #[error("{operation} is not implemented by the {backend} backend")]
    NotImplemented {
        /// The backend's name, e.g. `not_implemented`.
        backend: &'static str,
        /// The operation, e.g. `KvTxn::get`.
        operation: &'static str,
    },
    /// An I/O or backend-internal error, with its source kept.
    #[error("storage backend error")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StorageError {
    /// Whether running the same (idempotent) transaction again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StorageError::Conflict
                | StorageError::CommitUnknown
                | StorageError::TransactionTooOld
                | StorageError::Unavailable(_)
        )
    }

    /// Whether the writes of the failed commit may nevertheless have been applied.
    pub fn maybe_committed(&self) -> bool {
        matches!(self, StorageError::CommitUnknown)
    }
}

/// Result alias for storage operations.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A half-open or closed key range, `[start, end)` by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// Lower bound.
    pub start: Bound<Vec<u8>>,
    /// Upper bound.
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    /// `[start, end)`.
    pub fn new(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        KeyRange {
            start: Bound::Included(start.into()),
            end: Bound::Excluded(end.into()),
        }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        KeyRange {
            start: Bound::Included(prefix.to_vec()),
            end: match prefix_successor(prefix) {
                Some(end) => Bound::Excluded(end),
                None => Bound::Unbounded,
            },
        }
    }

    /// Whether `key` lies inside the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        let above = match &self.start {
            Bound::Included(s) => key >= s.as_slice(),
            Bound::Excluded(s) => key > s.as_slice(),
            Bound::Unbounded => true,
        };
        let below = match &self.end {
            Bound::Included(e) => key <= e.as_slice(),
            Bound::Excluded(e) => key < e.as_slice(),
            Bound::Unbounded => true,
        };
        above && below
    }

    /// Borrowed bounds, for `BTreeMap::range`.
    pub fn as_bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        fn b(x: &Bound<Vec<u8>>) -> Bound<&[u8]> {
            match x {
                Bound::Included(v) => Bound::Included(v.as_slice()),
                Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
                Bound::Unbounded => Bound::Unbounded,
            }
        }
        (b(&self.start), b(&self.end))
    }
}

/// The smallest key greater than every key starting with `prefix`, if any.
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// How a range read behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// At most this many pairs are returned (callers page through larger ranges).
    pub limit: usize,
    /// Return pairs from the end of the range backwards.
    pub reverse: bool,
    /// Do not add the range to the read conflict set.
    pub snapshot: bool,
}

impl ReadOptions {
    /// Forward, conflict-tracked read of at most `limit` pairs.
    pub fn limit(limit: usize) -> Self {
        ReadOptions {
            limit,
            reverse: false,
            snapshot: false,
        }
    }
    /// The same read, without a read conflict.
    pub fn snapshot(self) -> Self {
        ReadOptions {
            snapshot: true,
            ..self
        }
    }
    /// The same read, from the end of the range.
    pub fn reverse(self) -> Self {
        ReadOptions {
            reverse: true,
            ..self
        }
    }
}

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// What a backend declares about itself, in one place: the conformance suite branches on
/// it, the server names the backend and turns on multi-node coordination from it.
///
/// Every backend *accepts* keys up to [`MAX_KEY_BYTES`], values up to [`MAX_VALUE_BYTES`]
/// and transactions up to [`MAX_TXN_BYTES`] and [`MAX_TXN_DURATION`] (the engine stays
/// inside them); [`EnforcedLimits`] says which of them it also *refuses past*.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// The backend's short name, as `/api/ready`, `cluster/info` and `/metrics` show it:
    /// `rocksdb`, `foundationdb`, `memory`, `simulated`, or yours.
    pub backend: &'static str,
    /// An acknowledged commit survives a crash of the process (for an on-disk backend:
    /// it is synced to its write-ahead log before `commit` returns `Ok`).
    pub durable: bool,
    /// The same location can be opened again after every handle was dropped (a crash) or
    /// shut down, and holds what was committed: the crash cases and the crash harness run.
    pub reopenable: bool,
    /// Several Keel processes may share the store at once, each seeing the others'
    /// commits and watches (FoundationDB; the simulated store's clones model it). The
    /// server coordinates its nodes (one scheduler, cross-node wake-ups) only then.
    pub multi_node: bool,
    /// Which limits the backend refuses past itself.
    pub limits: EnforcedLimits,
}

/// Which of FoundationDB's limits a backend enforces itself. A backend that does not
/// enforce a limit must still accept everything inside it; enforcing it lets the suite
/// check the refusal, and makes a caller that would exceed it fail in tests rather than
/// in production on FoundationDB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnforcedLimits {
    /// A commit writing a key over [`MAX_KEY_BYTES`] or a value over [`MAX_VALUE_BYTES`]
    /// fails with [`StorageError::LimitExceeded`] and writes nothing.
    pub key_and_value_sizes: bool,
    /// A commit writing over [`MAX_TXN_BYTES`] (keys plus values) fails with
    /// [`StorageError::LimitExceeded`] and writes nothing.
    pub transaction_bytes: bool,
    /// A transaction older than [`MAX_TXN_DURATION`] fails its reads and commit with
    /// [`StorageError::TransactionTooOld`] (retryable).
    pub transaction_duration: bool,
}

/// Outcome of a successful commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitInfo {
    /// The version at which the writes became visible; 0 for a read-only transaction.
    pub version: Version,
}

/// A future resolving when a watched key changes.
pub type WatchFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// A storage backend: a factory of transactions.
#[async_trait]
pub trait KvStore: Send + Sync + 'static {
    /// Opens a transaction at the current read version.
    async fn begin(&self) -> Result<Box<dyn KvTxn>>;

    /// Resolves when a transaction committed after `since` has written `key`
    /// (at once if that already happened). Spurious wake-ups are allowed.
    fn watch(&self, key: &[u8], since: Version) -> WatchFuture;

    /// What this backend supports.
    fn capabilities(&self) -> Capabilities;

    /// Flushes and stops accepting commits; later calls fail with `Unavailable`.
    async fn shutdown(&self) -> Result<()>;
}

/// An open transaction. Dropping it without committing discards its writes.
#[async_trait]
pub trait KvTxn: Send {
    /// The version this transaction reads at.
    fn read_version(&self) -> Version;

    /// Reads one key (conflict-tracked).
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Reads one key without a read conflict.
    async fn get_snapshot(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Reads at most `opts.limit` pairs of `range` in key order (or reverse). Unless
    /// `opts.snapshot`, the part of the range actually covered (up to the last returned
    /// key when the limit cut it short) joins the read conflict set.
    async fn get_range(&mut self, range: &KeyRange, opts: ReadOptions) -> Result<Vec<KeyValue>>;

    /// Buffers a write.
    fn set(&mut self, key: &[u8], value: &[u8]);

    /// Buffers a deletion.
    fn clear(&mut self, key: &[u8]);

    /// Buffers the deletion of every key in `range`.
    fn clear_range(&mut self, range: &KeyRange);

    /// Forgets this transaction's writes of `key`, a key that did not exist at its read
    /// version (the caller created it in this transaction, e.g. an index entry). The
    /// outcome equals [`clear`](KvTxn::clear), which is the default; a backend that
    /// buffers writes may instead leave nothing to store for the key: no tombstone, no
    /// write conflict.
    fn withdraw(&mut self, key: &[u8]) {
        self.clear(key);
    }

    /// Buffers an addition of `delta` to the little-endian `i64` counter at `key`
    /// (a missing key counts as 0), applied at commit without a read conflict.
    fn atomic_add(&mut self, key: &[u8], delta: i64);

    /// Adds `key` to the read conflict set without reading it.
    fn add_read_conflict(&mut self, key: &[u8]);

    /// Lets [`KvTxn::commit`] return once the writes are applied, in commit order, and
    /// survive a crash of this process, before they are synced: an OS crash or power loss
    /// may lose them (with every later relaxed commit), never a synced commit after them,
    /// whose sync covers everything ordered before it. Only for writes whose loss is an
    /// outcome that already happens, such as a task lease (lost = expired). Backends that
    /// sync every commit ignore it.
    fn relax_durability(&mut self) {}

    /// Commits durably; see the module docs for the failure semantics.
    async fn commit(self: Box<Self>) -> Result<CommitInfo>;
}

/// Decodes a counter written by [`KvTxn::atomic_add`].
pub fn decode_counter(bytes: Option<&[u8]>) -> i64 {
    match bytes {
        Some(b) if b.len() == 8 => {
            let mut buf = [0u8; 8];
            buf.copy_from_slice(b);
            i64::from_le_bytes(buf)
        }
        _ => 0,
    }
}
