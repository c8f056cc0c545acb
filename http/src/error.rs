//! The error envelope: every failure is a JSON body `{reason, message, ...}` with one
//! status per reason class. Client mistakes are 4xx; only server faults are 5xx.

use std::collections::BTreeMap;

use hyper::StatusCode;
use keel_engine::storage::StorageError;
use keel_engine::{Error, RejectKind};
use serde_json::{json, Map, Value};

/// Fields a validation error reports at most.
pub const MAX_REPORTED_FIELDS: usize = 20;
/// Messages per field a validation error reports at most.
pub const MAX_MESSAGES_PER_FIELD: usize = 5;

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

    /// A 422 for field-level errors: at most [`MAX_REPORTED_FIELDS`] fields with at most
    /// [`MAX_MESSAGES_PER_FIELD`] messages each, and `errors_omitted` counting the rest, so
    /// an oversized input cannot make an oversized answer.
    pub fn validation(mut errors: BTreeMap<String, Vec<String>>) -> Self {
        let mut omitted = 0usize;
        while errors.len() > MAX_REPORTED_FIELDS {
            if let Some((_, messages)) = errors.pop_last() {
                omitted += messages.len();
            }
        }
        for messages in errors.values_mut() {
            if messages.len() > MAX_MESSAGES_PER_FIELD {
                omitted += messages.len() - MAX_MESSAGES_PER_FIELD;
                messages.truncate(MAX_MESSAGES_PER_FIELD);
            }
        }
        let errors = serde_json::to_value(errors).unwrap_or(Value::Null);
        let error = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "The given data was invalid.",
        )
        .with("errors", errors.clone())
        .with("validation_errors", errors);
        if omitted > 0 {
            error.with("errors_omitted", omitted)
        } else {
            error
        }
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
                    RejectKind::Forbidden => StatusCode::FORBIDDEN,
                    RejectKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
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
            Error::Storage(StorageError::WritesRefused(why)) => {
                // The backend's own explanation (full disk, failed write) and remedy: it
                // names no payload or secret.
                tracing::warn!(reason = %why, "storage refuses writes");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    format!("storage refuses writes: {why}"),
                )
                .with("retryable", true)
                .with("retry_after_seconds", 5)
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

#[cfg(test)]
mod tests {
    use super::{json, ApiError, BTreeMap, MAX_MESSAGES_PER_FIELD, MAX_REPORTED_FIELDS};

    #[test]
    fn a_validation_error_reports_a_bounded_number_of_fields_and_counts_the_rest() {
        let errors: BTreeMap<String, Vec<String>> = (0..100_000)
            .map(|i| {
                (
                    format!("search_attributes.k{i:06}"),
                    vec!["not registered".into(); 7],
                )
            })
            .collect();
        let body = ApiError::validation(errors).body();
        let reported = body["errors"].as_object().expect("errors object");
        assert_eq!(reported.len(), MAX_REPORTED_FIELDS);
        assert!(reported.values().all(|m| m
            .as_array()
            .is_some_and(|m| m.len() == MAX_MESSAGES_PER_FIELD)));
        let shown = MAX_REPORTED_FIELDS * MAX_MESSAGES_PER_FIELD;
        assert_eq!(body["errors_omitted"], json!(100_000 * 7 - shown));
        assert!(serde_json::to_vec(&body).expect("serializes").len() < 16 * 1024);
    }
}
