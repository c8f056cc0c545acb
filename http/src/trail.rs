//! Writing audit trail entries ([`write`], bounded in time and counted when it fails) and
//! the 401/403 sampler ([`Refusals`]) the request state holds. The pipeline's recording
//! point for mutations is `audit`, above the request layer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use keel_engine::operator::{Actor, AuditEntry, SYSTEM_AUDIT_SCOPE};
use keel_engine::Engine;
use serde_json::{json, Value};

use crate::auth::Principal;
use crate::error::ApiError;

/// Refusals of one key make at most one trail entry per this many milliseconds.
pub const SAMPLE_WINDOW_MS: i64 = 60_000;
/// Most (route, reason, label) keys the refusal sampler tracks.
pub const MAX_SAMPLE_KEYS: usize = 1_024;
/// Longest wait for an audit write before the reply goes without it (logged).
pub const AUDIT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default audit retention (`--audit-retention-days`).
pub const DEFAULT_RETENTION_DAYS: u32 = 90;

pub(crate) async fn write(engine: &Engine, entry: AuditEntry, bound: Duration) {
    match tokio::time::timeout(bound, engine.record_trail(&entry)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            metrics::counter!("keel_audit_write_failures_total").increment(1);
            tracing::warn!(action = %entry.action, error = %e, "could not record an audit trail entry");
        }
        Err(_) => {
            metrics::counter!("keel_audit_write_failures_total").increment(1);
            tracing::warn!(action = %entry.action, "the audit trail entry was not written in time");
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started_ms: i64,
    unreported: u64,
}

/// The 401/403 sampler (see the module docs).
#[derive(Default)]
pub struct Refusals {
    windows: Mutex<HashMap<(String, &'static str, String), Window>>,
}

impl Refusals {
    /// How many (route, reason, label) keys are tracked now.
    pub fn tracked(&self) -> usize {
        self.windows.lock().expect("invariant: sampler lock").len()
    }

    /// Counts a 401/403 of `route` and, when its key's window allows, writes a trail
    /// entry (in a task of its own: a flood of refusals waits on no write).
    pub fn observe(
        &self,
        engine: &Engine,
        route: &str,
        error: &ApiError,
        principal: Option<&Principal>,
    ) {
        let now = engine.now_ms();
        let label = principal.map_or_else(|| "anonymous".to_string(), |p| p.label.clone());
        let key = (route.to_string(), error.reason, label);
        let count = {
            let mut windows = self.windows.lock().expect("invariant: sampler lock");
            if !windows.contains_key(&key) && windows.len() >= MAX_SAMPLE_KEYS {
                windows.retain(|_, w| now - w.started_ms < SAMPLE_WINDOW_MS);
                if windows.len() >= MAX_SAMPLE_KEYS {
                    return;
                }
            }
            let w = windows.entry(key.clone()).or_insert(Window {
                started_ms: i64::MIN,
                unreported: 0,
            });
            w.unreported += 1;
            if w.started_ms != i64::MIN && now - w.started_ms < SAMPLE_WINDOW_MS {
                return;
            }
            w.started_ms = now;
            std::mem::take(&mut w.unreported)
        };
        let (route, reason, label) = key;
        let actor = Actor {
            principal: label,
            roles: principal
                .map(|p| p.roles.names().into_iter().map(str::to_string).collect())
                .unwrap_or_default(),
        };
        let detail = error
            .extra
            .get("auth_failure")
            .cloned()
            .unwrap_or(Value::Null);
        let entry =
            AuditEntry {
                route: Some(route.clone()),
                status: Some(error.status.as_u16()),
                count: Some(count),
                completed_at_ms: Some(now),
                ..AuditEntry::new(SYSTEM_AUDIT_SCOPE, &route, &actor, Value::Null, now)
                    .with_outcome("refused", Some(reason), json!({ "auth_failure": detail }))
            };
        let engine = engine.clone();
        tokio::spawn(async move { write(&engine, entry, AUDIT_WRITE_TIMEOUT).await });
    }
}
