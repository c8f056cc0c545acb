//! Load driver for Keel through the official Rust SDK (`durable-workflow` 4.10.2, unmodified): the
//! Keel side of the SDK-to-SDK row in benches/peers/compare.sh, beside Restate driven by its Rust SDK
//! (../shared/perf/peers/restate-native). Same workload as there: one workflow = one durable step
//! that returns its 32-byte input; here the step is an activity task (`bench.echo`) of workflow
//! `bench.echo_wf`, both served by an SDK `Worker` on one queue.
//!
//! Roles (`--role`):
//! - `all` (default): worker and client in this one process (one tokio runtime);
//! - `worker`: only the worker, until killed (compare.sh runs it like this, so its CPU is counted
//!   apart, as Restate's SDK endpoint is);
//! - `client`: only the client (pass `--worker-pid` to count the worker's CPU).
//!
//! The client starts each workflow with `Client::start_workflow` and waits with
//! `WorkflowHandle::result(WorkflowResultOptions { poll_interval, .. })`, the SDK's normal API (a
//! describe request every interval until the run is closed). `--result-poll-ms` defaults to 50 ms;
//! the SDK's own default is 500 ms, which caps throughput near C / (latency + 250 ms).
//!
//! After a first untimed round trip (the worker may still be registering) and `--warmup` workflows,
//! each rep runs N workflows with at most C in flight (wall clock from the first start to the last
//! result) and prints one JSON line in the peer harness's format (appended to $RESULTS if set):
//! wf/s, p50/p99 latency under load, CPU ms per workflow of the server (`--server-pid`, process tree
//! from /proc/PID/stat utime+stime), the worker and this client, and, from Keel's `/metrics` scraped
//! before and after, HTTP requests per workflow by route (`describe_per_wf`: the describe routes).
//!
//!   keel-rust-sdk-bench [--role all|worker|client] [--url http://127.0.0.1:8380] [--n 1000]
//!       [--concurrency 100] [--warmup 200] [--reps 1] [--result-poll-ms 50] [--slots 100]
//!       [--poll-timeout-s 5] [--server-pid PID] [--worker-pid PID] [--label keel-rust-sdk]
//!       [--durable-mode fsync] [--payload-size 32] [--timeout-s 120]
//!
//! Exit status: 0 when every workflow returned its input, 3 when some did not (lines printed
//! anyway), 1 on setup failures.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use durable_workflow::{ActivityOptions, Client, Worker, WorkflowResultOptions};
use serde_json::{json, Map, Value};

const QUEUE: &str = "keel-rust-sdk-bench";
const WORKFLOW: &str = "bench.echo_wf";
const ACTIVITY: &str = "bench.echo";
const DRIVER: &str = "Rust SDK durable-workflow 4.10.2: client (start_workflow + handle.result) \
                      + Worker (workflow + activity)";

#[derive(Clone)]
struct Args {
    role: String,
    url: String,
    n: usize,
    concurrency: usize,
    warmup: usize,
    reps: usize,
    result_poll: Duration,
    slots: usize,
    poll_timeout: Duration,
    server_pid: Option<i32>,
    worker_pid: Option<i32>,
    label: String,
    durable_mode: String,
    payload_size: usize,
    timeout: Duration,
}

fn die(msg: &str) -> ! {
    eprintln!("keel-rust-sdk-bench: {msg}");
    std::process::exit(1);
}

fn parse_args() -> Args {
    let mut a = Args {
        role: "all".into(),
        url: "http://127.0.0.1:8380".into(),
        n: 1000,
        concurrency: 100,
        warmup: 200,
        reps: 1,
        result_poll: Duration::from_millis(50),
        slots: 100,
        poll_timeout: Duration::from_secs(5),
        server_pid: None,
        worker_pid: None,
        label: "keel-rust-sdk".into(),
        durable_mode: "fsync".into(),
        payload_size: 32,
        timeout: Duration::from_secs(120),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("see the comment at the top of tests/sdk-rust/src/bin/keel-rust-sdk-bench.rs");
            std::process::exit(0);
        }
        let val = it
            .next()
            .unwrap_or_else(|| die(&format!("{flag} needs a value")));
        let num = |v: &str| -> usize {
            v.parse()
                .unwrap_or_else(|_| die(&format!("{flag}: not a number: {v}")))
        };
        match flag.as_str() {
            "--role" => a.role = val,
            "--url" => a.url = val.trim_end_matches('/').to_string(),
            "--n" | "-n" => a.n = num(&val),
            "--concurrency" | "-c" => a.concurrency = num(&val),
            "--warmup" => a.warmup = num(&val),
            "--reps" => a.reps = num(&val),
            "--result-poll-ms" => a.result_poll = Duration::from_millis(num(&val) as u64),
            "--slots" => a.slots = num(&val),
            "--poll-timeout-s" => a.poll_timeout = Duration::from_secs(num(&val) as u64),
            "--server-pid" => a.server_pid = Some(num(&val) as i32),
            "--worker-pid" => a.worker_pid = Some(num(&val) as i32),
            "--label" => a.label = val,
            "--durable-mode" => a.durable_mode = val,
            "--payload-size" => a.payload_size = num(&val),
            "--timeout-s" => a.timeout = Duration::from_secs(num(&val) as u64),
            _ => die(&format!("unknown flag {flag}")),
        }
    }
    if !["all", "worker", "client"].contains(&a.role.as_str()) {
        die("--role must be all, worker or client");
    }
    if a.concurrency == 0 || a.reps == 0 || a.slots == 0 {
        die("--concurrency, --reps and --slots must be > 0");
    }
    if !(a.url.starts_with("http://127.0.0.1:") || a.url.starts_with("http://localhost:")) {
        die(&format!("{}: only http://127.0.0.1:PORT is allowed", a.url));
    }
    a
}

// ---------- /proc CPU accounting (as restate-driver and harness.proc_tree_cpu_seconds) ----------

/// Linux reports utime/stime in USER_HZ clock ticks: 100 per second on its supported platforms.
const CLK_TCK: f64 = 100.0;

/// (ppid, utime+stime ticks) of one process from /proc/PID/stat.
fn stat_of(pid: i32) -> Option<(i32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[1] = ppid (field 4), rest[11] = utime (14), rest[12] = stime (15)
    Some((
        f.get(1)?.parse().ok()?,
        f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    ))
}

/// CPU seconds of each named pid plus its live descendants.
fn tree_cpu_seconds(pids: &[(&'static str, i32)]) -> Vec<(&'static str, f64)> {
    let mut children: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    let mut ticks: BTreeMap<i32, u64> = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some((ppid, t)) = stat_of(pid) {
                ticks.insert(pid, t);
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    pids.iter()
        .map(|&(name, root)| {
            let (mut total, mut stack, mut seen) = (0u64, vec![root], 0usize);
            while let Some(p) = stack.pop() {
                seen += 1;
                if seen > 100_000 {
                    break;
                }
                total += ticks.get(&p).copied().unwrap_or(0);
                if let Some(c) = children.get(&p) {
                    stack.extend(c);
                }
            }
            (name, total as f64 / CLK_TCK)
        })
        .collect()
}

fn watched(a: &Args) -> Vec<(&'static str, i32)> {
    let mut v = Vec::new();
    if let Some(p) = a.server_pid {
        v.push(("server", p));
    }
    if let Some(p) = a.worker_pid {
        v.push(("worker", p));
    }
    v.push(("client", std::process::id() as i32));
    v
}

// ---------- Keel /metrics: requests by route ----------

/// `keel_http_requests_total` summed over status, by route.
async fn requests_by_route(http: &reqwest::Client, url: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(resp) = http.get(format!("{url}/metrics")).send().await else {
        return out;
    };
    let Ok(text) = resp.text().await else {
        return out;
    };
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("keel_http_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let route = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix("route="))
            .map(|r| r.trim_matches('"').to_string());
        if let (Some(route), Ok(v)) = (route, value.trim().parse::<f64>()) {
            *out.entry(route).or_insert(0.0) += v;
        }
    }
    out
}

// ---------- the worker ----------

fn worker(client: &Client, a: &Args) -> Worker {
    let mut w = Worker::new(client.clone(), QUEUE)
        .worker_id(format!("keel-rust-sdk-bench-{}", std::process::id()))
        .poll_timeout(a.poll_timeout)
        .max_concurrent_workflow_tasks(a.slots)
        .max_concurrent_activity_tasks(a.slots);
    // The step: an activity that returns its input.
    w.register_activity(ACTIVITY, |_ctx, args| async move {
        Ok(args.get(0).cloned().unwrap_or(Value::Null))
    });
    w.register_workflow(WORKFLOW, |ctx, input| async move {
        let options = ActivityOptions::new()
            .task_queue(QUEUE)
            .start_to_close_timeout(Duration::from_secs(30));
        ctx.activity_with_options(ACTIVITY, options, input).await
    });
    w
}

// ---------- the client ----------

/// One workflow: start, wait for the result with the SDK's `result`, check it equals the input.
async fn one(client: &Client, a: &Args, id: &str, payload: &str) -> Result<(), String> {
    let handle = client
        .start_workflow(WORKFLOW, QUEUE, id, json!([payload]))
        .await
        .map_err(|e| format!("start {id}: {e}"))?;
    let out = handle
        .result(WorkflowResultOptions {
            poll_interval: a.result_poll,
            timeout: a.timeout,
        })
        .await
        .map_err(|e| format!("result {id}: {e}"))?;
    match out {
        Value::String(s) if s == payload => Ok(()),
        other => Err(format!("{id}: unexpected result {other}")),
    }
}

/// `n` workflows with at most `c` in flight; (wall seconds, sorted latencies in s, errors).
async fn concurrent(
    client: &Client,
    a: &Args,
    phase: &str,
    n: usize,
    payload: &str,
) -> (f64, Vec<f64>, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let prefix = Arc::new(format!(
        "rsb-{}-{}-{phase}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    ));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency.min(n) {
        let (client, a, next, prefix, payload) = (
            client.clone(),
            a.clone(),
            next.clone(),
            prefix.clone(),
            payload.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errs, mut first_err) = (Vec::new(), 0usize, None);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                if let Err(e) = one(&client, &a, &format!("{prefix}-{i}"), &payload).await {
                    errs += 1;
                    first_err.get_or_insert(e);
                }
                lat.push(t.elapsed().as_secs_f64());
            }
            (lat, errs, first_err)
        }));
    }
    let (mut lat, mut errs, mut shown) = (Vec::with_capacity(n), 0, 0);
    for t in tasks {
        let (l, e, fe) = t.await.expect("driver task panicked");
        lat.extend(l);
        errs += e;
        if let Some(fe) = fe {
            if shown < 3 {
                eprintln!("error: {fe}");
                shown += 1;
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    lat.sort_by(|x, y| x.total_cmp(y));
    (wall, lat, errs)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[k.min(sorted.len() - 1)]
}

fn r(x: f64, nd: i32) -> f64 {
    let m = 10f64.powi(nd);
    (x * m).round() / m
}

fn emit(rec: &Map<String, Value>) {
    let line = Value::Object(rec.clone()).to_string();
    println!("{line}");
    let _ = std::io::stdout().flush();
    if let Ok(path) = std::env::var("RESULTS") {
        if !path.is_empty() {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
            {
                Ok(mut f) => {
                    let _ = writeln!(f, "{line}");
                }
                Err(e) => eprintln!("keel-rust-sdk-bench: cannot append to RESULTS={path}: {e}"),
            }
        }
    }
}

async fn run_throughput(client: &Client, http: &reqwest::Client, a: &Args, rep: usize) -> usize {
    let payload = "x".repeat(a.payload_size);
    let pids = watched(a);
    let m0 = requests_by_route(http, &a.url).await;
    let c0 = tree_cpu_seconds(&pids);
    let (wall, lat, errors) = concurrent(client, a, &format!("t{rep}"), a.n, &payload).await;
    let c1 = tree_cpu_seconds(&pids);
    let m1 = requests_by_route(http, &a.url).await;

    let mut m = Map::new();
    m.insert("system".into(), json!("keel"));
    m.insert("api".into(), json!("rust-sdk"));
    m.insert("label".into(), json!(a.label));
    m.insert("rep".into(), json!(rep));
    m.insert("kind".into(), json!("throughput"));
    m.insert("n".into(), json!(a.n));
    m.insert("concurrency".into(), json!(a.concurrency));
    m.insert("errors".into(), json!(errors));
    m.insert("wall_s".into(), json!(r(wall, 3)));
    m.insert("wf_per_s".into(), json!(r(a.n as f64 / wall, 1)));
    m.insert("load_p50_ms".into(), json!(r(pct(&lat, 50.0) * 1000.0, 2)));
    m.insert("load_p99_ms".into(), json!(r(pct(&lat, 99.0) * 1000.0, 2)));
    let (mut cpu_s, mut per) = (Map::new(), Map::new());
    for ((k, v0), (_, v1)) in c0.iter().zip(&c1) {
        cpu_s.insert(k.to_string(), json!(r(v1 - v0, 2)));
        per.insert(k.to_string(), json!(r((v1 - v0) * 1000.0 / a.n as f64, 3)));
    }
    m.insert("cpu_s".into(), Value::Object(cpu_s));
    m.insert("cpu_ms_per_wf".into(), Value::Object(per));
    if !m1.is_empty() {
        let mut routes = Map::new();
        let mut describe = 0.0;
        for (route, v1) in &m1 {
            let d = v1 - m0.get(route).copied().unwrap_or(0.0);
            if d > 0.0 && route != "prometheus_metrics" {
                routes.insert(route.clone(), json!(r(d / a.n as f64, 2)));
                if route.contains("describe") {
                    describe += d;
                }
            }
        }
        m.insert("requests_per_wf".into(), Value::Object(routes));
        m.insert("describe_per_wf".into(), json!(r(describe / a.n as f64, 2)));
    }
    let procs = if a.role == "all" {
        "one process"
    } else {
        "two processes"
    };
    m.insert(
        "driver".into(),
        json!(format!(
            "{DRIVER}, {procs}, result poll {} ms",
            a.result_poll.as_millis()
        )),
    );
    m.insert("durable".into(), json!(true));
    m.insert("durable_mode".into(), json!(a.durable_mode));
    m.insert(
        "result_poll_ms".into(),
        json!(a.result_poll.as_millis() as u64),
    );
    m.insert("role".into(), json!(a.role));
    // With --role all the worker runs in this process: its CPU is in `client`.
    m.insert("worker_in_client".into(), json!(a.role == "all"));
    emit(&m);
    errors
}

async fn client_main(client: Client, a: Args) -> usize {
    for (name, pid) in [
        ("--server-pid", a.server_pid),
        ("--worker-pid", a.worker_pid),
    ] {
        if let Some(p) = pid {
            if stat_of(p).is_none() {
                die(&format!("{name} {p}: no such process"));
            }
        }
    }
    // One untimed round trip first: the worker may still be registering.
    let t0 = Instant::now();
    let ping = Args {
        timeout: Duration::from_secs(30),
        ..a.clone()
    };
    loop {
        let id = format!(
            "rsb-ping-{}-{}",
            std::process::id(),
            t0.elapsed().as_nanos()
        );
        match one(&client, &ping, &id, "ping").await {
            Ok(()) => break,
            Err(e) if t0.elapsed() > Duration::from_secs(60) => {
                die(&format!("no round trip through the worker in 60 s: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    if a.warmup > 0 {
        let (_, _, e) = concurrent(&client, &a, "warm", a.warmup, "warm").await;
        if e > 0 {
            eprintln!(
                "keel-rust-sdk-bench: {e} of {} warm-up workflows failed",
                a.warmup
            );
        }
    }
    let http = reqwest::Client::new();
    let mut errors = 0;
    for rep in 0..a.reps {
        errors += run_throughput(&client, &http, &a, rep).await;
    }
    errors
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let a = parse_args();
    let client = Client::builder(a.url.clone())
        .namespace("default")
        .build()
        .unwrap_or_else(|e| die(&format!("SDK client: {e}")));
    let errors = match a.role.as_str() {
        "worker" => {
            eprintln!(
                "keel-rust-sdk-bench: worker pid {} on queue {QUEUE}, {} slots",
                std::process::id(),
                a.slots
            );
            if let Err(e) = worker(&client, &a).run().await {
                die(&format!("worker stopped: {e}"));
            }
            0
        }
        "client" => client_main(client, a).await,
        _ => {
            let w = worker(&client, &a);
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            let run = tokio::spawn(async move {
                w.run_until(async move {
                    let _ = done_rx.await;
                })
                .await
            });
            let errors = client_main(client, a).await;
            let _ = done_tx.send(());
            match run.await {
                Ok(Err(e)) => eprintln!("keel-rust-sdk-bench: worker: {e}"),
                Err(e) => eprintln!("keel-rust-sdk-bench: worker task: {e}"),
                Ok(Ok(())) => {}
            }
            errors
        }
    };
    if errors > 0 {
        eprintln!("keel-rust-sdk-bench: {errors} workflows failed (see the result lines)");
        std::process::exit(3);
    }
}
