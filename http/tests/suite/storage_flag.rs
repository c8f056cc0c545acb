//! `keel serve --storage ...` as an operator meets it: the real binary, its exit status
//! and its messages, and a memory-backed server naming its backend.

use std::process::{Command, Output};

use crate::process::{get, serve};

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("serve")
        .args(args)
        .env_remove("KEEL_TOKENS")
        .output()
        .expect("keel runs")
}

fn refused_with(args: &[&str]) -> String {
    let out = keel(args);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn memory_storage_on_a_public_address_exits_2() {
    let stderr = refused_with(&["--storage", "memory", "--listen", "0.0.0.0:0"]);
    assert!(stderr.contains("not durable"), "{stderr}");
}

#[test]
fn unknown_storage_exits_2_naming_the_accepted_forms() {
    let stderr = refused_with(&["--storage", "s3:bucket"]);
    assert!(
        stderr.contains("rocksdb:PATH, fdb[:CLUSTER_FILE] or memory"),
        "{stderr}"
    );
}

#[cfg(not(feature = "fdb"))]
#[test]
fn fdb_storage_without_the_feature_exits_2_with_one_line() {
    let stderr = refused_with(&["--storage", "fdb"]);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--features fdb"), "{stderr}");
    assert!(stderr.contains("libfdb_c"), "{stderr}");
}

#[test]
fn memory_storage_warns_and_names_its_backend() {
    let (_server, port, log) = serve(&["--storage", "memory"]);
    assert!(
        log.iter().any(|l| l.contains("NOT DURABLE")),
        "no durability warning in {log:#?}"
    );
    let ready = get(port, "/api/ready");
    assert!(ready.contains(r#""backend":"memory""#), "{ready}");
    assert!(ready.contains(r#""durable":false"#), "{ready}");
    let info = get(port, "/api/cluster/info");
    assert!(
        info.contains(r#""storage":{"backend":"memory","durable":false,"multi_node":false}"#),
        "{info}"
    );
    let metrics = get(port, "/metrics");
    assert!(
        metrics.contains(
            r#"keel_storage_backend_info{backend="memory",durable="false",multi_node="false"} 1"#
        ),
        "{metrics}"
    );
}

#[test]
fn rocksdb_metrics_report_its_memory_within_the_configured_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = format!("rocksdb:{}", dir.path().join("store").display());
    let (_server, port, _log) = serve(&["--storage", &storage, "--rocksdb-cache-mb", "8"]);
    let metrics = get(port, "/metrics");
    assert!(
        metrics.contains("keel_storage_block_cache_capacity_bytes 8388608"),
        "{metrics}"
    );
    for kind in ["memtables", "table_readers", "block_cache"] {
        assert!(
            metrics.contains(&format!("keel_storage_memory_bytes{{kind=\"{kind}\"}} ")),
            "no {kind} in {metrics}"
        );
    }
}
