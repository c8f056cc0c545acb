//! The in-memory reference backend: the test oracle for every other backend.
//! Not durable; never the server default.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;

use super::occ::{
    CommitRequest, CommittedReader, Committer, ConflictTracker, OccTxn, Watches, Write,
};
use super::{
    Capabilities, CommitInfo, EnforcedLimits, KeyRange, KeyValue, KvStore, KvTxn, Result,
    StorageError, Version, WatchFuture,
};

#[derive(Default)]
struct Data {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    version: Version,
}

/// Shared state of one in-memory store.
#[derive(Default)]
pub struct MemoryInner {
    data: RwLock<Data>,
    tracker: Mutex<ConflictTracker>,
    watches: Watches,
    closed: std::sync::atomic::AtomicBool,
}

/// An in-memory, serializable, non-durable store.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<MemoryInner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared state, for wrappers such as the simulated backend.
    pub(crate) fn inner(&self) -> &Arc<MemoryInner> {
        &self.inner
    }

    /// The latest committed version.
    pub fn version(&self) -> Version {
        self.inner
            .data
            .read()
            .expect("invariant: data lock not poisoned")
            .version
    }
}

impl CommittedReader for MemoryInner {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .data
            .read()
            .expect("invariant: data lock not poisoned")
            .map
            .get(key)
            .cloned())
    }

    fn range(&self, range: &KeyRange, limit: usize, reverse: bool) -> Result<Vec<KeyValue>> {
        let data = self.data.read().expect("invariant: data lock not poisoned");
        let iter = data.map.range::<[u8], _>(range.as_bounds());
        let pick = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        Ok(if reverse {
            iter.rev().take(limit).map(pick).collect()
        } else {
            iter.take(limit).map(pick).collect()
        })
    }
}

#[async_trait]
impl Committer for MemoryInner {
    async fn commit(&self, request: CommitRequest) -> Result<CommitInfo> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(StorageError::Unavailable("store is shut down".into()));
        }
        let mut tracker = self
            .tracker
            .lock()
            .expect("invariant: tracker lock not poisoned");
        tracker.check(&request)?;
        if request.is_read_only() {
            return Ok(CommitInfo { version: 0 });
        }
        let version = {
            let mut data = self
                .data
                .write()
                .expect("invariant: data lock not poisoned");
            apply(&mut data.map, &request);
            data.version += 1;
            data.version
        };
        tracker.record(version, &request);
        drop(tracker);
        self.watches.fire(&request);
        Ok(CommitInfo { version })
    }
}

/// Applies a commit request to an ordered map (cleared ranges first, then point writes).
pub fn apply(map: &mut BTreeMap<Vec<u8>, Vec<u8>>, request: &CommitRequest) {
    for r in &request.cleared_ranges {
        let doomed: Vec<Vec<u8>> = map
            .range::<[u8], _>(r.as_bounds())
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            map.remove(&k);
        }
    }
    for (k, w) in &request.writes {
        match w {
            Write::Set(v) => {
                map.insert(k.clone(), v.clone());
            }
            Write::Clear => {
                map.remove(k);
            }
            Write::Add(delta) => {
                let sum = super::decode_counter(map.get(k).map(Vec::as_slice)).wrapping_add(*delta);
                map.insert(k.clone(), sum.to_le_bytes().to_vec());
            }
        }
    }
}

#[async_trait]
impl KvStore for MemoryStore {
    async fn begin(&self) -> Result<Box<dyn KvTxn>> {
        if self.inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(StorageError::Unavailable("store is shut down".into()));
        }
        Ok(Box::new(OccTxn::new(self.inner.clone(), self.version())))
    }

    fn watch(&self, key: &[u8], since: Version) -> WatchFuture {
        let rx = self.inner.watches.register(key);
        let changed = self
            .inner
            .tracker
            .lock()
            .expect("invariant: tracker lock not poisoned")
            .changed_since(key, since, Version::MAX);
        Box::pin(async move {
            if !changed {
                rx.await
                    .map_err(|_| StorageError::Unavailable("store dropped".into()))?;
            }
            Ok(())
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            backend: "memory",
            durable: false,
            reopenable: false,
            // Clones share data and watches inside one process, but no other process can
            // reach the store: a server on it runs as one node.
            multi_node: false,
            limits: EnforcedLimits {
                // The shared optimistic transaction ([`OccTxn`]) refuses them.
                key_and_value_sizes: true,
                transaction_bytes: false,
                transaction_duration: false,
            },
        }
    }

    async fn shutdown(&self) -> Result<()> {
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}
