//! The engine model check (see `keel_conformance::engine_model`) on RocksDB: as it is;
//! through the fault-injecting decorator (spurious conflicts, commit-unknown results that
//! did or did not apply, transient unavailability, delays) with two engines sharing the
//! store; and across crashes (each `Restart` step drops the store without shutdown and
//! reopens its directory).

use std::sync::Arc;

use keel_conformance::block_on;
use keel_conformance::engine_model::{
    check_engine_model, check_engine_model_across_crashes, steps,
};
use keel_storage::faulty::{FaultConfig, FaultyStore};
use keel_storage::KvStore;
use keel_storage_rocksdb::{RocksOptions, RocksStore};
use proptest::prelude::*;

fn open(dir: &std::path::Path) -> Arc<dyn KvStore> {
    Arc::new(RocksStore::open(dir, RocksOptions::default()).expect("opens"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn engine_keeps_lease_invariants_on_rocksdb(scenario in steps(40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        block_on(check_engine_model(vec![open(dir.path())], &scenario));
    }

    #[test]
    fn two_engines_on_a_faulty_rocksdb_keep_lease_invariants(scenario in steps(40), seed in any::<u64>()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FaultyStore::new(open(dir.path()), FaultConfig::all(seed));
        let stores: Vec<Arc<dyn KvStore>> = vec![Arc::new(store.clone()), Arc::new(store)];
        block_on(check_engine_model(stores, &scenario));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn engine_keeps_lease_invariants_across_rocksdb_crashes(scenario in steps(40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let reopen = Arc::new(move || open(&path));
        block_on(check_engine_model_across_crashes(reopen(), reopen.clone(), &scenario));
    }
}
