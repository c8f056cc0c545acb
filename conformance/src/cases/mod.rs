//! The conformance cases, one `pub async fn` per behaviour of the storage contract.
//!
//! Every case takes a [`StoreFactory`], creates its own fresh store(s), and panics with a
//! message naming the broken rule when the backend misbehaves.
//! Grouped by capability, one file each; every case is re-exported here, where
//! `conformance_suite!` finds it.

mod atomics;
mod basics;
mod conflicts;
mod durability;
mod limits;
mod ranges;
mod watches;

pub use atomics::{
    atomic_add_accumulates_across_commits, atomic_add_after_clear_starts_from_zero,
    concurrent_atomic_adds_do_not_conflict,
};
pub use basics::{
    dropped_transaction_writes_nothing, reads_see_own_writes, set_get_clear_round_trip,
    writes_are_invisible_until_commit,
};
pub use conflicts::{
    add_read_conflict_makes_blind_write_conflict, blind_writes_do_not_conflict,
    commit_versions_increase, limited_range_read_conflicts_only_on_observed_part,
    point_read_write_overlap_conflicts, range_read_write_overlap_conflicts,
    read_only_commit_succeeds_with_version_zero, reads_are_consistent_or_commit_fails,
    snapshot_reads_do_not_conflict,
};
pub use durability::{
    acknowledged_commits_survive_crash_and_reopen,
    concurrent_increments_through_retry_runner_are_exact,
    relaxed_commits_are_ordered_visible_and_survive_a_process_crash, run_exact_increments,
    shutdown_rejects_later_transactions, versions_stay_monotonic_across_reopen,
};
pub use limits::{
    entries_up_to_the_limits_are_accepted, large_value_split_across_keys_round_trips,
    oversized_key_or_value_is_rejected, oversized_transaction_is_rejected,
};
pub use ranges::{
    clear_range_removes_only_keys_inside, range_read_by_prefix, range_read_merges_buffered_writes,
    range_read_returns_keys_in_order_up_to_limit,
};
pub use watches::{
    watch_fires_at_once_if_changed_since_version, watch_fires_on_clear_range,
    watch_fires_on_committed_write,
};

use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use keel_storage::{
    decode_counter, CommitInfo, KeyRange, KvStore, KvTxn, ReadOptions, StorageError,
};

use crate::{Fixture, StoreFactory};

/// How long a watch that must fire may take before the case fails (a bound on failure,
/// not a wait for success: a passing case never sleeps).
pub(super) const WATCH_DEADLINE: Duration = Duration::from_secs(10);

pub(super) fn fresh(factory: &dyn StoreFactory) -> Fixture {
    factory.create().expect("factory creates a store")
}

pub(super) fn store_of(factory: &dyn StoreFactory) -> Arc<dyn KvStore> {
    fresh(factory).store
}

pub(super) async fn begin(store: &dyn KvStore) -> Box<dyn KvTxn> {
    store.begin().await.expect("begin")
}

/// Commits `pairs` in one transaction.
pub(super) async fn put(store: &dyn KvStore, pairs: &[(&[u8], &[u8])]) -> CommitInfo {
    let mut txn = begin(store).await;
    for (k, v) in pairs {
        txn.set(k, v);
    }
    txn.commit().await.expect("commit of blind writes")
}

/// The committed value of `key`, read in a fresh transaction.
pub(super) async fn get(store: &dyn KvStore, key: &[u8]) -> Option<Vec<u8>> {
    begin(store).await.get(key).await.expect("get")
}

pub(super) async fn counter(store: &dyn KvStore, key: &[u8]) -> i64 {
    decode_counter(get(store, key).await.as_deref())
}

pub(super) async fn range(
    store: &dyn KvStore,
    range: &KeyRange,
    opts: ReadOptions,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    begin(store)
        .await
        .get_range(range, opts)
        .await
        .expect("get_range")
}

pub(super) fn kv(k: &[u8], v: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (k.to_vec(), v.to_vec())
}

pub(super) fn keys(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<&[u8]> {
    pairs.iter().map(|(k, _)| k.as_slice()).collect()
}

pub(super) fn all() -> KeyRange {
    KeyRange {
        start: Bound::Unbounded,
        end: Bound::Unbounded,
    }
}

pub(super) fn assert_conflict(result: Result<CommitInfo, StorageError>, what: &str) {
    match result {
        Err(StorageError::Conflict) => {}
        other => panic!("{what}: expected Conflict, got {other:?}"),
    }
}

pub(super) fn assert_limit(result: Result<CommitInfo, StorageError>, what: &str) {
    match result {
        Err(StorageError::LimitExceeded(_)) => {}
        other => panic!("{what}: expected LimitExceeded, got {other:?}"),
    }
}
