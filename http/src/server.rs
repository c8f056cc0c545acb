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
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::Principal;
pub use crate::call::{AppState, Call, Reply, WorkerReply};
use crate::discovery::{
    CONTROL_PLANE_VERSION, MAX_PAYLOAD_BYTES, WORKER_PROTOCOL_MINOR, WORKER_PROTOCOL_VERSION,
};
use crate::error::ApiError;
use crate::router::{self, Match, Op, Plane};

const CONTROL_HEADER: &str = "x-durable-workflow-control-plane-version";
const WORKER_HEADER: &str = "x-durable-workflow-protocol-version";

/// How often the readiness checks run in the background.
const READINESS_INTERVAL: Duration = Duration::from_secs(5);

type Body = Full<Bytes>;

/// Serves on `listener` until `shutdown` turns true, then drains connections for up to
/// `drain` before returning.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
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
    let builder = hyper::server::conn::http1::Builder::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(state, req, peer).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    refresher.abort();
    tracing::info!("shutting down: draining open connections");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within the drain period");
    }
}

async fn handle(state: Arc<AppState>, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
    let started = std::time::Instant::now();
    let (op, plane, result) = match dispatch(&state, req).await {
        Ok((op, plane, reply)) => (Some(op), plane, Ok(reply)),
        Err((op, plane, e)) => (op, plane, Err(e)),
    };
    let mut retry_after = None;
    let (status, body) = match result {
        Ok(reply) => (reply.status, reply.body),
        Err(e) => {
            retry_after = e.extra.get("retry_after_seconds").and_then(Value::as_u64);
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
                    obj.insert("server_capabilities".into(), state.capabilities.clone());
                }
            }
            (
                e.status,
                Bytes::from(serde_json::to_vec(&body).expect("invariant: json value serializes")),
            )
        }
    };
    let op_name = op.map(Op::name);
    let op_name = op_name.as_deref().unwrap_or("unmatched");
    crate::metrics::record_request(op_name, status.as_u16(), started.elapsed());
    tracing::trace!(op = op_name, status = status.as_u16(), "request");
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let content_type = if op == Some(Op::PrometheusMetrics) && status == StatusCode::OK {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "application/json"
    };
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(seconds) = retry_after {
        headers.insert(hyper::header::RETRY_AFTER, HeaderValue::from(seconds));
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

type Dispatched = Result<(Op, Option<Plane>, Reply), (Option<Op>, Option<Plane>, ApiError)>;

async fn dispatch(state: &AppState, req: Request<Incoming>) -> Dispatched {
    // The body is read before any check can refuse the request: a response sent with
    // the body unread would force hyper to drop the keep-alive connection under the
    // client. Errors in the body itself are reported after auth, version and gates.
    let (parts, incoming) = req.into_parts();
    let body = read_body(&parts.headers, incoming).await;
    let (op, plane, params) = match router::route(&parts.method, parts.uri.path()) {
        Match::Found(op, plane, params) => (op, plane, params),
        Match::MethodNotAllowed => {
            return Err((
                None,
                None,
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{} is not allowed here", &parts.method),
                ),
            ))
        }
        Match::NotFound => {
            return Err((
                None,
                None,
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no route for {}", parts.uri.path()),
                ),
            ))
        }
    };
    let fail = |e: ApiError| (Some(op), Some(plane), e);
    let policy = router::policy(op);
    let principal = if policy.access == router::Access::Public {
        Principal::open()
    } else {
        let p = state.auth.authenticate(&parts.headers).map_err(fail)?;
        crate::auth::authorize(&p, policy.access).map_err(fail)?;
        p
    };
    check_version(plane, &parts.headers).map_err(fail)?;
    crate::gates::topology(&state.node, &policy).map_err(fail)?;
    state.readiness.gate(&policy).map_err(fail)?;
    let query = parse_query(parts.uri.query());
    let namespace = parts
        .headers
        .get("x-namespace")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .or_else(|| query.get("namespace").cloned())
        .unwrap_or_else(|| state.engine.config().default_namespace.clone())
        .to_ascii_lowercase();
    if matches!(plane, Plane::Control | Plane::Worker)
        && !crate::handlers::namespaces::is_namespace_admin(op)
    {
        crate::handlers::namespaces::resolve(state, &principal, &namespace)
            .await
            .map_err(fail)?;
    }
    let body = body.map_err(fail)?;
    let call = Call {
        params,
        query,
        namespace,
        body,
        principal,
    };
    let reply = crate::handlers::handle(state, op, call)
        .await
        .map_err(fail)?;
    Ok((op, Some(plane), reply))
}

fn check_version(plane: Plane, headers: &hyper::HeaderMap) -> Result<(), ApiError> {
    let header = |name: &str| {
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

async fn read_body(headers: &hyper::HeaderMap, body: Incoming) -> Result<Value, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {MAX_PAYLOAD_BYTES} bytes"),
        )
        .with("limit", MAX_PAYLOAD_BYTES)
    };
    let declared = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_PAYLOAD_BYTES) {
        return Err(too_large());
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    let bytes = Limited::new(body, MAX_PAYLOAD_BYTES)
        .collect()
        .await
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
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the request body is not valid JSON: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
