//! Two engines on one shared store, as two Keel nodes on one FoundationDB cluster: a task
//! made ready through one reaches a poller parked on the other, timers fire on the one
//! node holding the scheduler lease (and on a survivor once the holder dies), and a lease
//! taken on a node that dies expires and is redelivered by the other.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use keel_engine::clock::{Clock, ManualClock};
use keel_engine::cluster::ClusterConfig;
use keel_engine::model::RunStatus;
use keel_engine::storage::simulated::{FaultConfig, SimulatedStore};
use keel_engine::storage::KvStore;
use keel_engine::workflow::{Poll, StartWorkflow};
use keel_engine::{Engine, EngineConfig};
use serde_json::json;
use support::*;

const TASK_LEASE: Duration = Duration::from_secs(5);
const NODE_LEASE: Duration = Duration::from_secs(10);

struct Cluster {
    clock: ManualClock,
    a: Engine,
    b: Engine,
}

async fn node(store: &SimulatedStore, clock: &ManualClock, id: &str) -> Engine {
    let config = EngineConfig {
        workflow_task_lease: TASK_LEASE,
        activity_task_lease: TASK_LEASE,
        cluster: Some(ClusterConfig {
            lease: NODE_LEASE,
            heartbeat: Duration::from_secs(2),
            ..ClusterConfig::new(id)
        }),
        ..EngineConfig::default()
    };
    Engine::open(
        Arc::new(store.clone()) as Arc<dyn KvStore>,
        Arc::new(clock.clone()) as Arc<dyn Clock>,
        config,
    )
    .await
    .expect("node opens")
}

/// Nodes `a` and `b` on one simulated store with injected faults; `WORKER` registered.
async fn cluster(seed: u64) -> Cluster {
    let store = SimulatedStore::new(FaultConfig::none());
    let clock = ManualClock::new(START);
    let a = node(&store, &clock, "a").await;
    let b = node(&store, &clock, "b").await;
    register(&a, WORKER, &[]).await;
    store.set_faults(FaultConfig {
        max_delay: Duration::ZERO,
        ..FaultConfig::chaos(seed)
    });
    Cluster { clock, a, b }
}

/// Waits (real time, with a deadline) until `check` holds.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Which node fires timers, once exactly one does.
async fn holder(c: &Cluster) -> (&Engine, &Engine) {
    eventually("one node holds the scheduler lease", async || {
        c.a.fires_timers() != c.b.fires_timers()
    })
    .await;
    if c.a.fires_timers() {
        (&c.a, &c.b)
    } else {
        (&c.b, &c.a)
    }
}

fn long_poll() -> Poll {
    Poll {
        timeout: Duration::from_secs(3600),
        ..probe()
    }
}

async fn status(engine: &Engine, id: &str) -> RunStatus {
    engine
        .describe(NS, id, None)
        .await
        .expect("describes")
        .run
        .status
}

#[tokio::test]
async fn a_task_made_ready_on_one_node_reaches_a_poller_parked_on_the_other() {
    let c = cluster(1).await;
    let parked_on_b = {
        let b = c.b.clone();
        tokio::spawn(async move { b.poll_workflow_task(&long_poll()).await })
    };
    eventually("the poll is parked on b", async || {
        c.b.queue_stats(NS, QUEUE, keel_engine::model::TaskKind::Workflow)
            .pollers
            == 1
    })
    .await;
    start_with_retries(&c.a, start("cross-node", "wf")).await;
    let task = tokio::time::timeout(Duration::from_secs(10), parked_on_b)
        .await
        .expect("the parked poll on b answers")
        .expect("poll task joins")
        .expect("poll succeeds")
        .expect("a task, not an empty poll");
    assert_eq!(task.workflow_id, "cross-node");
    assert!(poll_wf(&c.a).await.is_none(), "leased once, not twice");
}

#[tokio::test]
async fn timers_fire_on_the_lease_holder_and_on_a_survivor_once_the_holder_dies() {
    let c = cluster(2).await;
    let (holder, other) = holder(&c).await;
    assert!(!other.fires_timers(), "only one node fires");
    eventually("both nodes are listed, one of them firing", async || {
        let nodes = other
            .cluster_nodes()
            .await
            .expect("nodes read")
            .expect("a cluster");
        nodes.len() == 2 && nodes.iter().filter(|n| n.scheduler).count() == 1
    })
    .await;
    // A run deadline written through the node that does not fire timers.
    start_with_retries(
        other,
        StartWorkflow {
            run_timeout_seconds: Some(5),
            ..start("deadline-1", "wf")
        },
    )
    .await;
    c.clock.advance(Duration::from_secs(6));
    eventually("the holder fires the other node's timer", async || {
        status(holder, "deadline-1").await == RunStatus::Failed
    })
    .await;

    // The holder dies without giving up its lease; the survivor waits for it to lapse.
    holder.shutdown();
    start_with_retries(
        other,
        StartWorkflow {
            run_timeout_seconds: Some(5),
            ..start("deadline-2", "wf")
        },
    )
    .await;
    c.clock.advance(Duration::from_secs(6));
    assert!(
        !other.fires_timers(),
        "the dead holder's lease has not lapsed yet"
    );
    c.clock.advance(NODE_LEASE);
    eventually("the survivor takes the lease and fires", async || {
        status(other, "deadline-2").await == RunStatus::Failed
    })
    .await;
    assert!(other.fires_timers());
}

#[tokio::test]
async fn a_lease_taken_on_a_node_that_dies_expires_and_is_redelivered_by_the_other() {
    let c = cluster(3).await;
    start_with_retries(&c.a, start("orphan", "wf")).await;
    let first = poll_wf(&c.a).await.expect("leased on a");
    c.a.shutdown();
    c.clock
        .advance(TASK_LEASE + NODE_LEASE + Duration::from_secs(1));
    let again = {
        let b = c.b.clone();
        tokio::time::timeout(Duration::from_secs(10), async move {
            b.poll_workflow_task(&long_poll()).await
        })
        .await
        .expect("b gets the task back")
        .expect("poll succeeds")
        .expect("a task")
    };
    assert_eq!(again.task_id, first.task_id);
    assert_eq!(again.workflow_task_attempt, first.workflow_task_attempt + 1);
    let complete =
        [json!({"type": "complete_workflow", "result": {"codec": "avro", "blob": ARGS}})];
    let refused =
        c.b.complete_workflow_task(
            NS,
            &first.task_id,
            WORKER,
            first.workflow_task_attempt,
            &complete,
        )
        .await
        .expect_err("the dead node's lease is stale on every node");
    assert_eq!(reason(refused), "workflow_task_attempt_mismatch");
    c.b.complete_workflow_task(
        NS,
        &again.task_id,
        WORKER,
        again.workflow_task_attempt,
        &complete,
    )
    .await
    .expect("the redelivered task completes");
    assert_eq!(status(&c.b, "orphan").await, RunStatus::Completed);
}

/// Starts `req`, retrying an ambiguous failure (as a client does) until it is recorded.
async fn start_with_retries(engine: &Engine, req: StartWorkflow) {
    let req = StartWorkflow {
        duplicate_policy: keel_engine::workflow::DuplicatePolicy::UseExisting,
        ..req
    };
    for _ in 0..20 {
        if engine.start_workflow(NS, req.clone()).await.is_ok() {
            return;
        }
    }
    panic!("start never succeeded");
}
