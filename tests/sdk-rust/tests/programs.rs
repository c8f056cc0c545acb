//! The two check programs the Rust SDK publishes (`durable-workflow-memo-restart` and
//! `durable-workflow-replay-conformance`), run unmodified against Keel. scripts/test
//! installs them from the crate registry into target/sdk-rust-tools (`DW_SDK_TOOLS`
//! names another folder).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use keel_sdk_rust_e2e::Keel;
use serde_json::Value;

fn program(name: &str) -> PathBuf {
    let dir = std::env::var_os("DW_SDK_TOOLS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/sdk-rust-tools/bin"),
        PathBuf::from,
    );
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: scripts/test installs it with `cargo install --locked --debug \
         durable-workflow@4.10.2 --root target/sdk-rust-tools`",
        path.display()
    );
    path
}

/// Runs `name` against `keel` and returns its JSON report (stdout), asserting it exited 0.
async fn run(keel: &Keel, name: &str) -> Value {
    let mut command = Command::new(program(name));
    command.args(["--server-url", &keel.url]);
    if let Some(token) = &keel.token {
        command.args(["--token", token]);
    }
    let output = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .expect("finishes within 3 minutes")
    .expect("joins")
    .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{name} failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{name} printed no JSON ({e}): {stdout}"))
}

#[tokio::test]
async fn memo_restart_program_sees_typed_memo_projection_and_canonical_envelopes() {
    let keel = Keel::start().await;
    let report = run(&keel, "durable-workflow-memo-restart").await;
    assert_eq!(report["result"], "rust-replayed-memo");
    assert_eq!(report["worker_restart"], true);
    assert_eq!(report["memo_event_count"], 1);
}

#[tokio::test]
async fn replay_conformance_program_passes_every_scenario() {
    let keel = Keel::start().await;
    let report = run(&keel, "durable-workflow-replay-conformance").await;
    assert_eq!(report["outcome"], "pass", "{report}");
    let scenarios = report["scenario_results"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(scenarios.len(), 3);
    assert!(scenarios.iter().all(|s| s["status"] == "pass"), "{report}");
}
