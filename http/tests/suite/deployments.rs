//! Worker deployments over HTTP: listing and describing build-id cohorts by name, the
//! promote / drain / resume / rollback lifecycle with its 409 blockages, and promotion
//! pinning fresh starts to the promoted build.

use crate::common;

use std::time::Duration;

use common::{control, expect, expect_status, start, worker};
use serde_json::{json, Value};

const TOKENS: &str = "operator:op,worker:wk";

async fn register(s: &common::Server, id: &str, build_id: &str) {
    let r = worker(
        s,
        "wk",
        "default",
        "POST",
        "/api/worker/register",
        Some(
            &json!({"worker_id": id, "task_queue": "q", "runtime": "python",
                     "build_id": build_id, "supported_workflow_types": ["dep.wf"]}),
        ),
    )
    .await;
    assert!(r.status == 200 || r.status == 201, "{}", r.text);
}

async fn action(s: &common::Server, name: &str, action: &str) -> common::Resp {
    let path = format!("/api/deployments/{}/{action}", name.replace('/', "%2F"));
    control(s, "op", "default", "POST", &path, Some(&json!({}))).await
}

async fn get(s: &common::Server, name: &str) -> common::Resp {
    let path = format!("/api/deployments/{}", name.replace('/', "%2F"));
    control(s, "op", "default", "GET", &path, None).await
}

async fn poll(s: &common::Server, worker_id: &str) -> common::Resp {
    worker(
        s,
        "wk",
        "default",
        "POST",
        "/api/worker/workflow-tasks/poll",
        Some(&json!({"worker_id": worker_id, "task_queue": "q", "timeout_seconds": 0})),
    )
    .await
}

fn reasons(r: &common::Resp) -> Vec<String> {
    r.json()["blockages"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| b["reason"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_list_the_cohorts_of_registered_workers_by_name() {
    let s = start(TOKENS, None).await;
    register(&s, "w1", "v1").await;
    register(&s, "w2", "v2").await;
    let r = control(&s, "op", "default", "GET", "/api/deployments", None).await;
    expect_status(&r, 200);
    let body = r.json();
    let names: Vec<&str> = body["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .map(|d| d["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["default/q@v1", "default/q@v2"]);
    let d = get(&s, "default/q@v2").await;
    expect_status(&d, 200);
    let d = d.json();
    assert_eq!(d["state"], "active");
    assert_eq!(d["accepts_new_work"], true);
    assert_eq!(d["build_id"], "v2");
    assert_eq!(d["task_queue"], "q");
    assert_eq!(d["workflow_types"], json!(["dep.wf"]));
    assert_eq!(d["active_worker_count"], 1);
    assert_eq!(d["compatibility_policy"], "pinned");

    expect(&get(&s, "default/q@v9").await, 404, "deployment_not_found");
    expect(&get(&s, "no-build-id").await, 422, "validation_failed");
    expect(&get(&s, "other/q@v1").await, 422, "namespace_mismatch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_pins_fresh_starts_to_the_promoted_build_until_it_drains() {
    let s = start(TOKENS, None).await;
    register(&s, "w1", "v1").await;
    register(&s, "w2", "v2").await;

    let r = action(&s, "default/q@v2", "promote").await;
    expect_status(&r, 200);
    assert_eq!(r.json()["state"], "promoted");
    assert_eq!(r.json()["new_start_selected"], true);
    assert!(r.json()["promoted_at"].is_string());

    let start = control(
        &s,
        "op",
        "default",
        "POST",
        "/api/workflows",
        Some(&json!({"workflow_id": "pinned-1", "workflow_type": "dep.wf", "task_queue": "q"})),
    )
    .await;
    expect_status(&start, 201);
    let described = control(&s, "op", "default", "GET", "/api/workflows/pinned-1", None).await;
    assert_eq!(
        described.json()["compatibility"],
        "v2",
        "{}",
        described.text
    );
    // Only the promoted build's worker gets its task.
    let other = poll(&s, "w1").await;
    expect_status(&other, 200);
    assert!(other.json()["task"].is_null(), "{}", other.text);
    let mut got = Value::Null;
    for _ in 0..5 {
        let r = poll(&s, "w2").await;
        expect_status(&r, 200);
        if !r.json()["task"].is_null() {
            got = r.json()["task"].clone();
            break;
        }
    }
    assert_eq!(got["workflow_id"], "pinned-1");

    // Promoting v1 takes the slot from v2.
    expect_status(&action(&s, "default/q@v1", "promote").await, 200);
    assert_eq!(get(&s, "default/q@v2").await.json()["state"], "active");
    // Draining the promoted v1 stops pinning: a start now names no build.
    let drained = action(&s, "default/q@v1", "drain").await;
    expect_status(&drained, 200);
    assert_eq!(drained.json()["state"], "draining");
    assert_eq!(drained.json()["new_start_selected"], false);
    expect(&poll(&s, "w1").await, 409, "worker_draining");
    let start = control(
        &s,
        "op",
        "default",
        "POST",
        "/api/workflows",
        Some(&json!({"workflow_id": "free-1", "workflow_type": "dep.wf", "task_queue": "q"})),
    )
    .await;
    expect_status(&start, 201);
    let described = control(&s, "op", "default", "GET", "/api/workflows/free-1", None).await;
    assert!(
        described.json()["compatibility"].is_null(),
        "{}",
        described.text
    );
    // Resuming the still-promoted v1 gives it the slot back.
    let resumed = action(&s, "default/q@v1", "resume").await;
    expect_status(&resumed, 200);
    assert_eq!(resumed.json()["state"], "promoted");
    assert_eq!(resumed.json()["new_start_selected"], true);
    expect_status(&poll(&s, "w1").await, 200);
    // The build-id view shows the same record.
    let ids = control(
        &s,
        "op",
        "default",
        "GET",
        "/api/task-queues/q/build-ids",
        None,
    )
    .await;
    let v1 = ids.json()["build_ids"]
        .as_array()
        .expect("build ids")
        .iter()
        .find(|b| b["build_id"] == "v1")
        .cloned()
        .expect("v1");
    assert!(v1["promoted_at"].is_string(), "{v1}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn illegal_transitions_answer_409_with_every_blockage() {
    let s = start(TOKENS, None).await;
    register(&s, "w1", "v1").await;

    let r = action(&s, "default/q@v9", "promote").await;
    expect(&r, 409, "unknown_deployment");
    assert!(r.json()["deployment"].is_null());
    assert_eq!(r.json()["blockages"][0]["scope"]["build_id"], "v9");
    expect(
        &action(&s, "default/q@v9", "rollback").await,
        409,
        "unknown_deployment",
    );

    // Rolled back: terminal for promote and resume; rollback again refused too.
    let r = action(&s, "default/q@v1", "rollback").await;
    expect_status(&r, 200);
    assert_eq!(r.json()["state"], "rolled_back");
    assert_eq!(r.json()["accepts_new_work"], false);
    let r = action(&s, "default/q@v1", "promote").await;
    expect(&r, 409, "incompatible_policy");
    assert_eq!(r.json()["deployment"]["state"], "rolled_back");
    expect(
        &action(&s, "default/q@v1", "resume").await,
        409,
        "incompatible_policy",
    );
    expect(
        &action(&s, "default/q@v1", "rollback").await,
        409,
        "incompatible_policy",
    );
    expect(
        &action(&s, "default/q@v1", "drain").await,
        409,
        "incompatible_policy",
    );

    // A draining deployment cannot be promoted; its fleet is listed after the policy.
    register(&s, "w2", "v2").await;
    expect_status(&action(&s, "default/q@v2", "drain").await, 200);
    let r = action(&s, "default/q@v2", "promote").await;
    expect(&r, 409, "fleet_is_draining");
    assert_eq!(reasons(&r), ["fleet_is_draining"]);

    // Once no worker of v2 heartbeats, the drain is complete: drained is terminal.
    s.clock.advance(Duration::from_secs(200));
    let d = get(&s, "default/q@v2").await;
    assert_eq!(d.json()["state"], "drained", "{}", d.text);
    let r = action(&s, "default/q@v2", "resume").await;
    expect(&r, 409, "incompatible_policy");
    let r = action(&s, "default/q@v2", "promote").await;
    assert_eq!(
        reasons(&r),
        ["incompatible_policy", "no_compatible_workers"]
    );

    // Live workers on the queue, but none of the build: missing_worker_heartbeat.
    register(&s, "w4", "v4").await;
    s.clock.advance(Duration::from_secs(200));
    register(&s, "w3", "v3").await;
    let r = action(&s, "default/q@v4", "promote").await;
    assert_eq!(reasons(&r), ["missing_worker_heartbeat"], "{}", r.text);
    // Resume of an active deployment is a no-op, not a refusal.
    expect_status(&action(&s, "default/q@v3", "resume").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_build_id_promote_route_runs_the_same_lifecycle() {
    let s = start(TOKENS, None).await;
    register(&s, "w1", "v1").await;
    let r = control(
        &s,
        "op",
        "default",
        "POST",
        "/api/task-queues/q/build-ids/promote",
        Some(&json!({"build_id": "v1"})),
    )
    .await;
    expect_status(&r, 200);
    assert_eq!(r.json()["state"], "promoted");
    let r = control(
        &s,
        "op",
        "default",
        "POST",
        "/api/task-queues/q/build-ids/promote",
        Some(&json!({})),
    )
    .await;
    expect(&r, 422, "validation_failed");
}
