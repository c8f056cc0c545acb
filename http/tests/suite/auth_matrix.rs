//! Every route of the router table × {no token, bad token, wrong role, right role}.
//! Iterates the table itself, so a route added later is covered without editing this.

use crate::common;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_token_learn_nothing_about_which_routes_exist() {
    let s = start(TOKENS, None).await;
    // An unknown path, a known path under a method it lacks, and a real route answer a
    // caller without a valid token alike: 401. Only the public paths answer it.
    for (method, path) in [
        ("GET", "/api/no-such-route"),
        ("GET", "/api/service-endpoints"),
        ("POST", "/api/workflows/x/nope"),
        ("GET", "/elsewhere"),
        ("DELETE", "/api/workflows"),
        ("PATCH", "/api/worker/register"),
        ("GET", "/api/workflows"),
    ] {
        for auth in [None, Some("Bearer not-a-token")] {
            let mut headers = vec![CONTROL];
            if let Some(a) = auth {
                headers.push(("Authorization", a));
            }
            let r = send(s.addr, method, path, &headers, None).await;
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}: {}", r.text);
            common::expect(&r, 401, "unauthorized");
            assert!(
                r.header("allow").is_none(),
                "{method} {path}: {:?}",
                r.headers
            );
        }
    }
    // Nothing in a refusal tells a route from a path that is none: the same status,
    // headers and body, under either prefix.
    let bare = |r: &common::Resp| {
        let mut headers: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(k, _)| k != "date")
            .cloned()
            .collect();
        headers.sort();
        (r.status, headers, r.text.clone())
    };
    for (route, nothing) in [
        (("GET", "/api/workflows"), ("GET", "/api/no-such-route")),
        (("DELETE", "/api/workflows"), ("GET", "/api/no-such-route")),
        (("GET", "/api/cluster/info"), ("GET", "/api/cluster/nope")),
        (
            ("POST", "/api/worker/heartbeat"),
            ("POST", "/api/worker/nope"),
        ),
        (
            ("GET", "/api/worker/heartbeat"),
            ("POST", "/api/worker/nope"),
        ),
    ] {
        let a = send(s.addr, route.0, route.1, &[CONTROL], None).await;
        let b = send(s.addr, nothing.0, nothing.1, &[CONTROL], None).await;
        assert_eq!(bare(&a), bare(&b), "{route:?} vs {nothing:?}");
    }
    let r = send(s.addr, "POST", "/api/worker/nope", &[], None).await;
    assert_eq!(r.json()["protocol_version"], "1.20", "{}", r.text);
    // With any valid token the route table is no secret: 404 and 405 as usual.
    let worker = token_for("worker");
    let r = send(
        s.addr,
        "GET",
        "/api/no-such-route",
        &[("Authorization", &worker)],
        None,
    )
    .await;
    common::expect(&r, 404, "not_found");
    let r = send(
        s.addr,
        "DELETE",
        "/api/workflows",
        &[("Authorization", &worker)],
        None,
    )
    .await;
    common::expect(&r, 405, "method_not_allowed");
    // A public path under another method: its existence is public, so 405 without a token.
    let r = send(s.addr, "POST", "/api/health", &[], None).await;
    common::expect(&r, 405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_405_names_the_allowed_methods() {
    let s = start(TOKENS, None).await;
    let admin = token_for("admin");
    for (method, path, allow) in [
        ("DELETE", "/api/workflows", "POST, GET"),
        ("POST", "/api/schedules/s1", "GET, PUT, DELETE"),
        ("GET", "/api/worker/register", "POST"),
        ("POST", "/api/system/health", "GET"),
        ("DELETE", "/api/system/metrics", "GET, POST"),
        ("POST", "/metrics", "GET"),
    ] {
        let r = send(
            s.addr,
            method,
            path,
            &[CONTROL, ("Authorization", &admin)],
            None,
        )
        .await;
        common::expect(&r, 405, "method_not_allowed");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
        let listed: Vec<String> = r.json()["allowed_methods"]
            .as_array()
            .expect("allowed_methods")
            .iter()
            .filter_map(|m| m.as_str().map(str::to_string))
            .collect();
        assert_eq!(listed.join(", "), allow, "{method} {path}");
    }
    // Every path of the table: a method it lacks gets 405 with an Allow header that
    // lists the path's real methods.
    for r in route_table("x") {
        let resp = send(
            s.addr,
            "PATCH",
            &r.path,
            &[CONTROL, ("Authorization", &admin)],
            None,
        )
        .await;
        assert_eq!(resp.status, 405, "PATCH {}: {}", r.path, resp.text);
        let allow = resp.header("allow").unwrap_or("");
        assert!(
            allow.split(", ").any(|m| m == r.method.as_str()),
            "PATCH {}: Allow {allow:?} lacks {}",
            r.path,
            r.method
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_route_is_admin_only() {
    let route = route_table("x")
        .into_iter()
        .find(|r| r.op == "audit_trail")
        .expect("the audit trail is in the table");
    assert_eq!(route.access, Access::Admin);
    assert_eq!(route.path, "/api/v2/admin/audit");
    let s = start(TOKENS, None).await;
    for (role, status) in [("worker", 403), ("operator", 403), ("admin", 200)] {
        let auth = token_for(role);
        let r = send(
            s.addr,
            "GET",
            "/api/v2/admin/audit",
            &[("Authorization", &auth)],
            None,
        )
        .await;
        assert_eq!(r.status, status, "{role}: {}", r.text);
    }
    let r = send(s.addr, "GET", "/api/v2/admin/audit", &[], None).await;
    assert_eq!(r.status, 401);
}
