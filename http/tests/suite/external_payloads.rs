//! External payload routes through the HTTP pipeline: policy validation against the
//! server's configuration, who may call the transport and the storage test, and bad input
//! answered with named reasons (the in-process server has no payload directory or disk,
//! which is itself a case: a policy it could not honour is refused).

use crate::common;

use common::{control, expect, expect_status, send, start, worker, CONTROL};
use serde_json::json;

const TOKENS: &str = "admin:adm,operator:op,worker:wk,worker:other@elsewhere";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_the_server_cannot_honour_is_refused_with_the_field_named() {
    let s = start(TOKENS, None).await;
    let put = |body: serde_json::Value| {
        let s = &s;
        async move {
            control(
                s,
                "adm",
                "default",
                "PUT",
                "/api/namespaces/default/external-storage",
                Some(&body),
            )
            .await
        }
    };
    // No --payload-dir on this server: the local driver cannot store anything.
    let r = put(json!({"driver": "local", "enabled": true})).await;
    expect(&r, 422, "validation_failed");
    assert!(r.json()["errors"]["driver"].is_array(), "{}", r.text);
    let r = put(json!({"driver": "s3", "enabled": true, "config": {"disk": "d"}})).await;
    expect(&r, 422, "validation_failed");
    assert!(r.json()["errors"]["config.bucket"].is_array(), "{}", r.text);
    assert!(r.json()["errors"]["config.disk"].is_array(), "{}", r.text);
    let r = put(json!({"driver": "gcs", "enabled": false, "config": {"prefix": "a/../b"}})).await;
    expect(&r, 422, "validation_failed");
    assert!(r.json()["errors"]["config.prefix"].is_array(), "{}", r.text);
    let r = put(json!({"driver": "ftp"})).await;
    expect(&r, 422, "validation_failed");
    // A disabled policy needs no storage; it is shown as such and advertises nothing.
    let r = put(json!({"driver": "local", "enabled": false, "threshold_bytes": 4096})).await;
    expect_status(&r, 200);
    let storage = &r.json()["external_payload_storage"];
    assert_eq!(storage["status"], "disabled");
    assert_eq!(storage["threshold_bytes"], 4096);
    assert!(storage.get("transport").is_none());
    let info = send(
        s.addr,
        "GET",
        "/api/cluster/info",
        &[("Authorization", "Bearer op")],
        None,
    )
    .await;
    assert!(info.json()["worker_protocol"]["server_capabilities"]
        .get("runtime_external_payload_transport")
        .is_none());
    assert_eq!(
        info.json()["namespace"]["external_payload_storage"]["status"],
        "disabled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_routes_check_tokens_namespaces_and_input() {
    let s = start(TOKENS, None).await;
    // No token: 401, before anything about the route or the payload.
    let r = send(
        s.addr,
        "GET",
        "/api/external-payloads/v1/ep_00000000000000000000000000",
        &[],
        None,
    )
    .await;
    expect(&r, 401, "unauthorized");
    // A worker token bound to another namespace sees no namespace here.
    let r = worker(
        &s,
        "other",
        "default",
        "GET",
        "/api/external-payloads/v1/ep_00000000000000000000000000",
        None,
    )
    .await;
    expect(&r, 404, "namespace_not_found");
    // Either plane's token reaches the transport; an unknown reference is named.
    for token in ["wk", "op"] {
        let r = control(
            &s,
            token,
            "default",
            "GET",
            "/api/external-payloads/v1/ep_00000000000000000000000000",
            None,
        )
        .await;
        expect(&r, 404, "external_payload_not_found");
        assert_eq!(r.json()["reference_id"], "ep_00000000000000000000000000");
    }
    let r = control(
        &s,
        "op",
        "default",
        "GET",
        "/api/external-payloads/v1/not-a-reference",
        None,
    )
    .await;
    expect(&r, 404, "external_payload_not_found");
    // An upload that is not octet-stream (the helper sends JSON).
    let r = control(
        &s,
        "wk",
        "default",
        "POST",
        "/api/external-payloads/v1",
        Some(&json!({"x": 1})),
    )
    .await;
    expect(&r, 415, "external_payload_unsupported");
    // A malformed reference envelope in a start is refused before it enters history.
    let r = control(
        &s,
        "op",
        "default",
        "POST",
        "/api/workflows",
        Some(&json!({"workflow_type": "t", "task_queue": "q",
                     "input": {"codec": "avro", "external_payload": {"reference_id": "x"}}})),
    )
    .await;
    expect(&r, 422, "external_payload_unsupported");
    // The storage test is an admin route, and checks its input.
    let r = control(&s, "op", "default", "POST", "/api/storage/test", None).await;
    expect(&r, 403, "forbidden");
    let r = control(
        &s,
        "adm",
        "default",
        "POST",
        "/api/storage/test",
        Some(&json!({"driver": "ftp", "large_payload_bytes": 0})),
    )
    .await;
    expect(&r, 422, "validation_failed");
    let errors = &r.json()["errors"];
    assert!(errors["driver"].is_array() && errors["large_payload_bytes"].is_array());
    // No driver this server could use: the test says why instead of pretending.
    let r = send(
        s.addr,
        "POST",
        "/api/storage/test",
        &[CONTROL, ("Authorization", "Bearer adm")],
        None,
    )
    .await;
    expect(&r, 422, "validation_failed");
}
