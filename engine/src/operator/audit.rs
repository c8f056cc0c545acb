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
//!
//! The **control-plane audit trail** ([`Engine::record_trail`], [`Engine::audit_trail`])
//! uses the same entry under its own table (`AUDIT_TRAIL`, keyed `(scope, audit_id)`):
//! one entry per control-plane mutation (namespaces, search attributes, schedules,
//! cancel/terminate/repair/archive, drains, the service catalog...) and per token reload,
//! and sampled 401/403 refusals. The HTTP front writes it from one place, in its own
//! transaction right after the mutation answered (see `keel_http::audit`). The scope is
//! the namespace acted in, or [`SYSTEM_AUDIT_SCOPE`] for what belongs to none (token
//! reloads, refused credentials). Both tables are bounded by [`Engine::prune_audit`],
//! which the retention pass runs.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::kernel::Engine;
use crate::keys::{prefix, Key};
use crate::storage::{KvTxn, ReadOptions};
use crate::{ids, tables};

/// Most entries one read returns.
pub const AUDIT_PAGE_MAX: usize = 200;

/// Most keys one retention transaction removes.
const PRUNE_BATCH: usize = 500;

/// The audit trail's scope for entries that belong to no namespace (token reloads,
/// refused credentials). Not a valid namespace name, so no namespace can collide with it.
pub const SYSTEM_AUDIT_SCOPE: &str = ":system";

/// Which audit table a read or write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditLog {
    /// The operator recovery actions' log.
    Operator,
    /// The control-plane audit trail.
    Trail,
}

impl AuditLog {
    fn prefix(self) -> u8 {
        match self {
            AuditLog::Operator => prefix::OPERATOR_AUDIT,
            AuditLog::Trail => prefix::AUDIT_TRAIL,
        }
    }
}

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
    /// Trail entries: the route (operation name, e.g. `terminate_workflow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Trail entries: what was acted on (path ids and named body ids; never payloads).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub target: Value,
    /// Trail entries: the HTTP status answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Sampled refusals: how many refusals this entry stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
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
            route: None,
            target: Value::Null,
            status: None,
            count: None,
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

fn audit_key(log: AuditLog, ns: &str, audit_id: &str) -> Vec<u8> {
    Key::new(log.prefix()).str(ns).str(audit_id).into_bytes()
}

/// The smallest id [`ids::new_id`] can make at `ms`: every entry made before `ms` sorts
/// below it.
fn floor_id(ms: Millis) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let value: u128 = (ms.max(0) as u128 & 0xFFFF_FFFF_FFFF) << 80;
    (0..26)
        .map(|i| ALPHABET[((value >> (125 - i * 5)) & 0x1F) as usize] as char)
        .collect()
}

/// Writes (or rewrites) an entry inside `txn`.
pub(crate) fn put_audit(txn: &mut dyn KvTxn, entry: &AuditEntry) -> Result<()> {
    tables::put(
        txn,
        &audit_key(AuditLog::Operator, &entry.namespace, &entry.audit_id),
        entry,
    )
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

    /// Writes a control-plane audit trail entry (scope: `entry.namespace`) in a
    /// transaction of its own.
    pub async fn record_trail(&self, entry: &AuditEntry) -> Result<()> {
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                tables::put(
                    txn,
                    &audit_key(AuditLog::Trail, &entry.namespace, &entry.audit_id),
                    entry,
                )?;
                Ok(())
            })
        })
        .await
    }

    /// The newest `limit` audit entries of `ns`, newest first.
    pub async fn audit_log(&self, ns: &str, limit: usize) -> Result<Vec<AuditEntry>> {
        self.read_audit(AuditLog::Operator, ns, limit, None).await
    }

    /// The newest `limit` operator audit entries of `ns` older than the entry `before`
    /// (all when `None`), newest first.
    pub async fn audit_page(
        &self,
        ns: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<AuditEntry>> {
        self.read_audit(AuditLog::Operator, ns, limit, before).await
    }

    /// The newest `limit` trail entries of `scope` (a namespace or
    /// [`SYSTEM_AUDIT_SCOPE`]) older than the entry `before` (all when `None`), newest
    /// first.
    pub async fn audit_trail(
        &self,
        scope: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<AuditEntry>> {
        self.read_audit(AuditLog::Trail, scope, limit, before).await
    }

    /// Deletes the entries of both audit tables in `ns` and in [`SYSTEM_AUDIT_SCOPE`]
    /// made before `cutoff_ms`; returns how many entries went. Small transactions (at
    /// most [`PRUNE_BATCH`] keys each), so a long backlog never makes one large write.
    pub async fn prune_audit(&self, ns: &str, cutoff_ms: Millis) -> Result<usize> {
        let floor = floor_id(cutoff_ms);
        let mut removed = 0usize;
        for log in [AuditLog::Operator, AuditLog::Trail] {
            for scope in [ns, SYSTEM_AUDIT_SCOPE] {
                let all = Key::new(log.prefix()).str(scope).range();
                let old = &crate::storage::KeyRange {
                    start: all.start,
                    end: std::ops::Bound::Excluded(audit_key(log, scope, &floor)),
                };
                // Heads have the fixed length of an id's key; chunks are longer.
                let head_len = audit_key(log, scope, &floor).len();
                loop {
                    let (keys, heads) = self
                        .transact(move |tx| {
                            Box::pin(async move {
                                let txn = tx.txn.as_mut();
                                let pairs =
                                    txn.get_range(old, ReadOptions::limit(PRUNE_BATCH)).await?;
                                let mut heads = 0usize;
                                for (key, _) in &pairs {
                                    heads += usize::from(key.len() == head_len);
                                    txn.clear(key);
                                }
                                Ok((pairs.len(), heads))
                            })
                        })
                        .await?;
                    removed += heads;
                    if keys < PRUNE_BATCH {
                        break;
                    }
                }
            }
        }
        if removed > 0 {
            tracing::info!(
                namespace = ns,
                removed,
                "audit retention removed old entries"
            );
        }
        Ok(removed)
    }

    async fn read_audit(
        &self,
        log: AuditLog,
        ns: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<AuditEntry>> {
        let mut txn = self.inner.store.begin().await?;
        let mut range = Key::new(log.prefix()).str(ns).range();
        if let Some(before) = before {
            range.end = std::ops::Bound::Excluded(audit_key(log, ns, before));
        }
        let pairs = txn
            .get_range(
                &range,
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
                    out.push(tables::decode_record(&value[1..])?);
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

#[cfg(test)]
mod tests {
    use super::{floor_id, ids, AuditEntry};

    #[test]
    fn the_floor_id_of_a_time_sorts_between_the_ids_made_before_and_at_it() {
        let t = 1_780_000_000_000;
        for _ in 0..100 {
            assert!(ids::new_id(t - 1) < floor_id(t));
            assert!(floor_id(t) <= ids::new_id(t));
        }
    }

    #[test]
    fn old_entries_without_trail_fields_still_read() {
        let old = r#"{"audit_id":"01","namespace":"default","action":"doctor",
            "actor":{"principal":"ops","roles":["admin"]},"at_ms":1,"outcome":"ok"}"#;
        let e: AuditEntry = serde_json::from_str(old).expect("reads");
        assert!(e.route.is_none() && e.target.is_null() && e.count.is_none());
    }
}
