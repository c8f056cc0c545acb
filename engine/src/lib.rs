//! Keel's engine: the domain tables over the storage contract (`keel-storage`), workflow semantics,
//! the matching and lease core, and the durable timer service. No HTTP, no backend code.

pub mod avro;
pub mod census;
pub mod clock;
pub mod cluster;
pub mod error;
mod fleet;
pub mod history;
pub mod ids;
mod kernel;
pub mod keys;
pub mod matching;
pub mod metrics;
pub mod model;
pub mod namespaces;
pub mod operator;
pub mod payloads;
pub mod queries;
pub mod schedules;
pub mod services;
pub mod sessions;
pub mod sync;
pub mod system;
pub mod tables;
pub mod timers;
pub mod transfer;
mod wiring;
pub mod workflow;

/// The storage contract the engine is built on (the `keel-storage` crate).
pub use keel_storage as storage;

pub use error::{Error, RejectKind, Result};
pub use fleet::{
    parse_deployment_name, Blockage, DeploymentAction, DeploymentOutcome, DeploymentState,
    WorkerDeployment, WORKER_STALE_AFTER_MS,
};
pub use kernel::{Engine, EngineConfig, QueueCounts};
