//! A Keel built around a store of one's own, through the public entry point only: the
//! recipe of `conformance/README.md` ("Run the whole server on your store").
//!
//! It takes every flag of `keel serve` (`keel_http::cli::main_with_store`) and serves the
//! store `open_my_store` returns for the `--data-dir` directory. Here that is the in-repo
//! RocksDB backend, standing in for yours: replace the body of `open_my_store`. Then run
//! the SDK end-to-end suite against it:
//!
//! ```text
//! cargo build -p keel-http --example keel_on_my_store
//! KEEL_BIN=$PWD/target/debug/examples/keel_on_my_store .venv/bin/pytest tests/e2e -q
//! ```

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use keel_http::cli::{rocksdb_stats, OpenedStore};
use keel_storage_rocksdb::{RocksOptions, RocksStore};

/// Opens (creating if missing) your store in `dir`. The counters are optional; with them
/// `/metrics` shows commits and `/api/ready` reports a spell of refused writes (a full
/// disk, which `tests/e2e/test_disk_full.py` checks): give your store's own with
/// `with_stats`, or leave them out.
fn open_my_store(dir: &Path) -> Result<OpenedStore, String> {
    let store = Arc::new(
        RocksStore::open(dir, RocksOptions::default())
            .map_err(|e| format!("cannot open the store in {}: {e}", dir.display()))?,
    );
    Ok(OpenedStore::new(store.clone()).with_stats(rocksdb_stats(store)))
}

fn main() -> ExitCode {
    keel_http::cli::main_with_store(Box::new(open_my_store))
}
