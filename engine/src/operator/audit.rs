//! The operator audit log: one entry per operator action, keyed
//! `(namespace, audit_id)` with time-ordered ids, so a reverse range read is newest
//! first. An entry names who acted (the credential's label and roles, never the secret),
//! what they asked, when, and what came of it.
//!
//! Write actions put their entry in the transaction that decides them (a refusal, which
//! commits nothing, is recorded in a transaction of its own). Actions that continue in
//! later transactions (cleanup's removals, recover's purge) first record `in_progress`
//! and rewrite the same entry when they finish, so a crash in between shows as an
//! unfinished entry rather than a missing one.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Millis;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::keys::{prefix, Key};
use crate::storage::{KvTxn, ReadOptions};
use crate::{ids, tables};

/// Most entries one read returns.
pub const AUDIT_PAGE_MAX: usize = 200;

/// Who performs an operator action.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Actor {
    /// The credential's label (`open` in open mode); never the token itself.
    pub principal: String,
    /// The credential's roles.
    pub roles: Vec<String>,
}

/// One audited operator action.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Time-ordered unique id.
    pub audit_id: String,
    /// Namespace acted on.
    pub namespace: String,
    /// `doctor`, `force-redeploy`, `cleanup-stale-deployments` or `recover-stuck-workflow`.
    pub action: String,
    /// Who.
    pub actor: Actor,
    /// When the action started.
    pub at_ms: Millis,
    /// The request as parsed (operator fields only; no credentials).
    #[serde(default)]
    pub request: Value,
    /// `acknowledged`, `refused`, `failed`, `in_progress` or `ok` (doctor).
    pub outcome: String,
    /// The refusal or failure reason, if any.
    #[serde(default)]
    pub reason: Option<String>,
    /// What the action did (ids affected) or saw.
    #[serde(default)]
    pub details: Value,
    /// When a multi-step action finished.
    #[serde(default)]
    pub completed_at_ms: Option<Millis>,
}

impl AuditEntry {
    /// A new entry for `action` by `actor`, started now.
    pub fn new(ns: &str, action: &str, actor: &Actor, request: Value, now: Millis) -> Self {
        AuditEntry {
            audit_id: ids::new_id(now),
            namespace: ns.to_string(),
            action: action.to_string(),
            actor: actor.clone(),
            at_ms: now,
            request,
            outcome: "in_progress".into(),
            reason: None,
            details: Value::Null,
            completed_at_ms: None,
        }
    }

    /// The same entry with an outcome.
    pub fn with_outcome(mut self, outcome: &str, reason: Option<&str>, details: Value) -> Self {
        self.outcome = outcome.to_string();
        self.reason = reason.map(str::to_string);
        self.details = details;
        self
    }
}

fn audit_key(ns: &str, audit_id: &str) -> Vec<u8> {
    Key::new(prefix::OPERATOR_AUDIT)
        .str(ns)
        .str(audit_id)
        .into_bytes()
}

/// Writes (or rewrites) an entry inside `txn`.
pub(crate) fn put_audit(txn: &mut dyn KvTxn, entry: &AuditEntry) -> Result<()> {
    tables::put(txn, &audit_key(&entry.namespace, &entry.audit_id), entry)
}

/// The reason of a refusal or failure, for the audit entry.
pub(crate) fn error_reason(e: &Error) -> String {
    match e {
        Error::Rejected { reason, .. } => (*reason).to_string(),
        Error::Validation(_) => "validation_failed".into(),
        Error::Storage(s) if s.is_retryable() => "admin_unreachable".into(),
        Error::Storage(_) => "storage_failure".into(),
    }
}

impl Engine {
    /// Writes an audit entry in a transaction of its own.
    pub async fn record_audit(&self, entry: &AuditEntry) -> Result<()> {
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                put_audit(txn, entry)?;
                Ok(())
            })
        })
        .await
    }

    /// Records a refused or failed action (best effort: the action's own error is what
    /// the caller reports; a failed audit write is logged).
    pub(crate) async fn audit_failure(&self, entry: AuditEntry, e: &Error) {
        let outcome = if matches!(e, Error::Storage(_)) {
            "failed"
        } else {
            "refused"
        };
        let reason = error_reason(e);
        let entry = AuditEntry {
            completed_at_ms: Some(self.now_ms()),
            ..entry.with_outcome(outcome, Some(&reason), Value::Null)
        };
        // An action that failed on storage is answered promptly: the audit write gets a
        // short bound rather than the retry runner's full patience.
        let bound = if matches!(e, Error::Storage(_)) {
            std::time::Duration::from_millis(500)
        } else {
            std::time::Duration::from_secs(10)
        };
        match tokio::time::timeout(bound, self.record_audit(&entry)).await {
            Ok(Ok(())) => {}
            Ok(Err(write)) => {
                tracing::warn!(action = %entry.action, error = %write, "could not record an operator audit entry");
            }
            Err(_) => {
                tracing::warn!(action = %entry.action, "the operator audit entry was not written in time");
            }
        }
    }

    /// The newest `limit` audit entries of `ns`, newest first.
    pub async fn audit_log(&self, ns: &str, limit: usize) -> Result<Vec<AuditEntry>> {
        let mut txn = self.inner.store.begin().await?;
        let pairs = txn
            .get_range(
                &Key::new(prefix::OPERATOR_AUDIT).str(ns).range(),
                ReadOptions::limit(limit.clamp(1, AUDIT_PAGE_MAX) * 2)
                    .snapshot()
                    .reverse(),
            )
            .await?;
        // A reverse read returns a split record's chunks before its head: keep heads,
        // re-read split ones whole.
        let mut out = Vec::new();
        for (key, value) in pairs {
            if out.len() >= limit.clamp(1, AUDIT_PAGE_MAX) {
                break;
            }
            match value.first() {
                Some(0) => {
                    out.push(serde_json::from_slice(&value[1..]).map_err(Error::corrupt)?);
                }
                Some(1) => {
                    if let Some(entry) = tables::get_snapshot(txn.as_mut(), &key).await? {
                        out.push(entry);
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }
}
