//! The crash harness checks itself: on a "reopen" that keeps the data (memory clones) it
//! passes; on one that forgets acknowledged commits (a fresh memory store) it fails,
//! naming the lost commits.

use std::sync::Arc;

use keel_conformance::block_on;
use keel_conformance::crash::{check_crash_consistency, CrashPlan};
use keel_storage::memory::MemoryStore;
use keel_storage::{KvStore, Result};

#[test]
fn a_store_that_keeps_its_data_across_reopens_passes() {
    let data = MemoryStore::new();
    let reopen = move || -> Result<Arc<dyn KvStore>> { Ok(Arc::new(data.clone())) };
    block_on(check_crash_consistency(&reopen, CrashPlan::default()));
}

#[test]
fn a_store_that_loses_acknowledged_commits_fails_naming_them() {
    let reopen = || -> Result<Arc<dyn KvStore>> { Ok(Arc::new(MemoryStore::new())) };
    let failure = std::panic::catch_unwind(|| {
        block_on(check_crash_consistency(&reopen, CrashPlan::default()))
    })
    .expect_err("lost commits are found");
    let message = failure
        .downcast_ref::<String>()
        .expect("a formatted message");
    assert!(
        message.contains("acknowledged commits lost in the crash"),
        "{message}"
    );
}
