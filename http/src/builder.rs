//! The library entry point: a whole Keel server (engine, HTTP front, background services)
//! around any [`KvStore`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use keel_engine::storage::memory::MemoryStore;
//!
//! # async fn run() -> Result<(), keel_http::ServeError> {
//! keel_http::Server::builder()
//!     .store(Arc::new(MemoryStore::new()))
//!     .listen("127.0.0.1:8080".parse().expect("address"))
//!     .serve()
//!     .await
//! # }
//! ```
//!
//! `keel serve` runs through this builder too (after choosing and opening its store from
//! the command line), so a server built around another store behaves exactly like
//! `keel serve` on one of the in-repo stores. The store's own
//! [`Capabilities`](keel_engine::storage::Capabilities) decide what the server says about
//! its storage (`/api/ready`, `cluster/info`, `/metrics`) and whether it coordinates with
//! other nodes (`multi_node`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel_engine::clock::{Clock, SystemClock};
use keel_engine::cluster::ClusterConfig;
use keel_engine::storage::KvStore;
use keel_engine::{Engine, EngineConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::StatsSource;
use crate::server::serve_with_tls;
use crate::tls::{Tls, TlsConfig};
use crate::{AppState, AuthConfig, ConnectionLimits, NodeRoles};

/// Why a server could not start (or stop cleanly).
#[derive(Debug)]
pub struct ServeError(String);

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServeError {}

impl From<String> for ServeError {
    fn from(message: String) -> Self {
        ServeError(message)
    }
}

/// Reads the token set again (see [`ServerBuilder::auth_reload`]).
pub type TokenLoader = Box<dyn Fn() -> Result<AuthConfig, String> + Send>;

/// A Keel server; see [`Server::builder`].
#[derive(Debug, Clone, Copy)]
pub struct Server;

impl Server {
    /// A builder with the defaults of `keel serve` (listen on 127.0.0.1:8080, open mode,
    /// every role, the default engine configuration, stop on SIGTERM or SIGINT). Only the
    /// store must be given.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            store: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            listener: None,
            engine: EngineConfig::default(),
            clock: Arc::new(SystemClock),
            auth: AuthConfig::open(),
            auth_reload: None,
            roles: NodeRoles::default(),
            node_id: None,
            limits: ConnectionLimits::default(),
            tls: None,
            stats: None,
            storage_description: None,
            shutdown: None,
            drain: Duration::from_secs(10),
            service_http_allow: Vec::new(),
            quotas: crate::quota::QuotaConfig::default(),
            audit_retention_days: crate::audit::DEFAULT_RETENTION_DAYS,
            ui: true,
        }
    }
}

/// Configures and runs a [`Server`].
pub struct ServerBuilder {
    store: Option<Arc<dyn KvStore>>,
    listen: SocketAddr,
    listener: Option<TcpListener>,
    engine: EngineConfig,
    clock: Arc<dyn Clock>,
    auth: AuthConfig,
    auth_reload: Option<(Option<PathBuf>, TokenLoader)>,
    roles: NodeRoles,
    node_id: Option<String>,
    limits: ConnectionLimits,
    tls: Option<TlsConfig>,
    stats: Option<StatsSource>,
    storage_description: Option<String>,
    shutdown: Option<watch::Receiver<bool>>,
    drain: Duration,
    service_http_allow: Vec<String>,
    quotas: crate::quota::QuotaConfig,
    audit_retention_days: u32,
    ui: bool,
}

impl ServerBuilder {
    /// The store every workflow, task and schedule lives in (required). Shut down when
    /// the server stops.
    pub fn store(mut self, store: Arc<dyn KvStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The address to bind (default 127.0.0.1:8080).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Serves on an already bound listener instead (e.g. port 0 in a test).
    pub fn listener(mut self, listener: TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// The engine's configuration (leases, limits, payload stores, ...). Its `scheduler`
    /// and `cluster` fields are set from the roles and the store's capabilities.
    pub fn engine_config(mut self, config: EngineConfig) -> Self {
        self.engine = config;
        self
    }

    /// The clock (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Bearer tokens. Without any (open mode) the server refuses a non-loopback address.
    pub fn auth(mut self, auth: AuthConfig) -> Self {
        self.auth = auth;
        self
    }

    /// Swaps the token set for what `load` returns on SIGHUP or when `file` changes
    /// (see [`crate::auth::watch_and_reload`]).
    pub fn auth_reload(mut self, file: Option<PathBuf>, load: TokenLoader) -> Self {
        self.auth_reload = Some((file, load));
        self
    }

    /// Request-rate and long-poll limits (default: [`crate::quota::QuotaConfig::default`]).
    pub fn quotas(mut self, config: crate::quota::QuotaConfig) -> Self {
        self.quotas = config;
        self
    }

    /// Days audit entries are kept (default 90); the retention pass removes older ones.
    pub fn audit_retention_days(mut self, days: u32) -> Self {
        self.audit_retention_days = days;
        self
    }

    /// Serves the web console at `/ui` (default on); `false` makes `/ui` no route.
    pub fn ui(mut self, on: bool) -> Self {
        self.ui = on;
        self
    }

    /// The topology roles this node hosts (default: all).
    pub fn roles(mut self, roles: NodeRoles) -> Self {
        self.roles = roles;
        self
    }

    /// This node's id in discovery documents and among the nodes of a multi-node store
    /// (default: `keel-` and a random suffix).
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    /// Connection limits and timeouts.
    pub fn connection_limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Serves HTTPS with the certificate and key `tls` names (and, with a client CA,
    /// requires client certificates), reloading them on SIGHUP and when the files
    /// change; see [`crate::tls`]. Without it the server speaks plain HTTP.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The store's commit counters, sampled at each `/metrics` scrape.
    pub fn storage_stats(mut self, stats: StatsSource) -> Self {
        self.stats = Some(stats);
        self
    }

    /// Where the data is, for the start-up log line (default: the backend's name).
    pub fn storage_description(mut self, description: impl Into<String>) -> Self {
        self.storage_description = Some(description.into());
        self
    }

    /// Stops the server when `stop` turns true, instead of on SIGTERM or SIGINT.
    pub fn shutdown_signal(mut self, stop: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(stop);
        self
    }

    /// How long open connections may take to finish once stopping (default 10 s).
    pub fn drain_timeout(mut self, drain: Duration) -> Self {
        self.drain = drain;
        self
    }

    /// Lets `invocable_http` service bindings call `host` (`HOST` for any port, or
    /// `HOST:PORT`; `[v6]:PORT` for IPv6), on top of the engine configuration's list.
    /// Repeatable; without any, no binding may call out. Hosts are compared as written
    /// in the binding's URL (no name resolution); only plain `http://` is spoken.
    pub fn service_http_allow(mut self, host: impl Into<String>) -> Self {
        self.service_http_allow.push(host.into());
        self
    }

    /// Opens the engine on the store, serves until the shutdown signal, then drains the
    /// connections, stops the engine and shuts the store down.
    pub async fn serve(self) -> Result<(), ServeError> {
        let store = self
            .store
            .ok_or_else(|| ServeError("no store: call ServerBuilder::store".into()))?;
        let caps = store.capabilities();
        // Before binding: a certificate that does not load stops the start with its reason.
        let tls = self.tls.map(Tls::load).transpose()?;
        let listener = match self.listener {
            Some(listener) => listener,
            None => TcpListener::bind(self.listen)
                .await
                .map_err(|e| format!("cannot listen on {}: {e}", self.listen))?,
        };
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        if !local.ip().is_loopback() {
            if self.auth.is_open() {
                return Err(format!(
                    "refusing to serve on {local} without authentication: configure tokens \
                     (roles: worker, operator, admin) or listen on a loopback address such as \
                     127.0.0.1"
                )
                .into());
            }
            if !caps.durable {
                return Err(format!(
                    "refusing to serve on {local}: the {} backend is not durable (acknowledged \
                     data may be lost when the process exits); serve it on a loopback address \
                     such as 127.0.0.1 only",
                    caps.backend
                )
                .into());
            }
            if tls.is_none() {
                tracing::warn!(
                    addr = %local,
                    "serving plain HTTP on a non-loopback address: bearer tokens and payloads \
                     cross the network unencrypted; configure TLS (--tls-cert, --tls-key)"
                );
            }
        }
        let node_id = self
            .node_id
            .unwrap_or_else(|| format!("keel-{}", keel_engine::ids::random_hex(6)));
        // On a store several nodes can share, this node coordinates with the others.
        let cluster = caps.multi_node.then(|| ClusterConfig {
            roles: self.roles.roles().iter().map(|r| r.to_string()).collect(),
            address: Some(local.to_string()),
            ..ClusterConfig::new(node_id.clone())
        });
        let mut config = EngineConfig {
            scheduler: self.roles.has("scheduler"),
            cluster,
            ..self.engine
        };
        for host in self.service_http_allow {
            keel_engine::services::outbound::parse_allow_entry(&host)
                .map_err(|e| format!("service_http_allow: {e}"))?;
            config.service_http.allow.push(host);
        }
        let metered: Arc<dyn KvStore> =
            Arc::new(keel_engine::metrics::MeteredStore::new(store.clone()));
        let engine = Engine::open(metered, self.clock, config)
            .await
            .map_err(|e| format!("cannot open the engine: {e}"))?;
        let place = self
            .storage_description
            .unwrap_or_else(|| caps.backend.to_string());
        tracing::info!(
            addr = %local,
            storage = %place,
            scheme = if tls.is_some() { "https" } else { "http" },
            "keel listening"
        );
        if let Some(tls) = &tls {
            tracing::info!(
                cert = %tls.files().cert.display(),
                client_certificates = if tls.files().client_ca.is_some() { "required" } else { "not requested" },
                "TLS enabled"
            );
        }
        let stop = match self.shutdown {
            Some(stop) => stop,
            None => {
                let (stop_tx, stop_rx) = watch::channel(false);
                tokio::spawn(async move {
                    wait_for_signal().await;
                    tracing::info!("shutdown signal received");
                    let _ = stop_tx.send(true);
                });
                stop_rx
            }
        };
        if let Some((file, load)) = self.auth_reload {
            let audit_engine = engine.clone();
            tokio::spawn(crate::auth::watch_and_reload(
                self.auth.clone(),
                file,
                load,
                stop.clone(),
                Box::new(move |trigger, outcome| {
                    let engine = audit_engine.clone();
                    tokio::spawn(async move {
                        crate::audit::token_reload(&engine, trigger, outcome).await
                    });
                }),
            ));
        }
        if let Some(tls) = &tls {
            tokio::spawn(crate::tls::watch_and_reload(tls.clone(), stop.clone()));
        }
        let mut state = AppState::new(engine.clone())
            .with_server_id(&node_id)
            .with_auth(self.auth)
            .with_roles(self.roles)
            .with_storage_backend(caps)
            .with_quotas(self.quotas)
            .with_audit_retention_days(self.audit_retention_days)
            .with_ui(self.ui);
        if let Some(stats) = self.stats {
            state = state.with_storage_stats(stats);
        }
        serve_with_tls(
            listener,
            Arc::new(state),
            stop,
            self.drain,
            self.limits,
            tls,
        )
        .await;
        engine.stop().await;
        store
            .shutdown()
            .await
            .map_err(|e| format!("storage shutdown failed: {e}"))?;
        tracing::info!("keel stopped");
        Ok(())
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
