//! `keel-conformance`: checks any server that speaks the Durable Workflow HTTP+JSON
//! protocol (control plane 2, worker protocol 1.20) at a URL.
//!
//! It drives the protocol directly, as a client and as its own small scripted worker (no
//! SDK, no Python): each scenario starts workflows on a task queue of its own, answers
//! their workflow and activity tasks with chosen commands, and checks what the server
//! answers and records. Each scenario names the upstream platform-conformance scenario
//! (`platform-conformance/*.json`) or the protocol contract it exercises.
//!
//! ```text
//! keel-conformance --url http://127.0.0.1:8080 [--token T | --control-token T --worker-token T]
//!                  [--namespace NS] [--only GROUP[,GROUP|SCENARIO...]] [--output result.json]
//! ```
//!
//! The result document ([`Report::to_json`]) has one entry per scenario with its status
//! (`passed`, `failed`, `skipped`, `not_applicable`) and evidence (every request the
//! scenario made, with the status and `reason` answered), and the server's identity and
//! versions from `GET /api/cluster/info`. The exit status is 1 when any scenario failed,
//! 2 on a usage error.

pub mod client;
mod report;
mod scenarios;
mod schema;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hyper::Method;
use serde_json::{json, Value};

pub use client::{Client, Plane, Reply};
pub use report::{Report, ScenarioResult, Status};

/// What to check and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server's origin, e.g. `http://127.0.0.1:8080` (`/api` is appended).
    pub url: String,
    /// Token for control-plane routes (`--token` or `--control-token`).
    pub control_token: Option<String>,
    /// Token for worker routes (`--token` or `--worker-token`).
    pub worker_token: Option<String>,
    /// The namespace scenarios run in (default `default`).
    pub namespace: String,
    /// Groups or scenario ids to run (empty: all).
    pub only: Vec<String>,
    /// Where to write the result document.
    pub output: Option<PathBuf>,
    /// Scenarios run at once.
    pub parallel: usize,
    /// Longest a scenario may take before it counts as failed.
    pub scenario_timeout: Duration,
}

impl Options {
    /// Options for `url` with everything else at its default.
    pub fn new(url: &str) -> Options {
        Options {
            url: url.to_string(),
            control_token: None,
            worker_token: None,
            namespace: "default".into(),
            only: Vec::new(),
            output: None,
            parallel: 4,
            scenario_timeout: Duration::from_secs(30),
        }
    }

    /// Parses command-line arguments (without the program name).
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Options, String> {
        let mut o = Options::new("http://127.0.0.1:8080");
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let (flag, inline) = match flag.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (flag, None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
            };
            match flag.as_str() {
                "--url" => o.url = value()?,
                "--token" => {
                    let t = value()?;
                    o.control_token = Some(t.clone());
                    o.worker_token = Some(t);
                }
                "--control-token" => o.control_token = Some(value()?),
                "--worker-token" => o.worker_token = Some(value()?),
                "--namespace" => o.namespace = value()?,
                "--only" => o.only.extend(
                    value()?
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from),
                ),
                "--output" => o.output = Some(PathBuf::from(value()?)),
                "--parallel" => {
                    o.parallel = value()?
                        .parse::<usize>()
                        .map_err(|e| format!("--parallel: {e}"))?
                        .max(1)
                }
                "--scenario-timeout-seconds" => {
                    o.scenario_timeout = Duration::from_secs(
                        value()?
                            .parse::<u64>()
                            .map_err(|e| format!("--scenario-timeout-seconds: {e}"))?
                            .max(1),
                    )
                }
                "--list" => return Err(list_text()),
                "--help" | "-h" => return Err(USAGE.to_string()),
                other => return Err(format!("unknown argument {other}\n{USAGE}")),
            }
        }
        if !(o.url.starts_with("http://")) {
            return Err(format!(
                "--url must be an http:// origin (got {}); TLS is not supported by this runner",
                o.url
            ));
        }
        if o.url.trim_end_matches('/').ends_with("/api") {
            return Err("--url is the server origin: leave out /api (it is appended)".into());
        }
        let known: Vec<&str> = scenarios::ALL
            .iter()
            .flat_map(|s| [s.group, s.id])
            .collect();
        if let Some(bad) = o.only.iter().find(|g| !known.contains(&g.as_str())) {
            return Err(format!(
                "--only {bad}: no such group or scenario (groups: {})",
                groups().join(", ")
            ));
        }
        Ok(o)
    }
}

/// Usage text.
pub const USAGE: &str = "keel-conformance --url http://HOST:PORT [--token TOKEN] \
[--control-token TOKEN --worker-token TOKEN] [--namespace NS] [--only GROUP[,GROUP|SCENARIO_ID...]] \
[--output FILE.json] [--parallel N] [--scenario-timeout-seconds N] [--list]";

/// The groups, in run order.
pub fn groups() -> Vec<&'static str> {
    let mut g: Vec<&'static str> = Vec::new();
    for s in scenarios::ALL {
        if !g.contains(&s.group) {
            g.push(s.group);
        }
    }
    g
}

fn list_text() -> String {
    let mut out = String::from("scenarios (group, id, upstream):\n");
    for s in scenarios::ALL {
        out.push_str(&format!(
            "  {:<24} {:<48} {}\n",
            s.group,
            s.id,
            s.upstream.join(" ")
        ));
    }
    out
}

/// Why a scenario stopped early.
#[derive(Debug)]
pub(crate) enum Stop {
    Fail(String),
    Skip(String),
    NotApplicable(String),
}

pub(crate) type Outcome = Result<(), Stop>;

/// Fails the scenario with a message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::Stop::Fail(format!($($msg)+)));
        }
    };
}
pub(crate) use ensure;

/// What a scenario has to work with: the client, a unique tag for its names, what the
/// server advertised, and the log of every request it made (its evidence).
#[derive(Clone)]
pub(crate) struct Ctx {
    pub client: Client,
    /// Unique per scenario and run: workflow ids, queues and names are made from it.
    pub tag: String,
    pub info: Arc<Value>,
    pub opts: Arc<Options>,
    log: Arc<Mutex<Vec<Value>>>,
}

impl Ctx {
    /// Records a note in the evidence.
    pub fn note(&self, note: Value) {
        self.log.lock().expect("evidence lock").push(note);
    }

    /// A request on `plane`, logged; a transport error or a 5xx stops the scenario.
    pub async fn call(
        &self,
        plane: Plane,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, Stop> {
        let r = self.client.call(plane, method.clone(), path, body).await;
        self.record(&method, path, r)
    }

    pub async fn control(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, Stop> {
        self.call(Plane::Control, method, path, body).await
    }

    pub async fn worker(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, Stop> {
        self.call(Plane::Worker, method, path, body).await
    }

    /// Logs one answer (or transport error) and stops on a 5xx.
    pub fn record(
        &self,
        method: &Method,
        path: &str,
        r: Result<Reply, String>,
    ) -> Result<Reply, Stop> {
        match r {
            Ok(reply) => {
                let mut entry =
                    json!({"request": format!("{method} {path}"), "status": reply.status});
                if !reply.reason().is_empty() {
                    entry["reason"] = json!(reply.reason());
                }
                self.note(entry);
                if reply.status >= 500 {
                    return Err(Stop::Fail(format!(
                        "{method} {path} answered {} (a server error): {}",
                        reply.status,
                        short(&reply.body)
                    )));
                }
                Ok(reply)
            }
            Err(e) => {
                self.note(json!({"request": format!("{method} {path}"), "error": e}));
                Err(Stop::Fail(format!("{method} {path}: {e}")))
            }
        }
    }

    /// A name unique to this scenario and run.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.tag)
    }

    /// A `server_capabilities` flag of `cluster/info`.
    pub fn capability(&self, key: &str) -> &Value {
        &self.info["worker_protocol"]["server_capabilities"][key]
    }
}

/// A JSON value cut to a readable length for a message.
pub(crate) fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s
    }
}

/// Runs every selected scenario against the server and returns the report (it does not
/// write or print it: see [`run_cli`]).
pub async fn run(opts: Options) -> Report {
    let started = Instant::now();
    let started_at = report::now_rfc3339();
    let client = Client::new(&opts.url, &opts.namespace)
        .with_tokens(opts.control_token.clone(), opts.worker_token.clone());
    // Discovery first: the identity and capabilities every other scenario reads.
    let info = match client.control(Method::GET, "/cluster/info", None).await {
        Ok(r) if r.status == 200 && r.body.is_object() => r.body,
        _ => Value::Null,
    };
    let info = Arc::new(info);
    let opts = Arc::new(opts);
    let run_tag = format!(
        "conf{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() % 100_000_000)
            .unwrap_or(0)
    );
    // Without discovery nothing else runs, so its scenario runs (and says why) whatever
    // `--only` selected.
    let selected: Vec<&'static scenarios::Scenario> = scenarios::ALL
        .iter()
        .filter(|s| {
            opts.only.is_empty()
                || opts.only.iter().any(|o| o == s.group || o == s.id)
                || (info.is_null() && s.id == "discovery.cluster_info")
        })
        .collect();
    let results: Vec<ScenarioResult> = futures::stream::iter(selected.into_iter().enumerate())
        .map(|(i, s)| {
            let ctx = Ctx {
                client: client.clone(),
                tag: format!("{run_tag}-{i}"),
                info: info.clone(),
                opts: opts.clone(),
                log: Arc::new(Mutex::new(Vec::new())),
            };
            let timeout = opts.scenario_timeout;
            let info_ok = !info.is_null();
            async move { run_one(s, ctx, timeout, info_ok).await }
        })
        .buffered(opts.parallel.max(1))
        .collect()
        .await;
    Report::new(&opts, &info, started_at, started.elapsed(), results)
}

async fn run_one(
    s: &'static scenarios::Scenario,
    ctx: Ctx,
    timeout: Duration,
    info_ok: bool,
) -> ScenarioResult {
    let t0 = Instant::now();
    let log = ctx.log.clone();
    let outcome = if !info_ok && s.group != "discovery" {
        Err(Stop::Skip(
            "GET /api/cluster/info did not answer 200 with a JSON object; nothing else is run"
                .into(),
        ))
    } else {
        match tokio::time::timeout(timeout, (s.run)(ctx)).await {
            Ok(o) => o,
            Err(_) => Err(Stop::Fail(format!("did not finish within {timeout:?}"))),
        }
    };
    let (status, message) = match outcome {
        Ok(()) => (Status::Passed, None),
        Err(Stop::Fail(m)) => (Status::Failed, Some(m)),
        Err(Stop::Skip(m)) => (Status::Skipped, Some(m)),
        Err(Stop::NotApplicable(m)) => (Status::NotApplicable, Some(m)),
    };
    let evidence = std::mem::take(&mut *log.lock().expect("evidence lock"));
    ScenarioResult {
        id: s.id,
        group: s.group,
        title: s.title,
        upstream: s.upstream,
        status,
        message,
        evidence,
        duration: t0.elapsed(),
    }
}

/// The whole command line: parses `args` (without the program name), runs, prints the
/// table on stdout, writes `--output`, and returns the exit status (0 all passed, 1 a
/// failure, 2 a usage error). `keel conformance ...` and `keel-conformance` both call it.
pub fn run_cli<I: IntoIterator<Item = String>>(args: I) -> i32 {
    let opts = match Options::parse(args) {
        Ok(o) => o,
        Err(msg) => {
            let help = msg == USAGE || msg.starts_with("scenarios (");
            if help {
                println!("{msg}");
                return 0;
            }
            eprintln!("{msg}");
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return 2;
        }
    };
    let output = opts.output.clone();
    let report = runtime.block_on(run(opts));
    print!("{}", report.table());
    if let Some(path) = output {
        let text = serde_json::to_string_pretty(&report.to_json()).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, text + "\n") {
            eprintln!("cannot write {}: {e}", path.display());
            return 2;
        }
        println!("result document: {}", path.display());
    }
    if report.failed() > 0 {
        1
    } else {
        0
    }
}
