//! The official Rust SDK (`durable-workflow` 4.10.2), unmodified, against a real
//! `keel serve`: the behaviours of the SDK's own examples, each asserted on its result
//! and, where the wire matters, on the history Keel recorded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use durable_workflow::testing::{WorkflowEnvironment, WorkflowHistory};
use durable_workflow::{
    json, wait_condition, ActivityOptions, ActivityRetryPolicy, ChildWorkflowOptions, Client,
    ConditionWaitResult, ContinueAsNewOptions, Error, LocalActivityOptions, ParallelOperation,
    ParallelResult, Result, SearchAttributeUpdate, StickyCacheOptions, Value, Worker,
    WorkflowHandle, WorkflowHistoryOptions, WorkflowListOptions, WorkflowResultOptions,
};
use keel_sdk_rust_e2e::{event_types, unique, wait_until, Keel};

const LIMIT: Duration = Duration::from_secs(60);

fn worker(client: &Client, queue: &str) -> Worker {
    Worker::new(client.clone(), queue)
        .worker_id(unique("rust-e2e-worker"))
        .poll_timeout(Duration::from_secs(1))
}

/// Runs `worker` until the workflow behind `handle` closes, then returns its result.
async fn run_to_result(worker: &Worker, handle: &WorkflowHandle) -> Result<Value> {
    let watcher = handle.clone();
    worker
        .run_until(async move {
            let deadline = tokio::time::Instant::now() + LIMIT;
            while tokio::time::Instant::now() < deadline {
                if watcher.describe().await.is_ok_and(|d| d.is_terminal()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await?;
    handle
        .result(WorkflowResultOptions {
            poll_interval: Duration::from_millis(50),
            timeout: Duration::from_secs(5),
        })
        .await
}

#[tokio::test]
async fn hello_world_runs_an_activity_and_catches_a_terminal_activity_failure() {
    let keel = Keel::start().await;
    let client = keel.client();
    let queue = unique("rust-hello");
    let mut w = worker(&client, &queue);
    w.register_activity("rust.hello_activity", |_ctx, args| async move {
        let name = args[0]["name"].as_str().unwrap_or("nobody").to_string();
        Ok(json!({"name": name, "greeting": format!("Hello, {name}!")}))
    });
    w.register_activity("rust.intentional_failure", |_ctx, _args| async move {
        Err(Error::WorkerLoop("intentional greeting failure".into()))
    });
    let activity_queue = queue.clone();
    w.register_workflow("rust.hello_workflow", move |ctx, input| {
        let activity_queue = activity_queue.clone();
        async move {
            let options = || {
                ActivityOptions::new()
                    .task_queue(activity_queue.clone())
                    .retry_policy(ActivityRetryPolicy::new(1))
                    .start_to_close_timeout(Duration::from_secs(10))
            };
            let greeting = ctx
                .activity_with_options("rust.hello_activity", options(), input.clone())
                .await?;
            let failed = match ctx
                .activity_with_options("rust.intentional_failure", options(), input)
                .await
            {
                Err(Error::ActivityFailed(_)) => true,
                Err(other) => return Err(other),
                Ok(_) => false,
            };
            Ok(json!({"greeting": greeting["greeting"], "intentional_activity_failure": failed}))
        }
    });
    let handle = client
        .start_workflow(
            "rust.hello_workflow",
            &queue,
            &unique("rust-hello"),
            json!([{"name": "Rust"}]),
        )
        .await
        .expect("starts");
    let result = run_to_result(&w, &handle).await.expect("completes");
    assert_eq!(
        result,
        json!({"greeting": "Hello, Rust!", "intentional_activity_failure": true})
    );
    // Keel sends one event-type key: the SDK refuses an event carrying `type` as well.
    let events = keel
        .history(
            &handle.workflow_id,
            handle.run_id.as_deref().expect("run id"),
        )
        .await;
    assert!(events
        .iter()
        .all(|e| e.get("type").is_none() && e["event_type"].is_string()));
}

#[tokio::test]
async fn activity_options_retry_with_backoff_heartbeat_and_end_in_a_terminal_failure() {
    let keel = Keel::start().await;
    let client = keel.client();
    let queue = unique("rust-activity-options");
    let attempts = Arc::new(AtomicUsize::new(0));
    let mut w = worker(&client, &queue);
    w.register_activity("rust.flaky", {
        let attempts = attempts.clone();
        move |ctx, _args| {
            let attempts = attempts.clone();
            async move {
                let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
                ctx.heartbeat(json!({"attempt": attempt})).await?;
                if attempt < 3 {
                    return Err(Error::WorkerLoop(format!("planned failure {attempt}")));
                }
                Ok(json!({"attempt": attempt}))
            }
        }
    });
    w.register_activity("rust.terminal", |_ctx, _args| async move {
        Err(Error::WorkerLoop("planned terminal failure".into()))
    });
    let activity_queue = queue.clone();
    w.register_workflow("rust.activity-options", move |ctx, _input| {
        let activity_queue = activity_queue.clone();
        async move {
            let retry = ActivityRetryPolicy::new(3).exponential_backoff(
                Duration::from_secs(1),
                2,
                Some(Duration::from_secs(10)),
            );
            let flaky = ctx
                .activity_with_options(
                    "rust.flaky",
                    ActivityOptions::new()
                        .task_queue(activity_queue.clone())
                        .retry_policy(retry)
                        .start_to_close_timeout(Duration::from_secs(30))
                        .schedule_to_close_timeout(Duration::from_secs(60))
                        .heartbeat_timeout(Duration::from_secs(5)),
                    json!([]),
                )
                .await?;
            let terminal = ctx
                .activity_with_options(
                    "rust.terminal",
                    ActivityOptions::new()
                        .task_queue(activity_queue)
                        .retry_policy(ActivityRetryPolicy::new(1))
                        .start_to_close_timeout(Duration::from_secs(10)),
                    json!([]),
                )
                .await;
            let failure = match terminal {
                Err(Error::ActivityFailed(f)) => json!({"kind": format!("{:?}", f.kind)}),
                Err(other) => return Err(other),
                Ok(v) => json!({"unexpected_success": v}),
            };
            Ok(json!({"retry_result": flaky, "terminal_failure": failure}))
        }
    });
    w.register().await.expect("registers");
    let started = std::time::Instant::now();
    let handle = client
        .start_workflow(
            "rust.activity-options",
            &queue,
            &unique("rust-options"),
            json!([]),
        )
        .await
        .expect("starts");
    let result = run_to_result(&w, &handle).await.expect("completes");
    assert_eq!(result["retry_result"], json!({"attempt": 3}));
    assert!(result["terminal_failure"]["kind"].is_string(), "{result}");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    // Two backoffs of 1 s and 2 s separate the three attempts.
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn continue_as_new_carries_a_batch_across_runs_to_its_result() {
    let keel = Keel::start().await;
    let client = keel.client();
    let queue = unique("rust-batch");
    let processed = Arc::new(AtomicUsize::new(0));
    let mut w = worker(&client, &queue);
    w.register_activity("process-item", {
        let processed = processed.clone();
        move |_ctx, _args| {
            let processed = processed.clone();
            async move {
                processed.fetch_add(1, Ordering::SeqCst);
                Ok(Value::Null)
            }
        }
    });
    let next_queue = queue.clone();
    w.register_workflow("bounded-batch", move |ctx, input| {
        let next_queue = next_queue.clone();
        async move {
            let next = input.get(0).and_then(Value::as_u64).unwrap_or(0);
            let stop = input.get(1).and_then(Value::as_u64).unwrap_or(0);
            let chunk_end = next.saturating_add(2).min(stop);
            for item in next..chunk_end {
                ctx.activity("process-item", json!([item])).await?;
            }
            if chunk_end < stop {
                return ctx.continue_as_new_with_options(
                    ContinueAsNewOptions::new().task_queue(next_queue),
                    json!([chunk_end, stop]),
                );
            }
            Ok(json!({"processed": stop}))
        }
    });
    let workflow_id = unique("rust-batch");
    let handle = client
        .start_workflow("bounded-batch", &queue, &workflow_id, json!([0, 5]))
        .await
        .expect("starts");
    // Describe answers for the chain's newest run.
    let watcher = handle.clone();
    w.run_until(async move {
        let deadline = tokio::time::Instant::now() + LIMIT;
        while tokio::time::Instant::now() < deadline {
            if watcher.describe().await.is_ok_and(|d| d.is_terminal()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("worker runs");
    let runs = keel
        .control(
            reqwest::Method::GET,
            &format!("/workflows/{workflow_id}/runs"),
            None,
        )
        .await;
    let runs = runs["runs"].as_array().cloned().unwrap_or_default();
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert_eq!(processed.load(Ordering::SeqCst), 5);
    let result = handle
        .result(WorkflowResultOptions {
            poll_interval: Duration::from_millis(50),
            timeout: Duration::from_secs(5),
        })
        .await
        .expect("the chain's result");
    assert_eq!(result, json!({"processed": 5}));
}

#[tokio::test]
async fn parallel_children_timers_and_activities_join_in_declaration_order() {
    let keel = Keel::start().await;
    let client = keel.client();
    let queue = unique("rust-trip");
    let mut w = worker(&client, &queue);
    w.register_activity(
        "trip.quote-flight",
        |_ctx, _args| async move { Ok(json!(120)) },
    );
    w.register_workflow(
        "trip.quote-hotel",
        |_ctx, _input| async move { Ok(json!(80)) },
    );
    let child_queue = queue.clone();
    w.register_workflow("trip.quote", move |ctx, _input| {
        let child_queue = child_queue.clone();
        async move {
            let results = ctx
                .join(vec![
                    ParallelOperation::activity("trip.quote-flight", json!([])),
                    ParallelOperation::group(vec![
                        ParallelOperation::child_workflow(
                            "trip.quote-hotel",
                            ChildWorkflowOptions::new(child_queue),
                            json!([]),
                        ),
                        ParallelOperation::timer(Duration::from_secs(1)),
                    ]),
                ])
                .await?;
            let flight = match &results[0] {
                ParallelResult::Activity(v) => v.clone(),
                other => return Err(Error::WorkerLoop(format!("member 0: {other:?}"))),
            };
            let hotel = match &results[1] {
                ParallelResult::Group(members) => match (&members[0], &members[1]) {
                    (ParallelResult::ChildWorkflow(child), ParallelResult::Timer) => {
                        child.result.clone()
                    }
                    other => return Err(Error::WorkerLoop(format!("group: {other:?}"))),
                },
                other => return Err(Error::WorkerLoop(format!("member 1: {other:?}"))),
            };
            Ok(json!({"members": results.len(), "flight": flight, "hotel": hotel}))
        }
    });
    let handle = client
        .start_workflow("trip.quote", &queue, &unique("rust-trip"), json!([]))
        .await
        .expect("starts");
    let result = run_to_result(&w, &handle).await.expect("completes");
    assert_eq!(result, json!({"members": 2, "flight": 120, "hotel": 80}));
}

#[tokio::test]
async fn a_saga_compensates_completed_steps_in_reverse_when_a_later_step_fails() {
    let keel = Keel::start().await;
    let client = keel.client();
    let queue = unique("rust-saga");
    let calls = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut w = worker(&client, &queue);
    for (name, outcome) in [
        ("trip.reserve-flight", Some("F-1")),
        ("trip.reserve-hotel", Some("H-1")),
        ("trip.charge", None),
        ("trip.cancel-flight", Some("ok")),
        ("trip.cancel-hotel", Some("ok")),
    ] {
        let calls = calls.clone();
        w.register_activity(name, move |_ctx, args| {
            let calls = calls.clone();
            async move {
                calls.lock().expect("lock").push(format!("{name}{args}"));
                match outcome {
                    Some(v) => Ok(json!(v)),
                    None => Err(Error::WorkerLoop("card declined".into())),
                }
            }
        });
    }
    w.register_workflow("trip.book", |ctx, _input| async move {
        let mut saga = ctx.saga();
        let no_retry = || ActivityOptions::new().retry_policy(ActivityRetryPolicy::new(1));
        let outcome = async {
            let flight = ctx
                .activity_with_options("trip.reserve-flight", no_retry(), json!([]))
                .await?;
            saga.add_compensation("trip.cancel-flight", json!([flight]))?;
            let hotel = ctx
                .activity_with_options("trip.reserve-hotel", no_retry(), json!([]))
                .await?;
            saga.add_compensation("trip.cancel-hotel", json!([hotel]))?;
            ctx.activity_with_options("trip.charge", no_retry(), json!([]))
                .await?;
            Ok(json!({"status": "booked"}))
        }
        .await;
        saga.finish(outcome).await
    });
    let handle = client
        .start_workflow("trip.book", &queue, &unique("rust-saga"), json!([]))
        .await
        .expect("starts");
    let outcome = run_to_result(&w, &handle).await;
    assert!(
        outcome.is_err(),
        "the charge failure is the workflow's: {outcome:?}"
    );
    let calls = calls.lock().expect("lock").clone();
    assert_eq!(
        calls,
        vec![
            "trip.reserve-flight[]",
            "trip.reserve-hotel[]",
            "trip.charge[]",
            r#"trip.cancel-hotel["H-1"]"#,
            r#"trip.cancel-flight["F-1"]"#,
        ]
    );
    let description = handle.describe().await.expect("describes");
    assert_eq!(description.status.as_deref(), Some("failed"));
}

// The predicate returns the SDK's own (large) error type.
#[allow(clippy::result_large_err)]
fn approval_worker(client: &Client, queue: &str, timeout: Duration) -> Worker {
    let mut w = worker(client, queue);
    w.register_workflow("approve-order", move |ctx, _input| async move {
        let predicate_ctx = ctx.clone();
        let outcome = wait_condition!(
            ctx,
            "approval-received",
            timeout: timeout,
            move || Ok(!predicate_ctx.signals("approve")?.is_empty()),
        )
        .await?;
        let status = match outcome {
            ConditionWaitResult::Satisfied => "approved",
            ConditionWaitResult::TimedOut => "approval_timed_out",
        };
        ctx.upsert_search_attributes(
            SearchAttributeUpdate::new()
                .keyword("OrderStatus", status)?
                .bool("NeedsAttention", outcome.is_timed_out())?,
        )?;
        Ok(json!({"status": status}))
    });
    w.declare_workflow_signals("approve-order", &["approve"])
        .expect("declares its signal");
    w
}

#[tokio::test]
async fn a_condition_satisfied_by_a_signal_replays_and_upserts_search_attributes() {
    let keel = Keel::start().await;
    keel.search_attribute("OrderStatus", "keyword").await;
    keel.search_attribute("NeedsAttention", "bool").await;
    let client = keel.client();
    let queue = unique("rust-approval");
    let w = approval_worker(&client, &queue, Duration::from_secs(300));
    let handle = client
        .start_workflow("approve-order", &queue, &unique("rust-approval"), json!([]))
        .await
        .expect("starts");
    let run_id = handle.run_id.clone().expect("run id");
    let signaller = handle.clone();
    let (workflow_id, opened_keel) = (handle.workflow_id.clone(), &keel);
    let signal = async move {
        wait_until("the condition wait to open", LIMIT, || async {
            event_types(&opened_keel.history(&workflow_id, &run_id).await)
                .contains(&"ConditionWaitOpened".to_string())
        })
        .await;
        signaller
            .signal("approve", json!([]))
            .await
            .expect("signals");
    };
    let (result, ()) = tokio::join!(run_to_result(&w, &handle), signal);
    assert_eq!(result.expect("completes"), json!({"status": "approved"}));
    let description = handle.describe().await.expect("describes");
    assert_eq!(
        description.raw["search_attributes"]["OrderStatus"],
        "approved"
    );
    assert_eq!(
        description.raw["search_attributes"]["NeedsAttention"],
        false
    );
    let events = keel
        .history(
            &handle.workflow_id,
            handle.run_id.as_deref().expect("run id"),
        )
        .await;
    let opened: Vec<&Value> = events
        .iter()
        .filter(|e| e["event_type"] == "ConditionWaitOpened")
        .collect();
    assert!(!opened.is_empty());
    assert!(opened
        .iter()
        .all(|e| e["payload"]["condition_wait_occurrence_id"]
            .as_str()
            .is_some_and(|o| !o.is_empty())));
}

#[tokio::test]
async fn a_condition_without_its_signal_times_out_on_the_durable_timer() {
    let keel = Keel::start().await;
    keel.search_attribute("OrderStatus", "keyword").await;
    keel.search_attribute("NeedsAttention", "bool").await;
    let client = keel.client();
    let queue = unique("rust-approval-timeout");
    let w = approval_worker(&client, &queue, Duration::from_secs(1));
    let handle = client
        .start_workflow("approve-order", &queue, &unique("rust-approval"), json!([]))
        .await
        .expect("starts");
    let result = run_to_result(&w, &handle).await.expect("completes");
    assert_eq!(result, json!({"status": "approval_timed_out"}));
    let events = keel
        .history(
            &handle.workflow_id,
            handle.run_id.as_deref().expect("run id"),
        )
        .await;
    assert!(event_types(&events).contains(&"ConditionWaitTimedOut".to_string()));
}

#[tokio::test]
async fn local_activities_retry_inside_the_workflow_task_and_replay_across_a_timer() {
    let keel = Keel::start().await;
    let client = keel.client();
    let queue = unique("rust-local");
    let mut w = worker(&client, &queue).local_activities(true);
    w.register_activity("example.local", |ctx, _| async move {
        if ctx.attempt_number == 1 {
            return Err(Error::WorkerLoop("example transient failure".into()));
        }
        Ok(json!({"value": 42, "local_attempt": ctx.attempt_number}))
    });
    w.register_activity("example.remote", |_, args| async move { Ok(args) });
    w.register_workflow("example.local-workflow", |ctx, _| async move {
        let transformed = ctx
            .local_activity_with_options(
                "example.local",
                LocalActivityOptions::new()
                    .retry_policy(
                        ActivityRetryPolicy::new(3).backoff_intervals([Duration::from_millis(200)]),
                    )
                    .start_to_close_timeout(Duration::from_secs(5))
                    .schedule_to_close_timeout(Duration::from_secs(20)),
                json!([]),
            )
            .await?;
        ctx.sleep(Duration::from_secs(1)).await?;
        ctx.activity("example.remote", transformed).await
    });
    let handle = client
        .start_workflow(
            "example.local-workflow",
            &queue,
            &unique("rust-local"),
            json!([]),
        )
        .await
        .expect("starts");
    let result = run_to_result(&w, &handle).await.expect("completes");
    assert_eq!(result, json!([{"value": 42, "local_attempt": 2}]));
    let events = keel
        .history(
            &handle.workflow_id,
            handle.run_id.as_deref().expect("run id"),
        )
        .await;
    let local: Vec<&Value> = events
        .iter()
        .filter(|e| e["payload"]["execution_mode"] == "local")
        .collect();
    assert_eq!(
        event_types(&local.into_iter().cloned().collect::<Vec<_>>()),
        ["ActivityScheduled", "ActivityCompleted"]
    );
}

#[tokio::test]
async fn sticky_execution_serves_every_task_after_the_first_from_the_cache() {
    let keel = Keel::start().await;
    let client = keel.client();
    let queue = unique("rust-sticky");
    let mut w = Worker::new(client.clone(), &queue)
        .build_id("rust-sticky-v1")
        .sticky_cache(StickyCacheOptions::new(16).ttl(Duration::from_secs(60)))
        .expect("a sticky cache")
        .poll_timeout(Duration::from_secs(1));
    w.register_workflow("example.sticky", |ctx, _| async move {
        let value = ctx.side_effect(|| 42)?;
        ctx.wait_signal("first").await?;
        ctx.wait_signal("second").await?;
        Ok(json!({"recorded_value": value}))
    });
    w.declare_workflow_signals("example.sticky", &["first", "second"])
        .expect("declares");
    w.register()
        .await
        .expect("Keel confirms the sticky registration");
    let handle = client
        .start_workflow("example.sticky", &queue, &unique("rust-sticky"), json!([]))
        .await
        .expect("starts");
    let mut tasks = 0;
    for signal in ["first", "second"] {
        loop {
            let d = handle.describe().await.expect("describes");
            if d.status.as_deref() == Some("waiting") {
                break;
            }
            tasks += w.run_once().await.expect("a task");
        }
        handle.signal(signal, json!([])).await.expect("signals");
    }
    while !handle.describe().await.expect("describes").is_terminal() {
        tasks += w.run_once().await.expect("a task");
    }
    let result = handle
        .result(WorkflowResultOptions::default())
        .await
        .expect("result");
    assert_eq!(result, json!({"recorded_value": 42}));
    let metrics = w.sticky_cache_metrics().expect("metrics");
    assert!(tasks >= 3, "{tasks} tasks");
    assert_eq!(metrics.miss, 1, "{metrics:?}");
    assert_eq!(metrics.forced_cold_replay, 0, "{metrics:?}");
    assert!(metrics.hit >= 2, "{metrics:?}");
}

#[tokio::test]
async fn pagination_reads_every_workflow_and_every_history_event() {
    let keel = Keel::start().await;
    let client = keel.client();
    let queue = unique("rust-pages");
    let mut w = worker(&client, &queue);
    w.register_workflow("pages.timers", |ctx, _| async move {
        for _ in 0..3 {
            ctx.sleep(Duration::from_millis(10)).await?;
        }
        Ok(json!("done"))
    });
    let mut handles = Vec::new();
    for _ in 0..7 {
        handles.push(
            client
                .start_workflow("pages.timers", &queue, &unique("rust-page"), json!([]))
                .await
                .expect("starts"),
        );
    }
    let last = handles.last().cloned().expect("a handle");
    run_to_result(&w, &last).await.expect("completes");
    let mut runs = client.iter_workflows(
        WorkflowListOptions::new()
            .page_size(3)
            .workflow_type("pages.timers"),
    );
    let mut seen = Vec::new();
    while let Some(run) = runs.next().await.expect("a page") {
        seen.push(run.workflow_id);
    }
    seen.sort();
    let mut expected: Vec<String> = handles.iter().map(|h| h.workflow_id.clone()).collect();
    expected.sort();
    assert_eq!(seen, expected);
    let run_id = last.run_id.clone().expect("run id");
    let mut pages = client.iter_workflow_history(
        last.workflow_id.clone(),
        run_id.clone(),
        WorkflowHistoryOptions::new().page_size(2),
    );
    let mut count = 0;
    while pages.next().await.expect("a page").is_some() {
        count += 1;
    }
    assert_eq!(count, keel.history(&last.workflow_id, &run_id).await.len());
    assert!(count >= 8, "{count} events");
}

#[tokio::test]
async fn exported_history_replays_offline_without_the_server() {
    let keel = Keel::start().await;
    let client = keel.client();
    let queue = unique("rust-export");
    let mut w = worker(&client, &queue);
    w.register_activity("greet", |_, args| async move {
        Ok(json!(format!(
            "Hello, {}!",
            args[0].as_str().unwrap_or("friend")
        )))
    });
    w.register_workflow("hello", |ctx, args| async move {
        let greeting = ctx.activity("greet", args).await?;
        ctx.sleep(Duration::from_millis(10)).await?;
        Ok(greeting)
    });
    let handle = client
        .start_workflow("hello", &queue, &unique("rust-export"), json!(["Ada"]))
        .await
        .expect("starts");
    let result = run_to_result(&w, &handle).await.expect("completes");
    assert_eq!(result, json!("Hello, Ada!"));
    let export = client
        .export_workflow_history(
            &handle.workflow_id,
            handle.run_id.as_deref().expect("run id"),
        )
        .await
        .expect("exports");
    let exported = export["history_events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        exported
            .iter()
            .all(|e| e["type"].is_string() && e.get("event_type").is_none()),
        "the bundle names each event's type once, as `type`"
    );
    drop(keel);
    let mut env = WorkflowEnvironment::new().expect("an environment");
    env.register_workflow("hello", |ctx, args| async move {
        let greeting = ctx.activity("greet", args).await?;
        ctx.sleep(Duration::from_millis(10)).await?;
        Ok(greeting)
    });
    let history = WorkflowHistory::from_export(export).expect("a replayable bundle");
    assert!(env.replay(&history).expect("replays").completed);
}
