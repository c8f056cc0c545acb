//! `transfer::export` / `transfer::import`: a store's workflows copied through an export
//! file into a fresh store read back the same through the Engine API, and go on running
//! there (the pending timer fires, the ready tasks are taken and completed); a damaged
//! file, a schema mismatch and a target that holds the namespace are refused.

use crate::support;

use std::time::Duration;

use keel_engine::census;
use keel_engine::clock::ManualClock;
use keel_engine::keys::{prefix, Key};
use keel_engine::namespaces::{NamespaceSpec, SCHEMA_VERSION};
use keel_engine::storage::memory::MemoryStore;
use keel_engine::storage::KvStore;
use keel_engine::tables;
use keel_engine::transfer::{self, ExportRequest, TransferError, IMPORT_MARKER_KEY};
use keel_engine::workflow::{CloseCommand, ListQuery};
use keel_engine::Engine;
use serde_json::{json, Value};
use support::*;

const LEASE: Duration = Duration::from_secs(60);
const IDS: [&str; 5] = ["done", "timer", "killed", "act", "ready"];

/// A source store holding, in `default`: a completed run, a running one waiting on a
/// 60 s timer, a terminated one, a running one with a ready activity task, and one
/// whose first workflow task is ready; and a workflow in namespace `other`.
async fn populated() -> Harness {
    let h = harness(LEASE, &[]).await;
    let e = &h.engine;
    e.start_workflow(NS, start("done", "wf"))
        .await
        .expect("start");
    let t = poll_wf(e).await.expect("task");
    complete(
        e,
        &t,
        vec![json!({"type": "complete_workflow", "result": {"codec": "avro", "blob": "Ag=="}})],
    )
    .await;
    e.start_workflow(NS, start("timer", "wf"))
        .await
        .expect("start");
    let t = poll_wf(e).await.expect("task");
    complete(
        e,
        &t,
        vec![json!({"type": "start_timer", "delay_seconds": 60})],
    )
    .await;
    e.start_workflow(NS, start("killed", "wf"))
        .await
        .expect("start");
    e.close_workflow(NS, "killed", None, CloseCommand::Terminate, Some("test"))
        .await
        .expect("terminate");
    e.start_workflow(NS, start("act", "wf"))
        .await
        .expect("start");
    let t = poll_wf(e).await.expect("task");
    complete(
        e,
        &t,
        vec![json!({"type": "schedule_activity", "activity_type": "act",
                    "arguments": {"codec": "avro", "blob": ARGS}, "queue": QUEUE})],
    )
    .await;
    e.start_workflow(NS, start("ready", "wf"))
        .await
        .expect("start");
    e.create_namespace(NamespaceSpec {
        name: "other".into(),
        description: None,
        retention_days: 7,
        metadata: json!({}),
    })
    .await
    .expect("namespace");
    e.start_workflow("other", start("elsewhere", "wf"))
        .await
        .expect("start");
    h
}

async fn export_of(store: &MemoryStore, namespaces: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    transfer::export(
        store,
        &ExportRequest {
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            source: "memory:test".into(),
            now_ms: START,
        },
        &mut out,
    )
    .await
    .expect("export");
    out
}

async fn import_into(
    store: &MemoryStore,
    file: &[u8],
) -> Result<transfer::ImportSummary, TransferError> {
    let verified = transfer::verify(&mut &file[..])?;
    transfer::import(store, &mut &file[..], &verified).await
}

/// What the API shows of a workflow: its description and its whole history.
async fn picture(engine: &Engine, id: &str) -> (Value, Vec<Value>) {
    let view = engine.describe(NS, id, None).await.expect("describe");
    let page = engine
        .history(NS, id, &view.run.run_id, 0, 1000)
        .await
        .expect("history");
    let events = page
        .events
        .iter()
        .map(|e| serde_json::from_str(e.get()).expect("event json"))
        .collect();
    (
        json!({"run": serde_json::to_value(&view.run).expect("run json"), "runs": view.run_count}),
        events,
    )
}

async fn listing(engine: &Engine) -> (Vec<Value>, Option<u64>) {
    let page = engine
        .list_workflows(
            NS,
            &ListQuery {
                workflow_type: None,
                status_bucket: None,
                query: None,
                page_size: 100,
                page_token: None,
            },
        )
        .await
        .expect("list");
    (
        page.runs
            .iter()
            .map(|r| serde_json::to_value(r).expect("run json"))
            .collect(),
        page.workflow_count,
    )
}

#[tokio::test]
async fn a_namespace_imported_into_a_fresh_store_reads_back_the_same_and_runs_on() {
    let h = populated().await;
    let mut before = Vec::new();
    for id in IDS {
        before.push(picture(&h.engine, id).await);
    }
    let listed = listing(&h.engine).await;
    h.engine.stop().await;
    let file = export_of(&h.store, &[NS]).await;

    let target = MemoryStore::new();
    let summary = import_into(&target, &file).await.expect("import");
    assert_eq!(summary.header.namespaces, vec![NS.to_string()]);
    assert!(!summary.resumed);
    assert!(transfer::unfinished_import(&target)
        .await
        .expect("read")
        .is_none());

    let clock = ManualClock::new(START);
    let engine = open(&target, &clock, LEASE, &[]).await;
    for (id, want) in IDS.iter().zip(&before) {
        assert_eq!(&picture(&engine, id).await, want, "workflow {id}");
    }
    assert_eq!(listing(&engine).await, listed);
    assert!(
        !engine.namespace_exists("other").await.expect("read"),
        "only the namespace asked for is exported"
    );

    // The ready workflow task and the ready activity task are there to take.
    let task = poll_wf(&engine).await.expect("the ready workflow task");
    assert_eq!(task.workflow_id, "ready");
    complete(
        &engine,
        &task,
        vec![json!({"type": "complete_workflow", "result": {"codec": "avro", "blob": "Ag=="}})],
    )
    .await;
    let activity = poll_act(&engine).await.expect("the ready activity task");
    engine
        .complete_activity_task(
            NS,
            &activity.task_id,
            &activity.activity_attempt_id,
            WORKER,
            &json!({"codec": "avro", "blob": "Ag=="}),
        )
        .await
        .expect("activity completes");
    let task = wait_wf(&engine).await;
    assert_eq!(task.workflow_id, "act");
    assert!(event_types(&task).contains(&"ActivityCompleted".to_string()));
    complete(
        &engine,
        &task,
        vec![json!({"type": "complete_workflow", "result": {"codec": "avro", "blob": "Ag=="}})],
    )
    .await;
    // The pending timer fires at its time on the new store.
    assert!(poll_wf(&engine).await.is_none());
    clock.advance(Duration::from_secs(60));
    let task = wait_wf(&engine).await;
    assert_eq!(task.workflow_id, "timer");
    assert!(event_types(&task).contains(&"TimerFired".to_string()));
    engine.stop().await;
}

#[tokio::test]
async fn a_whole_store_export_copies_every_table_but_the_cluster_records() {
    let h = populated().await;
    h.engine.stop().await;
    let file = export_of(&h.store, &[]).await;
    let target = MemoryStore::new();
    let summary = import_into(&target, &file).await.expect("import");
    assert_eq!(summary.header.scope, "store");
    assert_eq!(summary.header.namespaces, vec!["default", "other"]);
    let without_cluster = |c: census::Census| {
        c.tables
            .into_iter()
            .filter(|t| t.table != "cluster")
            .collect::<Vec<_>>()
    };
    assert_eq!(
        without_cluster(census::count(&target).await.expect("census")),
        without_cluster(census::count(&h.store).await.expect("census"))
    );
    let engine = open(&target, &ManualClock::new(START), LEASE, &[]).await;
    assert_eq!(
        engine
            .describe("other", "elsewhere", None)
            .await
            .expect("describe")
            .run
            .workflow_id,
        "elsewhere"
    );
    engine.stop().await;
}

#[tokio::test]
async fn a_truncated_or_altered_file_is_refused_before_anything_is_written() {
    let h = populated().await;
    h.engine.stop().await;
    let file = export_of(&h.store, &[NS]).await;
    let text = String::from_utf8(file.clone()).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 10);

    let without_trailer = lines[..lines.len() - 1].join("\n") + "\n";
    let cut_mid_line = &file[..file.len() / 2];
    let mut flipped = lines.clone();
    let record: Value = serde_json::from_str(flipped[3]).expect("record line");
    let other = json!({"k": record["k"], "v": "AAAA"}).to_string();
    flipped[3] = &other;
    let altered = flipped.join("\n") + "\n";
    let mut missing = lines.clone();
    missing.remove(4);
    let missing = missing.join("\n") + "\n";

    for (what, bad) in [
        ("no trailer", without_trailer.as_bytes()),
        ("cut mid-line", cut_mid_line),
        ("a value changed", altered.as_bytes()),
        ("a record dropped", missing.as_bytes()),
        ("not an export", b"{\"hello\": 1}\n".as_slice()),
        ("empty", b"".as_slice()),
    ] {
        let target = MemoryStore::new();
        let err = import_into(&target, bad).await.expect_err(what);
        assert!(matches!(err, TransferError::Corrupt(_)), "{what}: {err:?}");
        let c = census::count(&target).await.expect("census");
        assert_eq!(c.total_keys(), 0, "{what}: nothing written");
    }
}

#[tokio::test]
async fn a_file_of_another_schema_version_is_refused() {
    let h = populated().await;
    h.engine.stop().await;
    let file = export_of(&h.store, &[NS]).await;
    let text = String::from_utf8(file).expect("utf-8");
    let (head, rest) = text.split_once('\n').expect("header line");
    let mut header: Value = serde_json::from_str(head).expect("header");
    assert_eq!(header["schema_version"], SCHEMA_VERSION);
    header["schema_version"] = json!(SCHEMA_VERSION + 1);
    let newer = format!("{header}\n{rest}");
    let err = import_into(&MemoryStore::new(), newer.as_bytes())
        .await
        .expect_err("refused");
    assert!(matches!(err, TransferError::Version(_)), "{err:?}");
    assert!(err.to_string().contains("schema version"), "{err}");

    // A target written by another schema version is refused as well.
    let target = MemoryStore::new();
    let mut txn = target.begin().await.expect("txn");
    tables::put(
        txn.as_mut(),
        &tables::meta_key("schema_version"),
        &(SCHEMA_VERSION + 1),
    )
    .expect("put");
    txn.commit().await.expect("commit");
    let err = import_into(&target, text.as_bytes())
        .await
        .expect_err("refused");
    assert!(matches!(err, TransferError::Version(_)), "{err:?}");
}

#[tokio::test]
async fn a_target_that_holds_the_namespace_is_refused_and_an_interrupted_import_is_finished_by_a_rerun(
) {
    let h = populated().await;
    h.engine.stop().await;
    let file = export_of(&h.store, &[NS]).await;

    // A store a server has opened holds `default` already: no merging.
    let served = MemoryStore::new();
    open(&served, &ManualClock::new(START), LEASE, &[])
        .await
        .stop()
        .await;
    let err = import_into(&served, &file).await.expect_err("refused");
    assert!(matches!(err, TransferError::Conflict(_)), "{err:?}");
    assert!(err.to_string().contains("'default'"), "{err}");

    // An import that stopped part way: its marker is there and some records are not.
    let target = MemoryStore::new();
    import_into(&target, &file).await.expect("import");
    let verified = transfer::verify(&mut &file[..]).expect("verify");
    let mut txn = target.begin().await.expect("txn");
    tables::put(
        txn.as_mut(),
        &tables::meta_key(IMPORT_MARKER_KEY),
        &json!({"sha256": verified.sha256, "namespaces": [NS], "source": "memory:test"}),
    )
    .expect("marker");
    txn.clear_range(&Key::new(prefix::RUN).range());
    txn.clear_range(&Key::new(prefix::TIMER).range());
    txn.commit().await.expect("commit");
    assert!(transfer::unfinished_import(&target)
        .await
        .expect("read")
        .is_some());

    // Another file is refused while it is unfinished; the same file finishes it.
    let other = export_of(&h.store, &["other"]).await;
    let err = import_into(&target, &other).await.expect_err("refused");
    assert!(matches!(err, TransferError::Conflict(_)), "{err:?}");
    let summary = import_into(&target, &file).await.expect("rerun");
    assert!(summary.resumed);
    assert!(transfer::unfinished_import(&target)
        .await
        .expect("read")
        .is_none());
    assert_eq!(
        census::count(&target).await.expect("census").keys_of("run"),
        census::count(&h.store)
            .await
            .expect("census")
            .keys_of("run")
            - 1,
        "every run of `default` is back (the source also holds `other`'s)"
    );
    // Now finished, the same file is refused like any other.
    let err = import_into(&target, &file).await.expect_err("refused");
    assert!(matches!(err, TransferError::Conflict(_)), "{err:?}");
}

#[tokio::test]
async fn a_namespace_absent_from_the_source_is_named_in_the_error() {
    let h = populated().await;
    h.engine.stop().await;
    let err = transfer::export(
        &h.store,
        &ExportRequest {
            namespaces: vec!["nope".into()],
            source: "memory:test".into(),
            now_ms: START,
        },
        &mut Vec::new(),
    )
    .await
    .expect_err("refused");
    assert!(matches!(err, TransferError::NotFound(_)), "{err:?}");
    assert!(err.to_string().contains("'nope'"), "{err}");
}

#[tokio::test]
async fn an_import_into_a_multi_node_store_recounts_the_queue_counters_a_single_node_source_lacks()
{
    use keel_engine::storage::simulated::{FaultConfig, SimulatedStore};
    use std::sync::Arc;

    let h = populated().await;
    let counts = h.engine.queue_counts(NS).await.expect("source counts");
    assert!(counts.iter().any(|c| c.ready > 0), "{counts:?}");
    h.engine.stop().await;
    let file = export_of(&h.store, &[NS]).await;

    let target = SimulatedStore::new(FaultConfig::none());
    let verified = transfer::verify(&mut &file[..]).expect("verify");
    transfer::import(&target, &mut &file[..], &verified)
        .await
        .expect("import");
    let engine = Engine::open(
        Arc::new(target.clone()) as Arc<dyn KvStore>,
        Arc::new(ManualClock::new(START)) as Arc<dyn keel_engine::clock::Clock>,
        keel_engine::EngineConfig::default(),
    )
    .await
    .expect("opens");
    let mut imported: Vec<_> = engine
        .queue_counts(NS)
        .await
        .expect("target counts")
        .into_iter()
        .filter(|c| c.ready + c.leased > 0)
        .collect();
    imported.sort_by_key(|c| (c.queue.clone(), c.kind.code()));
    let mut want: Vec<_> = counts
        .into_iter()
        .filter(|c| c.ready + c.leased > 0)
        .collect();
    want.sort_by_key(|c| (c.queue.clone(), c.kind.code()));
    assert_eq!(imported, want);
    engine.stop().await;
}
