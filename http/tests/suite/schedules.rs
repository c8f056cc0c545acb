//! Schedule routes through the whole HTTP pipeline: schedule reads stay available while
//! the bootstrap gate blocks schedule mutations.

use crate::common;

use common::{control, expect, expect_status, start};
use serde_json::json;

const TOKENS: &str = "admin:adm,operator:op,worker:wk";

#[tokio::test]
async fn schedule_reads_stay_open_while_the_bootstrap_gate_blocks_mutations() {
    let s = start(TOKENS, None).await;
    let body = json!({
        "schedule_id": "gated",
        "spec": {"cron_expressions": ["0 * * * *"]},
        "action": {"workflow_type": "ops.wf", "task_queue": "q"},
    });
    let r = control(&s, "op", "default", "POST", "/api/schedules", Some(&body)).await;
    expect_status(&r, 201);
    assert_eq!(r.json()["schedule_id"], "gated");

    s.engine.set_schema_version(99).await.expect("write");
    // A readiness probe refreshes the checks the gate reads.
    let ready = common::send(s.addr, "GET", "/api/ready", &[], None).await;
    expect_status(&ready, 503);
    for path in [
        "/api/schedules",
        "/api/schedules/gated",
        "/api/schedules/gated/history",
    ] {
        let r = control(&s, "op", "default", "GET", path, None).await;
        expect_status(&r, 200);
    }
    let again = json!({"schedule_id": "other", "spec": body["spec"], "action": body["action"]});
    for (method, path, body) in [
        ("POST", "/api/schedules", Some(&again)),
        ("PUT", "/api/schedules/gated", Some(&json!({"note": "x"}))),
        ("DELETE", "/api/schedules/gated", None),
        ("POST", "/api/schedules/gated/pause", Some(&json!({}))),
        ("POST", "/api/schedules/gated/resume", Some(&json!({}))),
        ("POST", "/api/schedules/gated/trigger", Some(&json!({}))),
        (
            "POST",
            "/api/schedules/gated/backfill",
            Some(
                &json!({"start_time": "2026-01-01T00:00:00Z", "end_time": "2026-01-02T00:00:00Z"}),
            ),
        ),
    ] {
        let r = control(&s, "op", "default", method, path, body).await;
        expect(&r, 503, "workflow_v2_blocked");
    }
    // A worker token is not an operator: schedules are control-plane routes.
    let r = control(&s, "wk", "default", "GET", "/api/schedules", None).await;
    expect(&r, 403, "forbidden");
}
