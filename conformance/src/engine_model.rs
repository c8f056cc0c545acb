//! An engine-level model check: random sequences of start / poll / complete / fail /
//! heartbeat / expire / restart against one or more engines sharing a store, compared with
//! a simple sequential model of leases. Run it per backend with [`check_engine_model`].
//!
//! Invariants checked after every step:
//! * at most one workflow task per run (read from storage);
//! * a task is never leased again while a lease on it is live (at most one live lease),
//!   also when it was leased eagerly to a parked long-poll by the transaction that made
//!   it ready (`ParkPoll` steps: the poll is collected once it settles, and a poll left
//!   parked is dropped at a restart and at the end);
//! * a report through the current, unexpired lease succeeds; through a stale or expired
//!   one it is refused (a stale lease never completes work);
//! * no task of a run is handed out after its workflow completed;
//! * a poll only returns tasks of its own queue and of types the worker registered;
//! * at the end every started workflow completes once time moves on (nothing is lost).
//!
//! Storage faults make some outcomes unknown (a commit-unknown may or may not have
//! applied); the model then stops predicting that lease instead of guessing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use keel_engine::clock::{Clock, ManualClock};
use keel_engine::model::{RunStatus, TaskKind, TaskRecord, WorkerRecord};
use keel_engine::workflow::{DuplicatePolicy, Poll, StartWorkflow};
use keel_engine::{Engine, EngineConfig, Error};
use keel_storage::{KeyRange, KvStore, ReadOptions};
use proptest::prelude::*;
use serde_json::{json, Value};

const NS: &str = "default";
const QUEUE: &str = "q";
const OTHER_QUEUE: &str = "other";
const LEASE: Duration = Duration::from_secs(10);
const WORKFLOWS: u8 = 4;

/// One step of a scenario.
#[derive(Debug, Clone)]
pub enum Step {
    /// Start workflow `n` (on `QUEUE`; odd ones also on the other queue).
    Start(u8),
    /// A worker polls for a workflow task on a node.
    PollWorkflow(u8),
    /// A worker polls for an activity task on a node.
    PollActivity(u8),
    /// Complete through the `n`-th lease handed out so far (maybe stale).
    Complete(u8),
    /// Fail the activity behind the `n`-th lease (maybe stale).
    FailActivity(u8),
    /// Heartbeat the `n`-th lease (maybe stale).
    Heartbeat(u8),
    /// Move time past every lease (timers fire only at `FireTimers`, so the window
    /// between a lease's expiry and its timer is exercised too).
    Expire,
    /// Move time a little (leases stay live).
    Tick,
    /// Fire every due timer.
    FireTimers,
    /// A worker long-polls on a node and is left waiting: a later step that makes a task
    /// ready may lease it to this poll before its commit (an eager lease).
    ParkPoll(u8),
    /// Restart a node's engine on the same store (with
    /// [`check_engine_model_across_crashes`]: crash and reopen the store, then open the
    /// engine on it again).
    Restart(u8),
}

/// Random scenarios.
pub fn steps(max_len: usize) -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        3 => (0..WORKFLOWS * 2).prop_map(Step::Start),
        4 => any::<u8>().prop_map(Step::PollWorkflow),
        3 => any::<u8>().prop_map(Step::PollActivity),
        5 => any::<u8>().prop_map(Step::Complete),
        1 => any::<u8>().prop_map(Step::FailActivity),
        1 => any::<u8>().prop_map(Step::Heartbeat),
        1 => Just(Step::Expire),
        1 => Just(Step::Tick),
        2 => Just(Step::FireTimers),
        2 => any::<u8>().prop_map(Step::ParkPoll),
        1 => any::<u8>().prop_map(Step::Restart),
    ];
    proptest::collection::vec(step, 1..max_len)
}

#[derive(Debug, Clone)]
struct Held {
    task_id: String,
    kind: TaskKind,
    attempt: u32,
    attempt_id: String,
    owner: String,
    workflow_id: String,
    history: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseState {
    /// Current; expires at this model time.
    Live(i64),
    /// Reported (completed or failed) through this lease.
    Closed,
    /// A storage fault made the outcome unknown: no more predictions.
    Unknown,
}

/// A long-poll left waiting: it ends with the lease it got and when that lapses.
type ParkedPoll = tokio::task::JoinHandle<Option<(Held, i64)>>;

/// Opens the store again at its location, after every handle of it was dropped.
pub type Reopen = Arc<dyn Fn() -> Arc<dyn KvStore> + Send + Sync>;

struct Model {
    clock: ManualClock,
    /// Set in crash mode: `Restart` crashes and reopens the store.
    reopen: Option<Reopen>,
    engines: Vec<Engine>,
    stores: Vec<Arc<dyn KvStore>>,
    held: Vec<Held>,
    /// The latest lease handed out per task: (attempt key, state).
    latest: HashMap<String, (String, LeaseState)>,
    started: BTreeMap<String, &'static str>,
    completed: HashSet<String>,
    /// Long-polls left waiting (`ParkPoll`), by node: each ends with the lease it got.
    parked: Vec<(usize, ParkedPoll)>,
}

fn config() -> EngineConfig {
    EngineConfig {
        workflow_task_lease: LEASE,
        activity_task_lease: LEASE,
        ..EngineConfig::default()
    }
}

async fn open(store: Arc<dyn KvStore>, clock: &ManualClock) -> Engine {
    // Opening may meet injected faults (a transiently unavailable store): a server would
    // fail to start and be restarted; the model tries again.
    let mut attempt = 0;
    let engine = loop {
        let clock = Arc::new(clock.clone()) as Arc<dyn Clock>;
        match Engine::open(store.clone(), clock, config()).await {
            Ok(engine) => break engine,
            Err(e) if is_storage(&e) && attempt < 50 => attempt += 1,
            Err(e) => panic!("the engine does not open: {e:?}"),
        }
    };
    for (id, queue) in [("w-a", QUEUE), ("w-b", QUEUE), ("w-other", OTHER_QUEUE)] {
        let worker = WorkerRecord {
            worker_id: id.into(),
            namespace: NS.into(),
            task_queue: queue.into(),
            runtime: None,
            sdk_version: None,
            build_id: None,
            supported_workflow_types: vec!["wf".into()],
            supported_activity_types: vec!["act".into()],
            capabilities: vec![],
            registered_at_ms: 0,
            last_heartbeat_at_ms: 0,
        };
        // Registration may meet injected faults; retry until it sticks.
        for _ in 0..50 {
            if engine.register_worker(worker.clone()).await.is_ok() {
                break;
            }
        }
    }
    engine
}

/// The `event_type`s of history events.
fn event_types(events: &[Box<serde_json::value::RawValue>]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e.get()).expect("event json")["event_type"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

fn is_storage(e: &Error) -> bool {
    matches!(e, Error::Storage(_))
}

fn attempt_key(h: &Held) -> String {
    format!("{}/{}", h.attempt, h.attempt_id)
}

impl Model {
    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn node(&self, n: u8) -> &Engine {
        &self.engines[n as usize % self.engines.len()]
    }

    fn poll(&self, worker: &str, queue: &str) -> Poll {
        Poll {
            namespace: NS.into(),
            worker_id: worker.into(),
            task_queue: queue.into(),
            timeout: Duration::ZERO,
            history_page_size: 1000,
            poll_request_id: None,
        }
    }

    /// Records a lease a poll handed out, checking it against the model.
    fn leased(&mut self, held: Held, queue: &str, task_queue: &str) {
        let expires = self.now() + LEASE.as_millis() as i64;
        self.leased_until(held, queue, task_queue, expires);
    }

    /// Records a lease that lapses at `expires` (an eager lease began when the transaction
    /// that made the task ready committed, maybe before the poll was collected).
    fn leased_until(&mut self, held: Held, queue: &str, task_queue: &str, expires_at: i64) {
        assert_eq!(task_queue, queue, "a poll returned a task of another queue");
        assert!(
            !self.completed.contains(&held.workflow_id),
            "task handed out after its workflow completed: {held:?}"
        );
        if let Some((_, LeaseState::Live(expires))) = self.latest.get(&held.task_id) {
            assert!(
                self.now() >= *expires,
                "task {} leased again while its lease was live",
                held.task_id
            );
        }
        self.latest.insert(
            held.task_id.clone(),
            (attempt_key(&held), LeaseState::Live(expires_at)),
        );
        self.held.push(held);
    }

    /// Whether a report through `h` must succeed (`Some(true)`), must fail
    /// (`Some(false)`), or is unpredictable (`None`).
    fn expect(&self, h: &Held) -> Option<bool> {
        match self.latest.get(&h.task_id) {
            Some((key, LeaseState::Live(expires))) if *key == attempt_key(h) => {
                Some(self.now() < *expires)
            }
            Some((_, LeaseState::Unknown)) => None,
            _ => Some(false),
        }
    }

    fn settle(&mut self, h: &Held, result: &Result<(), Error>, closes: bool) {
        let expected = self.expect(h);
        match (expected, result) {
            (_, Err(e)) if is_storage(e) => {
                self.latest
                    .insert(h.task_id.clone(), (attempt_key(h), LeaseState::Unknown));
            }
            (Some(true), Ok(())) => {
                if closes {
                    self.latest
                        .insert(h.task_id.clone(), (attempt_key(h), LeaseState::Closed));
                }
            }
            (Some(false), Err(_)) | (None, _) => {}
            (Some(want), got) => {
                panic!("report through {h:?} expected success={want}, got {got:?}")
            }
        }
    }

    async fn step(&mut self, step: &Step) {
        match *step {
            Step::Start(n) => {
                let (id, queue) = if n % 2 == 0 {
                    (format!("wf-{}", n / 2), QUEUE)
                } else {
                    (format!("ow-{}", n / 2), OTHER_QUEUE)
                };
                let req = StartWorkflow {
                    workflow_id: Some(id.clone()),
                    duplicate_policy: DuplicatePolicy::UseExisting,
                    ..StartWorkflow::new("wf", queue, json!({"codec": "avro", "blob": "AA=="}))
                };
                match self.engines[0].start_workflow(NS, req).await {
                    Ok(_) => {
                        self.started.insert(id, queue);
                    }
                    Err(Error::Rejected {
                        reason: "duplicate_not_allowed",
                        ..
                    }) => {}
                    Err(e) if is_storage(&e) => {}
                    Err(e) => panic!("start failed: {e:?}"),
                }
            }
            Step::PollWorkflow(n) => {
                let worker = if n % 2 == 0 { "w-a" } else { "w-b" };
                if let Ok(Some(t)) = self
                    .node(n / 2)
                    .poll_workflow_task(&self.poll(worker, QUEUE))
                    .await
                {
                    assert_eq!(t.workflow_type, "wf");
                    let history = t
                        .history_events
                        .iter()
                        .map(|e| {
                            serde_json::from_str::<Value>(e.get()).expect("event json")
                                ["event_type"]
                                .as_str()
                                .unwrap_or("")
                                .to_string()
                        })
                        .collect();
                    let held = Held {
                        task_id: t.task_id,
                        kind: TaskKind::Workflow,
                        attempt: t.workflow_task_attempt,
                        attempt_id: String::new(),
                        owner: worker.into(),
                        workflow_id: t.workflow_id,
                        history,
                    };
                    self.leased(held, QUEUE, &t.task_queue);
                }
            }
            Step::PollActivity(n) => {
                let worker = if n % 2 == 0 { "w-a" } else { "w-b" };
                if let Ok(Some(t)) = self
                    .node(n / 2)
                    .poll_activity_task(&self.poll(worker, QUEUE))
                    .await
                {
                    assert_eq!(t.activity_type, "act");
                    let held = Held {
                        task_id: t.task_id,
                        kind: TaskKind::Activity,
                        attempt: t.attempt_number,
                        attempt_id: t.activity_attempt_id,
                        owner: worker.into(),
                        workflow_id: t.workflow_id,
                        history: vec![],
                    };
                    self.leased(held, QUEUE, &t.task_queue);
                }
            }
            Step::Complete(i) | Step::FailActivity(i) | Step::Heartbeat(i)
                if !self.held.is_empty() =>
            {
                let h = self.held[i as usize % self.held.len()].clone();
                let engine = self.node(i).clone();
                match (step, h.kind) {
                    (Step::Heartbeat(_), TaskKind::Workflow) => {
                        let r = engine
                            .heartbeat_workflow_task(NS, &h.task_id, &h.owner, h.attempt)
                            .await
                            .map(|_| ());
                        let renews = r.is_ok() && self.expect(&h) == Some(true);
                        self.settle(&h, &r, false);
                        if renews {
                            let expires = self.now() + LEASE.as_millis() as i64;
                            self.latest.insert(
                                h.task_id.clone(),
                                (attempt_key(&h), LeaseState::Live(expires)),
                            );
                        }
                    }
                    (Step::Heartbeat(_), TaskKind::Activity) => {
                        let r = engine
                            .heartbeat_activity_task(NS, &h.task_id, &h.attempt_id, &h.owner, None)
                            .await
                            .map(|_| ());
                        let renews = r.is_ok() && self.expect(&h) == Some(true);
                        self.settle(&h, &r, false);
                        if renews {
                            let expires = self.now() + LEASE.as_millis() as i64;
                            self.latest.insert(
                                h.task_id.clone(),
                                (attempt_key(&h), LeaseState::Live(expires)),
                            );
                        }
                    }
                    (_, TaskKind::Workflow) => self.complete_workflow_task(&engine, &h).await,
                    (Step::FailActivity(_), TaskKind::Activity) => {
                        let failure = json!({"message": "boom", "type": "RuntimeError"});
                        let r = engine
                            .fail_activity_task(NS, &h.task_id, &h.attempt_id, &h.owner, &failure)
                            .await
                            .map(|_| ());
                        self.settle(&h, &r, true);
                    }
                    (_, TaskKind::Activity) => {
                        let r = engine
                            .complete_activity_task(
                                NS,
                                &h.task_id,
                                &h.attempt_id,
                                &h.owner,
                                &json!("r"),
                            )
                            .await
                            .map(|_| ());
                        self.settle(&h, &r, true);
                    }
                }
            }
            Step::Complete(_) | Step::FailActivity(_) | Step::Heartbeat(_) => {}
            Step::Expire => self.clock.advance(LEASE + Duration::from_secs(1)),
            Step::Tick => self.clock.advance(Duration::from_secs(1)),
            Step::FireTimers => self.fire_timers().await,
            Step::ParkPoll(n) => self.park_poll(n).await,
            Step::Restart(_) if self.reopen.is_some() => {
                self.drop_parked(None).await;
                // The engine stops (its background services end and release the store),
                // then the store is dropped without shutdown and its location reopened.
                for engine in self.engines.drain(..) {
                    engine.stop().await;
                }
                self.stores.clear();
                let reopen = self.reopen.clone().expect("crash mode");
                let store = reopen();
                self.engines.push(open(store.clone(), &self.clock).await);
                self.stores.push(store);
            }
            Step::Restart(n) => {
                let i = n as usize % self.engines.len();
                self.drop_parked(Some(i)).await;
                self.engines[i].stop().await;
                self.engines[i] = open(self.stores[i].clone(), &self.clock).await;
            }
        }
        self.collect_parked().await;
        self.check_one_workflow_task_per_run().await;
    }

    /// Starts a long-poll that waits (up to a minute of engine time) and returns once it
    /// is parked or answered.
    async fn park_poll(&mut self, n: u8) {
        let node = (n / 4) as usize % self.engines.len();
        let engine = self.engines[node].clone();
        let worker = if (n / 2).is_multiple_of(2) {
            "w-a"
        } else {
            "w-b"
        };
        let poll = Poll {
            timeout: Duration::from_secs(60),
            ..self.poll(worker, QUEUE)
        };
        let handle = tokio::spawn(async move {
            let lease = |t: &str| keel_engine::clock::parse_timestamp(t).expect("lease expiry");
            if n.is_multiple_of(2) {
                let t = engine.poll_workflow_task(&poll).await.ok()??;
                assert_eq!(t.task_queue, QUEUE);
                let held = Held {
                    task_id: t.task_id,
                    kind: TaskKind::Workflow,
                    attempt: t.workflow_task_attempt,
                    attempt_id: String::new(),
                    owner: poll.worker_id.clone(),
                    workflow_id: t.workflow_id,
                    history: event_types(&t.history_events),
                };
                Some((held, lease(&t.lease_expires_at)))
            } else {
                let t = engine.poll_activity_task(&poll).await.ok()??;
                assert_eq!(
                    (t.task_queue.as_str(), t.activity_type.as_str()),
                    (QUEUE, "act")
                );
                let held = Held {
                    task_id: t.task_id,
                    kind: TaskKind::Activity,
                    attempt: t.attempt_number,
                    attempt_id: t.activity_attempt_id,
                    owner: poll.worker_id.clone(),
                    workflow_id: t.workflow_id,
                    history: vec![],
                };
                Some((held, lease(&t.lease_expires_at)))
            }
        });
        self.parked.push((node, handle));
        self.collect_parked().await;
    }

    /// Waits until every long-poll left waiting is parked or answered (none is being
    /// handed a lease), then records the leases the answered ones got.
    async fn collect_parked(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let waiting = self.parked.iter().filter(|(_, h)| !h.is_finished()).count();
            let parked: usize = self.engines.iter().map(Engine::parked_polls).sum();
            if waiting == parked {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "long-polls did not settle: {waiting} waiting, {parked} parked"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|(_, h)| h.is_finished());
        self.parked = waiting;
        for (_, handle) in done {
            if let Some((held, expires_at)) = handle.await.expect("long-poll task") {
                self.leased_until(held, QUEUE, QUEUE, expires_at);
            }
        }
    }

    /// Drops the long-polls left waiting on `node` (every node: `None`); a lease handed to
    /// one meanwhile goes back to storage (its engine's `stop` waits for that).
    async fn drop_parked(&mut self, node: Option<usize>) {
        let (dropped, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|(n, _)| node.is_none_or(|node| node == *n));
        self.parked = kept;
        for (_, handle) in dropped {
            handle.abort();
            // Answered before the abort reached it: a lease like any other.
            if let Ok(Some((held, expires_at))) = handle.await {
                self.leased_until(held, QUEUE, QUEUE, expires_at);
            }
        }
    }

    async fn complete_workflow_task(&mut self, engine: &Engine, h: &Held) {
        let has = |t: &str| h.history.iter().any(|e| e == t);
        let completes = has("ActivityCompleted") || has("ActivityFailed");
        let r = if completes {
            engine.complete_workflow_task(NS, &h.task_id, &h.owner, h.attempt, &[json!({"type": "complete_workflow", "result": null})]).await
        } else if !has("ActivityScheduled") {
            let cmd = json!({"type": "schedule_activity", "activity_type": "act", "arguments": null, "queue": QUEUE});
            engine.complete_workflow_task(NS, &h.task_id, &h.owner, h.attempt, &[cmd]).await
        } else {
            let waiting = json!({"message": "waiting", "type": "WorkflowTaskWaitingForHistory"});
            engine.fail_workflow_task(NS, &h.task_id, &h.owner, h.attempt, &waiting).await
        }
        .map(|_| ());
        let certain = self.expect(h) == Some(true) && r.is_ok();
        self.settle(h, &r, true);
        if completes && certain {
            assert!(
                self.completed.insert(h.workflow_id.clone()),
                "workflow {} completed twice",
                h.workflow_id
            );
        }
    }

    async fn fire_timers(&self) {
        for engine in &self.engines {
            for _ in 0..20 {
                match engine.fire_due_timers(10_000).await {
                    Ok(_) => break,
                    Err(e) if is_storage(&e) => continue,
                    Err(e) => panic!("firing timers failed: {e:?}"),
                }
            }
        }
    }

    async fn task_records(&self) -> Vec<TaskRecord> {
        let Ok(mut txn) = self.stores[0].begin().await else {
            return Vec::new();
        };
        let tasks = KeyRange::prefix(&[keel_engine::keys::prefix::TASK]);
        let Ok(pairs) = txn
            .get_range(&tasks, ReadOptions::limit(100_000).snapshot())
            .await
        else {
            return Vec::new();
        };
        let (records, _) = keel_engine::tables::assemble(pairs).expect("task records decode");
        records
            .into_iter()
            .map(|(_, bytes)| keel_engine::tables::decode_record(&bytes).expect("task record"))
            .collect()
    }

    async fn check_one_workflow_task_per_run(&self) {
        let mut per_run: HashMap<String, usize> = HashMap::new();
        for task in self.task_records().await {
            if task.kind == TaskKind::Workflow {
                *per_run.entry(task.run_id).or_default() += 1;
            }
        }
        assert!(
            per_run.values().all(|&n| n <= 1),
            "a run has more than one workflow task: {per_run:?}"
        );
    }

    /// Moves time on and runs every workflow to completion with well-behaved workers.
    async fn drain(&mut self) {
        self.collect_parked().await;
        self.drop_parked(None).await;
        for _round in 0..200 {
            let mut all_done = true;
            for (id, _) in self.started.clone() {
                let status = self.engines[0]
                    .describe(NS, &id, None)
                    .await
                    .map(|v| v.run.status);
                if !matches!(status, Ok(RunStatus::Completed)) {
                    all_done = false;
                }
            }
            if all_done {
                return;
            }
            self.clock.advance(LEASE + Duration::from_secs(1));
            self.fire_timers().await;
            for node in 0..self.engines.len() as u8 {
                for (worker, queue) in [("w-a", QUEUE), ("w-other", OTHER_QUEUE)] {
                    let engine = self.node(node).clone();
                    while let Ok(Some(t)) =
                        engine.poll_workflow_task(&self.poll(worker, queue)).await
                    {
                        let history: Vec<String> = t
                            .history_events
                            .iter()
                            .map(|e| {
                                serde_json::from_str::<Value>(e.get()).expect("json")["event_type"]
                                    .as_str()
                                    .unwrap_or("")
                                    .to_string()
                            })
                            .collect();
                        let held = Held {
                            task_id: t.task_id.clone(),
                            kind: TaskKind::Workflow,
                            attempt: t.workflow_task_attempt,
                            attempt_id: String::new(),
                            owner: worker.into(),
                            workflow_id: t.workflow_id.clone(),
                            history,
                        };
                        self.leased(held.clone(), queue, &t.task_queue);
                        self.complete_workflow_task(&engine, &held).await;
                    }
                    while let Ok(Some(t)) =
                        engine.poll_activity_task(&self.poll(worker, queue)).await
                    {
                        let held = Held {
                            task_id: t.task_id.clone(),
                            kind: TaskKind::Activity,
                            attempt: t.attempt_number,
                            attempt_id: t.activity_attempt_id.clone(),
                            owner: worker.into(),
                            workflow_id: t.workflow_id.clone(),
                            history: vec![],
                        };
                        self.leased(held.clone(), queue, &t.task_queue);
                        let r = engine
                            .complete_activity_task(
                                NS,
                                &t.task_id,
                                &t.activity_attempt_id,
                                worker,
                                &json!("r"),
                            )
                            .await
                            .map(|_| ());
                        self.settle(&held, &r, true);
                    }
                }
            }
        }
        let mut stuck = Vec::new();
        for id in self.started.keys() {
            if let Ok(v) = self.engines[0].describe(NS, id, None).await {
                if v.run.status != RunStatus::Completed {
                    stuck.push(format!(
                        "{id}: {:?} workflow_task={:?} activities={:?}",
                        v.run.status, v.run.workflow_task, v.run.open_activities
                    ));
                }
            }
        }
        let tasks = self.task_records().await;
        panic!("not every started workflow completed: {stuck:#?}\ntasks: {tasks:#?}");
    }
}

/// Runs one scenario against engines on `stores` (one engine per handle; handles of one
/// store shared by several engines model several nodes).
pub async fn check_engine_model(stores: Vec<Arc<dyn KvStore>>, scenario: &[Step]) {
    run_model(stores, None, scenario).await
}

/// Runs one scenario on one engine over a reopenable store, where every `Restart` step
/// crashes the store (drops it without shutdown) and reopens it with `reopen`: every
/// invariant, and every lease the model predicts, must hold across the crash. `store` is
/// the first opening.
pub async fn check_engine_model_across_crashes(
    store: Arc<dyn KvStore>,
    reopen: Reopen,
    scenario: &[Step],
) {
    run_model(vec![store], Some(reopen), scenario).await
}

async fn run_model(stores: Vec<Arc<dyn KvStore>>, reopen: Option<Reopen>, scenario: &[Step]) {
    let clock = ManualClock::new(1_780_000_000_000);
    let mut engines = Vec::new();
    for store in &stores {
        engines.push(open(store.clone(), &clock).await);
    }
    let mut model = Model {
        clock,
        reopen,
        engines,
        stores,
        held: Vec::new(),
        latest: HashMap::new(),
        started: BTreeMap::new(),
        completed: HashSet::new(),
        parked: Vec::new(),
    };
    for step in scenario {
        model.step(step).await;
    }
    model.drain().await;
    for engine in &model.engines {
        engine.stop().await;
    }
}
