//! Worker sessions in the engine, on the manual clock: activities scheduled with a
//! `worker_session` go only to the session's holder and at most
//! `max_concurrent_activities` at a time; a holder's lease is kept by heartbeats and
//! lapses on the durable timers; a lapsed session is reacquired by the next worker that
//! leases one of its activities, or ends (and fails its activities) when reacquisition
//! is not allowed, when its TTL passes, or when its holder closes it.

use crate::support;

use std::time::Duration;

use keel_engine::model::{SessionOptions, SessionStatus};
use keel_engine::sessions::SessionOutcome;
use keel_engine::workflow::{ActivityTaskView, Poll};
use keel_engine::Engine;
use serde_json::{json, Value};
use support::{harness, probe, reason, register, start, wait_wf, Harness, NS, WORKER};

const OTHER: &str = "w2";

fn options(session_id: &str, extra: Value) -> SessionOptions {
    let mut wire = json!({"session_id": session_id});
    if let (Some(w), Some(e)) = (wire.as_object_mut(), extra.as_object()) {
        w.extend(e.clone());
    }
    SessionOptions::from_wire(&wire).expect("valid options")
}

async fn setup() -> Harness {
    let h = harness(Duration::from_secs(300), &[]).await;
    register(&h.engine, OTHER, &[]).await;
    h
}

/// Starts workflow `id` and completes its first task with `n` activities of `session`.
async fn schedule(engine: &Engine, id: &str, session: Value, n: usize) {
    engine
        .start_workflow(NS, start(id, "wf"))
        .await
        .expect("starts");
    let task = wait_wf(engine).await;
    let commands: Vec<Value> = (0..n)
        .map(|_| {
            json!({
                "type": "schedule_activity", "activity_type": "act",
                "arguments": {"codec": "avro", "blob": "AA=="}, "queue": support::QUEUE,
                "worker_session": session,
            })
        })
        .collect();
    support::complete(engine, &task, commands).await;
}

fn poll_as(worker: &str) -> Poll {
    Poll {
        worker_id: worker.into(),
        ..probe()
    }
}

async fn poll(engine: &Engine, worker: &str) -> Option<ActivityTaskView> {
    engine
        .poll_activity_task(&poll_as(worker))
        .await
        .expect("poll succeeds")
}

async fn complete(engine: &Engine, task: &ActivityTaskView) {
    engine
        .complete_activity_task(
            NS,
            &task.task_id,
            &task.activity_attempt_id,
            &task.lease_owner,
            &json!({"codec": "avro", "blob": "AA=="}),
        )
        .await
        .expect("completes");
}

/// Moves the clock and fires every timer now due.
async fn advance(h: &Harness, by: Duration) {
    h.clock.advance(by);
    h.engine.fire_due_timers(1000).await.expect("timers fire");
}

async fn status(engine: &Engine, session_id: &str) -> (SessionStatus, Option<String>) {
    let s = engine
        .worker_session(NS, session_id)
        .await
        .expect("session");
    (s.record.status_at(s.now), s.record.lease_owner.clone())
}

/// The failures of the run's `ActivityFailed` events: `(exception_type, reason)`.
async fn activity_failures(engine: &Engine) -> Vec<(String, String)> {
    let task = wait_wf(engine).await;
    support::events(&task)
        .iter()
        .filter(|e| e["event_type"] == "ActivityFailed")
        .map(|e| {
            (
                e["payload"]["exception_type"].as_str().unwrap_or("").into(),
                e["payload"]["reason"].as_str().unwrap_or("").into(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_session_activity_goes_only_to_the_worker_holding_the_session() {
    let h = setup().await;
    let (outcome, snapshot) = h
        .engine
        .create_worker_session(
            NS,
            WORKER,
            options("s1", json!({"max_concurrent_activities": 2})),
        )
        .await
        .expect("created");
    assert_eq!(outcome, SessionOutcome::Created);
    assert_eq!(snapshot.record.lease_owner.as_deref(), Some(WORKER));
    schedule(&h.engine, "wf-1", json!({"session_id": "s1"}), 2).await;

    assert!(
        poll(&h.engine, OTHER).await.is_none(),
        "w2 gets no task of w1's session"
    );
    let first = poll(&h.engine, WORKER).await.expect("the holder gets one");
    let affinity = first
        .worker_session
        .clone()
        .expect("the task names its session");
    assert_eq!(affinity["session_id"], "s1");
    assert_eq!(affinity["lease_owner"], WORKER);
    assert_eq!(affinity["status"], "active");
    assert!(poll(&h.engine, OTHER).await.is_none());
    assert!(
        poll(&h.engine, WORKER).await.is_some(),
        "and the second one"
    );
}

#[tokio::test]
async fn the_first_worker_to_lease_creates_the_session_and_the_cap_holds_back_the_rest() {
    let h = setup().await;
    schedule(&h.engine, "wf-1", json!({"session_id": "lazy"}), 2).await;

    let first = poll(&h.engine, OTHER).await.expect("w2 takes the first");
    assert_eq!(
        status(&h.engine, "lazy").await,
        (SessionStatus::Active, Some(OTHER.into()))
    );
    assert!(
        poll(&h.engine, WORKER).await.is_none(),
        "w1 does not hold the session"
    );
    assert!(
        poll(&h.engine, OTHER).await.is_none(),
        "one activity at a time (max_concurrent_activities defaults to 1)"
    );
    complete(&h.engine, &first).await;
    let second = poll(&h.engine, OTHER)
        .await
        .expect("a slot freed: the second runs");
    assert_eq!(second.lease_owner, OTHER);
}

#[tokio::test]
async fn heartbeats_keep_the_session_and_without_them_it_lapses_to_expired() {
    let h = setup().await;
    h.engine
        .create_worker_session(NS, WORKER, options("hb", json!({"lease_seconds": 10})))
        .await
        .expect("created");
    for _ in 0..3 {
        advance(&h, Duration::from_secs(8)).await;
        h.engine
            .heartbeat_worker_session(NS, "hb", WORKER, None)
            .await
            .expect("renewed");
        assert_eq!(status(&h.engine, "hb").await.0, SessionStatus::Active);
    }
    let refused = h
        .engine
        .heartbeat_worker_session(NS, "hb", OTHER, None)
        .await
        .expect_err("not the holder");
    assert_eq!(reason(refused), "session_owner_mismatch");
    advance(&h, Duration::from_secs(11)).await;
    let s = h.engine.worker_session(NS, "hb").await.expect("session");
    assert_eq!(
        s.record.status,
        SessionStatus::Expired,
        "the timer lapsed it durably"
    );
    assert_eq!(s.record.failure_reason.as_deref(), Some("lease_expired"));
    let late = h
        .engine
        .heartbeat_worker_session(NS, "hb", WORKER, None)
        .await
        .expect_err("a lapsed lease is not renewed");
    assert_eq!(reason(late), "session_not_active");
}

#[tokio::test]
async fn a_lapsed_session_is_reacquired_by_the_next_worker_to_lease_its_activity() {
    let h = setup().await;
    h.engine
        .create_worker_session(NS, WORKER, options("re", json!({"lease_seconds": 10})))
        .await
        .expect("created");
    schedule(&h.engine, "wf-1", json!({"session_id": "re"}), 1).await;
    advance(&h, Duration::from_secs(11)).await;
    assert_eq!(status(&h.engine, "re").await.0, SessionStatus::Expired);

    let task = poll(&h.engine, OTHER)
        .await
        .expect("w2 reacquires the session");
    assert_eq!(task.lease_owner, OTHER);
    assert_eq!(
        status(&h.engine, "re").await,
        (SessionStatus::Active, Some(OTHER.into()))
    );
    let taken = h
        .engine
        .create_worker_session(NS, WORKER, options("re", json!({})))
        .await
        .expect_err("w2 holds it now");
    assert_eq!(reason(taken), "session_owned_by_another_worker");
}

#[tokio::test]
async fn a_lapse_without_reacquisition_ends_the_session_and_fails_its_activities() {
    let h = setup().await;
    let strict = json!({"session_id": "strict", "lease_seconds": 10, "allow_reacquire_after_failure": false});
    h.engine
        .create_worker_session(NS, WORKER, options("strict", strict.clone()))
        .await
        .expect("created");
    schedule(&h.engine, "wf-1", strict, 2).await;
    let running = poll(&h.engine, WORKER).await.expect("one runs");

    advance(&h, Duration::from_secs(11)).await;
    let s = h
        .engine
        .worker_session(NS, "strict")
        .await
        .expect("session");
    assert_eq!(s.record.status, SessionStatus::Closed);
    assert_eq!(s.record.failure_reason.as_deref(), Some("lease_expired"));
    assert_eq!(
        activity_failures(&h.engine).await,
        vec![
            (
                "WorkerSessionUnavailable".to_string(),
                "lease_expired".to_string()
            );
            2
        ],
        "the running and the pending activity both failed"
    );
    let late = h
        .engine
        .complete_activity_task(
            NS,
            &running.task_id,
            &running.activity_attempt_id,
            WORKER,
            &json!({"codec": "avro", "blob": "AA=="}),
        )
        .await;
    assert!(late.is_err(), "the failed activity takes no late result");
    assert!(poll(&h.engine, OTHER).await.is_none());
}

#[tokio::test]
async fn closing_a_session_fails_its_open_activities_and_the_id_is_never_reused() {
    let h = setup().await;
    h.engine
        .create_worker_session(NS, WORKER, options("c", json!({})))
        .await
        .expect("created");
    schedule(&h.engine, "wf-1", json!({"session_id": "c"}), 1).await;
    let wrong = h
        .engine
        .close_worker_session(NS, "c", OTHER, None)
        .await
        .expect_err("only the holder closes it");
    assert_eq!(reason(wrong), "session_owner_mismatch");
    let (outcome, _) = h
        .engine
        .close_worker_session(NS, "c", WORKER, Some("worker_shutdown"))
        .await
        .expect("closed");
    assert_eq!(outcome, SessionOutcome::Closed);
    assert_eq!(
        activity_failures(&h.engine).await,
        vec![(
            "WorkerSessionUnavailable".to_string(),
            "session_closed".to_string()
        )]
    );
    let (again, _) = h
        .engine
        .close_worker_session(NS, "c", WORKER, None)
        .await
        .expect("idempotent");
    assert_eq!(again, SessionOutcome::AlreadyClosed);
    let reused = h
        .engine
        .create_worker_session(NS, WORKER, options("c", json!({})))
        .await
        .expect_err("closed is terminal");
    assert_eq!(reason(reused), "session_closed");
}

#[tokio::test]
async fn the_ttl_ends_a_session_even_while_its_holder_renews_it() {
    let h = setup().await;
    h.engine
        .create_worker_session(
            NS,
            WORKER,
            options("ttl", json!({"lease_seconds": 20, "ttl_seconds": 30})),
        )
        .await
        .expect("created");
    advance(&h, Duration::from_secs(15)).await;
    h.engine
        .heartbeat_worker_session(NS, "ttl", WORKER, None)
        .await
        .expect("renewed");
    advance(&h, Duration::from_secs(16)).await;
    let s = h.engine.worker_session(NS, "ttl").await.expect("session");
    assert_eq!(s.record.status, SessionStatus::Closed);
    assert_eq!(s.record.failure_reason.as_deref(), Some("ttl_expired"));
}

#[tokio::test]
async fn a_session_that_must_exist_fails_its_activity_when_it_does_not() {
    let h = setup().await;
    schedule(
        &h.engine,
        "wf-1",
        json!({"session_id": "absent", "create_if_missing": false}),
        1,
    )
    .await;
    assert!(poll(&h.engine, WORKER).await.is_none());
    assert_eq!(
        activity_failures(&h.engine).await,
        vec![(
            "WorkerSessionUnavailable".to_string(),
            "session_missing".to_string()
        )]
    );
}

#[tokio::test]
async fn listing_pages_sessions_and_counts_them_by_status() {
    let h = setup().await;
    for id in ["a", "b", "c"] {
        h.engine
            .create_worker_session(NS, WORKER, options(id, json!({})))
            .await
            .expect("created");
    }
    h.engine
        .close_worker_session(NS, "b", WORKER, None)
        .await
        .expect("closed");
    let first = h.engine.worker_sessions(NS, 2, None).await.expect("page");
    let ids: Vec<_> = first
        .sessions
        .iter()
        .map(|s| s.record.options.session_id.clone())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(
        (
            first.metrics.total,
            first.metrics.active,
            first.metrics.closed
        ),
        (3, 2, 1)
    );
    let token = first.next_page_token.expect("more");
    let second = h
        .engine
        .worker_sessions(NS, 2, Some(&token))
        .await
        .expect("page");
    assert_eq!(second.sessions.len(), 1);
    assert_eq!(second.sessions[0].record.options.session_id, "c");
    assert!(second.next_page_token.is_none());
    let bad = h
        .engine
        .worker_sessions(NS, 2, Some("zz"))
        .await
        .expect_err("not a token");
    assert!(
        matches!(&bad, keel_engine::Error::Validation(fields) if fields.contains_key("next_page_token")),
        "{bad:?}"
    );
}

#[tokio::test]
async fn an_activity_heartbeat_of_the_holder_renews_its_session() {
    let h = setup().await;
    schedule(
        &h.engine,
        "wf-1",
        json!({"session_id": "busy", "lease_seconds": 10}),
        1,
    )
    .await;
    let task = poll(&h.engine, WORKER).await.expect("leased");
    for _ in 0..3 {
        advance(&h, Duration::from_secs(8)).await;
        h.engine
            .heartbeat_activity_task(NS, &task.task_id, &task.activity_attempt_id, WORKER, None)
            .await
            .expect("heartbeat");
        assert_eq!(
            status(&h.engine, "busy").await,
            (SessionStatus::Active, Some(WORKER.into()))
        );
    }
    complete(&h.engine, &task).await;
    advance(&h, Duration::from_secs(11)).await;
    assert_eq!(status(&h.engine, "busy").await.0, SessionStatus::Expired);
}

#[tokio::test]
async fn a_session_whose_holder_stopped_heartbeating_is_taken_over() {
    let h = setup().await;
    h.engine
        .create_worker_session(NS, WORKER, options("stale", json!({"lease_seconds": 3600})))
        .await
        .expect("created");
    schedule(&h.engine, "wf-1", json!({"session_id": "stale"}), 1).await;
    h.clock.advance(Duration::from_secs(121));
    h.engine
        .heartbeat_worker(NS, OTHER)
        .await
        .expect("w2 is alive");
    let task = poll(&h.engine, OTHER)
        .await
        .expect("w1 went silent: w2 reacquires its session");
    assert_eq!(task.lease_owner, OTHER);
    assert_eq!(
        status(&h.engine, "stale").await,
        (SessionStatus::Active, Some(OTHER.into()))
    );
}
