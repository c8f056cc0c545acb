//! Worker sessions over HTTP: the holder's lifecycle routes (create, heartbeat, close)
//! in the worker envelope with the outcome the SDKs check, the operator reads, a session
//! activity polled only by its holder with its affinity, the capability advertised, and
//! bad input refused with field paths and named reasons.

use crate::common;

use common::{control, expect, expect_status, start, worker, Server};
use serde_json::{json, Value};

const TOKENS: &str = "operator:op,worker:wk";

async fn register(s: &Server, worker_id: &str) -> Value {
    let r = worker(
        s,
        "wk",
        "default",
        "POST",
        "/api/worker/register",
        Some(
            &json!({"worker_id": worker_id, "task_queue": "q", "runtime": "python",
                     "capabilities": ["worker_sessions"]}),
        ),
    )
    .await;
    assert!(r.status == 200 || r.status == 201, "{}", r.text);
    r.json()
}

async fn session_call(s: &Server, method: &str, path: &str, body: Value) -> common::Resp {
    worker(s, "wk", "default", method, path, Some(&body)).await
}

async fn poll_activity(s: &Server, worker_id: &str) -> Value {
    let body = json!({"worker_id": worker_id, "task_queue": "q", "timeout_seconds": 0});
    let r = worker(
        s,
        "wk",
        "default",
        "POST",
        "/api/worker/activity-tasks/poll",
        Some(&body),
    )
    .await;
    expect_status(&r, 200);
    r.json()["task"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_creates_renews_and_closes_a_session_and_operators_read_it() {
    let s = start(TOKENS, None).await;
    register(&s, "w1").await;
    register(&s, "w2").await;

    let r = session_call(
        &s,
        "POST",
        "/api/worker/sessions",
        json!({"worker_id": "w1", "session_id": "gpu-1", "requirements": [], "lease_seconds": 120,
               "ttl_seconds": 1800, "max_concurrent_activities": 1, "create_if_missing": true,
               "allow_reacquire_after_failure": true}),
    )
    .await;
    expect_status(&r, 201);
    let body = r.json();
    assert_eq!(body["admitted"], true);
    assert_eq!(body["outcome"], "created");
    assert_eq!(body["status"], 201);
    assert_eq!(body["protocol_version"], "1.20");
    assert_eq!(body["session"]["session_id"], "gpu-1");
    assert_eq!(body["session"]["namespace"], "default");
    assert_eq!(body["session"]["lease_owner"], "w1");
    assert_eq!(body["session"]["status"], "active");
    assert_eq!(body["session"]["holder"]["worker_id"], "w1");
    assert!(body["session"]["lease_expires_at"].is_string());
    assert!(body["session"]["ttl_expires_at"].is_string());

    let again = session_call(
        &s,
        "POST",
        "/api/worker/sessions",
        json!({"worker_id": "w1", "session_id": "gpu-1"}),
    )
    .await;
    expect_status(&again, 200);
    assert_eq!(again.json()["outcome"], "reused");
    let taken = session_call(
        &s,
        "POST",
        "/api/worker/sessions",
        json!({"worker_id": "w2", "session_id": "gpu-1"}),
    )
    .await;
    expect(&taken, 409, "session_owned_by_another_worker");

    let hb = session_call(
        &s,
        "POST",
        "/api/worker/sessions/gpu-1/heartbeat",
        json!({"worker_id": "w1", "lease_seconds": 60}),
    )
    .await;
    expect_status(&hb, 200);
    assert_eq!(hb.json()["outcome"], "heartbeat_recorded");
    let hb = session_call(
        &s,
        "POST",
        "/api/worker/sessions/gpu-1/heartbeat",
        json!({"worker_id": "w2"}),
    )
    .await;
    expect(&hb, 409, "session_owner_mismatch");

    let list = control(&s, "op", "default", "GET", "/api/worker-sessions", None).await;
    expect_status(&list, 200);
    let list = list.json();
    assert_eq!(list["namespace"], "default");
    assert_eq!(list["metrics"]["total"], 1);
    assert_eq!(list["metrics"]["active"], 1);
    assert_eq!(list["sessions"][0]["session_id"], "gpu-1");
    let one = control(
        &s,
        "op",
        "default",
        "GET",
        "/api/worker-sessions/gpu-1",
        None,
    )
    .await;
    expect_status(&one, 200);
    assert_eq!(one.json()["session"]["active_activity_count"], 0);

    let closed = session_call(
        &s,
        "DELETE",
        "/api/worker/sessions/gpu-1",
        json!({"worker_id": "w1", "reason": "worker_shutdown"}),
    )
    .await;
    expect_status(&closed, 200);
    assert_eq!(closed.json()["outcome"], "closed");
    assert_eq!(closed.json()["session"]["status"], "closed");
    let twice = session_call(
        &s,
        "DELETE",
        "/api/worker/sessions/gpu-1",
        json!({"worker_id": "w1", "reason": "worker_shutdown"}),
    )
    .await;
    expect_status(&twice, 200);
    assert_eq!(twice.json()["outcome"], "already_closed");
    let reuse = session_call(
        &s,
        "POST",
        "/api/worker/sessions",
        json!({"worker_id": "w1", "session_id": "gpu-1"}),
    )
    .await;
    expect(&reuse, 409, "session_closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_activity_is_polled_only_by_its_holder_and_carries_the_session() {
    let s = start(TOKENS, None).await;
    let reply = register(&s, "w1").await;
    assert_eq!(
        reply["capability_manifest"]["worker_sessions"]["supported"],
        true
    );
    assert!(reply["capabilities"]
        .as_array()
        .is_some_and(|c| c.iter().any(|v| v == "worker_sessions")));
    register(&s, "w2").await;
    let info = control(&s, "op", "default", "GET", "/api/cluster/info", None).await;
    let caps = &info.json()["worker_protocol"]["server_capabilities"];
    assert_eq!(caps["worker_sessions"]["feature"], "worker_sessions");
    assert_eq!(
        caps["worker_session_verbs"],
        json!(["create", "heartbeat", "close"])
    );

    let r = control(
        &s,
        "op",
        "default",
        "POST",
        "/api/workflows",
        Some(&json!({"workflow_id": "wf-s", "workflow_type": "wf", "task_queue": "q"})),
    )
    .await;
    expect_status(&r, 201);
    let body = json!({"worker_id": "w1", "task_queue": "q", "timeout_seconds": 0});
    let mut task = Value::Null;
    for _ in 0..5 {
        let r = worker(
            &s,
            "wk",
            "default",
            "POST",
            "/api/worker/workflow-tasks/poll",
            Some(&body),
        )
        .await;
        task = r.json()["task"].clone();
        if !task.is_null() {
            break;
        }
    }
    let task_id = task["task_id"].as_str().expect("a workflow task");
    let done = worker(
        &s,
        "wk",
        "default",
        "POST",
        &format!("/api/worker/workflow-tasks/{task_id}/complete"),
        Some(&json!({
            "lease_owner": "w1", "workflow_task_attempt": task["workflow_task_attempt"],
            "commands": [{"type": "schedule_activity", "activity_type": "act", "queue": "q",
                          "arguments": {"codec": "avro", "blob": "AA=="},
                          "worker_session": {"session_id": "s-1", "max_concurrent_activities": 1}}],
        })),
    )
    .await;
    expect_status(&done, 200);
    let created = session_call(
        &s,
        "POST",
        "/api/worker/sessions",
        json!({"worker_id": "w2", "session_id": "s-1"}),
    )
    .await;
    expect_status(&created, 201);

    assert!(
        poll_activity(&s, "w1").await.is_null(),
        "w1 does not hold s-1"
    );
    let leased = poll_activity(&s, "w2").await;
    assert_eq!(leased["lease_owner"], "w2");
    assert_eq!(leased["worker_session"]["session_id"], "s-1");
    assert_eq!(leased["worker_session"]["lease_owner"], "w2");
    assert_eq!(leased["worker_session"]["status"], "active");
    let one = control(&s, "op", "default", "GET", "/api/worker-sessions/s-1", None).await;
    assert_eq!(one.json()["session"]["active_activity_count"], 1);

    let bad = worker(
        &s,
        "wk",
        "default",
        "POST",
        &format!("/api/worker/workflow-tasks/{task_id}/complete"),
        Some(&json!({"lease_owner": "w1", "workflow_task_attempt": 1, "commands": []})),
    )
    .await;
    assert_eq!(bad.status, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_session_requests_are_refused_with_field_paths_and_named_reasons() {
    let s = start(TOKENS, None).await;
    register(&s, "w1").await;
    let cases = [
        (json!({"worker_id": "w1"}), "session_id"),
        (json!({"session_id": "s"}), "worker_id"),
        (
            json!({"worker_id": "w1", "session_id": "s", "lease_seconds": 0}),
            "lease_seconds",
        ),
        (
            json!({"worker_id": "w1", "session_id": "s", "ttl_seconds": "long"}),
            "ttl_seconds",
        ),
        (
            json!({"worker_id": "w1", "session_id": "s", "requirements": [1]}),
            "requirements",
        ),
        (
            json!({"worker_id": "w1", "session_id": "s", "create_if_missing": "yes"}),
            "create_if_missing",
        ),
        (
            json!({"worker_id": "w1", "session_id": "   "}),
            "session_id",
        ),
    ];
    for (body, field) in cases {
        let r = session_call(&s, "POST", "/api/worker/sessions", body.clone()).await;
        expect(&r, 422, "validation_failed");
        assert!(r.json()["errors"][field].is_array(), "{body} → {}", r.text);
    }
    let r = session_call(&s, "POST", "/api/worker/sessions", json!([1])).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let r = session_call(
        &s,
        "POST",
        "/api/worker/sessions",
        json!({"worker_id": "ghost", "session_id": "s"}),
    )
    .await;
    expect(&r, 412, "worker_not_registered");
    let r = session_call(
        &s,
        "POST",
        "/api/worker/sessions",
        json!({"worker_id": "w1", "session_id": "s", "requirements": ["gpu"]}),
    )
    .await;
    expect(&r, 409, "session_requirements_not_met");
    assert_eq!(r.json()["missing_requirements"], json!(["gpu"]));
    let r = session_call(
        &s,
        "POST",
        "/api/worker/sessions",
        json!({"worker_id": "w1", "session_id": "s", "create_if_missing": false}),
    )
    .await;
    expect(&r, 409, "session_missing");

    let r = session_call(
        &s,
        "POST",
        "/api/worker/sessions/nope/heartbeat",
        json!({"worker_id": "w1"}),
    )
    .await;
    expect(&r, 404, "session_not_found");
    let r = session_call(
        &s,
        "POST",
        "/api/worker/sessions/nope/heartbeat",
        json!({"worker_id": "w1", "lease_seconds": 0}),
    )
    .await;
    expect(&r, 422, "validation_failed");
    let r = session_call(
        &s,
        "DELETE",
        "/api/worker/sessions/nope",
        json!({"worker_id": "w1"}),
    )
    .await;
    expect(&r, 404, "session_not_found");
    let r = session_call(&s, "DELETE", "/api/worker/sessions/nope", json!({})).await;
    expect(&r, 422, "validation_failed");

    let r = control(
        &s,
        "op",
        "default",
        "GET",
        "/api/worker-sessions/nope",
        None,
    )
    .await;
    expect(&r, 404, "session_not_found");
    let r = control(
        &s,
        "op",
        "default",
        "GET",
        "/api/worker-sessions?page_size=0",
        None,
    )
    .await;
    expect(&r, 422, "validation_failed");
    let r = control(
        &s,
        "op",
        "default",
        "GET",
        "/api/worker-sessions?next_page_token=zz",
        None,
    )
    .await;
    expect(&r, 422, "validation_failed");
    let r = control(
        &s,
        "op",
        "default",
        "GET",
        "/api/worker-sessions?page_size=2",
        None,
    )
    .await;
    expect_status(&r, 200);
    assert_eq!(r.json()["sessions"], json!([]));
    assert_eq!(r.json()["next_page_token"], Value::Null);
}
