//! History imports: `POST /workflows/import/embedded-v2` is refused by name (see
//! http/src/handlers/imports.rs for why).

use crate::common;

use common::{control, expect, expect_status, start};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_v2_import_is_refused_by_name_after_its_body_is_checked() {
    let s = start("admin:adm,operator:op", None).await;
    let path = "/api/workflows/import/embedded-v2";
    let bundle = json!({"import_id": "x", "bundle": {
        "schema": "durable-workflow.v2.history-export", "schema_version": 1,
        "workflow": {"source_runtime": "embedded"}}});
    // Admin only, like the upstream route.
    expect_status(
        &control(&s, "op", "default", "POST", path, Some(&bundle)).await,
        403,
    );
    expect(
        &control(&s, "adm", "default", "POST", path, Some(&json!({}))).await,
        422,
        "validation_failed",
    );
    expect(
        &control(
            &s,
            "adm",
            "default",
            "POST",
            path,
            Some(&json!({"bundle": {"schema": "x"}})),
        )
        .await,
        422,
        "validation_failed",
    );
    let r = control(&s, "adm", "default", "POST", path, Some(&bundle)).await;
    expect(&r, 501, "embedded_v2_import_unsupported");
    let info = control(&s, "adm", "default", "GET", "/api/cluster/info", None).await;
    assert_eq!(info.json()["capabilities"]["embedded_v2_import"], false);
}
