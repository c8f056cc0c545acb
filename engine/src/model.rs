//! The records stored in the domain tables. Stored as JSON so that operators and later
//! versions can read them; every field added later must have a serde default.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Millis;

/// A namespace.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NamespaceRecord {
    /// Lowercase name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Days closed runs are kept.
    pub retention_days: u32,
    /// Creation time.
    pub created_at_ms: Millis,
    /// Last update time.
    pub updated_at_ms: Millis,
    /// Operator metadata, a JSON object.
    #[serde(default)]
    pub metadata: Value,
    /// The external payload storage policy as configured (stored only: Keel does not
    /// offload payloads).
    #[serde(default)]
    pub external_payload_storage: Option<Value>,
    /// Custom search attributes registered in this namespace: name → type.
    #[serde(default)]
    pub search_attributes: std::collections::BTreeMap<String, String>,
}

/// A workflow id and its chain of runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub workflow_id: String,
    /// The newest run.
    pub current_run_id: String,
    /// Runs so far (continue-as-new adds one each).
    pub run_count: u32,
    /// When the first run started.
    pub created_at_ms: Millis,
}

/// The status of a run, as the protocol names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Started, no workflow task completed yet.
    Pending,
    /// A workflow task is ready or leased.
    Running,
    /// Waiting for an activity, timer or signal.
    Waiting,
    /// Completed with a result.
    Completed,
    /// Failed (including timeouts).
    Failed,
    Cancelled,
    Terminated,
}

impl RunStatus {
    /// Whether the run has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled | RunStatus::Terminated
        )
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Terminated => "terminated",
        }
    }

    /// The coarse bucket used by list filters.
    pub fn bucket(self) -> &'static str {
        match self {
            RunStatus::Completed => "completed",
            RunStatus::Failed | RunStatus::Cancelled | RunStatus::Terminated => "failed",
            _ => "running",
        }
    }
}

/// One run of a workflow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub namespace: String,
    pub workflow_id: String,
    /// Run id (globally unique).
    pub run_id: String,
    /// 1 for the first run.
    pub run_number: u32,
    pub workflow_type: String,
    /// Task queue of its workflow tasks.
    pub task_queue: String,
    pub status: RunStatus,
    /// Priority of its tasks, 0 (first) to 9.
    pub priority: u8,
    /// Build id the run is pinned to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// Memo, a JSON object: as started, then the typed projection of the merged upserts.
    #[serde(default = "empty_object", skip_serializing_if = "is_empty_object")]
    pub memo: Value,
    /// The failures of the current workflow task since the run last made progress (a
    /// task that fails on every attempt must be visible, not an invisible retry loop);
    /// cleared by the next completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_task_failure: Option<WorkflowTaskFailure>,
    /// The merged memo after the latest `upsert_memo`, as an Avro blob: the base of the
    /// next merge, since the projection loses the long/double distinction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo_blob: Option<String>,
    /// Search attributes, a JSON object.
    #[serde(default = "empty_object", skip_serializing_if = "is_empty_object")]
    pub search_attributes: Value,
    /// Start time.
    pub started_at_ms: Millis,
    /// Close time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at_ms: Option<Millis>,
    /// Last time history grew.
    pub last_progress_at_ms: Millis,
    /// Execution timeout in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_timeout_seconds: Option<u64>,
    /// Run timeout in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_timeout_seconds: Option<u64>,
    /// When the execution times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_deadline_ms: Option<Millis>,
    /// When this run times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_deadline_ms: Option<Millis>,
    /// The timer enforcing the earlier deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_timer: Option<TimerKey>,
    /// Sequence of the last history event (history is 1..=this).
    pub last_event_seq: u64,
    /// Last workflow (command) sequence handed out.
    pub last_workflow_sequence: u64,
    /// Last control-plane command sequence (signals, cancel, terminate) handed out.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_command_sequence: u64,
    /// Signals held out of history while the workflow task is leased
    /// (`tables::deferred_signal_key` 0..this) until a flush (`workflow::messages`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deferred_signals: u64,
    /// The run's one workflow task, ready or leased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_task: Option<String>,
    /// Activity tasks not yet resolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open_activities: Vec<String>,
    /// Why the run closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_reason: Option<String>,
    /// Parent/child links, the continue-as-new chain and post-close facts.
    #[serde(default, skip_serializing_if = "RunLifecycle::is_empty")]
    pub lifecycle: RunLifecycle,
    /// Open timers, the open condition wait and accepted updates (`workflow::waits`).
    #[serde(default, skip_serializing_if = "RunWaits::is_empty")]
    pub waits: RunWaits,
}

/// A child run's link to the parent run that started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentLink {
    /// The parent's workflow id.
    pub workflow_id: String,
    /// The parent run that started the child (a later run of a continued child keeps it).
    pub run_id: String,
    /// The parent's workflow sequence of the `start_child_workflow` command.
    pub sequence: u64,
}

/// An open child of a run, as the parent remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildLink {
    /// The parent's workflow sequence of the `start_child_workflow` command.
    pub sequence: u64,
    /// The child's workflow id (its current run follows continue-as-new).
    pub workflow_id: String,
    /// The child's first run.
    pub first_run_id: String,
    /// The child's workflow type.
    pub workflow_type: String,
    /// `abandon`, `request_cancel`, `request_cancellation` or `terminate`.
    pub parent_close_policy: String,
    /// The child retry policy as the command sent it (a failed run is retried as the
    /// next run of the child's workflow id while attempts remain).
    #[serde(default)]
    pub retry_policy: Option<Value>,
    /// The child's current attempt (1-based; 0 in records written before retries).
    #[serde(default)]
    pub attempt: u32,
}

/// Facts about a run's place among other runs and what happened after it closed. Every
/// field defaults, so records written before these existed read as a plain top-level run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunLifecycle {
    /// The parent, when this run is (a continuation of) a child workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentLink>,
    /// Children started by this run that have not closed yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open_children: Vec<ChildLink>,
    /// The run this one continued (continue-as-new).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continued_from_run_id: Option<String>,
    /// The run that continued this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continued_to_run_id: Option<String>,
    /// Sequence of the event that closed the run; events recorded later (archive) follow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_event_seq: Option<u64>,
    /// When an operator archived the closed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_at_ms: Option<Millis>,
    /// The schedule that started this run (kept across continue-as-new), so its close can
    /// start a buffered fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
    /// Set on the host run of a standalone activity: the run has no workflow code; its one
    /// activity's outcome closes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standalone_activity: Option<StandaloneActivity>,
}

impl RunLifecycle {
    /// Whether every field holds its default (a top-level run nothing happened to yet).
    pub fn is_empty(&self) -> bool {
        *self == RunLifecycle::default()
    }
}

/// What a standalone activity's host run records of its activity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandaloneActivity {
    pub activity_type: String,
    /// Free-form label (does not affect dispatch).
    #[serde(default)]
    pub activity_class: Option<String>,
    #[serde(default)]
    pub business_key: Option<String>,
    /// The activity execution's id.
    pub activity_execution_id: String,
}

/// The kinds of task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Workflow task (replay and decide).
    Workflow,
    /// Activity task (run user code).
    Activity,
}

impl TaskKind {
    /// The byte used in keys.
    pub fn code(self) -> u8 {
        match self {
            TaskKind::Workflow => 1,
            TaskKind::Activity => 2,
        }
    }
}

/// Where a task is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// In the ready index, waiting for a poller.
    Ready,
    /// Leased to a worker.
    Leased,
    /// Waiting for a backoff timer before it becomes ready.
    Backoff,
}

/// A timer's identity: a durable timer's key in the timer table, or the identity of an
/// in-memory one (see `timers`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TimerKey {
    /// When it fires.
    pub fire_at_ms: Millis,
    /// Unique id.
    pub timer_id: String,
}

/// A lease on a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The worker holding it.
    pub owner: String,
    /// When it lapses unless renewed.
    pub expires_at_ms: Millis,
    /// The expiry timer.
    pub timer: TimerKey,
}

/// Activity-specific task state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActivityState {
    /// Stable id of the execution across attempts.
    pub activity_execution_id: String,
    /// Workflow sequence of the `schedule_activity` command.
    pub sequence: u64,
    /// Argument payload.
    pub arguments: Value,
    /// Retry policy as sent by the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<Value>,
    /// 1 for the first attempt.
    pub attempt_number: u32,
    /// The current attempt's id, set when leased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_id: Option<String>,
    /// Timeouts and other options of the command, kept verbatim.
    #[serde(default)]
    pub options: Value,
    /// Parallel-group fields to copy into its events.
    #[serde(default)]
    pub group: Value,
    /// When it was scheduled.
    pub scheduled_at_ms: Millis,
    /// Last heartbeat details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_details: Option<Value>,
    /// Timeouts of the execution and the timers enforcing them.
    #[serde(default)]
    pub timeouts: ActivityTimeouts,
    /// The last attempt that failed or timed out and was retried (operators see it as
    /// the failure of a run that is backing off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<AttemptFailure>,
    /// The worker session the activity runs in (`schedule_activity.worker_session`):
    /// only the session's holder leases it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_session: Option<SessionOptions>,
}

/// Consecutive failures of a run's workflow task, and the latest one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowTaskFailure {
    /// Failed attempts since the last completion.
    pub failures: u32,
    /// The latest failure's `type` as the worker sent it (e.g. the SDK's error kind).
    pub failure_type: String,
    /// The latest failure's message (at most 1 KiB).
    pub message: String,
    /// When the latest attempt failed.
    pub at_ms: Millis,
}

/// A failed attempt of a task that was retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptFailure {
    /// When the attempt failed.
    pub at_ms: Millis,
    /// The attempt that failed (1-based).
    pub attempt_number: u32,
    /// The failure message as reported (or the timeout that ended the attempt).
    pub message: String,
}

/// Activity timeout kinds, as `ActivityTimedOut.timeout_kind` and timer actions name them.
pub mod timeout_kind {
    /// How long an attempt may wait in the queue.
    pub const SCHEDULE_TO_START: &str = "schedule_to_start";
    /// How long a leased attempt may run (attempt-scoped).
    pub const START_TO_CLOSE: &str = "start_to_close";
    /// How long the whole activity may take, every attempt included.
    pub const SCHEDULE_TO_CLOSE: &str = "schedule_to_close";
    /// How long a leased attempt may go without a heartbeat (attempt-scoped).
    pub const HEARTBEAT: &str = "heartbeat";
}

/// An activity's timeouts (whole seconds, as scheduled) and the timers that enforce
/// them. Attempt-scoped timers name the attempt they were armed for, so a timer of an
/// earlier attempt is ignored; they live as long as the attempt's lease and are kept
/// like its lease timer (see `kernel/tasks.rs`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ActivityTimeouts {
    /// From becoming ready to being leased, per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_to_start_s: Option<u64>,
    /// From lease to report, per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_to_close_s: Option<u64>,
    /// From scheduling to the final report, across every attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_to_close_s: Option<u64>,
    /// Longest gap between heartbeats of an attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_s: Option<u64>,
    /// Enforces `schedule_to_close_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_to_close_timer: Option<TimerKey>,
    /// Enforces `schedule_to_start_s` for the waiting attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_to_start_timer: Option<TimerKey>,
    /// Enforces `start_to_close_s` for the leased attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_to_close_timer: Option<TimerKey>,
    /// Enforces `heartbeat_s` for the leased attempt; re-armed lazily at
    /// `heartbeat_deadline_ms` when heartbeats moved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timer: Option<TimerKey>,
    /// When the leased attempt's heartbeat allowance runs out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_deadline_ms: Option<Millis>,
    /// Last heartbeat of the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_at_ms: Option<Millis>,
}

impl ActivityTimeouts {
    /// Every timer currently armed.
    pub fn timers(&self) -> impl Iterator<Item = &TimerKey> {
        self.activity_timers()
            .chain(self.attempt_timers().map(|(timer, _)| timer))
    }

    /// The armed timers that span attempts (schedule-to-close, schedule-to-start): always
    /// timer rows.
    pub fn activity_timers(&self) -> impl Iterator<Item = &TimerKey> {
        [&self.schedule_to_close_timer, &self.schedule_to_start_timer]
            .into_iter()
            .flatten()
    }

    /// The armed timers of the leased attempt, with their kinds (start-to-close,
    /// heartbeat): lease-scoped, kept like the lease's own timer.
    pub fn attempt_timers(&self) -> impl Iterator<Item = (&TimerKey, &'static str)> {
        [
            (&self.start_to_close_timer, timeout_kind::START_TO_CLOSE),
            (&self.heartbeat_timer, timeout_kind::HEARTBEAT),
        ]
        .into_iter()
        .filter_map(|(timer, kind)| Some((timer.as_ref()?, kind)))
    }
}

/// A task: the unit that is matched to a worker and leased.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Globally unique id.
    pub task_id: String,
    pub kind: TaskKind,
    pub namespace: String,
    /// Queue it is matched on.
    pub task_queue: String,
    /// Owning workflow id.
    pub workflow_id: String,
    /// Owning run.
    pub run_id: String,
    /// Workflow type or activity type (pollers filter on it).
    pub type_name: String,
    /// 0 (first) to 9.
    pub priority: u8,
    /// Lifecycle state.
    pub status: TaskStatus,
    /// Number of leases granted so far; the current lease's fencing token.
    pub attempt: u32,
    /// Its time in the ready index (while `Ready`).
    pub ready_at_ms: Millis,
    /// The current lease (while `Leased`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// Workflow tasks: the last history event delivered with the current lease.
    #[serde(default)]
    pub history_seen: u64,
    /// Workflow tasks: genuine failures so far (drives the retry backoff).
    #[serde(default)]
    pub failures: u32,
    /// The backoff timer (while `Backoff`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_timer: Option<TimerKey>,
    /// Activity state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<ActivityState>,
    /// The build id the task is pinned to (its run's); only that cohort may take it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatibility: Option<String>,
    /// Workflow tasks: the accepted update this task runs (`workflow_update_id`); the
    /// workflow's main body does not advance in such a task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_update_id: Option<String>,
}

impl TaskRecord {
    /// The action of this activity task's `kind` timeout timer (see [`timeout_kind`]),
    /// armed for its current attempt; attempt-scoped kinds name the leased `attempt_id`.
    pub fn activity_timeout_action(&self, kind: &str, attempt_id: Option<&str>) -> TimerAction {
        TimerAction::ActivityTimeout {
            task_id: self.task_id.clone(),
            timeout_kind: kind.to_string(),
            attempt_number: self.activity.as_ref().map_or(1, |a| a.attempt_number),
            attempt_id: attempt_id.map(str::to_string),
        }
    }
}

/// What a durable timer does when it fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum TimerAction {
    /// Return a leased task whose lease lapsed to the ready index.
    LeaseExpiry {
        /// The task.
        task_id: String,
    },
    /// Make a task that waited out a backoff ready.
    TaskBackoff {
        /// The task.
        task_id: String,
    },
    /// Fail a run whose execution or run deadline passed.
    RunDeadline {
        namespace: String,
        /// The run.
        run_id: String,
    },
    /// Enforces one timeout of an activity (see [`ActivityTimeouts`]).
    ActivityTimeout {
        /// The activity task.
        task_id: String,
        /// `schedule_to_start`, `start_to_close`, `schedule_to_close` or `heartbeat`.
        timeout_kind: String,
        /// The attempt the timer was armed for (1-based).
        attempt_number: u32,
        /// The leased attempt it was armed for (attempt-scoped kinds).
        #[serde(default)]
        attempt_id: Option<String>,
    },
    /// Applies a closed parent's close policy to one of its open children.
    ParentClosePolicy {
        namespace: String,
        /// The child's workflow id (the policy reaches its current run).
        child_workflow_id: String,
        /// The parent run that closed.
        parent_run_id: String,
        /// `request_cancel`, `request_cancellation` or `terminate`.
        policy: String,
    },
    /// Fires a workflow's durable timer (`start_timer`): records `TimerFired`.
    WorkflowTimer {
        namespace: String,
        /// The run.
        run_id: String,
        /// Workflow sequence of the `start_timer` command.
        sequence: u64,
    },
    /// Times out the run's open condition wait: records a condition-timeout `TimerFired`.
    ConditionTimeout {
        namespace: String,
        /// The run.
        run_id: String,
    },
    /// A service call's deadline (its operation's `deadline_policy.timeout_seconds`): a
    /// call still open then times out. Stale once the call has closed.
    ServiceCallDeadline {
        /// The target namespace.
        namespace: String,
        endpoint_name: String,
        service_name: String,
        operation_name: String,
        service_call_id: String,
    },
    /// Runs (or, once a lease lapses, runs again) the external work of a service call
    /// that Keel carries out itself (`invocable_http`, `query_workflow`). Stale unless
    /// the open call still names this timer.
    ServiceCallDispatch {
        /// The target namespace.
        namespace: String,
        endpoint_name: String,
        service_name: String,
        operation_name: String,
        service_call_id: String,
    },
    /// Forgets the tombstone of an activity task deleted with its closed run.
    ForgetClosedTask {
        /// The activity task.
        task_id: String,
    },
    /// Fires a schedule's next occurrence (`schedules`); stale unless the schedule still
    /// names this timer.
    ScheduleFire {
        namespace: String,
        /// The schedule.
        schedule_id: String,
    },
    /// A worker session's lease or TTL deadline: the session lapses unless renewed
    /// (stale unless the session still names this timer).
    WorkerSessionDeadline {
        namespace: String,
        /// The session.
        session_id: String,
    },
    /// A run a schedule started has closed: a buffered fire may start now.
    ScheduleRunClosed {
        namespace: String,
        /// The schedule.
        schedule_id: String,
        /// The closed run's workflow id.
        workflow_id: String,
    },
}

/// A registered worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub worker_id: String,
    pub namespace: String,
    /// Queue it polls.
    pub task_queue: String,
    /// Runtime, e.g. `python`.
    #[serde(default)]
    pub runtime: Option<String>,
    /// SDK version string.
    #[serde(default)]
    pub sdk_version: Option<String>,
    /// Build id.
    #[serde(default)]
    pub build_id: Option<String>,
    /// Workflow types it runs (empty: all).
    #[serde(default)]
    pub supported_workflow_types: Vec<String>,
    /// Activity types it runs (empty: all).
    #[serde(default)]
    pub supported_activity_types: Vec<String>,
    /// Capability names it announced.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// First registration.
    pub registered_at_ms: Millis,
    /// Last registration or heartbeat.
    pub last_heartbeat_at_ms: Millis,
}

/// A build-id cohort of a queue and the operator's drain intent for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CohortRecord {
    pub namespace: String,
    /// Queue.
    pub task_queue: String,
    /// Build id (`None`: the unversioned cohort).
    #[serde(default)]
    pub build_id: Option<String>,
    /// Whether the cohort is draining (its workers get no new tasks).
    pub draining: bool,
    /// When the drain started.
    #[serde(default)]
    pub drained_at_ms: Option<Millis>,
    /// When the cohort was last resumed.
    #[serde(default)]
    pub resumed_at_ms: Option<Millis>,
    /// When it was promoted as its queue's target for fresh starts (cleared when another
    /// cohort of the queue is promoted or it is rolled back).
    #[serde(default)]
    pub promoted_at_ms: Option<Millis>,
    /// When it was rolled back (terminal for the deployment lifecycle).
    #[serde(default)]
    pub rolled_back_at_ms: Option<Millis>,
    /// Last change.
    pub updated_at_ms: Millis,
}

/// What a run is waiting on besides activities and children: durable timers, the open
/// condition wait and accepted updates. Every field defaults, so older records read as
/// a run waiting on nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunWaits {
    /// Open `start_timer` timers by workflow sequence.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub timers: std::collections::BTreeMap<u64, OpenTimer>,
    /// The open condition wait (the latest physical `ConditionWaitOpened`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<OpenCondition>,
    /// Accepted updates not yet completed, oldest first. A new workflow task runs the
    /// first of them (`TaskRecord::workflow_update_id`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_updates: Vec<String>,
    /// Open `open_signal_wait` waits, oldest first. Invariant: a wait is open only while
    /// no signal of its name is buffered (received and applied counts are equal).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signal_waits: Vec<OpenSignalWait>,
    /// Per signal name: signals recorded and signals applied to a signal wait. Waits take
    /// signals first in, first out, so the applied ones are always the oldest received.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub signal_tallies: std::collections::BTreeMap<String, SignalTally>,
    /// Set when a completion's own `open_signal_wait` took a buffered signal: the run
    /// needs another workflow task to see it. Never stored.
    #[serde(skip)]
    pub signal_applied_in_completion: bool,
}

impl RunWaits {
    /// Whether nothing stored is open: no timer, condition, update, signal wait or tally.
    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
            && self.condition.is_none()
            && self.pending_updates.is_empty()
            && self.signal_waits.is_empty()
            && self.signal_tallies.is_empty()
    }
}

/// An open signal wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenSignalWait {
    /// Id recorded in `SignalWaitOpened` and `SignalApplied`.
    pub signal_wait_id: String,
    /// Its workflow sequence.
    pub sequence: u64,
    /// The signal it waits for.
    pub signal_name: String,
}

/// Signals of one name recorded in a run's history, and how many of them signal waits took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalTally {
    /// `SignalReceived` events of the name.
    pub received: u64,
    /// Of those, the ones recorded as `SignalApplied` to a wait.
    pub applied: u64,
}

/// An open workflow timer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenTimer {
    /// The timer id recorded in `TimerScheduled`.
    pub timer_id: String,
    /// Requested delay.
    pub delay_seconds: u64,
    /// The durable timer that fires it.
    pub timer: TimerKey,
    /// Parallel-group fields of the command, copied into `TimerFired`.
    #[serde(default)]
    pub group: Value,
}

/// The open condition wait of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenCondition {
    /// Id of the latest physical wait (`ConditionWaitOpened.condition_wait_id`).
    pub condition_wait_id: String,
    /// Its workflow sequence.
    pub sequence: u64,
    /// `condition_key` as sent.
    #[serde(default)]
    pub condition_key: Option<String>,
    /// `condition_definition_fingerprint` as sent.
    #[serde(default)]
    pub condition_definition_fingerprint: Option<String>,
    /// `condition_wait_occurrence_id` as sent (the Rust SDK's authored occurrence); every
    /// event of this wait repeats it, or the SDK's replay refuses the history.
    #[serde(default)]
    pub condition_wait_occurrence_id: Option<String>,
    /// `timeout_seconds` of the latest open, repeated on `ConditionWaitTimedOut`.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// The workflow task whose completion opened it.
    pub opened_by_task: String,
    /// The timeout timer; a reopened logical wait keeps the first open's deadline.
    #[serde(default)]
    pub timer: Option<TimerKey>,
}

/// Where an update is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateStatus {
    /// Recorded as `UpdateAccepted`; waiting for a worker to run it.
    Accepted,
    /// The handler returned (`UpdateApplied` + `UpdateCompleted`).
    Completed,
    /// The handler failed, or the run closed first.
    Failed,
}

impl UpdateStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateStatus::Accepted => "accepted",
            UpdateStatus::Completed => "completed",
            UpdateStatus::Failed => "failed",
        }
    }
}

/// A workflow update.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateRecord {
    pub update_id: String,
    pub namespace: String,
    pub workflow_id: String,
    /// The run it was accepted on.
    pub run_id: String,
    pub update_name: String,
    /// The control-plane command that submitted it.
    pub command_id: String,
    /// Caller request id, if any.
    #[serde(default)]
    pub request_id: Option<String>,
    /// Argument envelope.
    #[serde(default)]
    pub arguments: Value,
    pub status: UpdateStatus,
    /// Result envelope (completed).
    #[serde(default)]
    pub result: Option<Value>,
    /// Failure message (failed).
    #[serde(default)]
    pub failure_message: Option<String>,
    /// Failure exception type (failed).
    #[serde(default)]
    pub failure_type: Option<String>,
    /// History sequence of `UpdateAccepted`.
    pub accepted_event_seq: u64,
    /// When it was accepted.
    pub accepted_at_ms: Millis,
    /// When it completed or failed.
    #[serde(default)]
    pub closed_at_ms: Option<Millis>,
}

/// A control-plane command remembered by its caller `request_id`, so a resent request
/// gets the original answer instead of being applied twice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandReceipt {
    /// `signal` or `update`.
    pub command_type: String,
    /// The command's id.
    pub command_id: String,
    /// Signal or update name.
    pub name: String,
    /// The run it was applied to.
    pub run_id: String,
    /// The run the caller targeted (`None`: the current run).
    #[serde(default)]
    pub requested_run_id: Option<String>,
    /// Digest of the arguments, to tell a resend from a different command.
    pub arguments_digest: String,
    /// The original answer.
    pub receipt: Value,
}

/// Signal, query and update names a workflow type declared at worker registration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CommandContract {
    /// Declared signal names.
    #[serde(default)]
    pub signals: Vec<String>,
    /// Declared query names.
    #[serde(default)]
    pub queries: Vec<String>,
    /// Declared update names.
    #[serde(default)]
    pub updates: Vec<String>,
    /// When it was last declared.
    #[serde(default)]
    pub declared_at_ms: Millis,
}

/// The tombstone of an activity task deleted because its run closed, so the attempt's
/// next heartbeat learns why instead of getting `task_not_found`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClosedTaskRecord {
    /// The task.
    pub task_id: String,
    pub namespace: String,
    /// The run.
    pub run_id: String,
    /// The lease owner at close.
    pub lease_owner: String,
    /// The attempt at close.
    #[serde(default)]
    pub attempt_id: Option<String>,
    /// The run's terminal status.
    pub run_status: RunStatus,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Stored records leave out a field holding its default (fewer bytes written per
/// transition); these are the defaults they read back as.
fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

fn is_empty_object(value: &Value) -> bool {
    value.as_object().is_some_and(serde_json::Map::is_empty)
}

/// Largest memo, serialized as JSON (the limit `cluster/info` advertises as
/// `max_memo_bytes`): enforced on every start, continue-as-new, child start, schedule and
/// memo upsert.
pub const MAX_MEMO_BYTES: usize = 262_144;

/// Fails with 422 `memo_too_large` when `memo` serializes to more than [`MAX_MEMO_BYTES`].
pub fn check_memo_size(memo: &Value) -> crate::error::Result<()> {
    let size = serde_json::to_vec(memo).map_or(usize::MAX, |b| b.len());
    if size > MAX_MEMO_BYTES {
        return Err(crate::error::Error::reject(
            crate::error::RejectKind::Invalid,
            "memo_too_large",
            format!("The memo is {size} bytes; at most {MAX_MEMO_BYTES} are allowed."),
        )
        .with("max_memo_bytes", MAX_MEMO_BYTES as u64)
        .with("memo_bytes", size as u64));
    }
    Ok(())
}

/// Longest wait before a failed workflow task is offered again: the backoff doubles with
/// the task's failure count (1, 2, 4, ... s) up to this.
pub const WORKFLOW_TASK_FAILURE_BACKOFF_MAX_SECONDS: u64 = 60;

/// Activities a run may have scheduled and not yet closed (`max_pending_activities`).
pub const MAX_PENDING_ACTIVITIES: usize = 2_000;
/// Child workflows a run may have started and not yet seen close (`max_pending_children`).
pub const MAX_PENDING_CHILDREN: usize = 2_000;

/// Longest failure message kept or reported, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Cuts `message` to at most [`MAX_MESSAGE_BYTES`] at a UTF-8 boundary.
pub fn truncate_message(message: &str) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message.to_string();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::{truncate_message, RunRecord, MAX_MESSAGE_BYTES};

    /// A run record as Keel wrote it before empty fields were left out (taken from a
    /// store): it still reads, and rewriting it leaves out every null and empty list.
    pub(crate) const RUN_WITH_NULLS: &str = r#"{"namespace":"default","workflow_id":"w","run_id":"r","run_number":1,"workflow_type":"t","task_queue":"q","status":"completed","priority":5,"build_id":null,"memo":{},"memo_blob":null,"search_attributes":{},"started_at_ms":1,"closed_at_ms":2,"last_progress_at_ms":2,"execution_timeout_seconds":3600,"run_timeout_seconds":600,"execution_deadline_ms":3,"run_deadline_ms":4,"deadline_timer":null,"last_event_seq":4,"last_workflow_sequence":1,"last_command_sequence":0,"workflow_task":null,"open_activities":[],"closed_reason":"completed","lifecycle":{"parent":null,"open_children":[],"continued_from_run_id":null,"continued_to_run_id":null,"close_event_seq":4,"archived_at_ms":null,"schedule_id":null,"standalone_activity":null},"waits":{"timers":{},"condition":null,"pending_updates":[]}}"#;

    #[test]
    fn run_records_leave_out_empty_fields_and_read_the_older_layout() {
        let old: RunRecord = serde_json::from_str(RUN_WITH_NULLS).expect("older layout reads");
        let compact = serde_json::to_string(&old).expect("encodes");
        assert!(
            !compact.contains("null") && !compact.contains("[]"),
            "{compact}"
        );
        for default_field in [
            "memo",
            "search_attributes",
            "last_command_sequence",
            "waits",
        ] {
            assert!(
                !compact.contains(default_field),
                "{default_field}: {compact}"
            );
        }
        assert!(compact.len() * 3 < RUN_WITH_NULLS.len() * 2, "{compact}");
        let again: RunRecord = serde_json::from_str(&compact).expect("compact layout reads");
        assert_eq!(
            serde_json::to_value(&again).expect("encodes"),
            serde_json::to_value(&old).expect("encodes")
        );
        assert_eq!(again.closed_at_ms, Some(2));
        assert_eq!(again.lifecycle.close_event_seq, Some(4));
        assert!(again.workflow_task.is_none() && again.open_activities.is_empty());
        assert_eq!(
            again.memo,
            serde_json::json!({}),
            "a left-out memo reads as {{}}"
        );
        assert_eq!(again.search_attributes, serde_json::json!({}));
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = truncate_message(&long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(truncate_message("short"), "short");
    }
}

/// The options of a worker session, as `schedule_activity.worker_session` and
/// `POST /worker/sessions` carry them (defaults as the SDKs apply them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOptions {
    pub session_id: String,
    /// Routing hint of the Rust SDK; kept and echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// The queue the session is for, when the creator named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Capabilities the holder must have registered.
    #[serde(default)]
    pub requirements: Vec<String>,
    /// How long the holder's lease lasts unless renewed (seconds).
    pub lease_seconds: u64,
    /// Absolute lifetime of the session id from its creation (seconds).
    pub ttl_seconds: u64,
    /// Session activities leased at once at most.
    pub max_concurrent_activities: u32,
    /// Whether the first admitted activity (or a create) may create the session.
    pub create_if_missing: bool,
    /// Whether another worker may take a session whose holder's lease lapsed.
    pub allow_reacquire_after_failure: bool,
}

/// A worker session's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    /// Held by `lease_owner` until its lease lapses.
    Active,
    /// The holder's lease lapsed; another worker may reacquire it.
    Expired,
    /// Terminal: closed by its holder, its TTL passed, or its lease lapsed without
    /// reacquisition allowed. Its open activities failed.
    Closed,
}

impl SessionStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Active => "active",
            SessionStatus::Expired => "expired",
            SessionStatus::Closed => "closed",
        }
    }
}

/// A durable worker session: `(namespace, session_id)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSessionRecord {
    pub namespace: String,
    /// Options as first created (later creates and activities reuse them).
    pub options: SessionOptions,
    pub status: SessionStatus,
    /// The holder (while active); the last holder otherwise.
    #[serde(default)]
    pub lease_owner: Option<String>,
    /// When the holder's lease lapses unless renewed.
    pub lease_expires_at_ms: crate::clock::Millis,
    /// When the session id ends for good.
    pub ttl_expires_at_ms: crate::clock::Millis,
    /// The deadline timer (at the earlier of the lease and TTL deadlines, re-armed when
    /// it fires early because the lease was renewed).
    #[serde(default)]
    pub timer: Option<TimerKey>,
    /// `lease_expired` or `ttl_expired` once the session lapsed or ended by time.
    #[serde(default)]
    pub failure_reason: Option<String>,
    /// Why its holder closed it.
    #[serde(default)]
    pub close_reason: Option<String>,
    #[serde(default)]
    pub closed_at_ms: Option<crate::clock::Millis>,
    #[serde(default)]
    pub last_heartbeat_at_ms: Option<crate::clock::Millis>,
    pub created_at_ms: crate::clock::Millis,
    pub updated_at_ms: crate::clock::Millis,
}

impl WorkerSessionRecord {
    /// The status as observed at `now`: an active session whose lease lapsed reads as
    /// `expired` before its timer has fired.
    pub fn status_at(&self, now: crate::clock::Millis) -> SessionStatus {
        match self.status {
            SessionStatus::Active if self.lease_expires_at_ms <= now => SessionStatus::Expired,
            s => s,
        }
    }

    /// The options on the wire (`worker_session` of a command or an activity task).
    pub fn options_json(&self) -> Value {
        serde_json::to_value(&self.options).unwrap_or(Value::Null)
    }

    /// The session as an activity task carries it (`workerSessionTaskAffinity`): its
    /// options with its status, holder and deadlines.
    pub fn affinity(&self, now: crate::clock::Millis) -> Value {
        let mut v = self.options_json();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("namespace".into(), self.namespace.clone().into());
            obj.insert("status".into(), self.status_at(now).as_str().into());
            obj.insert(
                "lease_owner".into(),
                self.lease_owner.clone().map_or(Value::Null, Value::String),
            );
            obj.insert(
                "lease_expires_at".into(),
                crate::clock::format_timestamp(self.lease_expires_at_ms).into(),
            );
            obj.insert(
                "ttl_expires_at".into(),
                crate::clock::format_timestamp(self.ttl_expires_at_ms).into(),
            );
        }
        v
    }
}

/// Longest `lease_seconds` or `ttl_seconds` of a worker session (ten years).
pub const MAX_SESSION_SECONDS: u64 = 10 * 365 * 86_400;
/// Most activities a worker session may run at once.
pub const MAX_SESSION_CONCURRENCY: u32 = 10_000;

impl SessionOptions {
    /// Reads session options from their wire form (SDK defaults for absent fields).
    /// Errors are `(field, message)`, the field relative to the options object.
    pub fn from_wire(v: &Value) -> std::result::Result<SessionOptions, (String, String)> {
        let err = |f: &str, m: &str| Err((f.to_string(), m.to_string()));
        let Some(obj) = v.as_object() else {
            return err("", "must be an object");
        };
        let text = |f: &str| -> std::result::Result<Option<String>, (String, String)> {
            match obj.get(f) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 255 => {
                    Ok(Some(s.trim().to_string()))
                }
                Some(_) => Err((
                    f.to_string(),
                    format!("The {f} field must be a non-empty string of at most 255 characters."),
                )),
            }
        };
        let Some(session_id) = text("session_id")? else {
            return err("session_id", "The session_id field is required.");
        };
        let int = |f: &str, default: u64, max: u64| -> std::result::Result<u64, (String, String)> {
            match obj.get(f) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Number(n)) => match whole_number(n) {
                    Some(i) if (1..=max).contains(&i) => Ok(i),
                    _ => Err((
                        f.to_string(),
                        format!("The {f} field must be an integer between 1 and {max}."),
                    )),
                },
                Some(_) => Err((f.to_string(), format!("The {f} field must be an integer."))),
            }
        };
        let flag = |f: &str| -> std::result::Result<bool, (String, String)> {
            match obj.get(f) {
                None | Some(Value::Null) => Ok(true),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err((f.to_string(), format!("The {f} field must be a boolean."))),
            }
        };
        let mut requirements: Vec<String> = Vec::new();
        match obj.get("requirements") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for item in items {
                    match item.as_str().map(str::trim) {
                        Some(s) if !s.is_empty() && s.len() <= 255 => {
                            if !requirements.iter().any(|r| r == s) {
                                requirements.push(s.to_string());
                            }
                        }
                        _ => {
                            return err(
                                "requirements",
                                "The requirements field must be a list of non-empty strings.",
                            )
                        }
                    }
                }
            }
            Some(_) => {
                return err(
                    "requirements",
                    "The requirements field must be a list of non-empty strings.",
                )
            }
        }
        Ok(SessionOptions {
            session_id,
            connection: text("connection")?,
            queue: text("queue")?,
            requirements,
            lease_seconds: int("lease_seconds", 120, MAX_SESSION_SECONDS)?,
            ttl_seconds: int("ttl_seconds", 1800, MAX_SESSION_SECONDS)?,
            max_concurrent_activities: int(
                "max_concurrent_activities",
                1,
                MAX_SESSION_CONCURRENCY as u64,
            )? as u32,
            create_if_missing: flag("create_if_missing")?,
            allow_reacquire_after_failure: flag("allow_reacquire_after_failure")?,
        })
    }
}

/// A JSON number that is a whole non-negative integer (`120` or `120.0`: JSON does not
/// tell them apart, and generic clients send either).
pub fn whole_number(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f as u64)
    })
}
