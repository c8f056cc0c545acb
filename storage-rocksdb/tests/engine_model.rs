//! The engine model check (see `keel_conformance::engine_model`) on RocksDB.

use std::sync::Arc;

use keel_conformance::block_on;
use keel_conformance::engine_model::{check_engine_model, steps};
use keel_storage::KvStore;
use keel_storage_rocksdb::{RocksOptions, RocksStore};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn engine_keeps_lease_invariants_on_rocksdb(scenario in steps(40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn KvStore> = Arc::new(RocksStore::open(dir.path(), RocksOptions::default()).expect("opens"));
        block_on(check_engine_model(vec![store], &scenario));
    }
}
