//! The error envelope: every failure is a JSON body `{reason, message, ...}` with one
//! status per reason class. Client mistakes are 4xx; only server faults are 5xx.

use std::collections::BTreeMap;

use hyper::StatusCode;
use keel_engine::storage::StorageError;
use keel_engine::{Error, RejectKind};
use serde_json::{json, Map, Value};

/// An HTTP error response.
#[derive(Debug)]
pub struct ApiError {
    /// Status.
    pub status: StatusCode,
    /// Machine-readable reason.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Extra body fields.
    pub extra: Map<String, Value>,
}

impl ApiError {
    /// An error with no extra fields.
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            reason,
            message: message.into(),
            extra: Map::new(),
        }
    }

    /// Adds a body field.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    /// A 422 for field-level errors.
    pub fn validation(errors: BTreeMap<String, Vec<String>>) -> Self {
        let errors = serde_json::to_value(errors).unwrap_or(Value::Null);
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "The given data was invalid.",
        )
        .with("errors", errors.clone())
        .with("validation_errors", errors)
    }

    /// A 422 for one field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let mut errors = BTreeMap::new();
        errors.insert(field.to_string(), vec![message.into()]);
        Self::validation(errors)
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut body = self.extra.clone();
        body.insert("reason".into(), json!(self.reason));
        body.insert("message".into(), json!(self.message));
        Value::Object(body)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Rejected {
                kind,
                reason,
                message,
                extra,
            } => {
                let status = match kind {
                    RejectKind::BadRequest => StatusCode::BAD_REQUEST,
                    RejectKind::NotFound => StatusCode::NOT_FOUND,
                    RejectKind::Conflict => StatusCode::CONFLICT,
                    RejectKind::Precondition => StatusCode::PRECONDITION_FAILED,
                    RejectKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
                    RejectKind::Throttled => StatusCode::TOO_MANY_REQUESTS,
                    RejectKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                    RejectKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
                };
                ApiError {
                    status,
                    reason,
                    message,
                    extra,
                }
            }
            Error::Validation(errors) => ApiError::validation(errors),
            Error::Storage(StorageError::LimitExceeded(m)) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", m)
            }
            Error::Storage(s) if s.is_retryable() => {
                tracing::warn!(error = %s, "storage unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "storage is temporarily unavailable",
                )
                .with("retryable", true)
                .with("retry_after_seconds", 1)
            }
            Error::Storage(s) => {
                tracing::error!(error = %s, "storage failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "internal storage failure",
                )
            }
        }
    }
}
