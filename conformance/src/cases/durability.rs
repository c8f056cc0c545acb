//! Retries and durability: exact increments through the retry runner, crash and reopen, relaxed commits, monotonic versions, shutdown.

use std::sync::Arc;
use std::time::Duration;

use keel_storage::retry::{self, RetryPolicy};
use keel_storage::{decode_counter, KeyRange, KvStore, ReadOptions, StorageError};

use crate::{Fixture, StoreFactory};

use super::{assert_conflict, begin, counter, fresh, get, put, store_of};

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
    // Read back through the retry runner too: the handle may be injecting faults.
    let (count, done) = retry::run(stores[0].as_ref(), policy, |mut txn, _attempt| async move {
        let count = decode_counter(txn.get(COUNTER).await?.as_deref());
        let done = txn
            .get_range(&KeyRange::prefix(b"done/"), ReadOptions::limit(usize::MAX))
            .await?
            .len();
        Ok::<_, StorageError>((txn, (count, done)))
    })
    .await
    .expect("the counter reads within the retry budget");
    assert_eq!(count, total, "every increment counted exactly once");
    assert_eq!(done as i64, total);
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
