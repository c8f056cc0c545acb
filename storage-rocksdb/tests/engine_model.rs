//! The engine model check (see `keel_conformance::engine_model`) on RocksDB, as it is and
//! through the fault-injecting decorator (spurious conflicts, commit-unknown results that
//! did or did not apply) with two engines sharing the store.

use std::sync::Arc;

use keel_conformance::block_on;
use keel_conformance::engine_model::{check_engine_model, steps};
use keel_storage::faulty::FaultyStore;
use keel_storage::simulated::FaultConfig;
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

    #[test]
    fn two_engines_on_a_faulty_rocksdb_keep_lease_invariants(scenario in steps(40), seed in any::<u64>()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let rocks: Arc<dyn KvStore> = Arc::new(RocksStore::open(dir.path(), RocksOptions::default()).expect("opens"));
        let store = FaultyStore::new(rocks, FaultConfig::chaos(seed));
        let stores: Vec<Arc<dyn KvStore>> = vec![Arc::new(store.clone()), Arc::new(store)];
        block_on(check_engine_model(stores, &scenario));
    }
}
