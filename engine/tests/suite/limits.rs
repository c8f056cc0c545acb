//! Advertised limits hold at the engine's edge: a memo over `max_memo_bytes` is refused on
//! start, an oversized search-attribute map gets one error rather than one per key, and a
//! list page is bounded in bytes as well as in rows.

use crate::support;

use std::time::Duration;

use keel_engine::model::MAX_MEMO_BYTES;
use keel_engine::workflow::{ListQuery, StartWorkflow};
use keel_engine::Error;
use serde_json::{json, Map, Value};
use support::*;

const LEASE: Duration = Duration::from_secs(60);

/// A memo of about `bytes` bytes once serialized.
fn memo_of(bytes: usize) -> Value {
    json!({"blob": "x".repeat(bytes)})
}

#[tokio::test]
async fn a_memo_over_the_advertised_limit_is_refused_at_start_with_memo_too_large() {
    let h = harness(LEASE, &[]).await;
    let refused = h
        .engine
        .start_workflow(
            NS,
            StartWorkflow {
                memo: memo_of(MAX_MEMO_BYTES + 1),
                ..start("big-memo", "wf")
            },
        )
        .await
        .expect_err("too large");
    assert_eq!(reason(refused), "memo_too_large");
    h.engine
        .start_workflow(
            NS,
            StartWorkflow {
                memo: memo_of(MAX_MEMO_BYTES - 100),
                ..start("fits", "wf")
            },
        )
        .await
        .expect("a memo within the limit is accepted");
}

#[tokio::test]
async fn an_oversized_search_attribute_map_gets_one_error_not_one_per_key() {
    let h = harness(LEASE, &[]).await;
    let map: Map<String, Value> = (0..100_000).map(|i| (format!("k{i}"), json!(i))).collect();
    let err = h
        .engine
        .validate_search_attributes(NS, &Value::Object(map))
        .await
        .expect_err("too many attributes");
    let Error::Validation(errors) = err else {
        panic!("expected a validation error, got {err:?}");
    };
    assert_eq!(
        errors.len(),
        1,
        "{:?}",
        errors.keys().take(3).collect::<Vec<_>>()
    );
    assert_eq!(errors["search_attributes"].len(), 1);
}

#[tokio::test]
async fn a_list_page_of_large_memos_ends_early_with_a_token_for_the_rest() {
    let h = harness(LEASE, &[]).await;
    let workflows = 20;
    for i in 0..workflows {
        h.engine
            .start_workflow(
                NS,
                StartWorkflow {
                    memo: memo_of(MAX_MEMO_BYTES - 1_000),
                    ..start(&format!("memo-{i}"), "wf")
                },
            )
            .await
            .expect("starts");
    }
    let mut query = ListQuery {
        workflow_type: None,
        status_bucket: None,
        query: None,
        page_size: 200,
        page_token: None,
    };
    let first = h.engine.list_workflows(NS, &query).await.expect("lists");
    assert!(
        first.runs.len() < workflows,
        "a page of {} runs × 256 kB is over the byte bound",
        first.runs.len()
    );
    let mut seen = first.runs.len();
    query.page_token = first.next_page_token;
    while let Some(token) = query.page_token.take() {
        query.page_token = Some(token);
        let page = h.engine.list_workflows(NS, &query).await.expect("lists");
        seen += page.runs.len();
        query.page_token = page.next_page_token;
    }
    assert_eq!(
        seen, workflows,
        "the pages together hold every workflow once"
    );
}

#[tokio::test]
async fn a_workflow_task_scheduling_more_than_the_advertised_pending_activities_is_refused() {
    let h = harness(LEASE, &[]).await;
    h.engine
        .start_workflow(NS, start("fan-out", "wf"))
        .await
        .expect("starts");
    let task = poll_wf(&h.engine).await.expect("a task");
    let schedule = json!({"type": "schedule_activity", "activity_type": "a",
                          "arguments": {"codec": "avro", "blob": ARGS}, "queue": QUEUE});
    let too_many = vec![schedule; keel_engine::model::MAX_PENDING_ACTIVITIES + 1];
    let refused = h
        .engine
        .complete_workflow_task(
            NS,
            &task.task_id,
            WORKER,
            task.workflow_task_attempt,
            &too_many,
        )
        .await
        .expect_err("over the pending-activity limit");
    assert_eq!(reason(refused), "invalid_commands");
}
