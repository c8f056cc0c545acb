//! Child workflows, continue-as-new, activity timeouts, the workflow list, the export
//! bundle, repair and archive, over the in-memory store with an injected clock. Timers
//! fire on the engine's own timer task, so tests advance the clock and then poll with a
//! real-time deadline.

use crate::support;

use std::time::Duration;

use keel_engine::model::RunStatus;
use keel_engine::workflow::{ListQuery, RunTarget, WorkflowTaskView};
use keel_engine::Engine;
use serde_json::{json, Value};
use support::*;

async fn harness() -> Harness {
    support::harness(Duration::from_secs(60), &[]).await
}

/// Polls until `probe` yields something or a real-time deadline passes.
macro_rules! eventually {
    ($what:expr, $probe:expr) => {{
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(found) = $probe {
                break found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {}",
                $what
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }};
}

async fn history(engine: &Engine, workflow_id: &str, run_id: &str) -> Vec<Value> {
    let page = engine
        .history(NS, workflow_id, run_id, 0, 1000)
        .await
        .expect("history reads");
    page.events
        .iter()
        .map(|e| serde_json::from_str::<Value>(e.get()).expect("event is json"))
        .collect()
}

async fn complete(engine: &Engine, task: &WorkflowTaskView, commands: &[Value]) {
    engine
        .complete_workflow_task(
            NS,
            &task.task_id,
            "w1",
            task.workflow_task_attempt,
            commands,
        )
        .await
        .expect("completion recorded");
}

fn args() -> Value {
    json!({"codec": "avro", "blob": ARGS})
}

fn start_child(policy: &str) -> Value {
    json!({"type": "start_child_workflow", "workflow_type": "child", "arguments": args(),
           "queue": QUEUE, "parent_close_policy": policy})
}

fn complete_cmd() -> Value {
    json!({"type": "complete_workflow", "result": {"codec": "avro", "blob": "Ag=="}})
}

async fn status_of(engine: &Engine, workflow_id: &str) -> RunStatus {
    engine
        .describe(NS, workflow_id, None)
        .await
        .expect("describes")
        .run
        .status
}

/// Starts `p` and completes its first task with `commands`; returns the parent's run id.
async fn start_parent_with(h: &Harness, commands: &[Value]) -> String {
    let started = h
        .engine
        .start_workflow(NS, start("p", "parent"))
        .await
        .expect("starts");
    let task = poll_wf(&h.engine).await.expect("parent task");
    complete(&h.engine, &task, commands).await;
    started.run.run_id
}

#[tokio::test]
async fn child_result_is_recorded_in_the_parent_and_wakes_it() {
    let h = harness().await;
    let parent_run = start_parent_with(&h, &[start_child("abandon")]).await;
    let child_task = poll_wf(&h.engine).await.expect("the child's first task");
    assert_eq!(child_task.workflow_type, "child");
    assert_eq!(child_task.workflow_id, format!("{parent_run}:1"));
    let started = &events(&child_task)[0];
    assert_eq!(
        started["payload"]["parent_workflow_run_id"],
        json!(parent_run)
    );
    assert_eq!(started["payload"]["parent_sequence"], json!(1));
    assert_eq!(child_task.arguments, args());
    let parent_events = history(&h.engine, "p", &parent_run).await;
    assert_eq!(
        types_of(&parent_events),
        [
            "WorkflowStarted",
            "ChildWorkflowScheduled",
            "ChildRunStarted"
        ]
    );
    assert_eq!(parent_events[1]["payload"]["sequence"], json!(1));
    assert_eq!(
        parent_events[1]["payload"]["child_workflow_type"],
        json!("child")
    );
    assert_eq!(
        parent_events[1]["payload"]["parent_close_policy"],
        json!("abandon")
    );
    assert!(
        poll_wf(&h.engine).await.is_none(),
        "the parent waits for its child"
    );

    complete(&h.engine, &child_task, &[complete_cmd()]).await;
    let parent_task = poll_wf(&h.engine).await.expect("the parent is woken");
    assert_eq!(parent_task.workflow_id, "p");
    let last = events(&parent_task).pop().expect("events");
    assert_eq!(last["event_type"], "ChildRunCompleted");
    assert_eq!(last["payload"]["sequence"], json!(1));
    assert_eq!(
        last["payload"]["result"],
        json!({"codec": "avro", "blob": "Ag=="})
    );
    assert_eq!(
        last["payload"]["child_workflow_run_id"],
        json!(child_task.run_id)
    );
}

#[tokio::test]
async fn failed_child_is_reported_as_child_run_failed() {
    let h = harness().await;
    start_parent_with(&h, &[start_child("abandon")]).await;
    let child_task = poll_wf(&h.engine).await.expect("child task");
    let fail = json!({"type": "fail_workflow", "message": "child broke", "exception_class": "builtins.ValueError"});
    complete(&h.engine, &child_task, &[fail]).await;
    let parent_task = poll_wf(&h.engine).await.expect("parent woken");
    let last = events(&parent_task).pop().expect("events");
    assert_eq!(last["event_type"], "ChildRunFailed");
    assert_eq!(last["payload"]["message"], "child broke");
    assert_eq!(last["payload"]["exception_class"], "builtins.ValueError");
}

#[tokio::test]
async fn parent_close_policy_terminates_or_cancels_open_children_and_abandon_leaves_them() {
    let h = harness().await;
    let commands = [
        start_child("terminate"),
        start_child("request_cancel"),
        start_child("abandon"),
        complete_cmd(),
    ];
    let parent_run = start_parent_with(&h, &commands).await;
    assert_eq!(status_of(&h.engine, "p").await, RunStatus::Completed);
    let child = |n: u64| format!("{parent_run}:{n}");
    eventually!("the terminate child to close", {
        (status_of(&h.engine, &child(1)).await == RunStatus::Terminated).then_some(())
    });
    eventually!("the request_cancel child to close", {
        (status_of(&h.engine, &child(2)).await == RunStatus::Cancelled).then_some(())
    });
    assert_eq!(status_of(&h.engine, &child(3)).await, RunStatus::Pending);
    let view = h
        .engine
        .describe(NS, &child(1), None)
        .await
        .expect("describes");
    assert!(view.close_payload["reason"]
        .as_str()
        .is_some_and(|r| r.contains("parent_close_policy terminate")));
}

#[tokio::test]
async fn continue_as_new_starts_the_next_run_of_the_same_workflow_id() {
    let h = harness().await;
    let first = h
        .engine
        .start_workflow(NS, start("c", "looper"))
        .await
        .expect("starts");
    let task = poll_wf(&h.engine).await.expect("task");
    let next_args = json!({"codec": "avro", "blob": "Ag=="});
    complete(
        &h.engine,
        &task,
        &[json!({"type": "continue_as_new", "arguments": next_args, "queue": QUEUE})],
    )
    .await;
    let second_task = poll_wf(&h.engine).await.expect("run 2's first task");
    assert_eq!(second_task.workflow_id, "c");
    assert_ne!(second_task.run_id, first.run.run_id);
    assert_eq!(second_task.arguments, next_args);
    let started = &events(&second_task)[0];
    assert_eq!(
        started["payload"]["continued_from_run_id"],
        json!(first.run.run_id)
    );

    let old = h
        .engine
        .describe(NS, "c", Some(&first.run.run_id))
        .await
        .expect("old run");
    assert_eq!(old.run.status, RunStatus::Completed);
    assert_eq!(old.run.closed_reason.as_deref(), Some("continued"));
    assert!(!old.is_current_run);
    let old_events = history(&h.engine, "c", &first.run.run_id).await;
    let last = old_events.last().expect("events");
    assert_eq!(last["event_type"], "WorkflowContinuedAsNew");
    assert_eq!(
        last["payload"]["continued_to_run_id"],
        json!(second_task.run_id)
    );
    assert_eq!(last["payload"]["continued_to_run_number"], json!(2));

    let current = h.engine.describe(NS, "c", None).await.expect("current");
    assert_eq!(current.run.run_id, second_task.run_id);
    assert_eq!(current.run.run_number, 2);
    assert_eq!(current.run_count, 2);
    let (instance, runs) = h.engine.list_runs(NS, "c").await.expect("runs");
    assert_eq!(instance.run_count, 2);
    let numbers: Vec<u32> = runs.iter().map(|r| r.run_number).collect();
    assert_eq!(numbers, [1, 2]);

    let listed = h
        .engine
        .list_workflows(
            NS,
            &ListQuery {
                page_size: 50,
                ..ListQuery::default()
            },
        )
        .await
        .expect("lists");
    assert_eq!(listed.runs.len(), 1, "one entry per workflow id");
    assert_eq!(listed.runs[0].run_id, second_task.run_id);
    assert_eq!(listed.workflow_count, Some(1));
}

#[tokio::test]
async fn a_continued_child_reports_its_last_run_to_the_parent() {
    let h = harness().await;
    start_parent_with(&h, &[start_child("abandon")]).await;
    let child_task = poll_wf(&h.engine).await.expect("child");
    complete(
        &h.engine,
        &child_task,
        &[json!({"type": "continue_as_new", "arguments": args()})],
    )
    .await;
    assert!(
        h.engine
            .list_runs(NS, &child_task.workflow_id)
            .await
            .expect("runs")
            .1
            .len()
            == 2,
        "the child continued"
    );
    let second = poll_wf(&h.engine).await.expect("the child's second run");
    assert_eq!(
        second.workflow_id, child_task.workflow_id,
        "the parent is not woken by a continue"
    );
    complete(&h.engine, &second, &[complete_cmd()]).await;
    let parent_task = poll_wf(&h.engine).await.expect("parent woken");
    let last = events(&parent_task).pop().expect("events");
    assert_eq!(last["event_type"], "ChildRunCompleted");
    assert_eq!(
        last["payload"]["child_workflow_run_id"],
        json!(second.run_id)
    );
}

fn schedule(extra: Value) -> Value {
    let mut cmd = json!({"type": "schedule_activity", "activity_type": "act", "arguments": args(), "queue": QUEUE});
    for (k, v) in extra.as_object().expect("object") {
        cmd[k] = v.clone();
    }
    cmd
}

/// Starts `a` and schedules one activity with `extra` options.
async fn start_with_activity(h: &Harness, extra: Value) {
    h.engine
        .start_workflow(NS, start("a", "wf"))
        .await
        .expect("starts");
    let task = poll_wf(&h.engine).await.expect("task");
    complete(&h.engine, &task, &[schedule(extra)]).await;
}

async fn last_event_when_woken(h: &Harness) -> Value {
    let task = eventually!("the workflow to be woken", poll_wf(&h.engine).await);
    events(&task).pop().expect("events")
}

#[tokio::test]
async fn start_to_close_timeout_retries_the_attempt_then_records_activity_timed_out() {
    let h = harness().await;
    let policy =
        json!({"max_attempts": 2, "backoff_seconds": [1], "non_retryable_error_types": []});
    start_with_activity(
        &h,
        json!({"start_to_close_timeout": 5, "retry_policy": policy}),
    )
    .await;
    let a1 = poll_act(&h.engine).await.expect("attempt 1");
    assert_eq!(a1.attempt_number, 1);
    h.clock.advance(Duration::from_secs(5));
    eventually!("attempt 1 to time out into its retry backoff", {
        let debug = h
            .engine
            .debug_run(NS, "a", None, false)
            .await
            .expect("debug view");
        (debug["activities"][0]["status"] == "backoff").then_some(())
    });
    h.clock.advance(Duration::from_secs(1));
    let a2 = eventually!("attempt 2", poll_act(&h.engine).await);
    assert_eq!(a2.attempt_number, 2);
    assert!(
        poll_wf(&h.engine).await.is_none(),
        "a retried timeout does not wake the workflow"
    );
    let late = h
        .engine
        .complete_activity_task(NS, &a1.task_id, &a1.activity_attempt_id, "w1", &json!(1))
        .await
        .expect_err("the timed-out attempt is fenced");
    assert_eq!(reason(late), "lease_expired");
    h.clock.advance(Duration::from_secs(5));
    let last = last_event_when_woken(&h).await;
    assert_eq!(last["event_type"], "ActivityTimedOut");
    assert_eq!(last["payload"]["timeout_kind"], "start_to_close");
    assert_eq!(last["payload"]["attempt_number"], json!(2));
    assert_eq!(last["payload"]["failure_category"], "timeout");
    assert_eq!(last["payload"]["sequence"], json!(1));
}

#[tokio::test]
async fn heartbeats_move_the_heartbeat_deadline_until_they_stop() {
    let h = harness().await;
    start_with_activity(
        &h,
        json!({"heartbeat_timeout": 3, "start_to_close_timeout": 60}),
    )
    .await;
    let a = poll_act(&h.engine).await.expect("attempt");
    h.clock.advance(Duration::from_secs(2));
    h.engine
        .heartbeat_activity_task(
            NS,
            &a.task_id,
            &a.activity_attempt_id,
            "w1",
            Some(&json!({"step": 1})),
        )
        .await
        .expect("heartbeat");
    h.clock.advance(Duration::from_secs(2));
    // Past the first deadline (3 s), within the moved one (5 s): the attempt lives on.
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.engine
        .heartbeat_activity_task(NS, &a.task_id, &a.activity_attempt_id, "w1", None)
        .await
        .expect("still the current attempt");
    h.clock.advance(Duration::from_secs(4));
    let last = last_event_when_woken(&h).await;
    assert_eq!(last["event_type"], "ActivityTimedOut");
    assert_eq!(last["payload"]["timeout_kind"], "heartbeat");
    assert_eq!(last["payload"]["heartbeat_details"], json!({"step": 1}));
}

#[tokio::test]
async fn schedule_to_start_timeout_fires_when_no_worker_takes_the_activity() {
    let h = harness().await;
    start_with_activity(&h, json!({"schedule_to_start_timeout": 2})).await;
    h.clock.advance(Duration::from_secs(3));
    let last = last_event_when_woken(&h).await;
    assert_eq!(last["event_type"], "ActivityTimedOut");
    assert_eq!(last["payload"]["timeout_kind"], "schedule_to_start");
    assert!(
        poll_act(&h.engine).await.is_none(),
        "the timed-out activity is gone"
    );
}

#[tokio::test]
async fn schedule_to_close_timeout_spans_every_attempt() {
    let h = harness().await;
    let policy =
        json!({"max_attempts": 10, "backoff_seconds": [2], "non_retryable_error_types": []});
    start_with_activity(
        &h,
        json!({"schedule_to_close_timeout": 5, "retry_policy": policy}),
    )
    .await;
    let failure = json!({"message": "nope", "type": "RuntimeError"});
    let a1 = poll_act(&h.engine).await.expect("attempt 1");
    h.engine
        .fail_activity_task(NS, &a1.task_id, &a1.activity_attempt_id, "w1", &failure)
        .await
        .expect("retried");
    h.clock.advance(Duration::from_secs(2));
    let a2 = eventually!("attempt 2", poll_act(&h.engine).await);
    assert_eq!(a2.attempt_number, 2);
    h.clock.advance(Duration::from_secs(3));
    let last = last_event_when_woken(&h).await;
    assert_eq!(last["event_type"], "ActivityTimedOut");
    assert_eq!(last["payload"]["timeout_kind"], "schedule_to_close");
}

#[tokio::test]
async fn an_activity_that_finishes_in_time_leaves_no_timeout_behind() {
    let h = harness().await;
    start_with_activity(
        &h,
        json!({"start_to_close_timeout": 5, "schedule_to_close_timeout": 10, "heartbeat_timeout": 2}),
    )
    .await;
    let a = poll_act(&h.engine).await.expect("attempt");
    h.engine
        .complete_activity_task(
            NS,
            &a.task_id,
            &a.activity_attempt_id,
            "w1",
            &json!({"codec": "avro", "blob": "AA=="}),
        )
        .await
        .expect("completes");
    let task = poll_wf(&h.engine).await.expect("woken");
    assert_eq!(
        events(&task).pop().expect("events")["event_type"],
        "ActivityCompleted"
    );
    complete(&h.engine, &task, &[complete_cmd()]).await;
    h.clock.advance(Duration::from_secs(11));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let view = h.engine.describe(NS, "a", None).await.expect("describes");
    assert_eq!(view.run.status, RunStatus::Completed);
    assert_eq!(
        types_of(&history(&h.engine, "a", &view.run.run_id).await)
            .last()
            .map(String::as_str),
        Some("WorkflowCompleted")
    );
}

#[tokio::test]
async fn bad_activity_timeouts_are_invalid_commands() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start("a", "wf"))
        .await
        .expect("starts");
    let task = poll_wf(&h.engine).await.expect("task");
    let err = h
        .engine
        .complete_workflow_task(
            NS,
            &task.task_id,
            "w1",
            1,
            &[schedule(json!({"start_to_close_timeout": "soon"}))],
        )
        .await
        .expect_err("rejected");
    assert_eq!(reason(err), "invalid_commands");
    let err = h
        .engine
        .complete_workflow_task(NS, &task.task_id, "w1", 1, &[json!({"type": "start_child_workflow", "workflow_type": "x", "parent_close_policy": "explode"})])
        .await
        .expect_err("rejected");
    assert_eq!(reason(err), "invalid_commands");
}

#[tokio::test]
async fn workflow_list_is_newest_first_with_filters_and_pages() {
    let h = harness().await;
    for (i, id) in ["w-1", "w-2", "w-3", "other-4"].iter().enumerate() {
        let kind = if i == 3 { "other" } else { "wf" };
        h.engine
            .start_workflow(NS, start(id, kind))
            .await
            .expect("starts");
        h.clock.advance(Duration::from_millis(10));
    }
    // Complete w-1.
    let task = eventually!("w-1's task", {
        let t = poll_wf(&h.engine).await.expect("a task");
        if t.workflow_id == "w-1" {
            Some(t)
        } else {
            None
        }
    });
    complete(&h.engine, &task, &[complete_cmd()]).await;

    let all = h
        .engine
        .list_workflows(
            NS,
            &ListQuery {
                page_size: 50,
                ..ListQuery::default()
            },
        )
        .await
        .expect("lists");
    let ids: Vec<&str> = all.runs.iter().map(|r| r.workflow_id.as_str()).collect();
    assert_eq!(ids, ["other-4", "w-3", "w-2", "w-1"]);
    assert_eq!(all.workflow_count, Some(4));
    assert!(all.next_page_token.is_none());

    let completed = h
        .engine
        .list_workflows(
            NS,
            &ListQuery {
                page_size: 50,
                status_bucket: Some("completed".into()),
                ..ListQuery::default()
            },
        )
        .await
        .expect("lists");
    assert_eq!(completed.runs.len(), 1);
    assert_eq!(completed.runs[0].workflow_id, "w-1");
    assert_eq!(completed.workflow_count, Some(1));

    let typed = h
        .engine
        .list_workflows(
            NS,
            &ListQuery {
                page_size: 50,
                workflow_type: Some("other".into()),
                ..ListQuery::default()
            },
        )
        .await
        .expect("lists");
    assert_eq!(typed.runs.len(), 1);
    let text = h
        .engine
        .list_workflows(
            NS,
            &ListQuery {
                page_size: 50,
                query: Some("W-".into()),
                ..ListQuery::default()
            },
        )
        .await
        .expect("lists");
    assert_eq!(text.runs.len(), 3);

    let first = h
        .engine
        .list_workflows(
            NS,
            &ListQuery {
                page_size: 3,
                ..ListQuery::default()
            },
        )
        .await
        .expect("page 1");
    assert_eq!(first.runs.len(), 3);
    let token = first.next_page_token.expect("more to come");
    let second = h
        .engine
        .list_workflows(
            NS,
            &ListQuery {
                page_size: 3,
                page_token: Some(token),
                ..ListQuery::default()
            },
        )
        .await
        .expect("page 2");
    assert_eq!(second.runs.len(), 1);
    assert_eq!(second.runs[0].workflow_id, "w-1");
    let bad = h
        .engine
        .list_workflows(
            NS,
            &ListQuery {
                page_size: 3,
                page_token: Some("!!".into()),
                ..ListQuery::default()
            },
        )
        .await
        .expect_err("bad token");
    assert_eq!(reason(bad), "invalid_page_token");
}

#[tokio::test]
async fn export_bundle_carries_history_and_a_checksum_of_its_canonical_json() {
    let h = harness().await;
    let run = h
        .engine
        .start_workflow(NS, start("x", "wf"))
        .await
        .expect("starts")
        .run;
    let task = poll_wf(&h.engine).await.expect("task");
    complete(&h.engine, &task, &[complete_cmd()]).await;
    let bundle = h
        .engine
        .export_history(NS, "x", &run.run_id)
        .await
        .expect("exports");
    assert_eq!(bundle["schema"], "durable-workflow.v2.history-export");
    assert_eq!(bundle["schema_version"], json!(1));
    assert_eq!(bundle["history_complete"], json!(true));
    assert_eq!(bundle["workflow"]["instance_id"], "x");
    assert_eq!(bundle["workflow"]["run_number"], json!(1));
    assert_eq!(
        bundle["payloads"]["output"]["data"],
        json!({"codec": "avro", "blob": "Ag=="})
    );
    // The bundle names each event's type once, as `type` (the SDK verifier's key).
    let exported = bundle["history_events"].as_array().expect("events");
    let types: Vec<&str> = exported
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(types, ["WorkflowStarted", "WorkflowCompleted"]);
    assert!(exported.iter().all(|e| e.get("event_type").is_none()));
    let checksum = bundle["integrity"]["checksum"]
        .as_str()
        .expect("checksum")
        .to_string();
    assert_eq!(keel_engine::workflow::bundle_checksum(&bundle), checksum);
    let mut tampered = bundle.clone();
    tampered["workflow"]["status"] = json!("failed");
    assert_ne!(keel_engine::workflow::bundle_checksum(&tampered), checksum);
}

#[tokio::test]
async fn repair_readies_a_failed_workflow_task_and_reports_when_nothing_is_needed() {
    let h = harness().await;
    let run = h
        .engine
        .start_workflow(NS, start("r", "wf"))
        .await
        .expect("starts")
        .run;
    let task = poll_wf(&h.engine).await.expect("task");
    let out = h
        .engine
        .repair_workflow(NS, "r", RunTarget::Current)
        .await
        .expect("repair");
    assert_eq!(
        out.outcome, "repair_not_needed",
        "a live lease needs nothing"
    );
    h.engine
        .fail_workflow_task(
            NS,
            &task.task_id,
            "w1",
            1,
            &json!({"message": "replay broke", "type": "NonDeterministic"}),
        )
        .await
        .expect("failure recorded");
    assert!(poll_wf(&h.engine).await.is_none(), "the task backs off");
    let out = h
        .engine
        .repair_workflow(NS, "r", RunTarget::Run(&run.run_id))
        .await
        .expect("repair");
    assert_eq!(out.outcome, "repair_dispatched");
    assert_eq!(out.target_scope, "run");
    let again = poll_wf(&h.engine)
        .await
        .expect("ready again without waiting out the backoff");
    assert_eq!(again.task_id, task.task_id);
    assert_eq!(
        types_of(&events(&again)).last().map(String::as_str),
        Some("RepairRequested")
    );
}

#[tokio::test]
async fn archive_needs_a_closed_current_run_and_happens_once() {
    let h = harness().await;
    let first = h
        .engine
        .start_workflow(NS, start("z", "wf"))
        .await
        .expect("starts")
        .run;
    let err = h
        .engine
        .archive_workflow(NS, "z", RunTarget::Current, None)
        .await
        .expect_err("open run");
    assert_eq!(reason(err), "run_not_closed");
    let task = poll_wf(&h.engine).await.expect("task");
    complete(
        &h.engine,
        &task,
        &[json!({"type": "continue_as_new", "arguments": args()})],
    )
    .await;
    let err = h
        .engine
        .repair_workflow(NS, "z", RunTarget::Run(&first.run_id))
        .await
        .expect_err("historical run");
    assert_eq!(reason(err), "historical_run_command_rejected");
    let task = poll_wf(&h.engine).await.expect("run 2");
    complete(&h.engine, &task, &[complete_cmd()]).await;
    let out = h
        .engine
        .archive_workflow(NS, "z", RunTarget::Current, Some("tidy"))
        .await
        .expect("archives");
    assert_eq!(out.outcome, "archived");
    let out = h
        .engine
        .archive_workflow(NS, "z", RunTarget::Current, None)
        .await
        .expect("idempotent");
    assert_eq!(out.outcome, "archive_not_needed");
    let view = h.engine.describe(NS, "z", None).await.expect("describes");
    assert_eq!(
        view.output,
        json!({"codec": "avro", "blob": "Ag=="}),
        "the close event stays the output"
    );
    let events = history(&h.engine, "z", &view.run.run_id).await;
    assert_eq!(
        types_of(&events[events.len() - 2..]),
        ["ArchiveRequested", "WorkflowArchived"]
    );
}

#[tokio::test]
async fn a_failed_child_is_retried_per_its_retry_policy_before_the_parent_hears() {
    let h = harness().await;
    let mut cmd = start_child("abandon");
    cmd["retry_policy"] =
        json!({"max_attempts": 2, "backoff_seconds": [2], "non_retryable_error_types": ["Fatal"]});
    let parent_run = start_parent_with(&h, &[cmd]).await;
    let first = poll_wf(&h.engine).await.expect("the child's first run");
    let fail = json!({"type": "fail_workflow", "message": "flaky", "exception_type": "Flaky"});
    complete(&h.engine, &first, std::slice::from_ref(&fail)).await;
    assert!(
        poll_wf(&h.engine).await.is_none(),
        "the retry waits out its backoff"
    );
    let parent_events = history(&h.engine, "p", &parent_run).await;
    let last = parent_events.last().expect("events");
    assert_eq!(last["event_type"], "ChildRunStarted");
    assert_eq!(last["payload"]["retry_attempt"], json!(2));
    assert_eq!(
        last["payload"]["retry_of_child_workflow_run_id"],
        json!(first.run_id)
    );
    h.clock.advance(Duration::from_secs(2));
    let second = eventually!("the child's retry", poll_wf(&h.engine).await);
    assert_eq!(second.workflow_id, first.workflow_id);
    assert_ne!(second.run_id, first.run_id);
    assert_eq!(
        second.arguments,
        args(),
        "the retry gets the original input"
    );
    let (instance, runs) = h
        .engine
        .list_runs(NS, &first.workflow_id)
        .await
        .expect("runs");
    assert_eq!(instance.run_count, 2);
    assert_eq!(
        runs.iter().map(|r| r.status).collect::<Vec<_>>(),
        [RunStatus::Failed, RunStatus::Pending]
    );
    // The last attempt's failure is final.
    complete(&h.engine, &second, &[fail]).await;
    let parent_task = poll_wf(&h.engine).await.expect("parent woken");
    let last = events(&parent_task).pop().expect("events");
    assert_eq!(last["event_type"], "ChildRunFailed");
    assert_eq!(
        last["payload"]["child_workflow_run_id"],
        json!(second.run_id)
    );
}

#[tokio::test]
async fn a_retention_pass_deletes_up_to_its_limit_and_says_when_runs_remain() {
    let h = harness().await;
    for i in 0..250 {
        h.engine
            .start_workflow(NS, start(&format!("old-{i}"), "t"))
            .await
            .expect("start");
        let task = poll_wf(&h.engine).await.expect("workflow task");
        complete_with_result(&h.engine, &task).await;
    }
    h.clock.advance(Duration::from_secs(31 * 86_400));
    let first = h.engine.retention_pass(NS, 200, None).await.expect("pass");
    assert_eq!((first.deleted_runs, first.more), (200, true));
    let second = h.engine.retention_pass(NS, 200, None).await.expect("pass");
    assert_eq!((second.deleted_runs, second.more), (50, false));
    let backlog = h.engine.retention_backlog(NS, 1000).await.expect("backlog");
    assert_eq!(backlog.eligible, 0, "nothing past retention is left behind");
}
