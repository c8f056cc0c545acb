//! History imports. `POST /workflows/import/embedded-v2` is refused with 501
//! `embedded_v2_import_unsupported` once its body is well formed.
//!
//! Why: the upstream embedded-v2 import contract imports a history-export bundle whose
//! `workflow.source_runtime` is `embedded` (the PHP package running inside an
//! application) and *reconstructs* the run's server-managed rows from it — workflow,
//! payload, task, activity, timer, command, signal, update, failure and lineage rows —
//! including for non-terminal runs that continue on the server. Keel's run state is
//! not a projection of history events that it could rebuild from a bundle: open
//! activities, timers, waits, updates and leases live in Keel's own records, written as
//! the events are appended, and no replayer rebuilds them from foreign events. A partial
//! import (terminal runs only, history copied verbatim) would answer 201 for bundles
//! whose runs Keel could not then describe, signal or continue faithfully, so Keel says
//! plainly that it does not import, and `cluster/info` advertises
//! `capabilities.embedded_v2_import: false`.

use hyper::StatusCode;
use serde_json::Value;

use crate::call::{AppState, Call, Reply};
use crate::error::ApiError;
use crate::router::Op;

/// The schema id of the bundle the import takes (`GET .../history/export` emits it).
const BUNDLE_SCHEMA: &str = "durable-workflow.v2.history-export";

/// Import operations.
pub async fn handle(_state: &AppState, op: Op, call: Call) -> Result<Reply, ApiError> {
    if op != Op::ImportEmbeddedV2 {
        return Err(super::unrouted(op));
    }
    let Some(bundle) = call.body.get("bundle").and_then(Value::as_object) else {
        return Err(ApiError::field(
            "bundle",
            "The bundle field is required: a durable-workflow.v2.history-export document.",
        ));
    };
    if bundle.get("schema").and_then(Value::as_str) != Some(BUNDLE_SCHEMA) {
        return Err(ApiError::field(
            "bundle.schema",
            format!("The bundle schema must be '{BUNDLE_SCHEMA}'."),
        ));
    }
    Err(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "embedded_v2_import_unsupported",
        "Keel does not import embedded v2 history: the import reconstructs server-managed \
         run state (tasks, activities, timers, waits, updates) from the bundle's events, and \
         Keel keeps that state in its own records, which it does not rebuild from foreign \
         history.",
    )
    .with("capability", "embedded_v2_import")
    .with("supported", false)
    .with(
        "remediation",
        "Finish or cancel the runs in the embedded runtime and keep their exported bundles \
         for audit; start new runs on Keel with POST /api/workflows.",
    ))
}
