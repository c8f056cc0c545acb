//! A real `keel serve` for the Rust SDK suite: one process per test on a free loopback
//! port with its own data dir, killed when the handle drops.
//!
//! `KEEL_BIN` names the binary (default `target/debug/keel` of the repository). With
//! `KEEL_E2E_TOKEN` set, the server requires that bearer token (roles admin and worker)
//! and every client made here sends it, as in the Python suite.

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use durable_workflow::{Client, Uuid};
use serde_json::{json, Value};

/// A running server.
pub struct Keel {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The bearer token every client sends, when the suite runs with tokens.
    pub token: Option<String>,
    child: Child,
    data: tempfile::TempDir,
}

impl Keel {
    /// Starts a server and waits (30 s at most) until `/api/ready` answers 200.
    pub async fn start() -> Keel {
        let binary = std::env::var_os("KEEL_BIN").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/keel"),
            PathBuf::from,
        );
        let data = tempfile::tempdir().expect("a temporary data dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let token = std::env::var("KEEL_E2E_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        let mut command = Command::new(&binary);
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data.path())
            .env_remove("KEEL_TOKENS")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(data.path().join("keel.log")).expect("log file"),
            ));
        if let Some(token) = &token {
            command.env("KEEL_TOKENS", format!("admin+worker:{token}"));
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let keel = Keel {
            url: format!("http://127.0.0.1:{port}"),
            token,
            child,
            data,
        };
        let http = reqwest::Client::new();
        let ready = format!("{}/api/ready", keel.url);
        wait_until("keel /api/ready", Duration::from_secs(30), || async {
            http.get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        keel
    }

    /// An SDK client of the default namespace.
    pub fn client(&self) -> Client {
        Client::builder(self.url.clone())
            .token(self.token.clone())
            .namespace("default")
            .build()
            .expect("an SDK client")
    }

    /// A control-plane request outside the SDK (e.g. registering search attributes).
    pub async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}/api{path}", self.url))
            .header("X-Durable-Workflow-Control-Plane-Version", "2")
            .header("X-Namespace", "default")
            .header("Accept", "application/json");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("keel answers");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    /// Registers a typed search attribute in the default namespace.
    pub async fn search_attribute(&self, name: &str, kind: &str) {
        self.control(
            reqwest::Method::POST,
            "/search-attributes",
            Some(json!({"name": name, "type": kind})),
        )
        .await;
    }

    /// The run's history events, all pages.
    pub async fn history(&self, workflow_id: &str, run_id: &str) -> Vec<Value> {
        let body = self
            .control(
                reqwest::Method::GET,
                &format!("/workflows/{workflow_id}/runs/{run_id}/history?page_size=1000"),
                None,
            )
            .await;
        body["events"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Keel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // The server's side of a failed test, before its data dir goes.
            let log =
                std::fs::read_to_string(self.data.path().join("keel.log")).unwrap_or_default();
            let keep = std::env::var("KEEL_E2E_LOG_LINES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(40);
            let tail: Vec<&str> = log.lines().rev().take(keep).collect();
            eprintln!("--- keel log (last {} lines) ---", tail.len());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}

/// Polls `check` every 50 ms until it holds; panics naming `what` after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `event_type`s of `events`, in order.
pub fn event_types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap_or_default().to_string())
        .collect()
}
