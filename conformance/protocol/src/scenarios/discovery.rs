//! Discovery and version negotiation.

use hyper::Method;
use serde_json::json;

use super::worker::named_4xx;
use crate::client::{CONTROL_HEADER, WORKER_HEADER};
use crate::Reply;
use crate::{ensure, short, Ctx, Outcome, Stop};

pub async fn cluster_info(ctx: Ctx) -> Outcome {
    let r = ctx.control(Method::GET, "/cluster/info", None).await?;
    ensure!(
        r.status == 200,
        "cluster/info answered {}: {}",
        r.status,
        short(&r.body)
    );
    let info = &r.body;
    ensure!(info.is_object(), "cluster/info is not a JSON object");
    let cp = match &info["control_plane"]["version"] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    ensure!(cp == "2", "control_plane.version is {cp}, not 2");
    let contract = &info["control_plane"]["request_contract"];
    ensure!(
        contract["schema"] == "durable-workflow.v2.control-plane-request.contract",
        "control_plane.request_contract.schema is {}",
        contract["schema"]
    );
    ensure!(
        contract["version"] == 1 || contract["version"] == "1",
        "control_plane.request_contract.version is {}",
        contract["version"]
    );
    let wp = info["worker_protocol"]["version"]
        .as_str()
        .unwrap_or_default();
    let (major, minor) = wp.split_once('.').unwrap_or(("", ""));
    ensure!(
        major == "1" && minor.parse::<u32>().is_ok_and(|m| m >= 20),
        "worker_protocol.version is {wp:?}, not 1.x with x >= 20"
    );
    ensure!(
        info["version"].is_string(),
        "cluster/info has no version string"
    );
    ensure!(
        info["worker_protocol"]["server_capabilities"].is_object(),
        "worker_protocol.server_capabilities is not an object"
    );
    let violations =
        crate::schema::violations("cluster-info-envelope.schema.json", info).map_err(Stop::Fail)?;
    // The schema types `worker_protocol.version` as an integer, but the SDK 2.12.0 refuses
    // anything but a "MAJOR.MINOR" string there (sdk-protocol §2), and the SDK's behaviour
    // is the contract: that one violation is waived, and shown as waived.
    let (waived, violations): (Vec<String>, Vec<String>) = violations
        .into_iter()
        .partition(|v| v.starts_with("/worker_protocol/version:"));
    ctx.note(json!({"schema": "cluster-info-envelope.schema.json", "violations": violations,
                    "waived": waived, "waived_because": "sdk-protocol §2: worker_protocol.version is the string MAJOR.MINOR"}));
    ensure!(
        violations.is_empty(),
        "cluster/info does not match cluster-info-envelope.schema.json: {}",
        violations.join("; ")
    );
    // With a worker token only, discovery answers on the worker headers too (sdk-protocol §1).
    let w = ctx.worker(Method::GET, "/cluster/info", None).await?;
    ensure!(
        w.status == 200,
        "cluster/info with worker headers answered {}",
        w.status
    );
    Ok(())
}

pub async fn health(ctx: Ctx) -> Outcome {
    let r = ctx.client.raw(Method::GET, "/health", &[], None).await;
    let r = ctx.record(&Method::GET, "/health (no credentials)", r)?;
    ensure!(
        r.status == 200,
        "health answered {}: {}",
        r.status,
        short(&r.body)
    );
    Ok(())
}

pub async fn control_version_refusal(ctx: Ctx) -> Outcome {
    let auth = ctx
        .opts
        .control_token
        .as_ref()
        .map(|t| format!("Bearer {t}"));
    let mut base: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &auth {
        base.push(("authorization", a));
    }
    let id = ctx.name("wf");
    let body = json!({"workflow_id": id, "workflow_type": "conformance.never", "task_queue": ctx.name("q"),
                      "input": super::worker::envelope()});
    // Missing header.
    let r = ctx
        .client
        .raw(Method::POST, "/workflows", &base, Some(&body))
        .await;
    let r = ctx.record(&Method::POST, "/workflows (no version header)", r)?;
    version_refusal(&r, "a start without the control-plane version header")?;
    // A future version.
    let mut h = base.clone();
    h.push((CONTROL_HEADER.0, "3"));
    let r = ctx
        .client
        .raw(Method::POST, "/workflows", &h, Some(&body))
        .await;
    let r = ctx.record(&Method::POST, "/workflows (version 3)", r)?;
    version_refusal(&r, "a start with control-plane version 3")?;
    // Nothing was started.
    let d = ctx
        .control(
            Method::GET,
            &format!("/workflows/{}", super::worker::seg(&id)),
            None,
        )
        .await?;
    ensure!(
        d.status == 404,
        "after the refused start, describe of {id} answered {} (expected 404: not created)",
        d.status
    );
    Ok(())
}

pub async fn worker_version_refusal(ctx: Ctx) -> Outcome {
    let auth = ctx
        .opts
        .worker_token
        .as_ref()
        .map(|t| format!("Bearer {t}"));
    let mut h: Vec<(&str, &str)> = vec![(WORKER_HEADER.0, "2.0")];
    if let Some(a) = &auth {
        h.push(("authorization", a));
    }
    let body =
        json!({"worker_id": ctx.name("worker"), "task_queue": ctx.name("q"), "timeout_seconds": 0});
    let r = ctx
        .client
        .raw(Method::POST, "/worker/workflow-tasks/poll", &h, Some(&body))
        .await;
    let r = ctx.record(
        &Method::POST,
        "/worker/workflow-tasks/poll (protocol 2.0)",
        r,
    )?;
    version_refusal(&r, "a poll with worker protocol 2.0")
}

/// A named 4xx that is about the version: an auth refusal (401, 403) says nothing about
/// version negotiation.
fn version_refusal(r: &Reply, what: &str) -> Outcome {
    named_4xx(r, what)?;
    ensure!(
        r.status != 401 && r.status != 403,
        "{what}: answered {} {} (an auth refusal, not a version refusal: is the token right?)",
        r.status,
        r.reason()
    );
    Ok(())
}
