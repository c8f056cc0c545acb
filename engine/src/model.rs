//! The records stored in the domain tables. Stored as JSON so that operators and later
//! versions can read them; every field added later must have a serde default.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Millis;

/// A namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

/// A workflow id and its chain of runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The workflow id.
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
    /// Cancelled.
    Cancelled,
    /// Terminated.
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
    /// Namespace.
    pub namespace: String,
    /// Workflow id.
    pub workflow_id: String,
    /// Run id (globally unique).
    pub run_id: String,
    /// 1 for the first run.
    pub run_number: u32,
    /// Workflow type.
    pub workflow_type: String,
    /// Task queue of its workflow tasks.
    pub task_queue: String,
    /// Status.
    pub status: RunStatus,
    /// Priority of its tasks, 0 (first) to 9.
    pub priority: u8,
    /// Build id the run is pinned to, if any.
    #[serde(default)]
    pub build_id: Option<String>,
    /// Memo, a JSON object.
    #[serde(default)]
    pub memo: Value,
    /// Search attributes, a JSON object.
    #[serde(default)]
    pub search_attributes: Value,
    /// Start time.
    pub started_at_ms: Millis,
    /// Close time.
    #[serde(default)]
    pub closed_at_ms: Option<Millis>,
    /// Last time history grew.
    pub last_progress_at_ms: Millis,
    /// Execution timeout in seconds.
    #[serde(default)]
    pub execution_timeout_seconds: Option<u64>,
    /// Run timeout in seconds.
    #[serde(default)]
    pub run_timeout_seconds: Option<u64>,
    /// When the execution times out.
    #[serde(default)]
    pub execution_deadline_ms: Option<Millis>,
    /// When this run times out.
    #[serde(default)]
    pub run_deadline_ms: Option<Millis>,
    /// The timer enforcing the earlier deadline.
    #[serde(default)]
    pub deadline_timer: Option<TimerKey>,
    /// Sequence of the last history event (history is 1..=this).
    pub last_event_seq: u64,
    /// Last workflow (command) sequence handed out.
    pub last_workflow_sequence: u64,
    /// The run's one workflow task, ready or leased.
    #[serde(default)]
    pub workflow_task: Option<String>,
    /// Activity tasks not yet resolved.
    #[serde(default)]
    pub open_activities: Vec<String>,
    /// Why the run closed.
    #[serde(default)]
    pub closed_reason: Option<String>,
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

/// A durable timer's identity; its key in the timer table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TimerKey {
    /// When it fires.
    pub fire_at_ms: Millis,
    /// Unique id.
    pub timer_id: String,
}

/// A lease on a task.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    #[serde(default)]
    pub retry_policy: Option<Value>,
    /// 1 for the first attempt.
    pub attempt_number: u32,
    /// The current attempt's id, set when leased.
    #[serde(default)]
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
    #[serde(default)]
    pub heartbeat_details: Option<Value>,
}

/// A task: the unit that is matched to a worker and leased.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Globally unique id.
    pub task_id: String,
    /// Kind.
    pub kind: TaskKind,
    /// Namespace.
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
    #[serde(default)]
    pub lease: Option<Lease>,
    /// Workflow tasks: the last history event delivered with the current lease.
    #[serde(default)]
    pub history_seen: u64,
    /// Workflow tasks: genuine failures so far (drives the retry backoff).
    #[serde(default)]
    pub failures: u32,
    /// The backoff timer (while `Backoff`).
    #[serde(default)]
    pub backoff_timer: Option<TimerKey>,
    /// Activity state.
    #[serde(default)]
    pub activity: Option<ActivityState>,
}

/// What a durable timer does when it fires.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
        /// Namespace.
        namespace: String,
        /// The run.
        run_id: String,
    },
}

/// A registered worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Worker id.
    pub worker_id: String,
    /// Namespace.
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
