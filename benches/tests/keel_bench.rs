//! keel-bench against an in-process Keel (in-memory store, a bearer token required): every
//! scenario runs a few workflows to completion and reports them in its JSON document; a
//! workflow that does not complete counts as a failure and the exit status says so.
//! Nothing here measures speed.

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use keel_engine::clock::SystemClock;
use keel_engine::storage::memory::MemoryStore;
use keel_engine::{Engine, EngineConfig};
use keel_http::{AppState, AuthConfig};
use serde_json::Value;

const TOKEN: &str = "bench-secret";

/// Keel on 127.0.0.1:0 with one token holding every role; returns its URL and the sender
/// that stops it.
async fn keel() -> (String, tokio::sync::watch::Sender<bool>) {
    let config = EngineConfig {
        workflow_task_lease: Duration::from_secs(30),
        activity_task_lease: Duration::from_secs(30),
        ..EngineConfig::default()
    };
    let engine = Engine::open(Arc::new(MemoryStore::new()), Arc::new(SystemClock), config)
        .await
        .expect("engine opens");
    let mut auth = AuthConfig::open();
    auth.add_env(&format!("admin+worker:{TOKEN}"))
        .expect("tokens parse");
    let state = Arc::new(AppState::new(engine).with_auth(auth));
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
    (format!("http://{addr}"), stop)
}

async fn bench(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_keel-bench"))
        .args(args)
        .env_remove("KEEL_TOKEN")
        .env_remove("DURABLE_WORKFLOW_SERVER_URL")
        .output()
        .await
        .expect("keel-bench runs")
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_completes_its_workflows_and_reports_them_as_json() {
    let (url, _stop) = keel().await;
    let pid = std::process::id().to_string();
    for scenario in ["one-activity", "local-activity", "signal", "timer", "child"] {
        let out = bench(&[
            "--url",
            &url,
            "--token",
            TOKEN,
            "--scenario",
            scenario,
            "--workflows",
            "3",
            "--concurrency",
            "3",
            "--workflow-pollers",
            "2",
            "--activity-pollers",
            "2",
            "--server-pid",
            &pid,
            "--json",
        ])
        .await;
        let doc = json_of(&out);
        assert!(
            out.status.success(),
            "{scenario}: exit {:?}\n{doc:#}",
            out.status
        );
        assert_eq!(doc["schema"], "keel.bench.result.v1");
        assert_eq!(doc["scenario"], scenario);
        assert_eq!(doc["parameters"]["workflows"], 3, "{doc:#}");
        assert_eq!(doc["parameters"]["concurrency"], 3);
        assert_eq!(doc["workflows"]["started"], 3, "{scenario}: {doc:#}");
        assert_eq!(doc["workflows"]["completed"], 3, "{scenario}: {doc:#}");
        assert_eq!(doc["workflows"]["verified"], 3, "{scenario}: {doc:#}");
        assert_eq!(doc["workflows"]["failed"], 0, "{scenario}: {doc:#}");
        for p in ["p50", "p90", "p95", "p99", "max", "mean"] {
            assert!(
                doc["latency_ms"][p].as_f64().is_some_and(|v| v > 0.0),
                "{scenario}: latency {p}: {doc:#}"
            );
        }
        assert!(doc["throughput"]["workflows_per_second"]
            .as_f64()
            .is_some_and(|v| v > 0.0));
        assert!(
            doc["server"]["cpu_ms_per_workflow"].as_f64().is_some(),
            "{scenario}: the server's CPU (this process): {doc:#}"
        );
        if scenario == "timer" {
            assert!(
                doc["latency_ms"]["p50"].as_f64() >= Some(1000.0),
                "a 1 s timer completes no sooner: {doc:#}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_mode_starts_workflows_for_the_time_given() {
    let (url, _stop) = keel().await;
    let out = bench(&[
        "--url",
        &url,
        "--token",
        TOKEN,
        "--duration",
        "1",
        "--concurrency",
        "2",
        "--workflow-pollers",
        "2",
        "--activity-pollers",
        "2",
        "--json",
    ])
    .await;
    let doc = json_of(&out);
    assert!(out.status.success(), "{doc:#}");
    assert_eq!(doc["parameters"]["workflows"], Value::Null);
    assert_eq!(doc["parameters"]["duration_seconds"], 1.0);
    let completed = doc["workflows"]["completed"].as_u64().unwrap_or(0);
    assert!(completed >= 1, "{doc:#}");
    assert_eq!(doc["workflows"]["verified"], completed);
    assert_eq!(doc["workflows"]["failed"], 0);
    assert!(doc["wall_seconds"].as_f64() >= Some(1.0), "{doc:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_not_completed_in_time_are_failures_and_the_exit_status_is_1() {
    let (url, _stop) = keel().await;
    let out = bench(&[
        "--url",
        &url,
        "--token",
        TOKEN,
        "--scenario",
        "timer",
        "--timer-seconds",
        "30",
        "--workflow-timeout",
        "0.3",
        "--workflows",
        "2",
        "--workflow-pollers",
        "1",
        "--json",
    ])
    .await;
    let doc = json_of(&out);
    assert_eq!(out.status.code(), Some(1), "{doc:#}");
    assert_eq!(doc["workflows"]["completed"], 0);
    assert_eq!(doc["workflows"]["failed"], 2);
    assert_eq!(doc["failures"]["timed_out"], 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 of 2 workflows failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_exits_1_naming_the_refusal() {
    let (url, _stop) = keel().await;
    let out = bench(&[
        "--url",
        &url,
        "--token",
        "not-the-token",
        "--workflows",
        "1",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused the bench worker's registration: HTTP 401"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("not-the-token"),
        "the token is never printed"
    );
}

#[tokio::test]
async fn help_exits_0_and_lists_every_scenario_and_a_bad_flag_exits_2() {
    let out = bench(&["--help"]).await;
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "one-activity",
        "local-activity",
        "signal",
        "timer",
        "child",
        "--duration",
        "--json",
        "--token",
        "--server-pid",
    ] {
        assert!(help.contains(word), "--help names {word}:\n{help}");
    }
    let out = bench(&["--scenario", "nope"]).await;
    assert_eq!(out.status.code(), Some(2));
    let out = bench(&["--workflows", "3", "--duration", "1"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "a count and a duration conflict"
    );
}
