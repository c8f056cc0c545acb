//! Two Keel nodes, each with its own HTTP server, sharing one simulated store with fault
//! injection on (spurious conflicts, commit-unknown results): a client starts a workflow
//! through one node, a worker long-polls the other and gets it, completes it there, and
//! the first node reports it completed; cluster info lists both nodes, one of them firing
//! timers.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{send, Resp, CONTROL, WORKER};
use keel_engine::clock::{Clock, SystemClock};
use keel_engine::cluster::ClusterConfig;
use keel_engine::storage::simulated::{FaultConfig, SimulatedStore};
use keel_engine::storage::KvStore;
use keel_engine::{Engine, EngineConfig};
use keel_http::AppState;
use serde_json::{json, Value};
use tokio::net::TcpListener;

struct Node {
    addr: SocketAddr,
    engine: Engine,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn node(store: &SimulatedStore, id: &str) -> Node {
    let config = EngineConfig {
        cluster: Some(ClusterConfig {
            heartbeat: Duration::from_millis(200),
            lease: Duration::from_secs(2),
            ..ClusterConfig::new(id)
        }),
        ..EngineConfig::default()
    };
    let engine = Engine::open(
        Arc::new(store.clone()) as Arc<dyn KvStore>,
        Arc::new(SystemClock) as Arc<dyn Clock>,
        config,
    )
    .await
    .expect("node opens");
    let state = Arc::new(AppState::new(engine.clone()).with_server_id(id));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(keel_http::serve(
        listener,
        state,
        stop_rx,
        Duration::from_secs(1),
    ));
    Node {
        addr,
        engine,
        _stop: stop,
    }
}

/// Sends until the answer is not a retryable storage hiccup (the faults are injected on
/// purpose; clients retry those, as the SDK does).
async fn call(n: &Node, plane: (&str, &str), method: &str, path: &str, body: Value) -> Resp {
    for _ in 0..50 {
        let r = send(n.addr, method, path, &[plane], Some(&body)).await;
        if r.status != 503 {
            return r;
        }
    }
    panic!("{method} {path} kept answering 503");
}

#[tokio::test]
async fn two_nodes_on_one_store_act_as_one_server() {
    let store = SimulatedStore::new(FaultConfig::none());
    let a = node(&store, "node-a").await;
    let b = node(&store, "node-b").await;
    store.set_faults(FaultConfig {
        max_delay: Duration::ZERO,
        ..FaultConfig::chaos(7)
    });

    let r = call(
        &b,
        WORKER,
        "POST",
        "/api/worker/register",
        json!({"worker_id": "w1", "task_queue": "q", "runtime": "python"}),
    )
    .await;
    assert!(r.status == 200 || r.status == 201, "{}", r.text);
    // The worker long-polls node b before anything is ready.
    let b_addr = b.addr;
    let poll = tokio::spawn(async move {
        send(
            b_addr,
            "POST",
            "/api/worker/workflow-tasks/poll",
            &[WORKER],
            Some(&json!({"worker_id": "w1", "task_queue": "q", "timeout_seconds": 20})),
        )
        .await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b
        .engine
        .queue_stats("default", "q", keel_engine::model::TaskKind::Workflow)
        .pollers
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the poll never parked on b"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The client starts the workflow through node a (a retried start is the same one).
    let r = call(
        &a,
        CONTROL,
        "POST",
        "/api/workflows",
        json!({"workflow_id": "across", "workflow_type": "wf", "task_queue": "q",
               "duplicate_policy": "use-existing"}),
    )
    .await;
    assert!(r.status == 200 || r.status == 201, "{}", r.text);

    let polled = tokio::time::timeout(Duration::from_secs(15), poll)
        .await
        .expect("the poll parked on b is answered")
        .expect("poll task joins");
    assert_eq!(polled.status, 200, "{}", polled.text);
    let task = polled.json()["task"].clone();
    assert_eq!(task["workflow_id"], "across", "{}", polled.text);
    let r = call(
        &b,
        WORKER,
        "POST",
        &format!(
            "/api/worker/workflow-tasks/{}/complete",
            task["task_id"].as_str().expect("task id")
        ),
        json!({
            "lease_owner": task["lease_owner"],
            "workflow_task_attempt": task["workflow_task_attempt"],
            "commands": [{"type": "complete_workflow", "result": null}],
        }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = call(&a, CONTROL, "GET", "/api/workflows/across", json!(null)).await;
    assert_eq!(r.json()["status"], "completed", "{}", r.text);

    // Cluster info on either node lists both, and exactly one fires timers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = call(&a, CONTROL, "GET", "/api/cluster/info", json!(null)).await;
        let nodes = info.json()["topology"]["nodes"].clone();
        let ids: Vec<&str> = nodes
            .as_array()
            .map(|n| n.iter().filter_map(|n| n["node_id"].as_str()).collect())
            .unwrap_or_default();
        let firing = nodes.as_array().map_or(0, |n| {
            n.iter().filter(|n| n["fires_timers"] == true).count()
        });
        if ids.len() == 2 && ids.contains(&"node-a") && ids.contains(&"node-b") && firing == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster info never listed both nodes with one scheduler: {nodes}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
