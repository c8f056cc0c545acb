//! Per-queue task counts (ready, leased) on both kinds of store: durable counter rows on
//! a multi-node store (the simulated store), in-memory counts rebuilt at open on a
//! single-node one (the memory store). The numbers are the same on both, through every
//! task transition, across a reopen, and for the lease admission.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use keel_engine::clock::ManualClock;
use keel_engine::keys::prefix;
use keel_engine::model::TaskKind;
use keel_engine::storage::memory::MemoryStore;
use keel_engine::storage::simulated::{FaultConfig, SimulatedStore};
use keel_engine::storage::KvStore;
use keel_engine::{Engine, EngineConfig};
use serde_json::{json, Value};
use support::*;

const LEASE: Duration = Duration::from_secs(10);
const BACKOFF_S: u64 = 30;

/// The two kinds of store, by name: `memory` (single-node), `simulated` (multi-node).
fn stores() -> Vec<(&'static str, Arc<dyn KvStore>)> {
    vec![
        ("memory", Arc::new(MemoryStore::new()) as Arc<dyn KvStore>),
        (
            "simulated",
            Arc::new(SimulatedStore::new(FaultConfig::none())) as Arc<dyn KvStore>,
        ),
    ]
}

async fn open_on(
    store: &Arc<dyn KvStore>,
    clock: &ManualClock,
    max_leases_per_queue: Option<u64>,
) -> Engine {
    let config = EngineConfig {
        workflow_task_lease: LEASE,
        activity_task_lease: LEASE,
        max_leases_per_queue,
        ..EngineConfig::default()
    };
    open_with_config(store.clone(), clock, config, &[]).await
}

/// `(ready, leased)` of `QUEUE` for `kind`.
async fn counts(engine: &Engine, kind: TaskKind) -> (u64, u64) {
    engine
        .queue_counts(NS)
        .await
        .expect("queue counts")
        .iter()
        .find(|c| c.queue == QUEUE && c.kind == kind)
        .map_or((0, 0), |c| (c.ready, c.leased))
}

/// Waits (real-time deadline) until `kind`'s counts are `want` (a timer fires on the
/// engine's own task after the clock moved).
async fn wait_counts(engine: &Engine, kind: TaskKind, want: (u64, u64), store: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = counts(engine, kind).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{store}: {kind:?} counts stayed {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How many queue-counter rows the store holds.
async fn counter_rows(store: &Arc<dyn KvStore>) -> usize {
    rows_with_prefix(store, prefix::QUEUE_COUNTER).await
}

fn schedule_activity() -> Value {
    json!({"type": "schedule_activity", "activity_type": "act",
           "arguments": {"codec": "avro", "blob": ARGS}, "queue": QUEUE,
           "retry_policy": {"max_attempts": 5, "backoff_seconds": [BACKOFF_S]}})
}

#[tokio::test]
async fn counts_follow_ready_lease_complete_lease_expiry_and_backoff_on_both_store_kinds() {
    for (name, store) in stores() {
        let clock = ManualClock::new(START);
        let engine = open_on(&store, &clock, None).await;
        use TaskKind::{Activity, Workflow};

        engine
            .start_workflow(NS, start("counted", "t"))
            .await
            .expect("start");
        assert_eq!(counts(&engine, Workflow).await, (1, 0), "{name}: ready");
        let wf = poll_wf(&engine).await.expect("workflow task");
        assert_eq!(counts(&engine, Workflow).await, (0, 1), "{name}: leased");
        engine
            .complete_workflow_task(
                NS,
                &wf.task_id,
                WORKER,
                wf.workflow_task_attempt,
                &[schedule_activity()],
            )
            .await
            .expect("workflow task completes");
        assert_eq!(counts(&engine, Workflow).await, (0, 0), "{name}: completed");
        assert_eq!(counts(&engine, Activity).await, (1, 0), "{name}: scheduled");

        // A lease that lapses makes the task ready again.
        poll_act(&engine).await.expect("activity task");
        assert_eq!(counts(&engine, Activity).await, (0, 1), "{name}: leased");
        clock.advance(LEASE + Duration::from_secs(1));
        wait_counts(&engine, Activity, (1, 0), name).await;

        // A failed attempt waits out its backoff, counted neither ready nor leased.
        let act = poll_act(&engine).await.expect("activity task again");
        assert_eq!(
            counts(&engine, Activity).await,
            (0, 1),
            "{name}: leased again"
        );
        engine
            .fail_activity_task(
                NS,
                &act.task_id,
                &act.activity_attempt_id,
                WORKER,
                &json!({"message": "boom", "type": "Boom"}),
            )
            .await
            .expect("failure recorded");
        assert_eq!(counts(&engine, Activity).await, (0, 0), "{name}: backoff");
        clock.advance(Duration::from_secs(BACKOFF_S + 1));
        wait_counts(&engine, Activity, (1, 0), name).await;

        // Completed: nothing left of the activity; the workflow has a task again.
        let act = poll_act(&engine)
            .await
            .expect("activity task after backoff");
        complete_activity(&engine, &act, json!({"codec": "avro", "blob": ARGS})).await;
        assert_eq!(counts(&engine, Activity).await, (0, 0), "{name}: done");
        assert_eq!(counts(&engine, Workflow).await, (1, 0), "{name}: next task");
        engine.stop().await;
    }
}

#[tokio::test]
async fn a_single_node_store_holds_no_counter_rows_and_a_multi_node_store_does() {
    for (name, store) in stores() {
        let clock = ManualClock::new(START);
        let engine = open_on(&store, &clock, None).await;
        engine
            .start_workflow(NS, start("rows", "t"))
            .await
            .expect("start");
        let wf = poll_wf(&engine).await.expect("workflow task");
        engine
            .complete_workflow_task(
                NS,
                &wf.task_id,
                WORKER,
                wf.workflow_task_attempt,
                &[schedule_activity()],
            )
            .await
            .expect("workflow task completes");
        poll_act(&engine).await.expect("activity task");
        let rows = counter_rows(&store).await;
        if store.capabilities().multi_node {
            assert!(rows > 0, "{name}: the counts are durable rows");
        } else {
            assert_eq!(rows, 0, "{name}: no counter row written");
        }
        engine.stop().await;
    }
}

#[tokio::test]
async fn counts_survive_a_reopen_on_both_store_kinds() {
    for (name, store) in stores() {
        let clock = ManualClock::new(START);
        let engine = open_on(&store, &clock, None).await;
        for id in ["r1", "r2", "r3"] {
            engine
                .start_workflow(NS, start(id, "t"))
                .await
                .expect("start");
        }
        poll_wf(&engine).await.expect("workflow task");
        let before = engine.queue_counts(NS).await.expect("counts");
        assert_eq!(counts(&engine, TaskKind::Workflow).await, (2, 1), "{name}");
        engine.stop().await;

        let reopened = open_on(&store, &clock, None).await;
        assert_eq!(
            reopened.queue_counts(NS).await.expect("counts"),
            before,
            "{name}: the same numbers after a reopen"
        );
        reopened.stop().await;
    }
}

#[tokio::test]
async fn the_lease_limit_refuses_at_the_limit_on_both_store_kinds() {
    for (name, store) in stores() {
        let clock = ManualClock::new(START);
        let engine = open_on(&store, &clock, Some(1)).await;
        for id in ["l1", "l2"] {
            engine
                .start_workflow(NS, start(id, "t"))
                .await
                .expect("start");
        }
        let first = poll_wf(&engine).await.expect("the first lease is admitted");
        let refused = engine
            .poll_workflow_task(&probe())
            .await
            .expect_err("a second lease is over the limit");
        assert_eq!(reason(refused), "queue_lease_limit_reached", "{name}");
        assert_eq!(counts(&engine, TaskKind::Workflow).await, (1, 1), "{name}");

        // The first completes: its lease leaves the count, and the next is admitted.
        complete_with_result(&engine, &first).await;
        poll_wf(&engine)
            .await
            .unwrap_or_else(|| panic!("{name}: admitted under the limit"));
        engine.stop().await;
    }
}
