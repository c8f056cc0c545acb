//! Limits: entries up to the limits pass, larger ones are refused, split values round trip.

use keel_storage::{KeyRange, ReadOptions, MAX_KEY_BYTES, MAX_TXN_BYTES, MAX_VALUE_BYTES};

use crate::StoreFactory;

use super::{assert_limit, begin, get, put, range, store_of};

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
/// Not applicable (returns at once) unless the store declares
/// [`EnforcedLimits::key_and_value_sizes`](keel_storage::EnforcedLimits).
pub async fn oversized_key_or_value_is_rejected(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    if !store.capabilities().limits.key_and_value_sizes {
        return;
    }
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
/// nothing. Not applicable (returns at once) unless the store declares
/// [`EnforcedLimits::transaction_bytes`](keel_storage::EnforcedLimits).
pub async fn oversized_transaction_is_rejected(factory: &dyn StoreFactory) {
    let store = store_of(factory);
    if !store.capabilities().limits.transaction_bytes {
        return;
    }
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
