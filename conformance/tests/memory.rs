//! The in-memory reference backend against the conformance suite.

use std::sync::Arc;

use keel_conformance::{conformance_suite, EnforcedLimits, Fixture, StoreFactory};
use keel_storage::memory::MemoryStore;
use keel_storage::Result;

struct MemoryFactory;

impl StoreFactory for MemoryFactory {
    fn create(&self) -> Result<Fixture> {
        Ok(Fixture::ephemeral(Arc::new(MemoryStore::new())))
    }

    fn limits(&self) -> EnforcedLimits {
        // The shared optimistic transaction rejects oversized keys and values; only the
        // simulated backend measures whole transactions.
        EnforcedLimits {
            key_and_value_sizes: true,
            transaction_bytes: false,
        }
    }
}

conformance_suite!(MemoryFactory);
