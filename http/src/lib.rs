//! Keel's HTTP front: the Durable Workflow HTTP+JSON API (control plane v2, worker
//! protocol 1.x) on hyper, over the engine.
#![warn(missing_docs)]

mod auth;
mod commands;
mod control;
mod discovery;
pub mod error;
mod fleet;
mod gates;
pub mod metrics;
mod namespaces;
mod operator;
mod probes;
mod query_tasks;
mod reads;
mod router;
mod schedules;
pub mod server;
mod system;
mod validate;
mod worker;

pub use auth::{AuthConfig, Role};
pub use gates::NodeRoles;
pub use router::{table as route_table, Access, RouteInfo};
pub use server::{serve, AppState};
