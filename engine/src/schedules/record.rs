//! Schedule records, their keys, and the results the service returns.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Millis;
use crate::keys::{prefix, Key};
use crate::model::TimerKey;

use super::spec::SpecRecord;
use super::DEFAULT_CATCHUP_WINDOW_SECONDS;

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
    pub workflow_type: String,
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
    pub workflow_id: String,
    pub run_id: String,
    /// How it came about.
    pub trigger: TriggerKind,
}

/// A schedule as stored. Every field added later needs a serde default.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleRecord {
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
pub(super) const SKIP_REASONS: &[&str] = &[
    "overlap",
    "buffer_full",
    "already_started",
    "max_runs_reached",
];

impl FireOutcome {
    pub(super) fn store(&self, occurrence_ms: Millis) -> StoredFire {
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

    pub(super) fn restore(f: &StoredFire) -> FireOutcome {
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
pub(super) fn receipt<'a>(s: &'a ScheduleRecord, request_id: &str) -> Option<&'a RequestReceipt> {
    s.last_request
        .as_ref()
        .filter(|r| r.request_id == request_id)
}

pub(super) fn default_catchup() -> u64 {
    DEFAULT_CATCHUP_WINDOW_SECONDS
}

// ---- keys ----

pub(super) fn schedule_key(ns: &str, id: &str) -> Vec<u8> {
    Key::new(prefix::SCHEDULE).str(ns).str(id).into_bytes()
}

pub(super) fn list_key(ns: &str, created_at_ms: Millis, id: &str) -> Vec<u8> {
    Key::new(prefix::SCHEDULE_LIST)
        .str(ns)
        .u64(u64::MAX - created_at_ms.max(0) as u64)
        .str(id)
        .into_bytes()
}

pub(super) fn event_key(ns: &str, id: &str, seq: u64) -> Vec<u8> {
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
    Started { workflow_id: String, run_id: String },
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
    pub schedule_id: String,
    /// What the fire did.
    pub outcome: FireOutcome,
    /// Fires waiting in the buffer afterwards.
    pub buffer_depth: usize,
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
    pub schedule_id: String,
    /// Every occurrence in the window, in order.
    pub fires: Vec<BackfillFire>,
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
