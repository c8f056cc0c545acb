//! The whole runner against an in-process Keel (the real clock, bearer tokens on), on
//! the in-memory store and on RocksDB: every scenario passes, and the result document
//! says so.

use std::sync::Arc;
use std::time::Duration;

use keel_engine::clock::SystemClock;
use keel_engine::storage::memory::MemoryStore;
use keel_engine::storage::KvStore;
use keel_engine::{Engine, EngineConfig};
use keel_http::{AppState, AuthConfig};
use keel_protocol_conformance::{run, Options, Status};
use keel_storage_rocksdb::{RocksOptions, RocksStore};

const TOKEN: &str = "conformance-secret";

/// Keel on 127.0.0.1:0 over `store` with one token holding every role; returns its URL,
/// its engine and the sender that stops it.
async fn keel_with_token(
    store: Arc<dyn KvStore>,
) -> (String, Engine, tokio::sync::watch::Sender<bool>) {
    let config = EngineConfig {
        workflow_task_lease: Duration::from_secs(30),
        activity_task_lease: Duration::from_secs(30),
        ..EngineConfig::default()
    };
    let engine = Engine::open(store, Arc::new(SystemClock), config)
        .await
        .expect("engine opens");
    let mut auth = AuthConfig::open();
    auth.add_env(&format!("admin+worker:{TOKEN}"))
        .expect("tokens parse");
    let state = Arc::new(AppState::new(engine.clone()).with_auth(auth));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(keel_http::serve(
        listener,
        state,
        stop_rx,
        Duration::from_secs(1),
    ));
    (format!("http://{addr}"), engine, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_scenario_passes_against_keel_with_tokens_on() {
    every_scenario_passes(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_scenario_passes_against_keel_on_rocksdb() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RocksStore::open(dir.path(), RocksOptions::default()).expect("rocksdb opens");
    every_scenario_passes(Arc::new(store)).await;
}

async fn every_scenario_passes(store: Arc<dyn KvStore>) {
    let (url, engine, stop) = keel_with_token(store).await;
    let opts = Options::parse(["--url".to_string(), url, "--token".into(), TOKEN.into()])
        .expect("options parse");
    let report = run(opts).await;
    let table = report.table();
    println!("{table}");
    let not_passed: Vec<_> = report
        .results
        .iter()
        .filter(|r| r.status != Status::Passed)
        .map(|r| (r.id, r.status, r.message.clone()))
        .collect();
    assert!(
        not_passed.is_empty(),
        "not passed: {not_passed:#?}\n{table}"
    );
    let doc = report.to_json();
    assert_eq!(doc["schema"], "keel.protocol-conformance.result.v1");
    assert_eq!(doc["summary"]["failed"], 0);
    assert_eq!(doc["target"]["auth"], "token");
    let cp = &doc["server"]["control_plane_version"];
    assert!(cp == "2" || cp == 2, "control plane version {cp}");
    assert!(doc["server"]["worker_protocol_version"].is_string());
    assert!(doc["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .all(|s| s["evidence"].as_array().is_some_and(|e| !e.is_empty())
            && s["upstream"].as_array().is_some_and(|u| !u.is_empty())));
    assert!(
        report.duration < Duration::from_secs(60),
        "the run took {:?}",
        report.duration
    );
    let _ = stop.send(true);
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_a_protected_server_refuses_discovery_and_the_run_fails() {
    let (url, engine, stop) = keel_with_token(Arc::new(MemoryStore::new())).await;
    // Against a token-protected server without a token, discovery is refused: nothing
    // else runs and the run fails, saying why.
    let opts = Options::parse([
        "--url".to_string(),
        url,
        "--only".into(),
        "auth,discovery".into(),
    ])
    .expect("options parse");
    let report = run(opts).await;
    let auth = report
        .results
        .iter()
        .find(|r| r.id == "auth.refusals")
        .expect("auth scenario ran");
    assert_eq!(auth.status, Status::Skipped, "{:?}", auth.message);
    assert!(report.failed() > 0, "{}", report.table());
    let _ = stop.send(true);
    engine.shutdown();
}

#[test]
fn usage_errors_name_the_flag() {
    let e = Options::parse(["--only".to_string(), "nonsense".into()]).expect_err("refused");
    assert!(e.contains("nonsense") && e.contains("discovery"), "{e}");
    let e = Options::parse(["--url".to_string(), "http://h:1/api".into()]).expect_err("refused");
    assert!(e.contains("/api"), "{e}");
    let e = Options::parse(["--token".to_string()]).expect_err("refused");
    assert!(e.contains("--token needs a value"), "{e}");
}
