//! A task lease commits with relaxed durability, so an OS crash can lose it. These tests
//! lose one on purpose (the store restored to its state before the lease, an engine
//! restart) and check that it then behaves as an expired lease: reports through it are
//! refused and the task is delivered again, exactly once to completion.

use crate::support;

use std::time::Duration;

use keel_engine::storage::{KeyRange, KeyValue, KvStore, ReadOptions};
use serde_json::json;
use support::*;

const LEASE: Duration = Duration::from_secs(60);

/// Every pair of the store.
async fn snapshot(store: &dyn KvStore) -> Vec<KeyValue> {
    let mut txn = store.begin().await.expect("begin");
    txn.get_range(&KeyRange::prefix(b""), ReadOptions::limit(100_000))
        .await
        .expect("read everything")
}

/// Puts the store back to `pairs`, as an OS crash that lost every later write would.
async fn restore(store: &dyn KvStore, pairs: &[KeyValue]) {
    let mut txn = store.begin().await.expect("begin");
    txn.clear_range(&KeyRange::prefix(b""));
    for (key, value) in pairs {
        txn.set(key, value);
    }
    txn.commit().await.expect("restore commits");
}

#[tokio::test]
async fn a_lost_lease_is_an_expired_lease_reports_through_it_are_refused_and_the_task_comes_back() {
    let h = harness(LEASE, &[]).await;
    h.engine
        .start_workflow(NS, start("lost-lease", "t"))
        .await
        .expect("start");
    let before_lease = snapshot(&h.store).await;
    let lost = poll_wf(&h.engine).await.expect("leased to w1");

    // The crash: the lease's write is gone, the engine restarts on what was synced.
    h.engine.stop().await;
    restore(&h.store, &before_lease).await;
    let engine = open(&h.store, &h.clock, LEASE, &[]).await;
    let complete =
        [json!({"type": "complete_workflow", "result": {"codec": "avro", "blob": ARGS}})];

    let refused = engine
        .complete_workflow_task(
            NS,
            &lost.task_id,
            WORKER,
            lost.workflow_task_attempt,
            &complete,
        )
        .await
        .expect_err("the task is not leased any more");
    assert_eq!(reason(refused), "task_not_leased");

    // Delivered again, here to another worker, at the attempt the lost lease had.
    register(&engine, "w2", &[]).await;
    let again = engine
        .poll_workflow_task(&keel_engine::workflow::Poll {
            worker_id: "w2".into(),
            ..probe()
        })
        .await
        .expect("poll")
        .expect("the task is ready again");
    assert_eq!(again.task_id, lost.task_id);
    assert_eq!(again.workflow_task_attempt, lost.workflow_task_attempt);

    // Same task and attempt number, other owner: the lost lease still cannot report.
    let refused = engine
        .complete_workflow_task(
            NS,
            &lost.task_id,
            WORKER,
            lost.workflow_task_attempt,
            &complete,
        )
        .await
        .expect_err("w1's lease is gone");
    assert_eq!(reason(refused), "lease_owner_mismatch");
    engine
        .complete_workflow_task(
            NS,
            &again.task_id,
            "w2",
            again.workflow_task_attempt,
            &complete,
        )
        .await
        .expect("the live lease completes");
    let run = engine
        .describe(NS, "lost-lease", None)
        .await
        .expect("describe")
        .run;
    assert_eq!(run.status.as_str(), "completed");
}
