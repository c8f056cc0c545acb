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
    withdrawn_key_is_absent, writes_are_invisible_until_commit,
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

/// What a case checks, for failure messages and the porting guide.
#[derive(Debug, Clone, Copy)]
pub struct CaseInfo {
    /// The case's function (and test) name.
    pub name: &'static str,
    /// The part of the contract, or the capability flag, it exercises.
    pub capability: &'static str,
    /// The contract sentence it checks.
    pub contract: &'static str,
}

const fn case(name: &'static str, capability: &'static str, contract: &'static str) -> CaseInfo {
    CaseInfo {
        name,
        capability,
        contract,
    }
}

/// Every case of the suite (and of [`crate::faults`]), with what it checks.
pub const CASES: &[CaseInfo] = &[
    case("set_get_clear_round_trip", "basics", "A committed set is read back, a missing key reads as None, a cleared key is gone."),
    case("withdrawn_key_is_absent", "basics", "A key created and withdrawn in one transaction reads absent, inside it and after commit (KvTxn::withdraw)."),
    case("reads_see_own_writes", "basics: read-your-writes", "Reads see the transaction's own buffered writes first (sets, clears, clear_ranges, adds)."),
    case("writes_are_invisible_until_commit", "basics: isolation", "Writes are buffered and become visible to others only when commit succeeds."),
    case("dropped_transaction_writes_nothing", "basics", "Dropping a transaction without committing discards its writes."),
    case("range_read_returns_keys_in_order_up_to_limit", "ranges", "get_range returns at most opts.limit pairs of the range in key order (or reverse)."),
    case("range_read_by_prefix", "ranges", "KeyRange::prefix holds exactly the keys starting with the prefix."),
    case("range_read_merges_buffered_writes", "ranges: read-your-writes", "Range reads see the transaction's own buffered writes merged with committed data."),
    case("clear_range_removes_only_keys_inside", "ranges", "clear_range deletes every key in the range and no other."),
    case("atomic_add_accumulates_across_commits", "atomics", "atomic_add adds a little-endian i64 delta at commit; a missing key counts as 0."),
    case("atomic_add_after_clear_starts_from_zero", "atomics", "An add after a clear in the same transaction starts from 0."),
    case("concurrent_atomic_adds_do_not_conflict", "atomics", "atomic_add takes no read conflict, so shared counters never make transactions conflict."),
    case("point_read_write_overlap_conflicts", "conflicts: serializability", "Commit fails with Conflict when another transaction committed, after this one's read version, a write to a key in its read conflict set; nothing was written then."),
    case("range_read_write_overlap_conflicts", "conflicts: serializability", "A range read puts the range in the read conflict set: inserts or clears inside it conflict, writes outside do not."),
    case("limited_range_read_conflicts_only_on_observed_part", "conflicts", "When the limit cuts a range read short, only the part up to the last returned key joins the read conflict set."),
    case("snapshot_reads_do_not_conflict", "conflicts: snapshot reads", "Snapshot reads add nothing to the read conflict set."),
    case("blind_writes_do_not_conflict", "conflicts", "Writes without reads never conflict; the last commit wins."),
    case("add_read_conflict_makes_blind_write_conflict", "conflicts", "add_read_conflict adds a key to the read conflict set without reading it."),
    case("read_only_commit_succeeds_with_version_zero", "conflicts", "A transaction that writes nothing commits with version 0."),
    case("reads_are_consistent_or_commit_fails", "conflicts: serializability", "Every non-snapshot read behaves as if it saw the store at the read version, or the commit fails with Conflict."),
    case("commit_versions_increase", "versions", "Commit versions strictly increase; a later transaction reads at or after them."),
    case("watch_fires_on_committed_write", "watches", "watch resolves once a committed transaction has written the key."),
    case("watch_fires_at_once_if_changed_since_version", "watches", "watch resolves at once if the key changed since the given version."),
    case("watch_fires_on_clear_range", "watches", "A clear_range covering a watched key fires the watch."),
    case("entries_up_to_the_limits_are_accepted", "limits", "Every backend accepts keys up to MAX_KEY_BYTES and values up to MAX_VALUE_BYTES."),
    case("oversized_key_or_value_is_rejected", "limits.key_and_value_sizes", "A commit writing a key over MAX_KEY_BYTES or a value over MAX_VALUE_BYTES fails with LimitExceeded and writes nothing."),
    case("oversized_transaction_is_rejected", "limits.transaction_bytes", "A commit writing over MAX_TXN_BYTES fails with LimitExceeded and writes nothing."),
    case("large_value_split_across_keys_round_trips", "limits", "A value split under one prefix into chunks within the limits commits in one transaction and reads back whole."),
    case("concurrent_increments_through_retry_runner_are_exact", "retries", "Conflict and CommitUnknown are retryable; an idempotent body run by the retry runner counts every increment exactly once."),
    case("acknowledged_commits_survive_crash_and_reopen", "durable + reopenable", "commit returns Ok only after the writes are durable: after a crash and reopen every acknowledged commit is there."),
    case("relaxed_commits_are_ordered_visible_and_survive_a_process_crash", "durability: relax_durability", "A relaxed commit is applied in commit order, conflicts like any other and survives a crash of the process."),
    case("versions_stay_monotonic_across_reopen", "reopenable", "Commit versions keep increasing across a reopen."),
    case("shutdown_rejects_later_transactions", "shutdown", "shutdown flushes and stops accepting commits; later calls fail with Unavailable."),
    case("retry_runner_increments_are_exact_under_every_fault", "faults: retries", "Conflict, CommitUnknown (applied or not) and Unavailable are retryable: through the fault decorator, idempotent increments by the retry runner count exactly once."),
    case("two_handles_increment_exactly_under_every_fault", "faults: retries, several nodes", "Two handles of one store (two nodes) under every fault count every idempotent increment exactly once."),
];

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
