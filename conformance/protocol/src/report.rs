//! The result document (JSON) and the human table.

use std::time::Duration;

use serde_json::{json, Value};

use crate::Options;

/// The schema name of the result document.
pub const RESULT_SCHEMA: &str = "keel.protocol-conformance.result.v1";

/// A scenario's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Passed,
    Failed,
    /// Not run: a precondition is missing (e.g. discovery failed, no admin credential).
    Skipped,
    /// Does not apply to this server or run (e.g. auth refusals without a token, a
    /// capability the server does not advertise).
    NotApplicable,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
            Status::NotApplicable => "not_applicable",
        }
    }
}

/// One scenario's result.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    pub id: &'static str,
    pub group: &'static str,
    pub title: &'static str,
    /// Upstream scenario ids (`manifest.json#scenario_id`) or contract references.
    pub upstream: &'static [&'static str],
    pub status: Status,
    /// Why it failed, was skipped or does not apply.
    pub message: Option<String>,
    /// Every request made, with the status and reason answered, and notes.
    pub evidence: Vec<Value>,
    pub duration: Duration,
}

/// A whole run.
#[derive(Debug, Clone)]
pub struct Report {
    pub url: String,
    pub namespace: String,
    pub auth: &'static str,
    pub server: Value,
    pub started_at: String,
    pub duration: Duration,
    pub results: Vec<ScenarioResult>,
}

impl Report {
    pub(crate) fn new(
        opts: &Options,
        info: &Value,
        started_at: String,
        duration: Duration,
        results: Vec<ScenarioResult>,
    ) -> Report {
        let auth = match (&opts.control_token, &opts.worker_token) {
            (None, None) => "none",
            (Some(c), Some(w)) if c == w => "token",
            _ => "split_tokens",
        };
        let server = if info.is_null() {
            json!({"cluster_info": "unavailable"})
        } else {
            json!({
                "server_id": info["server_id"],
                "product": info["product"],
                "version": info["version"],
                "control_plane_version": info["control_plane"]["version"],
                "worker_protocol_version": info["worker_protocol"]["version"],
                "request_contract": {
                    "schema": info["control_plane"]["request_contract"]["schema"],
                    "version": info["control_plane"]["request_contract"]["version"],
                },
                "storage": info["storage"],
                "server_capabilities": info["worker_protocol"]["server_capabilities"],
            })
        };
        Report {
            url: opts.url.clone(),
            namespace: opts.namespace.clone(),
            auth,
            server,
            started_at,
            duration,
            results,
        }
    }

    fn count(&self, status: Status) -> usize {
        self.results.iter().filter(|r| r.status == status).count()
    }

    pub fn passed(&self) -> usize {
        self.count(Status::Passed)
    }

    pub fn failed(&self) -> usize {
        self.count(Status::Failed)
    }

    /// The machine-readable result document.
    pub fn to_json(&self) -> Value {
        json!({
            "schema": RESULT_SCHEMA,
            "runner": {"name": "keel-conformance", "version": env!("CARGO_PKG_VERSION")},
            "target": {"url": self.url, "namespace": self.namespace, "auth": self.auth},
            "server": self.server,
            "started_at": self.started_at,
            "duration_ms": self.duration.as_millis() as u64,
            "summary": {
                "total": self.results.len(),
                "passed": self.count(Status::Passed),
                "failed": self.count(Status::Failed),
                "skipped": self.count(Status::Skipped),
                "not_applicable": self.count(Status::NotApplicable),
            },
            "scenarios": self.results.iter().map(|r| json!({
                "id": r.id,
                "group": r.group,
                "title": r.title,
                "upstream": r.upstream,
                "status": r.status.as_str(),
                "message": r.message,
                "duration_ms": r.duration.as_millis() as u64,
                "evidence": r.evidence,
            })).collect::<Vec<_>>(),
        })
    }

    /// The human table: one line per scenario, messages of the ones not passed, a summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "server {} ({} {}, control plane {}, worker protocol {}) namespace {}\n\n",
            self.url,
            self.server["product"].as_str().unwrap_or("server"),
            self.server["version"].as_str().unwrap_or("?"),
            plain(&self.server["control_plane_version"]),
            plain(&self.server["worker_protocol_version"]),
            self.namespace,
        ));
        let id_width = self.results.iter().map(|r| r.id.len()).max().unwrap_or(8);
        out.push_str(&format!(
            "{:<14} {:<id_width$} {:>7}  upstream\n",
            "status", "scenario", "ms"
        ));
        for r in &self.results {
            out.push_str(&format!(
                "{:<14} {:<id_width$} {:>7}  {}\n",
                r.status.as_str(),
                r.id,
                r.duration.as_millis(),
                r.upstream.first().copied().unwrap_or("")
            ));
            if let Some(m) = &r.message {
                out.push_str(&format!("{:<14} {}\n", "", m));
            }
        }
        out.push_str(&format!(
            "\n{} passed, {} failed, {} skipped, {} not applicable in {:.1} s\n",
            self.count(Status::Passed),
            self.count(Status::Failed),
            self.count(Status::Skipped),
            self.count(Status::NotApplicable),
            self.duration.as_secs_f64()
        ));
        out
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "?".into(),
        other => other.to_string(),
    }
}

/// Now as RFC 3339 UTC (seconds).
pub(crate) fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_an_rfc3339_utc_timestamp() {
        let now = super::now_rfc3339();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T', "{now}");
        assert!(now.as_str() > "2024-01-01", "{now}");
    }
}
