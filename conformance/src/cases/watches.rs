//! Watches: committed writes, changes since a version, range clears.

use keel_storage::KeyRange;

use crate::StoreFactory;

use super::{begin, put, store_of, WATCH_DEADLINE};

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
