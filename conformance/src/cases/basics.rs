//! Reads and writes: round trips, read-your-writes, visibility at commit, dropped transactions.

use keel_storage::{decode_counter, KeyRange};

use crate::StoreFactory;

use super::{begin, counter, get, put, store_of};

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

/// A key created and withdrawn in one transaction reads absent, inside it and after its
/// commit, and the transaction's other writes commit.
pub async fn withdrawn_key_is_absent(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    let store = store.as_ref();
    let mut txn = begin(store).await;
    txn.set(b"index-entry", b"v");
    txn.set(b"record", b"r");
    txn.withdraw(b"index-entry");
    assert_eq!(txn.get(b"index-entry").await.expect("get"), None, "inside");
    txn.set(b"set-cleared-withdrawn", b"v");
    txn.clear(b"set-cleared-withdrawn");
    txn.withdraw(b"set-cleared-withdrawn");
    txn.commit().await.expect("commit");
    assert_eq!(get(store, b"index-entry").await, None, "after commit");
    assert_eq!(get(store, b"set-cleared-withdrawn").await, None);
    assert_eq!(get(store, b"record").await.as_deref(), Some(&b"r"[..]));
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
