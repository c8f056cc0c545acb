//! Schedules: start a workflow on a calendar (cron, intervals, time zones, bounds), with
//! an overlap policy, jitter, a run limit and an audit history.
//!
//! **Firing is a durable timer.** An active schedule holds exactly one
//! [`TimerAction::ScheduleFire`] row, named by `ScheduleRecord::fire_timer` (a timer the
//! record no longer names is stale and does nothing). The timer's transaction deletes the
//! row, starts the workflow (or skips or buffers it), records the audit event and arms the
//! next timer, all at once: a crash before the commit fires it again after restart, a crash
//! after it never does. The workflow id of an occurrence is deterministic,
//! `{schedule_id}-{occurrence time}`, so even a fire applied twice by two paths (a timer
//! and a backfill of the same window) starts one run.
//!
//! **Catch-up after downtime** (`fire_once_on_resume_then_skip_remaining_missed`): when a
//! timer fires late, every occurrence due by now is collapsed into one fire of the latest,
//! provided it is no older than the catch-up window (`catchup_window_seconds`, default
//! [`DEFAULT_CATCHUP_WINDOW_SECONDS`]); the others are recorded as one
//! `ScheduleTriggerSkipped` with `skipped_trigger_count`. Resume computes the next fire
//! from the resume time, with no catch-up of the paused window.
//!
//! **Overlap** is judged against the runs this schedule started that are still open
//! (their current run, through continue-as-new): `skip` drops the fire, `buffer_one` keeps
//! at most one waiting fire, `buffer_all` keeps up to [`MAX_BUFFER`], `allow_all` starts
//! regardless, `cancel_other` / `terminate_other` close the open runs (the engine's one
//! cancel/terminate path, in the same transaction) and then start. A buffered fire starts
//! when the last open run closes: closing a scheduled run arms a
//! [`TimerAction::ScheduleRunClosed`] timer for its schedule.
//!
//! **Jitter** delays each fire by a pseudo-random `0..=jitter_seconds` derived from the
//! schedule and the occurrence (so a re-computation agrees), at most half the gap to the
//! next occurrence; the workflow id keeps the nominal time.
//!
//! Started runs carry the search attributes `DurableWorkflowScheduleId` and
//! `DurableWorkflowScheduledStartTime` (system attributes) besides the schedule's own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::clock::{format_timestamp, Millis};
use crate::engine::{Effects, Engine};
use crate::error::{Error, RejectKind, Result};
use crate::keys::{prefix, Key, KeyReader};
use crate::model::{InstanceRecord, RunRecord, TimerAction, TimerKey};
use crate::storage::{KeyRange, KvTxn, ReadOptions};
use crate::workflow::{CloseCommand, DuplicatePolicy, StartWorkflow};
use crate::{ids, tables};

mod input;
pub mod spec;

pub use input::{parse_instant, ScheduleInput, SchedulePatch, MAX_MEMO_BYTES};
use spec::{Source, Spec, SpecRecord};

/// Search attribute naming the schedule that started a run.
pub const SCHEDULE_ID_ATTRIBUTE: &str = "DurableWorkflowScheduleId";
/// Search attribute holding the nominal occurrence time a scheduled run stands for.
pub const SCHEDULED_START_ATTRIBUTE: &str = "DurableWorkflowScheduledStartTime";
/// Default catch-up window: after downtime, the latest missed occurrence still fires if it
/// is at most this old.
pub const DEFAULT_CATCHUP_WINDOW_SECONDS: u64 = 3600;
/// Most fires a `buffer_all` schedule keeps waiting.
pub const MAX_BUFFER: usize = 1000;
/// Most occurrences one backfill may cover.
pub const MAX_BACKFILL_FIRES: usize = 1000;
/// Task queue of an action that names none.
pub const DEFAULT_TASK_QUEUE: &str = "default";
/// Most page entries of a schedule list.
pub const MAX_LIST_PAGE: usize = 200;
/// Most events of one history page.
pub const MAX_HISTORY_PAGE: usize = 500;
/// Recent actions kept on the record for `describe`.
const RECENT_ACTIONS: usize = 10;
/// Open runs of an `allow_all` schedule tracked for overlap (older ones are forgotten).
const MAX_TRACKED_RUNS: usize = 100;
/// Counting of missed occurrences stops here (the skip event says "at least").
const MISSED_COUNT_CAP: usize = 10_000;
/// Occurrences started per backfill transaction.
const BACKFILL_BATCH: usize = 25;
/// Upcoming fire times shown by `describe`.
const FUTURE_ACTION_TIMES: usize = 5;

/// What a schedule does when a fire would overlap a run it started that is still open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// Drop the fire (the default).
    Skip,
    /// Keep one fire waiting; start it when the open run closes.
    BufferOne,
    /// Keep every fire waiting (up to [`MAX_BUFFER`]); start them one by one.
    BufferAll,
    /// Start regardless.
    AllowAll,
    /// Cancel the open runs, then start.
    CancelOther,
    /// Terminate the open runs, then start.
    TerminateOther,
}

impl OverlapPolicy {
    /// Every policy.
    pub const ALL: [OverlapPolicy; 6] = [
        OverlapPolicy::Skip,
        OverlapPolicy::BufferOne,
        OverlapPolicy::BufferAll,
        OverlapPolicy::AllowAll,
        OverlapPolicy::CancelOther,
        OverlapPolicy::TerminateOther,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OverlapPolicy::Skip => "skip",
            OverlapPolicy::BufferOne => "buffer_one",
            OverlapPolicy::BufferAll => "buffer_all",
            OverlapPolicy::AllowAll => "allow_all",
            OverlapPolicy::CancelOther => "cancel_other",
            OverlapPolicy::TerminateOther => "terminate_other",
        }
    }

    /// Reads a wire name.
    pub fn parse(s: &str) -> Option<OverlapPolicy> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// A schedule's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleStatus {
    /// Fires on its spec.
    Active,
    /// Fires only when triggered or backfilled.
    Paused,
    /// Soft-deleted: invisible except for its history.
    Deleted,
}

impl ScheduleStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleStatus::Active => "active",
            ScheduleStatus::Paused => "paused",
            ScheduleStatus::Deleted => "deleted",
        }
    }
}

/// The workflow a schedule starts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// Workflow type.
    pub workflow_type: String,
    /// Task queue.
    pub task_queue: String,
    /// Input envelope (`Null`: no arguments).
    #[serde(default)]
    pub input: Value,
    /// Execution timeout of each run.
    #[serde(default)]
    pub execution_timeout_seconds: Option<u64>,
    /// Run timeout of each run.
    #[serde(default)]
    pub run_timeout_seconds: Option<u64>,
}

/// How a fire came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    /// The spec's timer.
    Scheduled,
    /// `POST .../trigger`.
    Manual,
    /// `POST .../backfill`.
    Backfill,
}

/// A fire waiting for the open run to close (`buffer_one`, `buffer_all`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BufferedFire {
    /// The nominal time it stands for.
    pub occurrence_ms: Millis,
    /// The workflow id it will start.
    pub workflow_id: String,
    /// How it came about.
    pub trigger: TriggerKind,
    /// When it was buffered.
    pub buffered_at_ms: Millis,
    /// The cron expression that produced it, if any.
    #[serde(default)]
    pub cron_expression: Option<String>,
}

/// A workflow a schedule started (for `describe`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentAction {
    /// Nominal time.
    pub occurrence_ms: Millis,
    /// When it started.
    pub started_at_ms: Millis,
    /// Workflow id.
    pub workflow_id: String,
    /// Run id.
    pub run_id: String,
    /// How it came about.
    pub trigger: TriggerKind,
}

/// A schedule as stored. Every field added later needs a serde default.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// Namespace.
    pub namespace: String,
    /// Id.
    pub schedule_id: String,
    /// Unique per creation (a re-created id gets a new one).
    pub schedule_ulid: String,
    /// Lifecycle.
    pub status: ScheduleStatus,
    /// When it fires.
    pub spec: SpecRecord,
    /// What it starts.
    pub action: ActionRecord,
    /// Overlap policy.
    pub overlap_policy: OverlapPolicy,
    /// Jitter in seconds.
    #[serde(default)]
    pub jitter_seconds: u64,
    /// Most workflows it starts.
    #[serde(default)]
    pub max_runs: Option<u64>,
    /// Starts left under `max_runs`.
    #[serde(default)]
    pub remaining_actions: Option<u64>,
    /// Memo (copied to each run).
    #[serde(default)]
    pub memo: Value,
    /// Search attributes (copied to each run).
    #[serde(default)]
    pub search_attributes: Value,
    /// Operator note.
    #[serde(default)]
    pub note: Option<String>,
    /// Catch-up window after downtime, seconds.
    #[serde(default = "default_catchup")]
    pub catchup_window_seconds: u64,
    /// Workflows started.
    #[serde(default)]
    pub fires_count: u64,
    /// Fires that could not start their workflow.
    #[serde(default)]
    pub failures_count: u64,
    /// Fires evaluated (started, buffered or skipped).
    #[serde(default)]
    pub trigger_count: u64,
    /// Fires skipped (overlap, full buffer, missed while down, run limit).
    #[serde(default)]
    pub skipped_count: u64,
    /// The nominal occurrence the armed timer stands for.
    #[serde(default)]
    pub next_occurrence_ms: Option<Millis>,
    /// When the armed timer fires (the occurrence plus jitter).
    #[serde(default)]
    pub next_fire_at_ms: Option<Millis>,
    /// The armed timer; any other `ScheduleFire` timer of this schedule is stale.
    #[serde(default)]
    pub fire_timer: Option<TimerKey>,
    /// When it last started a workflow.
    #[serde(default)]
    pub last_fired_at_ms: Option<Millis>,
    /// The workflow it last started.
    #[serde(default)]
    pub latest_workflow_id: Option<String>,
    /// That workflow's run.
    #[serde(default)]
    pub latest_run_id: Option<String>,
    /// Workflow ids it started that may still be open (oldest first).
    #[serde(default)]
    pub running: Vec<String>,
    /// Fires waiting for the open run to close (oldest first).
    #[serde(default)]
    pub buffer: Vec<BufferedFire>,
    /// The last few workflows it started (newest last).
    #[serde(default)]
    pub recent_actions: Vec<RecentAction>,
    /// When it was paused.
    #[serde(default)]
    pub paused_at_ms: Option<Millis>,
    /// Creation time.
    pub created_at_ms: Millis,
    /// Last change by an operator.
    pub updated_at_ms: Millis,
    /// Soft-deletion time.
    #[serde(default)]
    pub deleted_at_ms: Option<Millis>,
    /// Sequence of the last audit event.
    #[serde(default)]
    pub last_event_seq: u64,
    /// The last control-plane request applied (see [`RequestReceipt`]).
    #[serde(default)]
    pub last_request: Option<RequestReceipt>,
}

/// The answer of the last control-plane request applied to a schedule. A transaction may
/// run again after a commit whose result was unknown; finding its own request id here,
/// it returns the recorded answer instead of applying the request twice.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestReceipt {
    /// Chosen by the caller before its transaction.
    pub request_id: String,
    /// What its fires did (trigger, backfill batch).
    #[serde(default)]
    pub fires: Vec<StoredFire>,
}

/// A [`FireOutcome`] as stored in a receipt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredFire {
    /// Nominal time.
    pub occurrence_ms: Millis,
    /// `started`, `buffered`, `buffer_full` or `skipped`.
    pub outcome: String,
    /// Workflow id, when one applies.
    #[serde(default)]
    pub workflow_id: Option<String>,
    /// Run id, when started.
    #[serde(default)]
    pub run_id: Option<String>,
    /// Why it was skipped.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Every reason a fire is skipped for.
const SKIP_REASONS: &[&str] = &[
    "overlap",
    "buffer_full",
    "already_started",
    "max_runs_reached",
];

impl FireOutcome {
    fn store(&self, occurrence_ms: Millis) -> StoredFire {
        let (outcome, workflow_id, run_id, reason) = match self {
            FireOutcome::Started {
                workflow_id,
                run_id,
            } => ("started", Some(workflow_id), Some(run_id), None),
            FireOutcome::Buffered { workflow_id } => ("buffered", Some(workflow_id), None, None),
            FireOutcome::BufferFull => ("buffer_full", None, None, None),
            FireOutcome::Skipped {
                reason,
                workflow_id,
            } => ("skipped", Some(workflow_id), None, Some(*reason)),
        };
        StoredFire {
            occurrence_ms,
            outcome: outcome.to_string(),
            workflow_id: workflow_id.cloned(),
            run_id: run_id.cloned(),
            reason: reason.map(str::to_string),
        }
    }

    fn restore(f: &StoredFire) -> FireOutcome {
        let workflow_id = f.workflow_id.clone().unwrap_or_default();
        match f.outcome.as_str() {
            "started" => FireOutcome::Started {
                workflow_id,
                run_id: f.run_id.clone().unwrap_or_default(),
            },
            "buffered" => FireOutcome::Buffered { workflow_id },
            "buffer_full" => FireOutcome::BufferFull,
            _ => FireOutcome::Skipped {
                reason: SKIP_REASONS
                    .iter()
                    .find(|r| Some(**r) == f.reason.as_deref())
                    .copied()
                    .unwrap_or("overlap"),
                workflow_id,
            },
        }
    }
}

/// The receipt of `request_id`, if it is the last request the schedule applied.
fn receipt<'a>(s: &'a ScheduleRecord, request_id: &str) -> Option<&'a RequestReceipt> {
    s.last_request
        .as_ref()
        .filter(|r| r.request_id == request_id)
}

fn default_catchup() -> u64 {
    DEFAULT_CATCHUP_WINDOW_SECONDS
}

// ---- keys ----

fn schedule_key(ns: &str, id: &str) -> Vec<u8> {
    Key::new(prefix::SCHEDULE).str(ns).str(id).into_bytes()
}

fn list_key(ns: &str, created_at_ms: Millis, id: &str) -> Vec<u8> {
    Key::new(prefix::SCHEDULE_LIST)
        .str(ns)
        .u64(u64::MAX - created_at_ms.max(0) as u64)
        .str(id)
        .into_bytes()
}

fn event_key(ns: &str, id: &str, seq: u64) -> Vec<u8> {
    Key::new(prefix::SCHEDULE_EVENT)
        .str(ns)
        .str(id)
        .u64(seq)
        .into_bytes()
}

// ---- results ----

/// What one fire did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireOutcome {
    /// A workflow started.
    Started {
        /// Workflow id.
        workflow_id: String,
        /// Run id.
        run_id: String,
    },
    /// Waiting in the buffer for the open run to close.
    Buffered {
        /// The workflow id it will start.
        workflow_id: String,
    },
    /// The buffer was full; dropped.
    BufferFull,
    /// Dropped, for `reason`.
    Skipped {
        /// `overlap`, `already_started`, `max_runs_reached`, ...
        reason: &'static str,
        /// The workflow id it would have started.
        workflow_id: String,
    },
}

/// The answer to a manual trigger.
#[derive(Debug, Clone)]
pub struct TriggerResult {
    /// Schedule id.
    pub schedule_id: String,
    /// What the fire did.
    pub outcome: FireOutcome,
    /// Fires waiting in the buffer afterwards.
    pub buffer_depth: usize,
}

impl TriggerResult {
    /// The response body: `{schedule_id, outcome, workflow_id, run_id, reason, buffer_depth}`
    /// with `outcome` one of `triggered`, `buffered`, `buffer_full`, `skipped`.
    pub fn to_json(&self) -> Value {
        let (outcome, workflow_id, run_id, reason) = match &self.outcome {
            FireOutcome::Started {
                workflow_id,
                run_id,
            } => ("triggered", Some(workflow_id), Some(run_id), None),
            FireOutcome::Buffered { workflow_id } => ("buffered", Some(workflow_id), None, None),
            FireOutcome::BufferFull => ("buffer_full", None, None, Some("buffer_full")),
            FireOutcome::Skipped {
                reason,
                workflow_id,
            } => ("skipped", Some(workflow_id), None, Some(*reason)),
        };
        json!({
            "schedule_id": self.schedule_id,
            "outcome": outcome,
            "workflow_id": workflow_id,
            "run_id": run_id,
            "reason": reason,
            "buffer_depth": self.buffer_depth,
        })
    }
}

/// One occurrence of a backfill.
#[derive(Debug, Clone)]
pub struct BackfillFire {
    /// Nominal time.
    pub occurrence_ms: Millis,
    /// What it did.
    pub outcome: FireOutcome,
}

/// The answer to a backfill.
#[derive(Debug, Clone)]
pub struct BackfillResult {
    /// Schedule id.
    pub schedule_id: String,
    /// Every occurrence in the window, in order.
    pub fires: Vec<BackfillFire>,
}

impl BackfillResult {
    /// The response body: `{schedule_id, outcome: "backfill_started", fires_attempted,
    /// results: [{fire_time, workflow_id, run_id, outcome: started|buffered|skipped, reason}]}`.
    pub fn to_json(&self) -> Value {
        let results: Vec<Value> = self
            .fires
            .iter()
            .map(|f| {
                let (outcome, workflow_id, run_id, reason) = match &f.outcome {
                    FireOutcome::Started {
                        workflow_id,
                        run_id,
                    } => ("started", Some(workflow_id), Some(run_id), None),
                    FireOutcome::Buffered { workflow_id } => {
                        ("buffered", Some(workflow_id), None, None)
                    }
                    FireOutcome::BufferFull => ("skipped", None, None, Some("buffer_full")),
                    FireOutcome::Skipped {
                        reason,
                        workflow_id,
                    } => ("skipped", Some(workflow_id), None, Some(*reason)),
                };
                json!({
                    "fire_time": format_timestamp(f.occurrence_ms),
                    "workflow_id": workflow_id,
                    "run_id": run_id,
                    "outcome": outcome,
                    "reason": reason,
                })
            })
            .collect();
        json!({
            "schedule_id": self.schedule_id,
            "outcome": "backfill_started",
            "fires_attempted": self.fires.len(),
            "results": results,
        })
    }
}

/// A page of schedule history.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// Events in sequence order, in the wire shape.
    pub events: Vec<Value>,
    /// Whether more follow.
    pub has_more: bool,
    /// `after_sequence` of the next page.
    pub next_cursor: Option<u64>,
}

/// A list request.
#[derive(Debug, Clone, Default)]
pub struct ScheduleListQuery {
    /// Only this status (`active` or `paused`).
    pub status: Option<ScheduleStatus>,
    /// Only this workflow type.
    pub workflow_type: Option<String>,
    /// Equality predicates `field = value` (see [`parse_visibility_query`]).
    pub predicates: Vec<(String, Value)>,
    /// Page size (1..=[`MAX_LIST_PAGE`]).
    pub page_size: usize,
    /// Resume after this `(created_at, schedule_id)` anchor.
    pub after: Option<(Millis, String)>,
}

/// A page of schedules.
#[derive(Debug, Clone)]
pub struct ScheduleListPage {
    /// The schedules, newest first.
    pub schedules: Vec<ScheduleRecord>,
    /// The anchor of the next page, if any.
    pub next: Option<(Millis, String)>,
}

// ---- occurrence helpers ----

fn compile(s: &ScheduleRecord) -> Option<Spec> {
    match Spec::compile(&s.spec) {
        Ok(spec) => Some(spec),
        Err(errors) => {
            // Validated at write time; only a changed zone database could get here.
            tracing::warn!(schedule_id = %s.schedule_id, ?errors, "stored schedule spec no longer compiles; it will not fire");
            None
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The jitter of one occurrence: deterministic, at most `jitter_seconds` and at most half
/// the gap to the following occurrence (so jitter never reorders or merges fires).
fn jitter_ms(s: &ScheduleRecord, occurrence: Millis, following: Option<Millis>) -> Millis {
    if s.jitter_seconds == 0 {
        return 0;
    }
    let mut cap = s.jitter_seconds as Millis * 1000;
    if let Some(next) = following {
        cap = cap.min((next - occurrence) / 2);
    }
    if cap <= 0 {
        return 0;
    }
    let seed = format!("{}:{occurrence}", s.schedule_ulid);
    (fnv1a(seed.as_bytes()) % (cap as u64 + 1)) as Millis
}

/// The nominal-time label in workflow ids: RFC 3339 UTC, whole seconds when whole.
fn occurrence_label(at: Millis) -> String {
    jiff::Timestamp::from_millisecond(at)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| at.to_string())
}

/// The workflow id of an occurrence: `{schedule_id}-{occurrence}`.
pub fn occurrence_workflow_id(schedule_id: &str, occurrence: Millis) -> String {
    format!("{schedule_id}-{}", occurrence_label(occurrence))
}

fn source_cron(s: &ScheduleRecord, source: Option<Source>) -> Option<String> {
    match source {
        Some(Source::Cron(i)) => s.spec.cron_expressions.get(i).cloned(),
        _ => None,
    }
}

fn command_context(operation: &str) -> Value {
    let source = if operation == "scheduler" {
        "scheduler"
    } else {
        "control_plane"
    };
    json!({"source": source, "operation": operation})
}

// ---- the in-transaction core ----

/// A fire about to be applied.
struct Fire {
    occurrence_ms: Millis,
    workflow_id: String,
    /// Chosen before the transaction for manual fires and backfills, so a retry after an
    /// unknown commit recognizes its own run.
    run_id: String,
    trigger: TriggerKind,
    cron_expression: Option<String>,
}

async fn load(txn: &mut dyn KvTxn, ns: &str, id: &str) -> Result<Option<ScheduleRecord>> {
    tables::get(txn, &schedule_key(ns, id)).await
}

fn not_found(id: &str) -> Error {
    Error::not_found(
        "schedule_not_found",
        format!("schedule '{id}' does not exist"),
    )
    .with("schedule_id", id)
}

async fn load_live(txn: &mut dyn KvTxn, ns: &str, id: &str) -> Result<ScheduleRecord> {
    Engine::require_namespace(txn, ns).await?;
    match load(txn, ns, id).await? {
        Some(s) if s.status != ScheduleStatus::Deleted => Ok(s),
        _ => Err(not_found(id)),
    }
}

fn save(txn: &mut dyn KvTxn, s: &ScheduleRecord) -> Result<()> {
    tables::put(txn, &schedule_key(&s.namespace, &s.schedule_id), s)
}

/// Appends one audit event.
fn record_event(
    txn: &mut dyn KvTxn,
    s: &mut ScheduleRecord,
    event_type: &str,
    payload: Value,
    run: Option<(&str, &str)>,
    now: Millis,
) {
    s.last_event_seq += 1;
    let seq = s.last_event_seq;
    let event = json!({
        "id": format!("{}:{seq}", s.schedule_ulid),
        "sequence": seq,
        "event_type": event_type,
        "recorded_at": format_timestamp(now),
        "workflow_instance_id": run.map(|r| r.0),
        "workflow_run_id": run.map(|r| r.1),
        "payload": payload,
    });
    let bytes = serde_json::to_vec(&event).expect("invariant: a json Value always serializes");
    tables::put_bytes(txn, &event_key(&s.namespace, &s.schedule_id, seq), &bytes);
}

fn disarm(txn: &mut dyn KvTxn, s: &mut ScheduleRecord) {
    if let Some(timer) = s.fire_timer.take() {
        txn.clear(&tables::timer_key(&timer));
    }
    s.next_occurrence_ms = None;
    s.next_fire_at_ms = None;
}

/// Arms the timer of the first occurrence strictly after `after` (none when the schedule
/// is not active, its runs are used up, or its spec has no later occurrence).
fn arm(txn: &mut dyn KvTxn, s: &mut ScheduleRecord, after: Millis, fx: &mut Effects) -> Result<()> {
    disarm(txn, s);
    if s.status != ScheduleStatus::Active || s.remaining_actions == Some(0) {
        return Ok(());
    }
    let Some(spec) = compile(s) else {
        return Ok(());
    };
    let Some((occurrence, _)) = spec.next_after(after) else {
        return Ok(());
    };
    let following = spec.next_after(occurrence).map(|(t, _)| t);
    let at = occurrence + jitter_ms(s, occurrence, following);
    let action = TimerAction::ScheduleFire {
        namespace: s.namespace.clone(),
        schedule_id: s.schedule_id.clone(),
    };
    s.fire_timer = Some(Engine::put_timer(txn, at, &action, fx)?);
    s.next_occurrence_ms = Some(occurrence);
    s.next_fire_at_ms = Some(at);
    Ok(())
}

/// The open runs among those the schedule started, as `(workflow_id, run_id)`; forgets
/// the closed ones. Reads are conflict-tracked, so a run closing concurrently makes this
/// transaction retry instead of acting on a stale view.
async fn open_runs(txn: &mut dyn KvTxn, s: &mut ScheduleRecord) -> Result<Vec<(String, String)>> {
    let mut open = Vec::new();
    for workflow_id in std::mem::take(&mut s.running) {
        let ikey = tables::instance_key(&s.namespace, &workflow_id);
        let Some(instance) = tables::get::<InstanceRecord>(txn, &ikey).await? else {
            continue;
        };
        let rkey = tables::run_key(&s.namespace, &instance.current_run_id);
        if let Some(run) = tables::get::<RunRecord>(txn, &rkey).await? {
            if !run.status.is_terminal() {
                open.push((workflow_id.clone(), run.run_id.clone()));
                s.running.push(workflow_id);
            }
        }
    }
    Ok(open)
}

fn skip(
    txn: &mut dyn KvTxn,
    s: &mut ScheduleRecord,
    fire: &Fire,
    reason: &'static str,
    policy: OverlapPolicy,
    now: Millis,
) -> FireOutcome {
    s.skipped_count += 1;
    let payload = json!({
        "reason": reason,
        "skipped_trigger_count": 1,
        "last_skipped_at": format_timestamp(fire.occurrence_ms),
        "occurrence_time": format_timestamp(fire.occurrence_ms),
        "trigger": fire.trigger,
        "trigger_number": s.trigger_count,
        "overlap_policy": s.overlap_policy.as_str(),
        "effective_overlap_policy": policy.as_str(),
        "workflow_instance_id": fire.workflow_id,
        "command_context": command_context(trigger_operation(fire.trigger)),
    });
    record_event(txn, s, "ScheduleTriggerSkipped", payload, None, now);
    FireOutcome::Skipped {
        reason,
        workflow_id: fire.workflow_id.clone(),
    }
}

fn trigger_operation(kind: TriggerKind) -> &'static str {
    match kind {
        TriggerKind::Scheduled => "scheduler",
        TriggerKind::Manual => "trigger",
        TriggerKind::Backfill => "backfill",
    }
}

/// Evaluates one fire under `policy`: starts, buffers or skips it.
async fn apply_fire(
    txn: &mut dyn KvTxn,
    s: &mut ScheduleRecord,
    fire: Fire,
    policy: OverlapPolicy,
    now: Millis,
    fx: &mut Effects,
) -> Result<FireOutcome> {
    s.trigger_count += 1;
    if s.remaining_actions == Some(0) {
        return Ok(skip(txn, s, &fire, "max_runs_reached", policy, now));
    }
    let open = if policy == OverlapPolicy::AllowAll {
        Vec::new()
    } else {
        open_runs(txn, s).await?
    };
    if !open.is_empty() {
        match policy {
            OverlapPolicy::Skip => return Ok(skip(txn, s, &fire, "overlap", policy, now)),
            OverlapPolicy::BufferOne | OverlapPolicy::BufferAll => {
                let limit = if policy == OverlapPolicy::BufferOne {
                    1
                } else {
                    MAX_BUFFER
                };
                if s.buffer.len() >= limit {
                    return Ok(match skip(txn, s, &fire, "buffer_full", policy, now) {
                        FireOutcome::Skipped { .. } => FireOutcome::BufferFull,
                        other => other,
                    });
                }
                let payload = json!({
                    "schedule_id": s.schedule_id,
                    "outcome": "buffered",
                    "occurrence_time": format_timestamp(fire.occurrence_ms),
                    "trigger": fire.trigger,
                    "trigger_number": s.trigger_count,
                    "cron_expression": fire.cron_expression,
                    "overlap_policy": s.overlap_policy.as_str(),
                    "effective_overlap_policy": policy.as_str(),
                    "buffer_depth": s.buffer.len() + 1,
                    "command_context": command_context(trigger_operation(fire.trigger)),
                });
                record_event(txn, s, "ScheduleTriggered", payload, None, now);
                s.buffer.push(BufferedFire {
                    occurrence_ms: fire.occurrence_ms,
                    workflow_id: fire.workflow_id.clone(),
                    trigger: fire.trigger,
                    buffered_at_ms: now,
                    cron_expression: fire.cron_expression,
                });
                return Ok(FireOutcome::Buffered {
                    workflow_id: fire.workflow_id,
                });
            }
            OverlapPolicy::CancelOther | OverlapPolicy::TerminateOther => {
                let command = if policy == OverlapPolicy::CancelOther {
                    CloseCommand::Cancel
                } else {
                    CloseCommand::Terminate
                };
                let reason = format!(
                    "schedule '{}' overlap policy {}",
                    s.schedule_id,
                    policy.as_str()
                );
                for (workflow_id, run_id) in &open {
                    let command_id = ids::new_id(now);
                    crate::workflow::close_in_txn(
                        txn,
                        &s.namespace,
                        workflow_id,
                        Some(run_id),
                        command,
                        Some(&reason),
                        &command_id,
                        now,
                        fx,
                    )
                    .await?;
                }
                s.running.clear();
            }
            OverlapPolicy::AllowAll => {}
        }
    }
    start(txn, s, fire, policy, "started", now, fx).await
}

/// Starts the workflow of `fire` (its overlap already judged).
async fn start(
    txn: &mut dyn KvTxn,
    s: &mut ScheduleRecord,
    fire: Fire,
    policy: OverlapPolicy,
    outcome: &'static str,
    now: Millis,
    fx: &mut Effects,
) -> Result<FireOutcome> {
    if s.remaining_actions == Some(0) {
        return Ok(skip(txn, s, &fire, "max_runs_reached", policy, now));
    }
    let ns = s.namespace.clone();
    let ikey = tables::instance_key(&ns, &fire.workflow_id);
    if let Some(instance) = tables::get::<InstanceRecord>(txn, &ikey).await? {
        if instance.current_run_id != fire.run_id {
            // This occurrence already ran (deterministic id): never a second run.
            return Ok(skip(txn, s, &fire, "already_started", policy, now));
        }
    }
    let mut attributes = match &s.search_attributes {
        Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    attributes.insert(SCHEDULE_ID_ATTRIBUTE.into(), json!(s.schedule_id));
    attributes.insert(
        SCHEDULED_START_ATTRIBUTE.into(),
        json!(format_timestamp(fire.occurrence_ms)),
    );
    let input = match &s.action.input {
        Value::Null => crate::avro::envelope(&crate::avro::AvroValue::Array(Vec::new())),
        v => v.clone(),
    };
    let req = StartWorkflow {
        workflow_id: Some(fire.workflow_id.clone()),
        workflow_type: s.action.workflow_type.clone(),
        task_queue: s.action.task_queue.clone(),
        input,
        execution_timeout_seconds: s.action.execution_timeout_seconds,
        run_timeout_seconds: s.action.run_timeout_seconds,
        duplicate_policy: DuplicatePolicy::Fail,
        memo: if s.memo.is_object() {
            s.memo.clone()
        } else {
            json!({})
        },
        search_attributes: Value::Object(attributes),
        priority: 5,
        build_id: None,
    };
    let started =
        crate::workflow::start_in_txn(txn, &ns, &req, &fire.workflow_id, &fire.run_id, now, fx)
            .await?;
    let mut run = started.run;
    if run.lifecycle.schedule_id.as_deref() != Some(s.schedule_id.as_str()) {
        run.lifecycle.schedule_id = Some(s.schedule_id.clone());
        tables::put(txn, &tables::run_key(&ns, &run.run_id), &run)?;
    }
    s.fires_count += 1;
    s.last_fired_at_ms = Some(now);
    s.latest_workflow_id = Some(run.workflow_id.clone());
    s.latest_run_id = Some(run.run_id.clone());
    s.remaining_actions = s.remaining_actions.map(|n| n.saturating_sub(1));
    if !s.running.contains(&run.workflow_id) {
        s.running.push(run.workflow_id.clone());
        if s.running.len() > MAX_TRACKED_RUNS {
            s.running.remove(0);
        }
    }
    s.recent_actions.push(RecentAction {
        occurrence_ms: fire.occurrence_ms,
        started_at_ms: now,
        workflow_id: run.workflow_id.clone(),
        run_id: run.run_id.clone(),
        trigger: fire.trigger,
    });
    if s.recent_actions.len() > RECENT_ACTIONS {
        s.recent_actions.remove(0);
    }
    let payload = json!({
        "workflow_instance_id": run.workflow_id,
        "workflow_run_id": run.run_id,
        "schedule_id": s.schedule_id,
        "schedule_ulid": s.schedule_ulid,
        "cron_expression": fire.cron_expression,
        "timezone": s.spec.timezone.clone().unwrap_or_else(|| "UTC".into()),
        "overlap_policy": s.overlap_policy.as_str(),
        "outcome": outcome,
        "effective_overlap_policy": policy.as_str(),
        "trigger_number": s.trigger_count,
        "trigger": fire.trigger,
        "occurrence_time": format_timestamp(fire.occurrence_ms),
        "command_context": command_context(trigger_operation(fire.trigger)),
    });
    record_event(
        txn,
        s,
        "ScheduleTriggered",
        payload,
        Some((&run.workflow_id, &run.run_id)),
        now,
    );
    Ok(FireOutcome::Started {
        workflow_id: run.workflow_id,
        run_id: run.run_id,
    })
}

/// Starts the oldest buffered fire if the schedule is active and none of its runs is open.
async fn drain(
    txn: &mut dyn KvTxn,
    s: &mut ScheduleRecord,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    if s.buffer.is_empty() || s.status != ScheduleStatus::Active {
        return Ok(());
    }
    if !open_runs(txn, s).await?.is_empty() {
        return Ok(());
    }
    let next = s.buffer.remove(0);
    let fire = Fire {
        occurrence_ms: next.occurrence_ms,
        workflow_id: next.workflow_id,
        run_id: ids::new_id(now),
        trigger: next.trigger,
        cron_expression: next.cron_expression,
    };
    let policy = s.overlap_policy;
    start(txn, s, fire, policy, "started_from_buffer", now, fx).await?;
    Ok(())
}

/// Applies a schedule's fire timer (idempotent: a timer the schedule no longer names does
/// nothing). Runs inside the timer's transaction, which has deleted the timer row.
pub(crate) async fn fire(
    txn: &mut dyn KvTxn,
    ns: &str,
    id: &str,
    timer: &TimerKey,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let Some(mut s) = load(txn, ns, id).await? else {
        return Ok(());
    };
    if s.status != ScheduleStatus::Active || s.fire_timer.as_ref() != Some(timer) {
        return Ok(());
    }
    s.fire_timer = None;
    let Some(spec) = compile(&s) else {
        disarm(txn, &mut s);
        return save(txn, &s);
    };
    let nominal = s.next_occurrence_ms.unwrap_or(timer.fire_at_ms);
    // Every occurrence due by now: the armed one plus any that passed while the server
    // was down (or the timer ran late). Only the latest may fire, and only within the
    // catch-up window (a fire delayed by its own jitter is always on time).
    let (latest, latest_source) = latest_due(&spec, nominal, now)
        .map(|(at, src)| (at, Some(src)))
        .unwrap_or((nominal, None));
    let window_ms = (s.catchup_window_seconds as Millis * 1000).max(jitter_allowance(&s));
    let fires_latest = now - latest <= window_ms;
    let skipped = if fires_latest {
        spec.occurrences_between(nominal - 1, latest - 1, MISSED_COUNT_CAP)
    } else {
        spec.occurrences_between(nominal - 1, now, MISSED_COUNT_CAP)
    };
    // A buffered fire waits its turn before anything new.
    drain(txn, &mut s, now, fx).await?;
    if skipped.count > 0 {
        let count = skipped.count as u64;
        s.skipped_count += count;
        s.trigger_count += count;
        let payload = json!({
            "reason": if fires_latest { "missed_while_unavailable" } else { "catchup_window_passed" },
            "skipped_trigger_count": count,
            "skipped_trigger_count_truncated": skipped.truncated,
            "first_skipped_at": skipped.first.map(format_timestamp),
            "last_skipped_at": skipped.last.map(|l| format_timestamp(l.0)),
            "catchup_window_seconds": s.catchup_window_seconds,
            "command_context": command_context("scheduler"),
        });
        record_event(txn, &mut s, "ScheduleTriggerSkipped", payload, None, now);
        tracing::info!(schedule_id = %s.schedule_id, skipped = count, "missed schedule occurrences skipped");
    }
    if fires_latest {
        let fire = Fire {
            occurrence_ms: latest,
            workflow_id: occurrence_workflow_id(&s.schedule_id, latest),
            run_id: ids::new_id(now),
            trigger: TriggerKind::Scheduled,
            cron_expression: source_cron(&s, latest_source),
        };
        let policy = s.overlap_policy;
        apply_fire(txn, &mut s, fire, policy, now, fx).await?;
    }
    arm(txn, &mut s, now.max(latest), fx)?;
    save(txn, &s)
}

/// The latest occurrence in `[lo, now]`, searched in widening windows back from `now` so
/// that a long downtime of a frequent schedule costs little.
fn latest_due(spec: &Spec, lo: Millis, now: Millis) -> Option<(Millis, Source)> {
    const DAY: Millis = 86_400_000;
    for width in [60_000, 3_600_000, DAY, 31 * DAY, 366 * DAY, Millis::MAX / 4] {
        let from = if now - width <= lo { lo } else { now - width };
        let found = spec.occurrences_between(from - 1, now, MISSED_COUNT_CAP);
        if let Some(last) = found.last {
            return Some(last);
        }
        if from == lo {
            return None;
        }
    }
    None
}

/// A fire delayed by its own jitter is on time, whatever the catch-up window.
fn jitter_allowance(s: &ScheduleRecord) -> Millis {
    s.jitter_seconds as Millis * 1000
}

/// Applies a [`TimerAction::ScheduleRunClosed`] timer: a run the schedule started closed,
/// so a buffered fire may start.
pub(crate) async fn run_closed(
    txn: &mut dyn KvTxn,
    ns: &str,
    id: &str,
    workflow_id: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let Some(mut s) = load(txn, ns, id).await? else {
        return Ok(());
    };
    if s.status == ScheduleStatus::Deleted
        || (s.buffer.is_empty() && !s.running.iter().any(|w| w == workflow_id))
    {
        return Ok(());
    }
    // Prunes closed runs even when nothing is buffered.
    open_runs(txn, &mut s).await?;
    drain(txn, &mut s, now, fx).await?;
    save(txn, &s)
}

/// Called when any run closes (same transaction): a run started by a schedule tells its
/// schedule through a timer, so the close does not read or conflict on the schedule.
pub(crate) fn on_run_closed(
    txn: &mut dyn KvTxn,
    run: &RunRecord,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let Some(schedule_id) = &run.lifecycle.schedule_id else {
        return Ok(());
    };
    // A continued run lives on in its successor, which keeps the link.
    if run.closed_reason.as_deref() == Some("continued") {
        return Ok(());
    }
    let action = TimerAction::ScheduleRunClosed {
        namespace: run.namespace.clone(),
        schedule_id: schedule_id.clone(),
        workflow_id: run.workflow_id.clone(),
    };
    Engine::put_timer(txn, now, &action, fx)?;
    Ok(())
}

// ---- rendering ----

/// The `describe` / list entry body of a schedule.
pub fn schedule_json(s: &ScheduleRecord) -> Value {
    let ts = |ms: Option<Millis>| ms.map(format_timestamp);
    let spec = &s.spec;
    let spec_json = json!({
        "cron_expressions": spec.cron_expressions,
        "intervals": spec.intervals.iter().map(|i| json!({"every": i.every, "offset": i.offset})).collect::<Vec<_>>(),
        "timezone": spec.timezone.clone().unwrap_or_else(|| "UTC".into()),
        "start_at": ts(spec.start_at_ms),
        "end_at": ts(spec.end_at_ms),
    });
    let mut future = Vec::new();
    if s.status == ScheduleStatus::Active {
        if let (Some(spec), Some(mut t)) = (compile(s), s.next_occurrence_ms) {
            future.push(t);
            while future.len() < FUTURE_ACTION_TIMES {
                match spec.next_after(t) {
                    Some((next, _)) => {
                        future.push(next);
                        t = next;
                    }
                    None => break,
                }
            }
            if let Some(remaining) = s.remaining_actions {
                future.truncate(remaining as usize);
            }
        }
    }
    json!({
        "schedule_id": s.schedule_id,
        "namespace": s.namespace,
        "status": s.status.as_str(),
        "workflow_type": s.action.workflow_type,
        "task_queue": s.action.task_queue,
        "spec": spec_json,
        "action": {
            "workflow_type": s.action.workflow_type,
            "task_queue": s.action.task_queue,
            "input": s.action.input,
            "execution_timeout_seconds": s.action.execution_timeout_seconds,
            "run_timeout_seconds": s.action.run_timeout_seconds,
        },
        "overlap_policy": s.overlap_policy.as_str(),
        "note": s.note,
        "memo": if s.memo.is_object() { s.memo.clone() } else { json!({}) },
        "search_attributes": if s.search_attributes.is_object() { s.search_attributes.clone() } else { json!({}) },
        "jitter_seconds": s.jitter_seconds,
        "max_runs": s.max_runs,
        "remaining_actions": s.remaining_actions,
        "catchup_window_seconds": s.catchup_window_seconds,
        "fires_count": s.fires_count,
        "failures_count": s.failures_count,
        "next_fire_at": ts(s.next_fire_at_ms),
        "last_fired_at": ts(s.last_fired_at_ms),
        "latest_workflow_instance_id": s.latest_workflow_id,
        "paused_at": ts(s.paused_at_ms),
        "created_at": format_timestamp(s.created_at_ms),
        "updated_at": format_timestamp(s.updated_at_ms),
        "info": {
            "schedule_ulid": s.schedule_ulid,
            "latest_workflow_run_id": s.latest_run_id,
            "next_occurrence_at": ts(s.next_occurrence_ms),
            "future_action_times": future.into_iter().map(format_timestamp).collect::<Vec<_>>(),
            "buffer_depth": s.buffer.len(),
            "buffered_fires": s.buffer.iter().map(|b| json!({
                "occurrence_time": format_timestamp(b.occurrence_ms),
                "workflow_id": b.workflow_id,
                "trigger": b.trigger,
                "buffered_at": format_timestamp(b.buffered_at_ms),
            })).collect::<Vec<_>>(),
            "running_workflow_ids": s.running,
            "recent_actions": s.recent_actions.iter().map(|a| json!({
                "occurrence_time": format_timestamp(a.occurrence_ms),
                "started_at": format_timestamp(a.started_at_ms),
                "workflow_id": a.workflow_id,
                "run_id": a.run_id,
                "trigger": a.trigger,
            })).collect::<Vec<_>>(),
            "trigger_count": s.trigger_count,
            "skipped_count": s.skipped_count,
            "missed_fire_policy": "fire_once_on_resume_then_skip_remaining_missed",
        },
    })
}

/// Parses a list `query`: equality predicates `Field = literal` joined by `AND`. Fields:
/// `ScheduleId`, `Status`, `WorkflowType`, `TaskQueue`, `Note`, and the namespace's
/// registered search attributes. Literals: quoted strings, integers, doubles, `true`,
/// `false`. Anything else is refused with a typed reason.
pub fn parse_visibility_query(
    query: &str,
    registered: &BTreeMap<String, String>,
) -> Result<Vec<(String, Value)>> {
    let invalid = |reason: &'static str, message: String| {
        Error::reject(RejectKind::Invalid, reason, message).with("field", "query")
    };
    let mut tokens = Vec::new();
    let chars: Vec<char> = query.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(invalid(
                            "invalid_schedule_visibility_query",
                            "unterminated string literal".into(),
                        ))
                    }
                    Some('\\') => {
                        if let Some(n) = chars.get(i + 1) {
                            s.push(*n);
                        }
                        i += 2;
                    }
                    Some(q) if *q == c => {
                        i += 1;
                        break;
                    }
                    Some(other) => {
                        s.push(*other);
                        i += 1;
                    }
                }
            }
            tokens.push((true, s));
        } else if matches!(c, '=' | '!' | '<' | '>' | '(' | ')' | ',') {
            let mut op = c.to_string();
            if matches!(chars.get(i + 1), Some('=')) && c != '=' {
                op.push('=');
                i += 1;
            }
            tokens.push((false, op));
            i += 1;
        } else {
            let start = i;
            while i < chars.len()
                && !chars[i].is_whitespace()
                && !matches!(
                    chars[i],
                    '=' | '!' | '<' | '>' | '(' | ')' | ',' | '\'' | '"'
                )
            {
                i += 1;
            }
            tokens.push((false, chars[start..i].iter().collect()));
        }
    }
    let mut predicates = Vec::new();
    let mut rest = tokens.as_slice();
    loop {
        let [(false, field), (false, op), (quoted, literal), tail @ ..] = rest else {
            if let Some((_, t)) = rest.iter().find(|(q, t)| {
                !q && matches!(
                    t.to_ascii_uppercase().as_str(),
                    "OR" | "NOT" | "IN" | "LIKE" | "BETWEEN" | "<" | ">" | "<=" | ">=" | "!="
                )
            }) {
                return Err(invalid(
                    "unsupported_schedule_visibility_predicate",
                    format!("'{t}' is not supported; use equality predicates joined by AND"),
                ));
            }
            return Err(invalid(
                "invalid_schedule_visibility_query",
                format!("cannot parse the query '{query}'; expected Field = value [AND ...]"),
            ));
        };
        if op != "=" {
            return Err(invalid(
                "unsupported_schedule_visibility_predicate",
                format!("operator '{op}' is not supported; only '=' is"),
            ));
        }
        let system = ["ScheduleId", "Status", "WorkflowType", "TaskQueue", "Note"];
        if !system.contains(&field.as_str()) && !registered.contains_key(field) {
            return Err(invalid(
                "unsupported_schedule_visibility_field",
                format!("'{field}' is not a searchable schedule field"),
            ));
        }
        let value = if *quoted {
            json!(literal)
        } else if literal == "true" || literal == "false" {
            json!(literal == "true")
        } else if let Ok(n) = literal.parse::<i64>() {
            json!(n)
        } else if let Ok(f) = literal.parse::<f64>() {
            json!(f)
        } else {
            return Err(invalid(
                "invalid_schedule_visibility_query",
                format!("'{literal}' is not a literal; quote strings"),
            ));
        };
        predicates.push((field.clone(), value));
        match tail {
            [] => return Ok(predicates),
            [(false, and), more @ ..] if and.eq_ignore_ascii_case("AND") => rest = more,
            [(_, t), ..] => {
                let reason = if matches!(t.to_ascii_uppercase().as_str(), "OR" | "NOT") {
                    "unsupported_schedule_visibility_predicate"
                } else {
                    "invalid_schedule_visibility_query"
                };
                return Err(invalid(
                    reason,
                    format!("unexpected '{t}'; predicates are joined by AND"),
                ));
            }
        }
    }
}

fn matches(s: &ScheduleRecord, q: &ScheduleListQuery) -> bool {
    if s.status == ScheduleStatus::Deleted || q.status.is_some_and(|st| st != s.status) {
        return false;
    }
    if q.workflow_type
        .as_ref()
        .is_some_and(|t| *t != s.action.workflow_type)
    {
        return false;
    }
    q.predicates.iter().all(|(field, value)| {
        let actual = match field.as_str() {
            "ScheduleId" => json!(s.schedule_id),
            "Status" => json!(s.status.as_str()),
            "WorkflowType" => json!(s.action.workflow_type),
            "TaskQueue" => json!(s.action.task_queue),
            "Note" => json!(s.note),
            other => s
                .search_attributes
                .get(other)
                .cloned()
                .unwrap_or(Value::Null),
        };
        match &actual {
            Value::Array(items) => items.contains(value),
            other => other == value,
        }
    })
}

// ---- the engine API ----

impl Engine {
    /// Creates a schedule (201). 409 `schedule_already_exists` when the id is live; a
    /// soft-deleted id may be re-created (its history continues).
    pub async fn create_schedule(&self, ns: &str, input: ScheduleInput) -> Result<ScheduleRecord> {
        if let Some(attributes) = &input.search_attributes {
            self.validate_search_attributes(ns, attributes).await?;
        }
        let now = self.now_ms();
        let ulid = ids::new_id(now);
        let id = input
            .schedule_id
            .clone()
            .unwrap_or_else(|| ulid.to_ascii_lowercase());
        let (input, id, ulid) = (&input, &id, &ulid);
        self.transact(move |mut txn, mut fx| async move {
            Self::require_namespace(txn.as_mut(), ns).await?;
            let key = schedule_key(ns, id);
            let existing = tables::get::<ScheduleRecord>(txn.as_mut(), &key).await?;
            if let Some(e) = &existing {
                if e.schedule_ulid == *ulid {
                    // Our own earlier attempt committed (commit-unknown retry).
                    return Ok((txn, (e.clone(), fx)));
                }
                if e.status != ScheduleStatus::Deleted {
                    return Err(Error::conflict(
                        "schedule_already_exists",
                        format!("schedule '{id}' already exists"),
                    )
                    .with("schedule_id", id.as_str()));
                }
            }
            let mut s = ScheduleRecord {
                namespace: ns.to_string(),
                schedule_id: id.clone(),
                schedule_ulid: ulid.clone(),
                status: if input.paused {
                    ScheduleStatus::Paused
                } else {
                    ScheduleStatus::Active
                },
                spec: input.spec.clone(),
                action: input.action.clone(),
                overlap_policy: input.overlap_policy.unwrap_or(OverlapPolicy::Skip),
                jitter_seconds: input.jitter_seconds.unwrap_or(0),
                max_runs: input.max_runs,
                remaining_actions: input.max_runs,
                memo: input.memo.clone().unwrap_or_else(|| json!({})),
                search_attributes: input.search_attributes.clone().unwrap_or_else(|| json!({})),
                note: input.note.clone(),
                catchup_window_seconds: input
                    .catchup_window_seconds
                    .unwrap_or(DEFAULT_CATCHUP_WINDOW_SECONDS),
                fires_count: 0,
                failures_count: 0,
                trigger_count: 0,
                skipped_count: 0,
                next_occurrence_ms: None,
                next_fire_at_ms: None,
                fire_timer: None,
                last_fired_at_ms: None,
                latest_workflow_id: None,
                latest_run_id: None,
                running: Vec::new(),
                buffer: Vec::new(),
                recent_actions: Vec::new(),
                paused_at_ms: input.paused.then_some(now),
                created_at_ms: now,
                updated_at_ms: now,
                deleted_at_ms: None,
                // A re-created id continues the old audit stream.
                last_event_seq: existing.as_ref().map_or(0, |e| e.last_event_seq),
                last_request: None,
            };
            arm(txn.as_mut(), &mut s, now, &mut fx)?;
            let view = schedule_json(&s);
            let payload = json!({
                "spec": view["spec"],
                "action": view["action"],
                "overlap_policy": s.overlap_policy.as_str(),
                "next_fire_at": s.next_fire_at_ms.map(format_timestamp),
                "paused": input.paused,
                "command_context": command_context("create"),
            });
            record_event(txn.as_mut(), &mut s, "ScheduleCreated", payload, None, now);
            txn.set(&list_key(ns, now, id), &[]);
            save(txn.as_mut(), &s)?;
            Ok((txn, (s, fx)))
        })
        .await
    }

    /// Reads a live schedule (404 `schedule_not_found` when absent or deleted).
    pub async fn describe_schedule(&self, ns: &str, id: &str) -> Result<ScheduleRecord> {
        let mut txn = self.inner.store.begin().await?;
        Self::require_namespace(txn.as_mut(), ns).await?;
        match tables::get_snapshot::<ScheduleRecord>(txn.as_mut(), &schedule_key(ns, id)).await? {
            Some(s) if s.status != ScheduleStatus::Deleted => Ok(s),
            _ => Err(not_found(id)),
        }
    }

    /// One page of live schedules, newest first (`created_at` descending, then id).
    pub async fn list_schedules(
        &self,
        ns: &str,
        q: &ScheduleListQuery,
    ) -> Result<ScheduleListPage> {
        let mut txn = self.inner.store.begin().await?;
        Self::require_namespace(txn.as_mut(), ns).await?;
        let page_size = q.page_size.clamp(1, MAX_LIST_PAGE);
        let base = Key::new(prefix::SCHEDULE_LIST).str(ns);
        let mut range: KeyRange = base.range();
        if let Some((created_at, anchor)) = &q.after {
            // A token whose anchor is gone or was re-created is stale.
            let current =
                tables::get_snapshot::<ScheduleRecord>(txn.as_mut(), &schedule_key(ns, anchor))
                    .await?;
            if current.is_none_or(|s| {
                s.created_at_ms != *created_at || s.status == ScheduleStatus::Deleted
            }) {
                return Err(Error::conflict(
                    "stale_schedule_page_token",
                    "the page token's anchor schedule was deleted or re-created; start the listing again",
                )
                .with("field", "next_page_token"));
            }
            range.start = std::ops::Bound::Excluded(list_key(ns, *created_at, anchor));
        }
        let mut found = Vec::new();
        'scan: loop {
            let batch = txn
                .get_range(&range, ReadOptions::limit(256).snapshot())
                .await?;
            let full = batch.len() == 256;
            for (key, _) in &batch {
                let mut r = KeyReader::new(key);
                let (Some(_), Some(_), Some(id)) = (r.str(), r.u64(), r.str()) else {
                    return Err(Error::corrupt("schedule list key"));
                };
                if let Some(s) =
                    tables::get_snapshot::<ScheduleRecord>(txn.as_mut(), &schedule_key(ns, &id))
                        .await?
                {
                    if matches(&s, q) {
                        found.push(s);
                        if found.len() > page_size {
                            break 'scan;
                        }
                    }
                }
            }
            match (full, batch.last()) {
                (true, Some((last, _))) => range.start = std::ops::Bound::Excluded(last.clone()),
                _ => break,
            }
        }
        let more = found.len() > page_size;
        found.truncate(page_size);
        let next = more
            .then(|| {
                found
                    .last()
                    .map(|s| (s.created_at_ms, s.schedule_id.clone()))
            })
            .flatten();
        Ok(ScheduleListPage {
            schedules: found,
            next,
        })
    }

    /// Replaces the fields `patch` carries; re-arms from now.
    pub async fn update_schedule(
        &self,
        ns: &str,
        id: &str,
        patch: SchedulePatch,
    ) -> Result<ScheduleRecord> {
        if let Some(attributes) = &patch.search_attributes {
            self.validate_search_attributes(ns, attributes).await?;
        }
        let now = self.now_ms();
        let request_id = ids::new_id(now);
        let (patch, request_id) = (&patch, &request_id);
        self.transact(move |mut txn, mut fx| async move {
            let mut s = load_live(txn.as_mut(), ns, id).await?;
            if receipt(&s, request_id).is_some() {
                // Our own earlier attempt committed (commit-unknown retry).
                return Ok((txn, (s, fx)));
            }
            s.last_request = Some(RequestReceipt {
                request_id: request_id.clone(),
                fires: Vec::new(),
            });
            let mut changed = Vec::new();
            if let Some(spec) = &patch.spec {
                s.spec = spec.clone();
                changed.push("spec");
            }
            if let Some(action) = &patch.action {
                s.action = action.clone();
                changed.push("action");
            }
            if let Some(p) = patch.overlap_policy {
                s.overlap_policy = p;
                changed.push("overlap_policy");
            }
            if let Some(j) = patch.jitter_seconds {
                s.jitter_seconds = j;
                changed.push("jitter_seconds");
            }
            if let Some(m) = patch.max_runs {
                s.max_runs = Some(m);
                s.remaining_actions = Some(m.saturating_sub(s.fires_count));
                changed.push("max_runs");
            }
            if let Some(m) = &patch.memo {
                s.memo = m.clone();
                changed.push("memo");
            }
            if let Some(a) = &patch.search_attributes {
                s.search_attributes = a.clone();
                changed.push("search_attributes");
            }
            if let Some(n) = &patch.note {
                s.note = Some(n.clone());
                changed.push("note");
            }
            if let Some(c) = patch.catchup_window_seconds {
                s.catchup_window_seconds = c;
                changed.push("catchup_window_seconds");
            }
            s.updated_at_ms = now;
            if s.status == ScheduleStatus::Active {
                // An occurrence already due but waiting out its jitter is kept unless the
                // spec itself changed.
                let from = match s.next_occurrence_ms {
                    Some(pending) if pending <= now && patch.spec.is_none() => pending - 1,
                    _ => now,
                };
                arm(txn.as_mut(), &mut s, from, &mut fx)?;
                drain(txn.as_mut(), &mut s, now, &mut fx).await?;
            }
            let view = schedule_json(&s);
            let payload = json!({
                "changed_fields": changed,
                "spec": view["spec"],
                "action": view["action"],
                "overlap_policy": s.overlap_policy.as_str(),
                "next_fire_at": s.next_fire_at_ms.map(format_timestamp),
                "command_context": command_context("update"),
            });
            record_event(txn.as_mut(), &mut s, "ScheduleUpdated", payload, None, now);
            save(txn.as_mut(), &s)?;
            Ok((txn, (s, fx)))
        })
        .await
    }

    /// Pauses a schedule (no fires until resumed; idempotent). `note` replaces the note.
    pub async fn pause_schedule(
        &self,
        ns: &str,
        id: &str,
        note: Option<String>,
    ) -> Result<ScheduleRecord> {
        let now = self.now_ms();
        let note = &note;
        self.transact(move |mut txn, fx| async move {
            let mut s = load_live(txn.as_mut(), ns, id).await?;
            if s.status == ScheduleStatus::Paused {
                return Ok((txn, (s, fx)));
            }
            s.status = ScheduleStatus::Paused;
            s.paused_at_ms = Some(now);
            s.updated_at_ms = now;
            if let Some(n) = note {
                s.note = Some(n.clone());
            }
            disarm(txn.as_mut(), &mut s);
            let payload = json!({
                "reason": note,
                "paused_at": format_timestamp(now),
                "command_context": command_context("pause"),
            });
            record_event(txn.as_mut(), &mut s, "SchedulePaused", payload, None, now);
            save(txn.as_mut(), &s)?;
            Ok((txn, (s, fx)))
        })
        .await
    }

    /// Resumes a paused schedule: the next fire is computed from now (the paused window is
    /// not caught up); a buffered fire starts if nothing is running. Idempotent.
    pub async fn resume_schedule(
        &self,
        ns: &str,
        id: &str,
        note: Option<String>,
    ) -> Result<ScheduleRecord> {
        let now = self.now_ms();
        let note = &note;
        self.transact(move |mut txn, mut fx| async move {
            let mut s = load_live(txn.as_mut(), ns, id).await?;
            if s.status == ScheduleStatus::Active {
                return Ok((txn, (s, fx)));
            }
            s.status = ScheduleStatus::Active;
            s.paused_at_ms = None;
            s.updated_at_ms = now;
            if let Some(n) = note {
                s.note = Some(n.clone());
            }
            arm(txn.as_mut(), &mut s, now, &mut fx)?;
            drain(txn.as_mut(), &mut s, now, &mut fx).await?;
            let payload = json!({
                "next_fire_at": s.next_fire_at_ms.map(format_timestamp),
                "reason": note,
                "command_context": command_context("resume"),
            });
            record_event(txn.as_mut(), &mut s, "ScheduleResumed", payload, None, now);
            save(txn.as_mut(), &s)?;
            Ok((txn, (s, fx)))
        })
        .await
    }

    /// Fires a schedule now (also when paused), under `overlap` or the schedule's policy.
    pub async fn trigger_schedule(
        &self,
        ns: &str,
        id: &str,
        overlap: Option<OverlapPolicy>,
    ) -> Result<TriggerResult> {
        let now = self.now_ms();
        let run_id = ids::new_id(now);
        let run_id = &run_id;
        self.transact(move |mut txn, mut fx| async move {
            let mut s = load_live(txn.as_mut(), ns, id).await?;
            if let Some(done) = receipt(&s, run_id) {
                // Our own earlier attempt committed (commit-unknown retry).
                let outcome = done
                    .fires
                    .first()
                    .map(FireOutcome::restore)
                    .unwrap_or(FireOutcome::BufferFull);
                let result = TriggerResult {
                    schedule_id: id.to_string(),
                    outcome,
                    buffer_depth: s.buffer.len(),
                };
                return Ok((txn, (result, fx)));
            }
            let mut workflow_id = format!("{id}-{}", format_timestamp(now));
            let ikey = tables::instance_key(ns, &workflow_id);
            if tables::get::<InstanceRecord>(txn.as_mut(), &ikey)
                .await?
                .is_some()
            {
                // Two manual triggers in one microsecond: keep the ids apart.
                workflow_id = format!("{workflow_id}-{}", s.trigger_count + 1);
            }
            drain(txn.as_mut(), &mut s, now, &mut fx).await?;
            let fire = Fire {
                occurrence_ms: now,
                workflow_id,
                run_id: run_id.clone(),
                trigger: TriggerKind::Manual,
                cron_expression: None,
            };
            let policy = overlap.unwrap_or(s.overlap_policy);
            let outcome = apply_fire(txn.as_mut(), &mut s, fire, policy, now, &mut fx).await?;
            // A schedule whose runs were used up has no timer any more.
            if s.remaining_actions == Some(0) {
                disarm(txn.as_mut(), &mut s);
            }
            s.last_request = Some(RequestReceipt {
                request_id: run_id.clone(),
                fires: vec![outcome.store(now)],
            });
            save(txn.as_mut(), &s)?;
            let result = TriggerResult {
                schedule_id: id.to_string(),
                outcome,
                buffer_depth: s.buffer.len(),
            };
            Ok((txn, (result, fx)))
        })
        .await
    }

    /// Fires every occurrence of the spec in `[start, end)` (also when paused), in order,
    /// under `overlap` or the schedule's policy. 422 `invalid_time_range` unless
    /// `end > start`; 422 `backfill_too_large` beyond [`MAX_BACKFILL_FIRES`] occurrences.
    pub async fn backfill_schedule(
        &self,
        ns: &str,
        id: &str,
        start_ms: Millis,
        end_ms: Millis,
        overlap: Option<OverlapPolicy>,
    ) -> Result<BackfillResult> {
        if end_ms <= start_ms {
            return Err(Error::reject(
                RejectKind::Invalid,
                "invalid_time_range",
                "end_time must be after start_time (the window is [start_time, end_time))",
            )
            .with(
                "errors",
                json!({"end_time": ["The end_time must be after the start_time."]}),
            ));
        }
        let s = self.describe_schedule(ns, id).await?;
        let Some(spec) = compile(&s) else {
            return Ok(BackfillResult {
                schedule_id: id.to_string(),
                fires: Vec::new(),
            });
        };
        let mut occurrences = Vec::new();
        let mut t = start_ms - 1;
        while let Some((at, source)) = spec.next_after(t) {
            if at >= end_ms {
                break;
            }
            if occurrences.len() == MAX_BACKFILL_FIRES {
                return Err(Error::reject(
                    RejectKind::Invalid,
                    "backfill_too_large",
                    format!("the window holds more than {MAX_BACKFILL_FIRES} occurrences; backfill smaller windows"),
                )
                .with("max_fires", MAX_BACKFILL_FIRES as u64));
            }
            occurrences.push((at, source, ids::new_id(self.now_ms())));
            t = at;
        }
        let mut fires = Vec::with_capacity(occurrences.len());
        for batch in occurrences.chunks(BACKFILL_BATCH) {
            let now = self.now_ms();
            let request_id = ids::new_id(now);
            let request_id = &request_id;
            let done = self
                .transact(move |mut txn, mut fx| async move {
                    let mut s = load_live(txn.as_mut(), ns, id).await?;
                    if let Some(done) = receipt(&s, request_id) {
                        // Our own earlier attempt committed (commit-unknown retry).
                        let out = done
                            .fires
                            .iter()
                            .map(|f| BackfillFire {
                                occurrence_ms: f.occurrence_ms,
                                outcome: FireOutcome::restore(f),
                            })
                            .collect();
                        return Ok((txn, (out, fx)));
                    }
                    drain(txn.as_mut(), &mut s, now, &mut fx).await?;
                    let policy = overlap.unwrap_or(s.overlap_policy);
                    let mut out = Vec::with_capacity(batch.len());
                    for (at, source, run_id) in batch {
                        let fire = Fire {
                            occurrence_ms: *at,
                            workflow_id: occurrence_workflow_id(id, *at),
                            run_id: run_id.clone(),
                            trigger: TriggerKind::Backfill,
                            cron_expression: source_cron(&s, Some(*source)),
                        };
                        let outcome =
                            apply_fire(txn.as_mut(), &mut s, fire, policy, now, &mut fx).await?;
                        out.push(BackfillFire {
                            occurrence_ms: *at,
                            outcome,
                        });
                    }
                    if s.remaining_actions == Some(0) {
                        disarm(txn.as_mut(), &mut s);
                    }
                    s.last_request = Some(RequestReceipt {
                        request_id: request_id.clone(),
                        fires: out
                            .iter()
                            .map(|f: &BackfillFire| f.outcome.store(f.occurrence_ms))
                            .collect(),
                    });
                    save(txn.as_mut(), &s)?;
                    Ok((txn, (out, fx)))
                })
                .await?;
            fires.extend(done);
        }
        Ok(BackfillResult {
            schedule_id: id.to_string(),
            fires,
        })
    }

    /// Soft-deletes a schedule: no more fires, gone from list and describe; its history
    /// stays readable. Runs it started are not touched.
    pub async fn delete_schedule(&self, ns: &str, id: &str) -> Result<()> {
        let now = self.now_ms();
        let request_id = ids::new_id(now);
        let request_id = &request_id;
        self.transact(move |mut txn, fx| async move {
            Self::require_namespace(txn.as_mut(), ns).await?;
            let mut s = match load(txn.as_mut(), ns, id).await? {
                Some(s) if s.status != ScheduleStatus::Deleted => s,
                // Our own earlier attempt committed (commit-unknown retry).
                Some(s) if receipt(&s, request_id).is_some() => return Ok((txn, ((), fx))),
                _ => return Err(not_found(id)),
            };
            s.last_request = Some(RequestReceipt {
                request_id: request_id.clone(),
                fires: Vec::new(),
            });
            disarm(txn.as_mut(), &mut s);
            s.status = ScheduleStatus::Deleted;
            s.deleted_at_ms = Some(now);
            s.updated_at_ms = now;
            s.buffer.clear();
            s.running.clear();
            txn.clear(&list_key(ns, s.created_at_ms, id));
            let payload = json!({
                "reason": "deleted",
                "deleted_at": format_timestamp(now),
                "command_context": command_context("delete"),
            });
            record_event(txn.as_mut(), &mut s, "ScheduleDeleted", payload, None, now);
            save(txn.as_mut(), &s)?;
            Ok((txn, ((), fx)))
        })
        .await
    }

    /// One page of a schedule's audit history after `after_sequence` (also for a deleted
    /// schedule; 404 only when the id never existed).
    pub async fn schedule_history(
        &self,
        ns: &str,
        id: &str,
        after_sequence: u64,
        limit: usize,
    ) -> Result<HistoryPage> {
        let limit = limit.clamp(1, MAX_HISTORY_PAGE);
        let mut txn = self.inner.store.begin().await?;
        Self::require_namespace(txn.as_mut(), ns).await?;
        if tables::get_snapshot::<ScheduleRecord>(txn.as_mut(), &schedule_key(ns, id))
            .await?
            .is_none()
        {
            return Err(not_found(id));
        }
        let base = Key::new(prefix::SCHEDULE_EVENT).str(ns).str(id);
        let mut range = base.range();
        range.start = std::ops::Bound::Excluded(event_key(ns, id, after_sequence));
        // A large event (an action with a big input) is split across values: read some
        // spare rows so that a page always holds whole events.
        let rows = txn
            .get_range(&range, ReadOptions::limit(limit + 1 + 64).snapshot())
            .await?;
        let (rows, cut) = tables::assemble(rows)?;
        let mut events = Vec::with_capacity(rows.len().min(limit));
        for (_, bytes) in rows.iter().take(limit) {
            events.push(serde_json::from_slice::<Value>(bytes).map_err(Error::corrupt)?);
        }
        let has_more = rows.len() > limit || cut;
        let next_cursor = if has_more {
            events.last().and_then(|e| e["sequence"].as_u64())
        } else {
            None
        };
        Ok(HistoryPage {
            events,
            has_more,
            next_cursor,
        })
    }
}
