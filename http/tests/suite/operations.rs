//! The node gates (bootstrap, topology), the admin system passes, and the Prometheus
//! scrape, against an in-process server.

use crate::common;

use std::time::Duration;

use common::{control, expect, expect_status, send, start, worker, CONTROL, WORKER};
use keel_engine::model::{RunRecord, TaskRecord};
use keel_engine::tables;
use serde_json::{json, Value};

const TOKENS: &str = "admin:adm,operator:op,worker:wk";

async fn start_workflow(s: &common::Server, id: &str) -> String {
    let r = control(
        s,
        "op",
        "default",
        "POST",
        "/api/workflows",
        Some(&json!({"workflow_id": id, "workflow_type": "ops.wf", "task_queue": "q"})),
    )
    .await;
    expect_status(&r, 201);
    r.json()["run_id"].as_str().expect("run id").to_string()
}

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

async fn poll(s: &common::Server) -> Value {
    // A stale in-memory hint may make one poll come back empty: try a few times.
    for _ in 0..5 {
        let r = worker(
            s,
            "wk",
            "default",
            "POST",
            "/api/worker/workflow-tasks/poll",
            Some(&json!({"worker_id": "w1", "task_queue": "q", "timeout_seconds": 0})),
        )
        .await;
        expect_status(&r, 200);
        if !r.json()["task"].is_null() {
            return r.json()["task"].clone();
        }
    }
    Value::Null
}

async fn complete(s: &common::Server, task: &Value) {
    let path = format!(
        "/api/worker/workflow-tasks/{}/complete",
        task["task_id"].as_str().expect("task id")
    );
    let body = json!({
        "lease_owner": task["lease_owner"],
        "workflow_task_attempt": task["workflow_task_attempt"],
        "commands": [{"type": "complete_workflow", "result": null}],
    });
    expect_status(
        &worker(s, "wk", "default", "POST", &path, Some(&body)).await,
        200,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_gate_blocks_workflow_traffic_until_the_schema_is_current() {
    let s = start(TOKENS, None).await;
    let run_id = start_workflow(&s, "gated").await;
    s.engine.set_schema_version(99).await.expect("write");
    let ready = send(s.addr, "GET", "/api/ready", &[], None).await;
    expect_status(&ready, 503);
    let body = ready.json();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["migrations"]["status"], "pending");
    assert_eq!(
        body["checks"]["workflow_v2"]["blocked_by"],
        json!(["migrations"])
    );
    assert!(body["topology"]["matching_role"]["discovery_limits"].is_object());

    let r = control(
        &s,
        "op",
        "default",
        "POST",
        "/api/workflows",
        Some(&json!({})),
    )
    .await;
    expect(&r, 503, "workflow_v2_blocked");
    assert_eq!(r.json()["blocked_by"], json!(["migrations"]));
    assert!(r.json()["remediation"]
        .as_str()
        .is_some_and(|m| m.contains("99")));
    assert_eq!(
        r.header("x-durable-workflow-control-plane-version"),
        Some("2")
    );
    // Before namespace resolution: a missing namespace does not change the answer.
    let r = control(&s, "op", "nope", "GET", "/api/workflows/gated", None).await;
    expect(&r, 503, "workflow_v2_blocked");
    let r = worker(
        &s,
        "wk",
        "default",
        "POST",
        "/api/worker/heartbeat",
        Some(&json!({})),
    )
    .await;
    expect(&r, 503, "workflow_v2_blocked");
    assert_eq!(r.json()["protocol_version"], "1.20");
    // History reads, namespaces, system routes and probes stay available.
    let history = format!("/api/workflows/gated/runs/{run_id}/history");
    expect_status(
        &control(&s, "op", "default", "GET", &history, None).await,
        200,
    );
    expect_status(
        &control(&s, "op", "default", "GET", "/api/namespaces", None).await,
        200,
    );
    expect_status(
        &control(&s, "adm", "default", "GET", "/api/system/repair", None).await,
        200,
    );
    expect_status(&send(s.addr, "GET", "/api/health", &[], None).await, 200);
    let info = send(
        s.addr,
        "GET",
        "/api/cluster/info",
        &[("Authorization", "Bearer wk")],
        None,
    )
    .await;
    expect_status(&info, 200);
    assert_eq!(info.json()["coordination_health"]["status"], "blocked");

    s.engine.set_schema_version(1).await.expect("write");
    expect_status(&send(s.addr, "GET", "/api/ready", &[], None).await, 200);
    start_workflow(&s, "after-recovery").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_roles_refuses_hosted_routes() {
    let s = start(TOKENS, Some("scheduler")).await;
    let r = control(
        &s,
        "op",
        "no-such-namespace",
        "GET",
        "/api/workflows/x",
        None,
    )
    .await;
    expect(&r, 503, "topology_role_unavailable");
    let body = r.json();
    assert_eq!(body["current_shape"], "standalone_server");
    assert_eq!(body["current_process_class"], "scheduler_node");
    assert_eq!(body["current_roles"], json!(["scheduler"]));
    assert_eq!(
        body["required_roles"],
        json!(["api_ingress", "control_plane"])
    );
    assert_eq!(
        body["missing_roles"],
        json!(["api_ingress", "control_plane"])
    );
    let r = worker(
        &s,
        "wk",
        "default",
        "POST",
        "/api/worker/heartbeat",
        Some(&json!({})),
    )
    .await;
    expect(&r, 503, "topology_role_unavailable");
    assert_eq!(
        r.json()["missing_roles"],
        json!(["api_ingress", "matching"])
    );
    // Role and version checks come first.
    expect(
        &control(&s, "wk", "default", "GET", "/api/workflows/x", None).await,
        403,
        "forbidden",
    );
    // Liveness and discovery stay up and describe the node truthfully.
    let health = send(s.addr, "GET", "/api/health", &[], None).await;
    expect_status(&health, 200);
    assert_eq!(
        health.json()["topology"]["current_process_class"],
        "scheduler_node"
    );
    let info = send(
        s.addr,
        "GET",
        "/api/cluster/info",
        &[("Authorization", "Bearer op")],
        None,
    )
    .await;
    expect_status(&info, 200);
    assert_eq!(
        info.json()["topology"]["current_roles"],
        json!(["scheduler"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_pass_deletes_closed_runs_past_the_namespace_retention() {
    let s = start(TOKENS, None).await;
    register(&s).await;
    let run_id = start_workflow(&s, "old").await;
    let task = poll(&s).await;
    complete(&s, &task).await;
    let kept = start_workflow(&s, "still-open").await;
    let r = control(
        &s,
        "adm",
        "default",
        "PUT",
        "/api/namespaces/default",
        Some(&json!({"retention_days": 1})),
    )
    .await;
    expect_status(&r, 200);
    assert_eq!(r.json()["retention_days"], 1);

    let r = control(&s, "adm", "default", "GET", "/api/system/retention", None).await;
    assert_eq!(r.json()["expired_run_count"], 0, "{}", r.text);
    s.clock.advance(Duration::from_secs(2 * 86_400));
    let r = control(&s, "adm", "default", "GET", "/api/system/retention", None).await;
    assert_eq!(r.json()["expired_run_ids"], json!([run_id]), "{}", r.text);

    let r = control(
        &s,
        "adm",
        "default",
        "POST",
        "/api/system/retention/pass",
        Some(&json!({"limit": 10})),
    )
    .await;
    expect_status(&r, 200);
    assert_eq!(r.json()["deleted_runs"], 1, "{}", r.text);
    assert_eq!(r.json()["deleted_instances"], 1, "{}", r.text);
    assert_eq!(r.json()["pruned"], 1, "{}", r.text);
    assert_eq!(
        r.json()["results"],
        json!([{"run_id": run_id, "outcome": "pruned"}]),
        "{}",
        r.text
    );
    expect(
        &control(&s, "op", "default", "GET", "/api/workflows/old", None).await,
        404,
        "instance_not_found",
    );
    let mut txn = s.engine.store().begin().await.expect("txn");
    let history = txn
        .get_range(
            &tables::history_range("default", &run_id, 0),
            keel_engine::storage::ReadOptions::limit(10),
        )
        .await
        .expect("read");
    assert!(history.is_empty(), "history of a deleted run remains");
    // The open run is untouched; a second pass has nothing to do.
    let open = control(
        &s,
        "op",
        "default",
        "GET",
        "/api/workflows/still-open",
        None,
    )
    .await;
    assert_eq!(open.json()["run_id"], json!(kept));
    let r = control(
        &s,
        "adm",
        "default",
        "POST",
        "/api/system/retention/pass",
        None,
    )
    .await;
    assert_eq!(r.json()["deleted_runs"], 0, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_pass_recreates_a_missing_workflow_task() {
    let s = start(TOKENS, None).await;
    register(&s).await;
    let run_id = start_workflow(&s, "stuck").await;
    // Lose the run's workflow task, as a bug or a partial restore could.
    {
        let mut txn = s.engine.store().begin().await.expect("txn");
        let key = tables::run_key("default", &run_id);
        let mut run: RunRecord = tables::get(txn.as_mut(), &key)
            .await
            .expect("read")
            .expect("run");
        let task_id = run.workflow_task.take().expect("a workflow task");
        let task: TaskRecord = tables::get(txn.as_mut(), &tables::task_key(&task_id))
            .await
            .expect("read")
            .expect("task");
        txn.clear(&tables::task_key(&task_id));
        txn.clear(&tables::ready_key(
            "default",
            "q",
            task.kind,
            task.priority,
            task.ready_at_ms,
            &task_id,
        ));
        tables::put(txn.as_mut(), &key, &run).expect("write");
        txn.commit().await.expect("commit");
    }
    assert!(
        poll(&s).await.is_null(),
        "no task to lease before the repair"
    );
    let r = control(&s, "adm", "default", "GET", "/api/system/repair", None).await;
    assert_eq!(r.json()["candidate_count"], 1, "{}", r.text);
    assert_eq!(
        r.json()["candidate_runs"][0]["reason"],
        "workflow_task_missing"
    );
    // The upstream taskRepairCandidates object: counts per scope (task queue).
    let candidates = &r.json()["candidates"];
    assert_eq!(candidates["missing_task_candidates"], 1, "{}", r.text);
    assert_eq!(candidates["total_candidates"], 1);
    assert_eq!(candidates["scan_strategy"], "scope_fair_round_robin");
    assert_eq!(candidates["scopes"][0]["queue"], "q");
    assert_eq!(candidates["scopes"][0]["missing_task_candidates"], 1);
    let r = control(
        &s,
        "adm",
        "default",
        "POST",
        "/api/system/repair/pass",
        Some(&json!({})),
    )
    .await;
    assert_eq!(r.json()["repaired_count"], 1, "{}", r.text);
    assert_eq!(r.json()["outcome"], "repair_dispatched");
    let task = poll(&s).await;
    assert_eq!(task["run_id"], json!(run_id));
    // A leased, healthy run is not a candidate.
    let r = control(
        &s,
        "adm",
        "default",
        "POST",
        "/api/system/repair/pass",
        Some(&json!({})),
    )
    .await;
    assert_eq!(r.json()["repaired_count"], 0, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_health_and_metrics_are_bounded_namespace_snapshots() {
    let s = start(TOKENS, None).await;
    start_workflow(&s, "h1").await;
    let r = control(&s, "adm", "default", "GET", "/api/system/health", None).await;
    expect_status(&r, 200);
    let body = r.json();
    assert_eq!(body["namespace"], "default");
    for key in [
        "status",
        "healthy",
        "checks",
        "categories",
        "operator_metrics",
        "structural_limits",
    ] {
        assert!(
            !body["health"][key].is_null(),
            "health.{key} missing: {}",
            r.text
        );
    }
    assert_eq!(body["health"]["operator_metrics"]["runs"]["open"], 1);
    assert_eq!(
        body["health"]["operator_metrics"]["backlog"]["ready_tasks"],
        1
    );
    for path in [
        "/api/system/metrics",
        "/api/system/operator-metrics",
        "/api/system/activity-timeouts",
    ] {
        expect_status(&control(&s, "adm", "default", "GET", path, None).await, 200);
    }
    let r = control(
        &s,
        "adm",
        "default",
        "POST",
        "/api/system/activity-timeouts/pass",
        None,
    )
    .await;
    assert_eq!(r.json()["fired_count"], 0, "{}", r.text);
    // Validation errors carry field-level detail.
    let r = control(
        &s,
        "adm",
        "default",
        "POST",
        "/api/system/retention/pass",
        Some(&json!({"limit": 0})),
    )
    .await;
    expect(&r, 422, "validation_failed");
    assert!(r.json()["errors"]["limit"].is_array());
}

/// `GET /metrics` as the worker token, asserted 200.
async fn scrape(s: &common::Server) -> common::Resp {
    let r = send(
        s.addr,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer wk")],
        None,
    )
    .await;
    expect_status(&r, 200);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scrape_has_the_named_series() {
    let s = start(TOKENS, None).await;
    register(&s).await;
    start_workflow(&s, "m1").await;
    start_workflow(&s, "m2").await;
    let leased = poll(&s).await;
    assert!(!leased.is_null());
    // Let the lease lapse: the timer service returns the task and counts the expiry.
    s.clock.advance(Duration::from_secs(11));
    let mut text = String::new();
    for _ in 0..200 {
        let r = scrape(&s).await;
        assert!(r
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")));
        text = r.text;
        if text.contains("keel_lease_expiries_total") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for series in [
        "keel_http_requests_total{",
        "route=\"start_workflow\"",
        "keel_http_request_duration_seconds_bucket{",
        "keel_polls_total{",
        "outcome=\"leased\"",
        "keel_lease_expiries_total{kind=\"workflow\"}",
        "keel_storage_commit_seconds_bucket",
        "keel_storage_commits_total{outcome=\"ok\"}",
        "keel_task_backlog{namespace=\"default\",queue=\"q\",kind=\"workflow\"} 2",
        "keel_task_leased{",
        "keel_task_queues",
    ] {
        assert!(text.contains(series), "missing {series} in:\n{text}");
    }
    // Counted through the handles kept after the first request: both starts count (other
    // tests' starts too when they share the process).
    let starts: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("keel_http_requests_total{") && l.contains("route=\"start_workflow\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    if common::alone_in_process() {
        assert_eq!(starts, 2.0, "in:\n{text}");
    } else {
        assert!(starts >= 2.0, "in:\n{text}");
    }
    assert!(
        !text.contains("m1") && !text.contains("m2"),
        "a workflow id leaked into a label"
    );
    // Without a token the scrape is refused like any authenticated route.
    expect(
        &send(s.addr, "GET", "/metrics", &[CONTROL], None).await,
        401,
        "unauthorized",
    );
}

/// The scrape's `keel_parked_polls` line, waited for until it reads `want`.
async fn wait_for_parked_polls(s: &common::Server, want: usize) {
    let line = format!("\nkeel_parked_polls {want}\n");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = scrape(s).await;
        if r.text.contains(&line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "keel_parked_polls never read {want}:\n{}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_parked_long_polls_and_the_eager_lease_that_answered_one() {
    let s = start(TOKENS, None).await;
    register(&s).await;
    wait_for_parked_polls(&s, 0).await;
    let addr = s.addr;
    let parked = tokio::spawn(async move {
        send(
            addr,
            "POST",
            "/api/worker/workflow-tasks/poll",
            &[
                ("Authorization", "Bearer wk"),
                WORKER,
                ("X-Namespace", "default"),
            ],
            Some(&json!({"worker_id": "w1", "task_queue": "q", "timeout_seconds": 30})),
        )
        .await
    });
    wait_for_parked_polls(&s, 1).await;
    start_workflow(&s, "wakes-the-poll").await;
    let r = parked.await.expect("poll task");
    expect_status(&r, 200);
    assert!(
        !r.json()["task"].is_null(),
        "the parked poll got the task: {}",
        r.text
    );
    wait_for_parked_polls(&s, 0).await;
    let metrics = scrape(&s).await.text;
    let eager = metrics
        .lines()
        .find(|l| {
            l.starts_with("keel_eager_leases_total{")
                && l.contains(r#"kind="workflow""#)
                && l.contains(r#"outcome="delivered""#)
        })
        .unwrap_or_else(|| panic!("no eager lease series in:\n{metrics}"));
    let delivered: f64 = eager
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a count: {eager}"));
    let expected = delivered == 1.0 || (!common::alone_in_process() && delivered >= 1.0);
    assert!(
        expected,
        "the start leased its task to the parked poll: {eager}"
    );
}

#[tokio::test]
async fn registration_reply_confirms_what_keel_honours_of_the_workers_request() {
    let s = start(TOKENS, None).await;
    let r = worker(
        &s,
        "wk",
        "default",
        "POST",
        "/api/worker/register",
        Some(&json!({
            "worker_id": "w-rust", "task_queue": "q", "runtime": "rust", "build_id": "b-7",
            "capabilities": ["sticky_execution", "local_activities", "worker_sessions",
                             "condition_wait_occurrence_identity", "message_streams"],
        })),
    )
    .await;
    assert!(r.status == 200 || r.status == 201, "{}", r.text);
    let body = r.json();
    // The Rust SDK confirms sticky execution and local activities from exactly these.
    assert_eq!(body["build_id"], "b-7");
    assert_eq!(body["namespace"], "default");
    assert_eq!(body["task_queue"], "q");
    assert_eq!(
        body["capabilities"],
        json!([
            "sticky_execution",
            "local_activities",
            "worker_sessions",
            "condition_wait_occurrence_identity"
        ]),
        "only what Keel honours is echoed"
    );
    let manifest = &body["capability_manifest"];
    assert_eq!(manifest["sticky_execution"]["supported"], true);
    assert_eq!(manifest["local_activities"]["supported"], true);
    assert_eq!(manifest["worker_sessions"]["supported"], true);
    assert_eq!(
        body["server_capabilities"]["sticky_execution"]["supported"],
        true
    );
}
