//! The engine model check (see `keel_conformance::engine_model`) on a real FoundationDB
//! cluster (`KEEL_FDB_CLUSTER_FILE`): one engine; two engines on two store handles of one
//! subspace; two engines through the fault-injecting decorator; one engine across
//! crashes (each `Restart` drops the store handle without shutdown and opens the
//! subspace again). Skipped, with one line saying so, without the variable.
#![cfg(feature = "fdb")]

mod common;

use std::sync::Arc;

use common::FdbFactory;
use keel_conformance::engine_model::{
    check_engine_model, check_engine_model_across_crashes, steps,
};
use keel_conformance::{block_on, StoreFactory};
use keel_storage::faulty::{FaultConfig, FaultyStore};
use keel_storage::KvStore;
use proptest::prelude::*;

proptest! {
    // Every step is several round trips to the cluster: fewer cases than on RocksDB.
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn engine_keeps_lease_invariants_on_foundationdb(scenario in steps(40)) {
        let Some(factory) = FdbFactory::from_env() else { return Ok(()) };
        let store = factory.create().expect("store").store;
        block_on(check_engine_model(vec![store], &scenario));
    }

    #[test]
    fn two_engines_on_one_subspace_keep_lease_invariants(scenario in steps(40)) {
        let Some(factory) = FdbFactory::from_env() else { return Ok(()) };
        let fixture = factory.create().expect("store");
        let second = factory.reopen(&fixture.location).expect("second handle");
        let stores: Vec<Arc<dyn KvStore>> = vec![fixture.store, second];
        block_on(check_engine_model(stores, &scenario));
    }

    #[test]
    fn two_engines_through_the_fault_decorator_keep_lease_invariants(scenario in steps(40), seed in any::<u64>()) {
        let Some(factory) = FdbFactory::from_env() else { return Ok(()) };
        let store = FaultyStore::new(factory.create().expect("store").store, FaultConfig::all(seed));
        let stores: Vec<Arc<dyn KvStore>> = vec![Arc::new(store.clone()), Arc::new(store)];
        block_on(check_engine_model(stores, &scenario));
    }

    #[test]
    fn engine_keeps_lease_invariants_across_crashes(scenario in steps(40)) {
        let Some(factory) = FdbFactory::from_env() else { return Ok(()) };
        let factory = Arc::new(factory);
        let fixture = factory.create().expect("store");
        let location = Arc::new(fixture.location);
        let reopen = {
            let factory = factory.clone();
            Arc::new(move || factory.reopen(&location).expect("reopen"))
        };
        block_on(check_engine_model_across_crashes(fixture.store, reopen, &scenario));
    }
}
