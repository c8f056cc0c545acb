//! Stored records in their compact form (`tables::encode`: a version byte, then
//! MessagePack with fields by name): every record a workflow's life writes decodes into
//! its type and encodes back to the same bytes, and the JSON form records had before the
//! compact one still reads as the same record.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use keel_engine::keys::prefix;
use keel_engine::model::{
    CommandReceipt, InstanceRecord, NamespaceRecord, RunRecord, TaskRecord, TimerAction,
    UpdateRecord, WorkerRecord,
};
use keel_engine::storage::{KeyRange, KvStore, ReadOptions};
use keel_engine::tables::{self, COMPACT_V1};
use keel_engine::workflow::{SignalRequest, StartWorkflow, UpdateRequest, UpdateWait};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use support::*;

/// Checks one stored record (table name, bytes); returns whether it was compact.
type Check = fn(&str, &[u8]) -> bool;

/// Checks one stored record of type `T`; returns whether it was in the compact form.
fn round_trips<T: Serialize + DeserializeOwned>(table: &str, bytes: &[u8]) -> bool {
    let record: T = tables::decode_record(bytes)
        .unwrap_or_else(|e| panic!("a {table} record does not decode: {e:?}"));
    let compact = tables::encode(&record).expect("encodes");
    if bytes[0] == COMPACT_V1 {
        assert_eq!(compact, bytes, "a {table} record encodes back to its bytes");
    }
    // The JSON form (records written before the compact one) reads as the same record.
    let json = serde_json::to_vec(&record).expect("json");
    let from_json: T = tables::decode_record(&json).expect("the JSON form decodes");
    assert_eq!(
        tables::encode(&from_json).expect("encodes"),
        compact,
        "a {table} record read from JSON"
    );
    bytes[0] == COMPACT_V1
}

#[tokio::test]
async fn every_record_of_a_workflows_life_round_trips_in_the_compact_form_and_from_json() {
    let h = harness(Duration::from_secs(60), &[]).await;
    let e = &h.engine;
    e.start_workflow(
        NS,
        StartWorkflow {
            workflow_id: Some("codec".into()),
            execution_timeout_seconds: Some(3600),
            memo: json!({"note": "ü ☃ \"quoted\"", "n": 1.5, "big": u64::MAX})
                .as_object()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            ..start("codec", "t")
        },
    )
    .await
    .expect("start");
    let signal = SignalRequest {
        workflow_id: "codec".into(),
        run_id: None,
        signal_name: "poke".into(),
        input: json!({"codec": "avro", "blob": ARGS}),
        request_id: Some("req-1".into()),
    };
    e.signal_workflow(NS, &signal).await.expect("signal");
    let task = poll_wf(e).await.expect("workflow task");
    let schedule = json!({"type": "schedule_activity", "activity_type": "a",
        "arguments": {"codec": "avro", "blob": ARGS}, "queue": QUEUE});
    complete(e, &task, vec![schedule]).await;
    let activity = poll_act(e).await.expect("activity task");
    e.update_workflow(
        NS,
        &UpdateRequest {
            workflow_id: "codec".into(),
            run_id: None,
            update_name: "bump".into(),
            input: json!({"codec": "avro", "blob": ARGS}),
            request_id: None,
            wait_for: UpdateWait::Accepted,
            wait_timeout: Duration::from_secs(5),
        },
    )
    .await
    .expect("update accepted");

    let store: Arc<dyn KvStore> = Arc::new(h.store.clone());
    let mut txn = store.begin().await.expect("begin");
    let checks: [(u8, &str, Check); 8] = [
        (
            prefix::NAMESPACE,
            "namespace",
            round_trips::<NamespaceRecord>,
        ),
        (prefix::INSTANCE, "instance", round_trips::<InstanceRecord>),
        (prefix::RUN, "run", round_trips::<RunRecord>),
        (prefix::TASK, "task", round_trips::<TaskRecord>),
        (prefix::TIMER, "timer", round_trips::<TimerAction>),
        (prefix::WORKER, "worker", round_trips::<WorkerRecord>),
        (prefix::UPDATE, "update", round_trips::<UpdateRecord>),
        (
            prefix::COMMAND_RECEIPT,
            "receipt",
            round_trips::<CommandReceipt>,
        ),
    ];
    for (table, name, check) in checks {
        let pairs = txn
            .get_range(
                &KeyRange::prefix(&[table]),
                ReadOptions::limit(10_000).snapshot(),
            )
            .await
            .expect("scan");
        let (records, cut) = tables::assemble(pairs).expect("records assemble");
        assert!(!cut);
        let compact = records
            .iter()
            .filter(|(_, bytes)| check(name, bytes))
            .count();
        assert!(compact > 0, "no compact {name} record was written");
    }
    // History stays the JSON the SDK replays, served as it is.
    let history = txn
        .get_range(
            &KeyRange::prefix(&[prefix::HISTORY]),
            ReadOptions::limit(10_000).snapshot(),
        )
        .await
        .expect("scan");
    let (events, _) = tables::assemble(history).expect("events assemble");
    assert!(!events.is_empty());
    for (_, bytes) in &events {
        serde_json::from_slice::<Value>(bytes).expect("an event is JSON");
    }
    let run: RunRecord = tables::get(txn.as_mut(), &tables::run_key(NS, &task.run_id))
        .await
        .expect("read")
        .expect("the run");
    assert_eq!(run.memo.get("big"), Some(&json!(u64::MAX)));
    assert_eq!(run.memo.get("note"), Some(&json!("ü ☃ \"quoted\"")));
    let leased: TaskRecord = tables::get(txn.as_mut(), &tables::task_key(&activity.task_id))
        .await
        .expect("read")
        .expect("the activity task");
    assert_eq!(leased.activity.expect("activity").arguments["blob"], ARGS);
}

#[test]
fn a_record_is_smaller_in_the_compact_form_and_garbage_is_an_error_not_a_panic() {
    let record = json!({"namespace": "default", "workflow_id": "wf", "run_id": "r",
        "run_number": 1, "workflow_type": "t", "task_queue": "q", "status": "running",
        "priority": 5, "started_at_ms": 1, "last_progress_at_ms": 1, "last_event_seq": 1,
        "last_workflow_sequence": 0});
    let run: RunRecord = serde_json::from_value(record).expect("a run");
    let compact = tables::encode(&run).expect("encodes");
    assert!(compact.len() < serde_json::to_vec(&run).expect("json").len());
    for garbage in [
        &[COMPACT_V1][..],
        &[COMPACT_V1, 0xFF, 0x00],
        b"{\"namespace\"",
        b"",
    ] {
        assert!(tables::decode_record::<RunRecord>(garbage).is_err());
    }
}

#[test]
fn a_record_with_flattened_fields_round_trips() {
    // `#[serde(flatten)]` serializes as a map of unknown length, which MessagePack
    // encoders must buffer.
    let record: keel_engine::services::OperationRecord = serde_json::from_value(json!({
        "id": "op-1", "namespace": "default", "endpoint_id": "e-1", "endpoint_name": "billing",
        "service_id": "s-1", "service_name": "invoices", "operation_name": "charge",
        "description": "Charges a card", "operation_mode": "sync",
        "handler_binding_kind": "workflow", "handler_target_reference": "billing.charge",
        "handler_binding": null, "deadline_policy": {"seconds": 30},
        "idempotency_policy": null, "cancellation_policy": null, "retry_policy": null,
        "boundary_policy": null, "metadata": {"owner": "payments", "weight": 0.5},
        "created_at_ms": 1, "updated_at_ms": 2
    }))
    .expect("an operation record");
    let bytes = tables::encode(&record).expect("encodes");
    assert_eq!(bytes[0], COMPACT_V1);
    let back: keel_engine::services::OperationRecord =
        tables::decode_record(&bytes).expect("decodes");
    assert_eq!(back, record);
}
