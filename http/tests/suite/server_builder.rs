//! A whole Keel around a store of one's own, through the public entry point only
//! (`keel_http::Server::builder()`): the store is a type of this test (the memory backend
//! under another name), discovery names it from its own capabilities, a workflow runs
//! start to finish over HTTP, and stopping the server shuts the store down.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{expect_status, send, CONTROL, WORKER};
use keel_engine::storage::memory::MemoryStore;
use keel_engine::storage::{Capabilities, KvStore, KvTxn, Result, Version, WatchFuture};
use keel_http::{AuthConfig, Server};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// A third-party store: here the memory backend, declaring its own name.
struct MyStore {
    inner: MemoryStore,
    shut_down: Arc<AtomicBool>,
}

#[async_trait]
impl KvStore for MyStore {
    async fn begin(&self) -> Result<Box<dyn KvTxn>> {
        self.inner.begin().await
    }
    fn watch(&self, key: &[u8], since: Version) -> WatchFuture {
        self.inner.watch(key, since)
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            backend: "my-store",
            ..self.inner.capabilities()
        }
    }
    async fn shutdown(&self) -> Result<()> {
        self.shut_down.store(true, Ordering::SeqCst);
        self.inner.shutdown().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_built_around_a_store_runs_a_workflow_and_shuts_the_store_down() {
    let shut_down = Arc::new(AtomicBool::new(false));
    let store = Arc::new(MyStore {
        inner: MemoryStore::new(),
        shut_down: shut_down.clone(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut auth = AuthConfig::open();
    auth.add_env("admin:ad,worker:wk").expect("tokens");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(
        Server::builder()
            .store(store)
            .listener(listener)
            .auth(auth)
            .shutdown_signal(stop_rx)
            .drain_timeout(Duration::from_secs(1))
            .serve(),
    );

    let admin = [CONTROL, ("Authorization", "Bearer ad")];
    let info = send(addr, "GET", "/api/cluster/info", &admin, None).await;
    expect_status(&info, 200);
    assert_eq!(
        info.json()["storage"],
        json!({"backend": "my-store", "durable": false, "multi_node": false}),
        "discovery names the store from its own capabilities"
    );

    let started = send(
        addr,
        "POST",
        "/api/workflows",
        &admin,
        Some(
            &json!({"workflow_id": "wf-1", "workflow_type": "greeter", "task_queue": "q",
                     "input": {"codec": "avro", "blob": "AA=="}}),
        ),
    )
    .await;
    expect_status(&started, 201);

    let wk = [WORKER, ("Authorization", "Bearer wk")];
    let registered = send(
        addr,
        "POST",
        "/api/worker/register",
        &wk,
        Some(
            &json!({"worker_id": "w1", "task_queue": "q", "runtime": "python",
                     "supported_workflow_types": ["greeter"]}),
        ),
    )
    .await;
    assert!(
        matches!(registered.status, 200 | 201),
        "{}",
        registered.text
    );
    let poll = json!({"worker_id": "w1", "task_queue": "q", "timeout_seconds": 5});
    let task: Value = send(
        addr,
        "POST",
        "/api/worker/workflow-tasks/poll",
        &wk,
        Some(&poll),
    )
    .await
    .json()["task"]
        .clone();
    assert_eq!(task["workflow_id"], "wf-1", "{task}");
    let completed = send(
        addr,
        "POST",
        &format!(
            "/api/worker/workflow-tasks/{}/complete",
            task["task_id"].as_str().expect("task id")
        ),
        &wk,
        Some(&json!({"lease_owner": task["lease_owner"],
                     "workflow_task_attempt": task["workflow_task_attempt"],
                     "commands": [{"type": "complete_workflow",
                                   "result": {"codec": "avro", "blob": "BB=="}}]})),
    )
    .await;
    expect_status(&completed, 200);
    let described = send(addr, "GET", "/api/workflows/wf-1", &admin, None).await;
    assert_eq!(
        described.json()["status"],
        "completed",
        "{}",
        described.text
    );

    stop.send(true).expect("the server listens for the stop");
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the server stops within 30 s")
        .expect("server task")
        .expect("the server stopped cleanly");
    assert!(
        shut_down.load(Ordering::SeqCst),
        "stopping the server shuts the store down"
    );
}

#[tokio::test]
async fn a_server_without_a_store_or_with_a_volatile_store_on_a_public_address_refuses_to_start() {
    let missing = Server::builder()
        .listen("127.0.0.1:0".parse().expect("addr"))
        .serve()
        .await
        .expect_err("no store");
    assert!(missing.to_string().contains("no store"), "{missing}");

    let mut auth = AuthConfig::open();
    auth.add_env("admin:ad").expect("tokens");
    let volatile = Server::builder()
        .store(Arc::new(MemoryStore::new()))
        .listen("0.0.0.0:0".parse().expect("addr"))
        .auth(auth)
        .serve()
        .await
        .expect_err("a store that is not durable stays on loopback");
    assert!(volatile.to_string().contains("not durable"), "{volatile}");
}
