//! Keel's FoundationDB backend: several Keel nodes share one FoundationDB cluster.
//!
//! Not yet implemented: this crate reserves its place in the workspace. The storage
//! contract in `keel_storage` already respects FoundationDB's limits (5 s and
//! 10 MB transactions, 100 kB values), and `keel_storage::simulated` exercises
//! the engine under them, so the backend maps the contract one-to-one onto FDB
//! transactions. The client library is opt-in behind the `fdb` feature.
#![warn(missing_docs)]

/// The backend's name as reported in `cluster/info` once it exists.
pub const BACKEND_NAME: &str = "foundationdb";
