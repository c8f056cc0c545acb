//! `keel-bench`: the load generator (the library's [`keel_benches::run_cli`]; `keel bench`
//! is the same command line). `keel-bench --help` lists the flags.

/// The same allocator as the server: the generator shares the server's cores, so its
/// own CPU per request matters.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(keel_benches::run_cli(std::env::args()));
}
