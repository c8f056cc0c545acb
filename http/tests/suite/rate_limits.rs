//! Rate limits and quotas (`keel_http::quota`): per-token and per-namespace token
//! buckets answered 429 `rate_limited` with `Retry-After`, refilled on the (manual)
//! engine clock; per-token isolation; per-token limits from the auth file; the long-poll
//! ceiling; the refusal metric.

use crate::common;

use std::time::{Duration, Instant};

use common::{control, expect, expect_status, send, start_configured, worker, Server, WORKER};
use keel_engine::model::TaskKind;
use keel_http::{AuthConfig, ConnectionLimits, QuotaConfig, Rate};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(20);

fn quotas(per_token: Rate, per_namespace: Rate, long_polls: usize) -> QuotaConfig {
    QuotaConfig {
        per_token,
        per_namespace,
        max_long_polls_per_token: long_polls,
    }
}

async fn with_tokens(tokens: &str, q: QuotaConfig) -> Server {
    let mut auth = AuthConfig::open();
    auth.add_env(tokens).expect("tokens parse");
    start_configured(auth, ConnectionLimits::default(), |s| s.with_quotas(q)).await
}

async fn list(s: &Server, token: &str, ns: &str) -> common::Resp {
    control(s, token, ns, "GET", "/api/workflows", None).await
}

async fn scrape(s: &Server) -> String {
    send(
        s.addr,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer tok-admin")],
        None,
    )
    .await
    .text
}

fn refusals(metrics: &str, route: &str, reason: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("keel_http_refusals_total{"))
        .filter(|l| l.contains(&format!("route=\"{route}\"")))
        .filter(|l| l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_rate_gets_429_with_retry_after_until_its_bucket_refills() {
    let s = with_tokens(
        "operator:tok-a,operator:tok-b,admin:tok-admin",
        quotas(Rate::new(1.0, 3.0), Rate::new(0.0, 1.0), 0),
    )
    .await;
    for _ in 0..3 {
        expect_status(&list(&s, "tok-a", "default").await, 200);
    }
    let refused = list(&s, "tok-a", "default").await;
    expect(&refused, 429, "rate_limited");
    assert_eq!(refused.header("retry-after"), Some("1"), "{}", refused.text);
    let body = refused.json();
    assert_eq!(body["limit_scope"], "token");
    assert_eq!(body["retryable"], true);
    assert_eq!(body["retry_after_seconds"], 1);
    assert!(!refused.text.contains("tok-a"), "never echoes the token");

    // Another token has its own bucket.
    expect_status(&list(&s, "tok-b", "default").await, 200);

    // Half the refill time: still refused; a full second: one request's worth is back.
    s.clock.advance(Duration::from_millis(500));
    expect(&list(&s, "tok-a", "default").await, 429, "rate_limited");
    s.clock.advance(Duration::from_millis(500));
    expect_status(&list(&s, "tok-a", "default").await, 200);
    expect(&list(&s, "tok-a", "default").await, 429, "rate_limited");

    let metrics = scrape(&s).await;
    assert!(
        refusals(&metrics, "list_workflows", "rate_limited") >= 3,
        "refusals counted per route: {}",
        metrics
            .lines()
            .filter(|l| l.contains("refusals"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_entry_may_carry_its_own_limits() {
    let mut auth = AuthConfig::open();
    auth.add_toml(
        r#"
        [[tokens]]
        role = "operator"
        token = "tok-slow"
        name = "slow"
        rate_limit = 0.5
        rate_burst = 2
        [[tokens]]
        role = "operator"
        token = "tok-fast"
        name = "fast"
        "#,
    )
    .expect("parses");
    let s = start_configured(auth, ConnectionLimits::default(), |s| {
        s.with_quotas(quotas(Rate::new(100.0, 100.0), Rate::new(0.0, 1.0), 0))
    })
    .await;
    for _ in 0..2 {
        expect_status(&list(&s, "tok-slow", "default").await, 200);
    }
    let refused = list(&s, "tok-slow", "default").await;
    expect(&refused, 429, "rate_limited");
    assert_eq!(refused.header("retry-after"), Some("2"), "0.5 per second");
    for _ in 0..10 {
        expect_status(&list(&s, "tok-fast", "default").await, 200);
    }
    assert!(AuthConfig::open()
        .add_toml("[[tokens]]\nrole = \"worker\"\ntoken = \"x\"\nrate_limit = -1\n")
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mode_limits_each_namespace_on_its_own() {
    let s = start_configured(AuthConfig::open(), ConnectionLimits::default(), |s| {
        s.with_quotas(quotas(Rate::new(1.0, 1.0), Rate::new(1.0, 2.0), 1))
    })
    .await;
    let created = send(
        s.addr,
        "POST",
        "/api/namespaces",
        &[common::CONTROL],
        Some(&json!({"name": "other"})),
    )
    .await;
    expect_status(&created, 201);
    let open_list = |ns: &'static str| {
        let addr = s.addr;
        async move {
            send(
                addr,
                "GET",
                "/api/workflows",
                &[common::CONTROL, ("X-Namespace", ns)],
                None,
            )
            .await
        }
    };
    // No per-token limit in open mode (its 1/s would have refused the second).
    expect_status(&open_list("default").await, 200);
    expect_status(&open_list("default").await, 200);
    let refused = open_list("default").await;
    expect(&refused, 429, "rate_limited");
    assert_eq!(refused.json()["limit_scope"], "namespace");
    assert!(refused.header("retry-after").is_some());
    expect_status(&open_list("other").await, 200);
}

async fn register(s: &Server, token: &str, id: &str) {
    let r = worker(
        s,
        token,
        "default",
        "POST",
        "/api/worker/register",
        Some(&json!({"worker_id": id, "task_queue": "q", "runtime": "python"})),
    )
    .await;
    assert!(r.status < 300, "{}", r.text);
}

fn parked_poll(s: &Server, token: &str, id: &str) -> tokio::task::JoinHandle<common::Resp> {
    let addr = s.addr;
    let auth = format!("Bearer {token}");
    let body = json!({"worker_id": id, "task_queue": "q", "timeout_seconds": 30});
    tokio::spawn(async move {
        send(
            addr,
            "POST",
            "/api/worker/workflow-tasks/poll",
            &[WORKER, ("X-Namespace", "default"), ("Authorization", &auth)],
            Some(&body),
        )
        .await
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_holds_at_most_its_long_poll_limit_open() {
    let s = with_tokens(
        "worker:tok-w,worker:tok-w2,admin:tok-admin,operator:tok-op",
        quotas(Rate::new(0.0, 1.0), Rate::new(0.0, 1.0), 2),
    )
    .await;
    register(&s, "tok-w", "w1").await;
    register(&s, "tok-w2", "w2").await;
    let polls = [
        parked_poll(&s, "tok-w", "w1"),
        parked_poll(&s, "tok-w", "w1"),
    ];
    let deadline = Instant::now() + DEADLINE;
    while s
        .engine
        .queue_stats("default", "q", TaskKind::Workflow)
        .pollers
        < 2
    {
        assert!(Instant::now() < deadline, "the polls never parked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let poll_now = |token: &'static str, id: &'static str| {
        let s = &s;
        async move {
            worker(
                s,
                token,
                "default",
                "POST",
                "/api/worker/workflow-tasks/poll",
                Some(&json!({"worker_id": id, "task_queue": "q", "timeout_seconds": 0})),
            )
            .await
        }
    };
    let refused = poll_now("tok-w", "w1").await;
    expect(&refused, 429, "long_poll_limit_reached");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.json()["max_long_polls"], 2);
    assert!(
        refused.json()["protocol_version"].is_string(),
        "a worker-plane error envelope"
    );
    // Another token's polls are not counted against this one.
    expect_status(&poll_now("tok-w2", "w2").await, 200);

    // The parked polls get a task each and answer: their slots come back.
    for id in ["wf-1", "wf-2"] {
        let started = control(
            &s,
            "tok-op",
            "default",
            "POST",
            "/api/workflows",
            Some(&json!({"workflow_id": id, "workflow_type": "t", "task_queue": "q"})),
        )
        .await;
        expect_status(&started, 201);
    }
    for p in polls {
        let r = tokio::time::timeout(DEADLINE, p)
            .await
            .expect("the poll answers")
            .expect("joins");
        assert!(r.status < 300, "{}", r.text);
    }
    expect_status(&poll_now("tok-w", "w1").await, 200);
    let metrics = scrape(&s).await;
    assert!(refusals(&metrics, "poll_workflow_task", "long_poll_limit_reached") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_defaults_never_limit_an_ordinary_burst_of_traffic() {
    let s = with_tokens("operator:tok-a,admin:tok-admin", QuotaConfig::default()).await;
    for _ in 0..300 {
        expect_status(&list(&s, "tok-a", "default").await, 200);
    }
}
