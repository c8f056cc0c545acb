//! The conformance cases, one `pub async fn` per behaviour of the storage contract.
//!
//! Every case takes a [`StoreFactory`], creates its own fresh store(s), and panics with a
//! message naming the broken rule when the backend misbehaves.

use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use keel_storage::retry::{self, RetryPolicy};
use keel_storage::{
    decode_counter, CommitInfo, KeyRange, KvStore, KvTxn, ReadOptions, StorageError, Version,
    MAX_KEY_BYTES, MAX_TXN_BYTES, MAX_VALUE_BYTES,
};

use crate::{Fixture, StoreFactory};

/// How long a watch that must fire may take before the case fails (a bound on failure,
/// not a wait for success: a passing case never sleeps).
const WATCH_DEADLINE: Duration = Duration::from_secs(10);

fn fresh(factory: &dyn StoreFactory) -> Fixture {
    factory.create().expect("factory creates a store")
}

fn store_of(factory: &dyn StoreFactory) -> Arc<dyn KvStore> {
    fresh(factory).store
}

async fn begin(store: &dyn KvStore) -> Box<dyn KvTxn> {
    store.begin().await.expect("begin")
}

/// Commits `pairs` in one transaction.
async fn put(store: &dyn KvStore, pairs: &[(&[u8], &[u8])]) -> CommitInfo {
    let mut txn = begin(store).await;
    for (k, v) in pairs {
        txn.set(k, v);
    }
    txn.commit().await.expect("commit of blind writes")
}

/// The committed value of `key`, read in a fresh transaction.
async fn get(store: &dyn KvStore, key: &[u8]) -> Option<Vec<u8>> {
    begin(store).await.get(key).await.expect("get")
}

async fn counter(store: &dyn KvStore, key: &[u8]) -> i64 {
    decode_counter(get(store, key).await.as_deref())
}

async fn range(
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

fn kv(k: &[u8], v: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (k.to_vec(), v.to_vec())
}

fn keys(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<&[u8]> {
    pairs.iter().map(|(k, _)| k.as_slice()).collect()
}

fn all() -> KeyRange {
    KeyRange {
        start: Bound::Unbounded,
        end: Bound::Unbounded,
    }
}

fn assert_conflict(result: Result<CommitInfo, StorageError>, what: &str) {
    match result {
        Err(StorageError::Conflict) => {}
        other => panic!("{what}: expected Conflict, got {other:?}"),
    }
}

fn assert_limit(result: Result<CommitInfo, StorageError>, what: &str) {
    match result {
        Err(StorageError::LimitExceeded(_)) => {}
        other => panic!("{what}: expected LimitExceeded, got {other:?}"),
    }
}

/// A committed set is read back, a missing key reads as `None`, a cleared key is gone.
pub async fn set_get_clear_round_trip(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    assert_eq!(get(store, b"k").await, None, "missing key reads as None");
    put(store, &[(b"k", b"v1"), (b"empty", b"")]).await;
    assert_eq!(get(store, b"k").await.as_deref(), Some(&b"v1"[..]));
    assert_eq!(
        get(store, b"empty").await.as_deref(),
        Some(&b""[..]),
        "empty value is a value"
    );
    put(store, &[(b"k", b"v2")]).await;
    assert_eq!(
        get(store, b"k").await.as_deref(),
        Some(&b"v2"[..]),
        "set overwrites"
    );
    let mut txn = begin(store).await;
    txn.clear(b"k");
    txn.clear(b"never-written");
    txn.commit().await.expect("commit of clears");
    assert_eq!(get(store, b"k").await, None, "cleared key is gone");
    assert_eq!(
        get(store, b"empty").await.as_deref(),
        Some(&b""[..]),
        "other keys stay"
    );
}

/// Reads inside a transaction see its own buffered sets, clears, clear_ranges and adds.
pub async fn reads_see_own_writes(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    put(
        store,
        &[(b"a", b"old"), (b"b", b"old"), (b"c", &5i64.to_le_bytes())],
    )
    .await;
    let mut txn = begin(store).await;
    txn.set(b"a", b"new");
    assert_eq!(
        txn.get(b"a").await.expect("get").as_deref(),
        Some(&b"new"[..])
    );
    assert_eq!(
        txn.get_snapshot(b"a").await.expect("get").as_deref(),
        Some(&b"new"[..])
    );
    txn.clear(b"b");
    assert_eq!(txn.get(b"b").await.expect("get"), None, "own clear");
    txn.atomic_add(b"c", 2);
    assert_eq!(
        decode_counter(txn.get(b"c").await.expect("get").as_deref()),
        7,
        "own add"
    );
    txn.atomic_add(b"fresh", 3);
    assert_eq!(
        decode_counter(txn.get(b"fresh").await.expect("get").as_deref()),
        3
    );
    txn.clear_range(&KeyRange::new(b"a".to_vec(), b"b".to_vec()));
    assert_eq!(txn.get(b"a").await.expect("get"), None, "own clear_range");
    txn.set(b"a", b"again");
    assert_eq!(
        txn.get(b"a").await.expect("get").as_deref(),
        Some(&b"again"[..]),
        "set after clear_range"
    );
    txn.commit().await.expect("commit");
    assert_eq!(get(store, b"a").await.as_deref(), Some(&b"again"[..]));
    assert_eq!(get(store, b"b").await, None);
    assert_eq!(counter(store, b"c").await, 7);
    assert_eq!(counter(store, b"fresh").await, 3);
}

/// Another transaction sees buffered writes only once they are committed.
pub async fn writes_are_invisible_until_commit(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    let mut writer = begin(store).await;
    writer.set(b"k", b"v");
    writer.atomic_add(b"n", 1);
    let mut early = begin(store).await;
    assert_eq!(
        early.get(b"k").await.expect("get"),
        None,
        "uncommitted set is invisible"
    );
    assert_eq!(
        early.get(b"n").await.expect("get"),
        None,
        "uncommitted add is invisible"
    );
    assert_eq!(get(store, b"k").await, None);
    writer.commit().await.expect("commit");
    assert_eq!(
        get(store, b"k").await.as_deref(),
        Some(&b"v"[..]),
        "visible after commit"
    );
    assert_eq!(counter(store, b"n").await, 1, "add visible after commit");
}

/// A transaction dropped without commit leaves no trace.
pub async fn dropped_transaction_writes_nothing(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    put(store, &[(b"keep", b"v")]).await;
    let mut txn = begin(store).await;
    txn.set(b"k", b"v");
    txn.clear(b"keep");
    txn.atomic_add(b"n", 1);
    drop(txn);
    assert_eq!(get(store, b"k").await, None);
    assert_eq!(get(store, b"n").await, None);
    assert_eq!(get(store, b"keep").await.as_deref(), Some(&b"v"[..]));
}

/// Range reads return pairs in key order (or reverse), honour bounds and the limit.
pub async fn range_read_returns_keys_in_order_up_to_limit(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    put(
        store,
        &[
            (b"d", b"4"),
            (b"a", b"1"),
            (b"c", b"3"),
            (b"b", b"2"),
            (b"e", b"5"),
        ],
    )
    .await;
    let bc = KeyRange::new(b"b".to_vec(), b"d".to_vec());
    assert_eq!(
        range(store, &bc, ReadOptions::limit(10)).await,
        vec![kv(b"b", b"2"), kv(b"c", b"3")]
    );
    assert_eq!(
        range(store, &bc, ReadOptions::limit(10).reverse()).await,
        vec![kv(b"c", b"3"), kv(b"b", b"2")]
    );
    let everything = range(store, &all(), ReadOptions::limit(100)).await;
    assert_eq!(keys(&everything), vec![&b"a"[..], b"b", b"c", b"d", b"e"]);
    let first_two = range(store, &all(), ReadOptions::limit(2)).await;
    assert_eq!(
        keys(&first_two),
        vec![&b"a"[..], b"b"],
        "limit cuts from the front"
    );
    let last_two = range(store, &all(), ReadOptions::limit(2).reverse()).await;
    assert_eq!(
        keys(&last_two),
        vec![&b"e"[..], b"d"],
        "reverse limit cuts from the back"
    );
    let inclusive = KeyRange {
        start: Bound::Excluded(b"a".to_vec()),
        end: Bound::Included(b"d".to_vec()),
    };
    let got = range(store, &inclusive, ReadOptions::limit(10)).await;
    assert_eq!(
        keys(&got),
        vec![&b"b"[..], b"c", b"d"],
        "excluded start, included end"
    );
    let got = range(store, &inclusive, ReadOptions::limit(10).reverse()).await;
    assert_eq!(keys(&got), vec![&b"d"[..], b"c", b"b"]);
    let empty = KeyRange::new(b"x".to_vec(), b"z".to_vec());
    assert!(range(store, &empty, ReadOptions::limit(10))
        .await
        .is_empty());
    let snapshot = range(store, &bc, ReadOptions::limit(10).snapshot()).await;
    assert_eq!(
        keys(&snapshot),
        vec![&b"b"[..], b"c"],
        "snapshot reads see the same data"
    );
}

/// A prefix range holds exactly the keys starting with the prefix, including `\xff` tails.
pub async fn range_read_by_prefix(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    put(
        store,
        &[
            (b"run/", b"0"),
            (b"run/1", b"1"),
            (b"run/2", b"2"),
            (b"run/\xff\xff", b"3"),
            (b"run0", b"x"),
            (b"ru", b"x"),
            (b"\xff\xff", b"x"),
        ],
    )
    .await;
    let got = range(store, &KeyRange::prefix(b"run/"), ReadOptions::limit(100)).await;
    assert_eq!(
        keys(&got),
        vec![&b"run/"[..], b"run/1", b"run/2", b"run/\xff\xff"]
    );
    let got = range(store, &KeyRange::prefix(b"\xff"), ReadOptions::limit(100)).await;
    assert_eq!(
        keys(&got),
        vec![&b"\xff\xff"[..]],
        "prefix of 0xff has no successor"
    );
}

/// Range reads merge the transaction's buffered sets, clears, clear_ranges and adds with
/// committed data, in both directions and under a limit.
pub async fn range_read_merges_buffered_writes(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    put(
        store,
        &[
            (b"a", b"1"),
            (b"b", b"2"),
            (b"c", b"3"),
            (b"d", b"4"),
            (b"e", b"5"),
            (b"f", b"6"),
        ],
    )
    .await;
    let mut txn = begin(store).await;
    txn.set(b"aa", b"new");
    txn.set(b"c", b"changed");
    txn.clear(b"b");
    txn.clear_range(&KeyRange::new(b"d".to_vec(), b"f".to_vec()));
    txn.set(b"e", b"back");
    txn.atomic_add(b"g", 9);
    let expected = vec![
        kv(b"a", b"1"),
        kv(b"aa", b"new"),
        kv(b"c", b"changed"),
        kv(b"e", b"back"),
        kv(b"f", b"6"),
        kv(b"g", &9i64.to_le_bytes()),
    ];
    let got = txn
        .get_range(&all(), ReadOptions::limit(100))
        .await
        .expect("range");
    assert_eq!(got, expected);
    let got = txn
        .get_range(&all(), ReadOptions::limit(100).reverse())
        .await
        .expect("range");
    assert_eq!(got, expected.iter().rev().cloned().collect::<Vec<_>>());
    for limit in 1..=expected.len() {
        let got = txn
            .get_range(&all(), ReadOptions::limit(limit))
            .await
            .expect("range");
        assert_eq!(got, expected[..limit].to_vec(), "forward, limit {limit}");
        let got = txn
            .get_range(&all(), ReadOptions::limit(limit).reverse())
            .await
            .expect("range");
        let tail: Vec<_> = expected.iter().rev().take(limit).cloned().collect();
        assert_eq!(got, tail, "reverse, limit {limit}");
    }
    txn.commit().await.expect("commit");
    assert_eq!(
        range(store, &all(), ReadOptions::limit(100)).await,
        expected,
        "committed as read"
    );
}

/// A committed clear_range removes exactly the keys inside its bounds.
pub async fn clear_range_removes_only_keys_inside(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    let names: [&[u8]; 7] = [b"a", b"b", b"ba", b"c", b"d", b"e", b"\xff\xff"];
    let pairs: Vec<(&[u8], &[u8])> = names.iter().map(|k| (*k, &b"v"[..])).collect();
    put(store, &pairs).await;
    let mut txn = begin(store).await;
    txn.clear_range(&KeyRange::new(b"b".to_vec(), b"c".to_vec()));
    txn.commit().await.expect("commit");
    let left = range(store, &all(), ReadOptions::limit(100)).await;
    assert_eq!(
        keys(&left),
        vec![&b"a"[..], b"c", b"d", b"e", b"\xff\xff"],
        "[b, c) cleared"
    );
    let mut txn = begin(store).await;
    txn.clear_range(&KeyRange {
        start: Bound::Excluded(b"c".to_vec()),
        end: Bound::Included(b"d".to_vec()),
    });
    txn.commit().await.expect("commit");
    let left = range(store, &all(), ReadOptions::limit(100)).await;
    assert_eq!(
        keys(&left),
        vec![&b"a"[..], b"c", b"e", b"\xff\xff"],
        "(c, d] cleared"
    );
    let mut txn = begin(store).await;
    txn.clear_range(&KeyRange {
        start: Bound::Included(b"e".to_vec()),
        end: Bound::Unbounded,
    });
    txn.commit().await.expect("commit");
    let left = range(store, &all(), ReadOptions::limit(100)).await;
    assert_eq!(keys(&left), vec![&b"a"[..], b"c"], "[e, ∞) cleared");
    let mut txn = begin(store).await;
    txn.clear_range(&all());
    txn.commit().await.expect("commit");
    assert!(
        range(store, &all(), ReadOptions::limit(100))
            .await
            .is_empty(),
        "everything cleared"
    );
}

/// Adds accumulate across commits, a missing key counts as 0, negative deltas subtract,
/// and the counter is a little-endian `i64`.
pub async fn atomic_add_accumulates_across_commits(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    for delta in [5i64, 10, -3] {
        let mut txn = begin(store).await;
        txn.atomic_add(b"n", delta);
        txn.commit().await.expect("commit of an add");
    }
    assert_eq!(get(store, b"n").await, Some(12i64.to_le_bytes().to_vec()));
    let mut txn = begin(store).await;
    txn.atomic_add(b"n", 1);
    txn.atomic_add(b"n", 1);
    txn.commit().await.expect("commit");
    assert_eq!(
        counter(store, b"n").await,
        14,
        "two adds in one transaction both count"
    );
    put(store, &[(b"n", &100i64.to_le_bytes())]).await;
    let mut txn = begin(store).await;
    txn.atomic_add(b"n", 1);
    txn.commit().await.expect("commit");
    assert_eq!(
        counter(store, b"n").await,
        101,
        "adds apply to a set counter"
    );
}

/// An add after a clear (point or range) in the same transaction starts from zero.
pub async fn atomic_add_after_clear_starts_from_zero(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    put(
        store,
        &[(b"p", &50i64.to_le_bytes()), (b"r", &50i64.to_le_bytes())],
    )
    .await;
    let mut txn = begin(store).await;
    txn.clear(b"p");
    txn.atomic_add(b"p", 2);
    txn.clear_range(&KeyRange::prefix(b"r"));
    txn.atomic_add(b"r", 3);
    txn.commit().await.expect("commit");
    assert_eq!(counter(store, b"p").await, 2);
    assert_eq!(counter(store, b"r").await, 3);
}

/// Transactions that only add to the same counter never conflict, and no add is lost.
pub async fn concurrent_atomic_adds_do_not_conflict(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let mut open = Vec::new();
    for i in 1..=5i64 {
        let mut txn = begin(store.as_ref()).await;
        txn.atomic_add(b"shared", i);
        open.push(txn);
    }
    // All five were open together; commit them concurrently.
    let tasks: Vec<_> = open
        .into_iter()
        .map(|txn| tokio::spawn(txn.commit()))
        .collect();
    for task in tasks {
        task.await.expect("task").expect("adds never conflict");
    }
    assert_eq!(counter(store.as_ref(), b"shared").await, 15);
}

/// A transaction that read a key another transaction then wrote fails with `Conflict`
/// and writes nothing.
pub async fn point_read_write_overlap_conflicts(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    put(store, &[(b"k", b"0")]).await;
    let mut reader = begin(store).await;
    assert_eq!(
        reader.get(b"k").await.expect("get").as_deref(),
        Some(&b"0"[..])
    );
    reader.set(b"out", b"stale");
    put(store, &[(b"k", b"1")]).await;
    assert_conflict(reader.commit().await, "write to a read key");
    assert_eq!(
        get(store, b"out").await,
        None,
        "a conflicting commit writes nothing"
    );

    // Reading a missing key conflicts with its creation too.
    let mut reader = begin(store).await;
    assert_eq!(reader.get(b"absent").await.expect("get"), None);
    reader.set(b"out", b"stale");
    put(store, &[(b"absent", b"now")]).await;
    assert_conflict(reader.commit().await, "creation of a key read as missing");
}

/// A range read conflicts with a later insert into, or clear of, that range, but not with
/// writes outside it.
pub async fn range_read_write_overlap_conflicts(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    put(store, &[(b"r/1", b"v"), (b"r/3", b"v")]).await;
    let prefix = KeyRange::prefix(b"r/");

    let mut reader = begin(store).await;
    reader
        .get_range(&prefix, ReadOptions::limit(100))
        .await
        .expect("range");
    reader.set(b"out", b"v");
    put(store, &[(b"r/2", b"phantom")]).await;
    assert_conflict(reader.commit().await, "insert into a read range");

    let mut reader = begin(store).await;
    reader
        .get_range(&prefix, ReadOptions::limit(100).reverse())
        .await
        .expect("range");
    reader.set(b"out", b"v");
    let mut clearer = begin(store).await;
    clearer.clear_range(&KeyRange::new(b"r/0".to_vec(), b"r/15".to_vec()));
    clearer.commit().await.expect("blind clear_range");
    assert_conflict(
        reader.commit().await,
        "clear_range overlapping a read range",
    );
    assert_eq!(get(store, b"out").await, None);

    let mut reader = begin(store).await;
    reader
        .get_range(&prefix, ReadOptions::limit(100))
        .await
        .expect("range");
    reader.set(b"out", b"v");
    put(store, &[(b"s/1", b"v"), (b"r", b"v")]).await;
    reader
        .commit()
        .await
        .expect("writes outside the read range do not conflict");
}

/// When the limit cuts a range read short, only the part up to the last returned key is
/// in the read conflict set.
pub async fn limited_range_read_conflicts_only_on_observed_part(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    put(
        store,
        &[(b"a", b"v"), (b"b", b"v"), (b"c", b"v"), (b"d", b"v")],
    )
    .await;

    let mut reader = begin(store).await;
    let got = reader
        .get_range(&all(), ReadOptions::limit(2))
        .await
        .expect("range");
    assert_eq!(keys(&got), vec![&b"a"[..], b"b"]);
    reader.set(b"out", b"v");
    put(store, &[(b"bb", b"v"), (b"d", b"changed")]).await;
    reader
        .commit()
        .await
        .expect("writes past the last returned key do not conflict");

    let mut reader = begin(store).await;
    reader
        .get_range(&all(), ReadOptions::limit(2))
        .await
        .expect("range");
    reader.set(b"out", b"v");
    put(store, &[(b"aa", b"v")]).await;
    assert_conflict(reader.commit().await, "insert inside the observed part");

    let mut reader = begin(store).await;
    let got = reader
        .get_range(&all(), ReadOptions::limit(2).reverse())
        .await
        .expect("range");
    assert_eq!(keys(&got), vec![&b"out"[..], b"d"]);
    reader.set(b"x", b"v");
    put(store, &[(b"a", b"changed")]).await;
    reader
        .commit()
        .await
        .expect("writes before the last returned key (reverse) do not conflict");
}

/// Snapshot reads (point and range) add nothing to the read conflict set.
pub async fn snapshot_reads_do_not_conflict(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    put(store, &[(b"k", b"0"), (b"r/1", b"v")]).await;
    let mut reader = begin(store).await;
    reader.get_snapshot(b"k").await.expect("snapshot get");
    reader
        .get_range(&KeyRange::prefix(b"r/"), ReadOptions::limit(10).snapshot())
        .await
        .expect("range");
    reader.set(b"out", b"v");
    put(store, &[(b"k", b"1"), (b"r/2", b"v")]).await;
    reader
        .commit()
        .await
        .expect("snapshot reads never conflict");
    assert_eq!(get(store, b"out").await.as_deref(), Some(&b"v"[..]));
}

/// Writes without reads never conflict, even to the same keys; the last commit wins.
pub async fn blind_writes_do_not_conflict(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    let mut first = begin(store).await;
    let mut second = begin(store).await;
    first.set(b"k", b"first");
    first.clear_range(&KeyRange::prefix(b"r/"));
    second.set(b"k", b"second");
    second.clear(b"r/1");
    first.commit().await.expect("blind write");
    second
        .commit()
        .await
        .expect("blind write after a concurrent one");
    assert_eq!(get(store, b"k").await.as_deref(), Some(&b"second"[..]));
}

/// `add_read_conflict` makes a write-only transaction conflict like a read would.
pub async fn add_read_conflict_makes_blind_write_conflict(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    let mut txn = begin(store).await;
    txn.add_read_conflict(b"guard");
    txn.set(b"out", b"v");
    put(store, &[(b"guard", b"changed")]).await;
    assert_conflict(
        txn.commit().await,
        "write to a key added to the read conflict set",
    );
    assert_eq!(get(store, b"out").await, None);
}

/// A transaction that writes nothing commits with version 0.
pub async fn read_only_commit_succeeds_with_version_zero(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    put(store, &[(b"k", b"v")]).await;
    let txn = begin(store).await;
    assert_eq!(txn.commit().await.expect("empty commit").version, 0);
    let mut txn = begin(store).await;
    txn.get(b"k").await.expect("get");
    txn.get_range(&all(), ReadOptions::limit(10))
        .await
        .expect("range");
    assert_eq!(txn.commit().await.expect("read-only commit").version, 0);
}

/// Every non-snapshot read behaves as if taken at the read version, or the commit fails:
/// a transaction never commits after seeing half of another's writes.
pub async fn reads_are_consistent_or_commit_fails(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    put(store, &[(b"a", b"0"), (b"b", b"0")]).await;
    for writes in [true, false] {
        let mut reader = begin(store).await;
        let a = reader.get(b"a").await.expect("get");
        let next = if writes { b"2" } else { b"1" };
        put(store, &[(b"a", next), (b"b", next)]).await;
        let b = reader.get(b"b").await.expect("get");
        if writes {
            reader.set(b"out", b"v");
        }
        let outcome = reader.commit().await;
        if a != b {
            assert_conflict(outcome, "commit after reading a torn state");
        } else if let Err(e) = outcome {
            assert!(
                e.is_retryable(),
                "a consistent reader fails only retryably: {e:?}"
            );
        }
    }
}

/// Commit versions strictly increase, and a later transaction reads at or after them.
pub async fn commit_versions_increase(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    let mut last: Version = 0;
    for i in 0..10u8 {
        let txn = begin(store).await;
        assert!(
            txn.read_version() >= last,
            "read version {} before commit {last}",
            txn.read_version()
        );
        drop(txn);
        let info = put(store, &[(&[i][..], b"v")]).await;
        assert!(info.version > last, "version {} after {last}", info.version);
        last = info.version;
    }
    assert!(begin(store).await.read_version() >= last);
}

/// A watch resolves once a later commit writes its key.
pub async fn watch_fires_on_committed_write(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    put(store, &[(b"k", b"0")]).await;
    let since = begin(store).await.read_version();
    let watch = store.watch(b"k", since);
    put(store, &[(b"other", b"v")]).await;
    let mut txn = begin(store).await;
    txn.atomic_add(b"k", 1);
    txn.commit().await.expect("commit");
    tokio::time::timeout(WATCH_DEADLINE, watch)
        .await
        .expect("watch fires after a commit writes the key")
        .expect("watch resolves Ok");
}

/// A watch on a key changed after `since` resolves at once.
pub async fn watch_fires_at_once_if_changed_since_version(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    let since = begin(store).await.read_version();
    put(store, &[(b"k", b"v")]).await;
    tokio::time::timeout(WATCH_DEADLINE, store.watch(b"k", since))
        .await
        .expect("watch on a key changed since the version fires at once")
        .expect("watch resolves Ok");
}

/// A clear_range covering a watched key fires the watch.
pub async fn watch_fires_on_clear_range(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    put(store, &[(b"q/1", b"v")]).await;
    let since = begin(store).await.read_version();
    let watch = store.watch(b"q/1", since);
    let mut txn = begin(store).await;
    txn.clear_range(&KeyRange::prefix(b"q/"));
    txn.commit().await.expect("commit");
    tokio::time::timeout(WATCH_DEADLINE, watch)
        .await
        .expect("watch fires when a clear_range covers the key")
        .expect("watch resolves Ok");
}

/// Every backend accepts a key of `MAX_KEY_BYTES` holding a value of `MAX_VALUE_BYTES`.
pub async fn entries_up_to_the_limits_are_accepted(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    let key = vec![b'k'; MAX_KEY_BYTES];
    let value: Vec<u8> = (0..MAX_VALUE_BYTES).map(|i| (i % 251) as u8).collect();
    put(store, &[(&key, &value)]).await;
    assert_eq!(get(store, &key).await, Some(value));
}

/// Keys and values over the limits fail with `LimitExceeded` and write nothing.
/// Not applicable (returns at once) unless the factory declares
/// [`EnforcedLimits::key_and_value_sizes`](crate::EnforcedLimits).
pub async fn oversized_key_or_value_is_rejected(factory: &dyn StoreFactory) {
    if !factory.limits().key_and_value_sizes {
        return;
    }
    let store = store_of(factory);
    let store = store.as_ref();
    let mut txn = begin(store).await;
    txn.set(b"small", b"v");
    txn.set(b"big", &vec![0u8; MAX_VALUE_BYTES + 1]);
    assert_limit(txn.commit().await, "value over MAX_VALUE_BYTES");
    let mut txn = begin(store).await;
    txn.set(b"small", b"v");
    txn.set(&vec![b'k'; MAX_KEY_BYTES + 1], b"v");
    assert_limit(txn.commit().await, "key over MAX_KEY_BYTES");
    assert_eq!(
        get(store, b"small").await,
        None,
        "a rejected transaction writes nothing"
    );
}

/// A transaction writing more than `MAX_TXN_BYTES` fails with `LimitExceeded` and writes
/// nothing. Not applicable (returns at once) unless the factory declares
/// [`EnforcedLimits::transaction_bytes`](crate::EnforcedLimits).
pub async fn oversized_transaction_is_rejected(factory: &dyn StoreFactory) {
    if !factory.limits().transaction_bytes {
        return;
    }
    let store = store_of(factory);
    let store = store.as_ref();
    let value = vec![0u8; MAX_VALUE_BYTES];
    let mut txn = begin(store).await;
    let chunks = MAX_TXN_BYTES / MAX_VALUE_BYTES + 1;
    for i in 0..chunks as u32 {
        txn.set(&i.to_be_bytes(), &value);
    }
    assert_limit(txn.commit().await, "transaction over MAX_TXN_BYTES");
    assert_eq!(get(store, &0u32.to_be_bytes()).await, None);
}

/// A value larger than `MAX_VALUE_BYTES`, split by the caller into chunks under one
/// prefix, commits in one transaction and reads back whole.
pub async fn large_value_split_across_keys_round_trips(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    let payload: Vec<u8> = (0..(3 * MAX_VALUE_BYTES + 12_345))
        .map(|i| (i % 253) as u8)
        .collect();
    let mut txn = begin(store).await;
    for (i, chunk) in payload.chunks(MAX_VALUE_BYTES).enumerate() {
        let mut key = b"blob/".to_vec();
        key.extend_from_slice(&(i as u32).to_be_bytes());
        txn.set(&key, chunk);
    }
    txn.commit()
        .await
        .expect("a split value stays under the limits");
    let chunks = range(store, &KeyRange::prefix(b"blob/"), ReadOptions::limit(1000)).await;
    assert_eq!(chunks.len(), 4);
    assert!(chunks.iter().all(|(_, v)| v.len() <= MAX_VALUE_BYTES));
    let joined: Vec<u8> = chunks.into_iter().flat_map(|(_, v)| v).collect();
    assert_eq!(joined, payload);
}

/// Concurrent read-modify-write increments of one counter through the retry runner end
/// with the exact total: conflicts are retried, and an idempotency key written in the same
/// transaction makes a retry after a commit-unknown result safe.
pub async fn concurrent_increments_through_retry_runner_are_exact(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    run_exact_increments(&[store], 4, 50).await;
}

/// Runs `tasks_per_store` concurrent tasks on each store handle, each making `increments`
/// idempotent read-modify-write increments of one counter through the retry runner, then
/// checks the counter equals the number of increments. Handles of one shared store (e.g.
/// two clones of a simulated store) model several nodes.
pub async fn run_exact_increments(
    stores: &[Arc<dyn KvStore>],
    tasks_per_store: u32,
    increments: u32,
) {
    const COUNTER: &[u8] = b"counter";
    let policy = RetryPolicy {
        max_attempts: 1000,
        initial_backoff: Duration::from_micros(50),
        max_backoff: Duration::from_millis(5),
    };
    let mut tasks = Vec::new();
    for (node, store) in stores.iter().enumerate() {
        for t in 0..tasks_per_store {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..increments {
                    let done = format!("done/{node}/{t}/{i}").into_bytes();
                    retry::run(store.as_ref(), policy, |mut txn, _attempt| {
                        let done = done.clone();
                        async move {
                            if txn.get(&done).await?.is_some() {
                                // An earlier attempt committed after all.
                                return Ok::<_, StorageError>((txn, ()));
                            }
                            let n = decode_counter(txn.get(COUNTER).await?.as_deref());
                            txn.set(COUNTER, &(n + 1).to_le_bytes());
                            txn.set(&done, b"");
                            Ok((txn, ()))
                        }
                    })
                    .await
                    .expect("increment commits within the retry budget");
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("increment task");
    }
    let total = i64::from(tasks_per_store * increments) * stores.len() as i64;
    let store = stores[0].as_ref();
    assert_eq!(
        counter(store, COUNTER).await,
        total,
        "every increment counted exactly once"
    );
    let done = range(
        store,
        &KeyRange::prefix(b"done/"),
        ReadOptions::limit(usize::MAX),
    )
    .await;
    assert_eq!(done.len() as i64, total);
}

/// After a crash (the store dropped without shutdown) and a reopen, every acknowledged
/// commit is there. Not applicable (returns at once) unless the backend is `reopenable`
/// and `durable`: in-memory stores lose everything by design.
pub async fn acknowledged_commits_survive_crash_and_reopen(factory: &dyn StoreFactory) {
    let Fixture { store, location } = fresh(factory);
    let caps = store.capabilities();
    if !(caps.reopenable && caps.durable) {
        return;
    }
    const N: u32 = 64;
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut txn = store.begin().await.expect("begin");
                txn.set(&i.to_be_bytes(), &i.to_le_bytes());
                txn.atomic_add(b"count", 1);
                txn.commit().await.expect("commit")
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    drop(store); // the crash: no shutdown, no flush
    let store = factory.reopen(&location).expect("reopen after crash");
    let store = store.as_ref();
    for i in 0..N {
        assert_eq!(
            get(store, &i.to_be_bytes()).await,
            Some(i.to_le_bytes().to_vec()),
            "commit {i} lost"
        );
    }
    assert_eq!(counter(store, b"count").await, i64::from(N));
}

/// A transaction that relaxed its durability is still a transaction: visible to later
/// ones once committed, in commit order, conflicting like any other; and (for `durable`,
/// `reopenable` stores) it survives a crash of the process, here a drop without
/// shutdown, whether or not a synced commit followed it.
pub async fn relaxed_commits_are_ordered_visible_and_survive_a_process_crash(
    factory: &dyn StoreFactory,
) {
    let Fixture { store, location } = fresh(factory);
    let relaxed_put = |key: &'static [u8], value: &'static [u8]| {
        let store = store.clone();
        async move {
            let mut txn = store.begin().await.expect("begin");
            txn.relax_durability();
            txn.set(key, value);
            txn.commit().await.expect("relaxed commit")
        }
    };
    let first = relaxed_put(b"relaxed-1", b"a").await;
    put(store.as_ref(), &[(b"synced", b"b")]).await;
    let last = relaxed_put(b"relaxed-2", b"c").await;
    assert!(
        last.version > first.version,
        "relaxed commits take versions in order"
    );
    assert_eq!(get(store.as_ref(), b"relaxed-2").await, Some(b"c".to_vec()));

    // A relaxed write to a key another transaction read makes that one conflict.
    let mut reader = begin(store.as_ref()).await;
    assert!(reader.get(b"relaxed-1").await.expect("get").is_some());
    reader.set(b"out", b"stale");
    relaxed_put(b"relaxed-1", b"a2").await;
    assert_conflict(reader.commit().await, "relaxed write to a read key");

    let caps = store.capabilities();
    if !(caps.reopenable && caps.durable) {
        return;
    }
    drop(store); // the crash: no shutdown, no flush
    let store = factory.reopen(&location).expect("reopen after crash");
    let store = store.as_ref();
    assert_eq!(get(store, b"relaxed-1").await, Some(b"a2".to_vec()));
    assert_eq!(get(store, b"synced").await, Some(b"b".to_vec()));
    assert_eq!(get(store, b"relaxed-2").await, Some(b"c".to_vec()));
}

/// Commit versions keep increasing across a reopen. Not applicable (returns at once)
/// unless the backend is `reopenable`.
pub async fn versions_stay_monotonic_across_reopen(factory: &dyn StoreFactory) {
    let Fixture { store, location } = fresh(factory);
    if !store.capabilities().reopenable {
        return;
    }
    let mut last = 0;
    for i in 0..5u8 {
        last = put(store.as_ref(), &[(&[i][..], b"v")]).await.version;
    }
    drop(store);
    let store = factory.reopen(&location).expect("reopen");
    let txn = begin(store.as_ref()).await;
    assert!(
        txn.read_version() >= last,
        "read version {} after reopen, before: {last}",
        txn.read_version()
    );
    drop(txn);
    let next = put(store.as_ref(), &[(b"after", b"reopen")]).await;
    assert!(
        next.version > last,
        "version {} after reopen, before: {last}",
        next.version
    );
    store.shutdown().await.expect("clean shutdown");
    drop(store);
    let store = factory
        .reopen(&location)
        .expect("reopen after clean shutdown");
    let after = put(store.as_ref(), &[(b"again", b"v")]).await;
    assert!(after.version > next.version);
}

/// After `shutdown`, no transaction commits: `begin` or `commit` fails with
/// `Unavailable`, and committed data stays readable after a reopen where supported.
pub async fn shutdown_rejects_later_transactions(factory: &dyn StoreFactory) {
    let Fixture { store, location } = fresh(factory);
    put(store.as_ref(), &[(b"k", b"v")]).await;
    store.shutdown().await.expect("shutdown");
    match store.begin().await {
        Err(StorageError::Unavailable(_)) => {}
        Err(e) => panic!("begin after shutdown: expected Unavailable, got {e:?}"),
        Ok(mut txn) => {
            txn.set(b"late", b"v");
            match txn.commit().await {
                Err(StorageError::Unavailable(_)) => {}
                other => panic!("commit after shutdown: expected Unavailable, got {other:?}"),
            }
        }
    }
    if store.capabilities().reopenable {
        drop(store);
        let store = factory.reopen(&location).expect("reopen");
        assert_eq!(get(store.as_ref(), b"k").await.as_deref(), Some(&b"v"[..]));
        assert_eq!(get(store.as_ref(), b"late").await, None);
    }
}
