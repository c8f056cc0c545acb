//! An in-process Keel on 127.0.0.1:0 over the in-memory store and a manual clock, and a
//! minimal HTTP/1.1 client for it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keel_engine::clock::ManualClock;
use keel_engine::metrics::MeteredStore;
use keel_engine::storage::memory::MemoryStore;
use keel_engine::storage::KvStore;
use keel_engine::{Engine, EngineConfig};
use keel_http::{AppState, AuthConfig, NodeRoles};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const START: i64 = 1_780_000_000_000;
pub const CONTROL: (&str, &str) = ("X-Durable-Workflow-Control-Plane-Version", "2");
pub const WORKER: (&str, &str) = ("X-Durable-Workflow-Protocol-Version", "1.20");

pub struct Server {
    pub addr: SocketAddr,
    pub engine: Engine,
    pub clock: ManualClock,
    pub state: Arc<AppState>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.engine.shutdown();
    }
}

/// Starts a server with `tokens` (a `KEEL_TOKENS` value; empty: open mode) and `roles`
/// (`None`: the default roles).
pub async fn start(tokens: &str, roles: Option<&str>) -> Server {
    start_with_limits(tokens, roles, keel_http::ConnectionLimits::default()).await
}

/// [`start`] under connection `limits`.
pub async fn start_with_limits(
    tokens: &str,
    roles: Option<&str>,
    limits: keel_http::ConnectionLimits,
) -> Server {
    let mut auth = AuthConfig::open();
    auth.add_env(tokens).expect("tokens parse");
    start_configured(auth, limits, |state| match roles {
        Some(r) => state.with_roles(NodeRoles::parse(r).expect("roles parse")),
        None => state,
    })
    .await
}

/// A server with `auth`, under connection `limits`, its state adjusted by `configure`
/// (quotas, audit retention, roles).
pub async fn start_configured(
    auth: AuthConfig,
    limits: keel_http::ConnectionLimits,
    configure: impl FnOnce(AppState) -> AppState,
) -> Server {
    let store: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
    let store: Arc<dyn KvStore> = Arc::new(MeteredStore::new(store));
    let clock = ManualClock::new(START);
    let config = EngineConfig {
        workflow_task_lease: Duration::from_secs(10),
        activity_task_lease: Duration::from_secs(10),
        ..EngineConfig::default()
    };
    let engine = Engine::open(store, Arc::new(clock.clone()), config)
        .await
        .expect("engine opens");
    let state = Arc::new(configure(AppState::new(engine.clone()).with_auth(auth)));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(keel_http::serve_with_limits(
        listener,
        state.clone(),
        stop_rx,
        Duration::from_secs(1),
        limits,
    ));
    Server {
        addr,
        engine,
        clock,
        state,
        stop,
    }
}

/// One response: status, headers (lowercased names) and body.
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub text: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    pub fn reason(&self) -> String {
        self.json()["reason"].as_str().unwrap_or("").to_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request (Connection: close) and reads the whole response.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Resp {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    // A server may answer (413, 401) and close before reading the whole body: a failed
    // write is not the outcome, the response it sent is.
    if let Err(e) = stream.write_all(req.as_bytes()).await {
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "write: {e}"
        );
    }
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("response within 30 s")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        text: body.to_string(),
    }
}

/// A control-plane request as `token` in namespace `ns`.
pub async fn control(
    s: &Server,
    token: &str,
    ns: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Resp {
    let auth = format!("Bearer {token}");
    send(
        s.addr,
        method,
        path,
        &[CONTROL, ("X-Namespace", ns), ("Authorization", &auth)],
        body,
    )
    .await
}

/// A worker-plane request as `token` in namespace `ns`.
pub async fn worker(
    s: &Server,
    token: &str,
    ns: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Resp {
    let auth = format!("Bearer {token}");
    send(
        s.addr,
        method,
        path,
        &[WORKER, ("X-Namespace", ns), ("Authorization", &auth)],
        body,
    )
    .await
}

/// Asserts a status and reason, showing the body on failure.
#[track_caller]
pub fn expect(r: &Resp, status: u16, reason: &str) {
    assert_eq!(
        (r.status, r.reason().as_str()),
        (status, reason),
        "unexpected response: {}",
        r.text
    );
}

/// Asserts a status, showing the body on failure.
#[track_caller]
pub fn expect_status(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "unexpected response: {}", r.text);
}

/// Whether this test has its process, and so the process-wide metrics recorder, to
/// itself: nextest (`scripts/test`) runs each test in a process of its own; `cargo test`
/// runs a binary's tests side by side, and their counts add up in one recorder.
pub fn alone_in_process() -> bool {
    std::env::var("NEXTEST_EXECUTION_MODE").is_ok_and(|mode| mode == "process-per-test")
}
