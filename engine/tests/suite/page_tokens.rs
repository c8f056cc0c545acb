//! History page tokens come from clients: one past the end of history, up to `u64::MAX`,
//! reads an empty page. (`after + 1` overflowed on `u64::MAX`: a panic in debug builds,
//! the first page again in release; reproduced through the http_api fuzz target.)

use crate::support;

use std::time::Duration;

use support::*;

#[tokio::test]
async fn a_history_page_token_past_the_end_reads_an_empty_page() {
    let h = support::harness(Duration::from_secs(60), &[]).await;
    let run = h
        .engine
        .start_workflow(NS, start("wf", "t"))
        .await
        .expect("starts")
        .run;
    for after in [1, 1000, u64::MAX] {
        let page = h
            .engine
            .history(NS, "wf", &run.run_id, after, 10)
            .await
            .expect("a page");
        assert!(page.events.is_empty() && !page.more, "after {after}");
    }
    let task = poll_wf(&h.engine).await.expect("a workflow task");
    let page = h
        .engine
        .workflow_task_history(
            NS,
            &task.task_id,
            WORKER,
            task.workflow_task_attempt,
            u64::MAX,
            10,
        )
        .await
        .expect("a page");
    assert!(page.events.is_empty() && !page.more);
}
