//! What the engine test files share: an engine over the in-memory store with a manual
//! clock and one registered worker, start requests, zero-timeout polls, and event helpers.
#![allow(dead_code)] // each test file uses its own subset

use std::sync::Arc;
use std::time::Duration;

use keel_engine::clock::{Clock, ManualClock};
use keel_engine::model::WorkerRecord;
use keel_engine::storage::memory::MemoryStore;
use keel_engine::storage::KvStore;
use keel_engine::workflow::{ActivityTaskView, Poll, StartWorkflow, WorkflowTaskView};
use keel_engine::{Engine, EngineConfig, Error};
use serde_json::{json, Value};

pub const NS: &str = "default";
pub const QUEUE: &str = "q";
pub const START: i64 = 1_780_000_000_000;
pub const WORKER: &str = "w1";
/// The payload blob used as every input and argument.
pub const ARGS: &str = "AA==";

/// An engine with its clock and store.
pub struct Harness {
    pub engine: Engine,
    pub clock: ManualClock,
    pub store: MemoryStore,
}

/// A fresh store, a clock at `START`, and an engine with `lease` for both task kinds and
/// worker `WORKER` registered on `QUEUE` with `capabilities`.
pub async fn harness(lease: Duration, capabilities: &[&str]) -> Harness {
    let store = MemoryStore::new();
    let clock = ManualClock::new(START);
    let engine = open(&store, &clock, lease, capabilities).await;
    Harness {
        engine,
        clock,
        store,
    }
}

/// Opens an engine on `store` and registers `WORKER`.
pub async fn open(
    store: &MemoryStore,
    clock: &ManualClock,
    lease: Duration,
    capabilities: &[&str],
) -> Engine {
    let config = EngineConfig {
        workflow_task_lease: lease,
        activity_task_lease: lease,
        ..EngineConfig::default()
    };
    open_with_config(Arc::new(store.clone()), clock, config, capabilities).await
}

/// Opens an engine with `config` on any store and registers `WORKER`.
pub async fn open_with_config(
    store: Arc<dyn KvStore>,
    clock: &ManualClock,
    config: EngineConfig,
    capabilities: &[&str],
) -> Engine {
    let engine = Engine::open(store, Arc::new(clock.clone()) as Arc<dyn Clock>, config)
        .await
        .expect("engine opens");
    register(&engine, WORKER, capabilities).await;
    engine
}

/// How many rows of table `prefix` the store holds (up to 10,000).
pub async fn rows_with_prefix(store: &Arc<dyn KvStore>, prefix: u8) -> usize {
    use keel_engine::storage::{KeyRange, ReadOptions};
    let mut txn = store.begin().await.expect("begin");
    txn.get_range(
        &KeyRange::prefix(&[prefix]),
        ReadOptions::limit(10_000).snapshot(),
    )
    .await
    .expect("range read")
    .len()
}

/// Completes workflow task `task` (leased by `WORKER`) with `commands`.
pub async fn complete(engine: &Engine, task: &WorkflowTaskView, commands: Vec<Value>) {
    engine
        .complete_workflow_task(
            NS,
            &task.task_id,
            WORKER,
            task.workflow_task_attempt,
            &commands,
        )
        .await
        .expect("completion accepted");
}

/// Completes activity task `act` (leased by `WORKER`) with `result`.
pub async fn complete_activity(engine: &Engine, act: &ActivityTaskView, result: Value) {
    engine
        .complete_activity_task(NS, &act.task_id, &act.activity_attempt_id, WORKER, &result)
        .await
        .expect("activity completion accepted");
}

/// Completes the run of workflow task `task` with the `ARGS` blob as its result.
pub async fn complete_with_result(engine: &Engine, task: &WorkflowTaskView) {
    let result = json!({"type": "complete_workflow", "result": {"codec": "avro", "blob": ARGS}});
    complete(engine, task, vec![result]).await;
}

/// Registers `worker_id` on `QUEUE` with `capabilities`.
pub async fn register(engine: &Engine, worker_id: &str, capabilities: &[&str]) {
    engine
        .register_worker(WorkerRecord {
            worker_id: worker_id.into(),
            namespace: NS.into(),
            task_queue: QUEUE.into(),
            runtime: Some("test".into()),
            sdk_version: None,
            build_id: None,
            supported_workflow_types: vec![],
            supported_activity_types: vec![],
            capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
            registered_at_ms: START,
            last_heartbeat_at_ms: START,
        })
        .await
        .expect("worker registers");
}

/// A start of `workflow_type` with id `id` on `QUEUE`, no timeouts.
pub fn start(id: &str, workflow_type: &str) -> StartWorkflow {
    StartWorkflow {
        workflow_id: Some(id.into()),
        ..StartWorkflow::new(workflow_type, QUEUE, json!({"codec": "avro", "blob": ARGS}))
    }
}

/// A zero-timeout poll by `WORKER` on `QUEUE`.
pub fn probe() -> Poll {
    Poll {
        namespace: NS.into(),
        worker_id: WORKER.into(),
        task_queue: QUEUE.into(),
        timeout: Duration::ZERO,
        history_page_size: 500,
        poll_request_id: None,
    }
}

pub async fn poll_wf(engine: &Engine) -> Option<WorkflowTaskView> {
    engine
        .poll_workflow_task(&probe())
        .await
        .expect("poll succeeds")
}

pub async fn poll_act(engine: &Engine) -> Option<ActivityTaskView> {
    engine
        .poll_activity_task(&probe())
        .await
        .expect("poll succeeds")
}

/// Probes until a workflow task arrives or a real-time deadline passes (timers fire on
/// the engine's own task after the clock moves).
pub async fn wait_wf(engine: &Engine) -> WorkflowTaskView {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(t) = poll_wf(engine).await {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no workflow task became ready"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The task's history events as JSON.
pub fn events(task: &WorkflowTaskView) -> Vec<Value> {
    task.history_events
        .iter()
        .map(|e| serde_json::from_str::<Value>(e.get()).expect("event is json"))
        .collect()
}

/// The `event_type`s of events.
pub fn types_of(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The task's history event types.
pub fn event_types(task: &WorkflowTaskView) -> Vec<String> {
    types_of(&events(task))
}

/// The reason of a rejection.
pub fn reason(e: Error) -> &'static str {
    match e {
        Error::Rejected { reason, .. } => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}
