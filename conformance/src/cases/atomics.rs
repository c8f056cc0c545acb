//! Atomic adds: accumulation, clears, no conflicts between adders.

use keel_storage::KeyRange;

use crate::StoreFactory;

use super::{begin, counter, get, put, store_of};

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
