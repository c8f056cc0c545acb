//! The engine's settings: what the operator configures, read by the kernel and the
//! subsystems alike.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::cluster::ClusterConfig;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How long a workflow task lease lasts unless renewed.
    pub workflow_task_lease: Duration,
    /// How long an activity task lease lasts unless renewed.
    pub activity_task_lease: Duration,
    /// The namespace created at first start.
    pub default_namespace: String,
    /// Longest long-poll a worker may ask for.
    pub max_poll_timeout: Duration,
    /// Bounds on parked long-polls.
    pub park_limits: crate::matching::ParkLimits,
    /// Admission: at most this many leased tasks per queue and kind (`None`: unbounded).
    pub max_leases_per_queue: Option<u64>,
    /// Whether a transaction that makes a task ready leases it to a poller parked on this
    /// node that accepts it before its commit, saving the poll's own lease transaction
    /// (not with `max_leases_per_queue`).
    pub eager_leases: bool,
    /// Whether this node fires timers and schedules (the `scheduler` role); with other
    /// nodes on the store, only while it holds the scheduler lease.
    pub scheduler: bool,
    /// Set when several nodes share the store (see `cluster`); `None`: this node is alone.
    pub cluster: Option<ClusterConfig>,
    /// Where external payload blobs may live (the drivers' directories and disks).
    pub payloads: PayloadStores,
    /// Which hosts `invocable_http` service bindings may call, and their request timeout.
    pub service_http: ServiceHttpConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workflow_task_lease: Duration::from_secs(300),
            activity_task_lease: Duration::from_secs(300),
            default_namespace: "default".into(),
            max_poll_timeout: Duration::from_secs(60),
            park_limits: crate::matching::ParkLimits::default(),
            max_leases_per_queue: None,
            eager_leases: true,
            scheduler: true,
            cluster: None,
            payloads: PayloadStores::default(),
            service_http: ServiceHttpConfig::default(),
        }
    }
}

/// Where this server may keep blobs: operator configuration, not namespace data.
#[derive(Debug, Clone, Default)]
pub struct PayloadStores {
    /// The `local` driver's directory (`None`: the driver is unavailable).
    pub local_dir: Option<PathBuf>,
    /// Named disks backing `s3`, `gcs` and `azure` policies.
    pub disks: BTreeMap<String, PathBuf>,
    /// Uploads are refused with 503 `storage_pressure` (except those completing a leased
    /// task) while the blob filesystem has less free space than this.
    pub reserve_bytes: u64,
}

/// Outbound settings of `invocable_http` bindings.
#[derive(Debug, Clone)]
pub struct ServiceHttpConfig {
    /// Hosts an `invocable_http` binding may call (`HOST` or `HOST:PORT`).
    pub allow: Vec<String>,
    /// Per-request timeout unless the binding names `timeout_seconds`.
    pub request_timeout: Duration,
}

impl Default for ServiceHttpConfig {
    fn default() -> Self {
        ServiceHttpConfig {
            allow: Vec::new(),
            request_timeout: Duration::from_secs(10),
        }
    }
}
