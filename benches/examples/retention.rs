//! Closed runs under retention at scale (issue #18 §2), on RocksDB, through the engine
//! (no HTTP: the retention clock has to move by a month, so the engine runs on a manual
//! clock).
//!
//! 1. Fills a fresh store with `--runs` closed one-activity workflows, in rounds, and
//!    reports the engine's CPU per workflow of each round.
//! 2. Times `describe` and the first workflow-list page.
//! 3. Moves the clock past the namespace's retention and runs retention passes (1,000
//!    runs each, as `POST /api/system/retention/pass` does) until none is left: runs
//!    deleted per second and CPU per run.
//! 4. With the deletions' tombstones still in the store, times the list page again and
//!    runs one more round of workflows: the cost of work after a mass purge.
//!
//! ```sh
//! cargo run --release -p keel-benches --example retention -- --runs 100000
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use keel_engine::clock::{Clock, ManualClock};
use keel_engine::model::WorkerRecord;
use keel_engine::storage::KvStore;
use keel_engine::workflow::{ListQuery, Poll, StartWorkflow};
use keel_engine::{Engine, EngineConfig};
use keel_storage_rocksdb::RocksStore;
use serde_json::{json, Value};

const NS: &str = "default";
const START_MS: i64 = 1_780_000_000_000;
const DAY_MS: i64 = 86_400_000;

#[derive(Parser)]
#[command(about = "Closed runs under retention at scale, on RocksDB")]
struct Args {
    /// Closed workflows to store before the purge.
    #[arg(long, default_value_t = 100_000)]
    runs: usize,
    /// Workflows per round (one CPU figure per round).
    #[arg(long, default_value_t = 20_000)]
    round: usize,
    /// Workflows in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

/// This process's CPU time (user + system) from /proc.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("procfs");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat has a command")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SC_CLK_TCK is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

fn queue(lane: usize) -> String {
    format!("lane-{lane}")
}

/// Each lane's worker (a worker registers on one queue).
fn worker(lane: usize) -> String {
    format!("bench-worker-{lane}")
}

fn poll(lane: usize) -> Poll {
    Poll {
        namespace: NS.into(),
        worker_id: worker(lane),
        task_queue: queue(lane),
        timeout: Duration::ZERO,
        history_page_size: 500,
        poll_request_id: None,
    }
}

/// One one-activity workflow on the lane's own queue, from start to completion.
async fn one_workflow(engine: &Engine, lane: usize, id: String) {
    let blob = json!({"codec": "avro", "blob": "AA=="});
    engine
        .start_workflow(
            NS,
            StartWorkflow {
                workflow_id: Some(id),
                ..StartWorkflow::new("bench", queue(lane), blob.clone())
            },
        )
        .await
        .expect("start");
    let worker = worker(lane);
    let worker = worker.as_str();
    let complete = |task_id: String, attempt: u32, command: Value| async move {
        engine
            .complete_workflow_task(NS, &task_id, worker, attempt, &[command])
            .await
            .expect("workflow task completes");
    };
    let wf = engine
        .poll_workflow_task(&poll(lane))
        .await
        .expect("poll")
        .expect("first task");
    let schedule = json!({"type": "schedule_activity", "activity_type": "echo",
        "arguments": blob.clone(), "queue": queue(lane)});
    complete(wf.task_id, wf.workflow_task_attempt, schedule).await;
    let act = engine
        .poll_activity_task(&poll(lane))
        .await
        .expect("poll")
        .expect("activity");
    engine
        .complete_activity_task(NS, &act.task_id, &act.activity_attempt_id, worker, &blob)
        .await
        .expect("activity completes");
    let wf = engine
        .poll_workflow_task(&poll(lane))
        .await
        .expect("poll")
        .expect("second task");
    let done = json!({"type": "complete_workflow", "result": blob});
    complete(wf.task_id, wf.workflow_task_attempt, done).await;
}

/// Runs `count` workflows, `concurrency` lanes at a time; returns CPU ms per workflow.
async fn round(engine: &Engine, first: usize, count: usize, concurrency: usize) -> f64 {
    let cpu_before = cpu();
    let lanes: Vec<_> = (0..concurrency)
        .map(|lane| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut n = lane;
                while n < count {
                    one_workflow(&engine, lane, format!("wf-{}", first + n)).await;
                    n += concurrency;
                }
            })
        })
        .collect();
    for lane in lanes {
        lane.await.expect("lane");
    }
    (cpu() - cpu_before).as_secs_f64() * 1000.0 / count as f64
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

async fn list_page_ms(engine: &Engine) -> f64 {
    let query = ListQuery {
        workflow_type: None,
        status_bucket: None,
        query: None,
        page_size: 100,
        page_token: None,
    };
    let mut samples = Vec::new();
    for _ in 0..21 {
        let started = Instant::now();
        engine.list_workflows(NS, &query).await.expect("list");
        samples.push(started.elapsed());
    }
    median_ms(samples)
}

async fn describe_ms(engine: &Engine, first: usize, stored: usize) -> f64 {
    let mut samples = Vec::new();
    for i in 0..401 {
        let id = format!("wf-{}", first + (i * 7919) % stored);
        let started = Instant::now();
        engine.describe(NS, &id, None).await.expect("describe");
        samples.push(started.elapsed());
    }
    median_ms(samples)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn KvStore> =
        Arc::new(RocksStore::open(dir.path(), Default::default()).expect("RocksDB opens"));
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open(
        store,
        Arc::new(clock.clone()) as Arc<dyn Clock>,
        EngineConfig::default(),
    )
    .await
    .expect("engine opens");
    for lane in 0..args.concurrency {
        engine
            .register_worker(WorkerRecord {
                worker_id: worker(lane),
                namespace: NS.into(),
                task_queue: queue(lane),
                runtime: Some("bench".into()),
                sdk_version: None,
                build_id: None,
                supported_workflow_types: vec![],
                supported_activity_types: vec![],
                capabilities: vec![],
                registered_at_ms: START_MS,
                last_heartbeat_at_ms: START_MS,
            })
            .await
            .expect("worker registers");
    }

    println!("| phase | stored closed runs | figure |");
    println!("|---|---|---|");
    let mut stored = 0;
    while stored < args.runs {
        let count = args.round.min(args.runs - stored);
        let ms = round(&engine, stored, count, args.concurrency).await;
        stored += count;
        println!("| fill round | {stored} | {ms:.3} ms CPU per workflow |");
    }
    println!(
        "| describe p50 | {stored} | {:.3} ms |",
        describe_ms(&engine, 0, stored).await
    );
    println!(
        "| list page p50 (100 runs) | {stored} | {:.3} ms |",
        list_page_ms(&engine).await
    );

    clock.advance(Duration::from_millis((31 * DAY_MS) as u64));
    let (cpu_before, started) = (cpu(), Instant::now());
    let mut deleted = 0;
    loop {
        let out = engine
            .retention_pass(NS, 1000, None)
            .await
            .expect("retention pass");
        deleted += out.deleted_runs;
        if !out.more {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let purge_cpu = (cpu() - cpu_before).as_secs_f64() * 1000.0 / deleted.max(1) as f64;
    assert_eq!(
        deleted, args.runs,
        "every closed run past retention is deleted"
    );
    println!(
        "| retention passes | {} → 0 | {:.0} runs deleted per second, {purge_cpu:.3} ms CPU per run |",
        args.runs,
        deleted as f64 / elapsed
    );
    println!(
        "| list page p50, tombstones uncompacted | 0 | {:.3} ms |",
        list_page_ms(&engine).await
    );
    let count = args.round.min(args.runs);
    let ms = round(&engine, stored, count, args.concurrency).await;
    println!("| round after the purge | {count} | {ms:.3} ms CPU per workflow |");
    println!(
        "| describe p50 | {count} | {:.3} ms |",
        describe_ms(&engine, stored, count).await
    );
    println!(
        "| list page p50 (100 runs) | {count} | {:.3} ms |",
        list_page_ms(&engine).await
    );
    engine.stop().await;
}
