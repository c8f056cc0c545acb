//! Engine behaviour over the in-memory reference store with an injected clock.

use crate::support;

use std::time::Duration;

use keel_engine::model::RunStatus;
use keel_engine::workflow::{DuplicatePolicy, StartWorkflow};
use serde_json::{json, Value};
use support::*;

const LEASE: Duration = Duration::from_secs(10);

async fn harness() -> Harness {
    support::harness(LEASE, &[]).await
}

fn start_request(id: &str) -> StartWorkflow {
    StartWorkflow {
        execution_timeout_seconds: Some(3600),
        run_timeout_seconds: Some(600),
        ..start(id, "wf")
    }
}

fn schedule(activity: &str) -> Value {
    json!({"type": "schedule_activity", "activity_type": activity, "arguments": {"codec": "avro", "blob": "AA=="}, "queue": QUEUE})
}

#[tokio::test]
async fn started_workflow_task_carries_workflow_started_history() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("a"))
        .await
        .expect("starts");
    let task = poll_wf(&h.engine).await.expect("a task is ready");
    assert_eq!(task.workflow_task_attempt, 1);
    assert_eq!(event_types(&task), ["WorkflowStarted"]);
    assert_eq!(task.arguments, json!({"codec": "avro", "blob": "AA=="}));
    assert!(
        poll_wf(&h.engine).await.is_none(),
        "one workflow task per run"
    );
}

#[tokio::test]
async fn duplicate_start_is_rejected_and_use_existing_returns_the_open_run() {
    let h = harness().await;
    let first = h
        .engine
        .start_workflow(NS, start_request("a"))
        .await
        .expect("starts");
    let again = h
        .engine
        .start_workflow(NS, start_request("a"))
        .await
        .expect_err("duplicate");
    assert_eq!(reason(again), "duplicate_not_allowed");
    let existing = h
        .engine
        .start_workflow(
            NS,
            StartWorkflow {
                duplicate_policy: DuplicatePolicy::UseExisting,
                ..start_request("a")
            },
        )
        .await
        .expect("returns existing");
    assert!(!existing.started_new);
    assert_eq!(existing.run.run_id, first.run.run_id);
}

#[tokio::test]
async fn stale_lease_cannot_complete_a_workflow_task() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("a"))
        .await
        .expect("starts");
    let task = poll_wf(&h.engine).await.expect("leased");
    let done = [json!({"type": "complete_workflow", "result": null})];
    let wrong_owner = h
        .engine
        .complete_workflow_task(NS, &task.task_id, "w2", 1, &done)
        .await
        .expect_err("not owner");
    assert_eq!(reason(wrong_owner), "lease_owner_mismatch");
    let wrong_attempt = h
        .engine
        .complete_workflow_task(NS, &task.task_id, "w1", 2, &done)
        .await
        .expect_err("stale attempt");
    assert_eq!(reason(wrong_attempt), "workflow_task_attempt_mismatch");
    let missing = h
        .engine
        .complete_workflow_task(NS, "nope", "w1", 1, &done)
        .await
        .expect_err("unknown task");
    assert_eq!(reason(missing), "task_not_found");
    h.engine
        .complete_workflow_task(NS, &task.task_id, "w1", 1, &done)
        .await
        .expect("owner completes");
    assert_eq!(
        h.engine
            .describe(NS, "a", None)
            .await
            .expect("describes")
            .run
            .status,
        RunStatus::Completed
    );
}

#[tokio::test]
async fn expired_lease_returns_the_task_with_the_next_attempt_and_fences_the_old_one() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("a"))
        .await
        .expect("starts");
    let first = poll_wf(&h.engine).await.expect("leased");
    h.clock.advance(Duration::from_secs(11));
    let second = wait_wf(&h.engine).await;
    assert_eq!(second.task_id, first.task_id);
    assert_eq!(second.workflow_task_attempt, 2);
    let done = [json!({"type": "complete_workflow", "result": null})];
    let stale = h
        .engine
        .complete_workflow_task(NS, &first.task_id, "w1", 1, &done)
        .await
        .expect_err("fenced");
    assert_eq!(reason(stale), "workflow_task_attempt_mismatch");
    h.engine
        .complete_workflow_task(NS, &second.task_id, "w1", 2, &done)
        .await
        .expect("current lease completes");
}

#[tokio::test]
async fn heartbeat_keeps_a_lease_alive_past_its_original_expiry() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("a"))
        .await
        .expect("starts");
    let task = poll_wf(&h.engine).await.expect("leased");
    h.clock.advance(Duration::from_secs(8));
    h.engine
        .heartbeat_workflow_task(NS, &task.task_id, "w1", 1)
        .await
        .expect("renews");
    h.clock.advance(Duration::from_secs(8));
    let done = [json!({"type": "complete_workflow", "result": null})];
    h.engine
        .complete_workflow_task(NS, &task.task_id, "w1", 1, &done)
        .await
        .expect("still leased after 16 s");
}

#[tokio::test]
async fn activity_result_during_a_leased_workflow_task_yields_one_next_task() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("a"))
        .await
        .expect("starts");
    let wt = poll_wf(&h.engine).await.expect("leased");
    h.engine
        .complete_workflow_task(NS, &wt.task_id, "w1", 1, &[schedule("x"), schedule("y")])
        .await
        .expect("schedules");
    let ax = poll_act(&h.engine).await.expect("activity x");
    let ay = poll_act(&h.engine).await.expect("activity y");
    h.engine
        .complete_activity_task(NS, &ax.task_id, &ax.activity_attempt_id, "w1", &json!("rx"))
        .await
        .expect("x done");
    let wt2 = poll_wf(&h.engine).await.expect("woken by x");
    // y completes while the workflow task is leased: no second task appears now...
    h.engine
        .complete_activity_task(NS, &ay.task_id, &ay.activity_attempt_id, "w1", &json!("ry"))
        .await
        .expect("y done");
    assert!(
        poll_wf(&h.engine).await.is_none(),
        "at most one workflow task per run"
    );
    // ...but closing the task (the SDK's empty completion) creates exactly one.
    let waiting = json!({"message": "waiting", "type": "WorkflowTaskWaitingForHistory"});
    let out = h
        .engine
        .fail_workflow_task(NS, &wt2.task_id, "w1", 1, &waiting)
        .await
        .expect("no-op close");
    assert!(out.next_task_id.is_some());
    let wt3 = poll_wf(&h.engine).await.expect("next task");
    assert_eq!(
        event_types(&wt3).last().map(String::as_str),
        Some("ActivityCompleted")
    );
    assert_eq!(
        event_types(&wt3).len(),
        5,
        "started, 2 scheduled, 2 completed"
    );
}

#[tokio::test]
async fn waiting_for_history_with_nothing_new_leaves_the_run_waiting() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("a"))
        .await
        .expect("starts");
    let wt = poll_wf(&h.engine).await.expect("leased");
    let waiting = json!({"message": "waiting", "type": "WorkflowTaskWaitingForHistory"});
    let out = h
        .engine
        .fail_workflow_task(NS, &wt.task_id, "w1", 1, &waiting)
        .await
        .expect("no-op close");
    assert_eq!(out.next_task_id, None);
    assert!(poll_wf(&h.engine).await.is_none());
    assert_eq!(
        h.engine
            .describe(NS, "a", None)
            .await
            .expect("describes")
            .run
            .status,
        RunStatus::Waiting
    );
}

#[tokio::test]
async fn genuine_workflow_task_failure_is_retried_after_backoff() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("a"))
        .await
        .expect("starts");
    let wt = poll_wf(&h.engine).await.expect("leased");
    let failure = json!({"message": "boom", "type": "NonDeterministicReplayError"});
    h.engine
        .fail_workflow_task(NS, &wt.task_id, "w1", 1, &failure)
        .await
        .expect("recorded");
    assert!(poll_wf(&h.engine).await.is_none(), "backing off");
    h.clock.advance(Duration::from_secs(2));
    let retried = wait_wf(&h.engine).await;
    assert_eq!(retried.task_id, wt.task_id);
    assert_eq!(retried.workflow_task_attempt, 2);
}

#[tokio::test]
async fn activity_is_retried_by_the_server_and_failed_once_attempts_run_out() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("a"))
        .await
        .expect("starts");
    let wt = poll_wf(&h.engine).await.expect("leased");
    let mut cmd = schedule("x");
    cmd["retry_policy"] =
        json!({"max_attempts": 2, "backoff_seconds": [3], "non_retryable_error_types": []});
    h.engine
        .complete_workflow_task(NS, &wt.task_id, "w1", 1, &[cmd])
        .await
        .expect("schedules");
    let a1 = poll_act(&h.engine).await.expect("attempt 1");
    assert_eq!(a1.attempt_number, 1);
    let failure = json!({"message": "nope", "type": "RuntimeError"});
    h.engine
        .fail_activity_task(NS, &a1.task_id, &a1.activity_attempt_id, "w1", &failure)
        .await
        .expect("recorded");
    assert!(
        poll_wf(&h.engine).await.is_none(),
        "a retried failure does not wake the workflow"
    );
    h.clock.advance(Duration::from_secs(3));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let a2 = loop {
        if let Some(a) = poll_act(&h.engine).await {
            break a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retry never became ready"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(a2.attempt_number, 2);
    let stale = h
        .engine
        .complete_activity_task(NS, &a1.task_id, &a1.activity_attempt_id, "w1", &json!(1))
        .await
        .expect_err("old attempt is fenced");
    assert_eq!(reason(stale), "lease_expired");
    h.engine
        .fail_activity_task(NS, &a2.task_id, &a2.activity_attempt_id, "w1", &failure)
        .await
        .expect("final failure");
    let wt2 = poll_wf(&h.engine)
        .await
        .expect("workflow woken by ActivityFailed");
    assert_eq!(
        event_types(&wt2).last().map(String::as_str),
        Some("ActivityFailed")
    );
}

#[tokio::test]
async fn run_deadline_fails_the_run_with_workflow_timed_out() {
    let h = harness().await;
    let req = StartWorkflow {
        run_timeout_seconds: Some(5),
        ..start_request("a")
    };
    h.engine.start_workflow(NS, req).await.expect("starts");
    h.clock.advance(Duration::from_secs(6));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let view = h.engine.describe(NS, "a", None).await.expect("describes");
        if view.run.status == RunStatus::Failed {
            assert_eq!(view.close_payload["timeout_kind"], "run_timeout");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run never timed out"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        poll_wf(&h.engine).await.is_none(),
        "a closed run has no workflow task"
    );
}

#[tokio::test]
async fn a_reopened_engine_rebuilds_its_ready_index_from_storage() {
    let h = harness().await;
    for id in ["a", "b", "c"] {
        h.engine
            .start_workflow(NS, start_request(id))
            .await
            .expect("starts");
    }
    h.engine.stop().await;
    let reopened = open(&h.store, &h.clock, LEASE, &[]).await;
    let mut seen = Vec::new();
    while let Some(t) = poll_wf(&reopened).await {
        seen.push(t.workflow_id);
    }
    seen.sort();
    assert_eq!(seen, ["a", "b", "c"]);
}
