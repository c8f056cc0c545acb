//! The RocksDB backend against the conformance suite, each case in its own temporary
//! directory (reopenable: the crash and reopen cases run), as it is and through the
//! fault-injecting decorator (see `conformance_suite!`).

use std::sync::Arc;

use keel_conformance::{conformance_suite, Fixture, Location, StoreFactory};
use keel_storage::{KvStore, Result, StorageError};
use keel_storage_rocksdb::{RocksOptions, RocksStore};
use tempfile::TempDir;

struct RocksFactory;

impl StoreFactory for RocksFactory {
    fn create(&self) -> Result<Fixture> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::Backend(Box::new(e)))?;
        let store = RocksStore::open(dir.path(), RocksOptions::default())?;
        // The location owns the directory, so it outlives every reopen.
        Ok(Fixture {
            store: Arc::new(store),
            location: Location::new(dir),
        })
    }

    fn reopen(&self, location: &Location) -> Result<Arc<dyn KvStore>> {
        let dir = location
            .get::<TempDir>()
            .expect("location holds the store's directory");
        Ok(Arc::new(RocksStore::open(
            dir.path(),
            RocksOptions::default(),
        )?))
    }
}

conformance_suite!(RocksFactory);
