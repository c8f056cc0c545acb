//! Lease-scoped timers (a task's lease timer, and the start-to-close and heartbeat
//! timeouts of the activity attempt it holds): durable timer rows on a multi-node store
//! (the simulated store), in memory on a single-node one (the memory store), re-armed
//! from the leased task rows at open. Either way a lapsed lease makes its task ready
//! again, also across a restart and after heartbeats renewed it, an attempt times out
//! also across a restart, and a lease that ends leaves no timer behind.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use keel_engine::clock::ManualClock;
use keel_engine::keys::prefix;
use keel_engine::storage::memory::MemoryStore;
use keel_engine::storage::simulated::{FaultConfig, SimulatedStore};
use keel_engine::storage::KvStore;
use keel_engine::transfer::{self, ExportRequest};
use keel_engine::workflow::WorkflowTaskView;
use keel_engine::{Engine, EngineConfig};
use serde_json::json;
use support::*;

const LEASE: Duration = Duration::from_secs(10);

async fn open_on(store: &Arc<dyn KvStore>, clock: &ManualClock) -> Engine {
    let config = EngineConfig {
        workflow_task_lease: LEASE,
        activity_task_lease: LEASE,
        ..EngineConfig::default()
    };
    open_with_config(store.clone(), clock, config, &[]).await
}

fn memory_store() -> Arc<dyn KvStore> {
    Arc::new(MemoryStore::new())
}

fn simulated_store() -> Arc<dyn KvStore> {
    Arc::new(SimulatedStore::new(FaultConfig::none()))
}

async fn timer_rows(store: &Arc<dyn KvStore>) -> usize {
    rows_with_prefix(store, prefix::TIMER).await
}

/// An engine on `store` with workflow `id` started and its first task leased.
async fn leased_on(
    store: &Arc<dyn KvStore>,
    clock: &ManualClock,
    id: &str,
) -> (Engine, WorkflowTaskView) {
    let engine = open_on(store, clock).await;
    engine
        .start_workflow(NS, start(id, "t"))
        .await
        .expect("start");
    let task = poll_wf(&engine).await.expect("leased");
    (engine, task)
}

/// Fires what is due and returns the workflow task polled then, if any.
async fn settle_and_poll(engine: &Engine) -> Option<WorkflowTaskView> {
    engine.fire_due_timers(100).await.expect("timers fire");
    poll_wf(engine).await
}

#[tokio::test]
async fn a_single_node_lease_is_timed_in_memory_and_a_multi_node_lease_by_a_timer_row() {
    for (name, store, rows, in_memory) in [
        ("memory", memory_store(), 0, 1),
        ("simulated", simulated_store(), 1, 0),
    ] {
        let clock = ManualClock::new(START);
        let (engine, first) = leased_on(&store, &clock, "timed").await;
        assert_eq!(timer_rows(&store).await, rows, "{name}: timer rows");
        assert_eq!(engine.in_memory_timers(), in_memory, "{name}: in memory");

        clock.advance(LEASE + Duration::from_secs(1));
        let again = settle_and_poll(&engine)
            .await
            .expect("the lapsed task again");
        assert_eq!(again.task_id, first.task_id, "{name}");
        assert_eq!(again.workflow_task_attempt, 2, "{name}");
        engine.stop().await;
    }
}

#[tokio::test]
async fn a_lease_taken_before_a_restart_lapses_after_it() {
    let store = memory_store();
    let clock = ManualClock::new(START);
    let (engine, first) = leased_on(&store, &clock, "restarted").await;
    engine.stop().await;

    let engine = open_on(&store, &clock).await;
    assert_eq!(engine.in_memory_timers(), 1, "re-armed from the task row");
    assert!(settle_and_poll(&engine).await.is_none(), "still leased");
    clock.advance(LEASE + Duration::from_secs(1));
    let again = settle_and_poll(&engine)
        .await
        .expect("lapsed after the restart");
    assert_eq!(again.task_id, first.task_id);
    assert_eq!(again.workflow_task_attempt, 2);
    engine.stop().await;
}

#[tokio::test]
async fn a_lease_renewed_before_a_restart_lapses_at_its_renewed_expiry() {
    let store = memory_store();
    let clock = ManualClock::new(START);
    let (engine, task) = leased_on(&store, &clock, "renewed").await;
    clock.advance(Duration::from_secs(8));
    engine
        .heartbeat_workflow_task(NS, &task.task_id, WORKER, 1)
        .await
        .expect("renews to 18 s");
    engine.stop().await;

    let engine = open_on(&store, &clock).await;
    clock.advance(Duration::from_secs(4)); // 12 s: past the first expiry only
    assert!(
        settle_and_poll(&engine).await.is_none(),
        "renewed lease holds"
    );
    assert_eq!(
        engine.in_memory_timers(),
        1,
        "re-armed at the renewed expiry"
    );
    clock.advance(Duration::from_secs(7)); // 19 s
    let again = settle_and_poll(&engine).await.expect("lapsed at 18 s");
    assert_eq!(again.workflow_task_attempt, 2);
    engine.stop().await;
}

/// An activity whose attempts time out before its lease (10 s) lapses.
fn schedule_timed_activity() -> serde_json::Value {
    json!({"type": "schedule_activity", "activity_type": "act",
        "arguments": {"codec": "avro", "blob": ARGS}, "queue": QUEUE,
        "start_to_close_timeout": 5, "heartbeat_timeout": 3})
}

/// An engine on `store` with workflow `id` started and its timed activity leased.
async fn activity_leased_on(store: &Arc<dyn KvStore>, clock: &ManualClock, id: &str) -> Engine {
    let (engine, wf) = leased_on(store, clock, id).await;
    complete(&engine, &wf, vec![schedule_timed_activity()]).await;
    poll_act(&engine).await.expect("activity leased");
    engine
}

#[tokio::test]
async fn an_attempts_timeouts_are_in_memory_on_a_single_node_store_and_timer_rows_on_a_multi_node_one(
) {
    for (name, store, rows, in_memory) in [
        ("memory", memory_store(), 0, 3),
        ("simulated", simulated_store(), 3, 0),
    ] {
        let clock = ManualClock::new(START);
        let engine = activity_leased_on(&store, &clock, "attempt").await;
        assert_eq!(timer_rows(&store).await, rows, "{name}: timer rows");
        assert_eq!(engine.in_memory_timers(), in_memory, "{name}: in memory");

        clock.advance(Duration::from_secs(4));
        let woken = settle_and_poll(&engine)
            .await
            .unwrap_or_else(|| panic!("{name}: the heartbeat timeout wakes the workflow"));
        let last = events(&woken).pop().expect("events");
        assert_eq!(last["event_type"], "ActivityTimedOut", "{name}");
        assert_eq!(last["payload"]["timeout_kind"], "heartbeat", "{name}");
        assert_eq!(
            timer_rows(&store).await + engine.in_memory_timers(),
            1,
            "{name}: the workflow task's lease timer only"
        );
        engine.stop().await;
    }
}

#[tokio::test]
async fn an_attempt_leased_before_a_restart_times_out_after_it() {
    let store = memory_store();
    let clock = ManualClock::new(START);
    let engine = activity_leased_on(&store, &clock, "restarted").await;
    engine.stop().await;

    let engine = open_on(&store, &clock).await;
    assert_eq!(
        engine.in_memory_timers(),
        3,
        "the lease, start-to-close and heartbeat re-armed from the task row"
    );
    clock.advance(Duration::from_secs(2));
    assert!(settle_and_poll(&engine).await.is_none(), "still in time");
    clock.advance(Duration::from_secs(2));
    let woken = settle_and_poll(&engine)
        .await
        .expect("the heartbeat timeout after the restart");
    let last = events(&woken).pop().expect("events");
    assert_eq!(last["event_type"], "ActivityTimedOut");
    assert_eq!(last["payload"]["timeout_kind"], "heartbeat");
    engine.stop().await;
}

#[tokio::test]
async fn a_lease_that_ends_by_a_report_leaves_no_timer_armed() {
    let store = memory_store();
    let clock = ManualClock::new(START);
    let (engine, wf) = leased_on(&store, &clock, "ended").await;
    complete(&engine, &wf, vec![schedule_timed_activity()]).await;
    assert_eq!(engine.in_memory_timers(), 0, "workflow task completed");

    let act = poll_act(&engine).await.expect("activity leased");
    assert_eq!(
        engine.in_memory_timers(),
        3,
        "the lease, start-to-close and heartbeat"
    );
    complete_activity(&engine, &act, json!(1)).await;
    assert_eq!(engine.in_memory_timers(), 0, "activity completed");

    let wf = poll_wf(&engine).await.expect("next workflow task");
    complete_with_result(&engine, &wf).await;
    assert_eq!(engine.in_memory_timers(), 0, "run closed");
    assert_eq!(timer_rows(&store).await, 0, "and no row was ever written");
    engine.stop().await;
}

/// Exports the namespace of `source` and imports it into a new multi-node store.
async fn moved_to_a_multi_node_store(source: &Arc<dyn KvStore>) -> Arc<dyn KvStore> {
    let mut file = Vec::new();
    transfer::export(
        source.as_ref(),
        &ExportRequest {
            namespaces: vec![NS.to_string()],
            source: "memory:test".into(),
            now_ms: START,
        },
        &mut file,
    )
    .await
    .expect("export");
    let target = simulated_store();
    let verified = transfer::verify(&mut &file[..]).expect("verify");
    transfer::import(target.as_ref(), &mut &file[..], &verified)
        .await
        .expect("import");
    target
}

#[tokio::test]
async fn an_import_into_a_multi_node_store_writes_the_lease_timers_a_single_node_source_kept_in_memory(
) {
    let source = memory_store();
    let clock = ManualClock::new(START);
    let (engine, first) = leased_on(&source, &clock, "moved").await;
    engine.stop().await;

    let target = moved_to_a_multi_node_store(&source).await;
    assert_eq!(timer_rows(&target).await, 1, "the lease's timer row");
    let engine = open_on(&target, &clock).await;
    clock.advance(LEASE + Duration::from_secs(1));
    let again = settle_and_poll(&engine)
        .await
        .expect("lapsed on the target");
    assert_eq!(again.task_id, first.task_id);
    engine.stop().await;
}

#[tokio::test]
async fn an_import_into_a_multi_node_store_writes_the_timeout_rows_of_a_leased_attempt() {
    let source = memory_store();
    let clock = ManualClock::new(START);
    activity_leased_on(&source, &clock, "moved")
        .await
        .stop()
        .await;

    let target = moved_to_a_multi_node_store(&source).await;
    assert_eq!(
        timer_rows(&target).await,
        3,
        "the lease's, start-to-close and heartbeat timer rows"
    );
    let engine = open_on(&target, &clock).await;
    clock.advance(Duration::from_secs(4));
    let woken = settle_and_poll(&engine)
        .await
        .expect("the heartbeat timeout on the target");
    let last = events(&woken).pop().expect("events");
    assert_eq!(last["payload"]["timeout_kind"], "heartbeat");
    engine.stop().await;
}
