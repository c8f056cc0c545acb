//! Keel's benchmarks: criterion benches (`benches/`) and the `keel-bench` end-to-end load
//! generator (`src/bin/keel-bench.rs`), which drives any server that speaks the Durable
//! Workflow HTTP protocol like a fleet of workers.
