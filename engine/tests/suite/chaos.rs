//! The engine under injected storage faults (spurious conflicts, commit-unknown results
//! that did or did not apply, delays) and FoundationDB's limits: every workflow still
//! completes, and its history records each step exactly once.

use std::sync::Arc;
use std::time::Duration;

use keel_engine::clock::{Clock, ManualClock};
use keel_engine::model::{RunStatus, WorkerRecord};
use keel_engine::storage::simulated::{FaultConfig, SimulatedStore};
use keel_engine::storage::KvStore;
use keel_engine::workflow::{DuplicatePolicy, Poll, StartWorkflow};
use keel_engine::{Engine, EngineConfig};
use serde_json::{json, Value};

const NS: &str = "default";
const WORKFLOWS: usize = 30;

async fn drive(seed: u64) {
    let store = SimulatedStore::new(FaultConfig::none());
    let clock = ManualClock::new(1_780_000_000_000);
    let config = EngineConfig {
        workflow_task_lease: Duration::from_secs(5),
        activity_task_lease: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    let engine = Engine::open(
        Arc::new(store.clone()) as Arc<dyn KvStore>,
        Arc::new(clock.clone()) as Arc<dyn Clock>,
        config,
    )
    .await
    .expect("engine opens");
    engine
        .register_worker(WorkerRecord {
            worker_id: "w".into(),
            namespace: NS.into(),
            task_queue: "q".into(),
            runtime: None,
            sdk_version: None,
            build_id: None,
            supported_workflow_types: vec![],
            supported_activity_types: vec![],
            capabilities: vec![],
            registered_at_ms: 0,
            last_heartbeat_at_ms: 0,
        })
        .await
        .expect("registers");
    store.set_faults(FaultConfig::chaos(seed));

    let mut started = 0;
    while started < WORKFLOWS {
        let req = StartWorkflow {
            workflow_id: Some(format!("wf-{started}")),
            duplicate_policy: DuplicatePolicy::UseExisting,
            ..StartWorkflow::new("t", "q", json!({"codec": "avro", "blob": "AA=="}))
        };
        // A start that failed ambiguously is retried by the client with the same id.
        if engine.start_workflow(NS, req).await.is_ok() {
            started += 1;
        }
    }

    let poll = Poll {
        namespace: NS.into(),
        worker_id: "w".into(),
        task_queue: "q".into(),
        timeout: Duration::ZERO,
        history_page_size: 1000,
        poll_request_id: None,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut progressed = false;
        if let Ok(Some(task)) = engine.poll_workflow_task(&poll).await {
            progressed = true;
            let scheduled = task
                .history_events
                .iter()
                .any(|e| e.get().contains("\"ActivityScheduled\""));
            let completed = task
                .history_events
                .iter()
                .any(|e| e.get().contains("\"ActivityCompleted\""));
            let commands = if completed {
                vec![json!({"type": "complete_workflow", "result": "done"})]
            } else if !scheduled {
                vec![
                    json!({"type": "schedule_activity", "activity_type": "a", "arguments": null, "queue": "q"}),
                ]
            } else {
                vec![]
            };
            let _ = if commands.is_empty() {
                let waiting =
                    json!({"message": "waiting", "type": "WorkflowTaskWaitingForHistory"});
                engine
                    .fail_workflow_task(
                        NS,
                        &task.task_id,
                        "w",
                        task.workflow_task_attempt,
                        &waiting,
                    )
                    .await
            } else {
                engine
                    .complete_workflow_task(
                        NS,
                        &task.task_id,
                        "w",
                        task.workflow_task_attempt,
                        &commands,
                    )
                    .await
            };
        }
        if let Ok(Some(task)) = engine.poll_activity_task(&poll).await {
            progressed = true;
            let _ = engine
                .complete_activity_task(
                    NS,
                    &task.task_id,
                    &task.activity_attempt_id,
                    "w",
                    &json!("r"),
                )
                .await;
        }
        let mut done = 0;
        for i in 0..WORKFLOWS {
            if let Ok(v) = engine.describe(NS, &format!("wf-{i}"), None).await {
                if v.run.status == RunStatus::Completed {
                    done += 1;
                }
            }
        }
        if done == WORKFLOWS {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {done} of {WORKFLOWS} workflows completed (seed {seed})"
        );
        if !progressed {
            // Leases granted by commits whose result was lost lapse and are redelivered.
            clock.advance(Duration::from_secs(6));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let stats = store.fault_stats();
    assert!(
        stats.spurious_conflicts + stats.unknown_applied + stats.unknown_not_applied > 0,
        "faults were injected"
    );

    store.set_faults(FaultConfig::none());
    for i in 0..WORKFLOWS {
        let view = engine
            .describe(NS, &format!("wf-{i}"), None)
            .await
            .expect("describes");
        let page = engine
            .history(NS, &format!("wf-{i}"), &view.run.run_id, 0, 1000)
            .await
            .expect("history");
        let types: Vec<String> = page
            .events
            .iter()
            .map(|e| {
                serde_json::from_str::<Value>(e.get()).expect("json")["event_type"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        assert_eq!(
            types,
            [
                "WorkflowStarted",
                "ActivityScheduled",
                "ActivityCompleted",
                "WorkflowCompleted"
            ],
            "wf-{i}"
        );
    }
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workflow_completes_exactly_once_under_injected_storage_faults() {
    for seed in [1, 2, 3] {
        drive(seed).await;
    }
}
