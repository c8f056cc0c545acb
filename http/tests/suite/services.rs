//! The service catalog and webhook bridge routes over HTTP: the catalog lifecycle with its
//! 409 delete refusals, 404s naming the missing object, 422s with field paths, namespace
//! isolation, and bridge events answered with the outcome document.

use crate::common;

use common::{control, expect, expect_status, start};
use serde_json::{json, Value};

const TOKENS: &str = "admin:tok-admin,operator:tok-op";
const A: &str = "tok-admin";
const EP: &str = "/api/service-endpoints";

#[tokio::test]
async fn the_catalog_lifecycle_with_delete_refusals() {
    let s = start(TOKENS, None).await;
    let r = control(
        &s,
        A,
        "default",
        "POST",
        EP,
        Some(
            &json!({"endpoint_name": "Billing", "description": "money", "metadata": {"team": "b"}}),
        ),
    )
    .await;
    expect_status(&r, 201);
    let ep = r.json();
    assert_eq!(ep["endpoint_name"], "billing");
    assert_eq!(ep["namespace"], "default");
    for k in ["id", "created_at", "updated_at"] {
        assert!(ep[k].is_string(), "{k} in {ep}");
    }
    let r = control(
        &s,
        A,
        "default",
        "POST",
        EP,
        Some(&json!({"endpoint_name": "BILLING"})),
    )
    .await;
    expect(&r, 409, "endpoint_already_exists");

    let r = control(
        &s,
        A,
        "default",
        "POST",
        "/api/service-endpoints/BILLING/services",
        Some(&json!({"service_name": "Invoices"})),
    )
    .await;
    expect_status(&r, 201);
    assert_eq!(r.json()["endpoint_id"], ep["id"]);
    assert_eq!(r.json()["service_name"], "invoices");

    let ops = "/api/service-endpoints/billing/services/invoices/operations";
    let op = json!({
        "operation_name": "Charge",
        "operation_mode": "async",
        "handler_binding_kind": "start_workflow",
        "handler_target_reference": "invoice.charge",
        "deadline_policy": {"timeout_seconds": 30},
        "metadata": {"v": 1},
    });
    let r = control(&s, A, "default", "POST", ops, Some(&op)).await;
    expect_status(&r, 201);
    let created = r.json();
    assert_eq!(created["operation_name"], "charge");
    assert_eq!(created["operation_mode"], "async");
    assert_eq!(created["deadline_policy"], json!({"timeout_seconds": 30}));
    assert_eq!(created["retry_policy"], Value::Null);

    let r = control(
        &s,
        A,
        "default",
        "GET",
        "/api/service-endpoints/Billing/services/INVOICES/operations/charge",
        None,
    )
    .await;
    expect_status(&r, 200);
    assert_eq!(r.json()["id"], created["id"]);
    let r = control(&s, A, "default", "GET", ops, None).await;
    assert_eq!(r.json()["operations"].as_array().map(Vec::len), Some(1));
    let r = control(&s, A, "default", "GET", EP, None).await;
    assert_eq!(r.json()["service_endpoints"][0]["endpoint_name"], "billing");

    let r = control(
        &s,
        A,
        "default",
        "PUT",
        "/api/service-endpoints/billing/services/invoices/operations/charge",
        Some(&json!({"operation_mode": "sync", "description": "charge it"})),
    )
    .await;
    expect_status(&r, 200);
    assert_eq!(
        (
            r.json()["operation_mode"].clone(),
            r.json()["handler_target_reference"].clone()
        ),
        (json!("sync"), json!("invoice.charge"))
    );
    let r = control(
        &s,
        A,
        "default",
        "PUT",
        "/api/service-endpoints/billing",
        Some(&json!({"description": null})),
    )
    .await;
    expect_status(&r, 200);
    assert_eq!(r.json()["description"], Value::Null);
    assert_eq!(r.json()["metadata"], json!({"team": "b"}));

    let r = control(
        &s,
        A,
        "default",
        "DELETE",
        "/api/service-endpoints/billing",
        None,
    )
    .await;
    expect(&r, 409, "endpoint_has_services");
    assert_eq!(r.json()["endpoint_name"], "billing");
    let r = control(
        &s,
        A,
        "default",
        "DELETE",
        "/api/service-endpoints/billing/services/invoices",
        None,
    )
    .await;
    expect(&r, 409, "service_has_operations");
    let r = control(
        &s,
        A,
        "default",
        "DELETE",
        "/api/service-endpoints/billing/services/invoices/operations/CHARGE",
        None,
    )
    .await;
    expect_status(&r, 200);
    assert_eq!(r.json()["outcome"], "deleted");
    let r = control(
        &s,
        A,
        "default",
        "DELETE",
        "/api/service-endpoints/billing/services/invoices",
        None,
    )
    .await;
    expect_status(&r, 200);
    let r = control(
        &s,
        A,
        "default",
        "DELETE",
        "/api/service-endpoints/billing",
        None,
    )
    .await;
    expect_status(&r, 200);
    let r = control(
        &s,
        A,
        "default",
        "GET",
        "/api/service-endpoints/billing",
        None,
    )
    .await;
    expect(&r, 404, "endpoint_not_found");
}

#[tokio::test]
async fn catalog_bad_input_names_fields_and_missing_objects() {
    let s = start(TOKENS, None).await;
    let r = control(
        &s,
        A,
        "default",
        "POST",
        EP,
        Some(&json!({"endpoint_name": "bad name!", "metadata": 3})),
    )
    .await;
    expect(&r, 422, "validation_failed");
    let errors = r.json()["errors"].clone();
    assert!(
        errors["endpoint_name"].is_array() && errors["metadata"].is_array(),
        "{errors}"
    );
    let r = control(&s, A, "default", "POST", EP, Some(&json!([1]))).await;
    expect(&r, 422, "validation_failed");

    let r = control(
        &s,
        A,
        "default",
        "GET",
        "/api/service-endpoints/nope/services",
        None,
    )
    .await;
    expect(&r, 404, "endpoint_not_found");
    assert_eq!(r.json()["endpoint_name"], "nope");
    control(
        &s,
        A,
        "default",
        "POST",
        EP,
        Some(&json!({"endpoint_name": "e"})),
    )
    .await;
    let r = control(
        &s,
        A,
        "default",
        "POST",
        "/api/service-endpoints/e/services/nope/operations",
        Some(&json!({})),
    )
    .await;
    // Validation first: nothing is looked up for a malformed body.
    expect(&r, 422, "validation_failed");
    let r = control(
        &s,
        A,
        "default",
        "GET",
        "/api/service-endpoints/e/services/nope/operations/x",
        None,
    )
    .await;
    expect(&r, 404, "service_not_found");
    assert_eq!(r.json()["service_name"], "nope");

    control(
        &s,
        A,
        "default",
        "POST",
        "/api/service-endpoints/e/services",
        Some(&json!({"service_name": "s"})),
    )
    .await;
    let r = control(&s, A, "default", "POST", "/api/service-endpoints/e/services/s/operations", Some(&json!({
        "operation_name": "o", "operation_mode": "eventually", "handler_binding_kind": "telepathy",
        "handler_binding": {}, "retry_policy": "often",
    }))).await;
    expect(&r, 422, "validation_failed");
    let errors = r.json()["errors"].clone();
    for f in [
        "operation_mode",
        "handler_binding_kind",
        "handler_target_reference",
        "retry_policy",
    ] {
        assert!(errors[f].is_array(), "{f} missing in {errors}");
    }
    let r = control(
        &s,
        A,
        "default",
        "GET",
        "/api/service-endpoints/e/services/s/operations/missing",
        None,
    )
    .await;
    expect(&r, 404, "operation_not_found");
    assert_eq!(r.json()["operation_name"], "missing");
}

#[tokio::test]
async fn the_catalog_is_namespace_scoped_and_admin_only() {
    let s = start(TOKENS, None).await;
    control(
        &s,
        A,
        "default",
        "POST",
        "/api/namespaces",
        Some(&json!({"name": "other"})),
    )
    .await;
    expect_status(
        &control(
            &s,
            A,
            "default",
            "POST",
            EP,
            Some(&json!({"endpoint_name": "e"})),
        )
        .await,
        201,
    );
    let r = control(&s, A, "other", "GET", "/api/service-endpoints/e", None).await;
    expect(&r, 404, "endpoint_not_found");
    // The same name in another namespace is another endpoint.
    expect_status(
        &control(
            &s,
            A,
            "other",
            "POST",
            EP,
            Some(&json!({"endpoint_name": "e"})),
        )
        .await,
        201,
    );
    let r = control(&s, "tok-op", "default", "GET", EP, None).await;
    expect(&r, 403, "forbidden");
}

async fn configure(s: &common::Server, adapter: &str, body: Value) -> common::Resp {
    control(
        s,
        A,
        "default",
        "PUT",
        &format!("/api/bridge-adapters/webhook/{adapter}"),
        Some(&body),
    )
    .await
}

#[tokio::test]
async fn webhook_events_answer_the_outcome_document() {
    let s = start(TOKENS, None).await;
    let event = json!({
        "action": "start_workflow",
        "idempotency_key": "evt_1001",
        "target": {"workflow_type": "orders.fulfillment", "task_queue": "orders", "business_key": "order-1001"},
        "input": {"order_id": "order-1001"},
        "correlation": {"provider": "stripe"},
    });
    let r = control(
        &s,
        "tok-op",
        "default",
        "POST",
        "/api/bridge-adapters/webhook/stripe",
        Some(&event),
    )
    .await;
    expect(&r, 422, "adapter_unavailable");
    assert_eq!(r.json()["outcome"], "rejected");
    assert_eq!(
        r.json()["schema"],
        "durable-workflow.v2.bridge-adapter-outcome.contract"
    );

    let r = configure(
        &s,
        "stripe",
        json!({"actions": ["start_workflow", "nope"], "workflow_types": []}),
    )
    .await;
    expect(&r, 422, "validation_failed");
    let errors = r.json()["errors"].clone();
    assert!(
        errors["actions.1"].is_array()
            && errors["workflow_types"].is_array()
            && errors["task_queues"].is_array(),
        "{errors}"
    );
    let r = configure(
        &s,
        "stripe",
        json!({"workflow_types": ["orders.fulfillment"], "task_queues": ["orders"]}),
    )
    .await;
    expect_status(&r, 201);
    assert_eq!(
        r.json()["actions"],
        json!(["start_workflow", "signal_workflow", "update_workflow"])
    );
    let r = control(&s, A, "default", "GET", "/api/bridge-adapters", None).await;
    assert_eq!(r.json()["adapters"][0]["adapter"], "stripe");

    let r = control(
        &s,
        "tok-op",
        "default",
        "POST",
        "/api/bridge-adapters/webhook/stripe",
        Some(&event),
    )
    .await;
    expect_status(&r, 202);
    let first = r.json();
    assert_eq!(
        (first["accepted"].clone(), first["outcome"].clone()),
        (json!(true), json!("accepted"))
    );
    assert_eq!(first["control_plane_outcome"], "started_new");
    assert_eq!(first["target"]["business_key"], "order-1001");
    assert_eq!(first["correlation"], json!({"provider": "stripe"}));
    assert!(first.get("input").is_none());
    let wf = first["workflow_id"]
        .as_str()
        .expect("workflow id")
        .to_string();
    let r = control(
        &s,
        "tok-op",
        "default",
        "GET",
        &format!("/api/workflows/{wf}"),
        None,
    )
    .await;
    expect_status(&r, 200);

    let r = control(
        &s,
        "tok-op",
        "default",
        "POST",
        "/api/bridge-adapters/webhook/stripe",
        Some(&event),
    )
    .await;
    expect_status(&r, 200);
    assert_eq!(r.json()["outcome"], "duplicate");
    assert_eq!(r.json()["run_id"], first["run_id"]);

    let r = control(
        &s,
        "tok-op",
        "default",
        "POST",
        "/api/bridge-adapters/webhook/stripe",
        Some(&json!({"action": "teleport", "idempotency_key": "k", "target": {}})),
    )
    .await;
    expect(&r, 422, "unsupported_action");
    assert_eq!(r.json()["action"], "teleport");
    let r = control(
        &s,
        "tok-op",
        "default",
        "POST",
        "/api/bridge-adapters/webhook/stripe",
        Some(&json!({"action": "signal_workflow", "target": {"workflow_id": 7}})),
    )
    .await;
    expect(&r, 422, "malformed_payload");
    let errors = r.json()["errors"].clone();
    for f in [
        "idempotency_key",
        "target.workflow_id",
        "target.signal_name",
    ] {
        assert!(errors[f].is_array(), "{f} missing in {errors}");
    }
    let r = control(
        &s,
        A,
        "default",
        "DELETE",
        "/api/bridge-adapters/webhook/stripe",
        None,
    )
    .await;
    expect_status(&r, 200);
    let r = control(
        &s,
        A,
        "default",
        "GET",
        "/api/bridge-adapters/webhook/stripe",
        None,
    )
    .await;
    expect(&r, 404, "adapter_not_found");
}

#[tokio::test]
async fn execute_refuses_bad_input_missing_operations_and_unknown_caller_namespaces() {
    let s = start(TOKENS, None).await;
    control(
        &s,
        A,
        "default",
        "POST",
        EP,
        Some(&json!({"endpoint_name": "e"})),
    )
    .await;
    control(
        &s,
        A,
        "default",
        "POST",
        "/api/service-endpoints/e/services",
        Some(&json!({"service_name": "s"})),
    )
    .await;
    let op = json!({"operation_name": "o", "operation_mode": "sync", "handler_binding_kind": "start_workflow", "handler_target_reference": "t"});
    expect_status(
        &control(
            &s,
            A,
            "default",
            "POST",
            "/api/service-endpoints/e/services/s/operations",
            Some(&op),
        )
        .await,
        201,
    );
    let path = "/api/service-endpoints/e/services/s/operations/o/execute";
    let r = control(&s, "tok-op", "default", "POST", path, Some(&json!({"mode_override": "later", "wait_for": "never", "wait_timeout_seconds": -1, "arguments": 5}))).await;
    expect(&r, 422, "validation_failed");
    let errors = r.json()["errors"].clone();
    for f in [
        "mode_override",
        "wait_for",
        "wait_timeout_seconds",
        "arguments",
    ] {
        assert!(errors[f].is_array(), "{f} missing in {errors}");
    }
    let r = control(
        &s,
        "tok-op",
        "default",
        "POST",
        "/api/service-endpoints/e/services/s/operations/missing/execute",
        Some(&json!({})),
    )
    .await;
    expect(&r, 404, "operation_not_found");
    let r = control(
        &s,
        "tok-op",
        "default",
        "POST",
        path,
        Some(&json!({"caller_namespace": "nowhere"})),
    )
    .await;
    expect(&r, 404, "namespace_not_found");
    assert_eq!(r.json()["field"], "caller_namespace");
    let r = control(
        &s,
        "tok-op",
        "default",
        "POST",
        path,
        Some(&json!({"mode_override": "async", "idempotency_key": "k"})),
    )
    .await;
    expect_status(&r, 202);
    let call = r.json();
    assert_eq!(call["service_call"]["status"], "started");
    assert_eq!(
        call["linked_workflow_instance_id"],
        format!("svc-{}", call["id"].as_str().unwrap_or_default())
    );
    let r = control(
        &s,
        A,
        "default",
        "GET",
        &format!(
            "/api/service-endpoints/e/services/s/operations/o/service-calls/{}",
            call["id"].as_str().unwrap_or_default()
        ),
        None,
    )
    .await;
    expect_status(&r, 200);
    assert_eq!(r.json()["caller_namespace"], "default");
}

#[tokio::test]
async fn a_malformed_start_service_operation_is_422_with_command_field_paths() {
    let s = start("admin+worker:tok-admin", None).await;
    let r = control(
        &s,
        A,
        "default",
        "POST",
        "/api/workflows",
        Some(&json!({"workflow_id": "caller", "workflow_type": "t", "task_queue": "q"})),
    )
    .await;
    expect_status(&r, 201);
    let r = common::worker(
        &s,
        A,
        "default",
        "POST",
        "/api/worker/register",
        Some(&json!({"worker_id": "w1", "task_queue": "q", "runtime": "python"})),
    )
    .await;
    assert!(r.status == 200 || r.status == 201, "{}", r.text);
    let r = common::worker(
        &s,
        A,
        "default",
        "POST",
        "/api/worker/workflow-tasks/poll",
        Some(&json!({"worker_id": "w1", "task_queue": "q", "timeout_seconds": 0})),
    )
    .await;
    expect_status(&r, 200);
    let task = r.json()["task"].clone();
    let path = format!(
        "/api/worker/workflow-tasks/{}/complete",
        task["task_id"].as_str().expect("a task")
    );
    let body = json!({
        "lease_owner": task["lease_owner"],
        "workflow_task_attempt": task["workflow_task_attempt"],
        "commands": [{
            "type": "start_service_operation",
            "endpoint_name": "",
            "service_name": "s",
            "operation_name": "o",
            "request_payload": 7,
            "mode_override": "later",
            "wait_for": "never",
            "namespace": 3,
            "wait_timeout_seconds": -1,
        }],
    });
    let r = common::worker(&s, A, "default", "POST", &path, Some(&body)).await;
    expect(&r, 422, "validation_failed");
    let errors = r.json()["errors"].clone();
    for f in [
        "endpoint_name",
        "request_payload",
        "mode_override",
        "wait_for",
        "namespace",
        "wait_timeout_seconds",
    ] {
        let path = format!("commands.0.{f}");
        assert!(errors[&path].is_array(), "{path} missing in {errors}");
    }
    assert!(errors.get("commands.0.service_name").is_none());
}

/// A loopback endpoint answering every request `200 {"paid": true}` after reading it.
async fn paying_endpoint() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = conn.read(&mut buf).await.unwrap_or(0);
                raw.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&raw).to_string();
                let done = text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    body.len() >= len
                });
                if n == 0 || done {
                    break;
                }
            }
            let body = r#"{"paid": true}"#;
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocable_http_operation_calls_an_allowed_host_through_the_server_builder() {
    use common::{send, CONTROL};
    use keel_engine::storage::memory::MemoryStore;
    use keel_http::{AuthConfig, Server};
    let port = paying_endpoint().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut auth = AuthConfig::open();
    auth.add_env(TOKENS).expect("tokens");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(
        Server::builder()
            .store(std::sync::Arc::new(MemoryStore::new()))
            .listener(listener)
            .auth(auth)
            .service_http_allow(format!("127.0.0.1:{port}"))
            .shutdown_signal(stop_rx)
            .drain_timeout(std::time::Duration::from_secs(1))
            .serve(),
    );
    let admin = [
        CONTROL,
        ("Authorization", "Bearer tok-admin"),
        ("X-Namespace", "default"),
    ];
    let info = send(addr, "GET", "/api/cluster/info", &admin, None).await;
    expect_status(&info, 200);
    let kinds = info.json()["capabilities"]["service_calls"]["binding_kinds"].clone();
    assert!(
        kinds.as_array().is_some_and(
            |k| k.contains(&json!("invocable_http")) && k.contains(&json!("query_workflow"))
        ),
        "{kinds}"
    );
    let post = |path: &'static str, body: Value| async move {
        send(addr, "POST", path, &admin, Some(&body)).await
    };
    expect_status(&post(EP, json!({"endpoint_name": "pay"})).await, 201);
    expect_status(
        &post(
            "/api/service-endpoints/pay/services",
            json!({"service_name": "cards"}),
        )
        .await,
        201,
    );
    let ops = "/api/service-endpoints/pay/services/cards/operations";
    let op = |name: &str, url: String| {
        json!({
            "operation_name": name,
            "operation_mode": "sync",
            "handler_binding_kind": "invocable_http",
            "handler_binding": {"url": url},
        })
    };
    // The URL's shape is checked at creation: 422 with its field path.
    let r = post(ops, op("tls", "https://127.0.0.1/".into())).await;
    expect(&r, 422, "validation_failed");
    assert!(
        r.json()["errors"]["handler_binding.url"].is_array(),
        "{}",
        r.text
    );
    expect_status(
        &post(ops, op("charge", format!("http://127.0.0.1:{port}/charge"))).await,
        201,
    );
    // A host outside the allow-list is accepted into the catalog and refused at execution.
    expect_status(
        &post(ops, op("elsewhere", "http://127.0.0.1:1/".into())).await,
        201,
    );
    let r = post(
        "/api/service-endpoints/pay/services/cards/operations/elsewhere/execute",
        json!({"arguments": null, "idempotency_key": "e1"}),
    )
    .await;
    expect(&r, 409, "invocable_http_host_not_allowed");

    let r = post(
        "/api/service-endpoints/pay/services/cards/operations/charge/execute",
        json!({"arguments": null, "idempotency_key": "c1", "wait_for": "completed", "wait_timeout_seconds": 20}),
    )
    .await;
    expect_status(&r, 200);
    let call = r.json()["service_call"].clone();
    assert_eq!(call["status"], "completed", "{call}");
    assert_eq!(call["result"], json!({"paid": true}));
    assert_eq!(call["resolved_binding_kind"], "invocable_http");

    let _ = stop.send(true);
    server.await.expect("joins").expect("serves");
}

#[tokio::test]
async fn without_an_allowed_host_cluster_info_does_not_list_invocable_http() {
    let s = start(TOKENS, None).await;
    let r = control(&s, A, "default", "GET", "/api/cluster/info", None).await;
    expect_status(&r, 200);
    let kinds = r.json()["capabilities"]["service_calls"]["binding_kinds"].clone();
    assert!(!kinds.to_string().contains("invocable_http"), "{kinds}");
    assert!(kinds.to_string().contains("query_workflow"), "{kinds}");
}
