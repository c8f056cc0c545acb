//! Benchmarks live here (criterion benches and the `keel-bench` load generator).
