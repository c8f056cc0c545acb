//! Keel's HTTP front: the Durable Workflow HTTP+JSON API (control plane v2, worker
//! protocol 1.x) on hyper, over the engine.
#![warn(missing_docs)]

mod control;
mod discovery;
pub mod error;
mod router;
pub mod server;
mod validate;
mod worker;

pub use server::{serve, AppState};
