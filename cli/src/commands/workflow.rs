//! `keel workflow ...`: start, find, read and steer workflows.

use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::api::{query, seg};
use crate::commands::{arguments, json_object};
use crate::error::CliError;
use crate::render::{clip, decode_payload, payload, s, Out};
use crate::Ctx;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Starts a workflow.
    Start {
        /// Workflow type (the name the workers register).
        #[arg(long = "type")]
        workflow_type: String,
        /// Workflow id (default: the type and the current time).
        #[arg(long)]
        id: Option<String>,
        #[arg(long, default_value = "default")]
        task_queue: String,
        /// Arguments as JSON: an array is the argument list, anything else one argument.
        #[arg(long)]
        input: Option<String>,
        #[arg(long)]
        business_key: Option<String>,
        /// Memo as a JSON object.
        #[arg(long)]
        memo: Option<String>,
        #[arg(long)]
        execution_timeout_seconds: Option<u64>,
        #[arg(long)]
        run_timeout_seconds: Option<u64>,
    },
    /// Lists workflows, newest first.
    List {
        #[arg(long = "type")]
        workflow_type: Option<String>,
        /// A status (running, completed, failed, ...) or a status bucket.
        #[arg(long)]
        status: Option<String>,
        /// A visibility query (the server's query language).
        #[arg(long)]
        query: Option<String>,
        #[arg(long, default_value_t = 50)]
        page_size: u32,
        #[arg(long)]
        page_token: Option<String>,
    },
    /// A run's summary (the current run unless --run).
    Describe(Target),
    /// A run's history; --follow keeps printing events until the run closes.
    History {
        #[command(flatten)]
        target: Target,
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Sends a signal.
    Signal {
        #[command(flatten)]
        target: Target,
        name: String,
        #[arg(long)]
        input: Option<String>,
    },
    /// Asks a query (answered by a worker).
    Query {
        #[command(flatten)]
        target: Target,
        name: String,
        #[arg(long)]
        input: Option<String>,
    },
    /// Sends an update and waits for it to be accepted or completed.
    Update {
        #[command(flatten)]
        target: Target,
        name: String,
        #[arg(long)]
        input: Option<String>,
        #[arg(long, value_enum, default_value_t = WaitFor::Completed)]
        wait_for: WaitFor,
    },
    /// Cancels a run (terminal: the workflow's cleanup does not run).
    Cancel {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Terminates a run.
    Terminate {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Asks the server to re-create a run's missing task.
    Repair(Target),
    /// Archives a closed run.
    Archive {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Prints a run's history export bundle (JSON; offline replay input).
    Export(Target),
}

#[derive(clap::Args, Debug)]
pub struct Target {
    /// Workflow id.
    pub workflow_id: String,
    /// A specific run (default: the current one).
    #[arg(long)]
    pub run: Option<String>,
}

impl Target {
    /// `/workflows/{id}` or `/workflows/{id}/runs/{run}`.
    fn path(&self) -> String {
        match &self.run {
            Some(run) => format!("/workflows/{}/runs/{}", seg(&self.workflow_id), seg(run)),
            None => format!("/workflows/{}", seg(&self.workflow_id)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WaitFor {
    Accepted,
    Completed,
}

pub async fn run(cmd: Cmd, ctx: &mut Ctx<'_>) -> Result<(), CliError> {
    match cmd {
        Cmd::Start {
            workflow_type,
            id,
            task_queue,
            input,
            business_key,
            memo,
            execution_timeout_seconds,
            run_timeout_seconds,
        } => {
            let id = id.unwrap_or_else(|| {
                let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
                format!("{workflow_type}-{now}")
            });
            let mut body = json!({
                "workflow_id": id,
                "workflow_type": workflow_type,
                "task_queue": task_queue,
                "input": arguments(input.as_deref()),
                "business_key": business_key,
                "execution_timeout_seconds": execution_timeout_seconds,
                "run_timeout_seconds": run_timeout_seconds,
            });
            if let Some(memo) = memo {
                body["memo"] = json_object("--memo", &memo)?;
            }
            let doc = ctx.api.post("/workflows", &body).await?;
            ctx.emit(doc, |out, d| {
                out.fields(&[
                    ("workflow_id", s(d, "workflow_id")),
                    ("run_id", s(d, "run_id")),
                    ("outcome", s(d, "outcome")),
                    ("status", out.status(&s(d, "status"))),
                ])
            });
        }
        Cmd::List {
            workflow_type,
            status,
            query: q,
            page_size,
            page_token,
        } => {
            let path = format!(
                "/workflows{}",
                query(&[
                    ("workflow_type", workflow_type),
                    ("status", status),
                    ("query", q),
                    ("page_size", Some(page_size.to_string())),
                    ("next_page_token", page_token),
                ])
            );
            let doc = ctx.api.get(&path).await?;
            ctx.emit(doc, |out, d| {
                let rows: Vec<Vec<String>> = d["workflows"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|w| {
                        vec![
                            s(w, "workflow_id"),
                            s(w, "workflow_type"),
                            out.status(&s(w, "status")),
                            s(w, "task_queue"),
                            out.when(&w["started_at"]),
                            out.when(&w["closed_at"]),
                        ]
                    })
                    .collect();
                out.table(
                    &[
                        "workflow id",
                        "type",
                        "status",
                        "task queue",
                        "started",
                        "closed",
                    ],
                    &rows,
                );
                if let Some(token) = d["next_page_token"].as_str() {
                    out.line(&format!("more: --page-token {token}"));
                }
            });
        }
        Cmd::Describe(target) => {
            let doc = ctx.api.get(&target.path()).await?;
            ctx.emit(doc, describe);
        }
        Cmd::History { target, follow } => history(ctx, &target, follow).await?,
        Cmd::Signal {
            target,
            name,
            input,
        } => {
            let mut body = json!({"request_id": request_id()});
            if let Some(input) = input {
                body["input"] = arguments(Some(&input));
            }
            let path = format!("{}/signal/{}", target.path(), seg(&name));
            let mut doc = ctx.api.post(&path, &body).await?;
            doc["workflow_id"] = target.workflow_id.clone().into();
            doc["signal_name"] = name.into();
            ctx.emit(doc, |out, d| {
                out.fields(&[
                    ("workflow_id", s(d, "workflow_id")),
                    ("signal", s(d, "signal_name")),
                    ("outcome", s(d, "outcome")),
                    ("command_id", s(d, "command_id")),
                ])
            });
        }
        Cmd::Query {
            target,
            name,
            input,
        } => {
            let mut body = json!({});
            if let Some(input) = input {
                body["input"] = arguments(Some(&input));
            }
            let path = format!("{}/query/{}", target.path(), seg(&name));
            let mut doc = ctx.api.post(&path, &body).await?;
            if doc["result"].is_null() && !doc["result_envelope"].is_null() {
                doc["result"] = decode_payload(&doc["result_envelope"]);
            }
            doc["workflow_id"] = target.workflow_id.clone().into();
            doc["query_name"] = name.into();
            ctx.emit(doc, |out, d| out.line(&d["result"].to_string()));
        }
        Cmd::Update {
            target,
            name,
            input,
            wait_for,
        } => {
            let mut body = json!({
                "request_id": request_id(),
                "wait_for": match wait_for { WaitFor::Accepted => "accepted", WaitFor::Completed => "completed" },
            });
            if let Some(input) = input {
                body["input"] = arguments(Some(&input));
            }
            let path = format!("{}/update/{}", target.path(), seg(&name));
            let reply = ctx.api.post(&path, &body).await?;
            let doc = update_document(ctx.api.namespace(), &target, &name, &body, reply);
            ctx.emit(doc, |out, d| {
                out.fields(&[
                    ("update_id", s(d, "update_id")),
                    ("status", out.status(&s(d, "update_status"))),
                    ("result", payload(&d["result"])),
                    ("failure", s(&d["failure"], "message")),
                ])
            });
        }
        Cmd::Cancel { target, reason } => operation(ctx, &target, "cancel", reason).await?,
        Cmd::Terminate { target, reason } => operation(ctx, &target, "terminate", reason).await?,
        Cmd::Repair(target) => operation(ctx, &target, "repair", None).await?,
        Cmd::Archive { target, reason } => operation(ctx, &target, "archive", reason).await?,
        Cmd::Export(target) => {
            let run_id = match target.run.clone() {
                Some(run) => run,
                None => s(&ctx.api.get(&target.path()).await?, "run_id"),
            };
            let path = format!(
                "/workflows/{}/runs/{}/history/export",
                seg(&target.workflow_id),
                seg(&run_id)
            );
            let doc = ctx.api.get(&path).await?;
            // The bundle is a document of its own (its digest covers it): printed as is.
            ctx.out.json(&doc);
        }
    }
    Ok(())
}

/// The update reply with the upstream CLI's `update_diagnostics` and `cli_fields`
/// blocks (workflow-update output schema): the state, ids, outcome and result in one
/// place whatever shape the server's reply had.
fn update_document(
    namespace: &str,
    target: &Target,
    name: &str,
    request: &Value,
    reply: Value,
) -> Value {
    let fields_present: Vec<String> = reply
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let state = reply["update_status"].clone();
    let result = decode_payload(&reply["result"]);
    let error = reply["failure"].clone();
    let mut doc = reply;
    doc["workflow_id"] = target.workflow_id.clone().into();
    doc["update_name"] = name.into();
    if doc["outcome"].is_null() {
        doc["outcome"] = state.clone();
    }
    doc["update_diagnostics"] = json!({
        "state": state,
        "update_state": state,
        "namespace": namespace,
        "workflow_id": target.workflow_id,
        "run_id": doc["run_id"],
        "update_name": name,
        "update_id": doc["update_id"],
        "request_id": request["request_id"],
        "outcome": doc["outcome"],
        "reason": doc["reason"],
        "update_status": state,
        "wait_for": request["wait_for"],
        "failure_message": error["message"],
        "request": request,
        "result": result,
        "error": error,
    });
    doc["cli_fields"] = json!({
        "surface": "workflow:update --json",
        "fields_present": fields_present,
        "state": state,
        "request_id": request["request_id"],
        "update_id": doc["update_id"],
        "outcome": doc["outcome"],
        "reason": doc["reason"],
        "payload": decode_payload(&request["input"]),
        "result": result,
        "error": error,
        "history_references": null,
    });
    doc
}

/// cancel / terminate / repair / archive: `{reason?}`, answered with the operation
/// receipt.
async fn operation(
    ctx: &mut Ctx<'_>,
    target: &Target,
    op: &str,
    reason: Option<String>,
) -> Result<(), CliError> {
    let body = match reason {
        Some(r) => json!({"reason": r}),
        None => json!({}),
    };
    let mut doc = ctx
        .api
        .post(&format!("{}/{op}", target.path()), &body)
        .await?;
    doc["workflow_id"] = target.workflow_id.clone().into();
    ctx.emit(doc, |out, d| {
        out.fields(&[
            ("workflow_id", s(d, "workflow_id")),
            ("run_id", s(d, "run_id")),
            ("outcome", s(d, "outcome")),
            ("command_status", s(d, "command_status")),
        ])
    });
    Ok(())
}

fn describe(out: &mut Out<'_>, d: &Value) {
    let failure = &d["workflow_task_failure"];
    out.fields(&[
        ("workflow_id", s(d, "workflow_id")),
        ("run_id", s(d, "run_id")),
        ("type", s(d, "workflow_type")),
        ("status", out.status(&s(d, "status"))),
        ("task_queue", s(d, "task_queue")),
        (
            "run",
            format!("{} of {}", s(d, "run_number"), s(d, "run_count")),
        ),
        ("business_key", s(d, "business_key")),
        ("started", out.when(&d["started_at"])),
        ("closed", out.when(&d["closed_at"])),
        ("closed_reason", s(d, "closed_reason")),
        ("waiting_on", s(d, "wait_reason")),
        ("failing_task", s(failure, "message")),
        ("input", clip(&payload(&d["input"]), 200)),
        ("output", clip(&payload(&d["output"]), 200)),
        ("events", s(d, "history_event_count")),
    ]);
}

/// Prints a run's history, page by page; with `follow`, polls for new events until the
/// run is terminal.
async fn history(ctx: &mut Ctx<'_>, target: &Target, follow: bool) -> Result<(), CliError> {
    let run_id = match target.run.clone() {
        Some(run) => run,
        None => s(&ctx.api.get(&target.path()).await?, "run_id"),
    };
    let run_path = format!(
        "/workflows/{}/runs/{}",
        seg(&target.workflow_id),
        seg(&run_id)
    );
    let stream = follow && !ctx.json;
    let mut events: Vec<Value> = Vec::new();
    let mut last_seq = 0u64;
    // The token of the last page read: re-reading it finds the events appended since.
    let mut resume: Option<String> = None;
    loop {
        // Terminal is read before the history: the closing events commit with the
        // status, so the read that follows a terminal answer holds them all.
        let terminal = follow && ctx.api.get(&run_path).await?["is_terminal"] == json!(true);
        let mut token = resume.clone();
        loop {
            let path = format!(
                "{run_path}/history{}",
                query(&[("next_page_token", token.clone())])
            );
            let page = ctx.api.get(&path).await?;
            for e in page["events"].as_array().into_iter().flatten() {
                let seq = e["sequence"].as_u64().unwrap_or(0);
                if seq > last_seq {
                    last_seq = seq;
                    if stream {
                        let line = event_line(&ctx.out, e);
                        ctx.out.line(&line);
                    }
                    events.push(e.clone());
                }
            }
            match page["next_page_token"].as_str() {
                Some(next) if Some(next) != token.as_deref() => token = Some(next.to_string()),
                _ => break,
            }
        }
        resume = token;
        if !follow || terminal {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if stream {
        return Ok(());
    }
    let doc = json!({
        "workflow_id": target.workflow_id,
        "run_id": run_id,
        "events": events,
    });
    ctx.emit(doc, |out, d| {
        let rows: Vec<Vec<String>> = d["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                vec![
                    s(e, "sequence"),
                    out.when(&e["timestamp"]),
                    event_type(e),
                    clip(&event_summary(e), 100),
                ]
            })
            .collect();
        out.table(&["seq", "time", "event", "details"], &rows);
    });
    Ok(())
}

fn event_type(e: &Value) -> String {
    let t = s(e, "event_type");
    if t.is_empty() {
        s(e, "type")
    } else {
        t
    }
}

fn event_line(out: &Out<'_>, e: &Value) -> String {
    format!(
        "{:>5}  {:<8}  {:<28}  {}",
        s(e, "sequence"),
        out.when(&e["timestamp"]),
        event_type(e),
        clip(&event_summary(e), 100)
    )
}

/// The fields of an event a person looks for first: names, ids, payloads decoded.
fn event_summary(e: &Value) -> String {
    let p = &e["payload"];
    let mut parts: Vec<String> = Vec::new();
    for key in [
        "activity_type",
        "signal_name",
        "update_name",
        "timer_id",
        "child_workflow_type",
        "reason",
        "message",
    ] {
        let v = s(p, key);
        if !v.is_empty() {
            parts.push(format!("{key}={v}"));
        }
    }
    if let Some(failure) = p["failure"].as_object() {
        if let Some(m) = failure.get("message").and_then(Value::as_str) {
            parts.push(format!("failure={m}"));
        }
    }
    for key in ["input", "result", "output"] {
        if !p[key].is_null() {
            parts.push(format!("{key}={}", payload(&p[key])));
        }
    }
    parts.join(" ")
}

fn request_id() -> String {
    format!("keel-cli-{}", keel_engine::ids::random_hex(12))
}
