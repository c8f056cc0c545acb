//! The engine model check (see `keel_conformance::engine_model`) on the in-memory store
//! (one node), on the memory store through the fault-injecting decorator, and on the
//! simulated store with injected faults, the last two shared by two engines.

use std::sync::Arc;

use keel_conformance::block_on;
use keel_conformance::engine_model::{check_engine_model, steps};
use keel_engine::storage::faulty::FaultyStore;
use keel_engine::storage::memory::MemoryStore;
use keel_engine::storage::simulated::{FaultConfig, SimulatedStore};
use keel_engine::storage::KvStore;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn engine_keeps_lease_invariants_on_the_memory_store(scenario in steps(60)) {
        let store: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
        block_on(check_engine_model(vec![store], &scenario));
    }

    #[test]
    fn two_engines_on_the_memory_store_through_the_fault_decorator_keep_lease_invariants(scenario in steps(60), seed in any::<u64>()) {
        let memory: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
        let store = FaultyStore::new(memory, FaultConfig::all(seed));
        let stores: Vec<Arc<dyn KvStore>> = vec![Arc::new(store.clone()), Arc::new(store)];
        block_on(check_engine_model(stores, &scenario));
    }

    #[test]
    fn two_engines_sharing_a_faulty_store_keep_lease_invariants(scenario in steps(60), seed in any::<u64>()) {
        let store = SimulatedStore::new(FaultConfig::chaos(seed));
        let stores: Vec<Arc<dyn KvStore>> = vec![Arc::new(store.clone()), Arc::new(store)];
        block_on(check_engine_model(stores, &scenario));
    }
}
