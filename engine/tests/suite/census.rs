//! `census::count`: the offline picture `keel storage check` prints.

use crate::support;

use std::time::Duration;

use keel_engine::census;
use keel_engine::namespaces::SCHEMA_VERSION;
use support::*;

#[tokio::test]
async fn the_census_counts_what_the_engine_wrote_table_by_table() {
    let h = harness(Duration::from_secs(60), &[]).await;
    let before = census::count(&h.store).await.expect("census");
    assert_eq!(before.schema_version, Some(SCHEMA_VERSION));
    assert_eq!(before.keys_of("run"), 0);

    // More runs than one page of the census, so its paging is crossed.
    for i in 0..1_200 {
        h.engine
            .start_workflow(NS, start(&format!("census-{i}"), "wf"))
            .await
            .expect("start");
    }
    let after = census::count(&h.store).await.expect("census");
    assert_eq!(after.keys_of("run"), 1_200);
    assert_eq!(after.keys_of("instance"), 1_200);
    assert!(after.keys_of("history") >= 1_200, "{after:?}");
    assert!(after.keys_of("task") >= 1_200, "{after:?}");
    assert!(after.total_bytes() > before.total_bytes());
    assert!(
        after.tables.iter().all(|t| t.table != "unknown"),
        "{after:?}"
    );
    assert_eq!(
        after.total_keys(),
        after.tables.iter().map(|t| t.keys).sum::<u64>()
    );
}

#[tokio::test]
async fn an_empty_store_has_no_schema_version_and_no_tables() {
    let store = keel_engine::storage::memory::MemoryStore::new();
    let empty = census::count(&store).await.expect("census");
    assert_eq!(empty.schema_version, None);
    assert!(empty.tables.is_empty());
}
