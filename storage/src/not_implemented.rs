//! The porting template: a backend whose every operation fails with
//! [`StorageError::NotImplemented`]. Copy it, then replace one method at a time while the
//! conformance suite (`keel-conformance`) tells you what is still missing.

use async_trait::async_trait;

use super::{
    Capabilities, CommitInfo, EnforcedLimits, KeyRange, KeyValue, KvStore, KvTxn, ReadOptions,
    Result, StorageError, Version, WatchFuture,
};

/// A backend that implements nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotImplementedStore;

/// The transaction of [`NotImplementedStore`].
#[derive(Debug, Default)]
pub struct NotImplementedTxn;

#[async_trait]
impl KvStore for NotImplementedStore {
    async fn begin(&self) -> Result<Box<dyn KvTxn>> {
        Ok(Box::new(NotImplementedTxn))
    }
    fn watch(&self, _key: &[u8], _since: Version) -> WatchFuture {
        Box::pin(async { Err(not_implemented("KvStore::watch")) })
    }
    fn capabilities(&self) -> Capabilities {
        // Claim nothing until it is true: each flag turns on cases that check it.
        Capabilities {
            backend: BACKEND,
            durable: false,
            reopenable: false,
            multi_node: false,
            limits: EnforcedLimits::default(),
        }
    }
    async fn shutdown(&self) -> Result<()> {
        Err(not_implemented("KvStore::shutdown"))
    }
}

#[async_trait]
impl KvTxn for NotImplementedTxn {
    fn read_version(&self) -> Version {
        0
    }
    async fn get(&mut self, _key: &[u8]) -> Result<Option<Vec<u8>>> {
        Err(not_implemented("KvTxn::get"))
    }
    async fn get_snapshot(&mut self, _key: &[u8]) -> Result<Option<Vec<u8>>> {
        Err(not_implemented("KvTxn::get_snapshot"))
    }
    async fn get_range(&mut self, _range: &KeyRange, _opts: ReadOptions) -> Result<Vec<KeyValue>> {
        Err(not_implemented("KvTxn::get_range"))
    }
    fn set(&mut self, _key: &[u8], _value: &[u8]) {}
    fn clear(&mut self, _key: &[u8]) {}
    fn clear_range(&mut self, _range: &KeyRange) {}
    fn atomic_add(&mut self, _key: &[u8], _delta: i64) {}
    fn add_read_conflict(&mut self, _key: &[u8]) {}
    async fn commit(self: Box<Self>) -> Result<CommitInfo> {
        Err(not_implemented("KvTxn::commit"))
    }
}

/// The error every operation of the skeleton answers: rename `BACKEND` in your copy.
fn not_implemented(operation: &'static str) -> StorageError {
    StorageError::NotImplemented {
        backend: BACKEND,
        operation,
    }
}

/// The backend name errors carry.
const BACKEND: &str = "not_implemented";
