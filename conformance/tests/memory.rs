//! The in-memory reference backend against the conformance suite (as it is, and through
//! the fault-injecting decorator: see `conformance_suite!`).

use std::sync::Arc;

use keel_conformance::{conformance_suite, Fixture, StoreFactory};
use keel_storage::memory::MemoryStore;
use keel_storage::Result;

struct MemoryFactory;

impl StoreFactory for MemoryFactory {
    fn create(&self) -> Result<Fixture> {
        Ok(Fixture::ephemeral(Arc::new(MemoryStore::new())))
    }
}

conformance_suite!(MemoryFactory);
