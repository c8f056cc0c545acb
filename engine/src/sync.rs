//! The locks and atomics of the matching core, from one place: std normally, loom's
//! model-checked versions under `cfg(loom)`. (`Arc` stays std's: reference counting is
//! not what the models check, and loom's `Arc` lacks `Hash`/`Eq` for key types.)

pub use std::sync::Arc;

#[cfg(loom)]
pub use loom::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex, MutexGuard,
};
#[cfg(not(loom))]
pub use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex, MutexGuard,
};

/// Locks `m`, treating poisoning as the invariant violation it is.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
        .expect("invariant: matching locks are never poisoned (no panics while held)")
}
