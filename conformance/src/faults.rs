//! The suite through the fault-injecting decorator ([`keel_storage::faulty::FaultyStore`]).
//!
//! [`FaultyFactory`] wraps any [`StoreFactory`] so that every store it creates or reopens
//! sits behind the decorator. `conformance_suite!` uses it twice:
//!
//! * every case, with [`delays_only`]: random waits before begins, reads and commits
//!   reorder concurrent transactions but must change no outcome;
//! * the fault-tolerance cases here, with every fault on ([`FaultConfig::all`] at a
//!   higher rate): through the retry runner, spurious conflicts, commit-unknown results
//!   that did or did not apply and transient unavailability never lose or double an
//!   idempotent increment.
//!
//! The engine model check takes the same decorator: wrap the store in a `FaultyStore`
//! before handing it to `engine_model::check_engine_model`.

use std::sync::Arc;
use std::time::Duration;

use keel_storage::faulty::{FaultConfig, FaultyStore, InjectedFaults};
use keel_storage::{KvStore, Result};

use crate::{Fixture, Location, StoreFactory};

/// Delays only (up to 300 µs), seed fixed: the configuration the whole suite runs under.
pub fn delays_only() -> FaultConfig {
    FaultConfig::latency(0x5eed, Duration::from_micros(300))
}

/// Every fault, often: about one commit in three fails in some way, one begin in
/// twenty is refused.
pub fn every_fault(seed: u64) -> FaultConfig {
    FaultConfig {
        conflict: 0.1,
        unknown_applied: 0.1,
        unknown_not_applied: 0.1,
        unavailable: 0.05,
        ..FaultConfig::all(seed)
    }
}

/// A [`StoreFactory`] whose stores sit behind the fault-injecting decorator.
pub struct FaultyFactory<F> {
    inner: F,
    faults: FaultConfig,
}

impl<F: StoreFactory> FaultyFactory<F> {
    /// Wraps every store `inner` creates or reopens, injecting `faults`.
    pub fn new(inner: F, faults: FaultConfig) -> Self {
        FaultyFactory { inner, faults }
    }

    /// The wrapped factory.
    pub fn inner(&self) -> &F {
        &self.inner
    }

    /// A fresh store behind the decorator, and the decorator itself (for
    /// [`FaultyStore::injected`]).
    pub fn create_faulty(&self) -> Result<(FaultyStore, Location)> {
        let Fixture { store, location } = self.inner.create()?;
        Ok((FaultyStore::new(store, self.faults), location))
    }
}

impl<F: StoreFactory> StoreFactory for FaultyFactory<F> {
    fn create(&self) -> Result<Fixture> {
        let (store, location) = self.create_faulty()?;
        Ok(Fixture {
            store: Arc::new(store),
            location,
        })
    }

    fn reopen(&self, location: &Location) -> Result<Arc<dyn KvStore>> {
        let store = self.inner.reopen(location)?;
        Ok(Arc::new(FaultyStore::new(store, self.faults)))
    }
}

fn assert_every_fault_injected(injected: InjectedFaults) {
    assert!(
        injected.conflicts > 0
            && injected.unknown_applied > 0
            && injected.unknown_not_applied > 0
            && injected.unavailable > 0,
        "every kind of fault was injected at least once: {injected:?}"
    );
}

/// Concurrent idempotent increments through the retry runner on a store behind the
/// decorator with every fault on end with the exact count.
pub async fn retry_runner_increments_are_exact_under_every_fault(factory: &dyn StoreFactory) {
    let Fixture { store, .. } = factory.create().expect("factory creates a store");
    let faulty = FaultyStore::new(store, every_fault(42));
    let stores: Vec<Arc<dyn KvStore>> = vec![Arc::new(faulty.clone())];
    crate::cases::run_exact_increments(&stores, 4, 50).await;
    assert_every_fault_injected(faulty.injected());
}

/// Two handles of one store (two nodes, each behind the decorator, sharing its dice)
/// under every fault count every idempotent increment exactly once.
pub async fn two_handles_increment_exactly_under_every_fault(factory: &dyn StoreFactory) {
    let Fixture { store, .. } = factory.create().expect("factory creates a store");
    let faulty = FaultyStore::new(store, every_fault(7));
    let stores: Vec<Arc<dyn KvStore>> = vec![Arc::new(faulty.clone()), Arc::new(faulty.clone())];
    crate::cases::run_exact_increments(&stores, 2, 50).await;
    assert_every_fault_injected(faulty.injected());
}
