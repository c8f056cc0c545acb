//! Standalone activities over HTTP: a start creates a host run whose one activity goes
//! to the ordinary activity route; its completion closes the host run; a workflow worker
//! never gets a task for it; bad input is a 422.

use crate::common;

use common::{control, expect, expect_status, start, worker};
use serde_json::{json, Value};

const TOKENS: &str = "operator:op,worker:wk";

async fn register(s: &common::Server) {
    let r = worker(
        s,
        "wk",
        "default",
        "POST",
        "/api/worker/register",
        Some(&json!({"worker_id": "w1", "task_queue": "q", "runtime": "python"})),
    )
    .await;
    assert!(r.status == 200 || r.status == 201, "{}", r.text);
}

async fn poll(s: &common::Server, kind: &str) -> Value {
    let path = format!("/api/worker/{kind}-tasks/poll");
    let body = json!({"worker_id": "w1", "task_queue": "q", "timeout_seconds": 0});
    for _ in 0..5 {
        let r = worker(s, "wk", "default", "POST", &path, Some(&body)).await;
        expect_status(&r, 200);
        if !r.json()["task"].is_null() {
            return r.json()["task"].clone();
        }
    }
    Value::Null
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_activity_runs_on_the_activity_route_and_its_result_closes_the_host_run() {
    let s = start(TOKENS, None).await;
    register(&s).await;
    let r = control(
        &s,
        "op",
        "default",
        "POST",
        "/api/activities",
        Some(
            &json!({"activity_type": "billing.charge", "task_queue": "q", "activity_id": "charge-1",
                     "business_key": "order-1", "input": {"codec": "avro", "blob": "AA=="},
                     "schedule_to_close_timeout_seconds": 60}),
        ),
    )
    .await;
    expect_status(&r, 201);
    let started = r.json();
    assert_eq!(started["activity_id"], "charge-1");
    assert_eq!(started["workflow_id"], "charge-1");
    assert_eq!(started["status"], "running");
    assert_eq!(started["activity_status"], "pending");
    assert!(started["activity_execution_id"].is_string());
    assert!(started["schedule_to_close_deadline_at"].is_string());
    // The same id again is a duplicate while it runs.
    let again = control(
        &s,
        "op",
        "default",
        "POST",
        "/api/activities",
        Some(&json!({"activity_type": "billing.charge", "task_queue": "q", "activity_id": "charge-1"})),
    )
    .await;
    expect(&again, 409, "duplicate_not_allowed");

    assert!(
        poll(&s, "workflow").await.is_null(),
        "a host run has no workflow task"
    );
    let task = poll(&s, "activity").await;
    assert_eq!(task["activity_type"], "billing.charge");
    assert_eq!(task["workflow_id"], "charge-1");
    assert_eq!(task["arguments"], json!({"codec": "avro", "blob": "AA=="}));
    let running = control(&s, "op", "default", "GET", "/api/activities/charge-1", None).await;
    assert_eq!(running.json()["activity_status"], "running");

    let path = format!(
        "/api/worker/activity-tasks/{}/complete",
        task["task_id"].as_str().expect("task id")
    );
    let done = worker(
        &s,
        "wk",
        "default",
        "POST",
        &path,
        Some(&json!({"activity_attempt_id": task["activity_attempt_id"],
                     "lease_owner": task["lease_owner"],
                     "result": {"codec": "avro", "blob": "BB=="}})),
    )
    .await;
    expect_status(&done, 200);
    let described = control(&s, "op", "default", "GET", "/api/activities/charge-1", None).await;
    expect_status(&described, 200);
    let d = described.json();
    assert_eq!(d["status"], "completed");
    assert_eq!(d["activity_status"], "completed");
    assert_eq!(d["business_key"], "order-1");
    assert_eq!(d["result"], json!({"codec": "avro", "blob": "BB=="}));
    let listed = control(
        &s,
        "op",
        "default",
        "GET",
        "/api/activities?status=completed",
        None,
    )
    .await;
    assert_eq!(listed.json()["activity_count"], 1);
    assert_eq!(
        listed.json()["activities"][0]["activity_type"],
        "billing.charge"
    );
    let workflow = control(&s, "op", "default", "GET", "/api/workflows/charge-1", None).await;
    assert_eq!(workflow.json()["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_activity_input_is_validated_and_unknown_ids_are_404() {
    let s = start(TOKENS, None).await;
    for body in [
        json!({"task_queue": "q"}),
        json!({"activity_type": "a", "activity_id": "bad id"}),
        json!({"activity_type": "a", "start_to_close_timeout_seconds": 0}),
        json!({"activity_type": "a", "input": 5}),
    ] {
        let r = control(&s, "op", "default", "POST", "/api/activities", Some(&body)).await;
        expect(&r, 422, "validation_failed");
    }
    expect(
        &control(&s, "op", "default", "GET", "/api/activities/nope", None).await,
        404,
        "activity_not_found",
    );
    expect(
        &control(
            &s,
            "op",
            "default",
            "GET",
            "/api/activities?status=bogus",
            None,
        )
        .await,
        422,
        "validation_failed",
    );
    // A workflow is not a standalone activity; the host type is reserved for them.
    let r = control(
        &s,
        "op",
        "default",
        "POST",
        "/api/workflows",
        Some(&json!({"workflow_id": "wf-1", "workflow_type": "x", "task_queue": "q"})),
    )
    .await;
    expect_status(&r, 201);
    expect(
        &control(&s, "op", "default", "GET", "/api/activities/wf-1", None).await,
        404,
        "activity_not_found",
    );
    let r = control(
        &s,
        "op",
        "default",
        "POST",
        "/api/workflows",
        Some(&json!({"workflow_type": "durable-workflow.standalone-activity", "task_queue": "q"})),
    )
    .await;
    expect(&r, 422, "validation_failed");
}
