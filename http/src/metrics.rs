//! Prometheus metrics: the process-wide recorder (installed once), request metrics per
//! route, and the `/metrics` scrape.
//!
//! Series and their labels (every label is a bounded vocabulary; never an id):
//!
//! | series | type | labels |
//! |---|---|---|
//! | `keel_http_requests_total` | counter | `route` (operation name), `status` |
//! | `keel_http_request_duration_seconds` | histogram | `route` |
//! | `keel_polls_total` | counter | `kind`, `outcome` (`leased`, `empty`, `error`) |
//! | `keel_lease_expiries_total` | counter | `kind` |
//! | `keel_storage_commit_seconds` | histogram | — |
//! | `keel_storage_commits_total` | counter | `outcome` |
//! | `keel_task_backlog` / `keel_task_leased` | gauge | `namespace`, `queue`, `kind` |
//! | `keel_task_queues` | gauge | — (distinct queues seen) |
//! | `keel_timers_in_memory` | gauge | — (a single-node store's lease-scoped timers: task leases and attempt timeouts) |
//! | `keel_parked_polls` | gauge | — (long-polls waiting on this node) |
//! | `keel_storage_group_commits_total`, `keel_storage_committed_transactions_total`, `keel_storage_conflicts_total` | counter | — |
//! | `keel_storage_group_commit_batch_size_mean`, `..._max` | gauge | — |
//! | `keel_storage_backend_info` | gauge (always 1) | `backend`, `durable`, `multi_node` |
//! | `keel_storage_writable` | gauge (1, or 0 while writes are refused, e.g. on a full disk) | — |
//! | `keel_storage_write_failures_total` | counter (failed durable writes) | — |
//! | `keel_storage_synced_writes_total`, `keel_storage_written_keys_total`, `keel_storage_written_bytes_total` | counter (fsynced group commits; key writes and bytes committed: per workflow, the write amplification) | — |
//! | `keel_storage_memory_bytes` | gauge (the backend's own accounting) | `kind` (RocksDB: `memtables`, `table_readers`, `block_cache`) |
//! | `keel_storage_block_cache_capacity_bytes` | gauge (the configured bound of `block_cache`) | — |
//! | `keel_auth_token_reloads_total` | counter (SIGHUP or auth-file change) | `outcome` (`applied`, `refused`) |
//! | `keel_http_refusals_total` | counter (401, 403 and 429 answers) | `route`, `status`, `reason` (`unauthorized`, `forbidden`, `rate_limited`, `long_poll_limit_reached`) |
//! | `keel_audit_write_failures_total` | counter (audit trail entries not written) | — |
//! | `keel_runtime_worker_threads` | gauge (the runtime's request threads, `--worker-threads`) | — |
//!
//! Queue names are caller-chosen, so the backlog gauges are computed fresh at each
//! scrape and rendered directly (not kept in the registry): the
//! [`MAX_QUEUE_SERIES`] queues with the most ready tasks get their own series, the rest
//! are summed into `namespace="_other",queue="_other"`. A scrape therefore never holds
//! more than `MAX_QUEUE_SERIES + 1` series per kind, and a queue that went away does not
//! linger.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use keel_engine::metrics::HandleCache;
use keel_engine::model::TaskKind;
use keel_engine::storage::Capabilities;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use keel_engine::Engine;

/// Most queues with their own backlog series (per kind).
pub const MAX_QUEUE_SERIES: usize = 50;
/// Most namespaces whose queues a scrape reads.
pub const MAX_SCRAPE_NAMESPACES: usize = 100;

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Counters of a storage backend's commit path, sampled at scrape time.
#[derive(Debug, Clone, Default)]
pub struct StorageStats {
    /// Transactions with writes that committed.
    pub commits: u64,
    /// Transactions refused by the conflict check.
    pub conflicts: u64,
    /// Group commits (durable writes) issued.
    pub batches: u64,
    /// Most transactions in one group commit.
    pub largest_batch: u64,
    /// Durable writes that failed; each started a spell of refused writes.
    pub write_failures: u64,
    /// Group commits written with a sync (fsync).
    pub synced_writes: u64,
    /// Key writes committed (puts, deletes, atomic adds).
    pub written_keys: u64,
    /// Bytes of committed writes.
    pub written_bytes: u64,
    /// Set while the backend refuses writes (and still serves reads).
    pub write_refusal: Option<WriteRefusal>,
    /// The backend's memory by part (`kind` label, bytes), where it accounts for it.
    pub memory: Vec<(&'static str, u64)>,
    /// The capacity of its block cache, where it has one.
    pub block_cache_capacity: Option<u64>,
}

/// A spell of refused writes, e.g. on a full disk, as `/api/ready` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRefusal {
    /// `disk_full` or `storage_write_failed`.
    pub reason: &'static str,
    /// The backend's message for the write that failed.
    pub message: String,
    /// How long writes have been refused so far.
    pub refused_for: Duration,
}

/// A source of [`StorageStats`] (the backend's counters).
pub type StatsSource = Box<dyn Fn() -> StorageStats + Send + Sync>;

/// The storage block discovery documents carry: the backend's name and what it declares
/// about itself in its [`Capabilities`] (the one place a backend says so).
pub fn storage_json(capabilities: &Capabilities) -> serde_json::Value {
    serde_json::json!({
        "backend": capabilities.backend,
        "durable": capabilities.durable,
        "multi_node": capabilities.multi_node,
    })
}

/// Installs the Prometheus recorder once per process and returns its handle (`None` if
/// another recorder was installed first: metrics are then not served).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(h) => {
                    keel_engine::metrics::recorder_installed();
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
                    None
                }
            }
        })
        .as_ref()
}

/// Records one answered request (labels borrowed, not built, on every request).
pub fn record_request(route: &'static str, status: u16, elapsed: Duration) {
    static HANDLES: HandleCache<(&'static str, u16), (Counter, Histogram)> = HandleCache::new();
    let (requests, seconds) = HANDLES.get((route, status), || {
        (
            metrics::counter!(
                "keel_http_requests_total",
                "route" => route,
                "status" => status_label(status)
            ),
            metrics::histogram!("keel_http_request_duration_seconds", "route" => route),
        )
    });
    requests.increment(1);
    seconds.record(elapsed.as_secs_f64());
}

/// Counts one refused request (401, 403 or 429) of `route`.
pub fn count_refusal(route: &'static str, status: u16, reason: &'static str) {
    metrics::counter!(
        "keel_http_refusals_total",
        "route" => route,
        "status" => status_label(status),
        "reason" => reason
    )
    .increment(1);
}

/// A status code as a label: the common ones without an allocation.
fn status_label(status: u16) -> metrics::SharedString {
    let common = match status {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        409 => "409",
        422 => "422",
        429 => "429",
        500 => "500",
        503 => "503",
        _ => return metrics::SharedString::from(status.to_string()),
    };
    metrics::SharedString::from(common)
}

/// Records one token reload (`applied` or `refused`).
pub fn count_token_reload(outcome: &'static str) {
    metrics::counter!("keel_auth_token_reloads_total", "outcome" => outcome).increment(1);
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn kind_label(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Workflow => "workflow",
        TaskKind::Activity => "activity",
    }
}

/// Renders the whole scrape: the registry, then the sampled series.
pub async fn scrape(
    engine: &Engine,
    backend: Option<&Capabilities>,
    storage_stats: Option<&StatsSource>,
) -> String {
    let mut out = match handle() {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => String::new(),
    };
    let _ = write!(
        out,
        "# HELP keel_runtime_worker_threads The runtime's threads serving requests.\n\
         # TYPE keel_runtime_worker_threads gauge\n\
         keel_runtime_worker_threads {}\n",
        tokio::runtime::Handle::current().metrics().num_workers()
    );
    if let Some(b) = backend {
        let _ = write!(
            out,
            "# HELP keel_storage_backend_info The storage backend in use (always 1).\n\
             # TYPE keel_storage_backend_info gauge\n\
             keel_storage_backend_info{{backend=\"{}\",durable=\"{}\",multi_node=\"{}\"}} 1\n",
            escape(b.backend),
            b.durable,
            b.multi_node
        );
    }
    if let Some(stats) = storage_stats {
        let s = stats();
        let mean = if s.batches == 0 {
            0.0
        } else {
            s.commits as f64 / s.batches as f64
        };
        let _ = write!(
            out,
            "# HELP keel_storage_group_commits_total Group-commit writes issued.\n\
             # TYPE keel_storage_group_commits_total counter\n\
             keel_storage_group_commits_total {}\n\
             # HELP keel_storage_committed_transactions_total Transactions with writes committed.\n\
             # TYPE keel_storage_committed_transactions_total counter\n\
             keel_storage_committed_transactions_total {}\n\
             # HELP keel_storage_conflicts_total Transactions refused by the conflict check.\n\
             # TYPE keel_storage_conflicts_total counter\n\
             keel_storage_conflicts_total {}\n\
             # HELP keel_storage_group_commit_batch_size_mean Mean transactions per group commit since start.\n\
             # TYPE keel_storage_group_commit_batch_size_mean gauge\n\
             keel_storage_group_commit_batch_size_mean {mean}\n\
             # HELP keel_storage_group_commit_batch_size_max Most transactions in one group commit since start.\n\
             # TYPE keel_storage_group_commit_batch_size_max gauge\n\
             keel_storage_group_commit_batch_size_max {}\n",
            s.batches, s.commits, s.conflicts, s.largest_batch
        );
        let _ = write!(
            out,
            "# HELP keel_storage_writable Whether the store accepts writes (0 while it refuses them after a failed write, e.g. a full disk; reads are still served).\n\
             # TYPE keel_storage_writable gauge\n\
             keel_storage_writable {}\n\
             # HELP keel_storage_write_failures_total Durable writes that failed (each refused writes until a probe write succeeded).\n\
             # TYPE keel_storage_write_failures_total counter\n\
             keel_storage_write_failures_total {}\n\
             # HELP keel_storage_synced_writes_total Group commits written with a sync.\n\
             # TYPE keel_storage_synced_writes_total counter\n\
             keel_storage_synced_writes_total {}\n\
             # HELP keel_storage_written_keys_total Key writes committed (puts, deletes, atomic adds).\n\
             # TYPE keel_storage_written_keys_total counter\n\
             keel_storage_written_keys_total {}\n\
             # HELP keel_storage_written_bytes_total Bytes of committed writes.\n\
             # TYPE keel_storage_written_bytes_total counter\n\
             keel_storage_written_bytes_total {}\n",
            u8::from(s.write_refusal.is_none()),
            s.write_failures,
            s.synced_writes,
            s.written_keys,
            s.written_bytes
        );
        if !s.memory.is_empty() {
            out.push_str(
                "# HELP keel_storage_memory_bytes The storage backend's memory by part, by its own accounting.\n\
                 # TYPE keel_storage_memory_bytes gauge\n",
            );
            for (kind, bytes) in &s.memory {
                let _ = writeln!(out, "keel_storage_memory_bytes{{kind=\"{kind}\"}} {bytes}");
            }
        }
        if let Some(capacity) = s.block_cache_capacity {
            let _ = write!(
                out,
                "# HELP keel_storage_block_cache_capacity_bytes The configured size of the storage backend's block cache.\n\
                 # TYPE keel_storage_block_cache_capacity_bytes gauge\n\
                 keel_storage_block_cache_capacity_bytes {capacity}\n"
            );
        }
    }
    render_backlog(engine, &mut out).await;
    out
}

async fn render_backlog(engine: &Engine, out: &mut String) {
    let Ok(namespaces) = engine.list_namespaces(MAX_SCRAPE_NAMESPACES).await else {
        return;
    };
    let mut rows: Vec<(String, String, TaskKind, u64, u64)> = Vec::new();
    for ns in namespaces {
        if let Ok(counts) = engine.queue_counts(&ns.name).await {
            rows.extend(
                counts
                    .into_iter()
                    .map(|c| (ns.name.clone(), c.queue, c.kind, c.ready, c.leased)),
            );
        }
    }
    let queues = rows.len();
    rows.sort_by(|a, b| b.3.cmp(&a.3).then(b.4.cmp(&a.4)));
    let _ = writeln!(
        out,
        "# HELP keel_task_queues Distinct (namespace, queue, kind) with task counters.\n\
         # TYPE keel_task_queues gauge\nkeel_task_queues {queues}\n\
         # HELP keel_timers_in_memory Timers armed in memory only (a single-node store's lease-scoped timers: task leases and activity attempt timeouts).\n\
         # TYPE keel_timers_in_memory gauge\nkeel_timers_in_memory {}\n\
         # HELP keel_parked_polls Long-polls parked on this node, waiting for a task.\n\
         # TYPE keel_parked_polls gauge\nkeel_parked_polls {}",
        engine.in_memory_timers(),
        engine.parked_polls()
    );
    for (name, help, pick) in [
        (
            "keel_task_backlog",
            "Tasks ready to be polled, per queue (top queues; the rest under _other).",
            3usize,
        ),
        ("keel_task_leased", "Tasks leased to workers, per queue.", 4),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for kind in [TaskKind::Workflow, TaskKind::Activity] {
            let mut other = 0u64;
            let mut shown = 0usize;
            for row in rows.iter().filter(|r| r.2 == kind) {
                let value = if pick == 3 { row.3 } else { row.4 };
                if shown < MAX_QUEUE_SERIES {
                    shown += 1;
                    let _ = writeln!(
                        out,
                        "{name}{{namespace=\"{}\",queue=\"{}\",kind=\"{}\"}} {value}",
                        escape(&row.0),
                        escape(&row.1),
                        kind_label(kind)
                    );
                } else {
                    other += value;
                }
            }
            if other > 0 {
                let _ = writeln!(
                    out,
                    "{name}{{namespace=\"_other\",queue=\"_other\",kind=\"{}\"}} {other}",
                    kind_label(kind)
                );
            }
        }
    }
}
