//! Keel's HTTP front: the Durable Workflow HTTP+JSON API (control plane v2, worker
//! protocol 1.x) on hyper, over the engine.
#![warn(missing_docs)]

pub mod audit;
pub mod auth;
mod builder;
pub mod call;
pub mod cli;
mod connections;
mod discovery;
pub mod error;
mod gates;
mod handlers;
pub mod limits;
pub mod metrics;
pub mod quota;
mod reload;
mod router;
pub mod server;
pub mod tls;
mod trail;
mod ui;
mod validate;

pub use auth::{AuthConfig, Role};
pub use builder::{ServeError, Server, ServerBuilder};
pub use gates::NodeRoles;
pub use limits::ConnectionLimits;
pub use quota::{QuotaConfig, Rate};
pub use router::{table as route_table, Access, RouteInfo};
pub use server::{serve, serve_with_limits, AppState};
pub use tls::TlsConfig;
