//! Keel's embedded default storage backend: RocksDB with optimistic concurrency and
//! group commit.
//!
//! # How a commit works
//!
//! Transactions are [`OccTxn`]s: they read committed data straight from RocksDB and
//! buffer their writes. [`KvTxn::commit`] sends the transaction's [`CommitRequest`] over a
//! bounded channel to **one committer thread**, which:
//!
//! 1. drains every pending request (up to [`RocksOptions::max_batch_requests`] /
//!    [`RocksOptions::max_batch_bytes`]);
//! 2. for each, in order, runs [`ConflictTracker::check`] against everything committed
//!    before the batch *and* the requests accepted earlier in the same batch (the
//!    tracker records each request as it is accepted); losers get
//!    [`StorageError::Conflict`] at once;
//! 3. builds **one** `WriteBatch` holding every accepted request plus the new version
//!    counter: point writes in key order (a key's writes in commit order, those a later
//!    write of the key shadows left out), atomic adds as merge operands RocksDB sums;
//! 4. writes it with `sync = true` (the write-ahead log is fsynced) — one fsync for the
//!    whole batch. A batch made only of transactions that called
//!    [`KvTxn::relax_durability`] is written without the sync: RocksDB hands it to the OS
//!    before answering (it survives `kill -9`), and the next synced batch, written after
//!    it in the same log, makes it durable too;
//! 5. advances the durable version, fires watches and answers each request.
//!
//! A relaxed transaction that finds the queue empty and no batch being written skips the
//! thread: it takes the committer's lock and runs the same steps as a batch of one on its
//! own thread, sparing two thread hops and their wake-ups (callgrind cannot see them;
//! under the Python SDK, whose polls mostly lease here, -11 % context switches and -6 %
//! server CPU per workflow in 4 of 4 interleaved pairs). Should RocksDB stall such a
//! write (memtables or level 0 behind), it is not made: the accepted request waits in
//! the committer's state, and the thread writes it before anything else. A synced
//! transaction always goes to the thread (inline, its fsync held a runtime thread and
//! cost 14 % of the throughput at 20 workflows in flight).
//!
//! A transaction reads at the last *durable* version, which only advances after step 4,
//! so every commit at or below a reader's version is visible to it. A reader may also see
//! a newer batch that is written but not yet acknowledged; its reads of that data then
//! conflict at commit (the tracker recorded the batch before writing it).
//!
//! A read-only transaction is checked by the committer too (its reads went to the latest
//! data, not a snapshot), except when no write newer than its read version has started:
//! then it commits at once with version 0.
//!
//! Reads run synchronously on the calling task: RocksDB serves them from the memtable or
//! block cache, and the committer thread keeps the fsync off the async runtime (a relaxed
//! commit made inline writes to the log and memtable, and never syncs).
//!
//! # A failed write (a full disk)
//!
//! If the write fails, every request of the batch gets [`StorageError::CommitUnknown`]
//! (the log may hold some of it), the versions it took are handed out again, and the
//! store **refuses writes but keeps serving reads**: transactions begin and read as
//! before, read-only ones commit, and a commit with writes fails at once with
//! [`StorageError::Unavailable`] saying why (`disk full: ...`), without touching the
//! disk. [`RocksStore::write_refusal`] tells operators the same.
//!
//! Writes come back by themselves. RocksDB (7.8, Debian's, which this crate links)
//! stops writing after an I/O error and recovers on its own: `DB::Open` installs a
//! default `SstFileManager`, whose thread polls the free space of a full disk every 5 s
//! and, once at least the largest memtable size (`write_buffer_size`, 16 MiB by
//! default) is free, flushes the memtables to a fresh write-ahead log and clears the
//! error (retryable I/O errors are resumed by its own retry loop). The C API of this
//! version has no `DB::Resume` and no way to configure the `SstFileManager`, and Keel
//! denies `unsafe` code, so Keel relies on that recovery and only *detects* it: while
//! writes are refused the committer probes every 100 ms, backing off to once a second,
//! with a tiny synced write of the version key (its current value). The first probe that
//! succeeds ends the refusal; nothing is acknowledged before a synced write succeeded.
//!
//! Two things make that recovery safe with this library, both found on a small tmpfs:
//!
//! * RocksDB's info `LOG` is written only at open and for fatal errors. A RocksDB built
//!   with assertions on (as Debian's librocksdb, which the test builds link) aborts
//!   the process when a second line is appended to a `LOG` whose last append failed with
//!   `ENOSPC` (`WritableFileWriter::AssertFalseAndGetStatusForPrevError`), which a full
//!   disk did in 7 of 24 runs at the default `INFO` level and in none of 45 at `FATAL`.
//! * The metadata column family's memtable is never left empty when a write can fail:
//!   at open and in every probe the version key is first written *without* the log.
//!   RocksDB's recovery switches to a new write-ahead log only when it has a memtable to
//!   flush; after a failed log append with every memtable empty it keeps the broken log
//!   writer, and the next logged write hits the same assertion. Both measures stay in
//!   the build without assertions the server compiles; the full-disk end-to-end test
//!   (`tests/e2e/test_disk_full.py`) passed on that build too (2026-12-05).
//!
//! A batch that failed is not in any memtable (RocksDB inserts only after the log write
//! succeeded), so no reader saw it; if the process dies before the recovery, reopening
//! may replay it from the log, which is what `CommitUnknown` allows.
//!
//! Versions survive restarts: the last committed version is stored in the `keel_meta`
//! column family in every batch, and the counter resumes from it on open. User data lives
//! in the default column family, so no key is reserved.

#![warn(missing_docs)]

use std::borrow::Cow;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keel_storage::occ::{
    CommitRequest, CommittedReader, Committer, ConflictTracker, OccTxn, Watches, Write,
};
use keel_storage::{
    decode_counter, Capabilities, CommitInfo, EnforcedLimits, KeyRange, KeyValue, KvStore, KvTxn,
    Result, StorageError, Version, WatchFuture, MAX_KEY_BYTES,
};
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType,
    Direction, IteratorMode, LogLevel, Options, WriteBatch, WriteOptions, DB,
};
use tokio::sync::{mpsc, oneshot, watch};

/// The backend's name in [`Capabilities`] (and so in discovery documents and metrics).
pub const BACKEND_NAME: &str = "rocksdb";

/// Column family holding Keel's own metadata (the version counter).
const META_CF: &str = "keel_meta";
/// Key of the last committed version in [`META_CF`], a big-endian `u64`.
const VERSION_KEY: &[u8] = b"version";
/// Memtable size of [`META_CF`], which holds one small key. RocksDB's recovery from a
/// full disk waits for the largest memtable size of any column family to be free, so
/// this stays well below [`RocksOptions::write_buffer_bytes`].
const META_WRITE_BUFFER_BYTES: usize = 1 << 20;
/// The first probe after a failed write, and the longest wait between two probes.
const PROBE_FIRST: Duration = Duration::from_millis(100);
const PROBE_MAX: Duration = Duration::from_secs(1);

/// Tuning of a [`RocksStore`].
#[derive(Debug, Clone)]
pub struct RocksOptions {
    /// Most requests one group commit holds.
    pub max_batch_requests: usize,
    /// A group commit stops draining once its requests write this many bytes.
    pub max_batch_bytes: usize,
    /// Capacity of the channel to the committer; committers wait when it is full.
    pub queue_depth: usize,
    /// RocksDB memtable size, in bytes. After a full disk, writes resume once this much
    /// is free on the data directory's filesystem (see the crate docs).
    pub write_buffer_bytes: usize,
    /// Compress SST files below level 1 with LZ4 (built in: the `rocksdb` crate's `lz4`).
    pub lz4: bool,
    /// Size of the block cache: data blocks, and the index and filter partitions (see
    /// [`table_options`]); with the memtables, it bounds RocksDB's memory.
    pub block_cache_bytes: usize,
}

impl Default for RocksOptions {
    fn default() -> Self {
        RocksOptions {
            max_batch_requests: 1024,
            max_batch_bytes: 16 << 20,
            queue_depth: 4096,
            write_buffer_bytes: 16 << 20,
            lz4: true,
            block_cache_bytes: 64 << 20,
        }
    }
}

/// RocksDB's memory, in bytes, as its own accounting reports it (summed over column
/// families).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RocksMemory {
    /// Memtables, active and immutable.
    pub memtables: u64,
    /// Table readers' memory outside the block cache (with [`table_options`], little
    /// more than the pinned top-level index and filter of each file).
    pub table_readers: u64,
    /// The block cache's usage: data blocks, index and filter partitions.
    pub block_cache: u64,
    /// The block cache's capacity.
    pub block_cache_capacity: u64,
}

/// Counters of the commit path, for metrics and benches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RocksStats {
    /// Transactions with writes that committed.
    pub commits: u64,
    /// Transactions rejected by the conflict check (`Conflict` or `TransactionTooOld`).
    pub conflicts: u64,
    /// Group commits that wrote something (one `WriteBatch` write each).
    pub batches: u64,
    /// Synced `WriteBatch` writes issued (failed ones included); a batch of only
    /// relaxed-durability transactions is written without a sync.
    pub synced_writes: u64,
    /// Most transactions committed by one write.
    pub largest_batch: u64,
    /// Group-commit writes that failed (each answered its requests `CommitUnknown` and
    /// started a spell of refused writes).
    pub failed_writes: u64,
    /// Key writes (puts, deletes, atomic adds, range deletes) committed, the store's own
    /// version key not counted: divided by the transitions made, the write amplification.
    pub written_keys: u64,
    /// Bytes of the committed write batches (keys, values and RocksDB's record framing).
    pub written_bytes: u64,
}

/// Why a [`RocksStore`] refuses writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteRefusalReason {
    /// The filesystem holding the data directory is full (`ENOSPC`).
    DiskFull,
    /// Any other failed write (an I/O error, permissions, ...).
    WriteFailed,
}

impl WriteRefusalReason {
    /// The machine-readable name: `disk_full` or `storage_write_failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteRefusalReason::DiskFull => "disk_full",
            WriteRefusalReason::WriteFailed => "storage_write_failed",
        }
    }

    fn of(error: &str) -> WriteRefusalReason {
        // RocksDB's `Status::NoSpace` text, which it gives `ENOSPC`.
        if error.contains("No space left on device") {
            WriteRefusalReason::DiskFull
        } else {
            WriteRefusalReason::WriteFailed
        }
    }
}

/// A spell of refused writes, as [`RocksStore::write_refusal`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRefusal {
    /// Why writes are refused.
    pub reason: WriteRefusalReason,
    /// RocksDB's message for the write that failed.
    pub message: String,
    /// How long writes have been refused so far.
    pub refused_for: Duration,
}

/// The refusal while it lasts.
#[derive(Debug, Clone)]
struct Refusal {
    reason: WriteRefusalReason,
    message: String,
    since: Instant,
}

impl Refusal {
    /// What a refused commit gets.
    fn error(&self) -> StorageError {
        let why = match self.reason {
            WriteRefusalReason::DiskFull => {
                "disk full: writes are refused until space is freed on the data directory's \
                 filesystem; reads are served, and writes resume by themselves"
            }
            WriteRefusalReason::WriteFailed => {
                "storage write failed: writes are refused until a probe write succeeds; reads \
                 are served, and writes resume by themselves"
            }
        };
        StorageError::WritesRefused(format!("{why} (rocksdb: {})", self.message))
    }
}

impl RocksStats {
    /// Average number of committed transactions per synced write.
    pub fn mean_batch_size(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            self.commits as f64 / self.batches as f64
        }
    }
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    conflicts: AtomicU64,
    batches: AtomicU64,
    synced_writes: AtomicU64,
    largest_batch: AtomicU64,
    failed_writes: AtomicU64,
    written_keys: AtomicU64,
    written_bytes: AtomicU64,
    /// Requests the committer has taken off the channel (tests use it to see the queue).
    received: AtomicU64,
}

/// State shared by the store handle, its transactions and the committer thread.
struct Shared {
    db: DB,
    /// The block cache of the default column family's tables (for its usage figure).
    cache: Cache,
    cache_capacity: usize,
    /// The last version whose write is applied (synced, unless every transaction of its
    /// batch relaxed durability); transactions read at it.
    durable: AtomicU64,
    /// The last version whose write may be visible to readers: raised *before* each
    /// write, so a read that saw a batch's data implies this covers the batch.
    written: AtomicU64,
    /// Whoever holds it commits: the committer thread, or a transaction committing
    /// inline (see [`Backend::commit_inline`]). Taken before `tracker`, never after.
    committing: Mutex<CommitState>,
    /// Owned by whoever commits; `watch` locks it briefly to ask `changed_since`.
    tracker: Mutex<ConflictTracker>,
    watches: Watches,
    /// Set once the store stops accepting work (shutdown or drop).
    closed: AtomicBool,
    /// Set by the committer when a write fails, cleared by the probe that succeeds.
    refusal: Mutex<Option<Refusal>>,
    /// Whether writes are accepted (the negation of `refusal`, to wait on).
    writable: watch::Sender<bool>,
    counters: Counters,
    /// While set, every write fails as on a full disk (tests of the failure path).
    #[cfg(test)]
    fail_writes: AtomicBool,
    /// While set, every write that may not stall finds RocksDB stalling.
    #[cfg(test)]
    stall_writes: AtomicBool,
}

impl Shared {
    fn unavailable(&self) -> StorageError {
        StorageError::Unavailable("store is shut down".into())
    }

    fn refusal(&self) -> Option<Refusal> {
        self.refusal
            .lock()
            .expect("invariant: refusal lock not poisoned")
            .clone()
    }

    /// Opens the database and reads the version counter.
    fn open(path: &Path, options: &RocksOptions) -> Result<Shared> {
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_write_buffer_size(options.write_buffer_bytes);
        db_options.set_max_background_jobs(2);
        // A bloom filter of each memtable's keys (2 % of its size): a point read of a key
        // the memtable lacks (an older one or the files hold it, or no one does) skips the
        // skip list search. Callgrind, 400 one-activity workflows: -2.9 % instructions.
        db_options.set_memtable_prefix_bloom_ratio(0.02);
        db_options.set_memtable_whole_key_filtering(true);
        db_options.set_keep_log_file_num(4);
        // See the crate docs: a LOG line after a failed LOG append aborts the process.
        db_options.set_log_level(LogLevel::Fatal);
        // LZ4 below level 1 only: a flush writes level 0, and level 0 is rewritten into
        // level 1 within minutes, so compressing there costs CPU at every flush and again
        // at that compaction for data that soon moves on (or is deleted by retention).
        // Levels 0 and 1 stay within a few hundred MB (4 flushes, then the 256 MB level
        // base), so the disk they take uncompressed is bounded.
        if options.lz4 {
            use DBCompressionType::{Lz4, None as Plain};
            db_options.set_compression_per_level(&[Plain, Plain, Lz4, Lz4, Lz4, Lz4, Lz4]);
        } else {
            db_options.set_compression_type(DBCompressionType::None);
        }
        // Atomic adds are merge operands, summed by RocksDB itself: the committer never
        // reads a counter to write it.
        db_options.set_merge_operator_associative("keel_counter_add", add_counters);
        let cache = Cache::new_lru_cache(options.block_cache_bytes).map_err(backend_error)?;
        db_options.set_block_based_table_factory(&table_options(&cache));
        let cfs = [
            ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, db_options.clone()),
            ColumnFamilyDescriptor::new(META_CF, {
                let mut meta = Options::default();
                meta.set_write_buffer_size(META_WRITE_BUFFER_BYTES);
                meta
            }),
        ];
        let db = DB::open_cf_descriptors(&db_options, path, cfs).map_err(backend_error)?;
        let meta = db
            .cf_handle(META_CF)
            .expect("invariant: meta column family just opened");
        let version = match db.get_cf(meta, VERSION_KEY).map_err(backend_error)? {
            None => 0,
            Some(bytes) => {
                let raw: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                    StorageError::Corruption(format!("version key holds {} bytes", bytes.len()))
                })?;
                u64::from_be_bytes(raw)
            }
        };
        let shared = Shared {
            db,
            cache,
            cache_capacity: options.block_cache_bytes,
            durable: AtomicU64::new(version),
            written: AtomicU64::new(version),
            committing: Mutex::new(CommitState {
                version,
                probe: None,
                stalled: None,
            }),
            tracker: Mutex::new(ConflictTracker::new(version)),
            watches: Watches::default(),
            closed: AtomicBool::new(false),
            refusal: Mutex::new(None),
            writable: watch::Sender::new(true),
            counters: Counters::default(),
            #[cfg(test)]
            fail_writes: AtomicBool::new(false),
            #[cfg(test)]
            stall_writes: AtomicBool::new(false),
        };
        shared
            .pin_meta_memtable(version)
            .map_err(|e| StorageError::Unavailable(format!("cannot write to the store: {e}")))?;
        Ok(shared)
    }

    /// Writes `batch` to the write-ahead log (handed to the OS, so it survives a crash
    /// of this process), synced to the disk when `sync`. With `no_stall`, a write that
    /// RocksDB would delay or stop (its memtables or level 0 are behind) is not made.
    fn write(
        &self,
        batch: WriteBatch,
        sync: bool,
        no_stall: bool,
    ) -> std::result::Result<(), WriteError> {
        #[cfg(test)]
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(WriteError::Failed(
                "IO error: No space left on device: injected".into(),
            ));
        }
        #[cfg(test)]
        if no_stall && self.stall_writes.load(Ordering::SeqCst) {
            return Err(WriteError::Stalled);
        }
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        options.set_no_slowdown(no_stall);
        self.db.write_opt(batch, &options).map_err(|e| {
            if no_stall && e.kind() == rocksdb::ErrorKind::Incomplete {
                WriteError::Stalled
            } else {
                WriteError::Failed(e.into_string())
            }
        })
    }

    /// Writes the version key, unchanged, to the metadata memtable only (not the log), so
    /// that a memtable is never empty when a logged write can fail (see the crate docs).
    /// Lost in a crash, which loses nothing: the logged value is the same.
    fn pin_meta_memtable(&self, version: Version) -> std::result::Result<(), String> {
        #[cfg(test)]
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err("IO error: No space left on device: injected".into());
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(self.meta_cf(), VERSION_KEY, version.to_be_bytes());
        let mut options = WriteOptions::default();
        options.disable_wal(true);
        self.db
            .write_opt(batch, &options)
            .map_err(|e| e.into_string())
    }

    /// Whether the store can write again after a failed write: the version key,
    /// unchanged, pinned in the memtable, then written synced. Fails at once, without
    /// I/O, while RocksDB still holds its background error.
    fn probe_write(&self, version: Version) -> std::result::Result<(), String> {
        self.pin_meta_memtable(version)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.meta_cf(), VERSION_KEY, version.to_be_bytes());
        self.write(batch, true, false).map_err(|e| match e {
            WriteError::Failed(e) => e,
            WriteError::Stalled => "write stalled".into(),
        })
    }

    fn meta_cf(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(META_CF)
            .expect("invariant: meta column family opened with the db")
    }
}

fn backend_error(e: rocksdb::Error) -> StorageError {
    StorageError::Backend(Box::new(e))
}

type Reply = oneshot::Sender<Result<CommitInfo>>;

/// Requests accepted into one batch, each with its version, in version order.
type Accepted = Vec<(Version, CommitRequest, Reply)>;

/// Why a write was not made.
enum WriteError {
    /// RocksDB would have stalled it (the caller asked it not to wait); nothing written.
    Stalled,
    /// It failed (a full disk, an I/O error); see [`Shared::refuse`].
    Failed(String),
}

enum Msg {
    Commit(CommitRequest, Reply),
    /// Stop after everything queued before; acknowledge once flushed.
    Stop(Option<oneshot::Sender<Result<()>>>),
    /// Look at the commit state again: an inline commit's write failed (probes are
    /// due) or would have stalled (its batch waits for this thread).
    Wake,
}

/// What transactions hold: committed reads plus the way to the committer.
struct Backend {
    shared: Arc<Shared>,
    sender: mpsc::Sender<Msg>,
}

impl Backend {
    /// Commits a relaxed request (one that need not wait for a sync, see
    /// [`KvTxn::relax_durability`]) on this thread if nothing is queued and no batch is
    /// being written: that spares it two thread hops (to the committer and back) and
    /// their wake-ups. A synced one always goes to the committer thread, which keeps the
    /// fsync off the async runtime and batches the commits that arrive meanwhile (synced
    /// inline, they cost mid-load throughput: 14 % at 20 workflows in flight). Hands the
    /// request back if it must queue.
    fn commit_inline(
        &self,
        request: CommitRequest,
        reply: Reply,
    ) -> Option<(CommitRequest, Reply)> {
        if self.sender.capacity() < self.sender.max_capacity() {
            return Some((request, reply));
        }
        let Ok(mut state) = self.shared.committing.try_lock() else {
            return Some((request, reply));
        };
        // `closed` is read under the lock the committer thread's stop takes.
        if !state.takes_inline(request.relaxed) || self.shared.closed.load(Ordering::Acquire) {
            return Some((request, reply));
        }
        self.shared
            .commit_batch(&mut state, vec![(request, reply)], true);
        if state.probe.is_some() || state.stalled.is_some() {
            // The write failed or would stall: over to the committer thread.
            let _ = self.sender.try_send(Msg::Wake);
        }
        None
    }
}

impl CommittedReader for Backend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.shared.db.get(key).map_err(backend_error)
    }

    fn range(&self, range: &KeyRange, limit: usize, reverse: bool) -> Result<Vec<KeyValue>> {
        read_range(&self.shared.db, range, limit, reverse)
    }
}

#[async_trait]
impl Committer for Backend {
    async fn commit(&self, request: CommitRequest) -> Result<CommitInfo> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(self.shared.unavailable());
        }
        // A read-only transaction needs the committer's check only if a write newer than
        // its read version could have been visible to its reads.
        if request.is_read_only()
            && self.shared.written.load(Ordering::SeqCst) <= request.read_version
        {
            return Ok(CommitInfo { version: 0 });
        }
        let (reply, answer) = oneshot::channel();
        let Some((request, reply)) = self.commit_inline(request, reply) else {
            return answer.await.unwrap_or(Err(StorageError::CommitUnknown));
        };
        if self.sender.send(Msg::Commit(request, reply)).await.is_err() {
            return Err(self.shared.unavailable());
        }
        // The committer answers every request it takes; a dropped reply means it died
        // mid-batch, after which the write may or may not have happened.
        answer.await.unwrap_or(Err(StorageError::CommitUnknown))
    }
}

/// At most `limit` pairs of `range` from the default column family, in one consistent
/// view (an iterator pins the state it was created on).
fn read_range(db: &DB, range: &KeyRange, limit: usize, reverse: bool) -> Result<Vec<KeyValue>> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let mode = match (reverse, &range.start, &range.end) {
        (false, Bound::Included(s) | Bound::Excluded(s), _) => {
            IteratorMode::From(s.as_slice(), Direction::Forward)
        }
        (false, Bound::Unbounded, _) => IteratorMode::Start,
        (true, _, Bound::Included(e) | Bound::Excluded(e)) => {
            IteratorMode::From(e.as_slice(), Direction::Reverse)
        }
        (true, _, Bound::Unbounded) => IteratorMode::End,
    };
    // Bounding the iterator matters: without bounds RocksDB steps over every tombstone
    // past the range's end (a queue-like table accumulates thousands) before it finds
    // the first live key that ends the scan.
    let mut opts = rocksdb::ReadOptions::default();
    match &range.start {
        Bound::Included(s) | Bound::Excluded(s) => opts.set_iterate_lower_bound(s.clone()),
        Bound::Unbounded => {}
    }
    match &range.end {
        Bound::Included(e) => opts.set_iterate_upper_bound(successor(e)),
        Bound::Excluded(e) => opts.set_iterate_upper_bound(e.clone()),
        Bound::Unbounded => {}
    }
    for item in db.iterator_opt(mode, opts) {
        let (key, value) = item.map_err(backend_error)?;
        if !range.contains(&key) {
            // The first key past the far bound ends the scan; a key equal to an
            // excluded near bound is skipped.
            let past_far_end = if reverse {
                !above_start(&range.start, &key)
            } else {
                !below_end(&range.end, &key)
            };
            if past_far_end {
                break;
            }
            continue;
        }
        out.push((key.into_vec(), value.into_vec()));
        if out.len() == limit {
            break;
        }
    }
    Ok(out)
}

fn above_start(start: &Bound<Vec<u8>>, key: &[u8]) -> bool {
    match start {
        Bound::Included(s) => key >= s.as_slice(),
        Bound::Excluded(s) => key > s.as_slice(),
        Bound::Unbounded => true,
    }
}

fn below_end(end: &Bound<Vec<u8>>, key: &[u8]) -> bool {
    match end {
        Bound::Included(e) => key <= e.as_slice(),
        Bound::Excluded(e) => key < e.as_slice(),
        Bound::Unbounded => true,
    }
}

/// The smallest key sorting after `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

/// Most keys a cleared range may hold to be written as point deletes (see
/// [`GroupCommitter::stage`]).
const POINT_DELETE_LIMIT: usize = 256;

/// Every key of `range`, stored or written by the `earlier` requests of the batch being
/// staged, when there are at most [`POINT_DELETE_LIMIT`]; `None` when there are more or
/// the scan fails (the caller then writes a range tombstone, which is always correct).
/// Called by the committer, the only writer, so the stored keys cannot change meanwhile.
fn keys_in(
    db: &DB,
    range: &KeyRange,
    earlier: &[(Version, CommitRequest, Reply)],
) -> Option<std::collections::BTreeSet<Vec<u8>>> {
    let mut keys = std::collections::BTreeSet::new();
    // Keys only: a raw iterator bounded like the range's half-open form.
    let (begin, end) = delete_bounds(range);
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(end);
    let mut stored = db.raw_iterator_opt(opts);
    stored.seek(&begin);
    while let Some(key) = stored.key() {
        if keys.len() > POINT_DELETE_LIMIT {
            return None;
        }
        keys.insert(key.to_vec());
        stored.next();
    }
    stored.status().ok()?;
    let bounds = (
        range.start.as_ref().map(Vec::as_slice),
        range.end.as_ref().map(Vec::as_slice),
    );
    for (_, request, _) in earlier {
        keys.extend(
            request
                .writes
                .range::<[u8], _>(bounds)
                .map(|(key, _)| key.clone()),
        );
    }
    (keys.len() <= POINT_DELETE_LIMIT).then_some(keys)
}

/// `range` as RocksDB's half-open `[begin, end)` for `delete_range`.
fn delete_bounds(range: &KeyRange) -> (Vec<u8>, Vec<u8>) {
    let begin = match &range.start {
        Bound::Included(s) => s.clone(),
        Bound::Excluded(s) => successor(s),
        Bound::Unbounded => Vec::new(),
    };
    let end = match &range.end {
        Bound::Included(e) => successor(e),
        Bound::Excluded(e) => e.clone(),
        // No stored key is longer than MAX_KEY_BYTES (commit rejects them), so this key
        // sorts after every one of them.
        Bound::Unbounded => vec![0xff; MAX_KEY_BYTES + 1],
    };
    (begin, end)
}

/// Keel's RocksDB backend; see the crate docs.
///
/// Durable and reopenable. Dropping it stops the committer thread (acknowledged commits
/// are already durable); [`KvStore::shutdown`] also flushes the memtables.
pub struct RocksStore {
    backend: Arc<Backend>,
    committer: Mutex<Option<JoinHandle<()>>>,
}

impl RocksStore {
    /// Opens (creating if missing) the store in directory `path`.
    pub fn open(path: &Path, options: RocksOptions) -> Result<RocksStore> {
        let shared = Shared::open(path, &options)?;
        let version = shared.durable.load(Ordering::Acquire);
        let shared = Arc::new(shared);
        let (sender, receiver) = mpsc::channel(options.queue_depth.max(1));
        let committer = GroupCommitter::new(shared.clone(), receiver, options)?;
        let handle = std::thread::Builder::new()
            .name("keel-rocksdb-commit".into())
            .spawn(move || committer.run())
            .map_err(|e| StorageError::Backend(Box::new(e)))?;
        tracing::debug!(path = %path.display(), version, "opened rocksdb store");
        Ok(RocksStore {
            backend: Arc::new(Backend { shared, sender }),
            committer: Mutex::new(Some(handle)),
        })
    }

    /// Counters of the commit path so far.
    pub fn stats(&self) -> RocksStats {
        let c = &self.backend.shared.counters;
        RocksStats {
            commits: c.commits.load(Ordering::Relaxed),
            conflicts: c.conflicts.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            synced_writes: c.synced_writes.load(Ordering::Relaxed),
            largest_batch: c.largest_batch.load(Ordering::Relaxed),
            failed_writes: c.failed_writes.load(Ordering::Relaxed),
            written_keys: c.written_keys.load(Ordering::Relaxed),
            written_bytes: c.written_bytes.load(Ordering::Relaxed),
        }
    }

    /// RocksDB's memory now, by its own accounting.
    pub fn memory(&self) -> RocksMemory {
        let shared = &self.backend.shared;
        let property = |name: &str| -> u64 {
            [rocksdb::DEFAULT_COLUMN_FAMILY_NAME, META_CF]
                .into_iter()
                .filter_map(|cf| shared.db.cf_handle(cf))
                .filter_map(|cf| shared.db.property_int_value_cf(cf, name).ok().flatten())
                .sum()
        };
        RocksMemory {
            memtables: property("rocksdb.cur-size-all-mem-tables"),
            table_readers: property("rocksdb.estimate-table-readers-mem"),
            block_cache: shared.cache.get_usage() as u64,
            block_cache_capacity: shared.cache_capacity as u64,
        }
    }

    /// Why writes are refused, while they are (after a failed write, until a probe write
    /// succeeds); `None` while the store accepts writes.
    pub fn write_refusal(&self) -> Option<WriteRefusal> {
        self.backend.shared.refusal().map(|r| WriteRefusal {
            reason: r.reason,
            message: r.message,
            refused_for: r.since.elapsed(),
        })
    }

    /// The last durable commit version.
    pub fn version(&self) -> Version {
        self.backend.shared.durable.load(Ordering::Acquire)
    }

    fn join_committer(&self) {
        let handle = self
            .committer
            .lock()
            .expect("invariant: committer lock not poisoned")
            .take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("rocksdb committer thread panicked");
            }
        }
    }
}

impl Drop for RocksStore {
    fn drop(&mut self) {
        let shared = &self.backend.shared;
        shared.closed.store(true, Ordering::Release);
        // If the queue is full the committer is busy and sees `closed` after its batch;
        // if the thread already stopped the send fails harmlessly.
        let _ = self.backend.sender.try_send(Msg::Stop(None));
        self.join_committer();
    }
}

#[async_trait]
impl KvStore for RocksStore {
    async fn begin(&self) -> Result<Box<dyn KvTxn>> {
        if self.backend.shared.closed.load(Ordering::Acquire) {
            return Err(self.backend.shared.unavailable());
        }
        Ok(Box::new(OccTxn::new(self.backend.clone(), self.version())))
    }

    fn watch(&self, key: &[u8], since: Version) -> WatchFuture {
        let shared = &self.backend.shared;
        // Register before asking the tracker, and read the durable version after
        // registering: a commit that becomes durable after the question fires the watch
        // (the committer fires watches after raising the durable version), one durable
        // before it answers `changed`. A commit recorded but not yet durable is the former.
        let fired = shared.watches.register(key);
        let visible = shared.durable.load(Ordering::Acquire);
        let changed = shared
            .tracker
            .lock()
            .expect("invariant: tracker lock not poisoned")
            .changed_since(key, since, visible);
        Box::pin(async move {
            if !changed {
                fired
                    .await
                    .map_err(|_| StorageError::Unavailable("store closed".into()))?;
            }
            Ok(())
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            backend: BACKEND_NAME,
            durable: true,
            reopenable: true,
            multi_node: false,
            limits: EnforcedLimits {
                // The shared optimistic transaction refuses oversized keys and values;
                // RocksDB itself takes any size, and transactions of any age.
                key_and_value_sizes: true,
                transaction_bytes: false,
                transaction_duration: false,
            },
        }
    }

    async fn shutdown(&self) -> Result<()> {
        let (ack, acked) = oneshot::channel();
        // Queued behind every commit sent before it, which the committer finishes first.
        let sent = self.backend.sender.send(Msg::Stop(Some(ack))).await;
        self.backend.shared.closed.store(true, Ordering::Release);
        let result = match sent {
            Ok(()) => acked
                .await
                .unwrap_or_else(|_| Err(self.backend.shared.unavailable())),
            // Already stopped by an earlier shutdown.
            Err(_) => Ok(()),
        };
        // The committer acknowledges as its last act, so this join is immediate.
        self.join_committer();
        result
    }
}

/// The commit path's state, held by whoever commits ([`Shared::committing`]).
struct CommitState {
    /// The last version handed out (equal to the durable version between batches, but
    /// for a stalled one).
    version: Version,
    /// While writes are refused: when to probe next, and the wait after that one.
    probe: Option<(Instant, Duration)>,
    /// A batch an inline commit accepted but RocksDB would have stalled: the committer
    /// thread writes it before anything else.
    stalled: Option<Accepted>,
}

impl CommitState {
    /// Whether a runtime thread may commit a request now (see [`Backend::commit_inline`]).
    fn takes_inline(&self, relaxed: bool) -> bool {
        relaxed && self.probe.is_none() && self.stalled.is_none()
    }
}

/// The committer thread: it commits what transactions queue for it, in batches.
struct GroupCommitter {
    shared: Arc<Shared>,
    receiver: mpsc::Receiver<Msg>,
    options: RocksOptions,
    /// Times the wait for the next request while writes are refused.
    timer: tokio::runtime::Runtime,
}

impl GroupCommitter {
    fn new(
        shared: Arc<Shared>,
        receiver: mpsc::Receiver<Msg>,
        options: RocksOptions,
    ) -> Result<GroupCommitter> {
        let timer = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| StorageError::Backend(Box::new(e)))?;
        Ok(GroupCommitter {
            shared,
            receiver,
            options,
            timer,
        })
    }

    /// The next message, or `None` once every sender is gone. While writes are refused,
    /// probes whenever a probe falls due before a message arrives.
    fn next_message(&mut self) -> Option<Msg> {
        loop {
            let probe = self.state().probe;
            let Some((due, _)) = probe else {
                return self.receiver.blocking_recv();
            };
            let wait = due.saturating_duration_since(Instant::now());
            let receiver = &mut self.receiver;
            // `recv` is cancel-safe: a message is never lost to the timeout.
            let next = self
                .timer
                .block_on(async { tokio::time::timeout(wait, receiver.recv()).await });
            match next {
                Ok(msg) => return msg,
                Err(_elapsed) => self.shared.probe(&mut self.state()),
            }
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CommitState> {
        self.shared
            .committing
            .lock()
            .expect("invariant: commit state lock not poisoned")
    }

    /// Commits `batch` under the commit lock (waiting while an inline commit holds it).
    fn commit_batch(&mut self, batch: Vec<(CommitRequest, Reply)>) {
        self.shared.commit_batch(&mut self.state(), batch, false);
    }

    fn run(mut self) {
        let mut stop_ack = None;
        while let Some(first) = self.next_message() {
            let mut batch = Vec::new();
            let mut bytes = 0;
            let mut stopping = false;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Commit(request, reply) => {
                        self.shared
                            .counters
                            .received
                            .fetch_add(1, Ordering::Relaxed);
                        bytes += request.written_bytes();
                        batch.push((request, reply));
                    }
                    Msg::Stop(ack) => {
                        stop_ack = ack;
                        stopping = true;
                        break;
                    }
                    Msg::Wake => {}
                }
                if batch.len() >= self.options.max_batch_requests
                    || bytes >= self.options.max_batch_bytes
                {
                    break;
                }
                next = self.receiver.try_recv().ok();
            }
            self.commit_batch(batch);
            if stopping || self.shared.closed.load(Ordering::Acquire) {
                break;
            }
        }
        // Under the commit lock, so no inline commit is under way or starts after this.
        let state = self.state();
        self.shared.closed.store(true, Ordering::Release);
        drop(state);
        // Requests queued after the stop were never applied.
        self.receiver.close();
        while let Ok(msg) = self.receiver.try_recv() {
            match msg {
                Msg::Commit(_, reply) => {
                    let _ = reply.send(Err(self.shared.unavailable()));
                }
                Msg::Stop(Some(ack)) => {
                    let _ = ack.send(self.stop_result());
                }
                Msg::Stop(None) | Msg::Wake => {}
            }
        }
        if let Some(ack) = stop_ack {
            let _ = ack.send(self.stop_result());
        }
    }

    /// What a stop reports. The final flush only shortens the next open: every
    /// acknowledged commit is already in the write-ahead log (synced, or handed to the OS
    /// for relaxed ones), so a stop succeeds without it. While writes are refused it is
    /// not even tried, since it would write to a store that cannot.
    fn stop_result(&self) -> Result<()> {
        if let Some(refusal) = self.shared.refusal() {
            tracing::warn!(
                reason = refusal.reason.as_str(),
                "writes are refused at shutdown; skipping the final flush (the write-ahead log holds every acknowledged commit)"
            );
            return Ok(());
        }
        if let Err(e) = self.shared.db.flush() {
            tracing::warn!(
                error = %e,
                "final flush failed; the write-ahead log holds every acknowledged commit"
            );
        }
        Ok(())
    }
}

/// The commit path itself, run by whoever holds [`Shared::committing`].
impl Shared {
    /// Records a failed write: writes are refused until [`Self::probe`] succeeds.
    fn refuse(&self, state: &mut CommitState, error: String) {
        self.counters.failed_writes.fetch_add(1, Ordering::Relaxed);
        let reason = WriteRefusalReason::of(&error);
        tracing::error!(
            error = %error,
            reason = reason.as_str(),
            "rocksdb write failed; refusing writes and serving reads until the store can write again"
        );
        *self
            .refusal
            .lock()
            .expect("invariant: refusal lock not poisoned") = Some(Refusal {
            reason,
            message: error,
            since: Instant::now(),
        });
        self.writable.send_replace(false);
        state.probe = Some((Instant::now() + PROBE_FIRST, PROBE_FIRST));
    }

    /// One probe write; ends the refusal when it succeeds, else backs off.
    fn probe(&self, state: &mut CommitState) {
        let Some((_, wait)) = state.probe else {
            return;
        };
        match self.probe_write(state.version) {
            Ok(()) => {
                state.probe = None;
                let ended = self
                    .refusal
                    .lock()
                    .expect("invariant: refusal lock not poisoned")
                    .take();
                self.writable.send_replace(true);
                if let Some(refusal) = ended {
                    tracing::info!(
                        reason = refusal.reason.as_str(),
                        refused_ms = refusal.since.elapsed().as_millis() as u64,
                        "rocksdb accepts writes again; writes resumed"
                    );
                }
            }
            Err(error) => {
                tracing::debug!(error = %error, "rocksdb still refuses writes");
                let wait = (wait * 2).min(PROBE_MAX);
                state.probe = Some((Instant::now() + wait, wait));
            }
        }
    }

    /// Commits `batch` as one write (see the crate docs) and answers each request. A
    /// batch an inline commit left stalled is written first, as its versions come first.
    ///
    /// `inline`: the caller is a runtime thread, which must not wait out a write stall;
    /// a stalled batch stays in `state` for the committer thread.
    fn commit_batch(
        &self,
        state: &mut CommitState,
        batch: Vec<(CommitRequest, Reply)>,
        inline: bool,
    ) {
        if let Some(stalled) = state.stalled.take() {
            // Allowed to stall, so nothing comes back.
            self.write_accepted(state, stalled, false);
        }
        if batch.is_empty() {
            return;
        }
        // A busy store probes between batches, not only while idle.
        if state.probe.is_some_and(|(due, _)| due <= Instant::now()) {
            self.probe(state);
        }
        let refusal = self.refusal();
        let mut accepted: Accepted = Vec::new();
        for (request, reply) in batch {
            // Locked per request, not across `stage`'s reads, so `watch` never waits on I/O.
            let mut tracker = self
                .tracker
                .lock()
                .expect("invariant: tracker lock not poisoned");
            let verdict = tracker.check(&request);
            if let Err(e) = verdict {
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(Err(e));
                continue;
            }
            if request.is_read_only() {
                let _ = reply.send(Ok(CommitInfo { version: 0 }));
                continue;
            }
            if let Some(refusal) = &refusal {
                // Refused before anything is written: certainly not applied.
                let _ = reply.send(Err(refusal.error()));
                continue;
            }
            // Recorded when accepted, so the batch's later requests are checked against
            // it (and settled below should the write fail).
            state.version += 1;
            tracker.record(state.version, &request);
            drop(tracker);
            accepted.push((state.version, request, reply));
        }
        if !accepted.is_empty() {
            state.stalled = self.write_accepted(state, accepted, inline);
        }
    }

    /// Writes the `accepted` requests (the last versions handed out) as one batch and
    /// answers them. With `no_stall`, a write RocksDB would stall is not made: the
    /// requests come back, to be written (by the committer thread) before any other.
    fn write_accepted(
        &self,
        state: &mut CommitState,
        accepted: Accepted,
        no_stall: bool,
    ) -> Option<Accepted> {
        let version = accepted.last().map_or(state.version, |(v, _, _)| *v);
        let mut write_batch = WriteBatch::default();
        let mut points = PointWrites::default();
        for (i, (_, request, _)) in accepted.iter().enumerate() {
            self.stage(request, &accepted[..i], &mut write_batch, &mut points);
        }
        points.write_into(&mut write_batch);
        let (keys, bytes) = (write_batch.len() as u64, write_batch.size_in_bytes() as u64);
        write_batch.put_cf(self.meta_cf(), VERSION_KEY, version.to_be_bytes());
        self.written.store(version, Ordering::SeqCst);
        // One sync covers the whole batch and everything written before it.
        let sync = accepted.iter().any(|(_, request, _)| !request.relaxed);
        match self.write(write_batch, sync, no_stall) {
            Ok(()) => {}
            // Nothing was written; the versions stay taken and recorded.
            Err(WriteError::Stalled) => return Some(accepted),
            Err(WriteError::Failed(e)) => {
                // Not applied to any memtable, so no reader saw it: its versions are
                // handed out again. `written` stays raised, which only sends read-only
                // commits through the committer's check until the next batch lowers it.
                state.version = self.durable.load(Ordering::Acquire);
                self.tracker
                    .lock()
                    .expect("invariant: tracker lock not poisoned")
                    .settle_unwritten(state.version);
                self.refuse(state, e);
                for (_, _, reply) in accepted {
                    let _ = reply.send(Err(StorageError::CommitUnknown));
                }
                return None;
            }
        }
        if sync {
            self.counters.synced_writes.fetch_add(1, Ordering::Relaxed);
        }
        self.durable.store(version, Ordering::Release);
        let committed = accepted.len() as u64;
        let counters = &self.counters;
        counters.commits.fetch_add(committed, Ordering::Relaxed);
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters.written_keys.fetch_add(keys, Ordering::Relaxed);
        counters.written_bytes.fetch_add(bytes, Ordering::Relaxed);
        counters
            .largest_batch
            .fetch_max(committed, Ordering::Relaxed);
        for (version, request, reply) in accepted {
            self.watches.fire(&request);
            let _ = reply.send(Ok(CommitInfo { version }));
        }
        None
    }

    /// Adds `request`'s writes to `points`, and its cleared ranges to `write_batch`
    /// after every point write staged before them.
    ///
    /// A cleared range holding at most [`POINT_DELETE_LIMIT`] keys (stored, or written by
    /// the requests `earlier` in this batch) becomes point deletes of those keys; a
    /// larger one a range tombstone. RocksDB 7.8 rebuilds a fragmented list of every
    /// range tombstone in the memtable on each point read, so small range deletes (three
    /// per run a retention pass purges, one per flush of deferred signals) made every
    /// read cost O(range tombstones) until the memtable flushed.
    fn stage<'a>(
        &self,
        request: &'a CommitRequest,
        earlier: &[(Version, CommitRequest, Reply)],
        write_batch: &mut WriteBatch,
        points: &mut PointWrites<'a>,
    ) {
        for range in &request.cleared_ranges {
            match keys_in(&self.db, range, earlier) {
                Some(keys) => keys
                    .into_iter()
                    .for_each(|key| points.push(Cow::Owned(key), PointWrite::Delete)),
                None => {
                    points.write_into(write_batch);
                    let (begin, end) = delete_bounds(range);
                    write_batch.delete_range(begin, end);
                }
            }
        }
        for (key, write) in &request.writes {
            let write = match write {
                Write::Set(v) => PointWrite::Put(v),
                Write::Clear => PointWrite::Delete,
                Write::Add(delta) => PointWrite::Add(*delta),
            };
            points.push(Cow::Borrowed(key), write);
        }
    }
}

/// The point writes of one group commit not yet in its write batch, in commit order.
///
/// They go into the batch sorted by key: RocksDB's memtable remembers where its last
/// insert went and searches from there, so sorted neighbours cost a few key comparisons
/// where a random order searches the skip list from its top each time. Sorting is
/// stable, so one key's writes keep their commit order, and a key's write that a later
/// put or delete of the same key shadows is dropped (no reader sees a batch half
/// applied); consecutive atomic adds of one key are summed into one merge operand
/// (summed by [`add_counters`]). Reordering different keys changes nothing a reader can
/// see, but not across a range tombstone, so `stage` writes these out before one.
#[derive(Default)]
struct PointWrites<'a>(Vec<(Cow<'a, [u8]>, PointWrite<'a>)>);

#[derive(Clone, Copy)]
enum PointWrite<'a> {
    Put(&'a [u8]),
    Delete,
    Add(i64),
}

impl<'a> PointWrites<'a> {
    fn push(&mut self, key: Cow<'a, [u8]>, write: PointWrite<'a>) {
        self.0.push((key, write));
    }

    fn write_into(&mut self, write_batch: &mut WriteBatch) {
        self.0.sort_by(|a, b| a.0.cmp(&b.0));
        let mut carried: Option<i64> = None;
        for (i, (key, write)) in self.0.iter().enumerate() {
            let next = self.0.get(i + 1).filter(|(k, _)| k == key).map(|(_, w)| w);
            match (write, next) {
                (_, Some(PointWrite::Put(_) | PointWrite::Delete)) => carried = None,
                (PointWrite::Add(delta), Some(PointWrite::Add(_))) => {
                    carried = Some(carried.unwrap_or(0).wrapping_add(*delta));
                }
                (PointWrite::Add(delta), _) => {
                    let sum = carried.take().unwrap_or(0).wrapping_add(*delta);
                    write_batch.merge(key, sum.to_le_bytes());
                }
                (PointWrite::Put(value), _) => write_batch.put(key, value),
                (PointWrite::Delete, _) => write_batch.delete(key),
            }
        }
        self.0.clear();
    }
}

/// Table options: every block (data, index, filter) in the one LRU `cache`, so the
/// store's memory is bounded by configuration rather than by its data.
///
/// The index and the (bloom) filter of each file are partitioned: only their small
/// top levels are pinned, and a lookup loads just the 4 KB partitions it needs, at the
/// cache's high priority (half its capacity, which data blocks cannot evict). Unpartitioned
/// index blocks in a bounded cache were the wrong way round: a whole file's index block
/// was evicted by data blocks and read back and LZ4-decompressed on every lookup (a third
/// of the server's CPU at 100,000 stored workflows). The bloom filter spares a lookup of
/// an absent key (a new workflow id, an idempotency key) a data block read per level.
fn table_options(cache: &Cache) -> BlockBasedOptions {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_format_version(5);
    table.set_bloom_filter(10.0, false);
    table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_metadata_block_size(4096);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_top_level_index_and_filter(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table
}

/// The merge operator of atomic adds: the sum of the existing little-endian `i64` (a
/// missing or malformed value counts as 0, as in `decode_counter`) and every operand.
fn add_counters(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    let sum = operands
        .iter()
        .fold(decode_counter(existing), |acc, operand| {
            acc.wrapping_add(decode_counter(Some(operand)))
        });
    Some(sum.to_le_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_storage::ReadOptions;

    fn open(dir: &Path) -> RocksStore {
        RocksStore::open(dir, RocksOptions::default()).expect("open")
    }

    async fn read(store: &RocksStore, key: &[u8]) -> Option<Vec<u8>> {
        store
            .begin()
            .await
            .expect("begin")
            .get(key)
            .await
            .expect("get")
    }

    /// Tombstones stepped over by `read_range` on this thread, per RocksDB's perf context.
    fn tombstones_skipped(db: &DB, range: &KeyRange, reverse: bool) -> u64 {
        use rocksdb::perf::{set_perf_stats, PerfContext, PerfMetric, PerfStatsLevel};
        set_perf_stats(PerfStatsLevel::EnableCount);
        let mut ctx = PerfContext::default();
        ctx.reset();
        let pairs = read_range(db, range, 10, reverse).expect("scan");
        assert_eq!(pairs.len(), 1, "the one live key of the range");
        ctx.metric(PerfMetric::InternalDeleteSkippedCount)
    }

    #[tokio::test]
    async fn a_withdrawn_key_leaves_no_memtable_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let entries = |store: &RocksStore, name: &str| {
            store
                .backend
                .shared
                .db
                .property_int_value(name)
                .expect("property")
                .expect("property known")
        };
        let before = entries(&store, "rocksdb.num-entries-active-mem-table");
        let mut txn = store.begin().await.expect("begin");
        txn.set(b"record", b"r");
        txn.set(b"index-entry", b"");
        txn.clear(b"index-entry");
        txn.withdraw(b"index-entry");
        txn.commit().await.expect("commit");
        assert_eq!(read(&store, b"index-entry").await, None);
        // The record alone (the version key is in its own column family): no tombstone
        // for the index entry.
        assert_eq!(
            entries(&store, "rocksdb.num-entries-active-mem-table") - before,
            1
        );
        assert_eq!(entries(&store, "rocksdb.num-deletes-active-mem-table"), 0);
    }

    #[tokio::test]
    async fn index_and_filter_memory_is_held_in_the_bounded_block_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache_bytes = 1 << 20;
        let store = RocksStore::open(
            dir.path(),
            RocksOptions {
                write_buffer_bytes: 4 << 20,
                block_cache_bytes: cache_bytes,
                ..RocksOptions::default()
            },
        )
        .expect("open");
        // About 12 MB in several table files: unpartitioned, their index blocks alone take
        // some 75 KB of table-reader memory outside the cache, growing with the data.
        for batch in 0..50u32 {
            let mut txn = store.begin().await.expect("begin");
            for i in 0..2_000u32 {
                let key = format!("workflow/{:08}/run-record", batch * 2_000 + i);
                txn.set(key.as_bytes(), &[b'x'; 120]);
            }
            txn.commit().await.expect("commit");
        }
        for i in (0..100_000u32).step_by(997) {
            let key = format!("workflow/{i:08}/run-record");
            assert!(read(&store, key.as_bytes()).await.is_some(), "{key}");
            assert!(read(&store, format!("absent/{i}").as_bytes())
                .await
                .is_none());
        }
        let memory = store.memory();
        assert_eq!(memory.block_cache_capacity, cache_bytes as u64);
        assert!(
            memory.table_readers < 16 << 10,
            "table readers hold {} bytes outside the cache",
            memory.table_readers
        );
        assert!(memory.block_cache > 0 && memory.block_cache <= cache_bytes as u64 + (64 << 10));
    }

    #[tokio::test]
    async fn range_scans_never_step_over_tombstones_outside_the_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        // A queue-like table between two live keys: 5,000 rows written, then deleted.
        let mut txn = store.begin().await.expect("begin");
        txn.set(b"a-live", b"v");
        txn.set(b"c-live", b"v");
        for i in 0..5_000u32 {
            txn.set(&[b"b-queue-".as_slice(), &i.to_be_bytes()].concat(), b"v");
        }
        txn.commit().await.expect("commit");
        let mut txn = store.begin().await.expect("begin");
        for i in 0..5_000u32 {
            txn.clear(&[b"b-queue-".as_slice(), &i.to_be_bytes()].concat());
        }
        txn.commit().await.expect("commit");

        let db = &store.backend.shared.db;
        // Forward over `a`, whose end borders the tombstones; reverse over `c`, whose
        // start does. Unbounded iterators would step over all 5,000 to stop.
        assert!(tombstones_skipped(db, &KeyRange::prefix(b"a"), false) < 10);
        assert!(tombstones_skipped(db, &KeyRange::prefix(b"c"), true) < 10);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_share_synced_writes() {
        const N: u32 = 200;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(open(dir.path()));
        // Holding the commit lock keeps every commit from committing inline and stalls
        // the committer at its first batch, so the other commits queue up and must go out
        // together: batching is certain, not likely.
        let stall = store.backend.shared.committing.lock().expect("commit lock");
        let tasks: Vec<_> = (0..N)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut txn = store.begin().await.expect("begin");
                    txn.set(&i.to_be_bytes(), b"v");
                    txn.atomic_add(b"count", 1);
                    txn.commit()
                        .await
                        .expect("blind writes and adds never conflict")
                })
            })
            .collect();
        let shared = &store.backend.shared;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let queued = shared_queue_len(&store);
            let taken = shared.counters.received.load(Ordering::Relaxed) as usize;
            if queued + taken == N as usize {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "commits never reached the queue"
            );
            std::thread::yield_now();
        }
        drop(stall);
        let mut versions = Vec::new();
        for task in tasks {
            versions.push(task.await.expect("task").version);
        }
        versions.sort_unstable();
        versions.dedup();
        assert_eq!(
            versions.len(),
            N as usize,
            "every commit has its own version"
        );
        assert_eq!(
            decode_counter(read(&store, b"count").await.as_deref()),
            i64::from(N)
        );
        let stats = store.stats();
        assert_eq!(stats.commits, u64::from(N));
        assert!(
            stats.synced_writes <= 2,
            "one stalled batch, then one for the rest: {stats:?}"
        );
        assert_eq!(stats.synced_writes, stats.batches);
        assert!(stats.mean_batch_size() >= f64::from(N) / 2.0);
    }

    fn received(store: &RocksStore) -> u64 {
        store
            .backend
            .shared
            .counters
            .received
            .load(Ordering::Relaxed)
    }

    async fn commit_relaxed(store: &RocksStore, key: &[u8]) -> Result<CommitInfo> {
        let mut txn = store.begin().await?;
        txn.relax_durability();
        txn.set(key, b"v");
        txn.commit().await
    }

    #[tokio::test]
    async fn an_idle_store_commits_relaxed_transactions_on_the_calling_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let info = commit_relaxed(&store, b"relaxed").await.expect("commit");
        assert_eq!(info.version, 1);
        assert_eq!(received(&store), 0, "not through the committer thread");
        let info = commit_one(&store, b"synced").await.expect("commit");
        assert_eq!(info.version, 2);
        assert_eq!(received(&store), 1, "a synced commit is the thread's");
        let stats = store.stats();
        assert_eq!((stats.commits, stats.synced_writes), (2, 1));
        assert_eq!(read(&store, b"relaxed").await.as_deref(), Some(&b"v"[..]));
        drop(store);
        assert_eq!(open(dir.path()).version(), 2);
    }

    #[tokio::test]
    async fn a_commit_rocksdb_would_stall_is_written_by_the_committer_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let shared = &store.backend.shared;
        shared.stall_writes.store(true, Ordering::SeqCst);
        let info = commit_relaxed(&store, b"first")
            .await
            .expect("a stalled commit commits");
        assert_eq!(info.version, 1);
        assert_eq!(received(&store), 0, "taken inline, then handed over");
        // The next one is taken inline too, or queued if the thread still holds the lock.
        let info = commit_relaxed(&store, b"later")
            .await
            .expect("a stalled commit commits");
        assert_eq!(info.version, 2);
        for key in [b"first", b"later"] {
            assert_eq!(read(&store, key).await.as_deref(), Some(&b"v"[..]));
        }
        assert!(shared.committing.lock().expect("lock").stalled.is_none());
        assert_eq!(store.stats().commits, 2);
        drop(store);
        assert_eq!(open(dir.path()).version(), 2);
    }

    fn shared_queue_len(store: &RocksStore) -> usize {
        let sender = &store.backend.sender;
        sender.max_capacity() - sender.capacity()
    }

    /// A committer without its thread, to drive `commit_batch` with exact batches. Its
    /// timer is a runtime, so only synchronous tests may drop it.
    fn bare_committer(dir: &Path) -> GroupCommitter {
        let options = RocksOptions::default();
        let shared = Arc::new(Shared::open(dir, &options).expect("open"));
        let (_sender, receiver) = mpsc::channel(1);
        GroupCommitter::new(shared, receiver, options).expect("committer")
    }

    fn request(reads: &[&[u8]], writes: Vec<(&[u8], Write)>) -> CommitRequest {
        CommitRequest {
            read_version: 0,
            started_at: Some(std::time::Instant::now()),
            read_keys: reads.iter().map(|k| k.to_vec()).collect(),
            writes: writes.into_iter().map(|(k, w)| (k.to_vec(), w)).collect(),
            ..CommitRequest::default()
        }
    }

    fn run_batch(
        committer: &mut GroupCommitter,
        batch: Vec<CommitRequest>,
    ) -> Vec<Result<CommitInfo>> {
        let mut answers = Vec::new();
        let batch = batch
            .into_iter()
            .map(|r| {
                let (reply, answer) = oneshot::channel();
                answers.push(answer);
                (r, reply)
            })
            .collect();
        committer.commit_batch(batch);
        answers
            .into_iter()
            .map(|mut a| a.try_recv().expect("every request answered"))
            .collect()
    }

    #[test]
    fn adds_in_one_batch_resolve_against_earlier_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut committer = bare_committer(dir.path());
        run_batch(
            &mut committer,
            vec![request(
                &[],
                vec![(b"c", Write::Set(5i64.to_le_bytes().to_vec()))],
            )],
        );
        let mut clear = request(&[], vec![]);
        clear.cleared_ranges.push(KeyRange::prefix(b"c"));
        let answers = run_batch(
            &mut committer,
            vec![
                request(&[], vec![(b"c", Write::Add(1)), (b"d", Write::Add(2))]),
                request(&[], vec![(b"c", Write::Add(10))]),
                clear,
                request(&[], vec![(b"c", Write::Add(7)), (b"d", Write::Add(3))]),
            ],
        );
        let versions: Vec<Version> = answers
            .into_iter()
            .map(|a| a.expect("no conflicts").version)
            .collect();
        assert_eq!(versions, vec![2, 3, 4, 5]);
        let db = &committer.shared.db;
        assert_eq!(
            decode_counter(db.get(b"c").expect("get").as_deref()),
            7,
            "5+1+10, cleared, +7"
        );
        assert_eq!(decode_counter(db.get(b"d").expect("get").as_deref()), 5);
        assert_eq!(
            committer
                .shared
                .counters
                .synced_writes
                .load(Ordering::Relaxed),
            2
        );
    }

    #[test]
    fn adds_of_one_batch_are_one_merge_operand_per_key_and_keep_their_order_with_puts_and_deletes()
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut committer = bare_committer(dir.path());
        let set = |v: i64| (b"c".as_slice(), Write::Set(v.to_le_bytes().to_vec()));
        let answers = run_batch(
            &mut committer,
            vec![
                request(&[], vec![(b"c", Write::Add(1)), (b"d", Write::Add(2))]),
                request(&[], vec![(b"c", Write::Add(10)), (b"d", Write::Add(3))]),
                request(&[], vec![set(100)]),
                request(&[], vec![(b"c", Write::Add(7)), (b"d", Write::Add(4))]),
                request(&[], vec![(b"c", Write::Clear)]),
                request(&[], vec![(b"c", Write::Add(-2))]),
            ],
        );
        assert!(answers.iter().all(Result::is_ok));
        let db = &committer.shared.db;
        let counter = |key: &[u8]| decode_counter(db.get(key).expect("get").as_deref());
        assert_eq!(counter(b"c"), -2, "1+10, set 100, +7, cleared, -2");
        assert_eq!(counter(b"d"), 9);
        // c: put, delete, merge (the merges before the put and the delete are shadowed);
        // d: one merge (one per add would be 9).
        assert_eq!(
            committer
                .shared
                .counters
                .written_keys
                .load(Ordering::Relaxed),
            4
        );
    }

    /// Point deletes in the active memtable (RocksDB does not count range deletes there).
    fn memtable_point_deletes(committer: &GroupCommitter) -> u64 {
        committer
            .shared
            .db
            .property_int_value("rocksdb.num-deletes-active-mem-table")
            .expect("property")
            .expect("property known")
    }

    fn stored_keys(committer: &GroupCommitter) -> Vec<Vec<u8>> {
        let all = KeyRange {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
        };
        read_range(&committer.shared.db, &all, 10_000, false)
            .expect("range")
            .into_iter()
            .map(|(key, _)| key)
            .collect()
    }

    #[test]
    fn a_small_cleared_range_becomes_point_deletes_of_its_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut committer = bare_committer(dir.path());
        let set = |key: &'static [u8]| (key, Write::Set(b"v".to_vec()));
        run_batch(
            &mut committer,
            vec![request(&[], vec![set(b"p/1"), set(b"p/2"), set(b"q")])],
        );
        let before = memtable_point_deletes(&committer);
        // The batch's first request writes into the range the second one clears, and the
        // third writes into it again: the clear must delete the stored keys and the first
        // request's, and leave the third's.
        let mut clear = request(&[], vec![]);
        clear.cleared_ranges.push(KeyRange::prefix(b"p/"));
        let answers = run_batch(
            &mut committer,
            vec![
                request(&[], vec![set(b"p/3")]),
                clear,
                request(&[], vec![set(b"p/4")]),
            ],
        );
        assert!(answers.iter().all(Result::is_ok));
        assert_eq!(
            stored_keys(&committer),
            vec![b"p/4".to_vec(), b"q".to_vec()]
        );
        assert_eq!(
            memtable_point_deletes(&committer) - before,
            3,
            "p/1, p/2 and p/3 deleted one by one, no range tombstone"
        );
    }

    #[test]
    fn a_large_cleared_range_is_one_range_tombstone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut committer = bare_committer(dir.path());
        let keys: Vec<Vec<u8>> = (0..=POINT_DELETE_LIMIT)
            .map(|i| format!("p/{i:04}").into_bytes())
            .collect();
        let mut fill = request(&[], vec![(b"q", Write::Set(b"v".to_vec()))]);
        fill.writes
            .extend(keys.iter().map(|k| (k.clone(), Write::Set(b"v".to_vec()))));
        run_batch(&mut committer, vec![fill]);
        let before = memtable_point_deletes(&committer);
        let mut clear = request(&[], vec![]);
        clear.cleared_ranges.push(KeyRange::prefix(b"p/"));
        assert!(run_batch(&mut committer, vec![clear])[0].is_ok());
        assert_eq!(stored_keys(&committer), vec![b"q".to_vec()]);
        assert_eq!(memtable_point_deletes(&committer), before);
    }

    #[test]
    fn writes_sorted_within_a_batch_stay_on_their_side_of_a_range_tombstone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut committer = bare_committer(dir.path());
        let mut fill = request(&[], vec![]);
        fill.writes.extend(
            (0..=POINT_DELETE_LIMIT)
                .map(|i| (format!("p/{i:04}").into_bytes(), Write::Set(b"v".to_vec()))),
        );
        run_batch(&mut committer, vec![fill]);
        let set = |key: &'static [u8], v: &[u8]| (key, Write::Set(v.to_vec()));
        let mut clear = request(&[], vec![]);
        clear.cleared_ranges.push(KeyRange::prefix(b"p/"));
        // Before the tombstone, writes that sort after keys written after it; after it,
        // one that sorts first: neither moves across it.
        let answers = run_batch(
            &mut committer,
            vec![
                request(&[], vec![set(b"p/z", b"before"), set(b"r", b"1")]),
                clear,
                request(&[], vec![set(b"p/a", b"after"), set(b"r", b"2")]),
                request(&[], vec![set(b"p/b", b"after")]),
            ],
        );
        assert!(answers.iter().all(Result::is_ok));
        assert_eq!(
            stored_keys(&committer),
            vec![b"p/a".to_vec(), b"p/b".to_vec(), b"r".to_vec()]
        );
        let db = &committer.shared.db;
        assert_eq!(db.get(b"r").expect("get").as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn written_keys_and_bytes_count_committed_writes_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut committer = bare_committer(dir.path());
        let shared = committer.shared.clone();
        let keys = || shared.counters.written_keys.load(Ordering::Relaxed);
        let bytes = || shared.counters.written_bytes.load(Ordering::Relaxed);
        let answers = run_batch(
            &mut committer,
            vec![
                request(
                    &[],
                    vec![(b"a", Write::Set(b"value".to_vec())), (b"b", Write::Clear)],
                ),
                request(&[], vec![(b"n", Write::Add(1))]),
            ],
        );
        assert!(answers.iter().all(|a| a.is_ok()));
        assert_eq!(
            keys(),
            3,
            "two writes and an add; the version key is not counted"
        );
        let after_first = bytes();
        assert!(after_first > b"ab".len() as u64 + b"value".len() as u64 + 8);
        // A read-only commit writes nothing.
        let answers = run_batch(&mut committer, vec![request(&[], vec![])]);
        assert!(answers.iter().all(|a| a.is_ok()));
        assert_eq!((keys(), bytes()), (3, after_first));
    }

    #[test]
    fn only_batches_of_relaxed_transactions_skip_the_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reopened = tempfile::tempdir().expect("tempdir");
        {
            let mut committer = bare_committer(dir.path());
            let relaxed = |key: &'static [u8]| CommitRequest {
                relaxed: true,
                ..request(&[], vec![(key, Write::Set(b"v".to_vec()))])
            };
            let shared = committer.shared.clone();
            let synced = || shared.counters.synced_writes.load(Ordering::Relaxed);
            let answers = run_batch(&mut committer, vec![relaxed(b"a"), relaxed(b"b")]);
            assert!(answers.iter().all(|a| a.is_ok()));
            assert_eq!(synced(), 0, "a batch of relaxed commits is not synced");
            // Copy the files while the store is open, as a crashed process leaves them:
            // the unsynced batch is already in the log the OS holds.
            for entry in std::fs::read_dir(dir.path()).expect("read dir") {
                let entry = entry.expect("entry");
                std::fs::copy(entry.path(), reopened.path().join(entry.file_name())).expect("copy");
            }
            let answers = run_batch(
                &mut committer,
                vec![
                    relaxed(b"c"),
                    request(&[], vec![(b"d", Write::Set(b"v".to_vec()))]),
                ],
            );
            assert!(answers.iter().all(|a| a.is_ok()));
            assert_eq!(synced(), 1, "one synced commit syncs its whole batch");
        }
        let committer = bare_committer(reopened.path());
        for key in [b"a", b"b"] {
            assert!(committer.shared.db.get(key).expect("get").is_some());
        }
    }

    #[test]
    fn conflicts_inside_one_batch_are_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut committer = bare_committer(dir.path());
        let answers = run_batch(
            &mut committer,
            vec![
                request(&[b"k"], vec![(b"k", Write::Set(b"1".to_vec()))]),
                request(&[b"k"], vec![(b"k", Write::Set(b"2".to_vec()))]),
                request(&[b"other"], vec![(b"k", Write::Set(b"3".to_vec()))]),
            ],
        );
        assert!(answers[0].is_ok());
        assert!(
            matches!(answers[1], Err(StorageError::Conflict)),
            "read what the first wrote"
        );
        assert_eq!(answers[2].as_ref().expect("blind write").version, 2);
        assert_eq!(
            committer.shared.db.get(b"k").expect("get").as_deref(),
            Some(&b"3"[..])
        );
        assert_eq!(committer.shared.durable.load(Ordering::Acquire), 2);
        // The next batch is checked against this one's writes.
        let answers = run_batch(
            &mut committer,
            vec![request(&[b"k"], vec![(b"x", Write::Clear)])],
        );
        assert!(matches!(answers[0], Err(StorageError::Conflict)));
    }

    #[tokio::test]
    async fn reopen_keeps_data_and_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let last = {
            let store = open(dir.path());
            let mut last = 0;
            for i in 0..10u8 {
                let mut txn = store.begin().await.expect("begin");
                txn.set(&[i], &[i]);
                last = txn.commit().await.expect("commit").version;
            }
            last
            // dropped without shutdown
        };
        let store = open(dir.path());
        assert_eq!(store.version(), last);
        assert_eq!(read(&store, &[9]).await, Some(vec![9]));
        let mut txn = store.begin().await.expect("begin");
        assert_eq!(txn.read_version(), last);
        txn.set(b"after", b"reopen");
        assert!(txn.commit().await.expect("commit").version > last);
        store.shutdown().await.expect("shutdown");
    }

    #[tokio::test]
    async fn unbounded_clear_range_removes_the_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let mut txn = store.begin().await.expect("begin");
        for key in [&b"a"[..], b"m", b"\xff\xff\xff"] {
            txn.set(key, b"v");
        }
        txn.commit().await.expect("commit");
        let mut txn = store.begin().await.expect("begin");
        txn.clear_range(&KeyRange {
            start: Bound::Excluded(b"a".to_vec()),
            end: Bound::Unbounded,
        });
        txn.commit().await.expect("commit");
        let mut txn = store.begin().await.expect("begin");
        let all = KeyRange {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
        };
        let left = txn
            .get_range(&all, ReadOptions::limit(10))
            .await
            .expect("range");
        assert_eq!(left, vec![(b"a".to_vec(), b"v".to_vec())]);
    }

    /// Makes every write fail as on a full disk, until switched off.
    fn inject_disk_full(store: &RocksStore, on: bool) {
        store.backend.shared.fail_writes.store(on, Ordering::SeqCst);
    }

    async fn commit_one(store: &RocksStore, key: &[u8]) -> Result<CommitInfo> {
        let mut txn = store.begin().await?;
        txn.set(key, b"v");
        txn.commit().await
    }

    /// Resolves once the store accepts writes again.
    async fn writable_again(store: &RocksStore) {
        let mut writable = store.backend.shared.writable.subscribe();
        writable
            .wait_for(|writable| *writable)
            .await
            .expect("the store outlives the wait");
    }

    fn everything() -> KeyRange {
        KeyRange {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
        }
    }

    #[tokio::test]
    async fn reads_are_served_while_writes_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        commit_one(&store, b"acked").await.expect("commit");
        let mut earlier = store.begin().await.expect("begin");
        inject_disk_full(&store, true);
        assert!(matches!(
            commit_one(&store, b"lost").await,
            Err(StorageError::CommitUnknown)
        ));

        let mut txn = store.begin().await.expect("transactions still begin");
        assert_eq!(txn.get(b"acked").await.expect("get"), Some(b"v".to_vec()));
        assert_eq!(txn.get(b"lost").await.expect("get"), None);
        let pairs = txn
            .get_range(&everything(), ReadOptions::limit(10))
            .await
            .expect("range");
        assert_eq!(pairs, vec![(b"acked".to_vec(), b"v".to_vec())]);
        // The failed batch raised `written` past this read version, so the commit goes
        // through the committer's check, which still answers.
        txn.commit().await.expect("a read-only commit succeeds");
        earlier.get(b"acked").await.expect("get");
        earlier
            .commit()
            .await
            .expect("a reader from before the failure commits");

        match commit_one(&store, b"refused").await {
            Err(StorageError::WritesRefused(message)) => {
                assert!(message.starts_with("disk full"), "{message}")
            }
            other => panic!("a write while refused: {other:?}"),
        }
        let refusal = store.write_refusal().expect("the refusal is reported");
        assert_eq!(refusal.reason, WriteRefusalReason::DiskFull);
        assert_eq!(refusal.reason.as_str(), "disk_full");
        assert_eq!(
            store.stats().failed_writes,
            1,
            "a refused commit is answered without a write"
        );
        assert_eq!(store.version(), 1);
    }

    #[tokio::test]
    async fn writes_resume_by_themselves_once_the_fault_clears() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        commit_one(&store, b"acked").await.expect("commit");
        inject_disk_full(&store, true);
        assert!(matches!(
            commit_one(&store, b"lost").await,
            Err(StorageError::CommitUnknown)
        ));
        assert!(matches!(
            commit_one(&store, b"refused").await,
            Err(StorageError::WritesRefused(_))
        ));

        inject_disk_full(&store, false);
        tokio::time::timeout(Duration::from_secs(10), writable_again(&store))
            .await
            .expect("a probe notices within seconds that writes work again");
        assert_eq!(store.write_refusal(), None);
        let info = commit_one(&store, b"after")
            .await
            .expect("writes are accepted again");
        assert_eq!(
            info.version, 2,
            "the failed batch's version is handed out again"
        );
        store
            .shutdown()
            .await
            .expect("shutdown after a failure succeeds");

        drop(store);
        let store = open(dir.path());
        assert_eq!(store.version(), 2);
        let mut txn = store.begin().await.expect("begin");
        let keys: Vec<Vec<u8>> = txn
            .get_range(&everything(), ReadOptions::limit(10))
            .await
            .expect("range")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"acked".to_vec(), b"after".to_vec()]);
    }

    #[tokio::test]
    async fn shutdown_succeeds_while_writes_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        commit_one(&store, b"acked").await.expect("commit");
        inject_disk_full(&store, true);
        assert!(matches!(
            commit_one(&store, b"lost").await,
            Err(StorageError::CommitUnknown)
        ));
        store
            .shutdown()
            .await
            .expect("a store refusing writes still shuts down cleanly");
        assert!(matches!(
            store.begin().await,
            Err(StorageError::Unavailable(_))
        ));

        drop(store);
        let store = open(dir.path());
        assert_eq!(store.version(), 1, "the durable version did not advance");
        assert_eq!(read(&store, b"acked").await.as_deref(), Some(&b"v"[..]));
        assert_eq!(
            read(&store, b"lost").await,
            None,
            "the failed batch was not written"
        );
    }

    #[test]
    fn only_a_full_disk_is_reported_as_disk_full() {
        assert_eq!(
            WriteRefusalReason::of(
                "IO error: No space left on device: While appending to file: 000004.log: No space left on device"
            ),
            WriteRefusalReason::DiskFull
        );
        let other =
            WriteRefusalReason::of("IO error: While fsync: a file descriptor: Input/output error");
        assert_eq!(other, WriteRefusalReason::WriteFailed);
        assert_eq!(other.as_str(), "storage_write_failed");
    }

    #[tokio::test]
    async fn shutdown_flushes_and_rejects_later_work() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let mut txn = store.begin().await.expect("begin");
        let mut late = store.begin().await.expect("begin before shutdown");
        txn.set(b"k", b"v");
        txn.commit().await.expect("commit");
        store.shutdown().await.expect("shutdown");
        assert!(matches!(
            store.begin().await,
            Err(StorageError::Unavailable(_))
        ));
        late.set(b"late", b"v");
        assert!(matches!(
            late.commit().await,
            Err(StorageError::Unavailable(_))
        ));
        drop(store);
        assert_eq!(
            read(&open(dir.path()), b"k").await.as_deref(),
            Some(&b"v"[..])
        );
    }
}
