//! Schedules over the in-memory store with an injected clock: firing on time through the
//! durable timer service, exactly-once starts across re-fired timers and restarts,
//! catch-up after downtime, pause/resume/trigger/backfill, every overlap policy, DST, run
//! limits, jitter, validation and the audit history.

use std::sync::Arc;
use std::time::Duration;

use keel_engine::clock::{Clock, ManualClock, Millis};
use keel_engine::model::{RunStatus, TimerKey, WorkerRecord};
use keel_engine::schedules::{
    parse_instant, FireOutcome, OverlapPolicy, ScheduleInput, ScheduleListQuery, SchedulePatch,
    ScheduleRecord, ScheduleStatus,
};
use keel_engine::storage::memory::MemoryStore;
use keel_engine::storage::simulated::{FaultConfig, SimulatedStore};
use keel_engine::storage::{KvStore, ReadOptions};
use keel_engine::workflow::{CloseCommand, Poll};
use keel_engine::{Engine, EngineConfig, Error};
use serde_json::{json, Value};

const NS: &str = "default";
const QUEUE: &str = "sched-q";
const MINUTE: Duration = Duration::from_secs(60);

fn at(iso: &str) -> Millis {
    parse_instant(iso).expect("valid instant")
}

struct Harness {
    engine: Engine,
    clock: ManualClock,
    store: Arc<dyn KvStore>,
}

async fn open_on(store: Arc<dyn KvStore>, clock: &ManualClock) -> Engine {
    Engine::open(
        store,
        Arc::new(clock.clone()) as Arc<dyn Clock>,
        EngineConfig::default(),
    )
    .await
    .expect("engine opens")
}

async fn harness(start: &str) -> Harness {
    let store: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(at(start));
    let engine = open_on(store.clone(), &clock).await;
    Harness {
        engine,
        clock,
        store,
    }
}

impl Harness {
    /// Moves the clock and applies every timer now due (the background timer service
    /// may apply some first; both paths are idempotent).
    async fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.settle().await;
    }

    async fn advance_to(&self, iso: &str) {
        let target = at(iso);
        let now = self.clock.now_ms();
        assert!(target >= now, "the clock only moves forward");
        self.advance(Duration::from_millis((target - now) as u64))
            .await;
    }

    async fn settle(&self) {
        for _ in 0..50 {
            if self
                .engine
                .fire_due_timers(1000)
                .await
                .expect("timers fire")
                == 0
            {
                return;
            }
        }
        panic!("timers kept firing");
    }

    async fn create(&self, body: Value) -> ScheduleRecord {
        let input = ScheduleInput::from_json(&body).expect("valid schedule");
        self.engine
            .create_schedule(NS, input)
            .await
            .expect("schedule created")
    }

    async fn describe(&self, id: &str) -> ScheduleRecord {
        self.engine
            .describe_schedule(NS, id)
            .await
            .expect("schedule exists")
    }

    async fn history(&self, id: &str) -> Vec<Value> {
        self.engine
            .schedule_history(NS, id, 0, 500)
            .await
            .expect("history reads")
            .events
    }

    async fn event_types(&self, id: &str) -> Vec<String> {
        self.history(id)
            .await
            .iter()
            .map(|e| e["event_type"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// Workflow ids of runs the schedule started, in order (from its audit history).
    async fn started(&self, id: &str) -> Vec<String> {
        self.history(id)
            .await
            .iter()
            .filter(|e| {
                e["event_type"] == "ScheduleTriggered"
                    && e["payload"]["outcome"]
                        .as_str()
                        .is_some_and(|o| o.starts_with("started"))
            })
            .map(|e| e["workflow_instance_id"].as_str().unwrap_or("").to_string())
            .collect()
    }

    async fn status(&self, workflow_id: &str) -> RunStatus {
        self.engine
            .describe(NS, workflow_id, None)
            .await
            .expect("workflow exists")
            .run
            .status
    }

    async fn terminate(&self, workflow_id: &str) {
        self.engine
            .close_workflow(NS, workflow_id, None, CloseCommand::Terminate, Some("test"))
            .await
            .expect("terminated");
    }
}

fn every_minute(id: &str, overlap: &str) -> Value {
    json!({
        "schedule_id": id,
        "spec": {"cron_expressions": ["* * * * *"]},
        "action": {"workflow_type": "sched.wf", "task_queue": QUEUE},
        "overlap_policy": overlap,
    })
}

#[tokio::test]
async fn interval_schedule_starts_runs_on_time_with_deterministic_ids() {
    let h = harness("2026-01-05T00:07:00Z").await;
    let s = h
        .create(json!({
            "schedule_id": "tick",
            "spec": {"intervals": [{"every": "PT30M", "offset": "PT5M"}]},
            "action": {"workflow_type": "sched.wf", "task_queue": QUEUE, "execution_timeout_seconds": 600},
            "memo": {"owner": "ops"},
        }))
        .await;
    assert_eq!(s.next_fire_at_ms, Some(at("2026-01-05T00:35:00Z")));

    // One second early: nothing.
    h.advance_to("2026-01-05T00:34:59Z").await;
    assert!(h.started("tick").await.is_empty());
    h.advance(Duration::from_secs(1)).await;
    assert_eq!(h.started("tick").await, ["tick-2026-01-05T00:35:00Z"]);
    h.advance_to("2026-01-05T01:05:00Z").await;
    assert_eq!(
        h.started("tick").await,
        ["tick-2026-01-05T00:35:00Z", "tick-2026-01-05T01:05:00Z"]
    );

    let view = h
        .engine
        .describe(NS, "tick-2026-01-05T00:35:00Z", None)
        .await
        .expect("run exists");
    assert_eq!(view.run.workflow_type, "sched.wf");
    assert_eq!(view.run.task_queue, QUEUE);
    assert_eq!(view.run.execution_timeout_seconds, Some(600));
    assert_eq!(view.run.memo, json!({"owner": "ops"}));
    assert_eq!(
        view.run.search_attributes["DurableWorkflowScheduleId"],
        "tick"
    );
    assert_eq!(
        view.run.search_attributes["DurableWorkflowScheduledStartTime"],
        "2026-01-05T00:35:00.000000Z"
    );
    let s = h.describe("tick").await;
    assert_eq!(s.fires_count, 2);
    assert_eq!(s.next_fire_at_ms, Some(at("2026-01-05T01:35:00Z")));
    assert_eq!(s.last_fired_at_ms, Some(at("2026-01-05T01:05:00Z")));
}

#[tokio::test]
async fn a_refired_timer_never_starts_a_second_run() {
    let h = harness("2026-01-05T00:00:30Z").await;
    let s = h.create(every_minute("once", "allow_all")).await;
    let timer: TimerKey = s.fire_timer.clone().expect("armed");
    h.clock.advance(MINUTE);
    // The same timer applied three times (a crash-and-retry, two nodes, the background
    // service and an operator pass): one run.
    for _ in 0..3 {
        h.engine
            .fire_timer(timer.clone())
            .await
            .expect("fire is idempotent");
    }
    h.settle().await;
    assert_eq!(h.started("once").await, ["once-2026-01-05T00:01:00Z"]);
    // A backfill over the same minute finds the deterministic id taken.
    let backfill = h
        .engine
        .backfill_schedule(
            NS,
            "once",
            at("2026-01-05T00:01:00Z"),
            at("2026-01-05T00:01:01Z"),
            Some(OverlapPolicy::AllowAll),
        )
        .await
        .expect("backfill runs");
    assert!(matches!(
        &backfill.fires[0].outcome,
        FireOutcome::Skipped {
            reason: "already_started",
            ..
        }
    ));
    assert_eq!(h.describe("once").await.fires_count, 1);
}

#[tokio::test]
async fn a_fire_due_while_the_server_was_down_runs_once_after_restart_and_skips_the_rest() {
    let h = harness("2026-01-05T00:00:30Z").await;
    h.create(every_minute("down", "allow_all")).await;
    h.advance_to("2026-01-05T00:01:00Z").await;
    assert_eq!(h.started("down").await.len(), 1);

    // The server stops; ten nominal minutes pass; it starts again on the same store.
    h.engine.stop().await;
    h.clock.advance(Duration::from_secs(10 * 60 + 30));
    let engine = open_on(h.store.clone(), &h.clock).await;
    let h = Harness { engine, ..h };
    // The background timer service alone must fire the overdue timer promptly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.started("down").await.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "overdue schedule did not fire after restart"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.settle().await;
    // fire_once_on_resume_then_skip_remaining_missed: the latest missed minute runs, the
    // nine before it are recorded as skipped.
    assert_eq!(
        h.started("down").await,
        ["down-2026-01-05T00:01:00Z", "down-2026-01-05T00:11:00Z"]
    );
    let skipped: Vec<Value> = h
        .history("down")
        .await
        .into_iter()
        .filter(|e| e["event_type"] == "ScheduleTriggerSkipped")
        .collect();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["payload"]["skipped_trigger_count"], 9);
    assert_eq!(skipped[0]["payload"]["reason"], "missed_while_unavailable");
    // And then the normal cadence resumes.
    assert_eq!(
        h.describe("down").await.next_fire_at_ms,
        Some(at("2026-01-05T00:12:00Z"))
    );
    h.advance_to("2026-01-05T00:12:00Z").await;
    assert_eq!(h.started("down").await.len(), 3);
}

#[tokio::test]
async fn a_missed_fire_older_than_the_catchup_window_is_skipped() {
    let h = harness("2026-01-05T00:00:00Z").await;
    h.create(json!({
        "schedule_id": "daily",
        "spec": {"cron_expressions": ["0 2 * * *"]},
        "action": {"workflow_type": "sched.wf", "task_queue": QUEUE},
        "catchup_window_seconds": 3600,
    }))
    .await;
    h.engine.stop().await;
    // Down from before 02:00 until 05:00: the 02:00 run is three hours late.
    h.clock.advance(Duration::from_secs(5 * 3600));
    let engine = open_on(h.store.clone(), &h.clock).await;
    let h = Harness { engine, ..h };
    h.settle().await;
    assert!(h.started("daily").await.is_empty());
    let types = h.event_types("daily").await;
    assert_eq!(types, ["ScheduleCreated", "ScheduleTriggerSkipped"]);
    let s = h.describe("daily").await;
    assert_eq!(s.next_fire_at_ms, Some(at("2026-01-06T02:00:00Z")));
}

#[tokio::test]
async fn pause_stops_fires_and_resume_computes_from_resume_time_without_catch_up() {
    let h = harness("2026-01-05T00:00:30Z").await;
    h.create(every_minute("pz", "allow_all")).await;
    h.advance_to("2026-01-05T00:01:00Z").await;
    let paused = h
        .engine
        .pause_schedule(NS, "pz", Some("maintenance".into()))
        .await
        .expect("pauses");
    assert_eq!(paused.status, ScheduleStatus::Paused);
    assert_eq!(paused.next_fire_at_ms, None);
    assert_eq!(paused.note.as_deref(), Some("maintenance"));
    // Pausing again is a no-op.
    h.engine
        .pause_schedule(NS, "pz", None)
        .await
        .expect("idempotent");
    h.advance(Duration::from_secs(5 * 60)).await;
    assert_eq!(h.started("pz").await.len(), 1, "no fires while paused");

    h.advance(Duration::from_secs(20)).await; // 00:06:20
    let resumed = h
        .engine
        .resume_schedule(NS, "pz", None)
        .await
        .expect("resumes");
    assert_eq!(resumed.status, ScheduleStatus::Active);
    assert_eq!(resumed.next_fire_at_ms, Some(at("2026-01-05T00:07:00Z")));
    h.settle().await;
    assert_eq!(
        h.started("pz").await.len(),
        1,
        "the paused window is not caught up"
    );
    h.advance_to("2026-01-05T00:07:00Z").await;
    assert_eq!(
        h.started("pz").await,
        ["pz-2026-01-05T00:01:00Z", "pz-2026-01-05T00:07:00Z"]
    );
    assert_eq!(
        h.event_types("pz").await,
        [
            "ScheduleCreated",
            "ScheduleTriggered",
            "SchedulePaused",
            "ScheduleResumed",
            "ScheduleTriggered"
        ]
    );
}

#[tokio::test]
async fn trigger_starts_now_even_when_paused_and_honours_an_overlap_override() {
    let h = harness("2026-01-05T00:00:30Z").await;
    h.create(json!({
        "schedule_id": "manual",
        "spec": {"cron_expressions": ["0 0 1 1 *"]},
        "action": {"workflow_type": "sched.wf", "task_queue": QUEUE},
        "paused": true,
    }))
    .await;
    let first = h
        .engine
        .trigger_schedule(NS, "manual", None)
        .await
        .expect("triggers");
    let FireOutcome::Started { workflow_id, .. } = &first.outcome else {
        panic!("expected a start, got {:?}", first.outcome);
    };
    assert_eq!(workflow_id, "manual-2026-01-05T00:00:30.000000Z");
    // The first run is open: the default policy (skip) drops a second trigger...
    h.advance(Duration::from_secs(1)).await;
    let second = h
        .engine
        .trigger_schedule(NS, "manual", None)
        .await
        .expect("triggers");
    assert!(matches!(
        second.outcome,
        FireOutcome::Skipped {
            reason: "overlap",
            ..
        }
    ));
    // ...unless the trigger overrides it.
    let third = h
        .engine
        .trigger_schedule(NS, "manual", Some(OverlapPolicy::AllowAll))
        .await
        .expect("triggers");
    assert!(matches!(third.outcome, FireOutcome::Started { .. }));
    assert_eq!(h.started("manual").await.len(), 2);
}

#[tokio::test]
async fn backfill_fires_every_occurrence_of_a_half_open_window_in_order() {
    let h = harness("2026-01-05T12:00:00Z").await;
    h.create(json!({
        "schedule_id": "bf",
        "spec": {"cron_expressions": ["0 * * * *"]},
        "action": {"workflow_type": "sched.wf", "task_queue": QUEUE},
        "paused": true,
    }))
    .await;
    let result = h
        .engine
        .backfill_schedule(
            NS,
            "bf",
            at("2026-01-05T08:00:00Z"),
            at("2026-01-05T11:00:00Z"),
            Some(OverlapPolicy::AllowAll),
        )
        .await
        .expect("backfills");
    let started: Vec<&str> = result
        .fires
        .iter()
        .map(|f| match &f.outcome {
            FireOutcome::Started { workflow_id, .. } => workflow_id.as_str(),
            other => panic!("expected every fire to start, got {other:?}"),
        })
        .collect();
    // 11:00 is the excluded end.
    assert_eq!(
        started,
        [
            "bf-2026-01-05T08:00:00Z",
            "bf-2026-01-05T09:00:00Z",
            "bf-2026-01-05T10:00:00Z"
        ]
    );
    // The schedule's own policy (skip) lets only the first of a window through.
    let skipped = h
        .engine
        .backfill_schedule(
            NS,
            "bf",
            at("2026-01-04T08:00:00Z"),
            at("2026-01-04T10:00:00Z"),
            None,
        )
        .await
        .expect("backfills");
    assert_eq!(skipped.fires.len(), 2);
    assert!(
        skipped
            .fires
            .iter()
            .all(|f| matches!(f.outcome, FireOutcome::Skipped { .. })),
        "{:?}",
        skipped.fires
    );
    // A backwards window is refused.
    let err = h
        .engine
        .backfill_schedule(
            NS,
            "bf",
            at("2026-01-05T08:00:00Z"),
            at("2026-01-05T08:00:00Z"),
            None,
        )
        .await
        .expect_err("empty window");
    assert!(matches!(
        err,
        Error::Rejected {
            reason: "invalid_time_range",
            ..
        }
    ));
}

#[tokio::test]
async fn overlap_skip_drops_fires_while_the_previous_run_is_open() {
    let h = harness("2026-01-05T00:00:30Z").await;
    h.create(every_minute("skip", "skip")).await;
    h.advance_to("2026-01-05T00:01:00Z").await;
    h.advance_to("2026-01-05T00:02:00Z").await;
    assert_eq!(h.started("skip").await, ["skip-2026-01-05T00:01:00Z"]);
    let last = h.history("skip").await.pop().expect("an event");
    assert_eq!(last["event_type"], "ScheduleTriggerSkipped");
    assert_eq!(last["payload"]["reason"], "overlap");
    h.terminate("skip-2026-01-05T00:01:00Z").await;
    h.advance_to("2026-01-05T00:03:00Z").await;
    assert_eq!(
        h.started("skip").await,
        ["skip-2026-01-05T00:01:00Z", "skip-2026-01-05T00:03:00Z"]
    );
}

#[tokio::test]
async fn overlap_buffer_one_keeps_one_fire_and_starts_it_when_the_run_completes() {
    let h = harness("2026-01-05T00:00:30Z").await;
    h.create(every_minute("b1", "buffer_one")).await;
    h.advance_to("2026-01-05T00:01:00Z").await;
    h.advance_to("2026-01-05T00:02:00Z").await; // buffered
    h.advance_to("2026-01-05T00:03:00Z").await; // buffer full: dropped
    let s = h.describe("b1").await;
    assert_eq!(s.buffer.len(), 1);
    assert_eq!(s.buffer[0].workflow_id, "b1-2026-01-05T00:02:00Z");
    let last = h.history("b1").await.pop().expect("an event");
    assert_eq!(last["payload"]["reason"], "buffer_full");

    // The open run completes through its worker: the buffered fire starts.
    h.engine
        .register_worker(WorkerRecord {
            worker_id: "w".into(),
            namespace: NS.into(),
            task_queue: QUEUE.into(),
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
        .expect("worker registers");
    let task = h
        .engine
        .poll_workflow_task(&Poll {
            namespace: NS.into(),
            worker_id: "w".into(),
            task_queue: QUEUE.into(),
            timeout: Duration::ZERO,
            history_page_size: 100,
            poll_request_id: None,
        })
        .await
        .expect("polls")
        .expect("a task");
    assert_eq!(task.workflow_id, "b1-2026-01-05T00:01:00Z");
    h.engine
        .complete_workflow_task(
            NS,
            &task.task_id,
            "w",
            task.workflow_task_attempt,
            &[json!({"type": "complete_workflow", "result": {"codec": "avro", "blob": "AA=="}})],
        )
        .await
        .expect("completes");
    h.settle().await;
    assert_eq!(
        h.started("b1").await,
        ["b1-2026-01-05T00:01:00Z", "b1-2026-01-05T00:02:00Z"]
    );
    assert!(h.describe("b1").await.buffer.is_empty());
    let started = h.history("b1").await.pop().expect("an event");
    assert_eq!(started["payload"]["outcome"], "started_from_buffer");
}

#[tokio::test]
async fn overlap_buffer_all_starts_every_buffered_fire_in_order() {
    let h = harness("2026-01-05T00:00:30Z").await;
    h.create(every_minute("ba", "buffer_all")).await;
    for minute in 1..=3 {
        h.advance_to(&format!("2026-01-05T00:0{minute}:00Z")).await;
    }
    assert_eq!(h.describe("ba").await.buffer.len(), 2);
    h.terminate("ba-2026-01-05T00:01:00Z").await;
    h.settle().await;
    h.terminate("ba-2026-01-05T00:02:00Z").await;
    h.settle().await;
    assert_eq!(
        h.started("ba").await,
        [
            "ba-2026-01-05T00:01:00Z",
            "ba-2026-01-05T00:02:00Z",
            "ba-2026-01-05T00:03:00Z"
        ]
    );
    assert!(h.describe("ba").await.buffer.is_empty());
}

#[tokio::test]
async fn overlap_allow_all_starts_every_fire_concurrently() {
    let h = harness("2026-01-05T00:00:30Z").await;
    h.create(every_minute("aa", "allow_all")).await;
    for minute in 1..=3 {
        h.advance_to(&format!("2026-01-05T00:0{minute}:00Z")).await;
    }
    let started = h.started("aa").await;
    assert_eq!(started.len(), 3);
    for id in &started {
        assert_eq!(h.status(id).await, RunStatus::Pending);
    }
}

#[tokio::test]
async fn overlap_cancel_other_cancels_the_open_run_then_starts() {
    let h = harness("2026-01-05T00:00:30Z").await;
    h.create(every_minute("co", "cancel_other")).await;
    h.advance_to("2026-01-05T00:01:00Z").await;
    h.advance_to("2026-01-05T00:02:00Z").await;
    assert_eq!(
        h.status("co-2026-01-05T00:01:00Z").await,
        RunStatus::Cancelled
    );
    assert_eq!(
        h.status("co-2026-01-05T00:02:00Z").await,
        RunStatus::Pending
    );
    let s = h.describe("co").await;
    assert_eq!(s.running, ["co-2026-01-05T00:02:00Z"]);
}

#[tokio::test]
async fn overlap_terminate_other_terminates_the_open_run_then_starts() {
    let h = harness("2026-01-05T00:00:30Z").await;
    h.create(every_minute("to", "terminate_other")).await;
    h.advance_to("2026-01-05T00:01:00Z").await;
    h.advance_to("2026-01-05T00:02:00Z").await;
    assert_eq!(
        h.status("to-2026-01-05T00:01:00Z").await,
        RunStatus::Terminated
    );
    assert_eq!(
        h.status("to-2026-01-05T00:02:00Z").await,
        RunStatus::Pending
    );
    let view = h
        .engine
        .describe(NS, "to-2026-01-05T00:01:00Z", None)
        .await
        .expect("exists");
    assert!(view.close_payload["reason"]
        .as_str()
        .is_some_and(|r| r.contains("terminate_other")));
}

#[tokio::test]
async fn daily_cron_in_new_york_fires_once_across_spring_forward_and_fall_back() {
    let h = harness("2026-03-07T00:00:00Z").await;
    h.create(json!({
        "schedule_id": "spring",
        "spec": {"cron_expressions": ["30 2 * * *"], "timezone": "America/New_York"},
        "action": {"workflow_type": "sched.wf", "task_queue": QUEUE},
        "overlap_policy": "allow_all",
    }))
    .await;
    // Step an hour at a time so that each fire is on time (no catch-up merging).
    for _ in 0..(3 * 24) {
        h.advance(Duration::from_secs(3600)).await;
    }
    // 02:30 EST; 02:30 does not exist on 03-08, so 03:00 EDT (the gap's end); 02:30 EDT.
    assert_eq!(
        h.started("spring").await,
        [
            "spring-2026-03-07T07:30:00Z",
            "spring-2026-03-08T07:00:00Z",
            "spring-2026-03-09T06:30:00Z"
        ]
    );

    let h = harness("2026-10-31T00:00:00Z").await;
    h.create(json!({
        "schedule_id": "fall",
        "spec": {"cron_expressions": ["30 1 * * *"], "timezone": "America/New_York"},
        "action": {"workflow_type": "sched.wf", "task_queue": QUEUE},
        "overlap_policy": "allow_all",
    }))
    .await;
    // Step an hour at a time so that each fire is on time (no catch-up merging).
    for _ in 0..(3 * 24) {
        h.advance(Duration::from_secs(3600)).await;
    }
    // 01:30 EDT; 01:30 happens twice on 11-01 and fires only at the first; 01:30 EST.
    assert_eq!(
        h.started("fall").await,
        [
            "fall-2026-10-31T05:30:00Z",
            "fall-2026-11-01T05:30:00Z",
            "fall-2026-11-02T06:30:00Z"
        ]
    );
}

#[tokio::test]
async fn hourly_cron_keeps_real_hours_through_the_fall_back_fold() {
    let h = harness("2026-11-01T03:00:00Z").await;
    h.create(json!({
        "schedule_id": "hourly",
        "spec": {"cron_expressions": ["30 * * * *"], "timezone": "America/New_York"},
        "action": {"workflow_type": "sched.wf", "task_queue": QUEUE},
        "overlap_policy": "allow_all",
    }))
    .await;
    for _ in 0..5 {
        h.advance(Duration::from_secs(3600)).await;
    }
    // 23:30 EDT, 00:30 EDT, 01:30 EDT, 01:30 EST, 02:30 EST: every real hour.
    assert_eq!(
        h.started("hourly").await,
        [
            "hourly-2026-11-01T03:30:00Z",
            "hourly-2026-11-01T04:30:00Z",
            "hourly-2026-11-01T05:30:00Z",
            "hourly-2026-11-01T06:30:00Z",
            "hourly-2026-11-01T07:30:00Z"
        ]
    );
}

#[tokio::test]
async fn max_runs_stops_the_schedule_after_its_last_start() {
    let h = harness("2026-01-05T00:00:30Z").await;
    let s = h
        .create(json!({
            "schedule_id": "limited",
            "spec": {"cron_expressions": ["* * * * *"]},
            "action": {"workflow_type": "sched.wf", "task_queue": QUEUE},
            "overlap_policy": "allow_all",
            "max_runs": 2,
        }))
        .await;
    assert_eq!(s.remaining_actions, Some(2));
    for minute in 1..=4 {
        h.advance_to(&format!("2026-01-05T00:0{minute}:00Z")).await;
    }
    assert_eq!(h.started("limited").await.len(), 2);
    let s = h.describe("limited").await;
    assert_eq!(s.remaining_actions, Some(0));
    assert_eq!(s.next_fire_at_ms, None);
    let trigger = h
        .engine
        .trigger_schedule(NS, "limited", None)
        .await
        .expect("answers");
    assert!(matches!(
        trigger.outcome,
        FireOutcome::Skipped {
            reason: "max_runs_reached",
            ..
        }
    ));
    // Raising the limit re-arms it.
    let s = h
        .engine
        .update_schedule(
            NS,
            "limited",
            SchedulePatch {
                max_runs: Some(3),
                ..SchedulePatch::default()
            },
        )
        .await
        .expect("updates");
    assert_eq!(s.remaining_actions, Some(1));
    assert_eq!(s.next_fire_at_ms, Some(at("2026-01-05T00:05:00Z")));
}

#[tokio::test]
async fn jitter_delays_the_fire_but_keeps_the_nominal_workflow_id() {
    let h = harness("2026-01-05T00:00:00Z").await;
    let s = h
        .create(json!({
            "schedule_id": "jit",
            "spec": {"cron_expressions": ["0 * * * *"]},
            "action": {"workflow_type": "sched.wf", "task_queue": QUEUE},
            "jitter_seconds": 600,
        }))
        .await;
    let fire_at = s.next_fire_at_ms.expect("armed");
    let nominal = at("2026-01-05T01:00:00Z");
    assert_eq!(s.next_occurrence_ms, Some(nominal));
    assert!((nominal..=nominal + 600_000).contains(&fire_at));
    h.advance_to("2026-01-05T01:00:00Z").await;
    if fire_at > nominal {
        assert!(h.started("jit").await.is_empty(), "fired before its jitter");
        // An update while the occurrence waits out its jitter keeps it.
        let s = h
            .engine
            .update_schedule(
                NS,
                "jit",
                SchedulePatch {
                    note: Some("still on".into()),
                    ..SchedulePatch::default()
                },
            )
            .await
            .expect("updates");
        assert_eq!(s.next_fire_at_ms, Some(fire_at));
    }
    h.advance(Duration::from_secs(600)).await;
    assert_eq!(h.started("jit").await, ["jit-2026-01-05T01:00:00Z"]);
}

#[tokio::test]
async fn update_replaces_the_spec_and_rearms_from_now() {
    let h = harness("2026-01-05T00:00:00Z").await;
    h.create(json!({
        "schedule_id": "upd",
        "spec": {"cron_expressions": ["0 0 * * *"]},
        "action": {"workflow_type": "sched.wf", "task_queue": QUEUE},
    }))
    .await;
    let patch = SchedulePatch::from_json(&json!({
        "spec": {"intervals": [{"every": "PT5M"}]},
        "note": "faster",
        "schedule_id": "ignored",
        "paused": true,
    }))
    .expect("valid patch");
    let s = h
        .engine
        .update_schedule(NS, "upd", patch)
        .await
        .expect("updates");
    assert_eq!(s.status, ScheduleStatus::Active);
    assert_eq!(s.next_fire_at_ms, Some(at("2026-01-05T00:05:00Z")));
    assert_eq!(s.note.as_deref(), Some("faster"));
    let updated = h.history("upd").await.pop().expect("an event");
    assert_eq!(updated["event_type"], "ScheduleUpdated");
    assert_eq!(
        updated["payload"]["changed_fields"],
        json!(["spec", "note"])
    );
    h.advance_to("2026-01-05T00:05:00Z").await;
    assert_eq!(h.started("upd").await, ["upd-2026-01-05T00:05:00Z"]);
}

#[tokio::test]
async fn errors_are_named_and_nothing_is_stored_for_a_bad_spec() {
    let h = harness("2026-01-05T00:00:00Z").await;
    let bad = ScheduleInput::from_json(&json!({
        "schedule_id": "bad",
        "spec": {"cron_expressions": ["99 * * * *"]},
        "action": {"workflow_type": "sched.wf"},
    }));
    match bad {
        Err(Error::Validation(errors)) => {
            assert!(errors.contains_key("spec.cron_expressions.0"))
        }
        other => panic!("expected field errors, got {other:?}"),
    }
    let missing = h
        .engine
        .describe_schedule(NS, "bad")
        .await
        .expect_err("nothing stored");
    assert!(matches!(
        missing,
        Error::Rejected {
            reason: "schedule_not_found",
            ..
        }
    ));

    h.create(every_minute("dup", "skip")).await;
    let input = ScheduleInput::from_json(&every_minute("dup", "skip")).expect("valid");
    let dup = h
        .engine
        .create_schedule(NS, input)
        .await
        .expect_err("duplicate");
    assert!(matches!(
        dup,
        Error::Rejected {
            reason: "schedule_already_exists",
            ..
        }
    ));
    for result in [
        h.engine.pause_schedule(NS, "nope", None).await.err(),
        h.engine.resume_schedule(NS, "nope", None).await.err(),
        h.engine.delete_schedule(NS, "nope").await.err(),
        h.engine.trigger_schedule(NS, "nope", None).await.err(),
        h.engine.schedule_history(NS, "nope", 0, 10).await.err(),
    ] {
        assert!(
            matches!(
                result,
                Some(Error::Rejected {
                    reason: "schedule_not_found",
                    ..
                })
            ),
            "{result:?}"
        );
    }
}

#[tokio::test]
async fn delete_stops_fires_hides_the_schedule_and_keeps_its_history() {
    let h = harness("2026-01-05T00:00:30Z").await;
    h.create(every_minute("gone", "allow_all")).await;
    h.advance_to("2026-01-05T00:01:00Z").await;
    h.engine.delete_schedule(NS, "gone").await.expect("deletes");
    h.advance_to("2026-01-05T00:05:00Z").await;
    assert_eq!(h.started("gone").await.len(), 1);
    assert!(h.engine.describe_schedule(NS, "gone").await.is_err());
    let page = h
        .engine
        .list_schedules(
            NS,
            &ScheduleListQuery {
                page_size: 50,
                ..ScheduleListQuery::default()
            },
        )
        .await
        .expect("lists");
    assert!(page.schedules.is_empty());
    assert_eq!(
        h.event_types("gone").await,
        ["ScheduleCreated", "ScheduleTriggered", "ScheduleDeleted"]
    );
    // The id can be used again; the audit stream continues.
    h.create(every_minute("gone", "allow_all")).await;
    let history = h.history("gone").await;
    assert_eq!(history.len(), 4);
    assert_eq!(history[3]["sequence"], 4);
    // No timer of the deleted schedule is left behind.
    let mut txn = h.store.begin().await.expect("txn");
    let timers = txn
        .get_range(
            &keel_engine::tables::timers_before(i64::MAX),
            ReadOptions::limit(100).snapshot(),
        )
        .await
        .expect("reads");
    assert_eq!(timers.len(), 1, "only the re-created schedule's timer");
}

#[tokio::test]
async fn list_filters_pages_and_queries() {
    let h = harness("2026-01-05T00:00:00Z").await;
    for (i, (ty, queue)) in [("a.wf", "q1"), ("b.wf", "q1"), ("a.wf", "q2")]
        .iter()
        .enumerate()
    {
        h.create(json!({
            "schedule_id": format!("s{i}"),
            "spec": {"cron_expressions": ["0 0 * * *"]},
            "action": {"workflow_type": ty, "task_queue": queue},
            "note": format!("note {i}"),
        }))
        .await;
        h.clock.advance(Duration::from_secs(1));
    }
    h.engine
        .pause_schedule(NS, "s1", None)
        .await
        .expect("pauses");
    let list = |q: ScheduleListQuery| {
        let engine = h.engine.clone();
        async move {
            engine
                .list_schedules(NS, &q)
                .await
                .expect("lists")
                .schedules
                .into_iter()
                .map(|s| s.schedule_id)
                .collect::<Vec<_>>()
        }
    };
    let all = ScheduleListQuery {
        page_size: 50,
        ..ScheduleListQuery::default()
    };
    assert_eq!(list(all.clone()).await, ["s2", "s1", "s0"]);
    assert_eq!(
        list(ScheduleListQuery {
            status: Some(ScheduleStatus::Paused),
            ..all.clone()
        })
        .await,
        ["s1"]
    );
    assert_eq!(
        list(ScheduleListQuery {
            workflow_type: Some("a.wf".into()),
            ..all.clone()
        })
        .await,
        ["s2", "s0"]
    );
    let predicates = keel_engine::schedules::parse_visibility_query(
        "WorkflowType = 'a.wf' AND TaskQueue = \"q1\"",
        &Default::default(),
    )
    .expect("parses");
    assert_eq!(
        list(ScheduleListQuery {
            predicates,
            ..all.clone()
        })
        .await,
        ["s0"]
    );
    for (query, reason) in [
        (
            "WorkflowType = 'a' OR Status = 'x'",
            "unsupported_schedule_visibility_predicate",
        ),
        ("Nope = 'x'", "unsupported_schedule_visibility_field"),
        ("WorkflowType = ", "invalid_schedule_visibility_query"),
    ] {
        let err = keel_engine::schedules::parse_visibility_query(query, &Default::default())
            .expect_err(query);
        assert!(
            matches!(err, Error::Rejected { reason: r, .. } if r == reason),
            "{query}: {err:?}"
        );
    }
    // Paging: two pages of two and one.
    let first = h
        .engine
        .list_schedules(
            NS,
            &ScheduleListQuery {
                page_size: 2,
                ..all.clone()
            },
        )
        .await
        .expect("lists");
    assert_eq!(first.schedules.len(), 2);
    let second = h
        .engine
        .list_schedules(
            NS,
            &ScheduleListQuery {
                page_size: 2,
                after: first.next.clone(),
                ..all.clone()
            },
        )
        .await
        .expect("lists");
    assert_eq!(
        second
            .schedules
            .iter()
            .map(|s| s.schedule_id.as_str())
            .collect::<Vec<_>>(),
        ["s0"]
    );
    assert!(second.next.is_none());
}

#[tokio::test]
async fn history_pages_by_sequence() {
    let h = harness("2026-01-05T00:00:00Z").await;
    h.create(every_minute("hp", "allow_all")).await;
    for _ in 0..4 {
        h.engine
            .pause_schedule(NS, "hp", None)
            .await
            .expect("pauses");
        h.engine
            .resume_schedule(NS, "hp", None)
            .await
            .expect("resumes");
    }
    let first = h
        .engine
        .schedule_history(NS, "hp", 0, 4)
        .await
        .expect("reads");
    assert_eq!(first.events.len(), 4);
    assert!(first.has_more);
    assert_eq!(first.next_cursor, Some(4));
    let rest = h
        .engine
        .schedule_history(NS, "hp", 4, 100)
        .await
        .expect("reads");
    assert_eq!(rest.events.len(), 5);
    assert!(!rest.has_more);
    assert_eq!(rest.next_cursor, None);
    let seqs: Vec<u64> = first
        .events
        .iter()
        .chain(&rest.events)
        .map(|e| e["sequence"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
}

#[tokio::test]
async fn each_occurrence_starts_exactly_once_under_injected_storage_faults() {
    let mut faults = (0u64, 0u64);
    for seed in 1..=3u64 {
        let sim = SimulatedStore::new(FaultConfig::none());
        let store: Arc<dyn KvStore> = Arc::new(sim.clone());
        let clock = ManualClock::new(at("2026-01-05T00:00:30Z"));
        let engine = open_on(store.clone(), &clock).await;
        let h = Harness {
            engine,
            clock,
            store,
        };
        h.create(every_minute("chaos", "allow_all")).await;
        sim.set_faults(FaultConfig {
            conflict: 0.15,
            unknown_applied: 0.15,
            unknown_not_applied: 0.15,
            ..FaultConfig::chaos(seed)
        });
        for _ in 0..30 {
            h.clock.advance(MINUTE);
            // Under faults a firing may fail and be retried by the service; settle until
            // the minute's timer is gone.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(0) = h.engine.fire_due_timers(1000).await {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "timers did not settle"
                );
            }
        }
        sim.set_faults(FaultConfig::none());
        let stats = sim.fault_stats();
        faults.0 += stats.unknown_applied;
        faults.1 += stats.unknown_not_applied;
        h.settle().await;
        let started = h.started("chaos").await;
        let expected: Vec<String> = (1..=30)
            .map(|m| format!("chaos-2026-01-05T00:{m:02}:00Z"))
            .collect();
        assert_eq!(started, expected, "seed {seed}");
        assert_eq!(h.describe("chaos").await.fires_count, 30, "seed {seed}");
        h.engine.stop().await;
    }
    assert!(
        faults.0 > 0 && faults.1 > 0,
        "both kinds of unknown commit were injected: {faults:?}"
    );
}

#[tokio::test]
async fn control_plane_requests_apply_once_under_unknown_commits() {
    let sim = SimulatedStore::new(FaultConfig::none());
    let store: Arc<dyn KvStore> = Arc::new(sim.clone());
    let clock = ManualClock::new(at("2026-01-05T12:00:00Z"));
    let engine = open_on(store.clone(), &clock).await;
    let h = Harness {
        engine,
        clock,
        store,
    };
    h.create(json!({
        "schedule_id": "cp",
        "spec": {"cron_expressions": ["0 * * * *"]},
        "action": {"workflow_type": "sched.wf", "task_queue": QUEUE},
        "overlap_policy": "allow_all",
        "paused": true,
    }))
    .await;
    sim.set_faults(FaultConfig {
        conflict: 0.1,
        unknown_applied: 0.25,
        unknown_not_applied: 0.1,
        ..FaultConfig::chaos(7)
    });
    let mut triggered = Vec::new();
    for _ in 0..20 {
        h.clock.advance(Duration::from_millis(1));
        if let Ok(result) = h.engine.trigger_schedule(NS, "cp", None).await {
            if let FireOutcome::Started { workflow_id, .. } = result.outcome {
                triggered.push(workflow_id);
            }
        }
    }
    // Two backfill batches of hourly occurrences. (Twenty attempts per transaction make a
    // spurious failure here practically impossible.)
    let backfill = h
        .engine
        .backfill_schedule(
            NS,
            "cp",
            at("2026-01-03T00:00:00Z"),
            at("2026-01-04T06:00:00Z"),
            None,
        )
        .await
        .expect("backfills");
    let patch = SchedulePatch {
        note: Some("noted".into()),
        ..SchedulePatch::default()
    };
    let update = h
        .engine
        .update_schedule(NS, "cp", patch)
        .await
        .expect("updates");
    assert_eq!(update.note.as_deref(), Some("noted"));
    let unknown = sim.fault_stats().unknown_applied;
    sim.set_faults(FaultConfig::none());
    assert!(
        unknown > 0,
        "some commits were applied but reported unknown"
    );

    let started = h.started("cp").await;
    let mut distinct = started.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), started.len(), "no run started twice");
    assert_eq!(
        started.len(),
        triggered.len() + 30,
        "one run per trigger and per backfilled occurrence"
    );
    for id in &triggered {
        assert_eq!(
            started.iter().filter(|s| *s == id).count(),
            1,
            "{id} started once"
        );
    }
    assert_eq!(backfill.fires.len(), 30);
    // A re-run backfill batch reports its first answer: every occurrence started (the
    // earlier attempt's runs), none "already_started".
    assert!(backfill
        .fires
        .iter()
        .all(|f| matches!(f.outcome, FireOutcome::Started { .. })));
    let updates = h
        .event_types("cp")
        .await
        .into_iter()
        .filter(|t| t == "ScheduleUpdated")
        .count();
    assert_eq!(updates, 1, "the update is recorded once");
}
