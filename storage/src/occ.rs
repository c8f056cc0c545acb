//! Optimistic concurrency for backends without it: a generic transaction that buffers
//! writes and records its read conflict set, and a conflict tracker that a single
//! committer consults to decide whether a transaction may commit.
//!
//! A backend built on these provides two things: [`CommittedReader`] (consistent point
//! and range reads of committed data) and a commit path that, for each
//! [`CommitRequest`] in commit order, calls [`ConflictTracker::check`], applies the writes
//! atomically, then calls [`ConflictTracker::record`] and [`Watches::fire`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::{
    CommitInfo, KeyRange, KeyValue, KvTxn, ReadOptions, Result, StorageError, Version,
    MAX_KEY_BYTES, MAX_TXN_DURATION, MAX_VALUE_BYTES,
};

/// A buffered write to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Set the value.
    Set(Vec<u8>),
    /// Delete the key.
    Clear,
    /// Add to the little-endian `i64` counter that the key holds when committed.
    Add(i64),
}

/// Everything a committer needs to decide on and apply one transaction.
#[derive(Debug, Default)]
pub struct CommitRequest {
    /// The version the transaction read at.
    pub read_version: Version,
    /// When the transaction began (for the duration limit).
    pub started_at: Option<Instant>,
    /// Keys read with conflict tracking.
    pub read_keys: Vec<Vec<u8>>,
    /// Ranges read with conflict tracking.
    pub read_ranges: Vec<KeyRange>,
    /// Ranges cleared, applied before `writes`.
    pub cleared_ranges: Vec<KeyRange>,
    /// Point writes, applied after the cleared ranges.
    pub writes: BTreeMap<Vec<u8>, Write>,
    /// May be acknowledged before it is synced ([`KvTxn::relax_durability`]).
    pub relaxed: bool,
}

impl CommitRequest {
    /// Whether the transaction wrote nothing.
    pub fn is_read_only(&self) -> bool {
        self.writes.is_empty() && self.cleared_ranges.is_empty()
    }

    /// Total bytes of keys and values written (the FDB transaction-size measure).
    pub fn written_bytes(&self) -> usize {
        let points: usize = self
            .writes
            .iter()
            .map(|(k, w)| {
                k.len()
                    + match w {
                        Write::Set(v) => v.len(),
                        Write::Clear => 0,
                        Write::Add(_) => 8,
                    }
            })
            .sum();
        let ranges: usize = self.cleared_ranges.iter().map(range_bytes).sum();
        points + ranges
    }
}

fn range_bytes(r: &KeyRange) -> usize {
    let len = |b: &Bound<Vec<u8>>| match b {
        Bound::Included(v) | Bound::Excluded(v) => v.len(),
        Bound::Unbounded => 0,
    };
    len(&r.start) + len(&r.end)
}

/// Consistent reads of committed data, supplied by the backend.
pub trait CommittedReader: Send + Sync + 'static {
    /// The latest committed value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// At most `limit` committed pairs of `range`, in key order or reverse.
    fn range(&self, range: &KeyRange, limit: usize, reverse: bool) -> Result<Vec<KeyValue>>;
}

/// The commit side of a backend, supplied by the backend.
#[async_trait]
pub trait Committer: Send + Sync + 'static {
    /// Decides on, applies durably, and acknowledges one transaction.
    ///
    /// A read-only request (one with a read conflict set but no writes) must still be
    /// checked for conflicts, because [`OccTxn`] reads the latest committed data rather
    /// than a snapshot at its read version; it is answered with version 0 and writes nothing.
    async fn commit(&self, request: CommitRequest) -> Result<CommitInfo>;
}

/// A transaction that buffers its writes and tracks its reads; generic over the backend.
pub struct OccTxn<B: CommittedReader + Committer> {
    backend: Arc<B>,
    request: CommitRequest,
    /// Committed values already read, by key: a key read twice is fetched once, and the
    /// second read sees what the first saw (a changed key fails the commit either way
    /// when the read was conflict-tracked).
    fetched: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Keys already in the read conflict set (each is added once).
    tracked: std::collections::HashSet<Vec<u8>>,
}

impl<B: CommittedReader + Committer> OccTxn<B> {
    /// Opens a transaction reading at `read_version`.
    pub fn new(backend: Arc<B>, read_version: Version) -> Self {
        OccTxn {
            backend,
            request: CommitRequest {
                read_version,
                started_at: Some(Instant::now()),
                ..CommitRequest::default()
            },
            fetched: HashMap::new(),
            tracked: std::collections::HashSet::new(),
        }
    }

    /// The committed value of `key`, from this transaction's earlier read if there was one.
    fn committed(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(value) = self.fetched.get(key) {
            return Ok(value.clone());
        }
        let value = self.backend.get(key)?;
        self.fetched.insert(key.to_vec(), value.clone());
        Ok(value)
    }

    fn cleared(&self, key: &[u8]) -> bool {
        self.request.cleared_ranges.iter().any(|r| r.contains(key))
    }

    /// The value this transaction sees for `key`.
    fn read_through(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.request.writes.get(key) {
            Some(Write::Set(v)) => return Ok(Some(v.clone())),
            Some(Write::Clear) => return Ok(None),
            Some(Write::Add(delta)) => {
                let delta = *delta;
                let base = if self.cleared(key) {
                    None
                } else {
                    self.committed(key)?
                };
                let sum = super::decode_counter(base.as_deref()).wrapping_add(delta);
                return Ok(Some(sum.to_le_bytes().to_vec()));
            }
            None => {}
        }
        if self.cleared(key) {
            return Ok(None);
        }
        self.committed(key)
    }

    fn range_merged(
        &mut self,
        range: &KeyRange,
        opts: ReadOptions,
    ) -> Result<(Vec<KeyValue>, KeyRange)> {
        let limit = opts.limit.max(1);
        let mut out: Vec<KeyValue> = Vec::new();
        let mut cursor = range.clone();
        loop {
            let page = self.backend.range(&cursor, limit, opts.reverse)?;
            let exhausted = page.len() < limit;
            // The part of `cursor` that `page` fully describes.
            let covered = if exhausted {
                cursor.clone()
            } else {
                let last = page
                    .last()
                    .map(|(k, _)| k.clone())
                    .expect("invariant: page is full");
                if opts.reverse {
                    KeyRange {
                        start: Bound::Included(last),
                        end: cursor.end.clone(),
                    }
                } else {
                    KeyRange {
                        start: cursor.start.clone(),
                        end: Bound::Included(last),
                    }
                }
            };
            let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            for (k, v) in page {
                if !self.request.writes.contains_key(&k) && !self.cleared(&k) {
                    merged.insert(k, v);
                }
            }
            let written: Vec<Vec<u8>> = self
                .request
                .writes
                .range::<[u8], _>(covered.as_bounds())
                .map(|(k, _)| k.clone())
                .collect();
            for k in written {
                if let Some(v) = self.read_through(&k)? {
                    merged.insert(k, v);
                }
            }
            let ordered: Box<dyn Iterator<Item = (Vec<u8>, Vec<u8>)>> = if opts.reverse {
                Box::new(merged.into_iter().rev())
            } else {
                Box::new(merged.into_iter())
            };
            for kv in ordered {
                if out.len() == limit {
                    break;
                }
                out.push(kv);
            }
            if out.len() == limit || exhausted {
                break;
            }
            cursor = if opts.reverse {
                KeyRange {
                    start: cursor.start.clone(),
                    end: excluded_from(&covered.start),
                }
            } else {
                KeyRange {
                    start: excluded_from(&covered.end),
                    end: cursor.end.clone(),
                }
            };
        }
        // The conflict range is what the caller actually observed.
        let observed = if out.len() == limit {
            let last = out
                .last()
                .map(|(k, _)| k.clone())
                .expect("invariant: out is full");
            if opts.reverse {
                KeyRange {
                    start: Bound::Included(last),
                    end: range.end.clone(),
                }
            } else {
                KeyRange {
                    start: range.start.clone(),
                    end: Bound::Included(last),
                }
            }
        } else {
            range.clone()
        };
        Ok((out, observed))
    }
}

fn excluded_from(b: &Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    match b {
        Bound::Included(v) | Bound::Excluded(v) => Bound::Excluded(v.clone()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

#[async_trait]
impl<B: CommittedReader + Committer> KvTxn for OccTxn<B> {
    fn read_version(&self) -> Version {
        self.request.read_version
    }

    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let value = self.read_through(key)?;
        if !self.tracked.contains(key) {
            self.tracked.insert(key.to_vec());
            self.request.read_keys.push(key.to_vec());
        }
        Ok(value)
    }

    async fn get_snapshot(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.read_through(key)
    }

    async fn get_range(&mut self, range: &KeyRange, opts: ReadOptions) -> Result<Vec<KeyValue>> {
        let (out, observed) = self.range_merged(range, opts)?;
        if !opts.snapshot {
            self.request.read_ranges.push(observed);
        }
        Ok(out)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.request
            .writes
            .insert(key.to_vec(), Write::Set(value.to_vec()));
    }

    fn clear(&mut self, key: &[u8]) {
        self.request.writes.insert(key.to_vec(), Write::Clear);
    }

    fn withdraw(&mut self, key: &[u8]) {
        // The key was absent at the read version: without this transaction's writes it
        // reads absent (from the store, or under a cleared range) as a clear would leave it.
        self.request.writes.remove(key);
    }

    fn clear_range(&mut self, range: &KeyRange) {
        let doomed: Vec<Vec<u8>> = self
            .request
            .writes
            .range::<[u8], _>(range.as_bounds())
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.request.writes.remove(&k);
        }
        self.request.cleared_ranges.push(range.clone());
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) {
        let cleared = self.cleared(key);
        let next = match self.request.writes.get(key) {
            Some(Write::Set(v)) => Write::Set(
                super::decode_counter(Some(v))
                    .wrapping_add(delta)
                    .to_le_bytes()
                    .to_vec(),
            ),
            Some(Write::Clear) => Write::Set(delta.to_le_bytes().to_vec()),
            Some(Write::Add(d)) => Write::Add(d.wrapping_add(delta)),
            None if cleared => Write::Set(delta.to_le_bytes().to_vec()),
            None => Write::Add(delta),
        };
        self.request.writes.insert(key.to_vec(), next);
    }

    fn add_read_conflict(&mut self, key: &[u8]) {
        self.request.read_keys.push(key.to_vec());
    }

    fn relax_durability(&mut self) {
        self.request.relaxed = true;
    }

    async fn commit(self: Box<Self>) -> Result<CommitInfo> {
        let OccTxn {
            backend, request, ..
        } = *self;
        if request.is_read_only() {
            // Reads went to the latest committed data, not a snapshot: a transaction that
            // read anything with conflict tracking must be checked even without writes,
            // or it could act on a state that never existed at one version.
            if request.read_keys.is_empty() && request.read_ranges.is_empty() {
                return Ok(CommitInfo { version: 0 });
            }
            return backend.commit(request).await;
        }
        for (k, w) in &request.writes {
            if k.len() > MAX_KEY_BYTES {
                return Err(StorageError::LimitExceeded(format!(
                    "key of {} bytes",
                    k.len()
                )));
            }
            if let Write::Set(v) = w {
                if v.len() > MAX_VALUE_BYTES {
                    return Err(StorageError::LimitExceeded(format!(
                        "value of {} bytes",
                        v.len()
                    )));
                }
            }
        }
        backend.commit(request).await
    }
}

/// Decides which transactions may commit: a transaction conflicts when a write committed
/// after its read version touches its read conflict set. Keeps the writes of the last
/// [`MAX_TXN_DURATION`]; older transactions fail with `TransactionTooOld`.
///
/// Not thread-safe by itself: the single committer of a backend owns it.
#[derive(Default)]
pub struct ConflictTracker {
    last_write: BTreeMap<Vec<u8>, Version>,
    cleared: VecDeque<(Version, KeyRange)>,
    log: VecDeque<(Version, Instant, Vec<Vec<u8>>)>,
    /// Transactions reading below this version can no longer be checked.
    horizon: Version,
}

impl ConflictTracker {
    /// A tracker for a store whose latest version is `version`.
    pub fn new(version: Version) -> Self {
        ConflictTracker {
            horizon: version,
            ..Default::default()
        }
    }

    /// `Ok` when `request` may commit after everything recorded so far.
    pub fn check(&mut self, request: &CommitRequest) -> Result<()> {
        self.trim();
        if request
            .started_at
            .is_some_and(|t| t.elapsed() > MAX_TXN_DURATION)
            || request.read_version < self.horizon
        {
            return Err(StorageError::TransactionTooOld);
        }
        let rv = request.read_version;
        for key in &request.read_keys {
            if self.last_write.get(key).is_some_and(|&v| v > rv)
                || self.cleared.iter().any(|(v, r)| *v > rv && r.contains(key))
            {
                return Err(StorageError::Conflict);
            }
        }
        for range in &request.read_ranges {
            if self
                .last_write
                .range::<[u8], _>(range.as_bounds())
                .any(|(_, &v)| v > rv)
                || self
                    .cleared
                    .iter()
                    .any(|(v, r)| *v > rv && ranges_overlap(r, range))
            {
                return Err(StorageError::Conflict);
            }
        }
        Ok(())
    }

    /// Records the writes of `request`, committed at `version`.
    pub fn record(&mut self, version: Version, request: &CommitRequest) {
        let keys: Vec<Vec<u8>> = request.writes.keys().cloned().collect();
        for k in &keys {
            self.last_write.insert(k.clone(), version);
        }
        for r in &request.cleared_ranges {
            self.cleared.push_back((version, r.clone()));
        }
        self.log.push_back((version, Instant::now(), keys));
    }

    /// Whether `key` was written after `since` by a commit at or below `visible`, as far
    /// as the tracker still knows (beyond its window it answers `true`). A committer may
    /// record a commit before readers can see it (its watches fire once they can); such
    /// a commit, above `visible`, does not count yet.
    pub fn changed_since(&self, key: &[u8], since: Version, visible: Version) -> bool {
        let counts = |v: Version| v > since && v <= visible;
        since < self.horizon
            || self.last_write.get(key).is_some_and(|&v| counts(v))
            || self
                .cleared
                .iter()
                .any(|(v, r)| counts(*v) && r.contains(key))
    }

    /// The commits recorded above `durable` were never written (their batch failed, and
    /// their versions are handed out again): they now count as written at `durable`. A
    /// transaction reading at `durable` or later no longer conflicts with them; one
    /// reading below it may, spuriously, since a key's earlier version is not kept.
    pub fn settle_unwritten(&mut self, durable: Version) {
        for (version, _, keys) in self.log.iter_mut().rev() {
            if *version <= durable {
                break;
            }
            *version = durable;
            for k in keys.iter() {
                if let Some(v) = self.last_write.get_mut(k) {
                    *v = (*v).min(durable);
                }
            }
        }
        for (version, _) in self.cleared.iter_mut().rev() {
            if *version <= durable {
                break;
            }
            *version = durable;
        }
    }

    fn trim(&mut self) {
        while let Some((version, at, _)) = self.log.front() {
            if at.elapsed() <= MAX_TXN_DURATION {
                break;
            }
            let version = *version;
            let (_, _, keys) = self.log.pop_front().expect("invariant: front exists");
            for k in keys {
                if self.last_write.get(&k) == Some(&version) {
                    self.last_write.remove(&k);
                }
            }
            while self.cleared.front().is_some_and(|(v, _)| *v <= version) {
                self.cleared.pop_front();
            }
            self.horizon = version;
        }
    }
}

fn ranges_overlap(a: &KeyRange, b: &KeyRange) -> bool {
    // a.start < b.end && b.start < a.end, with bounds.
    fn start_before_end(start: &Bound<Vec<u8>>, end: &Bound<Vec<u8>>) -> bool {
        match (start, end) {
            (Bound::Unbounded, _) | (_, Bound::Unbounded) => true,
            (Bound::Included(s), Bound::Included(e)) => s <= e,
            (Bound::Included(s), Bound::Excluded(e))
            | (Bound::Excluded(s), Bound::Included(e))
            | (Bound::Excluded(s), Bound::Excluded(e)) => s < e,
        }
    }
    start_before_end(&a.start, &b.end) && start_before_end(&b.start, &a.end)
}

/// Registered watches, fired by the committer after a commit is visible.
#[derive(Default)]
pub struct Watches {
    waiting: Mutex<HashMap<Vec<u8>, Vec<oneshot::Sender<()>>>>,
}

impl Watches {
    /// Registers a watch on `key`; the receiver resolves when [`Watches::fire`] sees it.
    pub fn register(&self, key: &[u8]) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .expect("invariant: watch lock not poisoned")
            .entry(key.to_vec())
            .or_default()
            .push(tx);
        rx
    }

    /// Wakes every watch on a key that `request` wrote or cleared.
    pub fn fire(&self, request: &CommitRequest) {
        let mut waiting = self
            .waiting
            .lock()
            .expect("invariant: watch lock not poisoned");
        if waiting.is_empty() {
            return;
        }
        let hit: Vec<Vec<u8>> = waiting
            .keys()
            .filter(|k| {
                request.writes.contains_key(*k)
                    || request.cleared_ranges.iter().any(|r| r.contains(k))
            })
            .cloned()
            .collect();
        for k in hit {
            for tx in waiting.remove(&k).unwrap_or_default() {
                let _ = tx.send(());
            }
        }
        waiting.retain(|_, senders| {
            senders.retain(|s| !s.is_closed());
            !senders.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(rv: Version, reads: &[&[u8]], writes: &[&[u8]]) -> CommitRequest {
        CommitRequest {
            read_version: rv,
            started_at: Some(Instant::now()),
            read_keys: reads.iter().map(|k| k.to_vec()).collect(),
            writes: writes
                .iter()
                .map(|k| (k.to_vec(), Write::Set(vec![1])))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn write_after_read_version_conflicts() {
        let mut t = ConflictTracker::new(0);
        let a = req(0, &[b"k"], &[b"k"]);
        t.check(&a).expect("first commits");
        t.record(1, &a);
        assert!(matches!(
            t.check(&req(0, &[b"k"], &[b"x"])),
            Err(StorageError::Conflict)
        ));
        t.check(&req(1, &[b"k"], &[b"x"]))
            .expect("newer reader does not conflict");
        t.check(&req(0, &[b"other"], &[b"k"]))
            .expect("blind write does not conflict");
    }

    #[test]
    fn cleared_range_conflicts_with_overlapping_read_range() {
        let mut t = ConflictTracker::new(0);
        let mut a = req(0, &[], &[]);
        a.cleared_ranges
            .push(KeyRange::new(b"b".to_vec(), b"d".to_vec()));
        t.record(1, &a);
        let mut r = req(0, &[], &[b"z"]);
        r.read_ranges
            .push(KeyRange::new(b"c".to_vec(), b"e".to_vec()));
        assert!(matches!(t.check(&r), Err(StorageError::Conflict)));
        let mut r = req(0, &[], &[b"z"]);
        r.read_ranges
            .push(KeyRange::new(b"d".to_vec(), b"e".to_vec()));
        t.check(&r).expect("disjoint range does not conflict");
    }

    #[test]
    fn unwritten_commits_settle_at_the_durable_version() {
        let mut t = ConflictTracker::new(0);
        t.record(1, &req(0, &[], &[b"a"]));
        // Accepted at 2 and 3, then their batch failed: version 1 is durable.
        t.record(2, &req(1, &[], &[b"a", b"b"]));
        let mut clear = req(1, &[], &[]);
        clear
            .cleared_ranges
            .push(KeyRange::new(b"c".to_vec(), b"d".to_vec()));
        t.record(3, &clear);
        assert!(matches!(
            t.check(&req(1, &[b"b"], &[b"x"])),
            Err(StorageError::Conflict)
        ));
        t.settle_unwritten(1);
        t.check(&req(1, &[b"a", b"b", b"c"], &[b"x"]))
            .expect("a reader at the durable version does not conflict");
        assert!(
            matches!(
                t.check(&req(0, &[b"a"], &[b"x"])),
                Err(StorageError::Conflict)
            ),
            "the write at 1 still conflicts with an older reader"
        );
        assert!(!t.changed_since(b"b", 1, 1));
    }

    #[test]
    fn a_recorded_commit_counts_as_a_change_once_visible() {
        let mut t = ConflictTracker::new(0);
        t.record(1, &req(0, &[], &[b"k"]));
        assert!(!t.changed_since(b"k", 0, 0), "recorded, not yet visible");
        assert!(t.changed_since(b"k", 0, 1));
        assert!(!t.changed_since(b"k", 1, 1));
    }

    /// A backend that counts point reads and records the request it is asked to commit.
    #[derive(Default)]
    struct Counting {
        gets: std::sync::atomic::AtomicUsize,
        committed: Mutex<Option<CommitRequest>>,
    }

    impl CommittedReader for Counting {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
            self.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Some(key.to_vec()))
        }
        fn range(&self, _: &KeyRange, _: usize, _: bool) -> Result<Vec<KeyValue>> {
            Ok(Vec::new())
        }
    }

    #[async_trait]
    impl Committer for Counting {
        async fn commit(&self, request: CommitRequest) -> Result<CommitInfo> {
            *self.committed.lock().expect("lock") = Some(request);
            Ok(CommitInfo { version: 1 })
        }
    }

    #[tokio::test]
    async fn a_key_read_twice_is_fetched_once_and_tracked_once() {
        let backend = Arc::new(Counting::default());
        let mut txn = OccTxn::new(backend.clone(), 0);
        assert_eq!(
            txn.get_snapshot(b"k").await.expect("read"),
            Some(b"k".to_vec())
        );
        assert_eq!(txn.get(b"k").await.expect("read"), Some(b"k".to_vec()));
        assert_eq!(txn.get(b"k").await.expect("read"), Some(b"k".to_vec()));
        assert_eq!(backend.gets.load(std::sync::atomic::Ordering::Relaxed), 1);
        // The transaction's own writes still win over what it fetched.
        txn.set(b"k", b"mine");
        assert_eq!(txn.get(b"k").await.expect("read"), Some(b"mine".to_vec()));
        txn.clear(b"k");
        assert_eq!(txn.get(b"k").await.expect("read"), None);
        txn.set(b"other", b"v");
        Box::new(txn).commit().await.expect("commit");
        let request = backend
            .committed
            .lock()
            .expect("lock")
            .take()
            .expect("committed");
        assert_eq!(request.read_keys, vec![b"k".to_vec()]);
    }
}
