//! The in-memory registry of query tasks and update waiters (see `queries` for the flow):
//! ephemeral, never stored; a restart drops it and callers retry.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::{oneshot, Notify};

use crate::sync::Arc;

/// A query task as handed to a worker.
#[derive(Debug, Clone, Serialize)]
pub struct QueryTaskView {
    /// Task id.
    pub query_task_id: String,
    /// Fencing token (1 for the first lease).
    pub query_task_attempt: u32,
    /// The polling worker.
    pub lease_owner: String,
    /// When the lease (and the caller's wait) ends.
    pub lease_expires_at: String,
    pub namespace: String,
    /// Queue.
    pub task_queue: String,
    pub workflow_id: String,
    pub run_id: String,
    pub workflow_type: String,
    pub query_name: String,
    /// Always `avro`.
    pub payload_codec: &'static str,
    /// The run's full history (a query replays from the start).
    pub history_events: Box<RawValue>,
    /// The run's start input.
    pub workflow_arguments: Value,
    /// The query's arguments.
    pub query_arguments: Value,
}

/// How a query task ended, as its caller sees it.
pub(crate) enum Resolution {
    Completed { result: Value, envelope: Value },
    Failed { reason: String, message: String },
}

pub(crate) struct QueryTask {
    pub(crate) view: QueryTaskView,
    /// `(owner, attempt)` of the current lease.
    pub(crate) leased: Option<(String, u32)>,
    /// Set until the task is answered.
    pub(crate) reply: Option<oneshot::Sender<Resolution>>,
}

#[derive(Default)]
pub(crate) struct QueueState {
    /// Task ids in arrival order, leased ones included.
    pub(crate) order: VecDeque<String>,
    pub(crate) notify: Arc<Notify>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) tasks: HashMap<String, QueryTask>,
    pub(crate) queues: HashMap<(String, String), QueueState>,
}

/// In-memory query tasks and update waiters.
#[derive(Default)]
pub struct Queries {
    pub(crate) state: Mutex<State>,
    pub(crate) update_waiters: Mutex<HashMap<String, Arc<Notify>>>,
}

/// A caller's registration for wake-ups of one update; unregisters on drop.
pub struct UpdateWaiter<'a> {
    pub(crate) queries: &'a Queries,
    pub(crate) update_id: String,
    pub(crate) notify: Arc<Notify>,
}

impl UpdateWaiter<'_> {
    /// The notification to wait on.
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for UpdateWaiter<'_> {
    fn drop(&mut self) {
        let mut waiters = self
            .queries
            .update_waiters
            .lock()
            .expect("invariant: update waiters not poisoned");
        // The map holds one reference and this waiter another: the last waiter leaves.
        if waiters
            .get(&self.update_id)
            .is_some_and(|n| Arc::strong_count(n) <= 2)
        {
            waiters.remove(&self.update_id);
        }
    }
}

impl Queries {
    /// Wakes callers waiting on `update_id`.
    pub fn wake_update(&self, update_id: &str) {
        if let Some(n) = self
            .update_waiters
            .lock()
            .expect("invariant: update waiters not poisoned")
            .get(update_id)
        {
            n.notify_waiters();
        }
    }

    /// Registers for wake-ups of `update_id`.
    pub fn update_waiter(&self, update_id: &str) -> UpdateWaiter<'_> {
        let notify = self
            .update_waiters
            .lock()
            .expect("invariant: update waiters not poisoned")
            .entry(update_id.to_string())
            .or_default()
            .clone();
        UpdateWaiter {
            queries: self,
            update_id: update_id.to_string(),
            notify,
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("invariant: query state not poisoned")
    }

    pub(crate) fn queue_notify(&self, ns: &str, queue: &str) -> Arc<Notify> {
        self.lock()
            .queues
            .entry((ns.to_string(), queue.to_string()))
            .or_default()
            .notify
            .clone()
    }

    pub(crate) fn remove(&self, task_id: &str) -> Option<QueryTask> {
        let mut state = self.lock();
        let task = state.tasks.remove(task_id)?;
        let key = (task.view.namespace.clone(), task.view.task_queue.clone());
        if let Some(q) = state.queues.get_mut(&key) {
            q.order.retain(|t| t != task_id);
        }
        Some(task)
    }

    /// Leases the oldest unleased task of the queue whose workflow type `accepts`.
    pub(crate) fn take(
        &self,
        ns: &str,
        queue: &str,
        owner: &str,
        accepts: &dyn Fn(&str) -> bool,
    ) -> Option<QueryTaskView> {
        let mut state = self.lock();
        let State { tasks, queues } = &mut *state;
        let q = queues.get(&(ns.to_string(), queue.to_string()))?;
        for id in &q.order {
            let Some(task) = tasks.get_mut(id) else {
                continue;
            };
            if task.leased.is_some() || !accepts(&task.view.workflow_type) {
                continue;
            }
            task.view.query_task_attempt += 1;
            task.view.lease_owner = owner.to_string();
            task.leased = Some((owner.to_string(), task.view.query_task_attempt));
            return Some(task.view.clone());
        }
        None
    }

    /// Number of query tasks waiting on a queue (leased ones included).
    pub fn pending(&self, ns: &str, queue: &str) -> usize {
        self.lock()
            .queues
            .get(&(ns.to_string(), queue.to_string()))
            .map_or(0, |q| q.order.len())
    }
}

/// Removes a caller's task when the caller stops waiting, whatever the reason.
pub(crate) struct TaskGuard<'a> {
    pub(crate) queries: &'a Queries,
    pub(crate) task_id: String,
}

impl Drop for TaskGuard<'_> {
    fn drop(&mut self) {
        self.queries.remove(&self.task_id);
    }
}
