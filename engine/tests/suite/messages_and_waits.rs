//! Signals, updates, queries, cancel/terminate, durable timers and condition waits over
//! the in-memory store with an injected clock: time moves only when a test advances it.

use crate::support;

use std::time::Duration;

use keel_engine::model::{RunStatus, UpdateStatus};
use keel_engine::queries::{QueryRequest, QueryTaskView};
use keel_engine::workflow::{
    CloseCommand, SignalRequest, StartWorkflow, UpdateRequest, UpdateWait, WorkflowTaskView,
};
use keel_engine::Engine;
use serde_json::{json, Value};
use support::*;

async fn harness() -> Harness {
    support::harness(Duration::from_secs(10), &["query_tasks"]).await
}

fn start_request(id: &str) -> StartWorkflow {
    StartWorkflow {
        execution_timeout_seconds: Some(3600),
        run_timeout_seconds: Some(600),
        ..start(id, "wf")
    }
}

fn last_payload(task: &WorkflowTaskView, event_type: &str) -> Value {
    events(task)
        .into_iter()
        .rev()
        .find(|e| e["event_type"] == event_type)
        .map(|e| e["payload"].clone())
        .unwrap_or_else(|| panic!("no {event_type} in {:?}", event_types(task)))
}

fn signal(id: &str, name: &str, request_id: Option<&str>) -> SignalRequest {
    SignalRequest {
        workflow_id: id.into(),
        run_id: None,
        signal_name: name.into(),
        input: json!({"codec": "avro", "blob": "AA=="}),
        request_id: request_id.map(str::to_string),
    }
}

fn update(id: &str, name: &str, wait_for: UpdateWait) -> UpdateRequest {
    UpdateRequest {
        workflow_id: id.into(),
        run_id: None,
        update_name: name.into(),
        input: json!({"codec": "avro", "blob": "AA=="}),
        request_id: None,
        wait_for,
        wait_timeout: Duration::from_secs(30),
    }
}

/// Query "state" of workflow `id`, answered within 5 s of engine time.
fn state_query(id: &str) -> QueryRequest {
    QueryRequest {
        workflow_id: id.into(),
        run_id: None,
        query_name: "state".into(),
        input: json!(null),
        timeout: Duration::from_secs(5),
    }
}

/// Polls until the query task a spawned `query_workflow` queued is taken.
async fn take_query_task(engine: &Engine) -> QueryTaskView {
    loop {
        if let Some(t) = engine
            .poll_query_task(NS, WORKER, QUEUE, Duration::ZERO)
            .await
            .expect("poll")
        {
            return t;
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn timer_fires_only_when_its_time_comes() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("t"))
        .await
        .expect("starts");
    let task = poll_wf(&h.engine).await.expect("first task");
    complete(
        &h.engine,
        &task,
        vec![json!({"type": "start_timer", "delay_seconds": 30})],
    )
    .await;
    h.clock.advance(Duration::from_secs(29));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(poll_wf(&h.engine).await.is_none(), "fired early");
    h.clock.advance(Duration::from_secs(1));
    let task = wait_wf(&h.engine).await;
    let scheduled = last_payload(&task, "TimerScheduled");
    let fired = last_payload(&task, "TimerFired");
    assert_eq!(scheduled["sequence"], 1);
    assert_eq!(fired["sequence"], 1);
    assert_eq!(fired["timer_id"], scheduled["timer_id"]);
    assert_eq!(fired["timer_kind"], "workflow_timer");
}

#[tokio::test]
async fn sequences_follow_command_order_and_the_condition_timeout_takes_none_keeping_the_occurrence(
) {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("c"))
        .await
        .expect("starts");
    let task = poll_wf(&h.engine).await.expect("first task");
    complete(
        &h.engine,
        &task,
        vec![
            json!({"type": "record_side_effect", "result": "AA=="}),
            json!({"type": "record_version_marker", "change_id": "x", "version": 2, "min_supported": 1, "max_supported": 2}),
            json!({"type": "upsert_search_attributes", "attributes": {"A": 1}}),
            json!({"type": "open_condition_wait", "condition_key": "k", "condition_definition_fingerprint": "sha256:f", "timeout_seconds": 5, "condition_wait_occurrence_id": "rust:condition-wait:0"}),
        ],
    )
    .await;
    // A signal that leaves the predicate false: the worker reopens the same wait.
    h.clock.advance(Duration::from_secs(3));
    h.engine
        .signal_workflow(NS, &signal("c", "s", None))
        .await
        .expect("signal");
    let task = poll_wf(&h.engine).await.expect("woken by the signal");
    complete(
        &h.engine,
        &task,
        vec![json!({"type": "open_condition_wait", "condition_key": "k", "condition_definition_fingerprint": "sha256:f", "timeout_seconds": 5, "condition_wait_occurrence_id": "rust:condition-wait:0"})],
    )
    .await;
    // The logical wait keeps its first deadline (t+5), not the reopen's (t+8).
    h.clock.advance(Duration::from_secs(2));
    let task = wait_wf(&h.engine).await;
    let evs = events(&task);
    let seqs: Vec<(String, Value)> = evs
        .iter()
        .filter(|e| e["payload"].get("sequence").is_some())
        .map(|e| {
            (
                e["event_type"].as_str().unwrap_or("").to_string(),
                e["payload"]["sequence"].clone(),
            )
        })
        .collect();
    assert_eq!(
        seqs,
        vec![
            ("SideEffectRecorded".into(), json!(1)),
            ("VersionMarkerRecorded".into(), json!(2)),
            ("SearchAttributesUpserted".into(), json!(3)),
            ("ConditionWaitOpened".into(), json!(4)),
            ("ConditionWaitOpened".into(), json!(5)),
            ("ConditionWaitTimedOut".into(), json!(5)),
        ]
    );
    let timed_out = last_payload(&task, "ConditionWaitTimedOut");
    let reopened = last_payload(&task, "ConditionWaitOpened");
    assert_eq!(
        timed_out["condition_wait_id"],
        reopened["condition_wait_id"]
    );
    assert_eq!(timed_out["timeout_seconds"], 5);
    // The authored occurrence travels on every event of the wait (the Rust SDK needs it).
    assert_eq!(
        reopened["condition_wait_occurrence_id"],
        "rust:condition-wait:0"
    );
    assert_eq!(
        timed_out["condition_wait_occurrence_id"],
        "rust:condition-wait:0"
    );
    // The next sequenced command takes 6.
    complete(
        &h.engine,
        &task,
        vec![json!({"type": "start_timer", "delay_seconds": 1})],
    )
    .await;
    h.clock.advance(Duration::from_secs(1));
    let task = wait_wf(&h.engine).await;
    assert_eq!(last_payload(&task, "TimerScheduled")["sequence"], 6);
}

#[tokio::test]
async fn satisfied_condition_wait_never_times_out() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("s"))
        .await
        .expect("starts");
    let task = poll_wf(&h.engine).await.expect("first task");
    complete(
        &h.engine,
        &task,
        vec![json!({"type": "open_condition_wait", "condition_key": "k", "timeout_seconds": 5})],
    )
    .await;
    h.engine
        .signal_workflow(NS, &signal("s", "go", None))
        .await
        .expect("signal");
    let task = poll_wf(&h.engine).await.expect("woken");
    // The predicate held: the worker moved on without reopening the wait.
    complete(
        &h.engine,
        &task,
        vec![json!({"type": "start_timer", "delay_seconds": 60})],
    )
    .await;
    h.clock.advance(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        poll_wf(&h.engine).await.is_none(),
        "the satisfied wait's timeout fired"
    );
}

#[tokio::test]
async fn condition_timeout_waits_for_a_leased_task_to_close() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("l"))
        .await
        .expect("starts");
    let task = poll_wf(&h.engine).await.expect("first task");
    complete(
        &h.engine,
        &task,
        vec![json!({"type": "open_condition_wait", "condition_key": "k", "timeout_seconds": 5})],
    )
    .await;
    h.engine
        .signal_workflow(NS, &signal("l", "go", None))
        .await
        .expect("signal");
    let leased = poll_wf(&h.engine).await.expect("woken");
    // Due while the worker holds the task: nothing is recorded behind its back.
    h.clock.advance(Duration::from_secs(6));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The worker satisfied the wait: the timeout is gone for good.
    complete(
        &h.engine,
        &leased,
        vec![json!({"type": "start_timer", "delay_seconds": 600})],
    )
    .await;
    h.clock.advance(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        poll_wf(&h.engine).await.is_none(),
        "a stale condition timeout fired"
    );
}

#[tokio::test]
async fn a_resent_signal_during_a_lease_is_recorded_once_and_wakes_the_next_task() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("g"))
        .await
        .expect("starts");
    let task = poll_wf(&h.engine).await.expect("first task");
    let receipt = h
        .engine
        .signal_workflow(NS, &signal("g", "s", Some("r1")))
        .await
        .expect("signal");
    assert_eq!(receipt["outcome"], "signal_received");
    let again = h
        .engine
        .signal_workflow(NS, &signal("g", "s", Some("r1")))
        .await
        .expect("resend");
    assert_eq!(again["command_id"], receipt["command_id"]);
    assert_eq!(again["retained"], true);
    assert!(
        poll_wf(&h.engine).await.is_none(),
        "one workflow task per run"
    );
    complete(
        &h.engine,
        &task,
        vec![json!({"type": "start_timer", "delay_seconds": 600})],
    )
    .await;
    let next = poll_wf(&h.engine).await.expect("the signal wakes the run");
    assert_eq!(
        event_types(&next)
            .iter()
            .filter(|t| *t == "SignalReceived")
            .count(),
        1
    );
}

#[tokio::test]
async fn update_accepted_during_a_lease_runs_in_the_next_task_then_the_body_resumes() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("u"))
        .await
        .expect("starts");
    let task = poll_wf(&h.engine).await.expect("first task");
    let accepted = h
        .engine
        .update_workflow(NS, &update("u", "inc", UpdateWait::Accepted))
        .await
        .expect("accepted");
    assert_eq!(accepted.update.status, UpdateStatus::Accepted);
    let update_id = accepted.update.update_id.clone();
    complete(
        &h.engine,
        &task,
        vec![json!({"type": "open_condition_wait", "condition_key": "k"})],
    )
    .await;
    let update_task = poll_wf(&h.engine).await.expect("the update's task");
    assert_eq!(
        update_task.workflow_update_id.as_deref(),
        Some(update_id.as_str())
    );
    // The main body must not advance in an update task.
    let refused = h
        .engine
        .complete_workflow_task(
            NS,
            &update_task.task_id,
            WORKER,
            update_task.workflow_task_attempt,
            &[json!({"type": "start_timer", "delay_seconds": 1})],
        )
        .await
        .expect_err("refused");
    assert_eq!(reason(refused), "invalid_commands");
    // A second update, accepted while the first is leased; a caller then waits for it
    // (the same request_id resent with wait_for=completed).
    let second_request = UpdateRequest {
        request_id: Some("second".into()),
        ..update("u", "inc", UpdateWait::Accepted)
    };
    let second = h
        .engine
        .update_workflow(NS, &second_request)
        .await
        .expect("second accepted");
    let waiter = {
        let engine = h.engine.clone();
        let request = UpdateRequest {
            wait_for: UpdateWait::Completed,
            ..second_request.clone()
        };
        tokio::spawn(async move { engine.update_workflow(NS, &request).await })
    };
    complete(
        &h.engine,
        &update_task,
        vec![json!({"type": "complete_update", "update_id": update_id, "result": {"codec": "avro", "blob": "AA=="}})],
    )
    .await;
    let body = poll_wf(&h.engine).await.expect("the next task");
    assert_eq!(
        body.workflow_update_id.as_deref(),
        Some(second.update.update_id.as_str()),
        "the second update runs before the body"
    );
    complete(
        &h.engine,
        &body,
        vec![
            json!({"type": "fail_update", "update_id": second.update.update_id, "message": "nope"}),
        ],
    )
    .await;
    let outcome = waiter.await.expect("joins").expect("update answered");
    assert!(outcome.retained);
    assert_eq!(outcome.update.status, UpdateStatus::Failed);
    assert_eq!(outcome.update.failure_message.as_deref(), Some("nope"));
    let resumed = poll_wf(&h.engine).await.expect("the body resumes");
    assert!(resumed.workflow_update_id.is_none());
    let t = event_types(&resumed);
    assert_eq!(t.iter().filter(|x| *x == "UpdateAccepted").count(), 2);
    assert_eq!(
        t.iter().filter(|x| *x == "UpdateApplied").count(),
        1,
        "{t:?}"
    );
    assert_eq!(t.iter().filter(|x| *x == "UpdateCompleted").count(), 2);
}

#[tokio::test]
async fn query_times_out_on_the_engine_clock_and_is_answered_by_a_poller() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("q"))
        .await
        .expect("starts");
    let request = state_query("q");
    let asking = {
        let engine = h.engine.clone();
        let request = request.clone();
        tokio::spawn(async move { engine.query_workflow(NS, &request).await })
    };
    let task = take_query_task(&h.engine).await;
    assert_eq!(task.query_name, "state");
    assert_eq!(task.query_task_attempt, 1);
    h.engine
        .complete_query_task(NS, &task.query_task_id, WORKER, 1, json!(42), json!(null))
        .expect("answered");
    let answer = asking.await.expect("joins").expect("answered");
    assert_eq!(answer.result, json!(42));

    let asking = {
        let engine = h.engine.clone();
        tokio::spawn(async move { engine.query_workflow(NS, &request).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.clock.advance(Duration::from_secs(5));
    let e = asking.await.expect("joins").expect_err("nobody answered");
    assert_eq!(reason(e), "query_worker_timeout");
}

#[tokio::test]
async fn cancel_closes_the_run_and_ends_its_waits() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("x"))
        .await
        .expect("starts");
    let task = poll_wf(&h.engine).await.expect("first task");
    complete(
        &h.engine,
        &task,
        vec![json!({"type": "start_timer", "delay_seconds": 5})],
    )
    .await;
    let pending = h
        .engine
        .update_workflow(NS, &update("x", "u", UpdateWait::Accepted))
        .await
        .expect("accepted");
    let receipt = h
        .engine
        .close_workflow(NS, "x", None, CloseCommand::Cancel, Some("why"))
        .await
        .expect("cancelled");
    assert_eq!(receipt["outcome"], "cancelled");
    let view = h.engine.describe(NS, "x", None).await.expect("describe");
    assert_eq!(view.run.status, RunStatus::Cancelled);
    assert!(view.run.waits.timers.is_empty() && view.run.waits.pending_updates.is_empty());
    let again = h
        .engine
        .update_workflow(
            NS,
            &UpdateRequest {
                request_id: None,
                ..update("x", "u", UpdateWait::Completed)
            },
        )
        .await
        .expect_err("closed");
    assert_eq!(reason(again), "run_not_active");
    let _ = pending;
    h.clock.advance(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        poll_wf(&h.engine).await.is_none(),
        "the deleted timer fired"
    );
    let e = h
        .engine
        .close_workflow(NS, "x", None, CloseCommand::Terminate, None)
        .await
        .expect_err("already closed");
    assert_eq!(reason(e), "run_not_active");
}

/// The run's whole history, as stored.
async fn history_of(engine: &Engine, workflow_id: &str) -> Vec<Value> {
    let view = engine
        .describe(NS, workflow_id, None)
        .await
        .expect("describe");
    let page = engine
        .history(NS, workflow_id, &view.run.run_id, 0, 1000)
        .await
        .expect("history");
    page.events
        .iter()
        .map(|e| serde_json::from_str(e.get()).expect("event json"))
        .collect()
}

/// `(event type, signal name)` of the events, signal names only for `SignalReceived`.
fn with_signal_names(events: &[Value]) -> Vec<(String, Option<String>)> {
    events
        .iter()
        .map(|e| {
            let name = e["payload"]["signal_name"].as_str().map(str::to_string);
            (e["event_type"].as_str().unwrap_or("").to_string(), name)
        })
        .collect()
}

fn signal_names(events: &[Value]) -> Vec<String> {
    with_signal_names(events)
        .into_iter()
        .filter_map(|(_, name)| name)
        .collect()
}

fn open_wait() -> Value {
    json!({"type": "open_condition_wait", "condition_key": "k", "condition_definition_fingerprint": "sha256:f"})
}

#[tokio::test]
async fn signals_sent_during_a_lease_are_recorded_after_that_tasks_commands_in_arrival_order() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("d"))
        .await
        .expect("starts");
    let task = poll_wf(&h.engine).await.expect("first task");
    let first = h
        .engine
        .signal_workflow(NS, &signal("d", "a", None))
        .await
        .expect("a");
    let second = h
        .engine
        .signal_workflow(NS, &signal("d", "b", None))
        .await
        .expect("b");
    assert_eq!(
        (
            first["command_sequence"].as_u64(),
            second["command_sequence"].as_u64()
        ),
        (Some(1), Some(2))
    );
    assert!(
        signal_names(&history_of(&h.engine, "d").await).is_empty(),
        "signals reached history while the task that has not seen them was leased"
    );
    complete(&h.engine, &task, vec![open_wait()]).await;

    let task = poll_wf(&h.engine)
        .await
        .expect("woken by the deferred signals");
    let types = event_types(&task);
    let opened = types
        .iter()
        .position(|t| t == "ConditionWaitOpened")
        .expect("wait opened");
    assert_eq!(
        &types[opened + 1..],
        ["SignalReceived", "SignalReceived"],
        "{types:?}"
    );
    assert_eq!(signal_names(&events(&task)), ["a", "b"]);
}

#[tokio::test]
async fn a_failed_or_expired_attempt_hands_its_deferred_signals_to_the_next_attempt_in_order() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("f"))
        .await
        .expect("starts");
    let task = poll_wf(&h.engine).await.expect("first task");
    h.engine
        .signal_workflow(NS, &signal("f", "during-failed", None))
        .await
        .expect("signal");
    h.engine
        .fail_workflow_task(
            NS,
            &task.task_id,
            WORKER,
            task.workflow_task_attempt,
            &json!({"type": "Boom", "message": "x"}),
        )
        .await
        .expect("failure recorded");
    // Backing off, the task is not leased: this one goes straight to history, after.
    h.engine
        .signal_workflow(NS, &signal("f", "during-backoff", None))
        .await
        .expect("signal");
    h.clock.advance(Duration::from_secs(2));
    let task = wait_wf(&h.engine).await;
    assert_eq!(
        signal_names(&events(&task)),
        ["during-failed", "during-backoff"]
    );

    // This lease ends by expiring: its deferred signal joins history at the next lease.
    h.engine
        .signal_workflow(NS, &signal("f", "during-expired", None))
        .await
        .expect("signal");
    h.clock.advance(Duration::from_secs(11));
    let task = wait_wf(&h.engine).await;
    assert_eq!(
        signal_names(&events(&task)),
        ["during-failed", "during-backoff", "during-expired"]
    );
}

#[tokio::test]
async fn a_closing_command_is_dropped_while_its_worker_has_not_seen_a_signal() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("c"))
        .await
        .expect("starts");
    let task = poll_wf(&h.engine).await.expect("first task");
    h.engine
        .signal_workflow(NS, &signal("c", "late", None))
        .await
        .expect("signal");
    complete(
        &h.engine,
        &task,
        vec![
            json!({"type": "record_side_effect", "result": ARGS}),
            json!({"type": "complete_workflow", "result": ARGS}),
        ],
    )
    .await;
    let view = h.engine.describe(NS, "c", None).await.expect("describe");
    assert!(
        !view.run.status.is_terminal(),
        "closed over an unseen signal"
    );

    let task = poll_wf(&h.engine)
        .await
        .expect("decides again with the signal");
    let types = event_types(&task);
    assert_eq!(
        types.iter().filter(|t| *t == "SideEffectRecorded").count(),
        1,
        "{types:?}"
    );
    assert_eq!(
        types.last().map(String::as_str),
        Some("SignalReceived"),
        "{types:?}"
    );
    complete(
        &h.engine,
        &task,
        vec![json!({"type": "complete_workflow", "result": ARGS})],
    )
    .await;
    let view = h.engine.describe(NS, "c", None).await.expect("describe");
    assert_eq!(view.run.status, RunStatus::Completed);
}

#[tokio::test]
async fn terminating_during_a_lease_records_the_deferred_signals_before_the_close() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("t"))
        .await
        .expect("starts");
    let _leased = poll_wf(&h.engine).await.expect("first task");
    h.engine
        .signal_workflow(NS, &signal("t", "s", None))
        .await
        .expect("signal");
    h.engine
        .close_workflow(NS, "t", None, CloseCommand::Terminate, None)
        .await
        .expect("terminated");
    let types: Vec<String> = with_signal_names(&history_of(&h.engine, "t").await)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let tail = &types[types.len() - 3..];
    assert_eq!(
        tail,
        ["SignalReceived", "TerminateRequested", "WorkflowTerminated"],
        "{types:?}"
    );
}

#[tokio::test]
async fn a_query_during_a_lease_replays_the_signals_that_lease_deferred() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("qd"))
        .await
        .expect("starts");
    let _leased = poll_wf(&h.engine).await.expect("first task");
    h.engine
        .signal_workflow(NS, &signal("qd", "s", None))
        .await
        .expect("signal");
    let request = state_query("qd");
    let asking = {
        let engine = h.engine.clone();
        tokio::spawn(async move { engine.query_workflow(NS, &request).await })
    };
    let task = take_query_task(&h.engine).await;
    let replayed: Vec<Value> = serde_json::from_str(task.history_events.get()).expect("events");
    let types = types_of(&replayed);
    assert_eq!(
        types.last().map(String::as_str),
        Some("SignalReceived"),
        "{types:?}"
    );
    let sequences: Vec<u64> = replayed
        .iter()
        .filter_map(|e| e["sequence"].as_u64())
        .collect();
    assert!(
        sequences.windows(2).all(|w| w[1] == w[0] + 1),
        "{sequences:?}"
    );
    h.engine
        .complete_query_task(NS, &task.query_task_id, WORKER, 1, json!(1), json!(null))
        .expect("answered");
    asking.await.expect("joins").expect("answered");
}

fn signal_with(id: &str, name: &str, blob: &str) -> SignalRequest {
    SignalRequest {
        input: json!({"codec": "avro", "blob": blob}),
        ..signal(id, name, None)
    }
}

#[tokio::test]
async fn a_signal_wait_takes_the_next_signal_of_its_name_at_its_own_sequence() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("sw"))
        .await
        .expect("starts");
    let task = poll_wf(&h.engine).await.expect("first task");
    complete(
        &h.engine,
        &task,
        vec![
            json!({"type": "record_side_effect", "result": "AA=="}),
            json!({"type": "open_signal_wait", "signal_name": "first"}),
        ],
    )
    .await;
    // Another name does not satisfy it (and does not wake the run into the wait).
    h.engine
        .signal_workflow(NS, &signal_with("sw", "other", "AQ=="))
        .await
        .expect("signal");
    let task = poll_wf(&h.engine).await.expect("woken by the signal");
    assert!(!event_types(&task).contains(&"SignalApplied".to_string()));
    // Replay finds the wait still pending: nothing new to decide.
    h.engine
        .fail_workflow_task(
            NS,
            &task.task_id,
            WORKER,
            task.workflow_task_attempt,
            &json!({"type": "WorkflowTaskWaitingForHistory"}),
        )
        .await
        .expect("waiting outcome");
    h.engine
        .signal_workflow(NS, &signal_with("sw", "first", "Ag=="))
        .await
        .expect("signal");
    let task = poll_wf(&h.engine).await.expect("woken by the signal");
    let opened = last_payload(&task, "SignalWaitOpened");
    let applied = last_payload(&task, "SignalApplied");
    assert_eq!(opened["sequence"], 2);
    assert_eq!(applied["sequence"], 2, "applied at the wait's sequence");
    assert_eq!(applied["signal_wait_id"], opened["signal_wait_id"]);
    assert_eq!(applied["signal_name"], "first");
    assert_eq!(applied["arguments"]["blob"], "Ag==");
}

#[tokio::test]
async fn a_signal_that_came_before_its_wait_is_applied_when_the_wait_opens() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("sb"))
        .await
        .expect("starts");
    let task = poll_wf(&h.engine).await.expect("first task");
    // Two signals arrive while the first task is leased: both are held, then recorded.
    for blob in ["AQ==", "Ag=="] {
        h.engine
            .signal_workflow(NS, &signal_with("sb", "go", blob))
            .await
            .expect("signal");
    }
    complete(
        &h.engine,
        &task,
        vec![json!({"type": "open_signal_wait", "signal_name": "go"})],
    )
    .await;
    // The wait opened in the same completion that recorded the held signals: it takes
    // the oldest, and the run has a task to see it.
    let task = poll_wf(&h.engine)
        .await
        .expect("a task for the applied signal");
    assert_eq!(
        last_payload(&task, "SignalApplied")["arguments"]["blob"],
        "AQ=="
    );
    complete(
        &h.engine,
        &task,
        vec![json!({"type": "open_signal_wait", "signal_name": "go"})],
    )
    .await;
    // The second wait takes the buffered second signal at once, from history.
    let task = poll_wf(&h.engine)
        .await
        .expect("a task for the second signal");
    let applied: Vec<Value> = events(&task)
        .into_iter()
        .filter(|e| e["event_type"] == "SignalApplied")
        .map(|e| e["payload"].clone())
        .collect();
    assert_eq!(applied.len(), 2);
    assert_eq!(applied[1]["arguments"]["blob"], "Ag==");
    assert_eq!(applied[1]["sequence"], 2);
}

#[tokio::test]
async fn a_workflow_task_that_keeps_failing_is_visible_on_the_run_until_one_completes() {
    let h = harness().await;
    h.engine
        .start_workflow(NS, start_request("fails"))
        .await
        .expect("starts");
    let failure = json!({"type": "NonDeterministicReplay", "message": "condition_wait_occurrence_id_missing"});
    for attempt in 1..=2u32 {
        if attempt > 1 {
            h.clock.advance(Duration::from_secs(2));
        }
        let task = wait_wf(&h.engine).await;
        h.engine
            .fail_workflow_task(
                NS,
                &task.task_id,
                WORKER,
                task.workflow_task_attempt,
                &failure,
            )
            .await
            .expect("failure accepted");
        let run = h
            .engine
            .describe(NS, "fails", None)
            .await
            .expect("describes")
            .run;
        let seen = run
            .workflow_task_failure
            .expect("the failure is on the run");
        assert_eq!(seen.failures, attempt);
        assert_eq!(seen.failure_type, "NonDeterministicReplay");
        assert_eq!(seen.message, "condition_wait_occurrence_id_missing");
    }
    // The operator doctor's view: the run is stuck, with the worker's reason.
    let counts = h
        .engine
        .invocation_counts(NS, Duration::from_secs(10))
        .await
        .expect("counts");
    assert_eq!(counts.stuck, 1);
    let message = &counts.open_failures[0].error_message;
    assert!(
        message.contains("2 time(s)") && message.contains("condition_wait_occurrence_id_missing"),
        "{message}"
    );
    h.clock.advance(Duration::from_secs(4));
    let task = wait_wf(&h.engine).await;
    complete(
        &h.engine,
        &task,
        vec![json!({"type": "start_timer", "delay_seconds": 60})],
    )
    .await;
    let run = h
        .engine
        .describe(NS, "fails", None)
        .await
        .expect("describes")
        .run;
    assert!(
        run.workflow_task_failure.is_none(),
        "a completion clears it"
    );
}
