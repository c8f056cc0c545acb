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
//!    before the batch *and* the requests accepted earlier in the same batch; losers get
//!    [`StorageError::Conflict`] at once;
//! 3. resolves atomic adds against the current value (the database's, overlaid with the
//!    batch's earlier writes) and builds **one** `WriteBatch` holding every accepted
//!    request plus the new version counter;
//! 4. writes it with `sync = true` (the write-ahead log is fsynced) — one fsync for the
//!    whole batch. A batch made only of transactions that called
//!    [`KvTxn::relax_durability`] is written without the sync: RocksDB hands it to the OS
//!    before answering (it survives `kill -9`), and the next synced batch, written after
//!    it in the same log, makes it durable too;
//! 5. records the batch in the conflict tracker, advances the durable version, fires
//!    watches and answers each request.
//!
//! A transaction reads at the last *durable* version, which only advances after step 4,
//! so every commit at or below a reader's version is visible to it. A reader may also see
//! a newer batch that is written but not yet acknowledged; its reads of that data then
//! conflict at commit (the tracker records the batch before checking the next one).
//!
//! A read-only transaction is checked by the committer too (its reads went to the latest
//! data, not a snapshot), except when no write newer than its read version has started:
//! then it commits at once with version 0.
//!
//! Reads run synchronously on the calling task: RocksDB serves them from the memtable or
//! block cache, and the committer thread keeps the fsync off the async runtime.
//!
//! If the write fails, every request of the batch gets
//! [`StorageError::CommitUnknown`] and the store turns unavailable: the process should
//! restart and reopen, which recovers exactly the durable prefix.
//!
//! Versions survive restarts: the last committed version is stored in the `keel_meta`
//! column family in every batch, and the counter resumes from it on open. User data lives
//! in the default column family, so no key is reserved.

#![warn(missing_docs)]

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use keel_storage::occ::{
    CommitRequest, CommittedReader, Committer, ConflictTracker, OccTxn, Watches, Write,
};
use keel_storage::{
    decode_counter, Capabilities, CommitInfo, KeyRange, KeyValue, KvStore, KvTxn, Result,
    StorageError, Version, WatchFuture, MAX_KEY_BYTES,
};
use rocksdb::{
    ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};
use tokio::sync::{mpsc, oneshot};

/// Column family holding Keel's own metadata (the version counter).
const META_CF: &str = "keel_meta";
/// Key of the last committed version in [`META_CF`], a big-endian `u64`.
const VERSION_KEY: &[u8] = b"version";

/// Tuning of a [`RocksStore`].
#[derive(Debug, Clone)]
pub struct RocksOptions {
    /// Most requests one group commit holds.
    pub max_batch_requests: usize,
    /// A group commit stops draining once its requests write this many bytes.
    pub max_batch_bytes: usize,
    /// Capacity of the channel to the committer; committers wait when it is full.
    pub queue_depth: usize,
    /// RocksDB memtable size, in bytes.
    pub write_buffer_bytes: usize,
    /// Compress SST files with LZ4 (Debian's librocksdb links liblz4).
    pub lz4: bool,
}

impl Default for RocksOptions {
    fn default() -> Self {
        RocksOptions {
            max_batch_requests: 1024,
            max_batch_bytes: 16 << 20,
            queue_depth: 4096,
            write_buffer_bytes: 16 << 20,
            lz4: true,
        }
    }
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
    /// Requests the committer has taken off the channel (tests use it to see the queue).
    received: AtomicU64,
}

/// State shared by the store handle, its transactions and the committer thread.
struct Shared {
    db: DB,
    /// The last version whose write is applied (synced, unless every transaction of its
    /// batch relaxed durability); transactions read at it.
    durable: AtomicU64,
    /// The last version whose write may be visible to readers: raised *before* each
    /// write, so a read that saw a batch's data implies this covers the batch.
    written: AtomicU64,
    /// Owned by the committer; `watch` locks it briefly to ask `changed_since`.
    tracker: Mutex<ConflictTracker>,
    watches: Watches,
    /// Set once the store stops accepting work (shutdown, drop or a failed write).
    closed: AtomicBool,
    /// Why the store closed, when it was a failure.
    failure: Mutex<Option<String>>,
    counters: Counters,
    /// Makes the next synced write fail (tests of the failure path).
    #[cfg(test)]
    fail_next_write: AtomicBool,
}

impl Shared {
    fn unavailable(&self) -> StorageError {
        let failure = self
            .failure
            .lock()
            .expect("invariant: failure lock not poisoned");
        match failure.as_deref() {
            Some(why) => StorageError::Unavailable(format!("store failed: {why}")),
            None => StorageError::Unavailable("store is shut down".into()),
        }
    }

    /// Opens the database and reads the version counter.
    fn open(path: &Path, options: &RocksOptions) -> Result<Shared> {
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_write_buffer_size(options.write_buffer_bytes);
        db_options.set_max_background_jobs(2);
        db_options.set_keep_log_file_num(4);
        db_options.set_compression_type(if options.lz4 {
            DBCompressionType::Lz4
        } else {
            DBCompressionType::None
        });
        // Atomic adds are merge operands, summed by RocksDB itself: the committer never
        // reads a counter to write it.
        db_options.set_merge_operator_associative("keel_counter_add", add_counters);
        let cfs = [
            ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, db_options.clone()),
            ColumnFamilyDescriptor::new(META_CF, Options::default()),
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
        Ok(Shared {
            db,
            durable: AtomicU64::new(version),
            written: AtomicU64::new(version),
            tracker: Mutex::new(ConflictTracker::new(version)),
            watches: Watches::default(),
            closed: AtomicBool::new(false),
            failure: Mutex::new(None),
            counters: Counters::default(),
            #[cfg(test)]
            fail_next_write: AtomicBool::new(false),
        })
    }

    /// Writes `batch` to the write-ahead log (handed to the OS, so it survives a crash
    /// of this process), synced to the disk when `sync`.
    fn write(&self, batch: WriteBatch, sync: bool) -> std::result::Result<(), String> {
        #[cfg(test)]
        if self.fail_next_write.swap(false, Ordering::SeqCst) {
            return Err("injected write failure".into());
        }
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db
            .write_opt(batch, &options)
            .map_err(|e| e.into_string())
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

enum Msg {
    Commit(CommitRequest, Reply),
    /// Stop after everything queued before; acknowledge once flushed.
    Stop(Option<oneshot::Sender<Result<()>>>),
}

/// What transactions hold: committed reads plus the way to the committer.
struct Backend {
    shared: Arc<Shared>,
    sender: mpsc::Sender<Msg>,
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
        let committer = GroupCommitter {
            shared: shared.clone(),
            receiver,
            options,
            version,
        };
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
        }
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
        // Register before asking the tracker: a commit recorded after the question fires
        // the watch, one recorded before it answers `changed`.
        let fired = shared.watches.register(key);
        let changed = shared
            .tracker
            .lock()
            .expect("invariant: tracker lock not poisoned")
            .changed_since(key, since);
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
            durable: true,
            reopenable: true,
            multi_node: false,
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
            // Already stopped: by an earlier shutdown (fine) or by a failure.
            Err(_) => {
                let failed = self
                    .backend
                    .shared
                    .failure
                    .lock()
                    .expect("invariant: failure lock not poisoned")
                    .is_some();
                if failed {
                    Err(self.backend.shared.unavailable())
                } else {
                    Ok(())
                }
            }
        };
        // The committer acknowledges as its last act, so this join is immediate.
        self.join_committer();
        result
    }
}

/// The committer thread's state.
struct GroupCommitter {
    shared: Arc<Shared>,
    receiver: mpsc::Receiver<Msg>,
    options: RocksOptions,
    /// The last version handed out (equal to the durable version between batches).
    version: Version,
}

impl GroupCommitter {
    fn run(mut self) {
        let mut stop_ack = None;
        while let Some(first) = self.receiver.blocking_recv() {
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
        self.shared.closed.store(true, Ordering::Release);
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
                Msg::Stop(None) => {}
            }
        }
        if let Some(ack) = stop_ack {
            let _ = ack.send(self.stop_result());
        }
    }

    /// What a stop reports: an earlier failed write, else the result of a final flush.
    fn stop_result(&self) -> Result<()> {
        let failed = self
            .shared
            .failure
            .lock()
            .expect("invariant: failure lock not poisoned")
            .is_some();
        if failed {
            return Err(self.shared.unavailable());
        }
        self.shared.db.flush().map_err(backend_error)
    }

    fn commit_batch(&mut self, batch: Vec<(CommitRequest, Reply)>) {
        if batch.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        let failed = shared
            .failure
            .lock()
            .expect("invariant: failure lock not poisoned")
            .is_some();
        if failed {
            for (_, reply) in batch {
                let _ = reply.send(Err(shared.unavailable()));
            }
            return;
        }
        let mut accepted: Vec<(Version, CommitRequest, Reply)> = Vec::new();
        // Conflicts with requests accepted earlier in this batch, which the shared
        // tracker has not recorded yet.
        let mut in_batch = ConflictTracker::new(0);
        let mut write_batch = WriteBatch::default();
        for (request, reply) in batch {
            // Locked per request, not across `stage`'s reads, so `watch` never waits on I/O.
            let verdict = shared
                .tracker
                .lock()
                .expect("invariant: tracker lock not poisoned")
                .check(&request)
                .and_then(|()| in_batch.check(&request));
            if let Err(e) = verdict {
                shared.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(Err(e));
                continue;
            }
            if request.is_read_only() {
                let _ = reply.send(Ok(CommitInfo { version: 0 }));
                continue;
            }
            self.stage(&request, &mut write_batch);
            self.version += 1;
            in_batch.record(self.version, &request);
            accepted.push((self.version, request, reply));
        }
        if accepted.is_empty() {
            return;
        }
        write_batch.put_cf(shared.meta_cf(), VERSION_KEY, self.version.to_be_bytes());
        shared.written.store(self.version, Ordering::SeqCst);
        // One sync covers the whole batch and everything written before it.
        let sync = accepted.iter().any(|(_, request, _)| !request.relaxed);
        if sync {
            shared
                .counters
                .synced_writes
                .fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = shared.write(write_batch, sync) {
            tracing::error!(error = %e, "rocksdb write failed; store is now unavailable");
            *shared
                .failure
                .lock()
                .expect("invariant: failure lock not poisoned") = Some(e);
            shared.closed.store(true, Ordering::Release);
            for (_, _, reply) in accepted {
                let _ = reply.send(Err(StorageError::CommitUnknown));
            }
            return;
        }
        {
            let mut tracker = shared
                .tracker
                .lock()
                .expect("invariant: tracker lock not poisoned");
            for (version, request, _) in &accepted {
                tracker.record(*version, request);
            }
        }
        shared.durable.store(self.version, Ordering::Release);
        let committed = accepted.len() as u64;
        shared
            .counters
            .commits
            .fetch_add(committed, Ordering::Relaxed);
        shared.counters.batches.fetch_add(1, Ordering::Relaxed);
        shared
            .counters
            .largest_batch
            .fetch_max(committed, Ordering::Relaxed);
        for (version, request, reply) in accepted {
            shared.watches.fire(&request);
            let _ = reply.send(Ok(CommitInfo { version }));
        }
    }

    /// Adds `request`'s writes to `write_batch`: cleared ranges first, then point writes,
    /// atomic adds as merge operands (summed by [`add_counters`] in write order).
    fn stage(&self, request: &CommitRequest, write_batch: &mut WriteBatch) {
        for range in &request.cleared_ranges {
            let (begin, end) = delete_bounds(range);
            write_batch.delete_range(begin, end);
        }
        for (key, write) in &request.writes {
            match write {
                Write::Set(v) => write_batch.put(key, v),
                Write::Clear => write_batch.delete(key),
                Write::Add(delta) => write_batch.merge(key, delta.to_le_bytes()),
            }
        }
    }
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
        // Holding the tracker stalls the committer at its first batch, so the other
        // commits queue up and must go out together: batching is certain, not likely.
        let stall = store.backend.shared.tracker.lock().expect("tracker");
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

    fn shared_queue_len(store: &RocksStore) -> usize {
        let sender = &store.backend.sender;
        sender.max_capacity() - sender.capacity()
    }

    /// A committer without its thread, to drive `commit_batch` with exact batches.
    fn bare_committer(dir: &Path) -> GroupCommitter {
        let options = RocksOptions::default();
        let shared = Arc::new(Shared::open(dir, &options).expect("open"));
        let version = shared.durable.load(Ordering::Acquire);
        let (_sender, receiver) = mpsc::channel(1);
        GroupCommitter {
            shared,
            receiver,
            options,
            version,
        }
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

    #[tokio::test]
    async fn failed_sync_write_is_commit_unknown_and_closes_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let mut txn = store.begin().await.expect("begin");
        txn.set(b"k", b"v");
        store
            .backend
            .shared
            .fail_next_write
            .store(true, Ordering::SeqCst);
        assert!(matches!(
            txn.commit().await,
            Err(StorageError::CommitUnknown)
        ));
        assert!(matches!(
            store.begin().await,
            Err(StorageError::Unavailable(_))
        ));
        assert_eq!(store.version(), 0, "the durable version did not advance");
        assert!(
            store.shutdown().await.is_err(),
            "shutdown reports the failure"
        );
        drop(store);
        let store = open(dir.path());
        assert_eq!(
            read(&store, b"k").await,
            None,
            "the failed batch was not written"
        );
        assert_eq!(store.version(), 0);
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
