//! keel-bench's command line (`keel-bench --help`, `keel bench --help`).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

const AFTER_HELP: &str = "\
Each workflow is checked: the bench's worker fails a workflow whose history does not hold \
what the scenario expects, a workflow not completed within --workflow-timeout counts as \
timed out, and after the run every completed workflow is read back (GET /workflows/{id}: \
status completed, output the expected payload) unless --no-verify.

Exit status: 0 every workflow completed with the expected result, 1 some failed or the \
bench could not run (e.g. the worker registration was refused), 2 usage.

Examples:
  keel-bench --url http://127.0.0.1:8080 --workflows 5000 --concurrency 200
  keel-bench --url https://keel.example.com --token \"$KEEL_TOKEN\" --scenario signal --duration 60 --json";

/// keel-bench's flags.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "keel-bench",
    version,
    about = "Load generator for a Durable Workflow server: starts workflows and runs them on \
its own Rust workers through the worker protocol, then reports throughput, start-to-result \
latency, failures and (with --server-pid) the server's CPU per workflow",
    after_help = AFTER_HELP
)]
pub struct Args {
    /// Server URL (its origin; `/api` is appended).
    #[arg(
        long,
        env = "DURABLE_WORKFLOW_SERVER_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// Bearer token sent on both planes (also KEEL_TOKEN); never printed. It needs the
    /// roles to start and signal workflows and to run a worker.
    #[arg(long, env = "KEEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Bearer token for the worker plane when it differs from --token.
    #[arg(long, env = "KEEL_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<String>,
    /// PEM CA certificate(s) to trust for an https:// server besides the system's.
    #[arg(long, env = "KEEL_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Namespace the workflows run in.
    #[arg(
        long,
        short = 'n',
        env = "DURABLE_WORKFLOW_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    /// What each workflow does.
    #[arg(long, value_enum, default_value_t = Scenario::OneActivity)]
    pub scenario: Scenario,
    /// Workflows to run (ignored with --duration).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub workflows: u64,
    /// Start workflows for this many seconds instead of a fixed count, then wait for the
    /// ones in flight.
    #[arg(long, value_name = "SECONDS", value_parser = positive_seconds, conflicts_with = "workflows")]
    pub duration: Option<f64>,
    /// Workflows in flight at once (started and not yet completed).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub concurrency: u64,
    /// Workflow-task long-pollers (the bench's workflow worker).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub workflow_pollers: u64,
    /// Activity-task long-pollers (the bench's activity worker; used by one-activity).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub activity_pollers: u64,
    /// The server's process id on this machine: report its CPU per workflow and RSS
    /// (read from /proc, Linux).
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Task queue of the workflows and activities (default: keel-bench-PID-TIME, one per
    /// run, so leftovers of an earlier run are never picked up).
    #[arg(long, value_name = "NAME")]
    pub queue: Option<String>,
    /// The timer scenario's durable timer, in whole seconds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub timer_seconds: u64,
    /// A workflow not completed this many seconds after its start counts as failed
    /// (timed out).
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0, value_parser = positive_seconds)]
    pub workflow_timeout: f64,
    /// Skip reading every completed workflow back after the run.
    #[arg(long)]
    pub no_verify: bool,
    /// Print one JSON document of the results on stdout instead of the text summary.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr (it is shown only when stderr is a terminal).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// The workflow each run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// One activity run by the bench's activity worker, then completion with its result.
    OneActivity,
    /// A local activity the workflow worker runs itself, recorded with the completion.
    LocalActivity,
    /// A condition wait the bench's signal (sent right after the start) satisfies; the
    /// workflow completes with the signal's value.
    Signal,
    /// A durable timer of --timer-seconds, then completion.
    Timer,
    /// A child workflow that returns its input; the parent completes with its result.
    Child,
}

impl Scenario {
    /// The name on the command line and in the JSON document.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::OneActivity => "one-activity",
            Scenario::LocalActivity => "local-activity",
            Scenario::Signal => "signal",
            Scenario::Timer => "timer",
            Scenario::Child => "child",
        }
    }
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("expected a number of seconds above 0, got {s:?}")),
    }
}
