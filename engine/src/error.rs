//! The engine's one error type. Every rejection carries a stable machine-readable
//! `reason` (the protocol's vocabulary) and a kind that the HTTP front maps to a status.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::storage::{retry::TxnError, StorageError};

/// How a rejection maps onto the protocol's status classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// The request is malformed (400).
    BadRequest,
    /// The target does not exist (404).
    NotFound,
    /// The target is in a state that forbids the request (409).
    Conflict,
    /// The caller may not reach the target, e.g. a payload outside the namespace's
    /// configured storage (403).
    Forbidden,
    /// The request's content is larger than the limit (413).
    TooLarge,
    /// A precondition of the caller is missing, e.g. an unregistered worker (412).
    Precondition,
    /// The field values are invalid (422).
    Invalid,
    /// Capacity or admission limits refused the request (429).
    Throttled,
    /// The server cannot serve the request right now (503).
    Unavailable,
    /// Nobody answered in time, e.g. no worker completed a query task (504).
    Timeout,
}

/// Everything an engine operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Storage failed; `is_retryable` tells whether a retry may help.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The request was refused for a named reason; nothing changed.
    #[error("{message}")]
    Rejected {
        /// Status class.
        kind: RejectKind,
        /// Machine-readable reason, e.g. `lease_owner_mismatch`.
        reason: &'static str,
        /// Human-readable explanation.
        message: String,
        /// Extra fields merged into the error body.
        extra: Map<String, Value>,
    },
    /// Field-level validation failed; nothing changed.
    #[error("validation failed")]
    Validation(BTreeMap<String, Vec<String>>),
}

impl Error {
    /// A rejection without extra fields.
    pub fn reject(kind: RejectKind, reason: &'static str, message: impl Into<String>) -> Self {
        Error::Rejected {
            kind,
            reason,
            message: message.into(),
            extra: Map::new(),
        }
    }

    /// A 404-class rejection.
    pub fn not_found(reason: &'static str, message: impl Into<String>) -> Self {
        Self::reject(RejectKind::NotFound, reason, message)
    }

    /// A 409-class rejection.
    pub fn conflict(reason: &'static str, message: impl Into<String>) -> Self {
        Self::reject(RejectKind::Conflict, reason, message)
    }

    /// A validation failure on one field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        let mut errors = BTreeMap::new();
        errors.insert(field.to_string(), vec![message.into()]);
        Error::Validation(errors)
    }

    /// Adds an extra field to a rejection (no effect on other variants).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        if let Error::Rejected { extra, .. } = &mut self {
            extra.insert(key.to_string(), value.into());
        }
        self
    }

    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Storage(e) => e.is_retryable(),
            Error::Rejected { kind, .. } => {
                matches!(kind, RejectKind::Unavailable | RejectKind::Throttled)
            }
            Error::Validation(_) => false,
        }
    }

    /// A decoding failure of stored bytes.
    pub fn corrupt(what: impl std::fmt::Display) -> Self {
        Error::Storage(StorageError::Corruption(what.to_string()))
    }
}

impl TxnError for Error {
    fn as_storage(&self) -> Option<&StorageError> {
        match self {
            Error::Storage(e) => Some(e),
            _ => None,
        }
    }
}

/// Result alias for engine operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
