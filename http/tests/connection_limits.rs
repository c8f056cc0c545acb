//! Slow, idle and excess connections against a real server on loopback: the header,
//! body and idle timeouts, the parked long-poll's exemption from them, the connection
//! ceiling's 503, and — in a child process with a lowered descriptor limit — the accept
//! loop at the descriptor limit.
//!
//! Timeouts here are a few hundred milliseconds, so each test runs in about a second.
//! Tests wait for conditions with deadlines; the only fixed waits are where a test shows
//! that something does *not* happen for a while (a parked poll outliving the timeouts,
//! the server's CPU time over a measuring window).

#[path = "suite/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keel_engine::model::TaskKind;
use keel_http::ConnectionLimits;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TICK: Duration = Duration::from_millis(300);
const DEADLINE: Duration = Duration::from_secs(10);

fn limits(header: Duration, body: Duration, idle: Duration) -> ConnectionLimits {
    ConnectionLimits {
        header_timeout: header,
        body_timeout: body,
        idle_timeout: idle,
        max_connections: None,
    }
}

/// One response read off a connection.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Reads exactly one response (head and a `Content-Length` body); `None` if the
/// connection ends first.
async fn read_reply<R: AsyncRead + Unpin>(r: &mut R) -> Option<Reply> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match r.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let reply = Reply {
        status,
        head,
        body: String::new(),
    };
    let length: usize = reply.header("content-length")?.parse().ok()?;
    let mut body = vec![0u8; length];
    r.read_exact(&mut body).await.ok()?;
    Some(Reply {
        body: String::from_utf8_lossy(&body).into_owned(),
        ..reply
    })
}

/// Waits (up to `DEADLINE`) for the server to close the connection; returns how long
/// that took and whatever bytes came first.
async fn closed_by_server<R: AsyncRead + Unpin>(r: &mut R) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 1024];
    let outcome = tokio::time::timeout(DEADLINE, async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        outcome.is_ok(),
        "the server did not close the connection within {DEADLINE:?}; got {:?}",
        String::from_utf8_lossy(&bytes)
    );
    (started.elapsed(), bytes)
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    req
}

async fn health(stream: &mut TcpStream) -> Option<Reply> {
    stream
        .write_all(request("GET", "/api/health", &[], "").as_bytes())
        .await
        .ok()?;
    read_reply(stream).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_request_head_gets_408_and_is_closed_within_the_header_timeout() {
    let s = common::start_with_limits("", None, limits(TICK, DEADLINE, DEADLINE)).await;
    let stream = TcpStream::connect(s.addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let started = Instant::now();
    // A byte every 50 ms: always sending, never finishing the head.
    let drip = tokio::spawn(async move {
        let head = b"POST /api/workflows HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
        let mut sent = wr.write_all(head).await;
        while sent.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            sent = wr.write_all(b"a").await;
        }
    });
    let (_, bytes) = closed_by_server(&mut rd).await;
    let elapsed = started.elapsed();
    drip.abort();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("request_header_timeout"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(
        elapsed >= TICK / 2,
        "cut after {elapsed:?}, before the timeout"
    );
    assert!(elapsed < TICK * 10, "cut only after {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_body_gets_408_and_is_closed_within_the_body_timeout() {
    let s = common::start_with_limits("", None, limits(DEADLINE, TICK, DEADLINE)).await;
    let mut stream = TcpStream::connect(s.addr).await.expect("connect");
    // Promises 100 bytes, sends 2.
    let head = "POST /api/workflows HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                X-Durable-Workflow-Control-Plane-Version: 2\r\n\
                Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{}";
    stream.write_all(head.as_bytes()).await.expect("write");
    let started = Instant::now();
    let reply = tokio::time::timeout(DEADLINE, read_reply(&mut stream))
        .await
        .expect("a reply within the deadline")
        .expect("a reply");
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 408, "{reply:?}");
    assert_eq!(reply.json()["reason"], "request_body_timeout", "{reply:?}");
    assert_eq!(reply.header("connection").as_deref(), Some("close"));
    assert!(
        elapsed >= TICK / 2,
        "cut after {elapsed:?}, before the timeout"
    );
    assert!(elapsed < TICK * 10, "cut only after {elapsed:?}");
    closed_by_server(&mut stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let s = common::start_with_limits("", None, limits(DEADLINE, DEADLINE, TICK)).await;
    let mut stream = TcpStream::connect(s.addr).await.expect("connect");
    // Within the idle timeout the connection carries request after request.
    for _ in 0..3 {
        let reply = health(&mut stream).await.expect("a reply");
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.header("connection"), None, "kept alive");
    }
    let (idle_for, bytes) = closed_by_server(&mut stream).await;
    assert!(
        bytes.is_empty(),
        "closed quietly, without a reply nobody asked for"
    );
    assert!(idle_for >= TICK / 2, "{idle_for:?}");
    assert!(idle_for < TICK * 10, "closed only after {idle_for:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let s = common::start_with_limits("", None, limits(TICK, DEADLINE, DEADLINE)).await;
    let mut stream = TcpStream::connect(s.addr).await.expect("connect");
    let (after, bytes) = closed_by_server(&mut stream).await;
    assert!(bytes.is_empty(), "{:?}", String::from_utf8_lossy(&bytes));
    assert!(after >= TICK / 2, "{after:?}");
    assert!(after < TICK * 10, "closed only after {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_long_poll_outlives_the_header_body_and_idle_timeouts() {
    let short = Duration::from_millis(200);
    let s = common::start_with_limits("", None, limits(short, short, short)).await;
    let worker_headers = [common::WORKER];
    let register = common::send(
        s.addr,
        "POST",
        "/api/worker/register",
        &worker_headers,
        Some(&json!({"worker_id": "w1", "task_queue": "q", "runtime": "python"})),
    )
    .await;
    assert!(register.status < 300, "{}", register.text);

    let mut poll = TcpStream::connect(s.addr).await.expect("connect");
    let body = json!({"worker_id": "w1", "task_queue": "q", "timeout_seconds": 60}).to_string();
    let req = request(
        "POST",
        "/api/worker/workflow-tasks/poll",
        &[common::WORKER],
        &body,
    );
    poll.write_all(req.as_bytes()).await.expect("write");
    let deadline = Instant::now() + DEADLINE;
    while s
        .engine
        .queue_stats("default", "q", TaskKind::Workflow)
        .pollers
        == 0
    {
        assert!(Instant::now() < deadline, "the poll never parked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Parked for five times every connection timeout: the poll is not cut off.
    tokio::time::sleep(short * 5).await;
    assert_eq!(
        s.engine
            .queue_stats("default", "q", TaskKind::Workflow)
            .pollers,
        1,
        "still parked"
    );
    let started = common::send(
        s.addr,
        "POST",
        "/api/workflows",
        &[common::CONTROL],
        Some(&json!({"workflow_id": "wf", "workflow_type": "t", "task_queue": "q"})),
    )
    .await;
    assert_eq!(started.status, 201, "{}", started.text);
    let reply = tokio::time::timeout(DEADLINE, read_reply(&mut poll))
        .await
        .expect("the poll answers once a task exists")
        .expect("the parked poll's connection is still open");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["poll_status"], "leased", "{reply:?}");
    // Answered, the connection is idle again, and the idle timeout applies.
    closed_by_server(&mut poll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_connection_limit_new_connections_get_503_while_open_ones_keep_working() {
    let s = common::start_with_limits(
        "",
        None,
        ConnectionLimits {
            max_connections: Some(3),
            ..limits(DEADLINE, DEADLINE, DEADLINE)
        },
    )
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(s.addr).await.expect("connect");
        let reply = health(&mut stream).await.expect("a reply");
        assert_eq!(reply.status, 200, "{reply:?}");
        open.push(stream);
    }
    for _ in 0..2 {
        let mut extra = TcpStream::connect(s.addr).await.expect("connect");
        let reply = health(&mut extra)
            .await
            .expect("a reply, not a silent close");
        assert_eq!(reply.status, 503, "{reply:?}");
        assert_eq!(reply.json()["reason"], "connection_limit_reached");
        assert_eq!(reply.json()["max_connections"], 3);
        assert_eq!(reply.header("connection").as_deref(), Some("close"));
        assert_eq!(reply.header("retry-after").as_deref(), Some("1"));
        closed_by_server(&mut extra).await;
    }
    for stream in &mut open {
        let reply = health(stream).await.expect("a reply");
        assert_eq!(
            reply.status, 200,
            "open connections keep working: {reply:?}"
        );
    }
    drop(open.pop());
    // The server frees the place when it sees the close: retry until it has.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut fresh = TcpStream::connect(s.addr).await.expect("connect");
        let reply = health(&mut fresh).await.expect("a reply");
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 503, "{reply:?}");
        assert!(Instant::now() < deadline, "no place freed after a close");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// --- At the descriptor limit: a child process with a lowered RLIMIT_NOFILE. ---

/// Set in the child process: which server to run.
const CHILD: &str = "KEEL_TEST_DESCRIPTOR_CHILD";

/// Runs this test binary again as the server of `test`, with `mode` in [`CHILD`]. The
/// child lowers its own descriptor limit, so the parent's stays untouched.
struct ChildServer {
    child: Child,
    port: u16,
    stderr: mpsc::Receiver<String>,
}

impl ChildServer {
    fn start(test: &str, mode: &str) -> ChildServer {
        let mut child = Command::new(std::env::current_exe().expect("test binary path"))
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, mode)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the child starts");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let (port_tx, port_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                // libtest may have started the line ("test name ... ").
                if let Some((_, port)) = line.split_once("KEEL_PORT=") {
                    let _ = port_tx.send(port.trim().parse::<u16>().expect("a port"));
                }
            }
        });
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        let port = port_rx
            .recv_timeout(DEADLINE)
            .expect("the child server reports its port");
        ChildServer {
            child,
            port,
            stderr: err_rx,
        }
    }

    /// Log lines written so far.
    fn log_lines(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }

    /// The child's CPU time (user + system) so far.
    fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("/proc/PID/stat");
        // Fields after the parenthesised command: utime and stime are fields 14 and 15
        // of the whole line, in clock ticks (USER_HZ, 100 on Linux).
        let rest = stat.rsplit_once(')').expect("comm").1;
        let fields: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse().expect("a tick count"))
            .collect();
        Duration::from_millis((fields[0] + fields[1]) * 10)
    }

    fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child's side: lowers the soft descriptor limit to `soft`, serves under `limits`
/// and prints its port, until the parent closes its standard input.
fn run_child_server(soft: u64, limits: ConnectionLimits) {
    let current = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(soft),
            maximum: current.maximum,
        },
    )
    .expect("the soft limit can be lowered");
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let s = common::start_with_limits("", None, limits).await;
        println!("KEEL_PORT={}", s.addr.port());
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 16];
        while stdin.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    });
}

/// Opens `n` connections to `addr`, keeping them open.
async fn hold_connections(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    held
}

/// Waits (up to `DEADLINE`) until a fresh connection is answered 200.
async fn serves_again(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let answered = tokio::time::timeout(Duration::from_secs(2), async {
            let mut fresh = TcpStream::connect(addr).await.ok()?;
            health(&mut fresh).await
        })
        .await;
        if let Ok(Some(reply)) = answered {
            if reply.status == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the server did not recover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const LOW_DESCRIPTOR_LIMIT: u64 = 128;

#[test]
fn at_the_descriptor_limit_accept_backs_off_instead_of_spinning() {
    if std::env::var_os(CHILD).is_some() {
        // No connection ceiling below the descriptor limit: accepts really fail.
        return run_child_server(
            LOW_DESCRIPTOR_LIMIT,
            ConnectionLimits {
                max_connections: Some(100_000),
                ..ConnectionLimits::default()
            },
        );
    }
    let server = ChildServer::start(
        "at_the_descriptor_limit_accept_backs_off_instead_of_spinning",
        "backoff",
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        // More connections than the child has descriptors: the rest wait in its
        // listen backlog (128 deep), and its accepts fail with "too many open files".
        let held = hold_connections(server.addr(), LOW_DESCRIPTOR_LIMIT as usize + 64).await;
        let deadline = Instant::now() + DEADLINE;
        let mut failures_logged = 0;
        while failures_logged == 0 {
            assert!(Instant::now() < deadline, "the child never ran out");
            failures_logged += server
                .log_lines()
                .iter()
                .filter(|l| l.contains("accept failed"))
                .count();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The measuring window: before the backoff, the accept loop spun a core here
        // and wrote a log line per spin.
        let window = Duration::from_secs(2);
        let cpu_before = server.cpu_time();
        tokio::time::sleep(window).await;
        let cpu = server.cpu_time() - cpu_before;
        let lines = server
            .log_lines()
            .into_iter()
            .filter(|l| l.contains("accept failed"))
            .count();
        assert!(
            cpu < window / 5,
            "the server used {cpu:?} of CPU in {window:?} at the descriptor limit"
        );
        assert!(lines <= 1, "{lines} accept-failure lines in {window:?}");
        drop(held);
        serves_again(server.addr()).await;
    });
}

#[test]
fn default_connection_limit_refuses_with_503_before_the_descriptor_limit() {
    if std::env::var_os(CHILD).is_some() {
        return run_child_server(LOW_DESCRIPTOR_LIMIT, ConnectionLimits::default());
    }
    let server = ChildServer::start(
        "default_connection_limit_refuses_with_503_before_the_descriptor_limit",
        "default",
    );
    let max = keel_http::limits::default_max_connections(LOW_DESCRIPTOR_LIMIT);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut held = Vec::new();
        for _ in 0..max {
            let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
            let reply = health(&mut stream).await.expect("a reply");
            assert_eq!(reply.status, 200, "{reply:?}");
            held.push(stream);
        }
        for _ in 0..2 * LOW_DESCRIPTOR_LIMIT {
            let mut extra = TcpStream::connect(server.addr()).await.expect("connect");
            let reply = health(&mut extra).await.expect("a refusal, not a hang");
            assert_eq!(reply.status, 503, "{reply:?}");
            assert_eq!(reply.json()["reason"], "connection_limit_reached");
        }
        let logs = server.log_lines();
        assert!(
            !logs.iter().any(|l| l.contains("accept failed")),
            "the ceiling keeps accepts from failing: {logs:#?}"
        );
        assert!(
            logs.iter()
                .filter(|l| l.contains("connection limit reached"))
                .count()
                <= 1,
            "refusals are logged once per interval: {logs:#?}"
        );
        drop(held.pop());
        serves_again(server.addr()).await;
    });
}
