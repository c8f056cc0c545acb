//! Optimistic concurrency: which overlaps conflict, snapshot and blind writes, consistency, versions.

use keel_storage::{KeyRange, ReadOptions, Version};

use crate::StoreFactory;

use super::{all, assert_conflict, begin, get, keys, put, store_of};

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
