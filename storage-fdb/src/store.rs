//! [`FdbStore`] and its transactions: the contract mapped onto FoundationDB transactions.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use foundationdb::options::{
    ConflictRangeType, DatabaseOption, MutationType, StreamingMode, TransactionOption,
};
use foundationdb::{Database, FdbError, KeySelector, RangeOption, Transaction};
use futures::TryStreamExt;
use keel_storage::{
    Capabilities, CommitInfo, EnforcedLimits, KeyRange, KeyValue, KvStore, KvTxn, ReadOptions,
    Result, StorageError, Version, WatchFuture, MAX_KEY_BYTES,
};

use crate::errors::{self, FdbFailure};
use crate::network;
use crate::subspace::{Subspace, DEFAULT_SUBSPACE};

/// How to reach the cluster and where Keel's keys live in it.
#[derive(Debug, Clone)]
pub struct FdbOptions {
    /// The cluster file; `None` uses the client's default lookup (`FDB_CLUSTER_FILE`,
    /// then `/etc/foundationdb/fdb.cluster`).
    pub cluster_file: Option<PathBuf>,
    /// The subspace holding every key of this deployment.
    pub subspace: Subspace,
    /// A transaction (reads and commit) that takes longer fails: with `Unavailable`
    /// before its commit, `CommitUnknown` during it. Without it an unreachable cluster
    /// makes transactions wait forever. Watches have none.
    pub transaction_timeout: Duration,
}

impl Default for FdbOptions {
    fn default() -> Self {
        FdbOptions {
            cluster_file: None,
            subspace: Subspace::new(DEFAULT_SUBSPACE)
                .expect("invariant: the default name is valid"),
            transaction_timeout: Duration::from_secs(5),
        }
    }
}

struct Inner {
    db: Database,
    subspace: Subspace,
    closed: AtomicBool,
}

/// A Keel store on a FoundationDB cluster, confined to one subspace. Cheap to clone.
#[derive(Clone)]
pub struct FdbStore {
    inner: Arc<Inner>,
}

fn fdb_failure(e: FdbError) -> FdbFailure {
    FdbFailure {
        code: e.code(),
        message: e.message(),
        maybe_committed: e.is_maybe_committed(),
        retryable: e.is_retryable(),
    }
}

fn read_error(e: FdbError) -> StorageError {
    errors::storage_error(fdb_failure(e), false, e)
}

fn commit_error(e: FdbError) -> StorageError {
    errors::storage_error(fdb_failure(e), true, e)
}

fn shut_down() -> StorageError {
    StorageError::Unavailable("the FoundationDB store is shut down".into())
}

impl FdbStore {
    /// Opens the cluster named by `options` (starting the client's network thread on
    /// first use). Nothing is read yet: an unreachable cluster shows up as `Unavailable`
    /// from the first transaction, once `transaction_timeout` has passed.
    pub fn open(options: &FdbOptions) -> Result<FdbStore> {
        network::ensure_started()?;
        let path = match &options.cluster_file {
            Some(p) => Some(p.to_str().ok_or_else(|| {
                StorageError::Unavailable(format!(
                    "the cluster file path {} is not valid UTF-8",
                    p.display()
                ))
            })?),
            None => None,
        };
        let place = || match &options.cluster_file {
            Some(p) => format!("cluster file {}", p.display()),
            None => "default cluster file".to_string(),
        };
        let db = Database::new(path).map_err(|e| {
            StorageError::Unavailable(format!("cannot open the FoundationDB {}: {e}", place()))
        })?;
        let timeout_ms = i32::try_from(options.transaction_timeout.as_millis()).unwrap_or(i32::MAX);
        db.set_option(DatabaseOption::TransactionTimeout(timeout_ms.max(1)))
            .map_err(read_error)?;
        Ok(FdbStore {
            inner: Arc::new(Inner {
                db,
                subspace: options.subspace.clone(),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The subspace this store reads and writes.
    pub fn subspace(&self) -> &Subspace {
        &self.inner.subspace
    }

    /// Deletes every key of this store's subspace, and nothing outside it. For tests and
    /// for operators retiring a deployment: there is no undo.
    pub async fn clear_subspace(&self) -> Result<()> {
        let tr = self.inner.db.create_trx().map_err(read_error)?;
        let (begin, end) = self.inner.subspace.all();
        tr.clear_range(&begin, &end);
        tr.commit().await.map_err(|e| commit_error(e.into()))?;
        Ok(())
    }
}

#[async_trait]
impl KvStore for FdbStore {
    async fn begin(&self) -> Result<Box<dyn KvTxn>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(shut_down());
        }
        let tr = self.inner.db.create_trx().map_err(read_error)?;
        // The contract's read version is known at begin; FDB would fetch it at the first
        // read anyway, so this costs no extra round trip.
        let read_version = tr.get_read_version().await.map_err(read_error)?;
        Ok(Box::new(FdbTxn {
            tr,
            store: self.inner.clone(),
            read_version: u64::try_from(read_version).unwrap_or(0),
            refused: None,
        }))
    }

    fn watch(&self, key: &[u8], since: Version) -> WatchFuture {
        let inner = self.inner.clone();
        let key = inner.subspace.key(key);
        Box::pin(async move {
            let tr = inner.db.create_trx().map_err(read_error)?;
            // A watch lives until the key changes, not for one transaction's timeout.
            tr.set_option(TransactionOption::Timeout(0))
                .map_err(read_error)?;
            // Reading at `since` makes FDB compare the key's value at that version with
            // the current one, so a change in between fires the watch at once.
            if let Ok(version) = i64::try_from(since) {
                if version > 0 {
                    tr.set_read_version(version);
                }
            }
            let watch = tr.watch(&key);
            let outcome = match tr.commit().await {
                Ok(_) => watch.await,
                Err(e) => Err(FdbError::from(e)),
            };
            match outcome {
                Ok(()) => Ok(()),
                // The value at `since` is no longer known, the cluster dropped the watch,
                // or it asked for a retry: report a (permitted) spurious wake-up, so the
                // caller reads again and watches anew.
                Err(e)
                    if e.is_retryable()
                        || matches!(
                            e.code(),
                            errors::code::TRANSACTION_TOO_OLD | errors::code::WATCH_CANCELLED
                        ) =>
                {
                    Ok(())
                }
                Err(e) => Err(read_error(e)),
            }
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            backend: crate::BACKEND_NAME,
            durable: true,
            // Reopening is opening the same subspace again: the data is on the cluster.
            reopenable: true,
            multi_node: true,
            // The cluster refuses all three itself.
            limits: EnforcedLimits {
                key_and_value_sizes: true,
                transaction_bytes: true,
                transaction_duration: true,
            },
        }
    }

    async fn shutdown(&self) -> Result<()> {
        // Every acknowledged commit is already durable on the cluster: nothing to flush.
        self.inner.closed.store(true, Ordering::Release);
        Ok(())
    }
}

/// A transaction of [`FdbStore`]: one FoundationDB transaction with read-your-writes.
pub struct FdbTxn {
    tr: Transaction,
    store: Arc<Inner>,
    read_version: Version,
    /// The first write that broke a limit FDB does not check for Keel (a key over
    /// `MAX_KEY_BYTES` that still fits with the prefix); the commit fails with it.
    refused: Option<StorageError>,
}

impl FdbTxn {
    fn key(&self, key: &[u8]) -> Vec<u8> {
        self.store.subspace.key(key)
    }

    /// Whether `key` may be written; records the refusal otherwise.
    fn admit(&mut self, key: &[u8]) -> bool {
        if key.len() <= MAX_KEY_BYTES {
            return true;
        }
        self.refused.get_or_insert_with(|| {
            StorageError::LimitExceeded(format!(
                "key of {} bytes (limit {MAX_KEY_BYTES})",
                key.len()
            ))
        });
        false
    }
}

#[async_trait]
impl KvTxn for FdbTxn {
    fn read_version(&self) -> Version {
        self.read_version
    }

    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let value = self
            .tr
            .get(&self.key(key), false)
            .await
            .map_err(read_error)?;
        Ok(value.map(|v| v.to_vec()))
    }

    async fn get_snapshot(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let value = self
            .tr
            .get(&self.key(key), true)
            .await
            .map_err(read_error)?;
        Ok(value.map(|v| v.to_vec()))
    }

    async fn get_range(&mut self, range: &KeyRange, opts: ReadOptions) -> Result<Vec<KeyValue>> {
        let Some((begin, end)) = self.store.subspace.range(range) else {
            return Ok(Vec::new());
        };
        // FDB reads 0 as "no limit"; the contract reads it as nothing.
        if opts.limit == 0 {
            return Ok(Vec::new());
        }
        let option = RangeOption {
            begin: KeySelector::first_greater_or_equal(begin),
            end: KeySelector::first_greater_or_equal(end),
            limit: (opts.limit <= i32::MAX as usize).then_some(opts.limit),
            mode: StreamingMode::WantAll,
            reverse: opts.reverse,
            ..RangeOption::default()
        };
        // FDB returns a range in batches; the stream continues after each batch's last
        // key with what is left of the limit. Each batch adds the part it covered to the
        // read conflict set (unless snapshot), so a limited read conflicts only up to its
        // last returned key, as the contract asks.
        let mut out = Vec::new();
        let mut batches = self.tr.get_ranges(option, opts.snapshot);
        while let Some(batch) = batches.try_next().await.map_err(read_error)? {
            let subspace = &self.store.subspace;
            out.extend(
                batch
                    .iter()
                    .map(|kv| (subspace.strip(kv.key()).to_vec(), kv.value().to_vec())),
            );
        }
        Ok(out)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        if self.admit(key) {
            self.tr.set(&self.key(key), value);
        }
    }

    fn clear(&mut self, key: &[u8]) {
        // A key over the limit was never written, so there is nothing to clear.
        if key.len() <= MAX_KEY_BYTES {
            self.tr.clear(&self.key(key));
        }
    }

    fn clear_range(&mut self, range: &KeyRange) {
        if let Some((begin, end)) = self.store.subspace.range(range) {
            self.tr.clear_range(&begin, &end);
        }
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) {
        // FDB's ADD on little-endian integers: exactly the contract's counter encoding.
        if self.admit(key) {
            self.tr
                .atomic_op(&self.key(key), &delta.to_le_bytes(), MutationType::Add);
        }
    }

    fn add_read_conflict(&mut self, key: &[u8]) {
        let (begin, end) = self.store.subspace.single(key);
        if let Err(e) = self
            .tr
            .add_conflict_range(&begin, &end, ConflictRangeType::Read)
        {
            self.refused.get_or_insert(read_error(e));
        }
    }

    /// Nothing to relax: FoundationDB acknowledges a commit only once it is durable on
    /// the cluster's transaction logs.
    fn relax_durability(&mut self) {}

    async fn commit(self: Box<Self>) -> Result<CommitInfo> {
        let FdbTxn {
            tr, store, refused, ..
        } = *self;
        if let Some(e) = refused {
            return Err(e);
        }
        if store.closed.load(Ordering::Acquire) {
            return Err(shut_down());
        }
        let committed = tr.commit().await.map_err(|e| commit_error(e.into()))?;
        // -1 for a read-only transaction, which the contract reports as version 0.
        let version = committed.committed_version().map_err(read_error)?;
        Ok(CommitInfo {
            version: u64::try_from(version).unwrap_or(0),
        })
    }
}
