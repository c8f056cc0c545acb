//! What handlers work with: the shared state of the HTTP front, the parsed request
//! ([`Call`]) and the reply types. Handlers import this module, never the server.

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use hyper::StatusCode;
use keel_engine::Engine;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::auth::{AuthConfig, Principal};
use crate::discovery::{self, WORKER_PROTOCOL_VERSION};
use crate::gates::{NodeRoles, Readiness};
use crate::metrics::StatsSource;
use keel_engine::storage::Capabilities;

/// Shared state of the HTTP front.
pub struct AppState {
    /// The engine.
    pub engine: Engine,
    /// The static part of `cluster/info` (live blocks are added per request).
    pub cluster_info: Value,
    /// The topology block of health and ready.
    pub topology: Value,
    /// The worker capabilities merged into worker replies, serialized once: every worker
    /// reply carries the block (~2 KB), and walking it as a `Value` per reply cost more
    /// than the rest of a completion's JSON.
    pub capabilities: Box<RawValue>,
    /// Tokens (empty: open mode).
    pub auth: AuthConfig,
    /// The topology roles this node hosts.
    pub node: NodeRoles,
    /// The last readiness checks (the bootstrap gate reads them).
    pub readiness: Readiness,
    /// This process's id in discovery documents.
    pub server_id: String,
    /// Request-rate and long-poll limits.
    pub quotas: crate::quota::Quotas,
    /// The 401/403 sampler of the audit trail.
    pub refusals: crate::trail::Refusals,
    /// Audit entries older than this many days go at the next retention pass.
    pub audit_retention_days: u32,
    /// Whether `/ui` serves the web console (`crate::ui`); off, `/ui` is no route.
    pub ui: bool,
    storage_stats: Option<StatsSource>,
    storage_backend: Option<Capabilities>,
    /// The address the listener is bound to (set by `serve`); `doctor` probes its own
    /// ingress through it over loopback.
    listen_addr: std::sync::OnceLock<SocketAddr>,
}

impl AppState {
    /// Builds the state for `engine`: open mode, the default roles.
    pub fn new(engine: Engine) -> Self {
        let mut state = AppState {
            cluster_info: Value::Null,
            topology: Value::Null,
            capabilities: serde_json::value::to_raw_value(&discovery::server_capabilities())
                .expect("invariant: json value serializes"),
            auth: AuthConfig::open(),
            node: NodeRoles::default(),
            readiness: Readiness::default(),
            server_id: format!("keel-{}", keel_engine::ids::random_hex(6)),
            quotas: crate::quota::Quotas::default(),
            refusals: crate::trail::Refusals::default(),
            audit_retention_days: crate::trail::DEFAULT_RETENTION_DAYS,
            ui: true,
            storage_stats: None,
            storage_backend: None,
            listen_addr: std::sync::OnceLock::new(),
            engine,
        };
        state.render_discovery();
        state
    }

    fn render_discovery(&mut self) {
        let cfg = self.engine.config();
        self.topology = discovery::topology(
            &self.node,
            cfg.workflow_task_lease.as_secs(),
            cfg.activity_task_lease.as_secs(),
        );
        self.cluster_info = discovery::cluster_info(
            &self.server_id,
            &cfg.default_namespace,
            &self.topology,
            self.storage_backend.as_ref(),
        );
        discovery::advertise_service_http(&mut self.cluster_info, cfg.service_http.allow.len());
    }

    /// Uses `auth` for every request.
    pub fn with_auth(mut self, auth: AuthConfig) -> Self {
        self.auth = auth;
        self
    }

    /// Applies `config`'s request-rate and long-poll limits.
    pub fn with_quotas(mut self, config: crate::quota::QuotaConfig) -> Self {
        self.quotas = crate::quota::Quotas::new(config);
        self
    }

    /// Serves the web console at `/ui` (`true`, the default) or not.
    pub fn with_ui(mut self, on: bool) -> Self {
        self.ui = on;
        self
    }

    /// Keeps audit entries for `days` days (removed by the retention pass).
    pub fn with_audit_retention_days(mut self, days: u32) -> Self {
        self.audit_retention_days = days;
        self
    }

    /// Serves as a node hosting only `node`'s roles.
    pub fn with_roles(mut self, node: NodeRoles) -> Self {
        self.node = node;
        self.render_discovery();
        self
    }

    /// Samples the storage backend's commit counters at each `/metrics` scrape.
    pub fn with_storage_stats(mut self, source: StatsSource) -> Self {
        self.storage_stats = Some(source);
        self
    }

    /// Names this node `id` in discovery documents (its cluster node id when several nodes
    /// share the store).
    pub fn with_server_id(mut self, id: &str) -> Self {
        self.server_id = id.to_string();
        self.render_discovery();
        self
    }

    /// Names the storage backend, and what it declares about itself, in `/api/ready`,
    /// `cluster/info` and `/metrics` (the [`Server`](crate::Server) builder does this from
    /// the store's own [`KvStore::capabilities`](keel_engine::storage::KvStore::capabilities)).
    pub fn with_storage_backend(mut self, backend: Capabilities) -> Self {
        self.storage_backend = Some(backend);
        self.render_discovery();
        self
    }

    /// The storage backend, if the server named it.
    pub fn storage_backend(&self) -> Option<&Capabilities> {
        self.storage_backend.as_ref()
    }

    /// The storage counters source, if any.
    pub fn storage_stats(&self) -> Option<&StatsSource> {
        self.storage_stats.as_ref()
    }

    /// The address this server listens on, once `serve` has started.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen_addr.get().copied()
    }

    /// Records the listener's address; the first `serve` wins (one state, one listener).
    pub(crate) fn set_listen_addr(&self, addr: SocketAddr) {
        let _ = self.listen_addr.set(addr);
    }
}

/// A parsed request, as handlers see it.
pub struct Call {
    /// Decoded path parameters, in order.
    pub params: Vec<String>,
    /// Query parameters.
    pub query: HashMap<String, String>,
    /// Resolved namespace.
    pub namespace: String,
    /// JSON body (`Null` when empty, and for routes that take raw bytes).
    pub body: Value,
    /// The body as received (routes that take raw bytes read it here).
    pub raw_body: Bytes,
    /// The request headers.
    pub headers: hyper::HeaderMap,
    /// The authenticated caller.
    pub principal: Principal,
}

impl Call {
    /// The `i`-th path parameter.
    pub fn param(&self, i: usize) -> &str {
        self.params.get(i).map(String::as_str).unwrap_or("")
    }
}

/// A successful reply: status, body and its media type (JSON unless a route says
/// otherwise), and any headers the route adds.
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// The body bytes.
    pub body: Bytes,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Further response headers.
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    /// Serializes `value` as the reply body.
    pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
        Reply::bytes(
            status,
            Bytes::from(serde_json::to_vec(value).expect("invariant: reply types serialize")),
            "application/json",
        )
    }

    /// A reply of `body` as `content_type`.
    pub fn bytes(status: StatusCode, body: Bytes, content_type: &'static str) -> Reply {
        Reply {
            status,
            body,
            content_type,
            headers: Vec::new(),
        }
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

/// Wraps a worker-plane body with the protocol fields every worker reply carries.
#[derive(Serialize)]
pub struct WorkerReply<'a, T: Serialize> {
    #[serde(flatten)]
    body: T,
    protocol_version: &'static str,
    server_capabilities: &'a RawValue,
}

impl<'a, T: Serialize> WorkerReply<'a, T> {
    /// Wraps `body`.
    pub fn new(state: &'a AppState, body: T) -> Self {
        WorkerReply {
            body,
            protocol_version: WORKER_PROTOCOL_VERSION,
            server_capabilities: &state.capabilities,
        }
    }
}
