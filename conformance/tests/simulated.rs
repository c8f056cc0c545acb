//! The simulated backend against the conformance suite: every case with faults off, and
//! the retry-runner cases with faults on (one node and two nodes sharing the store).

use std::sync::Arc;

use keel_conformance::{block_on, cases, conformance_suite, Fixture, StoreFactory};
use keel_storage::simulated::{FaultConfig, SimulatedStore};
use keel_storage::{KvStore, Result};

/// Hands out the same simulated store (a clone) for every `create`.
struct SimulatedFactory {
    store: SimulatedStore,
}

impl SimulatedFactory {
    fn new(faults: FaultConfig) -> Self {
        SimulatedFactory {
            store: SimulatedStore::new(faults),
        }
    }
}

impl StoreFactory for SimulatedFactory {
    fn create(&self) -> Result<Fixture> {
        Ok(Fixture::ephemeral(Arc::new(self.store.clone())))
    }
}

/// Faults often enough that a few hundred commits see every kind many times.
fn heavy_chaos(seed: u64) -> FaultConfig {
    keel_conformance::faults::every_fault(seed)
}

mod faults_off {
    use super::*;

    conformance_suite!(SimulatedFactory::new(FaultConfig::none()));
}

#[test]
fn retry_runner_increments_are_exact_under_faults() {
    let factory = SimulatedFactory::new(heavy_chaos(42));
    block_on(cases::concurrent_increments_through_retry_runner_are_exact(
        &factory,
    ));
    let stats = factory.store.fault_stats();
    assert!(stats.spurious_conflicts > 0, "{stats:?}");
    assert!(
        stats.unknown_applied > 0,
        "the idempotency key was exercised: {stats:?}"
    );
    assert!(stats.unknown_not_applied > 0, "{stats:?}");
    assert!(stats.unavailable > 0, "{stats:?}");
}

#[test]
fn two_nodes_sharing_one_store_increment_exactly_under_faults() {
    let node_a = SimulatedStore::new(heavy_chaos(7));
    let node_b = node_a.clone();
    let stores: Vec<Arc<dyn KvStore>> = vec![Arc::new(node_a.clone()), Arc::new(node_b)];
    block_on(cases::run_exact_increments(&stores, 2, 40));
    let stats = node_a.fault_stats();
    assert!(
        stats.unknown_applied > 0 && stats.spurious_conflicts > 0,
        "{stats:?}"
    );
}

#[test]
fn watch_on_one_node_fires_for_a_commit_on_another() {
    let node_a = SimulatedStore::new(FaultConfig::none());
    let node_b = node_a.clone();
    block_on(async move {
        let since = node_a.begin().await.expect("begin").read_version();
        let watch = node_a.watch(b"queue/version", since);
        let mut txn = node_b.begin().await.expect("begin");
        txn.atomic_add(b"queue/version", 1);
        txn.commit().await.expect("commit on node b");
        watch.await.expect("node a learns of node b's write");
    });
}
