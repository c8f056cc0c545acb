//! Worker deployments in the engine: the lifecycle of a build-id cohort and what
//! promotion does to fresh starts.

use crate::support;

use std::time::Duration;

use keel_engine::model::WorkerRecord;
use keel_engine::{DeploymentAction, DeploymentOutcome, DeploymentState, Engine};
use support::{harness, start, NS, QUEUE, START};

async fn register(engine: &Engine, worker_id: &str, build_id: &str) {
    engine
        .register_worker(WorkerRecord {
            worker_id: worker_id.into(),
            namespace: NS.into(),
            task_queue: QUEUE.into(),
            runtime: Some("test".into()),
            sdk_version: None,
            build_id: Some(build_id.into()),
            supported_workflow_types: vec!["wf".into()],
            supported_activity_types: vec![],
            capabilities: vec![],
            registered_at_ms: START,
            last_heartbeat_at_ms: START,
        })
        .await
        .expect("worker registers");
}

async fn act(engine: &Engine, build_id: &str, action: DeploymentAction) -> DeploymentOutcome {
    engine
        .deployment_action(NS, QUEUE, Some(build_id), action)
        .await
        .expect("action runs")
}

fn done(o: DeploymentOutcome) -> keel_engine::WorkerDeployment {
    match o {
        DeploymentOutcome::Done(d) => d,
        DeploymentOutcome::Refused(_, b) => panic!("refused: {b:?}"),
    }
}

fn refused(o: DeploymentOutcome) -> Vec<&'static str> {
    match o {
        DeploymentOutcome::Done(d) => panic!("applied: {d:?}"),
        DeploymentOutcome::Refused(_, b) => b.iter().map(|b| b.reason).collect(),
    }
}

#[tokio::test]
async fn a_promoted_build_receives_fresh_starts_and_a_rollback_releases_them() {
    let h = harness(Duration::from_secs(30), &[]).await;
    register(&h.engine, "w-v1", "v1").await;
    register(&h.engine, "w-v2", "v2").await;

    let d = done(act(&h.engine, "v2", DeploymentAction::Promote).await);
    assert_eq!(d.state, DeploymentState::Promoted);
    assert!(d.new_start_selected);
    let run = h
        .engine
        .start_workflow(NS, start("a", "wf"))
        .await
        .expect("start")
        .run;
    assert_eq!(run.build_id.as_deref(), Some("v2"));
    // A start naming its own build keeps it.
    let mut own = start("b", "wf");
    own.build_id = Some("v1".into());
    let run = h.engine.start_workflow(NS, own).await.expect("start").run;
    assert_eq!(run.build_id.as_deref(), Some("v1"));

    let d = done(act(&h.engine, "v2", DeploymentAction::Rollback).await);
    assert_eq!(d.state, DeploymentState::RolledBack);
    assert!(!d.state.accepts_new_work());
    let run = h
        .engine
        .start_workflow(NS, start("c", "wf"))
        .await
        .expect("start")
        .run;
    assert_eq!(run.build_id, None);
    assert_eq!(
        refused(act(&h.engine, "v2", DeploymentAction::Resume).await),
        ["incompatible_policy"]
    );
}

#[tokio::test]
async fn a_refused_transition_changes_nothing() {
    let h = harness(Duration::from_secs(30), &[]).await;
    register(&h.engine, "w-v1", "v1").await;
    done(act(&h.engine, "v1", DeploymentAction::Drain).await);
    assert!(h
        .engine
        .cohort_draining(NS, QUEUE, Some("v1"))
        .await
        .expect("read"));
    let before = h
        .engine
        .worker_deployment(NS, QUEUE, Some("v1"))
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(
        refused(act(&h.engine, "v1", DeploymentAction::Promote).await),
        ["fleet_is_draining"]
    );
    let after = h
        .engine
        .worker_deployment(NS, QUEUE, Some("v1"))
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(before, after);
    // Resume through the lifecycle lifts the drain for polls at once.
    done(act(&h.engine, "v1", DeploymentAction::Resume).await);
    assert!(!h
        .engine
        .cohort_draining(NS, QUEUE, Some("v1"))
        .await
        .expect("read"));
    assert_eq!(
        refused(act(&h.engine, "v9", DeploymentAction::Promote).await),
        ["unknown_deployment"]
    );
    assert!(h
        .engine
        .worker_deployment(NS, QUEUE, Some("v9"))
        .await
        .expect("read")
        .is_none());
}
