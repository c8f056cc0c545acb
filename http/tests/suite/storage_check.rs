//! `keel storage check` on the real binary: an offline look at a RocksDB store the engine
//! wrote, a missing directory and a directory held by another process.

use std::process::{Command, Output};
use std::sync::Arc;

use keel_engine::clock::{Clock, SystemClock};
use keel_engine::storage::KvStore;
use keel_engine::workflow::StartWorkflow;
use keel_engine::{Engine, EngineConfig};
use keel_storage_rocksdb::{RocksOptions, RocksStore};
use serde_json::{json, Value};

fn check(dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["storage", "check", "--output", "json", "--data-dir"])
        .arg(dir)
        .output()
        .expect("keel runs")
}

async fn store_with_workflows(dir: &std::path::Path, n: usize) -> Arc<RocksStore> {
    let store = Arc::new(RocksStore::open(dir, RocksOptions::default()).expect("open"));
    let engine = Engine::open(
        store.clone() as Arc<dyn KvStore>,
        Arc::new(SystemClock) as Arc<dyn Clock>,
        EngineConfig::default(),
    )
    .await
    .expect("engine");
    for i in 0..n {
        let start = StartWorkflow {
            workflow_id: Some(format!("check-{i}")),
            ..StartWorkflow::new("wf", "q", json!({"codec": "avro", "blob": "AA=="}))
        };
        engine
            .start_workflow("default", start)
            .await
            .expect("start");
    }
    engine.stop().await;
    store
}

#[tokio::test]
async fn check_reports_the_schema_version_and_the_runs_of_a_stopped_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with_workflows(dir.path(), 3).await;
    store.shutdown().await.expect("shutdown");
    drop(store);

    let out = check(dir.path());
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["schema_ok"], true, "{report}");
    let keys_of = |table: &str| {
        report["tables"]
            .as_array()
            .expect("tables")
            .iter()
            .find(|t| t["table"] == table)
            .map_or(0, |t| t["keys"].as_u64().expect("keys"))
    };
    assert_eq!(keys_of("run"), 3, "{report}");
    assert_eq!(keys_of("instance"), 3, "{report}");
    assert!(report["size_on_disk_bytes"].as_u64() > Some(0), "{report}");
}

#[tokio::test]
async fn check_of_a_store_in_use_or_missing_exits_1_with_the_reason() {
    let missing = tempfile::tempdir().expect("tempdir").path().join("absent");
    let out = check(&missing);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    assert!(!missing.exists(), "the check never creates a store");

    let dir = tempfile::tempdir().expect("tempdir");
    let held = store_with_workflows(dir.path(), 1).await;
    let out = check(dir.path());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lock"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(held);
}
