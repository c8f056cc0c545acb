//! The operator surface: deployments (a `serviceUrl` bound to worker cohorts) and the
//! service registry, the recovery actions (`force-redeploy`, `cleanup-stale-deployments`,
//! `recover-stuck-workflow`), the read-only inspections `doctor` is built from, and the
//! durable audit log of every operator action, and the control-plane audit trail.
//!
//! Vocabulary (the operator API models a Restate-style engine): a *service* is a workflow
//! or activity type, a *service key* is a workflow id, an *invocation* is a run, and a
//! *deployment* is the group of workers answering for one `serviceUrl`. Keel's workers
//! poll and serve no HTTP, so a deployment binds to `(task_queue, build_id)` cohorts, and
//! draining a deployment is the build-id cohort drain (its workers' polls get 409
//! `worker_draining`).
//!
//! Every state change is one transaction through the retry runner, with an idempotent
//! body. Multi-step actions (cleanup, the purge of recover) are sequences of small
//! transactions, each re-checking what it acts on, so that a crash between two steps
//! leaves a state the same action finishes when it is called again.

mod audit;
mod deployments;
mod inspect;
mod recover;

pub use crate::model::{truncate_message, MAX_MESSAGE_BYTES};
pub use audit::{Actor, AuditEntry, AuditLog, AUDIT_PAGE_MAX, SYSTEM_AUDIT_SCOPE};
pub use deployments::{
    normalize_service_url, CleanupOutcome, CleanupRequest, CohortRef, DeploymentRecord,
    DeploymentService, RedeployOutcome, RedeployRequest, ServiceKind, ServiceRecord,
    SkippedDeployment, WorkerEndpoint, MAX_DEPLOYMENTS,
};
pub use inspect::{
    merge_failures, FailureItem, InvocationCounts, MAX_RECENT_FAILURES, RUN_SCAN_CAP,
};
pub use recover::{RecoverOutcome, RecoverRequest};

/// Whether `s` is a valid operator key (`serviceName`, `serviceKey`): non-empty, at most
/// 255 bytes, letters, digits, `_` and `-` only.
pub fn valid_operator_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::valid_operator_key;

    #[test]
    fn operator_keys_allow_only_letters_digits_underscore_and_hyphen() {
        assert!(valid_operator_key("invitation_01j8-X"));
        assert!(!valid_operator_key(""));
        assert!(!valid_operator_key("a.b"));
        assert!(!valid_operator_key("a/b"));
        assert!(!valid_operator_key("a b"));
        assert!(!valid_operator_key(&"a".repeat(256)));
    }
}
