//! The scripted worker and client steps the scenarios are made of.

use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{json, Value};

use crate::{ensure, short, Ctx, Reply, Stop};

/// The argument list `["world"]`, Avro-encoded (sdk-protocol §3.2).
pub const INPUT_BLOB: &str = "wwHioz3/VYAiNwwCCgp3b3JsZAA=";
/// How long a step waits for the server to make a task ready.
pub const TASK_WAIT: Duration = Duration::from_secs(10);

pub fn envelope() -> Value {
    json!({"codec": "avro", "blob": INPUT_BLOB})
}

/// The worker id a scenario's worker uses.
pub fn worker_id(ctx: &Ctx) -> String {
    ctx.name("worker")
}

/// Percent-encodes a path segment.
pub fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Registers the scenario's worker on `queue` (able to answer queries).
pub async fn register(ctx: &Ctx, queue: &str) -> Result<(), Stop> {
    register_as(ctx, &worker_id(ctx), queue).await
}

/// Registers worker `worker` on `queue`.
pub async fn register_as(ctx: &Ctx, worker: &str, queue: &str) -> Result<(), Stop> {
    let r = ctx
        .worker(
            Method::POST,
            "/worker/register",
            Some(
                &json!({"worker_id": worker, "task_queue": queue, "runtime": "rust",
                         "capabilities": ["query_tasks"],
                         "sdk_version": concat!("keel-conformance/", env!("CARGO_PKG_VERSION"))}),
            ),
        )
        .await?;
    ensure!(
        r.status == 200 || r.status == 201,
        "worker registration answered {}: {}",
        r.status,
        short(&r.body)
    );
    Ok(())
}

/// Starts a workflow `id` of `wf_type` on `queue` with `extra` fields merged in; returns
/// the run id.
pub async fn start(
    ctx: &Ctx,
    id: &str,
    wf_type: &str,
    queue: &str,
    extra: Value,
) -> Result<String, Stop> {
    let mut body = json!({"workflow_id": id, "workflow_type": wf_type, "task_queue": queue,
                          "input": envelope(), "execution_timeout_seconds": 300, "run_timeout_seconds": 300});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    let r = ctx.control(Method::POST, "/workflows", Some(&body)).await?;
    ensure!(
        r.status == 201 || r.status == 200,
        "start of {id} answered {}: {}",
        r.status,
        short(&r.body)
    );
    ensure!(
        r.body["workflow_id"] == id,
        "start answered another workflow_id: {}",
        short(&r.body)
    );
    let run = r.body["run_id"].as_str().unwrap_or_default().to_string();
    ensure!(
        !run.is_empty(),
        "start answered no run_id: {}",
        short(&r.body)
    );
    Ok(run)
}

/// Registers on a fresh queue and starts one workflow on it: (queue, workflow id, run id).
pub async fn begin(ctx: &Ctx, wf_type: &str) -> Result<(String, String, String), Stop> {
    let queue = ctx.name("q");
    register(ctx, &queue).await?;
    let id = ctx.name("wf");
    let run = start(ctx, &id, wf_type, &queue, json!({})).await?;
    Ok((queue, id, run))
}

/// Polls `kind` (`workflow`, `activity`, `query`) tasks on `queue` until one comes or
/// [`TASK_WAIT`] passes.
pub async fn poll(ctx: &Ctx, kind: &str, queue: &str) -> Result<Value, Stop> {
    poll_within(ctx, kind, queue, TASK_WAIT).await
}

pub async fn poll_within(
    ctx: &Ctx,
    kind: &str,
    queue: &str,
    wait: Duration,
) -> Result<Value, Stop> {
    let deadline = Instant::now() + wait;
    let path = format!("/worker/{kind}-tasks/poll");
    loop {
        let body = json!({"worker_id": worker_id(ctx), "task_queue": queue, "timeout_seconds": 1,
                          "poll_request_id": format!("{}-{}", ctx.name("poll"), next_seq())});
        let r = ctx.worker(Method::POST, &path, Some(&body)).await?;
        ensure!(
            r.status == 200,
            "{kind} poll answered {}: {}",
            r.status,
            short(&r.body)
        );
        let task = &r.body["task"];
        if !task.is_null() {
            return Ok(task.clone());
        }
        if Instant::now() >= deadline {
            return Err(Stop::Fail(format!(
                "no {kind} task on {queue} within {wait:?}"
            )));
        }
    }
}

fn next_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

pub fn task_id(task: &Value) -> String {
    task["task_id"].as_str().unwrap_or_default().to_string()
}

/// The lease fields a workflow task report echoes.
pub fn wf_lease(ctx: &Ctx, task: &Value) -> Value {
    json!({"lease_owner": task["lease_owner"].as_str().map(String::from).unwrap_or_else(|| worker_id(ctx)),
           "workflow_task_attempt": task["workflow_task_attempt"].as_u64().unwrap_or(1)})
}

/// Completes a workflow task with `commands`; returns the answer unchecked.
pub async fn complete_wf_raw(ctx: &Ctx, task: &Value, commands: Value) -> Result<Reply, Stop> {
    let mut body = wf_lease(ctx, task);
    body["commands"] = commands;
    ctx.worker(
        Method::POST,
        &format!("/worker/workflow-tasks/{}/complete", task_id(task)),
        Some(&body),
    )
    .await
}

/// Completes a workflow task with `commands` and expects it accepted.
pub async fn complete_wf(ctx: &Ctx, task: &Value, commands: Value) -> Result<(), Stop> {
    let r = complete_wf_raw(ctx, task, commands).await?;
    ensure!(
        r.status == 200,
        "workflow task completion answered {}: {}",
        r.status,
        short(&r.body)
    );
    Ok(())
}

/// Completes the workflow with a result.
pub async fn finish(ctx: &Ctx, task: &Value) -> Result<(), Stop> {
    complete_wf(
        ctx,
        task,
        json!([{"type": "complete_workflow", "result": envelope()}]),
    )
    .await
}

/// Answers a workflow task with the "waiting for history" no-op.
pub async fn wait_noop(ctx: &Ctx, task: &Value) -> Result<(), Stop> {
    let mut body = wf_lease(ctx, task);
    body["failure"] = json!({"message": "Workflow task waiting for scheduled history.", "type": "WorkflowTaskWaitingForHistory"});
    let r = ctx
        .worker(
            Method::POST,
            &format!("/worker/workflow-tasks/{}/fail", task_id(task)),
            Some(&body),
        )
        .await?;
    ensure!(
        r.status == 200,
        "waiting-for-history no-op answered {}: {}",
        r.status,
        short(&r.body)
    );
    Ok(())
}

/// The body that reports on an activity task.
pub fn act_lease(ctx: &Ctx, task: &Value) -> Value {
    json!({"activity_attempt_id": task["activity_attempt_id"].clone(),
           "lease_owner": task["lease_owner"].as_str().map(String::from).unwrap_or_else(|| worker_id(ctx))})
}

pub async fn complete_act_raw(ctx: &Ctx, task: &Value) -> Result<Reply, Stop> {
    let mut body = act_lease(ctx, task);
    body["result"] = envelope();
    ctx.worker(
        Method::POST,
        &format!("/worker/activity-tasks/{}/complete", task_id(task)),
        Some(&body),
    )
    .await
}

pub async fn fail_act_raw(ctx: &Ctx, task: &Value, non_retryable: bool) -> Result<Reply, Stop> {
    let mut body = act_lease(ctx, task);
    body["failure"] = json!({"message": "conformance failure", "type": "ConformanceError",
                             "non_retryable": non_retryable});
    ctx.worker(
        Method::POST,
        &format!("/worker/activity-tasks/{}/fail", task_id(task)),
        Some(&body),
    )
    .await
}

/// The whole history of a run, paged.
pub async fn history(ctx: &Ctx, id: &str, run: &str) -> Result<Vec<Value>, Stop> {
    let mut events = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..50 {
        let mut path = format!(
            "/workflows/{}/runs/{}/history?page_size=500",
            seg(id),
            seg(run)
        );
        if let Some(t) = &token {
            path.push_str(&format!("&next_page_token={}", seg(t)));
        }
        let r = ctx.control(Method::GET, &path, None).await?;
        ensure!(
            r.status == 200,
            "history answered {}: {}",
            r.status,
            short(&r.body)
        );
        events.extend(r.body["events"].as_array().cloned().unwrap_or_default());
        match r.body["next_page_token"].as_str() {
            Some(t) if !t.is_empty() && token.as_deref() != Some(t) => token = Some(t.to_string()),
            _ => return Ok(events),
        }
    }
    Err(Stop::Fail(
        "history paging did not end within 50 pages".into(),
    ))
}

pub fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap_or("?").to_string())
        .collect()
}

pub fn count(events: &[Value], event_type: &str) -> usize {
    events
        .iter()
        .filter(|e| e["event_type"] == event_type)
        .count()
}

/// Whether a task's (first page of) history holds an event of `event_type`.
pub fn task_has(task: &Value, event_type: &str) -> bool {
    task["history_events"]
        .as_array()
        .is_some_and(|es| es.iter().any(|e| e["event_type"] == event_type))
}

/// Describes a workflow.
pub async fn describe(ctx: &Ctx, id: &str) -> Result<Value, Stop> {
    let r = ctx
        .control(Method::GET, &format!("/workflows/{}", seg(id)), None)
        .await?;
    ensure!(
        r.status == 200,
        "describe {id} answered {}: {}",
        r.status,
        short(&r.body)
    );
    Ok(r.body)
}

/// Waits until the workflow's status is one of `statuses`.
pub async fn wait_status(ctx: &Ctx, id: &str, statuses: &[&str]) -> Result<Value, Stop> {
    let deadline = Instant::now() + TASK_WAIT;
    loop {
        let d = describe(ctx, id).await?;
        if statuses.iter().any(|s| d["status"] == *s) {
            return Ok(d);
        }
        if Instant::now() >= deadline {
            return Err(Stop::Fail(format!(
                "{id} status stayed {} (expected one of {statuses:?})",
                d["status"]
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A refusal must be a 4xx with a `reason`.
pub fn named_4xx(r: &Reply, what: &str) -> Result<(), Stop> {
    ensure!(
        (400..500).contains(&r.status) && !r.reason().is_empty(),
        "{what}: expected a 4xx with a reason, got {} {}",
        r.status,
        short(&r.body)
    );
    Ok(())
}
