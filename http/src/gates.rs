//! The two node-level gates that run after authentication, role and version checks and
//! before namespace resolution (so a refused request never learns whether a namespace
//! exists):
//!
//! * the **topology gate**: a node started with a subset of roles (`--roles`) answers
//!   routes it does not host with 503 `topology_role_unavailable`;
//! * the **bootstrap gate**: while storage is unreachable, the schema version is not the
//!   binary's, or the default namespace is missing, workflow and worker traffic gets 503
//!   `workflow_v2_blocked` with `blocked_by` and `remediation`.
//!
//! Readiness is checked with real storage reads by `/api/ready` and by a refresher every
//! few seconds; the gate reads the last result, so it costs no I/O per request.

use std::sync::RwLock;

use hyper::StatusCode;
use keel_engine::namespaces::SchemaStatus;
use keel_engine::Engine;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::router::Policy;

/// Every role name of the v2 topology vocabulary.
pub const ROLE_VOCABULARY: &[&str] = &[
    "api_ingress",
    "control_plane",
    "matching",
    "history_projection",
    "scheduler",
    "execution_plane",
];

/// The roles of a default Keel node: everything but executing user code (workers do
/// that over the worker protocol). The durable timer service is in-process, hence
/// `scheduler`.
pub const DEFAULT_ROLES: &[&str] = &[
    "api_ingress",
    "control_plane",
    "matching",
    "history_projection",
    "scheduler",
];

/// The topology roles this node hosts.
#[derive(Debug, Clone)]
pub struct NodeRoles {
    roles: Vec<&'static str>,
}

impl Default for NodeRoles {
    fn default() -> Self {
        NodeRoles {
            roles: DEFAULT_ROLES.to_vec(),
        }
    }
}

impl NodeRoles {
    /// Parses a comma-separated role list (`--roles`).
    pub fn parse(list: &str) -> Result<NodeRoles, String> {
        let mut roles: Vec<&'static str> = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some(role) = ROLE_VOCABULARY.iter().find(|r| **r == name) else {
                return Err(format!(
                    "unknown role '{name}' (expected some of: {})",
                    ROLE_VOCABULARY.join(", ")
                ));
            };
            if !roles.contains(role) {
                roles.push(role);
            }
        }
        if roles.is_empty() {
            return Err("--roles needs at least one role".into());
        }
        // Vocabulary order, whatever order the flag used.
        roles.sort_by_key(|r| ROLE_VOCABULARY.iter().position(|v| v == r));
        Ok(NodeRoles { roles })
    }

    /// The roles, in vocabulary order.
    pub fn roles(&self) -> &[&'static str] {
        &self.roles
    }

    /// Whether the node hosts `role`.
    pub fn has(&self, role: &str) -> bool {
        self.roles.contains(&role)
    }

    /// The standalone-server process class this role bundle corresponds to.
    pub fn process_class(&self) -> &'static str {
        let has_all = |set: &[&str]| set.iter().all(|r| self.has(r));
        if has_all(&[
            "api_ingress",
            "control_plane",
            "matching",
            "history_projection",
        ]) {
            "server_http_node"
        } else if self.roles == ["scheduler"] {
            "scheduler_node"
        } else if self.roles == ["matching"] {
            "matching_node"
        } else if self.roles == ["execution_plane"] {
            "worker_node"
        } else {
            "custom_node"
        }
    }
}

/// 503 `topology_role_unavailable` unless the node hosts every role the route needs.
pub fn topology(node: &NodeRoles, policy: &Policy) -> Result<(), ApiError> {
    let missing: Vec<&str> = policy
        .required_roles
        .iter()
        .copied()
        .filter(|r| !node.has(r))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "topology_role_unavailable",
        "This node does not host the topology roles required for this endpoint.",
    )
    .with("current_shape", "standalone_server")
    .with("current_process_class", node.process_class())
    .with("current_roles", node.roles().to_vec())
    .with("required_roles", policy.required_roles.to_vec())
    .with("missing_roles", missing))
}

/// The result of the readiness checks.
#[derive(Debug, Clone)]
pub struct ReadySnapshot {
    /// The storage read succeeded.
    pub storage_ok: bool,
    /// The schema version read (when storage answered).
    pub schema: Option<SchemaStatus>,
    /// The default namespace exists.
    pub default_namespace_ok: bool,
    /// When the checks ran (engine clock).
    pub checked_at_ms: i64,
    /// Whether any check ran yet.
    pub checked: bool,
}

impl ReadySnapshot {
    fn unchecked() -> Self {
        ReadySnapshot {
            storage_ok: true,
            schema: None,
            default_namespace_ok: true,
            checked_at_ms: 0,
            checked: false,
        }
    }

    /// The upstream readiness blockers, in order: `database`, `migrations`,
    /// `default_namespace`. Before the first check nothing is reported blocked.
    pub fn blocked_by(&self) -> Vec<&'static str> {
        if !self.checked {
            return Vec::new();
        }
        let mut out = Vec::new();
        if !self.storage_ok {
            out.push("database");
        }
        if self.storage_ok && !self.schema.is_some_and(|s| s.is_current()) {
            out.push("migrations");
        }
        if self.storage_ok && !self.default_namespace_ok {
            out.push("default_namespace");
        }
        out
    }

    /// The operator instruction for the current blockers.
    pub fn remediation(&self) -> String {
        let mut parts = Vec::new();
        for b in self.blocked_by() {
            parts.push(match b {
                "database" => "Restore storage: check that the store is reachable (the data directory's disk and permissions, or the FoundationDB cluster) and the server log".to_string(),
                "migrations" => match self.schema.and_then(|s| s.stored) {
                    Some(stored) => format!(
                        "The data directory holds schema version {stored}, this binary uses {}: run the Keel release that wrote it (or a newer one)",
                        keel_engine::namespaces::SCHEMA_VERSION
                    ),
                    None => "Restart Keel so that it records its schema version in the data directory".to_string(),
                },
                _ => "Restart Keel so that it recreates the default namespace".to_string(),
            });
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("{}.", parts.join("; "))
        }
    }
}

/// The readiness state shared by `/api/ready`, the bootstrap gate and the refresher.
pub struct Readiness {
    last: RwLock<ReadySnapshot>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            last: RwLock::new(ReadySnapshot::unchecked()),
        }
    }
}

impl Readiness {
    /// Runs the checks (real storage reads) and records the result.
    pub async fn refresh(&self, engine: &Engine) -> ReadySnapshot {
        let storage_ok = engine.storage_reachable().await.is_ok();
        let schema = if storage_ok {
            engine.schema_status().await.ok()
        } else {
            None
        };
        let default_namespace_ok = storage_ok
            && engine
                .namespace(&engine.config().default_namespace)
                .await
                .ok()
                .flatten()
                .is_some();
        let snap = ReadySnapshot {
            storage_ok: storage_ok && schema.is_some(),
            schema,
            default_namespace_ok,
            checked_at_ms: engine.now_ms(),
            checked: true,
        };
        let before = self.snapshot().blocked_by();
        let after = snap.blocked_by();
        if before != after {
            if after.is_empty() {
                tracing::info!("readiness restored; workflow traffic is served again");
            } else {
                tracing::warn!(blocked_by = ?after, "readiness check failed; the bootstrap gate refuses workflow traffic");
            }
        }
        *self
            .last
            .write()
            .expect("invariant: readiness lock not poisoned") = snap.clone();
        snap
    }

    /// The last recorded result.
    pub fn snapshot(&self) -> ReadySnapshot {
        self.last
            .read()
            .expect("invariant: readiness lock not poisoned")
            .clone()
    }

    /// 503 `workflow_v2_blocked` when the route is gated and readiness is blocked.
    pub fn gate(&self, policy: &Policy) -> Result<(), ApiError> {
        if !policy.bootstrap_gated {
            return Ok(());
        }
        let snap = self.snapshot();
        let blocked_by = snap.blocked_by();
        if blocked_by.is_empty() {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "workflow_v2_blocked",
            "This node is not ready to serve workflow v2 traffic until bootstrap blockers are cleared.",
        )
        .with("blocked_by", blocked_by)
        .with("remediation", snap.remediation())
        .with("retryable", true))
    }

    /// The `workflow_v2` readiness check block.
    pub fn workflow_v2_check(snap: &ReadySnapshot) -> Value {
        let blocked_by = snap.blocked_by();
        if blocked_by.is_empty() {
            json!({"status": "ok"})
        } else {
            json!({
                "status": "blocked",
                "blocked_by": blocked_by,
                "message": "Workflow v2 traffic is refused until the blockers are cleared.",
                "remediation": snap.remediation(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{json, topology, NodeRoles, ReadySnapshot, SchemaStatus, StatusCode};

    #[test]
    fn role_lists_parse_into_vocabulary_order_and_classes() {
        let node = NodeRoles::parse("control_plane, api_ingress").expect("parses");
        assert_eq!(node.roles(), ["api_ingress", "control_plane"]);
        assert_eq!(node.process_class(), "custom_node");
        assert_eq!(
            NodeRoles::parse("scheduler")
                .expect("parses")
                .process_class(),
            "scheduler_node"
        );
        assert_eq!(NodeRoles::default().process_class(), "server_http_node");
        assert!(NodeRoles::parse("api_ingress,bogus").is_err());
        assert!(NodeRoles::parse("").is_err());
    }

    #[test]
    fn wrong_node_rejection_names_the_missing_roles() {
        let node = NodeRoles::parse("scheduler").expect("parses");
        let policy = crate::router::policy(crate::router::Op::StartWorkflow);
        let e = topology(&node, &policy).expect_err("rejected");
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.reason, "topology_role_unavailable");
        assert_eq!(
            e.extra["missing_roles"],
            json!(["api_ingress", "control_plane"])
        );
        assert_eq!(e.extra["current_process_class"], json!("scheduler_node"));
        let health = crate::router::policy(crate::router::Op::Health);
        assert!(topology(&node, &health).is_ok());
    }

    #[test]
    fn blockers_follow_the_checks() {
        let mut snap = ReadySnapshot::unchecked();
        assert!(snap.blocked_by().is_empty());
        snap.checked = true;
        snap.schema = Some(SchemaStatus {
            stored: Some(99),
            expected: 1,
        });
        assert_eq!(snap.blocked_by(), vec!["migrations"]);
        assert!(snap.remediation().contains("99"));
        snap.storage_ok = false;
        assert_eq!(snap.blocked_by(), vec!["database"]);
    }
}
