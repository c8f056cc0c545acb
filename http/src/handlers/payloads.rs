//! External payload storage routes: the runtime-mediated transport (`POST
//! /api/external-payloads/v1`, `GET /api/external-payloads/v1/{reference_id}`), the storage
//! round-trip test, and the namespace's `external_payload_storage` block as describe and
//! discovery show it.

use hyper::StatusCode;
use keel_engine::payloads::{
    CompletionContext, Policy, Upload, COMPLETION_HEADER, COMPLETION_SCHEMA, MAX_PAYLOAD_BYTES,
    PREPARED_COMPLETION_SCHEMA, REFERENCE_SCHEMA, REQUEST_TIMEOUT_SECONDS, TRANSPORT_SCHEMA,
    UPLOAD_SCHEMA,
};
use keel_engine::Engine;
use serde_json::{json, Value};

use crate::call::{AppState, Call, Reply};
use crate::error::ApiError;
use crate::router::Op;
use crate::validate::Fields;

const CODEC_HEADER: &str = "x-durable-workflow-payload-codec";
const SIZE_HEADER: &str = "x-durable-workflow-payload-size";
const SHA_HEADER: &str = "x-durable-workflow-payload-sha256";

/// The upload and fetch paths, as advertised and as the SDK requires them.
pub const UPLOAD_PATH: &str = "/api/external-payloads/v1";
/// The fetch path template.
pub const FETCH_PATH_TEMPLATE: &str = "/api/external-payloads/v1/{referenceId}";

fn unsupported(message: impl Into<String>, status: StatusCode) -> ApiError {
    ApiError::new(status, "external_payload_unsupported", message).with("retryable", false)
}

fn header<'a>(call: &'a Call, name: &str) -> Option<&'a str> {
    call.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// External payload and storage-test routes.
pub async fn handle(state: &AppState, op: Op, call: Call) -> Result<Reply, ApiError> {
    let engine = &state.engine;
    match op {
        Op::UploadExternalPayload => {
            let content_type = header(&call, "content-type").unwrap_or("");
            if !content_type
                .to_ascii_lowercase()
                .starts_with("application/octet-stream")
            {
                return Err(unsupported(
                    "external payload uploads must be Content-Type: application/octet-stream",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ));
            }
            let codec = header(&call, CODEC_HEADER).unwrap_or("");
            let size = header(&call, SIZE_HEADER).and_then(|s| s.parse::<u64>().ok());
            let sha = header(&call, SHA_HEADER).unwrap_or("");
            let mut missing = Vec::new();
            if codec.is_empty() {
                missing.push("X-Durable-Workflow-Payload-Codec");
            }
            if size.is_none() {
                missing.push("X-Durable-Workflow-Payload-Size (a non-negative integer)");
            }
            if sha.len() != 64
                || !sha
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            {
                missing.push("X-Durable-Workflow-Payload-SHA256 (64 lowercase hex digits)");
            }
            if !missing.is_empty() {
                return Err(unsupported(
                    format!("missing or malformed headers: {}", missing.join(", ")),
                    StatusCode::UNPROCESSABLE_ENTITY,
                ));
            }
            let completion = header(&call, COMPLETION_HEADER).and_then(CompletionContext::parse);
            let record = engine
                .upload_payload(
                    &call.namespace,
                    Upload {
                        codec: codec.to_string(),
                        declared_size: size.unwrap_or_default(),
                        declared_sha256: sha.to_string(),
                        bytes: call.raw_body.to_vec(),
                        completion,
                    },
                )
                .await?;
            Ok(Reply::json(
                StatusCode::CREATED,
                &json!({
                    "schema": UPLOAD_SCHEMA,
                    "transport_version": 1,
                    "reference": record.reference_json(),
                }),
            ))
        }
        Op::FetchExternalPayload => {
            let (record, bytes) = engine.fetch_payload(&call.namespace, call.param(0)).await?;
            Ok(
                Reply::bytes(StatusCode::OK, bytes.into(), "application/octet-stream")
                    .with_header("X-Durable-Workflow-Payload-Codec", record.codec.clone())
                    .with_header(
                        "X-Durable-Workflow-Payload-Size",
                        record.size_bytes.to_string(),
                    )
                    .with_header("X-Durable-Workflow-Payload-SHA256", record.sha256.clone()),
            )
        }
        Op::StorageTest => {
            let mut f = Fields::new(&call.body)?;
            let driver = f.optional_str("driver", 32);
            let small = f.optional_int("small_payload_bytes", 1, 1024 * 1024);
            let large = f.optional_int("large_payload_bytes", 1, MAX_PAYLOAD_BYTES as i64);
            if driver
                .as_deref()
                .is_some_and(|d| !keel_engine::payloads::DRIVERS.contains(&d))
            {
                f.error(
                    "driver",
                    "The driver field must be one of: local, s3, gcs, azure.",
                );
            }
            f.finish()?;
            let report = engine
                .storage_test(
                    &call.namespace,
                    driver.as_deref(),
                    small.map_or(1024, |n| n as usize),
                    large.map_or(2 * 1024 * 1024, |n| n as usize),
                )
                .await?;
            Ok(Reply::json(StatusCode::OK, &report))
        }
        _ => Err(super::unrouted(op)),
    }
}

/// The namespace's `external_payload_storage` block (describe and discovery): the policy
/// with its effective status and, when it can store payloads, the runtime transport
/// manifest the SDK checks and the direct-provider negotiation. `None` without a policy.
pub fn storage_block(engine: &Engine, stored: Option<&Value>) -> Option<Value> {
    let policy = Policy::from_record(stored)?;
    let status = engine.payload_status(Some(&policy));
    let location = policy.location();
    let mut block = json!({
        "driver": policy.driver,
        "enabled": policy.enabled,
        "threshold_bytes": policy.threshold_bytes,
        "config": policy.config,
        "reference": REFERENCE_SCHEMA,
        "prefix": location.prefix,
        "mode": "authenticated_namespace_runtime",
        "status": status,
        "integrity_required": true,
        "uri_template": engine.payload_uri(&location, "{referenceId}"),
    });
    if status == "available" {
        block["transport"] = transport_manifest();
        block["direct_provider_adapters"] = json!({"capability_negotiated": true, "enabled": true});
    }
    Some(block)
}

/// The runtime transport manifest, exactly as the SDK validates it.
pub fn transport_manifest() -> Value {
    json!({
        "schema": TRANSPORT_SCHEMA,
        "version": 1,
        "reference_schema": REFERENCE_SCHEMA,
        "mode": "authenticated_namespace_runtime",
        "upload": {
            "method": "POST",
            "path": UPLOAD_PATH,
            "completion_context": {
                "schema": COMPLETION_SCHEMA,
                "header": COMPLETION_HEADER,
                "prepared_schema": PREPARED_COMPLETION_SCHEMA,
            },
        },
        "fetch": {"method": "GET", "path_template": FETCH_PATH_TEMPLATE},
        "limits": {
            "max_payload_bytes": MAX_PAYLOAD_BYTES,
            "request_timeout_seconds": REQUEST_TIMEOUT_SECONDS,
        },
        "direct_provider_adapters": {"capability_negotiated": true, "enabled": true},
    })
}
