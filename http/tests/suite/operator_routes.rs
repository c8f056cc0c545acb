//! Operator routes when storage misbehaves: doctor keeps answering (each component under
//! its own deadline) and the write routes refuse with 503 `admin_unreachable` instead of
//! acknowledging anything.

use crate::common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{expect, expect_status, send, start, START};
use keel_engine::clock::ManualClock;
use keel_engine::storage::memory::MemoryStore;
use keel_engine::storage::{Capabilities, KvStore, KvTxn, Version, WatchFuture};
use keel_engine::{Engine, EngineConfig};
use keel_http::AppState;
use serde_json::{json, Value};
use tokio::net::TcpListener;

const DOCTOR: &str = "/api/v2/admin/operator/restate/doctor";

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A store whose transactions never begin while `hang` is set: a stuck backend.
struct HangingStore {
    inner: Arc<dyn KvStore>,
    hang: Arc<AtomicBool>,
}

impl KvStore for HangingStore {
    fn begin<'a, 'b>(&'a self) -> Boxed<'b, keel_engine::storage::Result<Box<dyn KvTxn>>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            self.inner.begin().await
        })
    }

    fn watch(&self, key: &[u8], since: Version) -> WatchFuture {
        self.inner.watch(key, since)
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn shutdown<'a, 'b>(&'a self) -> Boxed<'b, keel_engine::storage::Result<()>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move { self.inner.shutdown().await })
    }
}

async fn doctor(addr: std::net::SocketAddr, body: Value) -> Value {
    let r = send(addr, "POST", DOCTOR, &[], Some(&body)).await;
    expect_status(&r, 200);
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_answers_within_its_deadline_when_storage_hangs() {
    let hang = Arc::new(AtomicBool::new(false));
    let store: Arc<dyn KvStore> = Arc::new(HangingStore {
        inner: Arc::new(MemoryStore::new()),
        hang: hang.clone(),
    });
    let engine = Engine::open(
        store,
        Arc::new(ManualClock::new(START)),
        EngineConfig::default(),
    )
    .await
    .expect("engine opens");
    let state = Arc::new(AppState::new(engine.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(keel_http::serve(
        listener,
        state,
        stop_rx,
        Duration::from_secs(1),
    ));

    let healthy = doctor(addr, json!({})).await;
    assert_eq!(healthy["status"], "ok", "{healthy}");

    hang.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let report = doctor(addr, json!({"probeTimeoutMs": 300})).await;
    let took = started.elapsed();
    // The probes run concurrently under one deadline, then the audit write under the
    // same: well under a second and a half, however long storage stays stuck.
    assert!(took < Duration::from_millis(1_500), "doctor took {took:?}");
    // The listener takes the connection, but its health route reads storage too.
    let ingress = &report["ingress"];
    assert_eq!(ingress["status"], "unreachable", "{report}");
    assert_eq!(ingress["connected"], true, "{report}");
    for component in ["admin", "deployments", "services", "invocations"] {
        let c = &report[component];
        assert_eq!(c["status"], "unreachable", "{component}: {c}");
        assert!(
            c["error"].as_str().is_some_and(|e| e.contains("deadline")),
            "{component}: {c}"
        );
    }
    assert_eq!(report["status"], "unreachable");
    // The seed's shapes hold even when a component is unreachable.
    assert_eq!(report["deployments"]["items"], json!([]));
    assert_eq!(report["invocations"]["byStatus"], json!({}));
    assert_eq!(report["invocations"]["recentFailures"], json!([]));
    assert!(report["admin"]["version"].is_string());
    hang.store(false, Ordering::SeqCst);
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_routes_answer_admin_unreachable_when_storage_is_down_and_doctor_says_so() {
    let s = start("", None).await;
    let r = send(
        s.addr,
        "POST",
        "/api/v2/admin/operator/restate/force-redeploy",
        &[],
        Some(&json!({"serviceUrl": "http://svc.internal", "taskQueue": "q"})),
    )
    .await;
    expect_status(&r, 200);

    s.engine.store().shutdown().await.expect("store stops");
    let report = doctor(s.addr, json!({})).await;
    // The listener answers, with an error status: degraded.
    assert_eq!(report["ingress"]["status"], "degraded", "{report}");
    assert_eq!(report["ingress"]["httpStatus"], 503, "{report}");
    for component in ["admin", "deployments", "services", "invocations"] {
        assert_eq!(
            report[component]["status"], "unreachable",
            "{component}: {report}"
        );
        assert!(report[component]["error"].is_string());
    }
    assert_eq!(report["status"], "unreachable");

    let call = |route: &'static str, body: Value| {
        let addr = s.addr;
        async move {
            let path = format!("/api/v2/admin/operator/restate/{route}");
            (route, send(addr, "POST", &path, &[], Some(&body)).await)
        }
    };
    // Concurrently: each waits out the retry runner before it gives up.
    let (a, b, c) = tokio::join!(
        call(
            "cleanup-stale-deployments",
            json!({"serviceUrl": "http://svc.internal"})
        ),
        call(
            "force-redeploy",
            json!({"serviceUrl": "http://svc.internal", "taskQueue": "q"})
        ),
        call(
            "recover-stuck-workflow",
            json!({"serviceName": "Checkout", "serviceKey": "order-1"})
        ),
    );
    for (route, r) in [a, b, c] {
        expect(&r, 503, "admin_unreachable");
        let body = r.json();
        assert_eq!(body["retryable"], true, "{route}: {body}");
        assert!(body.get("acknowledged").is_none(), "{route}: {body}");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_routes_refuse_bad_bodies_with_named_reasons() {
    let s = start("", None).await;
    let post = |route: &'static str, body: Value| {
        let addr = s.addr;
        async move {
            send(
                addr,
                "POST",
                &format!("/api/v2/admin/operator/restate/{route}"),
                &[],
                Some(&body),
            )
            .await
        }
    };
    let r = post("force-redeploy", json!({})).await;
    expect(&r, 422, "validation_failed");
    assert!(r.json()["errors"]["serviceUrl"].is_array());
    let r = post(
        "force-redeploy",
        json!({"serviceUrl": "ftp://x", "force": "yes"}),
    )
    .await;
    expect(&r, 422, "validation_failed");
    assert!(r.json()["errors"]["force"].is_array(), "{}", r.text);
    let r = post("force-redeploy", json!({"serviceUrl": "ftp://x"})).await;
    expect(&r, 422, "validation_failed");
    assert!(r.json()["errors"]["serviceUrl"].is_array(), "{}", r.text);
    let r = post(
        "force-redeploy",
        json!({"serviceUrl": "http://x", "buildId": "v1"}),
    )
    .await;
    expect(&r, 422, "validation_failed");
    let r = post("cleanup-stale-deployments", json!({"serviceUrl": 5})).await;
    expect(&r, 422, "validation_failed");
    let r = post(
        "cleanup-stale-deployments",
        json!({"serviceUrl": "http://x", "forceDrain": 1}),
    )
    .await;
    expect(&r, 422, "validation_failed");
    let r = post(
        "cleanup-stale-deployments",
        json!({"serviceUrl": "http://x"}),
    )
    .await;
    expect(&r, 404, "deployment_not_found");
    let r = post(
        "recover-stuck-workflow",
        json!({"serviceName": "a b", "serviceKey": ""}),
    )
    .await;
    expect(&r, 422, "validation_failed");
    let errors = &r.json()["errors"];
    assert!(
        errors["serviceName"].is_array() && errors["serviceKey"].is_array(),
        "{}",
        r.text
    );
    let r = post("recover-stuck-workflow", json!(["not", "an", "object"])).await;
    expect(&r, 422, "validation_failed");
    let r = post("doctor", json!({"probeTimeoutMs": 0})).await;
    expect(&r, 422, "validation_failed");
    let r = send(
        s.addr,
        "GET",
        "/api/v2/admin/operator/audit?limit=0",
        &[],
        None,
    )
    .await;
    expect(&r, 422, "validation_failed");
    let r = send(s.addr, "GET", "/api/v2/admin/operator/audit", &[], None).await;
    expect_status(&r, 200);
    let items = r.json()["items"].as_array().cloned().unwrap_or_default();
    assert!(
        items
            .iter()
            .any(|i| i["outcome"] == "refused" && i["reason"] == "validation_failed"),
        "{}",
        r.text
    );
    // A namespace that does not exist is a 404, like everywhere else.
    let r = send(
        s.addr,
        "POST",
        DOCTOR,
        &[("X-Namespace", "nowhere")],
        Some(&json!({})),
    )
    .await;
    expect(&r, 404, "namespace_not_found");
}
