//! Namespaces isolate everything: workflows, history, workers, tasks and search
//! attributes of one namespace are invisible (404, never 403) from another, and a token
//! bound to a namespace cannot act in another one, polls and task completions included.

use crate::common;

use common::{control, expect, expect_status, start, worker};
use serde_json::{json, Value};

const TOKENS: &str =
    "admin:adm,operator:op-a@ns-a,operator:op-b@ns-b,worker:wk-a@ns-a,worker:wk-b@ns-b";

fn start_body(id: &str) -> Value {
    json!({"workflow_id": id, "workflow_type": "iso.wf", "task_queue": "q"})
}

async fn poll(s: &common::Server, token: &str, ns: &str, worker_id: &str) -> common::Resp {
    worker(
        s,
        token,
        ns,
        "POST",
        "/api/worker/workflow-tasks/poll",
        Some(&json!({"worker_id": worker_id, "task_queue": "q", "timeout_seconds": 0})),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cross_namespace_read_or_write() {
    let s = start(TOKENS, None).await;
    for ns in ["ns-a", "ns-b"] {
        let r = control(
            &s,
            "adm",
            "default",
            "POST",
            "/api/namespaces",
            Some(&json!({"name": ns})),
        )
        .await;
        expect_status(&r, 201);
    }
    // The same workflow id in both namespaces: two independent workflows.
    let a = control(
        &s,
        "op-a",
        "ns-a",
        "POST",
        "/api/workflows",
        Some(&start_body("wf-1")),
    )
    .await;
    expect_status(&a, 201);
    let run_a = a.json()["run_id"].as_str().expect("run id").to_string();
    let b = control(
        &s,
        "op-b",
        "ns-b",
        "POST",
        "/api/workflows",
        Some(&start_body("wf-1")),
    )
    .await;
    expect_status(&b, 201);
    assert_ne!(b.json()["run_id"], a.json()["run_id"]);

    // ns-a's run is invisible from ns-b, even to an unbound admin.
    let path = format!("/api/workflows/wf-1/runs/{run_a}");
    expect(
        &control(&s, "adm", "ns-b", "GET", &path, None).await,
        404,
        "run_not_found",
    );
    let history = format!("{path}/history");
    expect(
        &control(&s, "adm", "ns-b", "GET", &history, None).await,
        404,
        "run_not_found",
    );
    let only_in_a = control(
        &s,
        "op-a",
        "ns-a",
        "POST",
        "/api/workflows",
        Some(&start_body("wf-only-a")),
    )
    .await;
    expect_status(&only_in_a, 201);
    expect(
        &control(&s, "adm", "ns-b", "GET", "/api/workflows/wf-only-a", None).await,
        404,
        "instance_not_found",
    );
    // A token bound to ns-b cannot even address ns-a: answered like a missing namespace.
    let r = control(&s, "op-b", "ns-a", "GET", "/api/workflows/wf-1", None).await;
    expect(&r, 404, "namespace_not_found");
    let missing = control(&s, "op-b", "ns-zzz", "GET", "/api/workflows/wf-1", None).await;
    expect(&missing, 404, "namespace_not_found");
    assert_eq!(
        r.json()["message"]
            .as_str()
            .map(|m| m.replace("ns-a", "ns")),
        missing.json()["message"]
            .as_str()
            .map(|m| m.replace("ns-zzz", "ns")),
        "a bound token must not tell an unbound namespace from a missing one"
    );
    let r = control(
        &s,
        "op-b",
        "ns-a",
        "POST",
        "/api/workflows",
        Some(&start_body("wf-2")),
    )
    .await;
    expect(&r, 404, "namespace_not_found");
    // Namespace listing and describe follow the binding.
    let list = control(&s, "op-b", "ns-b", "GET", "/api/namespaces", None).await;
    let names: Vec<Value> = list.json()["namespaces"]
        .as_array()
        .expect("list")
        .iter()
        .map(|n| n["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("ns-b")]);
    expect(
        &control(&s, "op-b", "ns-b", "GET", "/api/namespaces/ns-a", None).await,
        404,
        "namespace_not_found",
    );

    // Workers: registration, polls and completions stay in their namespace.
    for (token, ns, id) in [("wk-a", "ns-a", "worker-a"), ("wk-b", "ns-b", "worker-b")] {
        let r = worker(
            &s,
            token,
            ns,
            "POST",
            "/api/worker/register",
            Some(&json!({"worker_id": id, "task_queue": "q", "runtime": "python"})),
        )
        .await;
        assert!(
            r.status == 200 || r.status == 201,
            "register {id}: {}",
            r.text
        );
    }
    expect(
        &poll(&s, "wk-b", "ns-a", "worker-b").await,
        404,
        "namespace_not_found",
    );
    // worker-a's registration does not exist in ns-b.
    let r = poll(&s, "wk-b", "ns-b", "worker-a").await;
    assert!(
        matches!(r.status, 404 | 412),
        "poll as an ns-a worker in ns-b: {}",
        r.text
    );
    let r = worker(
        &s,
        "wk-b",
        "ns-b",
        "POST",
        "/api/worker/heartbeat",
        Some(&json!({"worker_id": "worker-a"})),
    )
    .await;
    assert_eq!(
        r.status, 404,
        "heartbeat of an ns-a worker in ns-b: {}",
        r.text
    );

    let leased_a = poll(&s, "wk-a", "ns-a", "worker-a").await;
    expect_status(&leased_a, 200);
    let task_a = leased_a.json()["task"].clone();
    assert_eq!(task_a["namespace"], "ns-a", "{}", leased_a.text);
    let leased_b = poll(&s, "wk-b", "ns-b", "worker-b").await;
    let task_b = leased_b.json()["task"].clone();
    assert_eq!(task_b["namespace"], "ns-b", "{}", leased_b.text);
    assert_eq!(
        task_b["run_id"],
        b.json()["run_id"],
        "ns-b's worker got ns-b's task"
    );

    // Completing ns-a's task from ns-b: unknown there, and ns-a is out of reach.
    let complete = json!({
        "lease_owner": task_a["lease_owner"],
        "workflow_task_attempt": task_a["workflow_task_attempt"],
        "commands": [{"type": "complete_workflow", "result": null}],
    });
    let task_path = format!(
        "/api/worker/workflow-tasks/{}/complete",
        task_a["task_id"].as_str().expect("task id")
    );
    expect(
        &worker(&s, "wk-b", "ns-b", "POST", &task_path, Some(&complete)).await,
        404,
        "task_not_found",
    );
    expect(
        &worker(&s, "wk-b", "ns-a", "POST", &task_path, Some(&complete)).await,
        404,
        "namespace_not_found",
    );
    // A worker token cannot use control routes, nor a control token worker routes.
    expect(
        &worker(&s, "op-a", "ns-a", "POST", &task_path, Some(&complete)).await,
        403,
        "forbidden",
    );
    // Its own worker completes it.
    expect_status(
        &worker(&s, "wk-a", "ns-a", "POST", &task_path, Some(&complete)).await,
        200,
    );
    let desc = control(&s, "op-a", "ns-a", "GET", "/api/workflows/wf-1", None).await;
    assert_eq!(desc.json()["status"], "completed", "{}", desc.text);
    let desc_b = control(&s, "op-b", "ns-b", "GET", "/api/workflows/wf-1", None).await;
    assert_ne!(desc_b.json()["status"], "completed", "{}", desc_b.text);

    // Search attributes are registered per namespace.
    let r = control(
        &s,
        "op-a",
        "ns-a",
        "POST",
        "/api/search-attributes",
        Some(&json!({"name": "CustomerId", "type": "keyword"})),
    )
    .await;
    expect_status(&r, 201);
    let a_attrs = control(&s, "op-a", "ns-a", "GET", "/api/search-attributes", None).await;
    assert_eq!(
        a_attrs.json()["custom_attributes"],
        json!({"CustomerId": "keyword"})
    );
    let b_attrs = control(&s, "op-b", "ns-b", "GET", "/api/search-attributes", None).await;
    assert_eq!(b_attrs.json()["custom_attributes"], json!({}));
    let start_with = |id: &str| {
        let mut body = start_body(id);
        body["search_attributes"] = json!({"CustomerId": "c-42"});
        body
    };
    expect_status(
        &control(
            &s,
            "op-a",
            "ns-a",
            "POST",
            "/api/workflows",
            Some(&start_with("wf-sa")),
        )
        .await,
        201,
    );
    let r = control(
        &s,
        "op-b",
        "ns-b",
        "POST",
        "/api/workflows",
        Some(&start_with("wf-sa")),
    )
    .await;
    expect(&r, 422, "validation_failed");
    assert!(
        r.json()["errors"]["search_attributes.CustomerId"].is_array(),
        "{}",
        r.text
    );
}
