//! The locks and atomics of the matching core, from one place: std normally, loom's
//! model-checked versions under `cfg(loom)`.

#[cfg(loom)]
pub use loom::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex, MutexGuard,
};
#[cfg(not(loom))]
pub use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex, MutexGuard,
};

/// Locks `m`, treating poisoning as the invariant violation it is.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
        .expect("invariant: matching locks are never poisoned (no panics while held)")
}
