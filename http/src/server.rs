//! The HTTP server: accepts connections, runs every request through one pipeline and
//! renders replies and errors. The pipeline's order is the upstream middleware order
//! (and deliberate): route → authenticate (401) → role (403) → version gate (400) →
//! topology gate (503) → bootstrap gate (503) → namespace (404) → body → handler. So a
//! wrong-role token or a refused node never learns whether a namespace exists, and a
//! bad version header is a 400 even for a missing namespace.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::Principal;
pub use crate::call::{AppState, Call, Reply, WorkerReply};
use crate::connections::{self, watchdog, Activity, Cut, Registry, Slot, Watched};
use crate::discovery::{
    CONTROL_PLANE_VERSION, MAX_PAYLOAD_BYTES, WORKER_PROTOCOL_MINOR, WORKER_PROTOCOL_VERSION,
};
use crate::error::ApiError;
use crate::limits::{Backoff, ConnectionLimits, LogThrottle};
use crate::router::{self, Match, Op, Plane};
use crate::tls::Tls;

// Header names as constants: a `&str` name is parsed and checked on every insert and get.
const CONTROL_HEADER: HeaderName =
    HeaderName::from_static("x-durable-workflow-control-plane-version");
const WORKER_HEADER: HeaderName = HeaderName::from_static("x-durable-workflow-protocol-version");
const NAMESPACE_HEADER: HeaderName = HeaderName::from_static("x-namespace");

/// How often the readiness checks run in the background.
const READINESS_INTERVAL: Duration = Duration::from_secs(5);

type Body = Full<Bytes>;

/// How long `accept` waits after its first failure in a row; doubles up to
/// [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// The longest pause between failed `accept`s. A connection closing (a descriptor freed)
/// ends the pause early.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one log line per this interval for failed `accept`s, and one for refused
/// connections, each with the count it stands for.
const CONDITION_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Serves on `listener` with the default [`ConnectionLimits`] until `shutdown` turns
/// true, then drains connections for up to `drain` before returning.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    serve_with_limits(
        listener,
        state,
        shutdown,
        drain,
        ConnectionLimits::default(),
    )
    .await
}

/// Serves on `listener` under `limits` until `shutdown` turns true, then drains
/// connections for up to `drain` before returning.
///
/// Failed `accept`s back off (5 ms doubling to 1 s, cut short when a connection closes)
/// instead of retrying at once: a listener whose backlog holds a connection the process
/// has no descriptor for stays ready, and an immediate retry spins a core. They are
/// logged at most once per 10 s, with a count.
pub async fn serve_with_limits(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
    limits: ConnectionLimits,
) {
    serve_with_tls(listener, state, shutdown, drain, limits, None).await
}

/// [`serve_with_limits`], with TLS on every connection when `tls` is given (see
/// [`crate::tls`]): the handshake runs on the connection's own task, under its slot and
/// its header timeout.
pub(crate) async fn serve_with_tls(
    listener: TcpListener,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
    limits: ConnectionLimits,
    tls: Option<Arc<Tls>>,
) {
    if let Ok(addr) = listener.local_addr() {
        // First `serve` wins: one state serves one listener.
        state.set_listen_addr(addr);
    }
    crate::metrics::handle();
    state.readiness.refresh(&state.engine).await;
    let refresher = {
        let state = state.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(READINESS_INTERVAL) => {
                        state.readiness.refresh(&state.engine).await;
                    }
                    _ = stop.changed() => break,
                }
            }
        })
    };
    let registry = Registry::new(limits.effective_max_connections());
    log_limits(&limits, registry.max());
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The connection watchdog enforces the header timeout (with a 408); hyper's own
    // timer would close idle keep-alive connections on the same deadline, without one.
    builder.header_read_timeout(None);
    let mut backoff = Backoff::new(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX);
    let mut accept_log = LogThrottle::new(CONDITION_LOG_INTERVAL);
    let mut refusal_log = LogThrottle::new(CONDITION_LOG_INTERVAL);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) if crate::limits::is_connection_error(&e) => {
                tracing::debug!(error = %e, "a connection was reset before it was accepted");
                continue;
            }
            Err(e) => {
                metrics::counter!("keel_http_accept_errors_total").increment(1);
                if let Some(count) = accept_log.event(std::time::Instant::now()) {
                    tracing::warn!(
                        error = %e,
                        count,
                        open_connections = registry.open(),
                        "accept failed; backing off"
                    );
                }
                let pause = backoff.failed();
                let closed = registry.next_close();
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = closed => {}
                    _ = shutdown.changed() => break,
                }
                continue;
            }
        };
        backoff.succeeded();
        if accept_log.has_unreported() {
            if let Some(count) = accept_log.settle(std::time::Instant::now()) {
                tracing::warn!(count, "accepting connections again after failed accepts");
            }
        }
        let Some(slot) = registry.admit() else {
            if let Some(count) = refusal_log.event(std::time::Instant::now()) {
                tracing::warn!(
                    max_connections = registry.max(),
                    count,
                    "connection limit reached; refusing new connections with 503"
                );
            }
            registry.refuse(stream);
            continue;
        };
        if refusal_log.has_unreported() {
            if let Some(count) = refusal_log.settle(std::time::Instant::now()) {
                tracing::warn!(count, "connections refused at the connection limit");
            }
        }
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            builder.clone(),
            stream,
            peer,
            state.clone(),
            limits,
            slot,
            shutdown.clone(),
            tls.clone(),
        ));
    }
    refresher.abort();
    tracing::info!(
        open_connections = registry.open(),
        "shutting down: draining open connections"
    );
    if tokio::time::timeout(drain, registry.drained())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within the drain period");
    }
}

fn log_limits(limits: &ConnectionLimits, max_connections: usize) {
    let descriptors = crate::limits::descriptor_limit().ok().and_then(|l| l.soft);
    tracing::info!(
        max_connections,
        descriptor_limit = descriptors,
        header_timeout_ms = limits.header_timeout.as_millis() as u64,
        body_timeout_ms = limits.body_timeout.as_millis() as u64,
        idle_timeout_ms = limits.idle_timeout.as_millis() as u64,
        "connection limits"
    );
    if descriptors.is_some_and(|soft| max_connections as u64 >= soft) {
        tracing::warn!(
            max_connections,
            descriptor_limit = descriptors,
            "the connection limit is not below the descriptor limit: at the descriptor \
             limit accepts fail (and back off) instead of refusing with 503"
        );
    }
}

/// One connection from accept to close: the TLS handshake where the server has TLS,
/// then [`serve_http`]. `slot` is its place under the connection ceiling, freed when this
/// returns.
#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    builder: hyper::server::conn::http1::Builder,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    state: Arc<AppState>,
    limits: ConnectionLimits,
    slot: Slot,
    mut shutdown: watch::Receiver<bool>,
    tls: Option<Arc<Tls>>,
) {
    let activity = Activity::new();
    let Some(tls) = tls else {
        serve_http(builder, stream, peer, state, limits, activity, shutdown).await;
        drop(slot);
        return;
    };
    // The handshake runs while the connection is fresh, so the watchdog holds it to the
    // header timeout counted from the accept, the same deadline as the request head
    // that follows it.
    let accepted = tokio::select! {
        accepted = crate::tls::accept(&tls, stream) => accepted,
        _ = watchdog(&activity, &limits) => {
            crate::tls::handshake_failed("timeout");
            metrics::counter!("keel_http_connection_timeouts_total", "kind" => "tls_handshake")
                .increment(1);
            tracing::debug!(%peer, "TLS handshake timed out; closed");
            return;
        }
        _ = shutdown.changed() => return,
    };
    match accepted {
        crate::tls::Accepted::Tls(stream) => {
            serve_http(builder, *stream, peer, state, limits, activity, shutdown).await
        }
        crate::tls::Accepted::PlainHttp(stream) => {
            tracing::debug!(%peer, "plain HTTP on the TLS port; answered 400 and closed");
            let reply = crate::tls::plain_http_reply();
            connections::answer_and_close(stream, reply.as_bytes()).await;
        }
        crate::tls::Accepted::Failed => {}
    }
    drop(slot);
}

/// hyper's HTTP/1 state machine on one connection (plain or TLS), the watchdog of its
/// timeouts, and graceful shutdown.
async fn serve_http<S>(
    builder: hyper::server::conn::http1::Builder,
    stream: S,
    peer: SocketAddr,
    state: Arc<AppState>,
    limits: ConnectionLimits,
    activity: Arc<Activity>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Watched::new(stream, activity.clone()));
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req| {
            let in_request = activity.request_started();
            let state = state.clone();
            async move {
                let response = handle(state, req, peer, &limits).await;
                drop(in_request);
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    let mut conn = builder.serve_connection(io, service);
    let mut draining = false;
    let cut = loop {
        tokio::select! {
            ended = &mut conn => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.changed(), if !draining => {
                draining = true;
                std::pin::Pin::new(&mut conn).graceful_shutdown();
            }
            cut = watchdog(&activity, &limits) => break cut,
        }
    };
    match cut {
        Cut::Quietly(kind) => {
            metrics::counter!("keel_http_connection_timeouts_total", "kind" => kind).increment(1);
            tracing::debug!(%peer, kind, "connection timed out; closed");
            drop(conn);
        }
        Cut::HeaderTimeout => {
            metrics::counter!("keel_http_connection_timeouts_total", "kind" => "header")
                .increment(1);
            tracing::debug!(%peer, "request head timed out; answered 408 and closed");
            let parts = conn.into_parts();
            let stream = parts.io.into_inner().into_inner();
            let reply = connections::header_timeout_reply(limits.header_timeout);
            connections::answer_and_close(stream, reply.as_bytes()).await;
        }
    }
}

async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
    _peer: SocketAddr,
    limits: &ConnectionLimits,
) -> Response<Body> {
    let started = std::time::Instant::now();
    // The web console's assets: no token, no version header, no body (crate::ui).
    if state.ui && crate::ui::is_ui_path(req.uri().path()) {
        let response = crate::ui::respond(req.method(), req.uri().path());
        crate::metrics::record_request("ui", response.status().as_u16(), started.elapsed());
        return response;
    }
    let path_plane = path_plane(req.uri().path());
    let (op, plane, result) = match dispatch(&state, req, limits).await {
        Ok((op, plane, reply)) => (Some(op), plane, Ok(reply)),
        Err((op, plane, e)) => (op, plane, Err(e)),
    };
    // A 401, and an answer for no route, take the envelope of the path's prefix, not of
    // its route: an unauthenticated caller then gets the same bytes for a route and for
    // a path that is none (nothing tells them apart), and a 404 or 405 under the worker
    // prefix is still a worker-protocol error.
    let plane = match &result {
        Err(e) if op.is_none() || e.status == StatusCode::UNAUTHORIZED => Some(path_plane),
        _ => plane,
    };
    let mut retry_after = None;
    let mut content_type = "application/json";
    let mut extra_headers = Vec::new();
    let mut allow = None;
    let (status, body) = match result {
        Ok(reply) => {
            content_type = reply.content_type;
            extra_headers = reply.headers;
            (reply.status, reply.body)
        }
        Err(e) => {
            retry_after = e.extra.get("retry_after_seconds").and_then(Value::as_u64);
            if matches!(e.status.as_u16(), 401 | 403 | 429) {
                let route = op.map_or("unmatched", Op::name);
                crate::metrics::count_refusal(route, e.status.as_u16(), e.reason);
            }
            if e.status == StatusCode::METHOD_NOT_ALLOWED {
                allow = e
                    .extra
                    .get("allowed_methods")
                    .and_then(Value::as_array)
                    .map(|m| {
                        m.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    });
            }
            if e.status.is_server_error() {
                tracing::warn!(
                    status = e.status.as_u16(),
                    reason = e.reason,
                    "request failed"
                );
            } else {
                tracing::debug!(
                    status = e.status.as_u16(),
                    reason = e.reason,
                    "request refused"
                );
            }
            let mut body = e.body();
            if plane == Some(Plane::Worker) {
                if let Some(obj) = body.as_object_mut() {
                    obj.insert(
                        "protocol_version".into(),
                        Value::from(WORKER_PROTOCOL_VERSION),
                    );
                    obj.insert(
                        "server_capabilities".into(),
                        serde_json::from_str(state.capabilities.get())
                            .expect("invariant: the capabilities block is json"),
                    );
                }
            }
            (
                e.status,
                Bytes::from(serde_json::to_vec(&body).expect("invariant: json value serializes")),
            )
        }
    };
    let op_name = op.map_or("unmatched", Op::name);
    crate::metrics::record_request(op_name, status.as_u16(), started.elapsed());
    tracing::trace!(op = op_name, status = status.as_u16(), "request");
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (name, value) in extra_headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    if let Some(seconds) = retry_after {
        headers.insert(hyper::header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    // RFC 9110 §15.5.6: a 405 lists the methods the target supports.
    if let Some(value) = allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
        headers.insert(hyper::header::ALLOW, value);
    }
    if status == StatusCode::REQUEST_TIMEOUT {
        // The rest of the body may still be on its way: the connection cannot carry
        // another request.
        headers.insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    match plane {
        Some(Plane::Control) => {
            headers.insert(
                CONTROL_HEADER,
                HeaderValue::from_static(CONTROL_PLANE_VERSION),
            );
        }
        Some(Plane::Worker) => {
            headers.insert(
                WORKER_HEADER,
                HeaderValue::from_static(WORKER_PROTOCOL_VERSION),
            );
        }
        _ => {}
    }
    response
}

/// The plane a path's prefix suggests, whatever its route: the worker plane under
/// `/api/worker/`, the control plane elsewhere.
fn path_plane(path: &str) -> Plane {
    if path.starts_with("/api/worker/") {
        Plane::Worker
    } else {
        Plane::Control
    }
}

type Dispatched = Result<(Op, Option<Plane>, Reply), (Option<Op>, Option<Plane>, ApiError)>;

async fn dispatch(
    state: &AppState,
    req: Request<Incoming>,
    limits: &ConnectionLimits,
) -> Dispatched {
    // The body is read before any check can refuse the request: a response sent with
    // the body unread would force hyper to drop the keep-alive connection under the
    // client. Errors in the body itself are reported after auth, version and gates,
    // except a body that did not arrive in time: that is the connection failing, it says
    // nothing about the route, and the connection closes after the reply.
    let (parts, incoming) = req.into_parts();
    let matched = router::route(&parts.method, parts.uri.path());
    // Payload uploads carry raw bytes, up to the transport's own limit.
    let raw_route = matches!(matched, Match::Found(Op::UploadExternalPayload, ..));
    let limit = if raw_route {
        keel_engine::payloads::MAX_PAYLOAD_BYTES
    } else {
        MAX_PAYLOAD_BYTES
    };
    let raw = match read_bytes(&parts.headers, incoming, limits.body_timeout, limit).await {
        Err(e) if e.status == StatusCode::REQUEST_TIMEOUT => {
            metrics::counter!("keel_http_connection_timeouts_total", "kind" => "body").increment(1);
            return Err((None, None, e));
        }
        raw => raw,
    };
    let (raw, body) = match raw {
        Ok(bytes) if raw_route => (bytes, Ok(Value::Null)),
        Ok(bytes) => {
            let body = parse_json(&parts.headers, &bytes);
            (bytes, body)
        }
        Err(e) => (Bytes::new(), Err(e)),
    };
    // Unauthenticated callers learn nothing about the route table: where tokens are
    // required, a path that is not public (unknown, or known under other methods) is a
    // 401 before it is a 404 or a 405. Only the public routes' paths answer a caller
    // without a token (their existence is no secret).
    let unmatched = |e: ApiError| {
        if e.status == StatusCode::UNAUTHORIZED {
            state.refusals.observe(&state.engine, "unmatched", &e, None);
        }
        (None, None, e)
    };
    let (op, plane, params) = match matched {
        Match::Found(op, plane, params) => (op, plane, params),
        Match::MethodNotAllowed { allow, public } => {
            if !public {
                state.auth.authenticate(&parts.headers).map_err(unmatched)?;
            }
            let allow: Vec<&str> = allow.iter().map(hyper::Method::as_str).collect();
            return Err(unmatched(
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{} is not allowed here", &parts.method),
                )
                .with("allowed_methods", allow),
            ));
        }
        Match::NotFound => {
            state.auth.authenticate(&parts.headers).map_err(unmatched)?;
            return Err(unmatched(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route for {}", parts.uri.path()),
            )));
        }
    };
    let fail = |e: ApiError| (Some(op), Some(plane), e);
    let policy = router::policy(op);
    let principal = if policy.access == router::Access::Public {
        Principal::open()
    } else {
        let route = op.name();
        let p = state.auth.authenticate(&parts.headers).map_err(|e| {
            state.refusals.observe(&state.engine, route, &e, None);
            fail(e)
        })?;
        crate::auth::authorize(&p, policy.access).map_err(|e| {
            state.refusals.observe(&state.engine, route, &e, Some(&p));
            fail(e)
        })?;
        p
    };
    check_version(plane, &parts.headers).map_err(fail)?;
    crate::gates::topology(&state.node, &policy).map_err(fail)?;
    state.readiness.gate(&policy).map_err(fail)?;
    let query = parse_query(parts.uri.query());
    let namespace = parts
        .headers
        .get(NAMESPACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .or_else(|| query.get("namespace").cloned())
        .unwrap_or_else(|| state.engine.config().default_namespace.clone())
        .to_ascii_lowercase();
    let resolved = (matches!(plane, Plane::Control | Plane::Worker) || router::namespaced(op))
        && !crate::handlers::namespaces::is_namespace_admin(op);
    if resolved {
        crate::handlers::namespaces::resolve(state, &principal, &namespace)
            .await
            .map_err(fail)?;
    }
    // Rate limits and the long-poll ceiling (`crate::quota`); the permit holds a
    // long-poll slot until the reply.
    let _permit = if policy.access == router::Access::Public {
        None
    } else {
        Some(
            state
                .quotas
                .admit(
                    &principal,
                    state.auth.is_open(),
                    resolved.then_some(namespace.as_str()),
                    op,
                    state.engine.now_ms(),
                )
                .map_err(fail)?,
        )
    };
    let body = body.map_err(fail)?;
    // Runtime external payload references are checked before any route acts on them: a
    // reference this namespace does not hold, or one that misstates its payload, is
    // refused with its `external_payload_*` reason instead of entering history.
    if matches!(plane, Plane::Control | Plane::Worker) && memchr_external_payload(&raw) {
        state
            .engine
            .check_payload_references(&namespace, &body)
            .await
            .map_err(|e| fail(e.into()))?;
        // A schedule keeps its action's references for every future fire: retention of
        // the runs it started must not delete them. (Pinned for good: the blob outlives
        // the schedule; see README "External payload storage".)
        if matches!(op, Op::CreateSchedule | Op::UpdateSchedule) {
            state
                .engine
                .pin_payload_references(&namespace, &body, "schedule")
                .await
                .map_err(|e| fail(e.into()))?;
        }
    }
    let call = Call {
        params,
        query,
        namespace,
        body,
        raw_body: raw,
        headers: parts.headers,
        principal,
    };
    // The audit trail's one recording point (`crate::audit`).
    let audit = crate::audit::Pending::start(&state.engine, op, &call);
    let result = crate::handlers::handle(state, op, call).await;
    if let Some(audit) = audit {
        audit.finish(&state.engine, &result).await;
    }
    let reply = result.map_err(fail)?;
    Ok((op, Some(plane), reply))
}

fn check_version(plane: Plane, headers: &hyper::HeaderMap) -> Result<(), ApiError> {
    let header = |name: HeaderName| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("").trim().to_string())
    };
    match plane {
        Plane::Public => Ok(()),
        Plane::Discovery => match header(CONTROL_HEADER) {
            // Discovery needs no version, but an explicitly wrong one is skew evidence.
            Some(v) if v != CONTROL_PLANE_VERSION => Err(unsupported_control(&v)),
            _ => Ok(()),
        },
        Plane::Control => match header(CONTROL_HEADER) {
            None => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing_control_plane_version",
                "X-Durable-Workflow-Control-Plane-Version is required on control-plane routes",
            )
            .with("supported_version", CONTROL_PLANE_VERSION)
            .with("requested_version", Value::Null)
            .with("remediation", "Send X-Durable-Workflow-Control-Plane-Version: 2.")),
            Some(v) if v == CONTROL_PLANE_VERSION => Ok(()),
            Some(v) => Err(unsupported_control(&v)),
        },
        Plane::Worker => match header(WORKER_HEADER) {
            None => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing_protocol_version",
                "X-Durable-Workflow-Protocol-Version is required on worker routes",
            )
            .with("supported_version", WORKER_PROTOCOL_VERSION)
            .with("requested_version", Value::Null)
            .with("remediation", "Send X-Durable-Workflow-Protocol-Version: 1.20.")),
            Some(v) if worker_version_supported(&v) => Ok(()),
            Some(v) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_protocol_version",
                format!("worker protocol {v} is not supported; this server speaks {WORKER_PROTOCOL_VERSION}"),
            )
            .with("supported_version", WORKER_PROTOCOL_VERSION)
            .with("requested_version", v)
            .with("remediation", "Use a worker protocol 1.x with minor version at most 20.")),
        },
    }
}

fn unsupported_control(v: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "unsupported_control_plane_version",
        format!("control-plane version {v} is not supported; this server speaks {CONTROL_PLANE_VERSION}"),
    )
    .with("supported_version", CONTROL_PLANE_VERSION)
    .with("requested_version", v)
    .with("remediation", "Send X-Durable-Workflow-Control-Plane-Version: 2.")
}

/// Same major version and a minor version no newer than ours.
fn worker_version_supported(v: &str) -> bool {
    let mut parts = v.splitn(2, '.');
    let major = parts.next().and_then(|m| m.parse::<u32>().ok());
    let minor = match parts.next() {
        Some(m) => m.parse::<u32>().ok(),
        None => Some(0),
    };
    matches!((major, minor), (Some(1), Some(minor)) if minor <= WORKER_PROTOCOL_MINOR)
}

fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        out.insert(decode(k), decode(v));
    }
    out
}

fn body_timeout(limit: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_body_timeout",
        format!(
            "the request body did not arrive within {} ms",
            limit.as_millis()
        ),
    )
    .with("timeout_ms", limit.as_millis() as u64)
}

/// Whether a body mentions `"external_payload"` (cheap pre-check before a JSON walk).
fn memchr_external_payload(raw: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"\"external_payload\"";
    raw.windows(NEEDLE.len()).any(|w| w == NEEDLE)
}

async fn read_bytes(
    headers: &hyper::HeaderMap,
    body: Incoming,
    timeout: Duration,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {limit} bytes"),
        )
        .with("limit", limit)
    };
    let declared = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared.filter(|&n| n > limit) {
        // A client still writing a body we refuse would see its write fail (broken pipe)
        // or a reset before reading the 413; drain a moderately oversized body (bounded
        // by 4x the limit and the body timeout, never buffered) so it reads the refusal.
        if n <= limit.saturating_mul(4) {
            let mut body = body;
            let _ = tokio::time::timeout(timeout, async {
                while let Some(Ok(_)) = body.frame().await {}
            })
            .await;
        }
        return Err(too_large());
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| body_timeout(timeout))?;
    let bytes = collected
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large()
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_body",
                    "the request body could not be read",
                )
            }
        })?
        .to_bytes();
    Ok(bytes)
}

fn parse_json(headers: &hyper::HeaderMap, bytes: &[u8]) -> Result<Value, ApiError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    if let Some(ct) = content_type {
        if !ct.contains("json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "request bodies must be application/json",
            ));
        }
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the request body is not valid JSON: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::worker_version_supported;

    #[test]
    fn worker_versions_negotiate_on_major_and_minor() {
        assert!(worker_version_supported("1.20"));
        assert!(worker_version_supported("1.19"));
        assert!(worker_version_supported("1.0"));
        assert!(worker_version_supported("1"));
        assert!(!worker_version_supported("1.21"));
        assert!(!worker_version_supported("2.0"));
        assert!(!worker_version_supported("abc"));
    }
}
