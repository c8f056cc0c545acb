//! The operator surface of the engine: force-redeploy and the service registry,
//! cleanup of stale deployments (cohort drains, pinned runs), recover-stuck-workflow
//! (refusals, terminate-and-purge, continue-as-new chains, storage limits, concurrent
//! calls) and the audit log. In-memory or simulated store, injected clock.

use std::sync::Arc;
use std::time::Duration;

use keel_engine::clock::{Clock, ManualClock};
use keel_engine::keys::{prefix, Key};
use keel_engine::model::{RunStatus, WorkerRecord};
use keel_engine::operator::{
    Actor, CleanupRequest, CohortRef, RecoverRequest, RedeployRequest, ServiceKind,
};
use keel_engine::storage::memory::MemoryStore;
use keel_engine::storage::simulated::{FaultConfig, SimulatedStore};
use keel_engine::storage::{KvStore, ReadOptions};
use keel_engine::workflow::{
    CloseCommand, ListQuery, Poll, SignalRequest, StartWorkflow, WorkflowTaskView,
};
use keel_engine::{Engine, EngineConfig, Error};
use serde_json::{json, Value};

const NS: &str = "default";
const QUEUE: &str = "q";
const START: i64 = 1_780_000_000_000;

async fn engine_on(store: Arc<dyn KvStore>) -> (Engine, ManualClock) {
    let clock = ManualClock::new(START);
    let engine = Engine::open(
        store,
        Arc::new(clock.clone()) as Arc<dyn Clock>,
        EngineConfig {
            workflow_task_lease: Duration::from_secs(60),
            activity_task_lease: Duration::from_secs(60),
            ..EngineConfig::default()
        },
    )
    .await
    .expect("engine opens");
    (engine, clock)
}

async fn engine() -> Engine {
    let (engine, _) = engine_on(Arc::new(MemoryStore::new())).await;
    register(&engine, "w1", QUEUE, None, &[], None).await;
    engine
}

fn actor() -> Actor {
    Actor {
        principal: "ops-team".into(),
        roles: vec!["operator".into()],
    }
}

async fn register(
    engine: &Engine,
    worker_id: &str,
    queue: &str,
    build_id: Option<&str>,
    workflow_types: &[&str],
    service_url: Option<&str>,
) {
    engine
        .register_worker_endpoint(
            WorkerRecord {
                worker_id: worker_id.into(),
                namespace: NS.into(),
                task_queue: queue.into(),
                runtime: Some("test".into()),
                sdk_version: None,
                build_id: build_id.map(str::to_string),
                supported_workflow_types: workflow_types.iter().map(|t| t.to_string()).collect(),
                supported_activity_types: vec![],
                capabilities: vec![],
                registered_at_ms: START,
                last_heartbeat_at_ms: START,
            },
            service_url.map(str::to_string),
        )
        .await
        .expect("worker registers");
}

fn start_request(id: &str, workflow_type: &str) -> StartWorkflow {
    StartWorkflow {
        workflow_id: Some(id.into()),
        ..StartWorkflow::new(
            workflow_type,
            QUEUE,
            json!({"codec": "avro", "blob": "AA=="}),
        )
    }
}

fn poll() -> Poll {
    Poll {
        namespace: NS.into(),
        worker_id: "w1".into(),
        task_queue: QUEUE.into(),
        timeout: Duration::ZERO,
        history_page_size: 500,
        poll_request_id: None,
    }
}

async fn workflow_task(engine: &Engine) -> WorkflowTaskView {
    engine
        .poll_workflow_task(&poll())
        .await
        .expect("poll succeeds")
        .expect("a workflow task is ready")
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

fn schedule_activity(max_attempts: u64) -> Value {
    json!({"type": "schedule_activity", "activity_type": "charge",
           "arguments": {"codec": "avro", "blob": "AA=="},
           "retry_policy": {"max_attempts": max_attempts, "backoff_seconds": [30]}})
}

fn recover_request(workflow_type: &str, id: &str) -> RecoverRequest {
    RecoverRequest {
        service_name: workflow_type.into(),
        service_key: id.into(),
    }
}

fn rejection(e: Error) -> (&'static str, serde_json::Map<String, Value>) {
    match e {
        Error::Rejected { reason, extra, .. } => (reason, extra),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// Keys left under `prefix` for `(NS, run_id)`.
async fn keys_of_run(engine: &Engine, table: u8, run_id: &str) -> usize {
    let mut txn = engine.store().begin().await.expect("begin");
    txn.get_range(
        &Key::new(table).str(NS).str(run_id).range(),
        ReadOptions::limit(10_000).snapshot(),
    )
    .await
    .expect("range read")
    .len()
}

/// Starts `id` and has its first task schedule an activity; returns the run id.
async fn start_with_activity(
    engine: &Engine,
    id: &str,
    workflow_type: &str,
    attempts: u64,
) -> String {
    let run = engine
        .start_workflow(NS, start_request(id, workflow_type))
        .await
        .expect("starts")
        .run
        .run_id;
    let task = workflow_task(engine).await;
    complete(engine, &task, &[schedule_activity(attempts)]).await;
    run
}

#[tokio::test]
async fn recover_refuses_an_active_run_and_a_succeeded_one_and_changes_nothing() {
    let engine = engine().await;
    let run_id = start_with_activity(&engine, "order-1", "Checkout", 5).await;
    // The activity is scheduled and healthy: the run is waiting, not stuck.
    let err = engine
        .recover_stuck_workflow(NS, &recover_request("Checkout", "order-1"), &actor())
        .await
        .expect_err("an active run blocks recovery");
    let (reason, extra) = rejection(err);
    assert_eq!(reason, "retry_blocked");
    assert_eq!(extra["blockedReason"], "run_active");
    assert_eq!(extra["invocationIds"], json!([run_id]));
    assert_eq!(
        engine
            .describe(NS, "order-1", None)
            .await
            .expect("still there")
            .run
            .status,
        RunStatus::Waiting
    );

    // The activity completes, then the workflow.
    let act = engine
        .poll_activity_task(&poll())
        .await
        .expect("poll")
        .expect("activity task");
    engine
        .complete_activity_task(
            NS,
            &act.task_id,
            &act.activity_attempt_id,
            "w1",
            &json!({"codec": "avro", "blob": "AA=="}),
        )
        .await
        .expect("activity completes");
    let task = workflow_task(&engine).await;
    complete(
        &engine,
        &task,
        &[json!({"type": "complete_workflow", "result": {"codec": "avro", "blob": "AA=="}})],
    )
    .await;
    let err = engine
        .recover_stuck_workflow(NS, &recover_request("Checkout", "order-1"), &actor())
        .await
        .expect_err("a succeeded run blocks recovery");
    let (reason, extra) = rejection(err);
    assert_eq!(reason, "retry_blocked");
    assert_eq!(extra["blockedReason"], "previous_run_succeeded");
    assert_eq!(extra["invocationIds"], json!([run_id]));
    assert!(keys_of_run(&engine, prefix::HISTORY, &run_id).await > 0);

    // Unknown key, and a key of another type: not found.
    let (reason, _) = rejection(
        engine
            .recover_stuck_workflow(NS, &recover_request("Checkout", "nobody"), &actor())
            .await
            .expect_err("unknown"),
    );
    assert_eq!(reason, "instance_not_found");
    let (reason, _) = rejection(
        engine
            .recover_stuck_workflow(NS, &recover_request("Other", "order-1"), &actor())
            .await
            .expect_err("wrong type"),
    );
    assert_eq!(reason, "instance_not_found");
    match engine
        .recover_stuck_workflow(NS, &recover_request("Checkout", "bad.key"), &actor())
        .await
    {
        Err(Error::Validation(errors)) => assert!(errors.contains_key("serviceKey")),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[tokio::test]
async fn recover_terminates_a_run_whose_activity_keeps_failing_and_frees_its_id() {
    let engine = engine().await;
    let run_id = start_with_activity(&engine, "order-2", "Checkout", 100).await;
    let act = engine
        .poll_activity_task(&poll())
        .await
        .expect("poll")
        .expect("activity task");
    engine
        .fail_activity_task(
            NS,
            &act.task_id,
            &act.activity_attempt_id,
            "w1",
            &json!({"message": "card declined", "type": "Declined"}),
        )
        .await
        .expect("failure recorded");
    // Doctor's view: the run is stuck, with the attempt's failure.
    let counts = engine
        .invocation_counts(NS, Duration::from_secs(10))
        .await
        .expect("counts");
    assert_eq!(counts.stuck, 1);
    assert_eq!(counts.open_failures[0].id, run_id);
    assert!(counts.open_failures[0]
        .error_message
        .contains("card declined"));
    assert_eq!(counts.total, 1);

    let outcome = engine
        .recover_stuck_workflow(NS, &recover_request("Checkout", "order-2"), &actor())
        .await
        .expect("a stuck run is recovered");
    assert_eq!(outcome.terminated, vec![run_id.clone()]);
    assert_eq!(outcome.purged, vec![run_id.clone()]);
    assert!(outcome.state_cleared);
    let (reason, _) = rejection(
        engine
            .describe(NS, "order-2", None)
            .await
            .expect_err("purged"),
    );
    assert_eq!(reason, "instance_not_found");
    assert_eq!(keys_of_run(&engine, prefix::HISTORY, &run_id).await, 0);
    assert_eq!(keys_of_run(&engine, prefix::RUN, &run_id).await, 0);
    // The activity task and its timers went with the run.
    assert!(engine
        .poll_activity_task(&poll())
        .await
        .expect("poll")
        .is_none());
    let counts = engine
        .invocation_counts(NS, Duration::from_secs(10))
        .await
        .expect("counts");
    assert_eq!((counts.total, counts.stuck, counts.scanned), (0, 0, 0));
    assert!(engine
        .recent_closed_failures(NS, 20)
        .await
        .expect("failures")
        .is_empty());

    // The next start of the id begins blank.
    let again = engine
        .start_workflow(NS, start_request("order-2", "Checkout"))
        .await
        .expect("the id is free again");
    assert!(again.started_new);
    assert_ne!(again.run.run_id, run_id);
    let view = engine
        .describe(NS, "order-2", None)
        .await
        .expect("describes");
    assert_eq!(view.run_count, 1);
    assert_eq!(view.run.last_event_seq, 1);
}

#[tokio::test]
async fn recover_purges_every_run_of_a_continued_chain_oldest_first() {
    let engine = engine().await;
    let first = engine
        .start_workflow(NS, start_request("chain", "Looper"))
        .await
        .expect("starts")
        .run
        .run_id;
    let task = workflow_task(&engine).await;
    complete(
        &engine,
        &task,
        &[json!({"type": "continue_as_new", "arguments": {"codec": "avro", "blob": "AA=="}})],
    )
    .await;
    let second = engine
        .describe(NS, "chain", None)
        .await
        .expect("describes")
        .run
        .run_id;
    assert_ne!(first, second);
    let task = workflow_task(&engine).await;
    complete(
        &engine,
        &task,
        &[json!({"type": "fail_workflow", "message": "gave up"})],
    )
    .await;
    let failures = engine
        .recent_closed_failures(NS, 20)
        .await
        .expect("failures");
    assert_eq!(failures.len(), 1);
    assert_eq!(
        (failures[0].id.as_str(), failures[0].error_message.as_str()),
        (second.as_str(), "gave up")
    );

    let outcome = engine
        .recover_stuck_workflow(NS, &recover_request("Looper", "chain"), &actor())
        .await
        .expect("a failed chain is recovered");
    assert!(outcome.terminated.is_empty());
    assert_eq!(outcome.purged, vec![first.clone(), second.clone()]);
    for run in [&first, &second] {
        assert_eq!(keys_of_run(&engine, prefix::HISTORY, run).await, 0);
        assert_eq!(keys_of_run(&engine, prefix::RUN, run).await, 0);
    }
    let page = engine
        .list_workflows(
            NS,
            &ListQuery {
                page_size: 10,
                ..ListQuery::default()
            },
        )
        .await
        .expect("lists");
    assert!(page.runs.is_empty());
    assert_eq!(page.workflow_count, Some(0));
}

#[tokio::test]
async fn recover_stays_within_storage_limits_for_a_history_larger_than_one_transaction() {
    let store = Arc::new(SimulatedStore::new(FaultConfig::none()));
    let (engine, _) = engine_on(store.clone() as Arc<dyn KvStore>).await;
    let run_id = engine
        .start_workflow(NS, start_request("big", "Ingest"))
        .await
        .expect("starts")
        .run
        .run_id;
    // ~12 MB of history: more than one transaction may write (10 MB).
    let blob = "x".repeat(90_000);
    for i in 0..135 {
        engine
            .signal_workflow(
                NS,
                &SignalRequest {
                    workflow_id: "big".into(),
                    run_id: None,
                    signal_name: format!("chunk-{i}"),
                    input: json!({"codec": "avro", "blob": blob}),
                    request_id: None,
                },
            )
            .await
            .expect("signal recorded");
    }
    engine
        .close_workflow(NS, "big", None, CloseCommand::Terminate, Some("give up"))
        .await
        .expect("terminated");
    assert!(keys_of_run(&engine, prefix::HISTORY, &run_id).await > 130);
    let outcome = engine
        .recover_stuck_workflow(NS, &recover_request("Ingest", "big"), &actor())
        .await
        .expect("recovery fits the storage limits");
    assert_eq!(outcome.purged, vec![run_id.clone()]);
    assert_eq!(keys_of_run(&engine, prefix::HISTORY, &run_id).await, 0);
    assert_eq!(store.fault_stats().limit_rejections, 0);
}

#[tokio::test]
async fn concurrent_recovers_of_one_workflow_serialize_and_leave_it_blank() {
    let engine = engine().await;
    engine
        .start_workflow(NS, start_request("twice", "Checkout"))
        .await
        .expect("starts");
    let task = workflow_task(&engine).await;
    complete(
        &engine,
        &task,
        &[json!({"type": "fail_workflow", "message": "boom"})],
    )
    .await;
    let req = recover_request("Checkout", "twice");
    let who = actor();
    let (a, b) = tokio::join!(
        engine.recover_stuck_workflow(NS, &req, &who),
        engine.recover_stuck_workflow(NS, &req, &who),
    );
    let cleared = [&a, &b]
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|o| o.state_cleared))
        .count();
    assert_eq!(cleared, 1, "exactly one call clears the state: {a:?} {b:?}");
    for r in [a, b] {
        if let Err(e) = r {
            assert_eq!(rejection(e).0, "instance_not_found");
        }
    }
    assert!(engine.describe(NS, "twice", None).await.is_err());
    engine
        .start_workflow(NS, start_request("twice", "Checkout"))
        .await
        .expect("the id is free");
}

#[tokio::test]
async fn force_redeploy_binds_announcing_workers_and_bumps_revisions_when_types_change() {
    let engine = engine().await;
    register(
        &engine,
        "a1",
        "orders",
        Some("v1"),
        &["Checkout"],
        Some("https://a.example/svc"),
    )
    .await;
    let first = engine
        .force_redeploy(
            NS,
            &RedeployRequest {
                service_url: "https://A.example/svc/".into(),
                force: true,
                task_queue: None,
                build_id: None,
            },
            &actor(),
        )
        .await
        .expect("registers");
    assert_eq!(first.result, "created");
    assert!(first.deployment.deployment_id.starts_with("dp_"));
    assert_eq!(
        first.deployment.cohorts,
        vec![CohortRef {
            task_queue: "orders".into(),
            build_id: Some("v1".into())
        }]
    );
    assert_eq!(first.deployment.services.len(), 1);
    assert_eq!(first.deployment.services[0].revision, 1);

    // Same types: the revision stays; a new type: every revision of the set moves on.
    let redo = |force: bool| RedeployRequest {
        service_url: "https://a.example/svc".into(),
        force,
        task_queue: None,
        build_id: None,
    };
    let again = engine
        .force_redeploy(NS, &redo(true), &actor())
        .await
        .expect("again");
    assert_eq!(
        (again.result, again.deployment.deployment_id.as_str()),
        ("rediscovered", first.deployment.deployment_id.as_str())
    );
    assert!(again.bumped.is_empty());
    register(
        &engine,
        "a1",
        "orders",
        Some("v1"),
        &["Checkout", "Refund"],
        Some("https://a.example/svc"),
    )
    .await;
    let grown = engine
        .force_redeploy(NS, &redo(true), &actor())
        .await
        .expect("grown");
    assert_eq!(grown.result, "updated");
    let revisions: Vec<(String, u64)> = grown
        .deployment
        .services
        .iter()
        .map(|s| (s.name.clone(), s.revision))
        .collect();
    assert_eq!(
        revisions,
        vec![("Checkout".into(), 2), ("Refund".into(), 1)]
    );
    let unchanged = engine
        .force_redeploy(NS, &redo(false), &actor())
        .await
        .expect("unchanged");
    assert_eq!(unchanged.result, "unchanged");
    let services = engine.services(NS).await.expect("services");
    assert!(services
        .iter()
        .all(|s| s.kind == ServiceKind::Workflow
            && s.deployment_id == first.deployment.deployment_id));

    let (reason, _) = rejection(
        engine
            .force_redeploy(
                NS,
                &RedeployRequest {
                    service_url: "https://nobody.example".into(),
                    force: true,
                    task_queue: None,
                    build_id: None,
                },
                &actor(),
            )
            .await
            .expect_err("nothing answers for it"),
    );
    assert_eq!(reason, "discovery_failed");
    assert_eq!(engine.deployments(NS).await.expect("list").len(), 1);
}

#[tokio::test]
async fn cleanup_drains_stale_cohorts_and_keeps_a_pinned_deployment_until_forced() {
    let engine = engine().await;
    register(&engine, "old-w", QUEUE, Some("old"), &["Checkout"], None).await;
    register(&engine, "new-w", QUEUE, Some("new"), &["Checkout"], None).await;
    let redeploy = |url: &str, build: Option<&str>, queue: &str| RedeployRequest {
        service_url: url.into(),
        force: true,
        task_queue: Some(queue.into()),
        build_id: build.map(str::to_string),
    };
    let old = engine
        .force_redeploy(NS, &redeploy("http://old", Some("old"), QUEUE), &actor())
        .await
        .expect("old")
        .deployment;
    let new = engine
        .force_redeploy(NS, &redeploy("http://new", Some("new"), QUEUE), &actor())
        .await
        .expect("new")
        .deployment;

    // Unknown URL: nothing drained.
    let (reason, extra) = rejection(
        engine
            .cleanup_stale_deployments(
                NS,
                &CleanupRequest {
                    service_url: "http://elsewhere".into(),
                    force_drain: false,
                },
                &actor(),
            )
            .await
            .expect_err("unknown url"),
    );
    assert_eq!(reason, "deployment_not_found");
    assert_eq!(
        extra["registeredServiceUrls"].as_array().map(Vec::len),
        Some(2)
    );
    assert!(!engine
        .cohort_draining(NS, QUEUE, Some("old"))
        .await
        .expect("reads"));

    // A run pinned to the old build id keeps the old deployment until forceDrain.
    let mut pinned = start_request("pinned", "Checkout");
    pinned.build_id = Some("old".into());
    let pinned_run = engine
        .start_workflow(NS, pinned)
        .await
        .expect("starts")
        .run
        .run_id;
    let out = engine
        .cleanup_stale_deployments(
            NS,
            &CleanupRequest {
                service_url: "http://new".into(),
                force_drain: false,
            },
            &actor(),
        )
        .await
        .expect("cleanup");
    assert_eq!(out.kept.deployment_id, new.deployment_id);
    assert_eq!(out.drained, vec![old.deployment_id.clone()]);
    assert!(out.removed.is_empty());
    assert_eq!(out.skipped[0].run_ids, vec![pinned_run.clone()]);
    assert!(engine
        .cohort_draining(NS, QUEUE, Some("old"))
        .await
        .expect("reads"));
    assert!(!engine
        .cohort_draining(NS, QUEUE, Some("new"))
        .await
        .expect("reads"));
    let mut old_poll = poll();
    old_poll.worker_id = "old-w".into();
    let (reason, _) = rejection(
        engine
            .poll_workflow_task(&old_poll)
            .await
            .expect_err("draining"),
    );
    assert_eq!(reason, "worker_draining");

    let out = engine
        .cleanup_stale_deployments(
            NS,
            &CleanupRequest {
                service_url: "http://new".into(),
                force_drain: true,
            },
            &actor(),
        )
        .await
        .expect("forced cleanup");
    assert_eq!(out.terminated_runs, vec![pinned_run]);
    assert_eq!(out.removed, vec![old.deployment_id]);
    assert_eq!(
        engine
            .describe(NS, "pinned", None)
            .await
            .expect("describes")
            .run
            .status,
        RunStatus::Terminated
    );
    let left: Vec<String> = engine
        .deployments(NS)
        .await
        .expect("list")
        .into_iter()
        .map(|d| d.deployment_id)
        .collect();
    assert_eq!(left, vec![new.deployment_id]);
}

#[tokio::test]
async fn cleanup_never_drains_a_cohort_the_kept_deployment_uses_too() {
    let engine = engine().await;
    let bind = |url: &str| RedeployRequest {
        service_url: url.into(),
        force: true,
        task_queue: Some("shared".into()),
        build_id: None,
    };
    engine
        .force_redeploy(NS, &bind("http://one"), &actor())
        .await
        .expect("one");
    engine
        .force_redeploy(NS, &bind("http://two"), &actor())
        .await
        .expect("two");
    let out = engine
        .cleanup_stale_deployments(
            NS,
            &CleanupRequest {
                service_url: "http://two".into(),
                force_drain: false,
            },
            &actor(),
        )
        .await
        .expect("cleanup");
    assert_eq!(
        out.shared_cohorts,
        vec![CohortRef {
            task_queue: "shared".into(),
            build_id: None
        }]
    );
    assert_eq!(out.removed.len(), 1);
    assert!(!engine
        .cohort_draining(NS, "shared", None)
        .await
        .expect("reads"));
}

#[tokio::test]
async fn every_operator_action_is_audited_newest_first_with_its_actor() {
    let engine = engine().await;
    let _ = engine
        .recover_stuck_workflow(NS, &recover_request("Checkout", "nobody"), &actor())
        .await;
    engine
        .force_redeploy(
            NS,
            &RedeployRequest {
                service_url: "http://svc".into(),
                force: true,
                task_queue: Some(QUEUE.into()),
                build_id: None,
            },
            &actor(),
        )
        .await
        .expect("registers");
    let log = engine.audit_log(NS, 10).await.expect("audit log");
    assert_eq!(log.len(), 2);
    assert_eq!(
        (log[0].action.as_str(), log[0].outcome.as_str()),
        ("force-redeploy", "acknowledged")
    );
    assert_eq!(
        (log[1].action.as_str(), log[1].outcome.as_str()),
        ("recover-stuck-workflow", "refused")
    );
    assert_eq!(log[1].reason.as_deref(), Some("instance_not_found"));
    assert!(log
        .iter()
        .all(|e| e.actor.principal == "ops-team" && e.actor.roles == ["operator"]));
    assert!(engine
        .audit_log("other", 10)
        .await
        .expect("other namespace")
        .is_empty());
}
