//! The FoundationDB client's network thread: started once per process, never stopped.
//!
//! The client library runs all its I/O on one network thread that can be set up only
//! once per process. Its rule is that the thread must not run while the process's
//! static destructors do. Stopping it is no way out at exit: the thread's last act
//! reads the library's lazily built statics, which exit has destroyed by the time any
//! exit handler registered before them runs (measured: a SIGSEGV at the end of every
//! test binary that had stopped it from an `atexit` hook). So the first
//! [`FdbStore::open`](crate::FdbStore::open) starts the thread and registers an exit
//! hook that ends the process with its exit status at once (`_exit`, after flushing C's
//! stdio), skipping the destructors registered before the store was first opened:
//! every way out that runs exit handlers (returning from `main`, `process::exit`, the
//! test harness finishing) keeps its status, and aborting needs nothing. Nothing is
//! lost by not stopping: every acknowledged commit is durable on the cluster, and one
//! in flight has an unknown outcome however the process ends. Stores opened later share
//! the thread.
// The client's start call and the exit hook are `unsafe`; no other unsafe code is in
// this crate.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

use foundationdb::api::FdbApiBuilder;
use foundationdb::options::NetworkOption;
use keel_storage::{StorageError, MAX_KEY_BYTES};

use crate::subspace::MAX_PREFIX_BYTES;

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
    // SAFETY: the network must not run during static destructors: `end_at_exit`,
    // registered right below, ends the process before they run; if registering fails,
    // the guard is dropped (stopping the network) before returning, and no store exists.
    let guard = unsafe { builder.boot() }
        .map_err(|e| format!("cannot start the FoundationDB network thread: {e}"))?;
    // SAFETY: `end_at_exit` is an `extern "C" fn` that does not unwind and does not
    // return.
    if unsafe { on_exit(end_at_exit, std::ptr::null_mut()) } != 0 {
        drop(guard);
        return Err("cannot register the FoundationDB network's exit hook".into());
    }
    // Kept for the life of the process: dropping the guard would stop the network.
    std::mem::forget(guard);
    Ok(())
}

extern "C" {
    /// glibc's `atexit` that passes the exit status to the handler.
    fn on_exit(handler: extern "C" fn(c_int, *mut c_void), arg: *mut c_void) -> c_int;
}

/// Ends the process with `status` before the destructors registered earlier run (the
/// network thread is still running; see the module comment).
extern "C" fn end_at_exit(status: c_int, _arg: *mut c_void) {
    // SAFETY: flushing every C stdio stream and `_exit` are async-signal-safe enough for
    // an exit handler; Rust's own stdout was flushed when `main` returned.
    unsafe {
        libc::fflush(std::ptr::null_mut());
        libc::_exit(status);
    }
}
