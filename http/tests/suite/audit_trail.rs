//! The control-plane audit trail (`keel_http::audit`): a mutation records who, what,
//! when and the outcome, readable by admins at `GET /api/v2/admin/audit` with paging;
//! no token text is ever stored; retention removes old entries; 401/403 refusals are
//! sampled at most once per window with a count.

use crate::common;

use std::time::{Duration, Instant};

use common::{control, expect, expect_status, send, start, start_configured, Server, CONTROL};
use keel_engine::operator::SYSTEM_AUDIT_SCOPE;
use keel_http::{AuthConfig, ConnectionLimits};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(20);
const ADMIN: &str = "admin-secret-7d1e";
const OPERATOR: &str = "operator-secret-2b9c";
const WORKER_TOKEN: &str = "worker-secret-51aa";

fn tokens() -> String {
    format!("admin:{ADMIN},operator:{OPERATOR},worker:{WORKER_TOKEN}")
}

async fn trail(s: &Server, ns: &str, query: &str) -> Value {
    let r = control(
        s,
        ADMIN,
        ns,
        "GET",
        &format!("/api/v2/admin/audit{query}"),
        None,
    )
    .await;
    expect_status(&r, 200);
    r.json()
}

fn items(page: &Value) -> Vec<Value> {
    page["items"].as_array().cloned().unwrap_or_default()
}

async fn start_workflow(s: &Server, id: &str) {
    let r = control(
        s,
        OPERATOR,
        "default",
        "POST",
        "/api/workflows",
        Some(&json!({"workflow_id": id, "workflow_type": "t", "task_queue": "q"})),
    )
    .await;
    expect_status(&r, 201);
}

/// Every stored trail and operator-log entry, both scopes, as text.
async fn everything_stored(s: &Server) -> String {
    let mut out = String::new();
    for scope in ["default", "ns-a", SYSTEM_AUDIT_SCOPE] {
        let entries = s.engine.audit_trail(scope, 200, None).await.expect("reads");
        out.push_str(&serde_json::to_string(&entries).expect("serializes"));
        let entries = s.engine.audit_log(scope, 200).await.expect("reads");
        out.push_str(&serde_json::to_string(&entries).expect("serializes"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_mutation_records_who_what_when_and_the_outcome() {
    let s = start(&tokens(), None).await;
    let created = control(
        &s,
        ADMIN,
        "default",
        "POST",
        "/api/namespaces",
        Some(&json!({"name": "ns-a"})),
    )
    .await;
    expect_status(&created, 201);
    start_workflow(&s, "wf-1").await;
    let terminated = control(
        &s,
        OPERATOR,
        "default",
        "POST",
        "/api/workflows/wf-1/terminate",
        Some(&json!({"reason": "audit test"})),
    )
    .await;
    assert!(terminated.status < 300, "{}", terminated.text);
    let missing = control(
        &s,
        OPERATOR,
        "default",
        "POST",
        "/api/workflows/nope/cancel",
        None,
    )
    .await;
    assert_eq!(missing.status, 404, "{}", missing.text);

    let page = trail(&s, "default", "").await;
    let entries = items(&page);
    let by_route = |route: &str| {
        entries
            .iter()
            .find(|e| e["route"] == route)
            .cloned()
            .unwrap_or_else(|| panic!("no {route} entry in {page}"))
    };
    let term = by_route("terminate_workflow");
    assert_eq!(term["principal"], "KEEL_TOKENS[1]");
    assert_eq!(term["roles"], json!(["operator"]));
    assert_eq!(term["namespace"], "default");
    assert_eq!(term["target"]["ids"], json!(["wf-1"]));
    assert_eq!(term["outcome"], "ok");
    assert_eq!(term["status"], terminated.status);
    assert!(term["at"].is_string() && term["completedAt"].is_string());
    let cancel = by_route("cancel_workflow");
    assert_eq!(cancel["outcome"], "refused");
    assert_eq!(cancel["status"], 404);
    assert_eq!(cancel["reason"], missing.reason());
    let ns = by_route("create_namespace");
    assert_eq!(ns["principal"], "KEEL_TOKENS[0]");
    assert_eq!(ns["target"]["name"], "ns-a");
    // Application traffic (the start) is not a control-plane mutation.
    assert!(entries.iter().all(|e| e["route"] != "start_workflow"));
    // Newest first.
    assert_eq!(entries[0]["route"], "cancel_workflow", "{page}");

    // Paging: one at a time, following next_before.
    let first = trail(&s, "default", "?limit=1").await;
    assert_eq!(items(&first).len(), 1);
    let cursor = first["next_before"].as_str().expect("a cursor").to_string();
    let second = trail(&s, "default", &format!("?limit=1&before={cursor}")).await;
    assert_eq!(items(&second)[0]["route"], "terminate_workflow");
    let bad = control(
        &s,
        ADMIN,
        "default",
        "GET",
        "/api/v2/admin/audit?before=../../x",
        None,
    )
    .await;
    expect(&bad, 422, "validation_failed");

    // A 401 with a made-up token: refused, and its text is not stored either.
    let r = send(
        s.addr,
        "POST",
        "/api/namespaces",
        &[CONTROL, ("Authorization", "Bearer leaked-guess-9999")],
        Some(&json!({"name": "x"})),
    )
    .await;
    assert_eq!(r.status, 401);
    wait_for_system_entry(&s, "create_namespace").await;
    let stored = everything_stored(&s).await;
    for secret in [ADMIN, OPERATOR, WORKER_TOKEN, "leaked-guess-9999"] {
        assert!(!stored.contains(secret), "{secret} stored: {stored}");
    }
}

async fn system_entries(s: &Server) -> Vec<keel_engine::operator::AuditEntry> {
    s.engine
        .audit_trail(SYSTEM_AUDIT_SCOPE, 200, None)
        .await
        .expect("reads")
}

async fn wait_for_system_entry(s: &Server, route: &str) {
    let deadline = Instant::now() + DEADLINE;
    while !system_entries(s)
        .await
        .iter()
        .any(|e| e.route.as_deref() == Some(route))
    {
        assert!(Instant::now() < deadline, "no sampled {route} refusal");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_flood_is_sampled_once_per_window_with_a_count() {
    let s = start(&tokens(), None).await;
    let forbidden = || {
        control(
            &s,
            WORKER_TOKEN,
            "default",
            "DELETE",
            "/api/workers/w1",
            None,
        )
    };
    for _ in 0..5 {
        expect(&forbidden().await, 403, "forbidden");
    }
    wait_for_system_entry(&s, "delete_worker").await;
    let entries = system_entries(&s).await;
    let sampled: Vec<_> = entries
        .iter()
        .filter(|e| e.route.as_deref() == Some("delete_worker"))
        .collect();
    assert_eq!(sampled.len(), 1, "one entry per window: {sampled:?}");
    assert_eq!(sampled[0].count, Some(1));
    assert_eq!(sampled[0].reason.as_deref(), Some("forbidden"));
    assert_eq!(sampled[0].actor.principal, "KEEL_TOKENS[2]");
    assert_eq!(sampled[0].actor.roles, vec!["worker".to_string()]);
    assert_eq!(sampled[0].status, Some(403));

    // After the window, the next refusal writes one entry standing for the four counted
    // in between and itself.
    s.clock.advance(Duration::from_secs(61));
    expect(&forbidden().await, 403, "forbidden");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let counts: Vec<Option<u64>> = system_entries(&s)
            .await
            .iter()
            .filter(|e| e.route.as_deref() == Some("delete_worker"))
            .map(|e| e.count)
            .collect();
        if counts.len() == 2 {
            assert_eq!(counts, vec![Some(5), Some(1)], "newest first");
            break;
        }
        assert!(Instant::now() < deadline, "no second sample: {counts:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(s.state.refusals.tracked() <= keel_http::audit::MAX_SAMPLE_KEYS);

    // Read through the route, system scope: admins bound to no namespace only.
    let page = trail(&s, "default", "?scope=system").await;
    assert_eq!(page["scope"], "system");
    assert!(items(&page).iter().any(|e| e["route"] == "delete_worker"
        && e["count"] == 5
        && e["details"]["auth_failure"] == "role_not_permitted"));
    let metrics = send(
        s.addr,
        "GET",
        "/metrics",
        &[("Authorization", &format!("Bearer {ADMIN}"))],
        None,
    )
    .await
    .text;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("keel_http_refusals_total{")
                && l.contains("route=\"delete_worker\"")
                && l.contains("reason=\"forbidden\"")),
        "403s counted per route"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_scope_is_refused_to_a_namespace_bound_admin() {
    let s = start("admin:bound@default,admin:free", None).await;
    let r = control(
        &s,
        "bound",
        "default",
        "GET",
        "/api/v2/admin/audit?scope=system",
        None,
    )
    .await;
    expect(&r, 403, "forbidden");
    let r = control(&s, "bound", "default", "GET", "/api/v2/admin/audit", None).await;
    expect_status(&r, 200);
    let r = control(&s, "bound", "other", "GET", "/api/v2/admin/audit", None).await;
    assert_eq!(
        r.status, 404,
        "another namespace stays invisible: {}",
        r.text
    );
    let r = control(
        &s,
        "free",
        "default",
        "GET",
        "/api/v2/admin/audit?scope=system",
        None,
    )
    .await;
    expect_status(&r, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_audit_entries_older_than_the_setting() {
    let mut auth = AuthConfig::open();
    auth.add_env(&tokens()).expect("parses");
    let s = start_configured(auth, ConnectionLimits::default(), |state| {
        state.with_audit_retention_days(1)
    })
    .await;
    start_workflow(&s, "old").await;
    let r = control(
        &s,
        OPERATOR,
        "default",
        "POST",
        "/api/workflows/old/cancel",
        None,
    )
    .await;
    assert!(r.status < 300, "{}", r.text);
    // A sampled refusal in the system scope, also old by then.
    expect(
        &control(
            &s,
            WORKER_TOKEN,
            "default",
            "DELETE",
            "/api/workers/w",
            None,
        )
        .await,
        403,
        "forbidden",
    );
    wait_for_system_entry(&s, "delete_worker").await;

    s.clock.advance(Duration::from_secs(2 * 86_400));
    start_workflow(&s, "new").await;
    let r = control(
        &s,
        OPERATOR,
        "default",
        "POST",
        "/api/workflows/new/cancel",
        None,
    )
    .await;
    assert!(r.status < 300, "{}", r.text);

    let pass = control(
        &s,
        ADMIN,
        "default",
        "POST",
        "/api/system/retention/pass",
        Some(&json!({})),
    )
    .await;
    expect_status(&pass, 200);
    assert_eq!(pass.json()["deleted_audit_entries"], 2, "{}", pass.text);
    let entries = items(&trail(&s, "default", "").await);
    let targets: Vec<&Value> = entries
        .iter()
        .filter(|e| e["route"] == "cancel_workflow")
        .map(|e| &e["target"]["ids"])
        .collect();
    assert_eq!(targets, vec![&json!(["new"])], "{entries:?}");
    assert!(system_entries(&s).await.is_empty());
}
