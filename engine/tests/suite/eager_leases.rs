//! Eager leases: a transaction that makes a task ready while a poller that accepts it is
//! parked leases the task to that poller before its commit, so the poll costs no lease
//! transaction of its own. A poller that leaves before the delivery gets nothing, and the
//! lease is handed back at once (not at its expiry); a poller whose timeout passes while
//! a lease is being made for it still receives it; under storage faults every workflow
//! still completes, each step recorded once. And the hint path's own hand-over: a poll
//! cancelled while leasing a hint from the index gives the hint back.

use crate::support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keel_engine::clock::ManualClock;
use keel_engine::model::RunStatus;
use keel_engine::storage::faulty::FaultyStore;
use keel_engine::storage::memory::MemoryStore;
use keel_engine::storage::simulated::{FaultConfig, SimulatedStore};
use keel_engine::storage::{
    Capabilities, CommitInfo, KeyRange, KeyValue, KvStore, KvTxn, ReadOptions, Result,
    StorageError, Version, WatchFuture,
};
use keel_engine::workflow::{Poll, WorkflowTaskView};
use keel_engine::{Engine, EngineConfig};
use serde_json::json;
use support::*;
use tokio::sync::watch;

/// Long enough that a lease nobody received would outlast every test here.
const LEASE: Duration = Duration::from_secs(600);

/// A memory store that counts the commits that write, holds them while its gate is
/// closed, and can refuse the next one with a conflict.
#[derive(Clone)]
struct GatedStore {
    inner: MemoryStore,
    writes: Arc<AtomicU64>,
    open: watch::Sender<bool>,
    conflict_next: Arc<AtomicBool>,
    /// Commits held at the closed gate now.
    held: Arc<AtomicU64>,
    /// Reports itself as shared by several nodes (durable counters and lease timers).
    multi_node: bool,
    /// Ready-index keys committed transactions wrote (set or cleared).
    ready_writes: Arc<AtomicU64>,
}

impl GatedStore {
    fn new() -> Self {
        GatedStore {
            inner: MemoryStore::new(),
            writes: Arc::new(AtomicU64::new(0)),
            open: watch::Sender::new(true),
            conflict_next: Arc::new(AtomicBool::new(false)),
            held: Arc::new(AtomicU64::new(0)),
            multi_node: false,
            ready_writes: Arc::new(AtomicU64::new(0)),
        }
    }

    fn commits(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

#[async_trait]
impl KvStore for GatedStore {
    async fn begin(&self) -> Result<Box<dyn KvTxn>> {
        Ok(Box::new(GatedTxn {
            inner: self.inner.begin().await?,
            store: self.clone(),
            writes: false,
            ready_keys: std::collections::BTreeSet::new(),
        }))
    }

    fn watch(&self, key: &[u8], since: Version) -> WatchFuture {
        self.inner.watch(key, since)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            multi_node: self.multi_node,
            ..self.inner.capabilities()
        }
    }

    async fn shutdown(&self) -> Result<()> {
        self.inner.shutdown().await
    }
}

struct GatedTxn {
    inner: Box<dyn KvTxn>,
    store: GatedStore,
    writes: bool,
    /// Ready-index keys this transaction writes.
    ready_keys: std::collections::BTreeSet<Vec<u8>>,
}

impl GatedTxn {
    fn note(&mut self, key: &[u8]) {
        if keel_engine::tables::ready_range().contains(key) {
            self.ready_keys.insert(key.to_vec());
        }
    }
}

#[async_trait]
impl KvTxn for GatedTxn {
    fn read_version(&self) -> Version {
        self.inner.read_version()
    }
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(key).await
    }
    async fn get_snapshot(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get_snapshot(key).await
    }
    async fn get_range(&mut self, range: &KeyRange, opts: ReadOptions) -> Result<Vec<KeyValue>> {
        self.inner.get_range(range, opts).await
    }
    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.writes = true;
        self.note(key);
        self.inner.set(key, value);
    }
    fn clear(&mut self, key: &[u8]) {
        self.writes = true;
        self.note(key);
        self.inner.clear(key);
    }
    fn withdraw(&mut self, key: &[u8]) {
        self.ready_keys.remove(key);
        self.inner.withdraw(key);
    }
    fn clear_range(&mut self, range: &KeyRange) {
        self.writes = true;
        self.inner.clear_range(range);
    }
    fn atomic_add(&mut self, key: &[u8], delta: i64) {
        self.writes = true;
        self.inner.atomic_add(key, delta);
    }
    fn add_read_conflict(&mut self, key: &[u8]) {
        self.inner.add_read_conflict(key);
    }
    async fn commit(self: Box<Self>) -> Result<CommitInfo> {
        if self.writes {
            let mut open = self.store.open.subscribe();
            self.store.held.fetch_add(1, Ordering::SeqCst);
            let _ = open.wait_for(|open| *open).await;
            self.store.held.fetch_sub(1, Ordering::SeqCst);
            if self.store.conflict_next.swap(false, Ordering::SeqCst) {
                return Err(StorageError::Conflict);
            }
        }
        let ready_keys = self.ready_keys.len() as u64;
        let info = self.inner.commit().await?;
        if self.writes {
            self.store.writes.fetch_add(1, Ordering::SeqCst);
        }
        self.store
            .ready_writes
            .fetch_add(ready_keys, Ordering::SeqCst);
        Ok(info)
    }
}

async fn engine_on(store: Arc<dyn KvStore>, clock: &ManualClock, eager: bool) -> Engine {
    let config = EngineConfig {
        workflow_task_lease: LEASE,
        activity_task_lease: LEASE,
        eager_leases: eager,
        ..EngineConfig::default()
    };
    open_with_config(store, clock, config, &[]).await
}

/// A long-poll by `WORKER` that waits up to a minute.
fn long_poll() -> Poll {
    Poll {
        timeout: Duration::from_secs(60),
        ..probe()
    }
}

/// Waits (real time, with a deadline) until `n` polls are parked on the engine.
async fn until_parked(engine: &Engine, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while engine.parked_polls() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} parked polls, have {}",
            engine.parked_polls()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn spawn_workflow_poll(engine: &Engine) -> tokio::task::JoinHandle<Option<WorkflowTaskView>> {
    let engine = engine.clone();
    tokio::spawn(async move {
        engine
            .poll_workflow_task(&long_poll())
            .await
            .expect("poll succeeds")
    })
}

/// Starts a workflow and completes a one-activity run through parked pollers; returns
/// the writing commits each of its five steps took (start, workflow task completion,
/// activity completion, final completion, and the polls between them), and the
/// ready-index keys its commits wrote.
async fn one_activity_commits(eager: bool, multi_node: bool) -> (Vec<u64>, u64) {
    let store = GatedStore {
        multi_node,
        ..GatedStore::new()
    };
    let clock = ManualClock::new(START);
    let engine = engine_on(Arc::new(store.clone()), &clock, eager).await;
    let mut steps = Vec::new();

    let poll = spawn_workflow_poll(&engine);
    until_parked(&engine, 1).await;
    let before = store.commits();
    engine
        .start_workflow(NS, start("eager", "t"))
        .await
        .expect("start");
    let first = poll
        .await
        .expect("poller")
        .expect("the first workflow task");
    steps.push(store.commits() - before);
    assert_eq!(event_types(&first), ["WorkflowStarted"]);
    assert_eq!(first.workflow_task_attempt, 1);

    let activity_poll = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .poll_activity_task(&long_poll())
                .await
                .expect("poll succeeds")
        })
    };
    until_parked(&engine, 1).await;
    let before = store.commits();
    let schedule = json!({"type": "schedule_activity", "activity_type": "a",
        "arguments": {"codec": "avro", "blob": ARGS}, "queue": QUEUE});
    complete(&engine, &first, vec![schedule]).await;
    let activity = activity_poll
        .await
        .expect("poller")
        .expect("the activity task");
    steps.push(store.commits() - before);

    let poll = spawn_workflow_poll(&engine);
    until_parked(&engine, 1).await;
    let before = store.commits();
    complete_activity(&engine, &activity, json!({"codec": "avro", "blob": ARGS})).await;
    let second = poll
        .await
        .expect("poller")
        .expect("the second workflow task");
    steps.push(store.commits() - before);
    assert!(event_types(&second).contains(&"ActivityCompleted".to_string()));

    let before = store.commits();
    complete_with_result(&engine, &second).await;
    steps.push(store.commits() - before);
    let view = engine.describe(NS, "eager", None).await.expect("describe");
    assert_eq!(view.run.status, RunStatus::Completed);
    (steps, store.ready_writes.load(Ordering::SeqCst))
}

#[tokio::test]
async fn a_task_made_ready_for_a_parked_poller_is_leased_in_the_transaction_that_made_it() {
    let (steps, ready_writes) = one_activity_commits(true, false).await;
    assert_eq!(
        steps,
        [1, 1, 1, 1],
        "each step one transaction: the polls lease nothing themselves"
    );
    assert_eq!(
        ready_writes, 0,
        "a ready-index entry set and cleared in one transaction is withdrawn, not stored"
    );
    let (steps, ready_writes) = one_activity_commits(false, false).await;
    assert_eq!(
        steps,
        [2, 2, 2, 1],
        "without eager leases each parked poll commits its own lease"
    );
    assert_eq!(
        ready_writes, 6,
        "three tasks, each indexed and taken from the index"
    );
}

#[tokio::test]
async fn on_a_multi_node_store_a_poller_parked_on_this_node_is_leased_to_eagerly_too() {
    // Durable counter rows and lease-timer rows instead of memory: the same commits.
    assert_eq!(
        one_activity_commits(true, true).await,
        (vec![1, 1, 1, 1], 0)
    );
}

/// A workflow poller reserved by a start of `id` whose commit waits at the closed gate.
struct HeldStart {
    store: GatedStore,
    clock: ManualClock,
    engine: Engine,
    poll: tokio::task::JoinHandle<Option<WorkflowTaskView>>,
    starting: tokio::task::JoinHandle<keel_engine::Result<keel_engine::workflow::StartOutcome>>,
}

async fn held_start(id: &str) -> HeldStart {
    let store = GatedStore::new();
    let clock = ManualClock::new(START);
    let engine = engine_on(Arc::new(store.clone()), &clock, true).await;
    let poll = spawn_workflow_poll(&engine);
    until_parked(&engine, 1).await;
    store.set_open(false);
    let starting = {
        let (engine, request) = (engine.clone(), start(id, "t"));
        tokio::spawn(async move { engine.start_workflow(NS, request).await })
    };
    // The start's transaction took the poller out of its queue for the lease.
    until_parked(&engine, 0).await;
    HeldStart {
        store,
        clock,
        engine,
        poll,
        starting,
    }
}

#[tokio::test]
async fn a_lease_made_for_a_poller_that_left_before_the_commit_is_handed_back_at_once() {
    let HeldStart {
        store,
        engine,
        poll,
        starting,
        ..
    } = held_start("left").await;
    poll.abort();
    assert!(poll.await.expect_err("aborted").is_cancelled());
    store.set_open(true);
    starting.await.expect("starter").expect("start");

    // Not after the 600 s lease: the next poll gets the task, at its first attempt.
    let task = wait_wf(&engine).await;
    assert_eq!(event_types(&task), ["WorkflowStarted"]);
    assert_eq!(
        task.workflow_task_attempt, 1,
        "the undelivered lease took no attempt"
    );
    complete_with_result(&engine, &task).await;
}

#[tokio::test]
async fn a_poller_whose_timeout_passes_while_its_lease_commits_still_receives_the_task() {
    let HeldStart {
        store,
        clock,
        engine,
        poll,
        starting,
    } = held_start("late").await;
    clock.advance(Duration::from_secs(61));
    tokio::task::yield_now().await;
    assert!(!poll.is_finished(), "the poller waits for the commit");
    store.set_open(true);
    starting.await.expect("starter").expect("start");
    let task = poll.await.expect("poller").expect("the task leased to it");
    assert_eq!(event_types(&task), ["WorkflowStarted"]);
    assert!(poll_wf(&engine).await.is_none(), "leased once");
}

#[tokio::test]
async fn a_creating_transaction_that_conflicts_returns_its_poller_and_the_retry_leases_to_it() {
    let store = GatedStore::new();
    let clock = ManualClock::new(START);
    let engine = engine_on(Arc::new(store.clone()), &clock, true).await;
    let poll = spawn_workflow_poll(&engine);
    until_parked(&engine, 1).await;
    store.conflict_next.store(true, Ordering::SeqCst);
    let before = store.commits();
    engine
        .start_workflow(NS, start("retried", "t"))
        .await
        .expect("the start's retry commits");
    let task = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the poller was returned to its queue and got the task")
        .expect("poller")
        .expect("a task");
    assert_eq!(event_types(&task), ["WorkflowStarted"]);
    assert_eq!(store.commits() - before, 1, "the retry leased it eagerly");
    assert!(
        !store.conflict_next.load(Ordering::SeqCst),
        "the conflict was injected"
    );
}

#[tokio::test]
async fn a_poll_cancelled_while_leasing_a_hint_from_the_index_gives_the_hint_back() {
    let store = GatedStore::new();
    let clock = ManualClock::new(START);
    let engine = engine_on(Arc::new(store.clone()), &clock, true).await;
    engine
        .start_workflow(NS, start("cancelled", "t"))
        .await
        .expect("start");
    store.set_open(false);
    let poll = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.poll_workflow_task(&probe()).await })
    };
    // The poll took the hint from the index and its lease waits at the commit.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.held.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease never reached its commit"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    poll.abort();
    assert!(poll.await.expect_err("aborted").is_cancelled());
    store.set_open(true);
    // Its lease never committed: the next poll gets the task (not the 600 s lease later).
    let task = wait_wf(&engine).await;
    assert_eq!(event_types(&task), ["WorkflowStarted"]);
    assert_eq!(task.workflow_task_attempt, 1);
}

/// Long-poll workers (workflow and activity) drive `n` one-activity workflows to the
/// end on `store`; returns once all completed, each with its steps recorded once.
async fn drive_with_parked_pollers(store: Arc<dyn KvStore>, n: usize) {
    let clock = ManualClock::new(START);
    let engine = engine_on(store, &clock, true).await;
    let short = Poll {
        timeout: Duration::from_secs(60),
        ..probe()
    };
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (worker, poll) = (engine.clone(), short.clone());
        workers.push(tokio::spawn(async move {
            let engine = worker;
            loop {
                let Ok(Some(task)) = engine.poll_workflow_task(&poll).await else {
                    continue;
                };
                let done = event_types(&task).iter().any(|t| t == "ActivityCompleted");
                let command = if done {
                    json!({"type": "complete_workflow", "result": {"codec": "avro", "blob": ARGS}})
                } else {
                    json!({"type": "schedule_activity", "activity_type": "a",
                        "arguments": {"codec": "avro", "blob": ARGS}, "queue": QUEUE})
                };
                let _ = engine
                    .complete_workflow_task(
                        NS,
                        &task.task_id,
                        WORKER,
                        task.workflow_task_attempt,
                        &[command],
                    )
                    .await;
            }
        }));
        let (worker, poll) = (engine.clone(), short.clone());
        workers.push(tokio::spawn(async move {
            let engine = worker;
            loop {
                let Ok(Some(act)) = engine.poll_activity_task(&poll).await else {
                    continue;
                };
                let _ = engine
                    .complete_activity_task(
                        NS,
                        &act.task_id,
                        &act.activity_attempt_id,
                        WORKER,
                        &json!({"codec": "avro", "blob": ARGS}),
                    )
                    .await;
            }
        }));
    }
    for i in 0..n {
        let request = keel_engine::workflow::StartWorkflow {
            duplicate_policy: keel_engine::workflow::DuplicatePolicy::UseExisting,
            ..start(&format!("wf-{i}"), "t")
        };
        // A start that failed ambiguously is retried with the same id.
        while engine.start_workflow(NS, request.clone()).await.is_err() {}
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for i in 0..n {
        let id = format!("wf-{i}");
        let mut stalled = 0;
        let run_id = loop {
            if let Ok(v) = engine.describe(NS, &id, None).await {
                if v.run.status == RunStatus::Completed {
                    break v.run.run_id;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} did not complete"
            );
            stalled += 1;
            if stalled % 200 == 0 {
                // A poll's own lease whose commit result was lost lapses (not an eager
                // lease: those are handed back).
                clock.advance(LEASE + Duration::from_secs(1));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let page = loop {
            if let Ok(page) = engine.history(NS, &id, &run_id, 0, 1000).await {
                break page;
            }
        };
        let events: Vec<serde_json::Value> = page
            .events
            .iter()
            .map(|e| serde_json::from_str(e.get()).expect("json"))
            .collect();
        assert_eq!(
            types_of(&events),
            [
                "WorkflowStarted",
                "ActivityScheduled",
                "ActivityCompleted",
                "WorkflowCompleted"
            ],
            "{id}"
        );
    }
    workers.iter().for_each(|w| w.abort());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_parked_pollers_every_workflow_completes_once() {
    drive_with_parked_pollers(Arc::new(MemoryStore::new()), 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_storage_faults_with_parked_pollers_every_workflow_completes_once() {
    for seed in 1..=3 {
        let store = FaultyStore::new(Arc::new(MemoryStore::new()), FaultConfig::chaos(seed));
        drive_with_parked_pollers(Arc::new(store), 30).await;
        // Multi-node: durable counters and lease-timer rows.
        drive_with_parked_pollers(Arc::new(SimulatedStore::new(FaultConfig::chaos(seed))), 30)
            .await;
    }
}
