//! The deviations from the upstream contract found by fuzzing it (#15 section 3), each
//! held: every limit `cluster/info` advertises is enforced on every route that takes
//! its field, with the limit named in the refusal; the seed's `duplicate_policy:
//! "reject"`; the task-repair policy object. (The 405 `Allow` header and 401-before-404
//! are in `auth_matrix.rs`.)

use crate::common;

use common::{control, expect, expect_status, start, worker, Resp, Server};
use keel_engine::avro::{self, AvroValue};
use serde_json::{json, Map, Value};

const TOKENS: &str = "admin:adm,operator:op,worker:wk";

async fn cluster_limits(s: &Server) -> Map<String, Value> {
    let r = control(s, "op", "default", "GET", "/api/cluster/info", None).await;
    expect_status(&r, 200);
    r.json()["limits"]
        .as_object()
        .cloned()
        .expect("limits object")
}

async fn start_workflow(s: &Server, id: &str, extra: Value) -> Resp {
    let mut body = json!({"workflow_id": id, "workflow_type": "limits.wf", "task_queue": "q"});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    control(s, "op", "default", "POST", "/api/workflows", Some(&body)).await
}

fn schedule(id: &str, extra: Value) -> Value {
    let mut body = json!({
        "schedule_id": id,
        "spec": {"cron_expressions": ["0 3 * * *"]},
        "action": {"workflow_type": "limits.wf", "task_queue": "q"},
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

/// A workflow task of a fresh run of `id`, leased by worker `w1`.
async fn leased_task(s: &Server, id: &str) -> Value {
    expect_status(&start_workflow(s, id, json!({})).await, 201);
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
        let task = &r.json()["task"];
        if task["workflow_id"] == json!(id) {
            return task.clone();
        }
    }
    panic!("no workflow task for {id}");
}

async fn complete(s: &Server, task: &Value, commands: Vec<Value>) -> Resp {
    let path = format!(
        "/api/worker/workflow-tasks/{}/complete",
        task["task_id"].as_str().expect("task id")
    );
    let body = json!({
        "lease_owner": task["lease_owner"],
        "workflow_task_attempt": task["workflow_task_attempt"],
        "commands": commands,
    });
    worker(s, "wk", "default", "POST", &path, Some(&body)).await
}

/// Asserts a refusal that names `limit` with its advertised value: as a body field, or,
/// for a field-level 422, in the message of the offending field.
#[track_caller]
fn names_limit(r: &Resp, limit: &str, value: &Value) {
    let body = r.json();
    if body.get(limit) == Some(value) || body.get("limit") == Some(value) {
        return;
    }
    let messages = body["errors"].to_string();
    assert!(
        messages.contains(&value.to_string()),
        "the refusal names neither {limit} nor its value {value}: {}",
        r.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_advertised_limit_is_enforced_on_every_route_that_takes_its_field() {
    let s = start(TOKENS, None).await;
    let limits = cluster_limits(&s).await;
    let value = |k: &str| limits.get(k).cloned().expect(k);
    let n = |k: &str| value(k).as_u64().expect("a number") as usize;
    let mut probed: Vec<&str> = Vec::new();

    // max_payload_bytes: any request body, on every plane.
    let big = json!({"pad": "x".repeat(n("max_payload_bytes"))});
    for (plane, method, path) in [
        ("control", "POST", "/api/workflows"),
        ("control", "POST", "/api/workflows/w/signal/s"),
        ("control", "PUT", "/api/schedules/s"),
        ("worker", "POST", "/api/worker/register"),
    ] {
        let r = if plane == "worker" {
            worker(&s, "wk", "default", method, path, Some(&big)).await
        } else {
            control(&s, "op", "default", method, path, Some(&big)).await
        };
        expect(&r, 413, "payload_too_large");
        names_limit(&r, "max_payload_bytes", &value("max_payload_bytes"));
    }
    probed.push("max_payload_bytes");

    // max_memo_bytes: start, schedule create and update, upsert_memo.
    let memo_limit = n("max_memo_bytes");
    let memo = json!({"blob": "x".repeat(memo_limit)});
    let r = start_workflow(&s, "big-memo", json!({"memo": memo})).await;
    expect(&r, 422, "memo_too_large");
    names_limit(&r, "max_memo_bytes", &value("max_memo_bytes"));
    let r = control(
        &s,
        "op",
        "default",
        "POST",
        "/api/schedules",
        Some(&schedule("big-memo", json!({"memo": memo}))),
    )
    .await;
    expect(&r, 422, "memo_too_large");
    names_limit(&r, "max_memo_bytes", &value("max_memo_bytes"));
    expect_status(
        &control(
            &s,
            "op",
            "default",
            "POST",
            "/api/schedules",
            Some(&schedule("small", json!({}))),
        )
        .await,
        201,
    );
    let r = control(
        &s,
        "op",
        "default",
        "PUT",
        "/api/schedules/small",
        Some(&json!({"memo": memo})),
    )
    .await;
    expect(&r, 422, "memo_too_large");
    names_limit(&r, "max_memo_bytes", &value("max_memo_bytes"));
    let task = leased_task(&s, "upserts").await;
    let entries = AvroValue::Map(vec![(
        "blob".into(),
        AvroValue::String("x".repeat(memo_limit)),
    )]);
    let r = complete(
        &s,
        &task,
        vec![json!({"type": "upsert_memo", "entries": {"codec": "avro", "blob": avro::encode_blob(&entries)}})],
    )
    .await;
    expect(&r, 422, "invalid_commands");
    names_limit(&r, "max_memo_bytes", &value("max_memo_bytes"));
    probed.push("max_memo_bytes");

    // max_search_attributes: start, schedule create, upsert, the namespace's registry.
    let many: Map<String, Value> = (0..=n("max_search_attributes"))
        .map(|i| (format!("A{i}"), json!("v")))
        .collect();
    let r = start_workflow(&s, "many-attrs", json!({"search_attributes": many})).await;
    expect(&r, 422, "validation_failed");
    names_limit(&r, "max_search_attributes", &value("max_search_attributes"));
    let r = control(
        &s,
        "op",
        "default",
        "POST",
        "/api/schedules",
        Some(&schedule("many-attrs", json!({"search_attributes": many}))),
    )
    .await;
    expect(&r, 422, "validation_failed");
    names_limit(&r, "max_search_attributes", &value("max_search_attributes"));
    let r = complete(
        &s,
        &task,
        vec![json!({"type": "upsert_search_attributes", "attributes": many})],
    )
    .await;
    expect(&r, 422, "invalid_commands");
    names_limit(&r, "max_search_attributes", &value("max_search_attributes"));
    for i in 0..n("max_search_attributes") {
        let r = control(
            &s,
            "adm",
            "default",
            "POST",
            "/api/search-attributes",
            Some(&json!({"name": format!("Attr{i}"), "type": "keyword"})),
        )
        .await;
        expect_status(&r, 201);
    }
    let r = control(
        &s,
        "adm",
        "default",
        "POST",
        "/api/search-attributes",
        Some(&json!({"name": "OneTooMany", "type": "keyword"})),
    )
    .await;
    expect(&r, 422, "search_attribute_limit_reached");
    names_limit(&r, "max_search_attributes", &value("max_search_attributes"));
    probed.push("max_search_attributes");

    // max_search_attribute_key_length: registration, upsert.
    let long_key = "K".repeat(n("max_search_attribute_key_length") + 1);
    let r = control(
        &s,
        "adm",
        "default",
        "POST",
        "/api/search-attributes",
        Some(&json!({"name": long_key, "type": "keyword"})),
    )
    .await;
    expect(&r, 422, "validation_failed");
    names_limit(
        &r,
        "max_search_attribute_key_length",
        &value("max_search_attribute_key_length"),
    );
    let r = complete(
        &s,
        &task,
        vec![json!({"type": "upsert_search_attributes", "attributes": {long_key.clone(): "v"}})],
    )
    .await;
    expect(&r, 422, "invalid_commands");
    names_limit(
        &r,
        "max_search_attribute_key_length",
        &value("max_search_attribute_key_length"),
    );
    probed.push("max_search_attribute_key_length");

    // max_search_attribute_value_bytes: start, schedule create, upsert.
    let long_value = json!("v".repeat(n("max_search_attribute_value_bytes")));
    let attrs = json!({"Attr0": long_value});
    let r = start_workflow(&s, "long-value", json!({"search_attributes": attrs})).await;
    expect(&r, 422, "validation_failed");
    names_limit(
        &r,
        "max_search_attribute_value_bytes",
        &value("max_search_attribute_value_bytes"),
    );
    let r = control(
        &s,
        "op",
        "default",
        "POST",
        "/api/schedules",
        Some(&schedule("long-value", json!({"search_attributes": attrs}))),
    )
    .await;
    expect(&r, 422, "validation_failed");
    let r = complete(
        &s,
        &task,
        vec![json!({"type": "upsert_search_attributes", "attributes": attrs})],
    )
    .await;
    expect(&r, 422, "invalid_commands");
    names_limit(
        &r,
        "max_search_attribute_value_bytes",
        &value("max_search_attribute_value_bytes"),
    );
    probed.push("max_search_attribute_value_bytes");

    // max_operation_name_length: signal, query and update names, on both route forms.
    let long_name = "n".repeat(n("max_operation_name_length") + 1);
    let run_id = start_workflow(&s, "named", json!({})).await.json()["run_id"]
        .as_str()
        .expect("run id")
        .to_string();
    for command in ["signal", "query", "update"] {
        for path in [
            format!("/api/workflows/named/{command}/{long_name}"),
            format!("/api/workflows/named/runs/{run_id}/{command}/{long_name}"),
        ] {
            let r = control(&s, "op", "default", "POST", &path, Some(&json!({}))).await;
            expect(&r, 422, "validation_failed");
            names_limit(
                &r,
                "max_operation_name_length",
                &value("max_operation_name_length"),
            );
        }
    }
    probed.push("max_operation_name_length");

    // max_pending_activities, max_pending_children: one workflow task's commands.
    for (limit, command) in [
        (
            "max_pending_activities",
            json!({"type": "schedule_activity", "activity_type": "a", "queue": "q"}),
        ),
        (
            "max_pending_children",
            json!({"type": "start_child_workflow", "workflow_type": "c", "queue": "q"}),
        ),
    ] {
        let r = complete(&s, &task, vec![command; n(limit) + 1]).await;
        expect(&r, 422, "invalid_commands");
        names_limit(&r, limit, &value(limit));
        probed.push(limit);
    }

    // The refused completions left the task as it was: it still completes.
    expect_status(
        &complete(
            &s,
            &task,
            vec![json!({"type": "complete_workflow", "result": null})],
        )
        .await,
        200,
    );
    let mut advertised: Vec<&str> = limits.keys().map(String::as_str).collect();
    advertised.sort_unstable();
    probed.sort_unstable();
    assert_eq!(
        advertised, probed,
        "every limit cluster/info advertises has its probes here"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_accepts_the_seeds_duplicate_policy_reject_as_fail() {
    let s = start(TOKENS, None).await;
    let body = json!({"duplicate_policy": "reject"});
    expect_status(&start_workflow(&s, "order-1001", body.clone()).await, 201);
    let r = start_workflow(&s, "order-1001", body).await;
    expect(&r, 409, "duplicate_not_allowed");
    assert_eq!(r.json()["outcome"], "rejected_duplicate");
    let r = start_workflow(&s, "order-1002", json!({"duplicate_policy": "bogus"})).await;
    expect(&r, 422, "validation_failed");
    assert!(
        r.json()["errors"]["duplicate_policy"].is_array(),
        "{}",
        r.text
    );
    // The request contract names the alias.
    let r = control(&s, "op", "default", "GET", "/api/cluster/info", None).await;
    assert_eq!(
        r.json()["control_plane"]["request_contract"]["operations"]["start"]["fields"]
            ["duplicate_policy"]["aliases"]["reject"],
        "fail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repair_status_states_the_task_repair_policy_the_spec_requires() {
    let s = start(TOKENS, None).await;
    let r = control(&s, "adm", "default", "GET", "/api/system/repair", None).await;
    expect_status(&r, 200);
    let policy = &r.json()["policy"];
    for field in [
        "redispatch_after_seconds",
        "loop_throttle_seconds",
        "scan_limit",
        "failure_backoff_max_seconds",
    ] {
        assert!(
            policy[field].as_u64().is_some_and(|v| v >= 1),
            "{field}: {policy}"
        );
    }
    assert_eq!(policy["scan_strategy"], "scope_fair_round_robin");
    assert_eq!(
        policy["failure_backoff_strategy"],
        "exponential_by_repair_count"
    );
    // Keel's own values: the workflow-task lease (10 s in these tests) and the cap of the
    // failed-task backoff.
    assert_eq!(policy["redispatch_after_seconds"], 10);
    assert_eq!(
        policy["failure_backoff_max_seconds"],
        keel_engine::model::WORKFLOW_TASK_FAILURE_BACKOFF_MAX_SECONDS
    );
    let candidates = &r.json()["candidates"];
    for field in [
        "existing_task_candidates",
        "missing_task_candidates",
        "total_candidates",
        "scan_limit",
    ] {
        assert!(candidates[field].is_u64(), "{field}: {candidates}");
    }
    assert!(candidates["scopes"].is_array());
    // cluster/info's task_repair block carries the same policy.
    let info = control(&s, "op", "default", "GET", "/api/cluster/info", None).await;
    assert_eq!(&info.json()["task_repair"]["policy"], policy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_metrics_post_whose_body_is_not_an_object_is_refused() {
    // Found by the contract stage: the body was ignored, so `5` answered 200.
    let s = start(TOKENS, None).await;
    let r = control(
        &s,
        "adm",
        "default",
        "POST",
        "/api/system/metrics",
        Some(&json!(5)),
    )
    .await;
    expect(&r, 422, "validation_failed");
    assert!(r.json()["errors"]["body"].is_array(), "{}", r.text);
    let r = control(
        &s,
        "adm",
        "default",
        "POST",
        "/api/system/metrics",
        Some(&json!({})),
    )
    .await;
    expect_status(&r, 200);
}
