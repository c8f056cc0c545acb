//! HTTPS on Keel's own accept loop, through the public builder
//! (`Server::builder().tls(TlsConfig)`): a round trip, plain HTTP on the TLS port, a
//! certificate rotated under an open connection, a bad replacement refused, client
//! certificates required by a client CA, a stalled handshake cut at the header timeout,
//! and the header timeout's 408 answered over TLS. Every certificate is generated here
//! (rcgen).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keel_engine::storage::memory::MemoryStore;
use keel_http::{ConnectionLimits, Server, TlsConfig};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Held by the tests that reload certificates: `keel_tls_reloads_total` is one counter
/// for the whole test process, so a refusal counted while one of them runs is its own.
static RELOADING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A certificate authority of the test's own.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA signs itself");
        Ca { cert, key }
    }

    /// A leaf for `names` (DNS names or IP addresses) and its key.
    fn issue(&self, names: &[&str]) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, "keel test leaf");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("CA signs the leaf");
        (cert, key)
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).expect("root");
        roots
    }
}

/// Writes a file whole (to a temporary name, then renamed, as an operator's rotation
/// does), so the watcher never reads half a file.
fn write(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

struct TlsServer {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    stop: tokio::sync::watch::Sender<bool>,
}

impl TlsServer {
    fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }
    fn key_path(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A server (open mode, loopback) on a certificate for localhost from `ca`, requiring
/// client certificates from `client_ca` when given.
async fn start(ca: &Ca, client_ca: Option<&Ca>, limits: ConnectionLimits) -> TlsServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    write(&cert_path, &cert.pem());
    write(&key_path, &key.serialize_pem());
    let mut config = TlsConfig::new(&cert_path, &key_path);
    if let Some(client_ca) = client_ca {
        let ca_path = dir.path().join("client-ca.pem");
        write(&ca_path, &client_ca.cert.pem());
        config = config.client_ca(ca_path);
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(
        Server::builder()
            .store(Arc::new(MemoryStore::new()))
            .listener(listener)
            .tls(config)
            .connection_limits(limits)
            .shutdown_signal(stop_rx)
            .drain_timeout(Duration::from_secs(1))
            .serve(),
    );
    TlsServer { addr, dir, stop }
}

fn client_config(
    roots: rustls::RootCertStore,
    identity: Option<(&rcgen::Certificate, &KeyPair)>,
) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).expect("client key"),
            )
            .expect("client identity"),
    };
    Arc::new(config)
}

/// A TLS connection to `addr` as `localhost`, or the handshake's error.
async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(
        Duration::from_secs(10),
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake did not finish in 10 s"))?
}

/// The certificate the server presented on `conn`.
fn served_cert(conn: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    conn.get_ref().1.peer_certificates().expect("peer certs")[0]
        .clone()
        .into_owned()
}

/// One keep-alive `GET path` on `conn`: the status and the body.
async fn get<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut S,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    conn.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let (head_len, content_length) = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("no response in 10 s"))??;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before a response",
            ));
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    while raw.len() < head_len + content_length {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, text[head_len..].to_string()))
}

/// Polls `check` every 100 ms until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_round_trip_serves_requests_on_one_kept_alive_connection() {
    let ca = Ca::new("round trip CA");
    let server = start(&ca, None, ConnectionLimits::default()).await;
    let mut conn = connect(server.addr, client_config(ca.roots(), None))
        .await
        .expect("handshake with a client trusting the CA");
    assert_eq!(
        conn.get_ref().1.alpn_protocol(),
        None,
        "no ALPN offered, none chosen"
    );
    let (status, body) = get(&mut conn, "/api/health").await.expect("health");
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&mut conn, "/api/cluster/info")
        .await
        .expect("cluster info on the same connection");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"server_id\""), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_certificate_fails_the_handshake() {
    let ca = Ca::new("served CA");
    let other = Ca::new("some other CA");
    let server = start(&ca, None, ConnectionLimits::default()).await;
    let refused = connect(server.addr, client_config(other.roots(), None)).await;
    assert!(refused.is_err(), "an untrusted certificate must not verify");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_is_answered_400_tls_required_and_closed() {
    let ca = Ca::new("plain CA");
    let server = start(&ca, None, ConnectionLimits::default()).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
        .await
        .expect("closed within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(text.contains("\"reason\":\"tls_required\""), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_to_new_connections_while_an_open_one_keeps_working() {
    let _reloading = RELOADING.lock().await;
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    let server = start(&old_ca, None, ConnectionLimits::default()).await;
    let mut open = connect(server.addr, client_config(old_ca.roots(), None))
        .await
        .expect("handshake on the first certificate");
    let first = served_cert(&open);
    assert_eq!(get(&mut open, "/api/health").await.expect("health").0, 200);

    // Rotate: a new key and a certificate from another CA (key first, then the
    // certificate, as a rotation script might; the half-rotated pair in between is
    // refused and the next check picks up the complete one).
    let (cert, key) = new_ca.issue(&["localhost"]);
    write(&server.key_path(), &key.serialize_pem());
    write(&server.cert_path(), &cert.pem());

    let addr = server.addr;
    let new_roots = client_config(new_ca.roots(), None);
    eventually(
        Duration::from_secs(20),
        "new connections to get the new certificate",
        || {
            let config = new_roots.clone();
            async move { connect(addr, config).await.is_ok() }
        },
    )
    .await;
    let mut fresh = connect(addr, new_roots.clone()).await.expect("handshake");
    assert_eq!(served_cert(&fresh), *cert.der());
    assert_ne!(served_cert(&fresh), first);
    assert_eq!(get(&mut fresh, "/api/health").await.expect("health").0, 200);

    // The connection opened before the rotation was not dropped and still serves.
    let (status, body) = get(&mut open, "/api/health")
        .await
        .expect("the old connection still answers");
    assert_eq!(status, 200, "{body}");
    assert!(
        connect(addr, client_config(old_ca.roots(), None))
            .await
            .is_err(),
        "new connections no longer get the old certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_replacement_is_refused_and_the_old_certificate_stays() {
    let _reloading = RELOADING.lock().await;
    let ca = Ca::new("stays CA");
    let server = start(&ca, None, ConnectionLimits::default()).await;
    let before = {
        let conn = connect(server.addr, client_config(ca.roots(), None))
            .await
            .expect("handshake");
        served_cert(&conn)
    };
    let refusals = || async {
        let mut conn = connect(server.addr, client_config(ca.roots(), None))
            .await
            .expect("the server still serves TLS");
        let (_, body) = get(&mut conn, "/metrics").await.expect("metrics");
        body.lines()
            .find(|l| l.starts_with("keel_tls_reloads_total{outcome=\"refused\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let baseline = refusals().await;

    // A certificate whose key is not the key file's: the pair does not match.
    let (mismatched, _its_key) = ca.issue(&["localhost"]);
    write(&server.cert_path(), &mismatched.pem());
    eventually(
        Duration::from_secs(20),
        "the mismatched pair to be refused",
        || async { refusals().await > baseline },
    )
    .await;
    let conn = connect(server.addr, client_config(ca.roots(), None))
        .await
        .expect("handshake after the refused reload");
    assert_eq!(
        served_cert(&conn),
        before,
        "the old certificate is still served"
    );

    // A file that is not PEM at all: refused too.
    let baseline = refusals().await;
    write(&server.cert_path(), "not a certificate\n");
    eventually(
        Duration::from_secs(20),
        "the garbage file to be refused",
        || async { refusals().await > baseline },
    )
    .await;
    let conn = connect(server.addr, client_config(ca.roots(), None))
        .await
        .expect("handshake after the second refused reload");
    assert_eq!(served_cert(&conn), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_a_client_needs_a_certificate_from_it() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let stranger_ca = Ca::new("stranger CA");
    let server = start(&server_ca, Some(&client_ca), ConnectionLimits::default()).await;

    // Without a certificate: TLS 1.3 lets the client finish its side before the server
    // refuses, so the refusal shows on the first request at the latest.
    let anonymous = async {
        let mut conn = connect(server.addr, client_config(server_ca.roots(), None)).await?;
        get(&mut conn, "/api/health").await
    };
    let outcome = anonymous.await;
    assert!(
        outcome.is_err(),
        "a client without a certificate got {outcome:?}"
    );

    // A certificate from a CA the server does not trust: refused as well.
    let (cert, key) = stranger_ca.issue(&["worker-1"]);
    let stranger = async {
        let config = client_config(server_ca.roots(), Some((&cert, &key)));
        let mut conn = connect(server.addr, config).await?;
        get(&mut conn, "/api/health").await
    };
    let outcome = stranger.await;
    assert!(
        outcome.is_err(),
        "a client with an untrusted certificate got {outcome:?}"
    );

    // A certificate from the client CA: served.
    let (cert, key) = client_ca.issue(&["worker-1"]);
    let config = client_config(server_ca.roots(), Some((&cert, &key)));
    let mut conn = connect(server.addr, config)
        .await
        .expect("handshake with a client certificate");
    let (status, body) = get(&mut conn, "/api/health").await.expect("health");
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_cut_at_the_header_timeout() {
    let ca = Ca::new("stall CA");
    let limits = ConnectionLimits {
        header_timeout: Duration::from_secs(1),
        ..ConnectionLimits::default()
    };
    let server = start(&ca, None, limits).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    // The first byte of a handshake record, and then nothing.
    tcp.write_all(&[0x16]).await.expect("write");
    let started = std::time::Instant::now();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut sink)).await;
    assert!(
        closed.is_ok(),
        "the server still held the stalled handshake after 10 s"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
    // The server still serves others.
    let mut conn = connect(server.addr, client_config(ca.roots(), None))
        .await
        .expect("handshake");
    assert_eq!(get(&mut conn, "/api/health").await.expect("health").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_request_head_after_the_handshake_gets_a_408_over_tls() {
    let ca = Ca::new("slow head CA");
    let limits = ConnectionLimits {
        header_timeout: Duration::from_secs(1),
        ..ConnectionLimits::default()
    };
    let server = start(&ca, None, limits).await;
    let mut conn = connect(server.addr, client_config(ca.roots(), None))
        .await
        .expect("handshake");
    conn.write_all(b"GET /api/health HTTP/1.1\r\nHost: local")
        .await
        .expect("write half a head");
    let mut raw = Vec::new();
    // The server closes with close_notify after its reply; a reset is an error here.
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut raw))
        .await
        .expect("closed within 10 s")
        .expect("a clean TLS close");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(
        text.contains("\"reason\":\"request_header_timeout\""),
        "{text}"
    );
}
