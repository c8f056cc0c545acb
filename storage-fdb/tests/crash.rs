//! Crash consistency on a real FoundationDB cluster (`KEEL_FDB_CLUSTER_FILE`) against the
//! harness's model (`keel_conformance::crash`): the store handle is dropped without
//! shutdown while commits are in flight, the subspace opened again and checked. Skipped,
//! with one line saying so, without the variable.
#![cfg(feature = "fdb")]

mod common;

use std::sync::Arc;

use common::FdbFactory;
use keel_conformance::crash::{check_crash_consistency, CrashPlan};
use keel_conformance::{block_on, StoreFactory};
use keel_storage::{KvStore, Result};

#[test]
fn dropped_mid_commit_the_store_keeps_acknowledged_commits_and_applies_others_whole() {
    let Some(factory) = FdbFactory::from_env() else {
        return;
    };
    let location = factory.create().expect("store").location;
    let reopen = || -> Result<Arc<dyn KvStore>> { factory.reopen(&location) };
    block_on(check_crash_consistency(&reopen, CrashPlan::default()));
}
