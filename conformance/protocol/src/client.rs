//! A small HTTP+JSON client for the Durable Workflow protocol: the control plane
//! (`X-Durable-Workflow-Control-Plane-Version: 2`) and the worker plane
//! (`X-Durable-Workflow-Protocol-Version: 1.20`), a bearer token per plane and the
//! `X-Namespace` header, as the SDKs send them (sdk-protocol §1).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{connect::HttpConnector, Client as HyperClient};
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::Value;

/// The control-plane version header and the version this client speaks.
pub const CONTROL_HEADER: (&str, &str) = ("x-durable-workflow-control-plane-version", "2");
/// The worker-protocol version header and the version this client speaks.
pub const WORKER_HEADER: (&str, &str) = ("x-durable-workflow-protocol-version", "1.20");

/// Which plane a request belongs to: it picks the version header and the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    Control,
    Worker,
}

/// One answer: the status and the body (JSON; `Null` when empty, a string when not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// The body's `reason`, or "" when it has none.
    pub fn reason(&self) -> &str {
        self.body["reason"].as_str().unwrap_or("")
    }
}

/// A connection pool to one server, with the credentials and namespace of a caller.
#[derive(Clone)]
pub struct Client {
    http: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    namespace: String,
    control_token: Option<String>,
    worker_token: Option<String>,
    timeout: Duration,
}

impl Client {
    /// A client for the server at `base` (its origin, e.g. `http://127.0.0.1:8080`; `/api`
    /// is appended to every path), in `namespace`.
    /// `https://` servers are trusted through the system's certificate store (see
    /// [`Client::trusting`] for a private CA).
    pub fn new(base: &str, namespace: &str) -> Client {
        Client {
            http: pool(system_roots()),
            base: base.trim_end_matches('/').to_string(),
            namespace: namespace.to_string(),
            control_token: None,
            worker_token: None,
            timeout: Duration::from_secs(15),
        }
    }

    /// The same client also trusting the CA certificates of a PEM document (a private CA
    /// of an `https://` server).
    pub fn trusting(mut self, ca_pem: &[u8]) -> Result<Client, String> {
        let mut roots = system_roots();
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| format!("the CA file is not PEM certificates: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("the CA certificate is unusable: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("the CA file holds no certificate".into());
        }
        self.http = pool(roots);
        Ok(self)
    }

    /// The same client with `control` and `worker` tokens (`None`: no `Authorization`).
    pub fn with_tokens(mut self, control: Option<String>, worker: Option<String>) -> Client {
        self.control_token = control;
        self.worker_token = worker;
        self
    }

    /// The same client in another namespace.
    pub fn in_namespace(&self, namespace: &str) -> Client {
        let mut c = self.clone();
        c.namespace = namespace.to_string();
        c
    }

    /// The same client with a per-request deadline of `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A request on `plane` with the plane's version header and token.
    pub async fn call(
        &self,
        plane: Plane,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, String> {
        let headers = self.plane_headers(plane);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.raw(method, path, &headers, body).await
    }

    /// The version header of `plane` and, when the client has one, its bearer token.
    fn plane_headers(&self, plane: Plane) -> Vec<(&'static str, String)> {
        let ((name, version), token) = match plane {
            Plane::Control => (CONTROL_HEADER, self.control_token.as_deref()),
            Plane::Worker => (WORKER_HEADER, self.worker_token.as_deref()),
        };
        let mut headers = vec![(name, version.to_string())];
        if let Some(t) = token {
            headers.push(("authorization", format!("Bearer {t}")));
        }
        headers
    }

    /// A control-plane request.
    pub async fn control(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, String> {
        self.call(Plane::Control, method, path, body).await
    }

    /// A worker-plane request.
    pub async fn worker(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, String> {
        self.call(Plane::Worker, method, path, body).await
    }

    /// A worker-plane request whose 200 answer is read into `T`: the fields `T` does not
    /// name are skipped, not built as values (a load generator reads a few fields of each
    /// answer, whose largest part is the capabilities block). Any other answer comes back
    /// as a [`Reply`].
    pub async fn worker_as<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Result<T, Reply>, String> {
        let headers = self.plane_headers(Plane::Worker);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, answer) = self.send(method, path, &headers, body_bytes(body)?).await?;
        if status == 200 {
            serde_json::from_slice(&answer)
                .map(Ok)
                .map_err(|e| format!("the 200 answer did not read: {e}"))
        } else {
            Ok(Err(Reply {
                status,
                body: parse_body(&answer),
            }))
        }
    }

    /// A request with exactly `headers` (plus content type and namespace): no version
    /// header or token unless given.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Reply, String> {
        self.raw_bytes(method, path, headers, body_bytes(body)?)
            .await
    }

    /// [`Client::raw`] with a body of raw bytes (for malformed JSON).
    pub async fn raw_bytes(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        let (status, answer) = self.send(method, path, headers, body).await?;
        Ok(Reply {
            status,
            body: parse_body(&answer),
        })
    }

    /// Sends a request; its status and body bytes, within the client's timeout.
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), String> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}/api{path}", self.base))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .header("x-namespace", self.namespace.as_str());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let answer = async {
            let resp = self.http.request(req).await.map_err(|e| error_chain(&e))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(self.timeout, answer)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }
}

/// A request body as bytes (none without one).
fn body_bytes(body: Option<&Value>) -> Result<Vec<u8>, String> {
    body.map_or(Ok(Vec::new()), |b| {
        serde_json::to_vec(b).map_err(|e| e.to_string())
    })
}

/// An answer's body as JSON: `null` when empty, the text as a string when not JSON.
fn parse_body(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
    }
}

/// The system's trusted certificates (unreadable entries are skipped).
fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    roots
}

/// A pooled client for `http://` and `https://` (rustls on ring) trusting `roots`.
fn pool(roots: rustls::RootCertStore) -> HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>> {
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("invariant: ring supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    HyperClient::builder(TokioExecutor::new()).build(connector)
}

/// An error with its sources, `: `-joined (hyper's "client error (Connect)" and
/// RocksDB's open errors say why only there).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}
