//! A run's results: the text summary and the JSON document (`--json`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use crate::args::{Args, Scenario};

/// The JSON document's schema name.
pub const SCHEMA: &str = "keel.bench.result.v1";

/// Durable transitions per one-activity workflow: start, workflow-task lease, complete
/// (schedule), activity lease, activity complete, workflow-task lease, complete.
const ONE_ACTIVITY_TRANSITIONS: f64 = 7.0;

/// Failures by kind, counted while the run goes.
#[derive(Debug, Default)]
pub(crate) struct Failures {
    /// The start was refused or unanswered.
    pub start: AtomicU64,
    /// The signal scenario's signal was refused or unanswered.
    pub signal: AtomicU64,
    /// The bench's worker failed the workflow: its history was not what the scenario
    /// expects.
    pub workflow_failed: AtomicU64,
    /// Not completed within --workflow-timeout.
    pub timed_out: AtomicU64,
    /// Completed, but read back with another status or output (or a timer completed
    /// before it could have fired).
    pub wrong_result: AtomicU64,
}

impl Failures {
    pub fn snapshot(&self) -> FailureCounts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FailureCounts {
            start: get(&self.start),
            signal: get(&self.signal),
            workflow_failed: get(&self.workflow_failed),
            timed_out: get(&self.timed_out),
            wrong_result: get(&self.wrong_result),
        }
    }

    pub fn total(&self) -> u64 {
        self.snapshot().total()
    }
}

/// Failures by kind (see [`Failures`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureCounts {
    pub start: u64,
    pub signal: u64,
    pub workflow_failed: u64,
    pub timed_out: u64,
    pub wrong_result: u64,
}

impl FailureCounts {
    pub fn total(&self) -> u64 {
        self.start + self.signal + self.workflow_failed + self.timed_out + self.wrong_result
    }
}

/// The server's CPU and memory over the measured window (`--server-pid`).
#[derive(Debug, Clone)]
pub struct ServerUsage {
    pub pid: u32,
    pub cpu_seconds: f64,
    pub cpu_ms_per_workflow: f64,
    pub rss_bytes: u64,
}

/// One run's results.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: Scenario,
    pub queue: String,
    /// Workflows the bench tried to start.
    pub started: u64,
    /// Workflows whose worker completed them (before the read-back).
    pub completed: u64,
    /// Completed workflows read back with the expected status and output (`None`:
    /// `--no-verify`).
    pub verified: Option<u64>,
    pub failures: FailureCounts,
    /// A few failure messages, for a first look.
    pub failure_examples: Vec<String>,
    /// Worker-plane requests that failed and were retried (polls, completions); a
    /// workflow they hurt shows up among the failures.
    pub request_errors: u64,
    /// The measured window: first start to the last workflow closed.
    pub wall: Duration,
    /// Start-to-result latencies of the completed workflows, sorted.
    pub latencies: Vec<Duration>,
    pub server: Option<ServerUsage>,
}

/// The `p` quantile (0..=1) of `sorted`, nearest rank; zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Report {
    /// Failed workflows, of every kind.
    pub fn failed(&self) -> u64 {
        self.failures.total()
    }

    /// Completed workflows per second of the measured window.
    pub fn throughput(&self) -> f64 {
        self.completed as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn latency_ms(&self, p: f64) -> f64 {
        ms(percentile(&self.latencies, p))
    }

    /// The text summary.
    pub fn text(&self, args: &Args) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!("scenario: {}", self.scenario.name()));
        line(format!(
            "workflows: {} in {:.2} s (concurrency {})",
            self.completed,
            self.wall.as_secs_f64(),
            args.concurrency
        ));
        let rate = self.throughput();
        if self.scenario == Scenario::OneActivity {
            line(format!(
                "throughput: {rate:.0} workflows/s, {:.0} state transitions/s",
                rate * ONE_ACTIVITY_TRANSITIONS
            ));
        } else {
            line(format!("throughput: {rate:.0} workflows/s"));
        }
        line(format!(
            "start-to-result latency ms: p50 {:.1}, p90 {:.1}, p95 {:.1}, p99 {:.1}, max {:.1}",
            self.latency_ms(0.50),
            self.latency_ms(0.90),
            self.latency_ms(0.95),
            self.latency_ms(0.99),
            self.latency_ms(1.0)
        ));
        if let Some(s) = &self.server {
            line(format!(
                "server: {:.3} ms CPU per workflow, RSS {:.1} MiB",
                s.cpu_ms_per_workflow,
                s.rss_bytes as f64 / (1024.0 * 1024.0)
            ));
        }
        match self.verified {
            Some(v) => line(format!(
                "verified: {v} of {} completed workflows read back completed with the expected output",
                self.completed
            )),
            None => line("verified: skipped (--no-verify)".into()),
        }
        let f = &self.failures;
        line(format!(
            "failures: {} (start {}, signal {}, workflow failed {}, timed out {}, wrong result {})",
            self.failed(),
            f.start,
            f.signal,
            f.workflow_failed,
            f.timed_out,
            f.wrong_result
        ));
        for e in &self.failure_examples {
            line(format!("  e.g. {e}"));
        }
        line(format!("request errors (retried): {}", self.request_errors));
        out
    }

    /// The JSON document (`--json`): results and the parameters that produced them.
    pub fn to_json(&self, args: &Args) -> Value {
        let rate = self.throughput();
        let f = &self.failures;
        let n = self.latencies.len().max(1) as f64;
        let mean = self
            .latencies
            .iter()
            .map(Duration::as_secs_f64)
            .sum::<f64>()
            / n;
        json!({
            "schema": SCHEMA,
            "scenario": self.scenario.name(),
            "parameters": {
                "url": args.url,
                "namespace": args.namespace,
                "queue": self.queue,
                "workflows": if args.duration.is_some() { Value::Null } else { json!(args.workflows) },
                "duration_seconds": args.duration,
                "concurrency": args.concurrency,
                "workflow_pollers": args.workflow_pollers,
                "activity_pollers": args.activity_pollers,
                "timer_seconds": args.timer_seconds,
                "workflow_timeout_seconds": args.workflow_timeout,
                "verify": !args.no_verify,
                "server_pid": args.server_pid,
            },
            "workflows": {
                "started": self.started,
                "completed": self.completed,
                "verified": self.verified,
                "failed": self.failed(),
            },
            "failures": {
                "start": f.start,
                "signal": f.signal,
                "workflow_failed": f.workflow_failed,
                "timed_out": f.timed_out,
                "wrong_result": f.wrong_result,
                "examples": self.failure_examples,
            },
            "request_errors": self.request_errors,
            "wall_seconds": (self.wall.as_secs_f64() * 1e3).round() / 1e3,
            "throughput": {
                "workflows_per_second": (rate * 10.0).round() / 10.0,
                "state_transitions_per_second": (self.scenario == Scenario::OneActivity)
                    .then(|| (rate * ONE_ACTIVITY_TRANSITIONS).round()),
            },
            "latency_ms": {
                "p50": self.latency_ms(0.50),
                "p90": self.latency_ms(0.90),
                "p95": self.latency_ms(0.95),
                "p99": self.latency_ms(0.99),
                "max": self.latency_ms(1.0),
                "mean": (mean * 1e6).round() / 1e3,
            },
            "server": self.server.as_ref().map(|s| json!({
                "pid": s.pid,
                "cpu_seconds": (s.cpu_seconds * 1e3).round() / 1e3,
                "cpu_ms_per_workflow": (s.cpu_ms_per_workflow * 1e3).round() / 1e3,
                "rss_mib": (s.rss_bytes as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            })),
        })
    }
}
