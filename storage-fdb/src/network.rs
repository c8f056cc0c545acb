//! The FoundationDB client's network thread: started once per process, stopped at exit.
//!
//! The client library runs all its I/O on one network thread that can be set up only
//! once per process, and it must be stopped (and joined) before the process exits, or
//! the library's static destructors race with it. Rather than hand the caller a guard it
//! must keep alive in `main` and that `std::process::exit` would skip, the first
//! [`FdbStore::open`](crate::FdbStore::open) starts the thread and registers an `atexit`
//! hook that stops and joins it: every way out of the process that runs exit handlers
//! (returning from `main`, `process::exit`, the test harness finishing) stops the
//! network first, and aborting needs nothing. Stores opened later share the thread.
// The client's start and stop calls are `unsafe` only because of that exit rule, which
// the `atexit` hook below keeps; no other unsafe code is in this crate.
#![allow(unsafe_code)]

use std::sync::{Mutex, OnceLock};

use foundationdb::api::{FdbApiBuilder, NetworkAutoStop};
use foundationdb::options::NetworkOption;
use keel_storage::{StorageError, MAX_KEY_BYTES};

use crate::subspace::MAX_PREFIX_BYTES;

/// The running network, taken (stopped and joined) by the exit hook.
static NETWORK: Mutex<Option<NetworkAutoStop>> = Mutex::new(None);

/// Starts the network thread unless it runs already. The outcome of the first attempt
/// is kept: the client cannot set its network up twice, so a failure is final.
pub fn ensure_started() -> Result<(), StorageError> {
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    STARTED
        .get_or_init(start)
        .clone()
        .map_err(StorageError::Unavailable)
}

fn start() -> Result<(), String> {
    let builder = FdbApiBuilder::default().build().map_err(|e| {
        format!(
            "the FoundationDB client library does not support API version {} ({e}); \
             install libfdb_c 7.3 or later",
            FdbApiBuilder::default().runtime_version()
        )
    })?;
    // Keel keys up to MAX_KEY_BYTES plus the subspace prefix: the client checks key sizes
    // itself (the servers do not), so raising its limit by the longest prefix keeps the
    // contract's limit exact; the store refuses longer Keel keys itself.
    let builder = builder
        .set_option(NetworkOption::Knob(format!(
            "key_size_limit={}",
            MAX_KEY_BYTES + MAX_PREFIX_BYTES
        )))
        .map_err(|e| format!("cannot configure the FoundationDB client: {e}"))?;
    // SAFETY: the returned guard is stopped before the process exits by `stop_at_exit`,
    // registered right below; if registering fails, the guard is dropped (stopping the
    // network) before returning.
    let guard = unsafe { builder.boot() }
        .map_err(|e| format!("cannot start the FoundationDB network thread: {e}"))?;
    // SAFETY: `stop_at_exit` is an `extern "C" fn` without arguments that does not unwind
    // (a panic inside it aborts, as in any `extern "C"` function).
    if unsafe { libc::atexit(stop_at_exit) } != 0 {
        drop(guard);
        return Err("cannot register the FoundationDB network's exit hook".into());
    }
    *NETWORK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(guard);
    Ok(())
}

extern "C" fn stop_at_exit() {
    let guard = NETWORK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    drop(guard);
}
