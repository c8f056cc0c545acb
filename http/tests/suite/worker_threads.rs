//! `keel serve --worker-threads`: the runtime serves requests on the threads it is given,
//! by default one per CPU.

use crate::process::{get, serve};

/// The `keel_runtime_worker_threads` value of a scrape.
fn worker_threads(port: u16) -> usize {
    let metrics = get(port, "/metrics");
    let line = metrics
        .lines()
        .find(|l| l.starts_with("keel_runtime_worker_threads "))
        .unwrap_or_else(|| panic!("no worker-thread gauge in:\n{metrics}"));
    line.rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a count: {line}"))
}

#[test]
fn the_server_runs_the_worker_threads_it_is_given() {
    let (_server, port, _) = serve(&["--storage", "memory", "--worker-threads", "3"]);
    assert_eq!(worker_threads(port), 3);
}

#[test]
fn by_default_the_server_runs_one_worker_thread_per_cpu() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (_server, port, _) = serve(&["--storage", "memory"]);
    assert_eq!(worker_threads(port), cpus);
}
