//! Keel's benchmarks: criterion benches (`benches/`) and the `keel-bench` load generator,
//! which drives any server that speaks the Durable Workflow HTTP protocol like a fleet of
//! workers: it starts workflows, runs them on its own Rust workers through the worker
//! protocol (one scenario per run: [`Scenario`]), checks each one ended with the expected
//! result, and reports throughput, start-to-result latency, failures and the server's CPU
//! per workflow. [`run_cli`] is the command line of both `keel-bench` and `keel bench`.
//!
//! ```text
//! keel-bench --url http://127.0.0.1:8080 --workflows 5000 --concurrency 200 \
//!            --workflow-pollers 64 --activity-pollers 64 [--server-pid PID] [--json]
//! ```

mod args;
mod driver;
mod report;
mod scenario;

use std::io::IsTerminal;

use clap::Parser;

pub use args::{Args, Scenario};
pub use driver::run;
pub use report::{FailureCounts, Report, ServerUsage, SCHEMA};

/// The command line: `args` with the program name first (`keel-bench ...`, or
/// `keel bench ...` from the `keel` binary). Returns the exit status: 0 every workflow
/// completed with the expected result, 1 failures or the bench could not run, 2 usage
/// (0 for `--help` and `--version`).
pub fn run_cli<I: IntoIterator<Item = String>>(args: I) -> i32 {
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keel-bench: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let progress = !args.quiet && std::io::stderr().is_terminal();
    let report = match runtime.block_on(run(&args, progress)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keel-bench: {e}");
            return 1;
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json(&args))
                .expect("invariant: a JSON value serializes")
        );
    } else {
        print!("{}", report.text(&args));
    }
    if report.failed() > 0 {
        eprintln!(
            "keel-bench: {} of {} workflows failed",
            report.failed(),
            report.started
        );
        1
    } else if report.completed == 0 {
        eprintln!("keel-bench: no workflow completed");
        1
    } else {
        0
    }
}
