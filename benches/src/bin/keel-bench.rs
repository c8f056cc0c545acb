//! `keel-bench`: an end-to-end load generator that speaks the Durable Workflow HTTP
//! control and worker protocols like a real worker fleet.
//!
//! It starts N workflows (at most C starts in flight), runs worker loops that execute each
//! workflow as one activity and then a completion, and reports throughput, start-to-result
//! latency percentiles, and (with `--server-pid`) the server's CPU and RSS.
//!
//! ```text
//! keel-bench --url http://127.0.0.1:8080 --workflows 5000 --concurrency 200 \
//!            --workflow-pollers 64 --activity-pollers 64 [--server-pid PID]
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{json, Value};

/// The same allocator as the server: the generator shares the server's cores, so its
/// own CPU per request matters.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The argument list `["world"]`, Avro-encoded (sdk-protocol §3.2).
const INPUT_BLOB: &str = "wwHioz3/VYAiNwwCCgp3b3JsZAA=";
/// Durable transitions per one-activity workflow: start, workflow-task lease, complete
/// (schedule), activity lease, activity complete, workflow-task lease, complete.
const TRANSITIONS_PER_WORKFLOW: f64 = 7.0;

#[derive(Debug, Clone)]
struct Args {
    url: String,
    workflows: usize,
    concurrency: usize,
    workflow_pollers: usize,
    activity_pollers: usize,
    server_pid: Option<u32>,
    queue: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: "http://127.0.0.1:8080".into(),
        workflows: 1000,
        concurrency: 100,
        workflow_pollers: 64,
        activity_pollers: 64,
        server_pid: None,
        queue: format!("bench-{}", std::process::id()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--url" => args.url = value()?,
            "--workflows" => args.workflows = number(value()?)?,
            "--concurrency" => args.concurrency = number(value()?)?.max(1),
            "--workflow-pollers" => args.workflow_pollers = number(value()?)?.max(1),
            "--activity-pollers" => args.activity_pollers = number(value()?)?.max(1),
            "--server-pid" => args.server_pid = Some(number(value()?)? as u32),
            "--queue" => args.queue = value()?,
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    Ok(args)
}

const USAGE: &str = "keel-bench [--url URL] [--workflows N] [--concurrency C] \
[--workflow-pollers P] [--activity-pollers P] [--server-pid PID] [--queue NAME]";

/// The protocol client shared with `keel-conformance` (`conformance/protocol`): version
/// header and namespace per plane.
#[derive(Clone)]
struct Api(keel_protocol_conformance::Client);

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        worker: bool,
        body: &Value,
    ) -> Result<(u16, Value), String> {
        let plane = if worker {
            keel_protocol_conformance::Plane::Worker
        } else {
            keel_protocol_conformance::Plane::Control
        };
        let reply = self.0.call(plane, method, path, Some(body)).await?;
        Ok((reply.status, reply.body))
    }
}

struct Shared {
    /// Workflows in flight: when each started, and who waits for its completion.
    started_at: Mutex<HashMap<String, (Instant, tokio::sync::oneshot::Sender<()>)>>,
    latencies: Mutex<Vec<Duration>>,
    done: AtomicUsize,
    errors: AtomicUsize,
    total: usize,
}

fn history_has(task: &Value, event: &str) -> bool {
    task["history_events"]
        .as_array()
        .is_some_and(|events| events.iter().any(|e| e["event_type"] == event))
}

async fn workflow_poller(api: Api, shared: Arc<Shared>, worker_id: String, queue: String) {
    let input = json!({"codec": "avro", "blob": INPUT_BLOB});
    while shared.done.load(Ordering::Relaxed) < shared.total {
        let poll = json!({"worker_id": worker_id, "task_queue": queue, "timeout_seconds": 1});
        let Ok((200, reply)) = api
            .call(Method::POST, "/worker/workflow-tasks/poll", true, &poll)
            .await
        else {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let task = &reply["task"];
        if task.is_null() {
            continue;
        }
        let id = task["task_id"].as_str().unwrap_or_default();
        let lease = json!({"lease_owner": worker_id, "workflow_task_attempt": task["workflow_task_attempt"]});
        let completes = history_has(task, "ActivityCompleted");
        let (path, body) = if completes {
            let cmd = json!([{"type": "complete_workflow", "result": input}]);
            (
                format!("/worker/workflow-tasks/{id}/complete"),
                json!({"lease_owner": lease["lease_owner"], "workflow_task_attempt": lease["workflow_task_attempt"], "commands": cmd}),
            )
        } else if !history_has(task, "ActivityScheduled") {
            let cmd = json!([{"type": "schedule_activity", "activity_type": "bench.echo", "arguments": input, "queue": queue}]);
            (
                format!("/worker/workflow-tasks/{id}/complete"),
                json!({"lease_owner": lease["lease_owner"], "workflow_task_attempt": lease["workflow_task_attempt"], "commands": cmd}),
            )
        } else {
            let failure = json!({"message": "waiting", "type": "WorkflowTaskWaitingForHistory"});
            (
                format!("/worker/workflow-tasks/{id}/fail"),
                json!({"lease_owner": lease["lease_owner"], "workflow_task_attempt": lease["workflow_task_attempt"], "failure": failure}),
            )
        };
        match api.call(Method::POST, &path, true, &body).await {
            Ok((200, _)) if completes => {
                let wf = task["workflow_id"].as_str().unwrap_or_default();
                let started = shared.started_at.lock().expect("bench lock").remove(wf);
                if let Some((started, waiter)) = started {
                    shared
                        .latencies
                        .lock()
                        .expect("bench lock")
                        .push(started.elapsed());
                    let _ = waiter.send(());
                }
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
            Ok((200, _)) => {}
            _ => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn activity_poller(api: Api, shared: Arc<Shared>, worker_id: String, queue: String) {
    while shared.done.load(Ordering::Relaxed) < shared.total {
        let poll = json!({"worker_id": worker_id, "task_queue": queue, "timeout_seconds": 1});
        let Ok((200, reply)) = api
            .call(Method::POST, "/worker/activity-tasks/poll", true, &poll)
            .await
        else {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let task = &reply["task"];
        if task.is_null() {
            continue;
        }
        let id = task["task_id"].as_str().unwrap_or_default();
        let body = json!({"activity_attempt_id": task["activity_attempt_id"], "lease_owner": worker_id, "result": task["arguments"]});
        if !matches!(
            api.call(
                Method::POST,
                &format!("/worker/activity-tasks/{id}/complete"),
                true,
                &body
            )
            .await,
            Ok((200, _))
        ) {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn proc_cpu_and_rss(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based) of the whole line: 11 and 12 here.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    Some((ticks / 100.0, rss_pages * 4096))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let api = Api(keel_protocol_conformance::Client::new(&args.url, "default")
        .with_timeout(Duration::from_secs(120)));
    let shared = Arc::new(Shared {
        started_at: Mutex::new(HashMap::new()),
        latencies: Mutex::new(Vec::new()),
        done: AtomicUsize::new(0),
        errors: AtomicUsize::new(0),
        total: args.workflows,
    });
    let worker_id = format!("keel-bench-{}", std::process::id());
    let register = json!({"worker_id": worker_id, "task_queue": args.queue, "runtime": "rust",
        "supported_workflow_types": ["bench.workflow"], "supported_activity_types": ["bench.echo"]});
    match api
        .call(Method::POST, "/worker/register", true, &register)
        .await
    {
        Ok((200 | 201, _)) => {}
        other => {
            eprintln!("cannot register the bench worker: {other:?}");
            std::process::exit(1);
        }
    }
    let cpu_before = args.server_pid.and_then(proc_cpu_and_rss);
    let began = Instant::now();
    let mut pollers = Vec::new();
    for _ in 0..args.workflow_pollers {
        pollers.push(tokio::spawn(workflow_poller(
            api.clone(),
            shared.clone(),
            worker_id.clone(),
            args.queue.clone(),
        )));
    }
    for _ in 0..args.activity_pollers {
        pollers.push(tokio::spawn(activity_poller(
            api.clone(),
            shared.clone(),
            worker_id.clone(),
            args.queue.clone(),
        )));
    }
    let gate = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut starters = Vec::new();
    for i in 0..args.workflows {
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let (api, shared, queue) = (api.clone(), shared.clone(), args.queue.clone());
        starters.push(tokio::spawn(async move {
            let id = format!("{queue}-{i}");
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            shared.started_at.lock().expect("bench lock").insert(id.clone(), (Instant::now(), done_tx));
            let body = json!({"workflow_id": id, "workflow_type": "bench.workflow", "task_queue": queue,
                "input": {"codec": "avro", "blob": INPUT_BLOB}, "execution_timeout_seconds": 3600, "run_timeout_seconds": 600});
            if !matches!(api.call(Method::POST, "/workflows", false, &body).await, Ok((201, _))) {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
            // The permit bounds workflows in flight: released when this one completes.
            let _ = done_rx.await;
            drop(permit);
        }));
    }
    for s in starters {
        let _ = s.await;
    }
    for p in pollers {
        let _ = p.await;
    }
    let elapsed = began.elapsed();
    let cpu_after = args.server_pid.and_then(proc_cpu_and_rss);
    let mut latencies = shared.latencies.lock().expect("bench lock").clone();
    latencies.sort();
    let n = shared.done.load(Ordering::Relaxed);
    let rate = n as f64 / elapsed.as_secs_f64();
    println!(
        "workflows: {n} in {:.2} s (concurrency {})",
        elapsed.as_secs_f64(),
        args.concurrency
    );
    println!(
        "throughput: {rate:.0} workflows/s, {:.0} state transitions/s",
        rate * TRANSITIONS_PER_WORKFLOW
    );
    println!(
        "start-to-result latency ms: p50 {:.1}, p95 {:.1}, p99 {:.1}",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.95).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    if let (Some((before, _)), Some((after, rss))) = (cpu_before, cpu_after) {
        println!(
            "server: {:.3} ms CPU per workflow, RSS {:.1} MiB",
            (after - before) * 1e3 / n.max(1) as f64,
            rss as f64 / (1024.0 * 1024.0)
        );
    }
    println!("errors: {}", shared.errors.load(Ordering::Relaxed));
}
