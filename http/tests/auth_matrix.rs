//! Every route of the router table × {no token, bad token, wrong role, right role}.
//! Iterates the table itself, so a route added later is covered without editing this.

mod common;

use common::{send, start, CONTROL, WORKER};
use keel_http::{route_table, Access};
use serde_json::json;

const TOKENS: &str = "worker:tok-worker,operator:tok-operator,admin:tok-admin";

fn token_for(role: &str) -> String {
    format!("Bearer tok-{role}")
}

/// A role that must be refused, and the roles that must be admitted.
fn roles(access: Access) -> (Option<&'static str>, &'static [&'static str]) {
    match access {
        Access::Public => (None, &[]),
        Access::Any => (None, &["worker", "operator", "admin"]),
        // admin does not include worker: a control credential cannot lease tasks.
        Access::Worker => (Some("admin"), &["worker"]),
        Access::Operator => (Some("worker"), &["operator", "admin"]),
        // operator does not include admin.
        Access::Admin => (Some("operator"), &["admin"]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_enforces_its_role() {
    let s = start(TOKENS, None).await;
    let routes = route_table("x");
    assert!(
        routes.len() >= 40,
        "the table lists {} routes",
        routes.len()
    );
    let mut checked = 0;
    for r in &routes {
        let version = match r.plane {
            "control" => Some(CONTROL),
            "worker" => Some(WORKER),
            _ => None,
        };
        // Polls return at once (timeout 0); every other body is a harmless `{}`.
        let body = (r.method != hyper::Method::GET).then(|| json!({"timeout_seconds": 0}));
        let call = |auth: Option<String>| {
            let body = body.clone();
            let (method, path) = (r.method.to_string(), r.path.clone());
            async move {
                let mut headers: Vec<(&str, &str)> = vec![("X-Namespace", "default")];
                if let Some(v) = version {
                    headers.push(v);
                }
                let auth = auth.unwrap_or_default();
                if !auth.is_empty() {
                    headers.push(("Authorization", auth.as_str()));
                }
                send(s.addr, &method, &path, &headers, body.as_ref()).await
            }
        };
        let what = format!("{} {} ({:?})", r.method, r.path, r.access);
        if r.access == Access::Public {
            let resp = call(None).await;
            assert!(
                resp.status != 401 && resp.status != 403,
                "{what} without a token: {} {}",
                resp.status,
                resp.text
            );
            checked += 1;
            continue;
        }
        for auth in [
            None,
            Some("Bearer not-a-token".to_string()),
            Some("Basic abc".to_string()),
        ] {
            let resp = call(auth.clone()).await;
            assert_eq!(resp.status, 401, "{what} with {auth:?}: {}", resp.text);
            assert_eq!(resp.reason(), "unauthorized", "{what}: {}", resp.text);
            assert!(
                resp.json()["auth_failure"].is_string(),
                "{what}: {}",
                resp.text
            );
            assert!(
                !resp.text.contains("not-a-token"),
                "{what} echoed the token"
            );
        }
        let (wrong, right) = roles(r.access);
        if let Some(wrong) = wrong {
            let resp = call(Some(token_for(wrong))).await;
            assert_eq!(resp.status, 403, "{what} as {wrong}: {}", resp.text);
            let body = resp.json();
            assert_eq!(body["reason"], "forbidden", "{what}: {}", resp.text);
            assert_eq!(
                body["actual_roles"],
                json!([wrong]),
                "{what}: {}",
                resp.text
            );
            assert!(body["required_roles"]
                .as_array()
                .is_some_and(|a| !a.is_empty()));
        }
        for role in right {
            let resp = call(Some(token_for(role))).await;
            assert!(
                resp.status != 401 && resp.status != 403,
                "{what} as {role}: {} {}",
                resp.status,
                resp.text
            );
            assert!(
                resp.status < 500,
                "{what} as {role}: {} {}",
                resp.status,
                resp.text
            );
        }
        checked += 1;
    }
    assert_eq!(checked, routes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_follow_the_middleware_order() {
    let s = start(TOKENS, None).await;
    // A wrong-role token cannot learn whether a namespace exists: 403 before 404.
    let r = send(
        s.addr,
        "GET",
        "/api/workflows/x",
        &[
            CONTROL,
            ("X-Namespace", "nope"),
            ("Authorization", "Bearer tok-worker"),
        ],
        None,
    )
    .await;
    common::expect(&r, 403, "forbidden");
    // A bad version header is a 400 even for a missing namespace.
    let r = send(
        s.addr,
        "GET",
        "/api/workflows/x",
        &[
            ("X-Durable-Workflow-Control-Plane-Version", "9"),
            ("X-Namespace", "nope"),
            ("Authorization", "Bearer tok-operator"),
        ],
        None,
    )
    .await;
    common::expect(&r, 400, "unsupported_control_plane_version");
    // Authentication comes before the version gate.
    let r = send(
        s.addr,
        "GET",
        "/api/workflows/x",
        &[("X-Namespace", "nope")],
        None,
    )
    .await;
    common::expect(&r, 401, "unauthorized");
    // Then the namespace.
    let r = send(
        s.addr,
        "GET",
        "/api/workflows/x",
        &[
            CONTROL,
            ("X-Namespace", "nope"),
            ("Authorization", "Bearer tok-operator"),
        ],
        None,
    )
    .await;
    common::expect(&r, 404, "namespace_not_found");
    // Worker-plane refusals come in the worker envelope.
    let r = send(
        s.addr,
        "POST",
        "/api/worker/heartbeat",
        &[WORKER],
        Some(&json!({})),
    )
    .await;
    common::expect(&r, 401, "unauthorized");
    assert_eq!(r.json()["protocol_version"], "1.20");
    assert!(r.json()["server_capabilities"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mode_serves_every_route_without_tokens() {
    let s = start("", None).await;
    let r = send(
        s.addr,
        "POST",
        "/api/namespaces",
        &[CONTROL],
        Some(&json!({"name": "open-ns"})),
    )
    .await;
    common::expect_status(&r, 201);
    let r = send(s.addr, "GET", "/api/cluster/info", &[], None).await;
    common::expect_status(&r, 200);
    let r = send(s.addr, "GET", "/api/ready", &[], None).await;
    common::expect_status(&r, 200);
    assert_eq!(r.json()["checks"]["auth"]["driver"], "none");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_may_hold_several_roles() {
    let s = start("admin+worker:tok-both", None).await;
    for (plane, path, body) in [
        (CONTROL, "/api/namespaces", None),
        (
            WORKER,
            "/api/worker/heartbeat",
            Some(json!({"worker_id": "w"})),
        ),
    ] {
        let r = send(
            s.addr,
            if body.is_some() { "POST" } else { "GET" },
            path,
            &[plane, ("Authorization", "Bearer tok-both")],
            body.as_ref(),
        )
        .await;
        assert!(r.status != 401 && r.status != 403, "{path}: {}", r.text);
    }
}
