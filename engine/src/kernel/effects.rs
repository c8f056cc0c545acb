//! What a transaction leaves for after its commit ([`Effects`]) and the reactions it asks
//! of other subsystems before its commit ([`Event`]).

use crate::clock::Millis;
use crate::matching::{QueueKey, Reservation, TaskHint};
use crate::model::{TaskRecord, TimerAction, TimerKey};
use crate::tables::QueueCounter;

/// A worker session's holder as matching should know it after commit:
/// `(namespace, session_id, Some((holder, binding until)) or None, queues to re-match)`.
pub(crate) type SessionHolder = (String, String, Option<(String, Millis)>, Vec<QueueKey>);

/// What a committed transaction asks of the in-memory side. Applied only once the
/// transaction is durable (or may be: every effect is re-checked against storage, so a
/// spurious one costs a lookup, while a missing one would strand a task or a lease).
pub(crate) struct Effects {
    /// Whether the store is multi-node: per-queue counts are durable counter rows and
    /// lease-scoped timers durable timer rows, rather than kept in memory (see
    /// `queue_counts` and `tasks`).
    pub multi_node: bool,
    /// Changes to the in-memory per-queue counts (single-node stores only).
    pub counts: Vec<(QueueKey, QueueCounter, i64)>,
    pub ready: Vec<(QueueKey, TaskHint)>,
    /// Tasks whose ready-index entry this transaction created (it did not exist before:
    /// a task enters `Ready` only from another state or at its creation).
    pub indexed_here: Vec<Box<str>>,
    /// Tasks leased to a reserved parked poller before commit, delivered after it (an
    /// undelivered reservation returns its poller to the queue when dropped).
    pub eager: Vec<(Reservation, Box<TaskRecord>)>,
    /// Durable timers written.
    pub timers: Vec<TimerKey>,
    /// In-memory lease-scoped timers armed, with their action (single-node stores only).
    pub lease_timers: Vec<(TimerKey, TimerAction)>,
    /// In-memory lease-scoped timers whose lease or attempt ended (single-node stores only).
    pub lease_timers_ended: Vec<TimerKey>,
    /// Updates whose status changed: their waiting callers re-read them.
    pub updates: Vec<String>,
    /// Worker sessions whose holder changed: `(namespace, session_id, holder and until
    /// when it binds)`, and the queues of their open tasks (re-matched when a session
    /// is released).
    pub session_holders: Vec<SessionHolder>,
    /// Worker sessions one of whose activities left its lease: `(namespace, session_id)`.
    pub session_slots: Vec<(String, String)>,
    /// Raised by in-transaction code, dispatched by the runner before commit.
    events: Vec<Event>,
}

impl Effects {
    /// No effects yet, for a transaction on a `multi_node` store or a single-node one.
    pub fn new(multi_node: bool) -> Self {
        Effects {
            multi_node,
            counts: Vec::new(),
            ready: Vec::new(),
            indexed_here: Vec::new(),
            eager: Vec::new(),
            timers: Vec::new(),
            lease_timers: Vec::new(),
            lease_timers_ended: Vec::new(),
            updates: Vec::new(),
            session_holders: Vec::new(),
            session_slots: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Offers `task` to pollers once committed.
    pub fn ready(&mut self, task: &TaskRecord) {
        self.ready.push((
            QueueKey::new(&task.namespace, &task.task_queue, task.kind),
            TaskHint {
                task_id: task.task_id.as_str().into(),
                type_name: task.type_name.as_str().into(),
                priority: task.priority,
                ready_at_ms: task.ready_at_ms,
                compatibility: task.compatibility.as_deref().map(Into::into),
                session: super::tasks::task_session(task).map(Into::into),
            },
        ));
    }

    /// Notes that a leased activity of a worker session left its lease (the session
    /// may take another once committed).
    pub fn session_slot_freed(&mut self, task: &TaskRecord) {
        if let Some(session) = super::tasks::task_session(task) {
            self.session_slots
                .push((task.namespace.clone(), session.to_string()));
        }
    }

    /// Raises `event` for the subsystems that react to it, in this same transaction. The
    /// raiser does not know who listens (`wiring/hooks.rs` does).
    pub fn raise(&mut self, event: Event) {
        self.events.push(event);
    }

    pub(super) fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

/// Something that happened inside a transaction that other subsystems react to.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// A run reached a terminal status (`reason` is its close reason: "completed",
    /// "continued", "timed_out", ...).
    RunClosed {
        namespace: String,
        workflow_id: String,
        run_id: String,
        reason: String,
        /// The schedule that started the run, if one did.
        schedule_id: Option<String>,
        closed_at_ms: Millis,
    },
    /// An accepted update finished (completed or failed, or failed with its closing run).
    UpdateClosed {
        namespace: String,
        run_id: String,
        update_id: String,
    },
    /// A workflow task's `start_service_operation` command was accepted at `sequence` of
    /// the caller run; the service-call subsystem admits the call and records the
    /// caller's `ServiceCall*` events.
    ServiceCallRequested {
        namespace: String,
        workflow_id: String,
        run_id: String,
        sequence: u64,
        /// The command as the worker sent it.
        command: serde_json::Value,
    },
    /// A worker session ended for good (closed, TTL passed, or its lease lapsed without
    /// reacquisition allowed): its open activities fail with `reason`.
    WorkerSessionEnded {
        namespace: String,
        session_id: String,
        /// `session_closed`, `ttl_expired` or `lease_expired`.
        reason: String,
    },
}
