//! Keel's FoundationDB backend: the storage contract of [`keel_storage`] mapped onto a
//! FoundationDB 7.3 cluster (client API version 730), so that Keel's data lives in a
//! replicated, fault-tolerant store several Keel nodes can share.
//!
//! The store itself ([`FdbStore`]) needs the FoundationDB client library `libfdb_c` and
//! is compiled only with the `fdb` cargo feature. The key layout ([`Subspace`]) and the
//! error mapping are plain Rust and build and test everywhere.
//!
//! # How the contract maps
//!
//! | contract | FoundationDB |
//! |---|---|
//! | [`KvStore::begin`](keel_storage::KvStore::begin), read version | a transaction and its read version (fetched at begin) |
//! | `get`, `get_range` | reads with read-your-writes; each adds its key or the range it covered (up to the last returned key when the limit cut it) to the read conflict set |
//! | `get_snapshot`, [`ReadOptions::snapshot`](keel_storage::ReadOptions) | snapshot reads (they still see the transaction's own writes) |
//! | `get_range` limit and reverse | the range read's row limit and `reverse`, streamed batch by batch until the limit |
//! | `set`, `clear`, `clear_range` | the same mutations |
//! | `atomic_add` | the `ADD` mutation on little-endian integers, the contract's counter encoding; no read conflict |
//! | `add_read_conflict` | a read conflict range `[key, key\x00)` |
//! | `commit` | commit; the committed version (0 for read-only transactions) |
//! | `watch(key, since)` | an FDB watch set by a transaction reading at `since`, so a change after `since` fires it at once |
//! | `relax_durability` | nothing: every FDB commit is durable once acknowledged |
//! | `shutdown` | refuses later transactions; nothing needs flushing |
//!
//! Errors are mapped by FoundationDB error code and the client's own predicates, never by
//! message: `not_committed` (1020) → `Conflict`, `commit_unknown_result` (1021) and
//! anything the client calls maybe-committed → `CommitUnknown`, `transaction_too_old`
//! (1007) → `TransactionTooOld`, `transaction_too_large` / `key_too_large` /
//! `value_too_large` (2101–2103) → `LimitExceeded`, timeouts (1004, 1031) →
//! `Unavailable` before a commit and `CommitUnknown` during one (a timed-out commit may
//! still apply), other errors the client retries (`future_version`, `process_behind`,
//! throttling, ...) → `Unavailable`, the rest → `Backend` with the FDB error as source.
//!
//! Where FoundationDB differs from the letter of the contract:
//!
//! * A watch fires when the key's *value* changes: a write that stores the value it
//!   already had does not fire it. Counters written with `atomic_add` always change.
//! * A watch on a `since` older than the cluster's 5 s version window, or one the cluster
//!   drops or asks to retry, resolves at once: a spurious wake-up, which the contract
//!   allows (the caller reads again).
//! * FDB counts a transaction's size with the subspace prefix and its conflict ranges
//!   included, so a transaction writing just under `MAX_TXN_BYTES` may be refused.
//! * `atomic_add` on a value that is not 8 bytes long applies FDB's rule (the value is
//!   padded or truncated to 8 bytes) where the in-memory oracle starts from 0.
//!
//! # Subspaces
//!
//! Every key lives under the tuple-encoded prefix of one operator-chosen name
//! (`--fdb-subspace`, default [`DEFAULT_SUBSPACE`]), so several Keel deployments, or
//! tests, share one cluster without touching each other, and
//! [`FdbStore::clear_subspace`] deletes one of them exactly. Keys up to `MAX_KEY_BYTES`
//! are accepted under any subspace: the client's key-size limit is raised by the
//! longest prefix, and the store refuses longer Keel keys itself.
//!
//! # The network thread
//!
//! The client library runs one network thread per process; the first
//! [`FdbStore::open`] starts it and an exit hook stops it (see `network.rs`), so a
//! program opens stores and holds nothing else.
#![warn(missing_docs)]

mod subspace;

#[cfg(any(feature = "fdb", test))]
mod errors;
#[cfg(feature = "fdb")]
mod network;
#[cfg(feature = "fdb")]
mod store;

#[cfg(feature = "fdb")]
pub use store::{FdbOptions, FdbStore, FdbTxn};
pub use subspace::{InvalidSubspace, Subspace, DEFAULT_SUBSPACE, MAX_NAME_BYTES, MAX_PREFIX_BYTES};

/// The backend's name in `cluster/info`, `/api/ready` and `/metrics`.
pub const BACKEND_NAME: &str = "foundationdb";

/// Whether this build includes the FoundationDB store (the `fdb` feature).
pub const COMPILED: bool = cfg!(feature = "fdb");
