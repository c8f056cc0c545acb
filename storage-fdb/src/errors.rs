//! FoundationDB errors as the storage contract's [`StorageError`]s: by error code and by
//! the client's own predicates (`maybe_committed`, `retryable`), never by message text.
//! Pure Rust, so the table is tested without the client library.

use keel_storage::StorageError;

/// FoundationDB error codes the mapping names (`flow/error_definitions.h`).
pub mod code {
    /// `timed_out`.
    pub const TIMED_OUT: i32 = 1004;
    /// `transaction_too_old`: the read version is older than the cluster keeps (5 s).
    pub const TRANSACTION_TOO_OLD: i32 = 1007;
    /// `not_committed`: a read conflicted with a later commit.
    pub const NOT_COMMITTED: i32 = 1020;
    /// `commit_unknown_result`.
    pub const COMMIT_UNKNOWN_RESULT: i32 = 1021;
    /// `connection_failed`.
    pub const CONNECTION_FAILED: i32 = 1026;
    /// `watch_cancelled`: a storage server dropped the watch (its watch limit).
    #[cfg_attr(not(feature = "fdb"), allow(dead_code))] // only the watch code names it
    pub const WATCH_CANCELLED: i32 = 1029;
    /// `transaction_timed_out`: the transaction's `timeout` option elapsed.
    pub const TRANSACTION_TIMED_OUT: i32 = 1031;
    /// `transaction_too_large`.
    pub const TRANSACTION_TOO_LARGE: i32 = 2101;
    /// `key_too_large`.
    pub const KEY_TOO_LARGE: i32 = 2102;
    /// `value_too_large`.
    pub const VALUE_TOO_LARGE: i32 = 2103;
}

/// What the FoundationDB client said about one error.
#[derive(Debug, Clone, Copy)]
pub struct FdbFailure {
    /// The error code.
    pub code: i32,
    /// The client's description of the code.
    pub message: &'static str,
    /// The client's `maybe_committed` predicate.
    pub maybe_committed: bool,
    /// The client's `retryable` predicate.
    pub retryable: bool,
}

/// The contract's error for `failure`; `during_commit` says whether it answered a
/// commit. `source` is kept as the source of errors the contract has no kind for.
pub fn storage_error<E>(failure: FdbFailure, during_commit: bool, source: E) -> StorageError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let described = || format!("{} (FoundationDB error {})", failure.message, failure.code);
    match failure.code {
        code::NOT_COMMITTED => StorageError::Conflict,
        code::COMMIT_UNKNOWN_RESULT => StorageError::CommitUnknown,
        code::TRANSACTION_TOO_OLD => StorageError::TransactionTooOld,
        code::TRANSACTION_TOO_LARGE | code::KEY_TOO_LARGE | code::VALUE_TOO_LARGE => {
            StorageError::LimitExceeded(described())
        }
        // A commit whose timeout elapsed may still be applied (the client documents this
        // for its `timeout` option), so its outcome is unknown, not "not written".
        code::TIMED_OUT | code::TRANSACTION_TIMED_OUT if during_commit => {
            StorageError::CommitUnknown
        }
        code::TIMED_OUT | code::TRANSACTION_TIMED_OUT | code::CONNECTION_FAILED => {
            StorageError::Unavailable(described())
        }
        _ if failure.maybe_committed => StorageError::CommitUnknown,
        // The rest of what the client retries (future_version, process_behind,
        // database_locked, throttling, ...) is the cluster being busy or recovering.
        _ if failure.retryable => StorageError::Unavailable(described()),
        _ => StorageError::Backend(Box::new(source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("fdb")]
    struct Source;

    fn map(code: i32, maybe_committed: bool, retryable: bool, commit: bool) -> StorageError {
        let failure = FdbFailure {
            code,
            message: "msg",
            maybe_committed,
            retryable,
        };
        storage_error(failure, commit, Source)
    }

    #[test]
    fn codes_map_to_the_contract_kinds() {
        // The predicates as the 7.3 client answers them for each code.
        assert!(matches!(
            map(1020, false, true, true),
            StorageError::Conflict
        ));
        assert!(matches!(
            map(1021, true, true, true),
            StorageError::CommitUnknown
        ));
        assert!(matches!(
            map(1007, false, true, false),
            StorageError::TransactionTooOld
        ));
        for code in [2101, 2102, 2103] {
            match map(code, false, false, true) {
                StorageError::LimitExceeded(m) => assert!(m.contains(&code.to_string())),
                other => panic!("{code}: {other:?}"),
            }
        }
        // cluster_version_changed: maybe committed by the client's predicate.
        assert!(matches!(
            map(1039, true, true, true),
            StorageError::CommitUnknown
        ));
        // future_version, process_behind: retryable, nothing written.
        for code in [1009, 1037] {
            assert!(matches!(
                map(code, false, true, false),
                StorageError::Unavailable(_)
            ));
        }
        // inverted_range: a caller bug, kept as the source.
        assert!(matches!(
            map(2005, false, false, false),
            StorageError::Backend(_)
        ));
    }

    #[test]
    fn a_timeout_is_unavailable_on_reads_and_unknown_on_commit() {
        for code in [1004, 1031] {
            assert!(matches!(
                map(code, false, false, false),
                StorageError::Unavailable(_)
            ));
            assert!(matches!(
                map(code, false, false, true),
                StorageError::CommitUnknown
            ));
        }
        assert!(map(1031, false, false, false).is_retryable());
    }
}
