//! External payload storage over the in-memory store, a manual clock and a temporary blob
//! directory: durable uploads, verified fetches, retention removing a closed run's blobs
//! (never one an open run still references), storage pressure admitting only completions.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use keel_engine::clock::ManualClock;
use keel_engine::namespaces::NamespacePatch;
use keel_engine::payloads::{CompletionContext, PayloadRecord, PayloadStores, Upload};
use keel_engine::storage::memory::MemoryStore;
use keel_engine::{Engine, EngineConfig};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::*;

async fn engine_with(dir: &std::path::Path, reserve_bytes: u64) -> (Engine, ManualClock) {
    let store = MemoryStore::new();
    let clock = ManualClock::new(START);
    let config = EngineConfig {
        workflow_task_lease: Duration::from_secs(60),
        activity_task_lease: Duration::from_secs(60),
        payloads: PayloadStores {
            local_dir: Some(dir.to_path_buf()),
            reserve_bytes,
            ..Default::default()
        },
        ..EngineConfig::default()
    };
    let engine = open_with_config(Arc::new(store), &clock, config, &[]).await;
    engine
        .set_external_storage(
            NS,
            json!({"driver": "local", "enabled": true, "threshold_bytes": 16, "config": {}}),
        )
        .await
        .expect("policy set");
    (engine, clock)
}

fn upload(bytes: &[u8]) -> Upload {
    Upload {
        codec: "avro".into(),
        declared_size: bytes.len() as u64,
        declared_sha256: Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        bytes: bytes.to_vec(),
        completion: None,
    }
}

fn envelope(r: &PayloadRecord) -> Value {
    json!({"codec": "avro", "external_payload": r.reference_json()})
}

fn reason(e: keel_engine::Error) -> &'static str {
    support::reason(e)
}

#[tokio::test]
async fn an_upload_is_durable_and_a_changed_blob_fails_its_fetch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, _) = engine_with(dir.path(), 0).await;
    let record = engine
        .upload_payload(NS, upload(b"wwHioz3/VYAiNwwCCgp3b3JsZAA="))
        .await
        .expect("upload");
    assert!(record.reference_id.starts_with("ep_") && record.reference_id.len() == 29);
    let path = dir.path().join(&record.reference_id);
    assert_eq!(
        std::fs::read(&path).expect("blob on disk"),
        b"wwHioz3/VYAiNwwCCgp3b3JsZAA="
    );
    let (_, bytes) = engine
        .fetch_payload(NS, &record.reference_id)
        .await
        .expect("fetch");
    assert_eq!(bytes, b"wwHioz3/VYAiNwwCCgp3b3JsZAA=");

    std::fs::write(&path, b"wwHioz3/VYAiNwwCCgp3b3JsZAB=").expect("tamper");
    let e = engine
        .fetch_payload(NS, &record.reference_id)
        .await
        .expect_err("a changed blob is refused");
    assert_eq!(reason(e), "external_payload_integrity_mismatch");

    let mut lying = upload(b"abc");
    lying.declared_size = 4;
    let e = engine
        .upload_payload(NS, lying)
        .await
        .expect_err("size lie");
    assert_eq!(reason(e), "external_payload_integrity_mismatch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_a_closed_runs_blobs_but_not_one_an_open_run_references() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, clock) = engine_with(dir.path(), 0).await;
    let shared = engine
        .upload_payload(NS, upload(b"shared-input-blob"))
        .await
        .expect("upload");
    let result = engine
        .upload_payload(NS, upload(b"result-blob-of-run-one"))
        .await
        .expect("upload");

    let mut first = start("closes", "t");
    first.input = envelope(&shared);
    let first = engine.start_workflow(NS, first).await.expect("start");
    let task = poll_wf(&engine).await.expect("workflow task");
    complete(
        &engine,
        &task,
        vec![json!({"type": "complete_workflow", "result": envelope(&result)})],
    )
    .await;
    let mut second = start("stays-open", "t");
    second.input = envelope(&shared);
    engine.start_workflow(NS, second).await.expect("start");

    engine
        .update_namespace(
            NS,
            NamespacePatch {
                retention_days: Some(1),
                ..Default::default()
            },
        )
        .await
        .expect("retention");
    clock.advance(Duration::from_secs(2 * 86_400));
    let out = engine
        .retention_pass(NS, 10, None)
        .await
        .expect("retention pass");
    assert_eq!(out.run_ids, vec![first.run.run_id.clone()]);
    assert_eq!(out.deleted_payloads, 1);

    let e = engine
        .fetch_payload(NS, &result.reference_id)
        .await
        .expect_err("the closed run's result is gone");
    assert_eq!(reason(e), "external_payload_not_found");
    assert!(!dir.path().join(&result.reference_id).exists());
    // The input is still referenced by the open run.
    engine
        .fetch_payload(NS, &shared.reference_id)
        .await
        .expect("a blob an open run references stays");
    assert!(dir.path().join(&shared.reference_id).exists());
}

#[tokio::test]
async fn under_storage_pressure_only_an_upload_completing_a_leased_task_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, _) = engine_with(dir.path(), u64::MAX / 2).await;
    let e = engine
        .upload_payload(NS, upload(b"new-work-input"))
        .await
        .expect_err("no completion context");
    assert_eq!(reason(e), "storage_pressure");

    engine
        .start_workflow(NS, start("under-pressure", "t"))
        .await
        .expect("start");
    let task = poll_wf(&engine).await.expect("workflow task");
    let mut stranger = upload(b"result");
    stranger.completion = CompletionContext::parse(
        &json!({"schema": "durable-workflow.v2.payload-completion-context.v1", "kind": "workflow",
                "task_id": task.task_id, "attempt": task.workflow_task_attempt,
                "lease_owner": "someone-else", "operation": "complete"})
        .to_string(),
    );
    let e = engine
        .upload_payload(NS, stranger)
        .await
        .expect_err("not the lease holder");
    assert_eq!(reason(e), "storage_pressure");

    let mut completing = upload(b"result");
    completing.completion = CompletionContext::parse(
        &json!({"schema": "durable-workflow.v2.payload-completion-context.v1", "kind": "workflow",
                "task_id": task.task_id, "attempt": task.workflow_task_attempt,
                "lease_owner": WORKER, "operation": "complete", "slot": ["commands", 0, "result"]})
        .to_string(),
    );
    engine
        .upload_payload(NS, completing)
        .await
        .expect("the completion's upload passes");
}

#[tokio::test]
async fn the_operator_recovery_purge_releases_the_purged_runs_blobs() {
    use keel_engine::operator::{Actor, RecoverRequest};
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, _) = engine_with(dir.path(), 0).await;
    let input = engine
        .upload_payload(NS, upload(b"input-of-a-failed-run"))
        .await
        .expect("upload");
    let mut req = start("stuck", "Checkout");
    req.input = envelope(&input);
    engine.start_workflow(NS, req).await.expect("start");
    let task = poll_wf(&engine).await.expect("workflow task");
    complete(
        &engine,
        &task,
        vec![json!({"type": "fail_workflow", "message": "gave up"})],
    )
    .await;
    let outcome = engine
        .recover_stuck_workflow(
            NS,
            &RecoverRequest {
                service_name: "Checkout".into(),
                service_key: "stuck".into(),
            },
            &Actor {
                principal: "ops".into(),
                roles: vec!["operator".into()],
            },
        )
        .await
        .expect("recovered");
    assert_eq!(outcome.purged.len(), 1);
    let e = engine
        .fetch_payload(NS, &input.reference_id)
        .await
        .expect_err("released with the purged run");
    assert_eq!(reason(e), "external_payload_not_found");
    assert!(!dir.path().join(&input.reference_id).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_payload_survives_retention_of_the_runs_that_used_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, clock) = engine_with(dir.path(), 0).await;
    let input = engine
        .upload_payload(NS, upload(b"a-schedules-action-input"))
        .await
        .expect("upload");
    engine
        .pin_payload_references(
            NS,
            &json!({"action": {"input": envelope(&input)}}),
            "schedule",
        )
        .await
        .expect("pinned");
    let mut req = start("fired", "t");
    req.input = envelope(&input);
    engine.start_workflow(NS, req).await.expect("start");
    let task = poll_wf(&engine).await.expect("workflow task");
    complete_with_result(&engine, &task).await;
    engine
        .update_namespace(
            NS,
            NamespacePatch {
                retention_days: Some(1),
                ..Default::default()
            },
        )
        .await
        .expect("retention");
    clock.advance(Duration::from_secs(2 * 86_400));
    let out = engine.retention_pass(NS, 10, None).await.expect("pass");
    assert_eq!((out.deleted_runs, out.deleted_payloads), (1, 0));
    engine
        .fetch_payload(NS, &input.reference_id)
        .await
        .expect("the pinned payload stays");
}
