//! The HTTP harness: each input is a short scenario of requests sent over one keep-alive
//! connection to a fresh in-process Keel (`keel_http::serve` over the simulated store,
//! tokens required), so every body goes through the same parsing, validation and handler
//! code as in production. The properties checked on every response:
//!
//! * the server answers (a panic aborts the process; a dropped connection or a request
//!   left unanswered for 10 virtual minutes fails the input);
//! * a refusal is a 4xx whose JSON body names its `reason` (`[a-z][a-z0-9_]*`) with a
//!   `message`, and a 422 `validation_failed` lists its field `errors`; the only 5xx a
//!   client may cause is 504 `query_worker_timeout`;
//! * every JSON reply is valid JSON, and an exported history bundle carries the checksum
//!   of its own canonical form.
//!
//! Time is virtual: the runtime's clock is paused and jumps ahead whenever every task
//! waits, and the engine's clock follows it, so a 30-second long-poll or a timer costs no
//! real time.
//!
//! # Input format
//!
//! Requests separated by a line `---`; each is a request line `METHOD /path?query`
//! (`& METHOD /path` sends it on a connection of its own and goes on without waiting, so
//! a query or an update can wait while later requests answer it),
//! optional header lines `Name: value` (a blank line or the first line that is not a
//! header ends them), then the body bytes. `$task_id`, `$run_id`, `$workflow_id`,
//! `$activity_attempt_id`, `$query_task_id`, `$workflow_task_attempt`, `$worker_id`,
//! `$update_id` and `$next_page_token` are replaced by the last value of that name seen in
//! a response, so a scenario can start a workflow, poll its task and complete it; `$pad`
//! is 120,000 `x`s, so a small input can make records that are split into chunks. The
//! harness sends both version headers, `Authorization: Bearer fuzz-admin` (roles admin and
//! worker; `fuzz-worker` and `fuzz-operator` are other tokens) and, with a body,
//! `Content-Type: application/json`; a header line replaces the default of that name, and
//! `Name:` with no value removes it. Framing headers (`Content-Length`,
//! `Transfer-Encoding`, `Expect`, `Connection`, `Upgrade`, `TE`) are the harness's own.
//! With `KEEL_FUZZ_TRACE` set, every exchange is printed to stderr.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use keel_engine::clock::{Clock, Millis};
use keel_engine::storage::simulated::SimulatedStore;
use keel_engine::storage::KvStore;
use keel_engine::{Engine, EngineConfig};
use keel_http::error::ApiError;
use keel_http::{AppState, AuthConfig};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The engine's clock at the start of every scenario (2026-05-28).
pub const START_MS: Millis = 1_780_000_000_000;
/// Requests per scenario at most.
const MAX_REQUESTS: usize = 10;
/// Header lines per request at most.
const MAX_HEADERS: usize = 16;
/// Longest a request may stay unanswered (virtual time): longer than any wait a client
/// can ask for (polls 60 s, update waits 300 s).
const ANSWER_WITHIN: Duration = Duration::from_secs(600);
const TOKENS: &str = "admin+worker:fuzz-admin,worker:fuzz-worker,operator:fuzz-operator@default";
/// What `$pad` stands for: enough bytes that a record holding it is split across values
/// (over 100 kB), little enough that two fit under the memo limit (256 KiB).
const PAD_BYTES: usize = 120_000;
/// Response values a later request can name as `$name`.
const VARIABLES: [&str; 9] = [
    "task_id",
    "run_id",
    "workflow_id",
    "activity_attempt_id",
    "query_task_id",
    "workflow_task_attempt",
    "worker_id",
    "update_id",
    "next_page_token",
];
/// Headers that frame the message: only the harness sets them.
const FRAMING: [&str; 7] = [
    "content-length",
    "transfer-encoding",
    "expect",
    "connection",
    "upgrade",
    "te",
    "trailer",
];

/// The engine's clock, driven by the runtime's (paused) clock.
struct VirtualClock {
    start: tokio::time::Instant,
}

impl Clock for VirtualClock {
    fn now_ms(&self) -> Millis {
        START_MS + self.start.elapsed().as_millis() as Millis
    }

    fn sleep_until(&self, at: Millis) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let wait = (at - self.now_ms()).max(0) as u64;
        Box::pin(tokio::time::sleep(Duration::from_millis(wait)))
    }
}

/// One request of a scenario, before variables are substituted.
#[derive(Debug)]
struct Request {
    /// Sent on a connection of its own without waiting for its answer (`& ` before the
    /// request line); answered and checked before the scenario ends.
    background: bool,
    method: String,
    target: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

fn split_scenario(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while parts.len() < MAX_REQUESTS {
        match find(rest, b"\n---\n") {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + 5..];
            }
            None => {
                parts.push(rest);
                break;
            }
        }
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn take_line<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    if rest.is_empty() {
        return None;
    }
    let (line, tail) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (*rest, &rest[rest.len()..]),
    };
    *rest = tail;
    Some(line.strip_suffix(b"\r").unwrap_or(line))
}

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn parse_request(part: &[u8]) -> Option<Request> {
    let mut rest = part;
    let line = String::from_utf8_lossy(take_line(&mut rest)?).into_owned();
    let (background, line) = match line.strip_prefix("& ") {
        Some(rest) => (true, rest),
        None => (false, line.as_str()),
    };
    let (method, target) = line.split_once(' ').unwrap_or((line, "/"));
    let method_ok = (1..=12).contains(&method.len())
        && method.bytes().all(|b| b.is_ascii_uppercase())
        && !matches!(method, "HEAD" | "CONNECT");
    if !method_ok {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let before = rest;
        let Some(line) = take_line(&mut rest) else {
            break;
        };
        if line.is_empty() {
            break;
        }
        let header = std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.split_once(':'))
            .filter(|(name, _)| is_token(name));
        match header {
            Some((name, value)) if headers.len() < MAX_HEADERS => {
                headers.push((name.to_string(), value.trim().as_bytes().to_vec()));
            }
            Some(_) => {}
            None => {
                rest = before;
                break;
            }
        }
    }
    Some(Request {
        background,
        method: method.to_string(),
        target: target.trim().as_bytes().to_vec(),
        headers,
        body: rest.to_vec(),
    })
}

/// Values learned from responses.
#[derive(Default)]
struct Vars(BTreeMap<&'static str, String>);

impl Vars {
    fn learn(&mut self, value: &Value, depth: usize) {
        if depth > 8 {
            return;
        }
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    if let Some(name) = VARIABLES.iter().find(|n| **n == k) {
                        match v {
                            Value::String(s) => {
                                self.0.insert(name, s.clone());
                            }
                            Value::Number(n) => {
                                self.0.insert(name, n.to_string());
                            }
                            _ => {}
                        }
                    }
                    self.learn(v, depth + 1);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| self.learn(v, depth + 1)),
            _ => {}
        }
    }

    fn substitute(&self, bytes: &[u8]) -> Vec<u8> {
        if !bytes.contains(&b'$') {
            return bytes.to_vec();
        }
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        'outer: while i < bytes.len() {
            if bytes[i..].starts_with(b"$pad") {
                out.resize(out.len() + PAD_BYTES, b'x');
                i += 4;
                continue;
            }
            if bytes[i] == b'$' {
                for name in VARIABLES {
                    if bytes[i + 1..].starts_with(name.as_bytes()) {
                        out.extend_from_slice(
                            self.0.get(name).map_or("", String::as_str).as_bytes(),
                        );
                        i += 1 + name.len();
                        continue 'outer;
                    }
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        out
    }
}

/// A request target the request line can carry: bytes outside the URI characters are
/// percent-encoded.
fn encode_target(target: &[u8]) -> String {
    let mut out = String::with_capacity(target.len() + 1);
    if target.first() != Some(&b'/') {
        out.push('/');
    }
    for &b in target {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn render(req: &Request, vars: &Vars) -> (String, Vec<u8>) {
    let target = encode_target(&vars.substitute(&req.target));
    let body = vars.substitute(&req.body);
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        ("Host".into(), b"127.0.0.1".to_vec()),
        (
            "X-Durable-Workflow-Control-Plane-Version".into(),
            b"2".to_vec(),
        ),
        (
            "X-Durable-Workflow-Protocol-Version".into(),
            b"1.20".to_vec(),
        ),
        ("Authorization".into(), b"Bearer fuzz-admin".to_vec()),
    ];
    if !body.is_empty() {
        headers.push(("Content-Type".into(), b"application/json".to_vec()));
    }
    for (name, value) in &req.headers {
        let lower = name.to_ascii_lowercase();
        if FRAMING.contains(&lower.as_str()) {
            continue;
        }
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        let value = vars.substitute(value);
        let printable = value
            .iter()
            .all(|b| (0x20..0x7f).contains(b) || *b == b'\t');
        if !value.is_empty() && printable {
            headers.push((name.clone(), value));
        }
    }
    let mut head = format!("{} {target} HTTP/1.1\r\n", req.method).into_bytes();
    for (name, value) in headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(&value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    head.extend_from_slice(&body);
    (target, head)
}

/// One response as read off the connection.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive client connection; `None` after the server closed it.
struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    async fn stream(&mut self) -> &mut TcpStream {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr)
                .await
                .expect("connect to keel");
            // Closing with a reset leaves no TIME_WAIT behind, so millions of scenarios
            // do not run the machine out of ports (a zero linger never blocks the drop).
            #[allow(deprecated)]
            let _ = stream.set_linger(Some(Duration::ZERO));
            let _ = stream.set_nodelay(true);
            self.stream = Some(stream);
            self.buf.clear();
        }
        self.stream.as_mut().expect("invariant: connected above")
    }

    /// Sends `raw` and reads the final response (interim 1xx responses are skipped). A
    /// kept-alive connection the server closed while it was idle (its idle timeout runs
    /// in virtual time too) is replaced once, as HTTP clients do; a fresh one is not.
    async fn exchange(&mut self, raw: &[u8]) -> Option<Response> {
        let reused = self.stream.is_some();
        let sent = self.stream().await.write_all(raw).await.is_ok();
        if reused && (!sent || self.closed_before_answer().await) {
            self.stream = None;
            self.stream().await.write_all(raw).await.ok()?;
        } else if !sent {
            return None;
        }
        loop {
            let response = self.read_response().await?;
            if response.status >= 200 {
                if response.header("connection") == Some("close") {
                    self.stream = None;
                }
                return Some(response);
            }
        }
    }

    /// Whether the connection ends before the first byte of an answer.
    async fn closed_before_answer(&mut self) -> bool {
        self.buf.is_empty() && self.fill().await.is_none()
    }

    async fn fill(&mut self) -> Option<()> {
        let mut chunk = [0u8; 16 * 1024];
        let stream = self.stream.as_mut()?;
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Some(())
    }

    async fn read_response(&mut self) -> Option<Response> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let start = head_end + 4;
        while self.buf.len() < start + length {
            self.fill().await?;
        }
        let body = self.buf[start..start + length].to_vec();
        self.buf.drain(..start + length);
        Some(Response {
            status,
            headers,
            body,
        })
    }
}

fn is_reason(reason: &str) -> bool {
    reason.starts_with(|c: char| c.is_ascii_lowercase())
        && reason
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Asserts that an error body names a 4xx refusal: `reason`, `message`, and field
/// `errors` on a 422 `validation_failed`. `context` is shown when it does not.
fn check_refusal(status: u16, body: &Value, context: &dyn Fn() -> String) {
    let reason = body["reason"].as_str().unwrap_or_default();
    let allowed_5xx = status == 504 && reason == "query_worker_timeout";
    assert!(
        (400..500).contains(&status) || allowed_5xx,
        "a client's request got {status}: {}",
        context()
    );
    assert!(
        is_reason(reason),
        "refusal without a named reason: {}",
        context()
    );
    assert!(
        body["message"].is_string(),
        "refusal without a message: {}",
        context()
    );
    if reason == "validation_failed" {
        assert_eq!(status, 422, "validation_failed is not a 422: {}", context());
        assert!(
            body["errors"].as_object().is_some_and(|e| !e.is_empty()),
            "validation_failed without field errors: {}",
            context()
        );
    }
}

/// Asserts that `e`, an error the HTTP layer would send, is a named 4xx refusal.
pub fn assert_named_rejection(e: &ApiError) {
    check_refusal(e.status.as_u16(), &e.body(), &|| format!("{e:?}"));
}

fn check(method: &str, target: &str, response: &Response) -> Option<Value> {
    let context = || {
        let body = String::from_utf8_lossy(&response.body);
        let cut: String = body.chars().take(2000).collect();
        format!("{method} {target} -> {} {cut}", response.status)
    };
    let content_type = response.header("content-type").unwrap_or_default();
    if response.status == 204 {
        assert!(response.body.is_empty(), "a 204 with a body: {}", context());
        return None;
    }
    if !content_type.starts_with("application/json") {
        assert!(
            response.status == 200 && content_type.starts_with("text/plain"),
            "reply without a JSON body: {}",
            context()
        );
        return None;
    }
    let body: Value = serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {}", context()));
    if response.status >= 300 {
        check_refusal(response.status, &body, &context);
    } else if target.contains("/history/export") {
        let stated = body["integrity"]["checksum"].as_str().unwrap_or_default();
        assert_eq!(
            stated,
            keel_engine::workflow::bundle_checksum(&body),
            "export bundle checksum: {}",
            context()
        );
    }
    Some(body)
}

/// Sends one request and waits (in virtual time) for its answer.
async fn answer(conn: &mut Conn, method: &str, target: &str, raw: &[u8]) -> Response {
    let response = match tokio::time::timeout(ANSWER_WITHIN, conn.exchange(raw)).await {
        Ok(Some(r)) => r,
        Ok(None) => panic!("{method} {target}: connection closed without a response"),
        Err(_) => panic!("{method} {target}: no response within {ANSWER_WITHIN:?}"),
    };
    if trace() {
        eprintln!(
            "{method} {target} -> {} {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    response
}

async fn scenario(requests: Vec<Request>) {
    let clock = Arc::new(VirtualClock {
        start: tokio::time::Instant::now(),
    });
    let store: Arc<dyn KvStore> = Arc::new(SimulatedStore::default());
    let config = EngineConfig {
        workflow_task_lease: Duration::from_secs(30),
        activity_task_lease: Duration::from_secs(30),
        ..EngineConfig::default()
    };
    let engine = Engine::open(store, clock, config)
        .await
        .expect("engine opens on an empty store");
    let mut auth = AuthConfig::open();
    auth.add_env(TOKENS)
        .expect("invariant: the harness's tokens parse");
    let state = Arc::new(AppState::new(engine.clone()).with_auth(auth));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("listener address");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(keel_http::serve(
        listener,
        state,
        stop_rx,
        Duration::from_secs(1),
    ));

    let mut conn = Conn {
        addr,
        stream: None,
        buf: Vec::new(),
    };
    let mut vars = Vars::default();
    let mut background = Vec::new();
    for req in &requests {
        let (target, raw) = render(req, &vars);
        if req.background {
            let method = req.method.clone();
            background.push(tokio::spawn(async move {
                let mut conn = Conn {
                    addr,
                    stream: None,
                    buf: Vec::new(),
                };
                let response = answer(&mut conn, &method, &target, &raw).await;
                check(&method, &target, &response);
            }));
            // Let it reach the server (and park there) before the next request.
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
            continue;
        }
        let response = answer(&mut conn, &req.method, &target, &raw).await;
        if let Some(body) = check(&req.method, &target, &response) {
            vars.learn(&body, 0);
        }
    }
    for task in background {
        if let Err(e) = task.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let health = answer(
        &mut conn,
        "GET",
        "/api/health",
        b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(
        health.status,
        200,
        "health after the scenario: {}",
        String::from_utf8_lossy(&health.body)
    );

    drop(conn);
    let _ = stop.send(true);
    engine.shutdown();
}

/// Whether `KEEL_FUZZ_TRACE` asks for every exchange on stderr (to write seeds).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("KEEL_FUZZ_TRACE").is_some())
}

/// Runs the scenario `data` describes against a fresh server.
pub fn run(data: &[u8]) {
    let requests: Vec<Request> = split_scenario(data)
        .into_iter()
        .filter_map(parse_request)
        .collect();
    if requests.is_empty() {
        return;
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("invariant: a current-thread runtime builds")
        .block_on(scenario(requests));
}
