//! Range reads and clears: order, limits, prefixes, buffered writes.

use std::ops::Bound;

use keel_storage::{KeyRange, ReadOptions};

use crate::StoreFactory;

use super::{all, begin, keys, kv, put, range, store_of};

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
