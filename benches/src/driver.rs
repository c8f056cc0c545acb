//! The run: starters keep `--concurrency` workflows in flight, the bench's workflow and
//! activity pollers execute them through the worker protocol, a progress line reports
//! on stderr, and after the measured window every completed workflow is read back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use keel_engine::avro::{self, AvroValue};
use keel_protocol_conformance::{Client, Reply};
use serde_json::{json, Value};
use tokio::sync::{oneshot, Semaphore};

use crate::args::{Args, Scenario};
use crate::report::{percentile, Failures, Report, ServerUsage};
use crate::scenario::{self, Decision, Plan, Task};

/// How long a poll waits for a task on the server.
const POLL_SECONDS: u64 = 1;
/// The pause after a poll that failed, so a server that is down is not spun on.
const POLL_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Every this often the progress line.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Failure messages kept for the report.
const FAILURE_EXAMPLES: usize = 5;
/// Read-backs in flight at once after the run.
const VERIFY_CONCURRENCY: usize = 32;

/// How one workflow ended, as its worker saw it.
type Outcome = Result<(), String>;

struct Shared {
    api: Client,
    plan: Plan,
    worker_id: String,
    /// Workflows started and not yet closed: who waits for each one's outcome.
    inflight: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    latencies: Mutex<Vec<Duration>>,
    /// Completed workflows and the output each must have.
    completed: Mutex<Vec<(String, String)>>,
    done: AtomicU64,
    started: AtomicU64,
    failures: Failures,
    examples: Mutex<Vec<String>>,
    request_errors: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn note_failure(&self, message: String) {
        let mut examples = self.examples.lock().expect("bench lock");
        if examples.len() < FAILURE_EXAMPLES && !examples.contains(&message) {
            examples.push(message);
        }
    }
}

/// Runs the bench `args` describes; `progress` prints the progress line on stderr.
pub async fn run(args: &Args, progress: bool) -> Result<Report, String> {
    let started_at_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let queue = args.queue.clone().unwrap_or_else(|| {
        format!(
            "keel-bench-{}-{}",
            std::process::id(),
            started_at_unix.as_millis()
        )
    });
    let mut api = Client::new(&args.url, &args.namespace)
        .with_timeout(Duration::from_secs(120))
        .with_tokens(
            args.token.clone(),
            args.worker_token.clone().or_else(|| args.token.clone()),
        );
    if let Some(path) = &args.ca_cert {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        api = api.trusting(&pem)?;
    }
    let worker_id = format!("keel-bench-{}", std::process::id());
    let shared = Arc::new(Shared {
        api,
        plan: Plan {
            scenario: args.scenario,
            queue: queue.clone(),
            timer_seconds: args.timer_seconds,
        },
        worker_id: worker_id.clone(),
        inflight: Mutex::new(HashMap::new()),
        latencies: Mutex::new(Vec::new()),
        completed: Mutex::new(Vec::new()),
        done: AtomicU64::new(0),
        started: AtomicU64::new(0),
        failures: Failures::default(),
        examples: Mutex::new(Vec::new()),
        request_errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    register(&shared, &queue, &args.url).await?;

    let cpu_before = args.server_pid.and_then(proc_cpu_and_rss);
    if let (Some(pid), None) = (args.server_pid, cpu_before) {
        eprintln!("keel-bench: cannot read /proc/{pid}/stat: no server CPU figures");
    }
    let began = Instant::now();
    let mut pollers = Vec::new();
    for _ in 0..args.workflow_pollers {
        pollers.push(tokio::spawn(workflow_poller(shared.clone())));
    }
    if args.scenario == Scenario::OneActivity {
        for _ in 0..args.activity_pollers {
            pollers.push(tokio::spawn(activity_poller(shared.clone())));
        }
    }
    let reporter = progress.then(|| tokio::spawn(report_progress(shared.clone(), began)));

    let concurrency = u32::try_from(args.concurrency).unwrap_or(u32::MAX);
    let gate = Arc::new(Semaphore::new(concurrency as usize));
    let deadline = args.duration.map(Duration::from_secs_f64);
    let timeout = Duration::from_secs_f64(args.workflow_timeout);
    let mut i: u64 = 0;
    loop {
        let more = match deadline {
            Some(d) => began.elapsed() < d,
            None => i < args.workflows,
        };
        if !more {
            break;
        }
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .expect("invariant: the semaphore is never closed");
        if deadline.is_some_and(|d| began.elapsed() >= d) {
            break;
        }
        let (shared, scenario_, timer) = (shared.clone(), args.scenario, args.timer_seconds);
        let index = i;
        tokio::spawn(async move {
            one_workflow(&shared, scenario_, index, timeout, timer).await;
            // The permit bounds workflows in flight: released when this one closed.
            drop(permit);
        });
        i += 1;
    }
    // Every permit back: every workflow started has completed, failed or timed out.
    let _all = gate
        .acquire_many(concurrency)
        .await
        .expect("invariant: the semaphore is never closed");
    let elapsed = began.elapsed();
    let cpu_after = args.server_pid.and_then(proc_cpu_and_rss);
    shared.stop.store(true, Ordering::Relaxed);
    if let Some(r) = reporter {
        r.abort();
    }
    for p in pollers {
        let _ = p.await;
    }

    let completed = std::mem::take(&mut *shared.completed.lock().expect("bench lock"));
    let verified = if args.no_verify {
        None
    } else {
        if progress {
            eprintln!("verifying {} completed workflows ...", completed.len());
        }
        Some(verify(&shared, completed).await)
    };
    let mut latencies = std::mem::take(&mut *shared.latencies.lock().expect("bench lock"));
    latencies.sort();
    let done = shared.done.load(Ordering::Relaxed);
    let server = match (args.server_pid, cpu_before, cpu_after) {
        (Some(pid), Some((before, _)), Some((after, rss))) => Some(ServerUsage {
            pid,
            cpu_seconds: after - before,
            cpu_ms_per_workflow: (after - before) * 1e3 / done.max(1) as f64,
            rss_bytes: rss,
        }),
        _ => None,
    };
    let examples = shared.examples.lock().expect("bench lock").clone();
    Ok(Report {
        scenario: args.scenario,
        queue,
        started: shared.started.load(Ordering::Relaxed),
        completed: done,
        verified,
        failures: shared.failures.snapshot(),
        failure_examples: examples,
        request_errors: shared.request_errors.load(Ordering::Relaxed),
        wall: elapsed,
        latencies,
        server,
    })
}

async fn register(shared: &Shared, queue: &str, url: &str) -> Result<(), String> {
    let body = json!({"worker_id": shared.worker_id, "task_queue": queue, "runtime": "rust",
        "sdk_version": concat!("keel-bench/", env!("CARGO_PKG_VERSION")),
        "supported_workflow_types": [scenario::WORKFLOW_TYPE, scenario::CHILD_TYPE],
        "supported_activity_types": [scenario::ACTIVITY_TYPE]});
    match shared
        .api
        .worker(Method::POST, "/worker/register", Some(&body))
        .await
    {
        Ok(Reply {
            status: 200 | 201, ..
        }) => Ok(()),
        Ok(r) => Err(format!(
            "the server refused the bench worker's registration: HTTP {} {}",
            r.status,
            reason_of(&r)
        )),
        Err(e) => Err(format!("cannot reach {url}: {e}")),
    }
}

fn reason_of(r: &Reply) -> String {
    let reason = r.reason();
    if reason.is_empty() {
        r.body["message"].as_str().unwrap_or_default().to_string()
    } else {
        reason.to_string()
    }
}

/// Starts workflow `index`, signals it (signal scenario), and waits for its outcome.
async fn one_workflow(
    shared: &Shared,
    scenario_: Scenario,
    index: u64,
    timeout: Duration,
    timer_seconds: u64,
) {
    let id = format!("{}-{index}", shared.plan.queue);
    let input = avro::envelope(&AvroValue::Array(vec![
        AvroValue::String("keel-bench".into()),
        AvroValue::Long(index as i64),
    ]));
    let (tx, rx) = oneshot::channel();
    shared
        .inflight
        .lock()
        .expect("bench lock")
        .insert(id.clone(), tx);
    let began = Instant::now();
    shared.started.fetch_add(1, Ordering::Relaxed);
    let body = json!({"workflow_id": id, "workflow_type": scenario::WORKFLOW_TYPE,
        "task_queue": shared.plan.queue, "input": input,
        "execution_timeout_seconds": 3600, "run_timeout_seconds": 600});
    let start = shared
        .api
        .control(Method::POST, "/workflows", Some(&body))
        .await;
    if let Err(message) = expect_status(start, &[201], "start") {
        shared.inflight.lock().expect("bench lock").remove(&id);
        shared.failures.start.fetch_add(1, Ordering::Relaxed);
        shared.note_failure(message);
        return;
    }
    let mut expected = scenario::blob(&input).unwrap_or_default().to_string();
    if scenario_ == Scenario::Signal {
        let value = avro::envelope(&AvroValue::Array(vec![
            AvroValue::String("keel-bench-signal".into()),
            AvroValue::Long(index as i64),
        ]));
        expected = scenario::blob(&value).unwrap_or_default().to_string();
        let body = json!({"input": value, "request_id": format!("{id}-signal")});
        let path = format!("/workflows/{id}/signal/{}", scenario::SIGNAL_NAME);
        let sent = shared.api.control(Method::POST, &path, Some(&body)).await;
        if let Err(message) = expect_status(sent, &[200, 202], "signal") {
            shared.inflight.lock().expect("bench lock").remove(&id);
            shared.failures.signal.fetch_add(1, Ordering::Relaxed);
            shared.note_failure(message);
            return;
        }
    }
    let outcome = tokio::time::timeout(timeout, rx).await;
    let latency = began.elapsed();
    match outcome {
        Ok(Ok(Ok(()))) => {
            if scenario_ == Scenario::Timer && latency < Duration::from_secs(timer_seconds) {
                shared.failures.wrong_result.fetch_add(1, Ordering::Relaxed);
                shared.note_failure(format!(
                    "{id}: completed {latency:?} after its start, before its {timer_seconds} s timer"
                ));
                return;
            }
            shared.latencies.lock().expect("bench lock").push(latency);
            shared
                .completed
                .lock()
                .expect("bench lock")
                .push((id, expected));
            shared.done.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Ok(Err(message))) => {
            shared
                .failures
                .workflow_failed
                .fetch_add(1, Ordering::Relaxed);
            shared.note_failure(format!("{id}: {message}"));
        }
        Ok(Err(_)) | Err(_) => {
            shared.inflight.lock().expect("bench lock").remove(&id);
            shared.failures.timed_out.fetch_add(1, Ordering::Relaxed);
            shared.note_failure(format!("{id}: not completed within {timeout:?}"));
        }
    }
}

fn expect_status(reply: Result<Reply, String>, ok: &[u16], what: &str) -> Result<Reply, String> {
    match reply {
        Ok(r) if ok.contains(&r.status) => Ok(r),
        Ok(r) => Err(format!("{what}: HTTP {} {}", r.status, reason_of(&r))),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// A worker-plane POST whose 200 answer is read into `T` (the fields `T` does not name are
/// skipped, not built: parsing each answer whole into JSON values was most of the
/// generator's own CPU); any other answer is an error naming `what`.
async fn worker_post<T: serde::de::DeserializeOwned>(
    shared: &Shared,
    path: &str,
    body: &Value,
    what: &str,
) -> Result<T, String> {
    match shared.api.worker_as(Method::POST, path, Some(body)).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(reply)) => Err(format!(
            "{what}: HTTP {} {}",
            reply.status,
            reason_of(&reply)
        )),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// The fields of a poll's answer the generator reads.
#[derive(serde::Deserialize)]
struct PollAnswer {
    #[serde(default)]
    task: Option<Task>,
}

/// The fields of a history page the generator reads.
#[derive(serde::Deserialize)]
struct HistoryPage {
    #[serde(default)]
    history_events: Vec<Value>,
    #[serde(default)]
    next_history_page_token: Option<String>,
}

/// The whole history of `task`: its first page and the rest through the history route.
async fn history(shared: &Shared, task: &mut Task) -> Result<Vec<Value>, String> {
    let mut events = std::mem::take(&mut task.history_events);
    let mut token = task.next_history_page_token.take();
    let id = &task.task_id;
    let mut seen = std::collections::HashSet::new();
    while let Some(t) = token {
        if !seen.insert(t.clone()) {
            return Err("the history page token repeated".into());
        }
        let body = json!({"next_history_page_token": t, "lease_owner": shared.worker_id,
            "workflow_task_attempt": task.workflow_task_attempt});
        let path = format!("/worker/workflow-tasks/{id}/history");
        let page: HistoryPage = worker_post(shared, &path, &body, "history").await?;
        events.extend(page.history_events);
        token = page.next_history_page_token;
    }
    Ok(events)
}

/// One long-poll of `path`: the task handed out, or `None` when none came or the poll
/// failed (counted, then paused).
async fn poll_once(shared: &Shared, path: &str, poll: &Value) -> Option<Task> {
    match worker_post::<PollAnswer>(shared, path, poll, "poll").await {
        Ok(answer) => answer.task,
        Err(_) => {
            shared.request_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(POLL_ERROR_PAUSE).await;
            None
        }
    }
}

async fn workflow_poller(shared: Arc<Shared>) {
    let poll = json!({"worker_id": shared.worker_id, "task_queue": shared.plan.queue,
        "timeout_seconds": POLL_SECONDS});
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(mut task) = poll_once(&shared, "/worker/workflow-tasks/poll", &poll).await else {
            continue;
        };
        let decision = match history(&shared, &mut task).await {
            Ok(events) => scenario::decide(&shared.plan, &task, &events),
            Err(e) => {
                // The lease lapses and the task comes back.
                shared.request_errors.fetch_add(1, Ordering::Relaxed);
                shared.note_failure(format!("workflow task {}: {e}", task.task_id));
                continue;
            }
        };
        let (id, lease) = (
            &task.task_id,
            (&shared.worker_id, &task.workflow_task_attempt),
        );
        let (path, body) = match &decision {
            Decision::Commands(commands) => (
                format!("/worker/workflow-tasks/{id}/complete"),
                json!({"lease_owner": lease.0, "workflow_task_attempt": lease.1, "commands": commands}),
            ),
            Decision::Wait => (
                format!("/worker/workflow-tasks/{id}/fail"),
                json!({"lease_owner": lease.0, "workflow_task_attempt": lease.1,
                    "failure": {"message": "Workflow task waiting for scheduled history.",
                        "type": "WorkflowTaskWaitingForHistory"}}),
            ),
        };
        let done =
            worker_post::<serde::de::IgnoredAny>(&shared, &path, &body, "workflow task completion")
                .await;
        match done {
            Ok(_) => {
                if let Some(outcome) = decision.outcome() {
                    let waiter = shared
                        .inflight
                        .lock()
                        .expect("bench lock")
                        .remove(&task.workflow_id);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(outcome);
                    }
                }
            }
            Err(message) => {
                shared.request_errors.fetch_add(1, Ordering::Relaxed);
                shared.note_failure(message);
            }
        }
    }
}

async fn activity_poller(shared: Arc<Shared>) {
    let poll = json!({"worker_id": shared.worker_id, "task_queue": shared.plan.queue,
        "timeout_seconds": POLL_SECONDS});
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(task) = poll_once(&shared, "/worker/activity-tasks/poll", &poll).await else {
            continue;
        };
        // bench.echo: the result is the arguments.
        let body = json!({"activity_attempt_id": task.activity_attempt_id,
            "lease_owner": shared.worker_id, "result": task.arguments});
        let path = format!("/worker/activity-tasks/{}/complete", task.task_id);
        let done =
            worker_post::<serde::de::IgnoredAny>(&shared, &path, &body, "activity completion")
                .await;
        if let Err(message) = done {
            shared.request_errors.fetch_add(1, Ordering::Relaxed);
            shared.note_failure(message);
        }
    }
}

/// Reads every completed workflow back: status `completed` and the expected output.
/// Returns how many passed; the others count as wrong results.
async fn verify(shared: &Arc<Shared>, completed: Vec<(String, String)>) -> u64 {
    let gate = Arc::new(Semaphore::new(VERIFY_CONCURRENCY));
    let mut checks = tokio::task::JoinSet::new();
    for (id, expected) in completed {
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .expect("invariant: the semaphore is never closed");
        let shared = shared.clone();
        checks.spawn(async move {
            let _permit = permit;
            let reply = shared
                .api
                .control(Method::GET, &format!("/workflows/{id}"), None)
                .await;
            let problem = match expect_status(reply, &[200], "read back") {
                Err(e) => Some(e),
                Ok(r) if r.body["status"] != "completed" => {
                    Some(format!("status {} after completing", r.body["status"]))
                }
                Ok(r) => {
                    let out = if r.body["output_envelope"].is_null() {
                        &r.body["output"]
                    } else {
                        &r.body["output_envelope"]
                    };
                    (scenario::blob(out) != Some(expected.as_str()))
                        .then(|| "output is not the expected payload".to_string())
                }
            };
            match problem {
                None => true,
                Some(p) => {
                    shared.failures.wrong_result.fetch_add(1, Ordering::Relaxed);
                    shared.note_failure(format!("{id}: {p}"));
                    false
                }
            }
        });
    }
    let mut passed = 0;
    while let Some(ok) = checks.join_next().await {
        if ok.unwrap_or(false) {
            passed += 1;
        }
    }
    passed
}

async fn report_progress(shared: Arc<Shared>, began: Instant) {
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    loop {
        tick.tick().await;
        let done = shared.done.load(Ordering::Relaxed);
        let mut sorted = shared.latencies.lock().expect("bench lock").clone();
        sorted.sort();
        let secs = began.elapsed().as_secs_f64();
        eprintln!(
            "[{secs:>6.1} s] done {done}, {:.0} wf/s, p50 {:.1} ms, p99 {:.1} ms, failed {}",
            done as f64 / secs.max(1e-9),
            percentile(&sorted, 0.50).as_secs_f64() * 1e3,
            percentile(&sorted, 0.99).as_secs_f64() * 1e3,
            shared.failures.total()
        );
    }
}

/// A process's CPU seconds (user + system) and RSS bytes, from `/proc/PID/stat`.
fn proc_cpu_and_rss(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based) of the whole line: 11 and 12 here.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    Some((ticks / 100.0, rss_pages * 4096))
}
