//! The `keel` binary: `keel serve` runs the server on the storage backend chosen with
//! `--storage` (the embedded RocksDB by default). Everything is in the library
//! ([`keel_http::cli`], over [`keel_http::Server`]).

use std::process::ExitCode;

/// mimalloc instead of glibc malloc: the request path allocates many small, short-lived
/// buffers (JSON values, keys, hyper headers), where glibc's arena bookkeeping showed
/// up as ~15 % of server CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    keel_http::cli::main()
}
