//! Per-queue task counts: how many tasks of each `(namespace, queue, kind)` are ready and
//! how many are leased. Every reader goes through here (the lease admission of
//! `--max-leases-per-queue`, describe task queue and the backlog, `/metrics`).
//!
//! Invariant: on a **multi-node** store (`Capabilities::multi_node`: FoundationDB, the
//! simulated store) the counts are durable counters — `queue_counter` rows, an atomic add
//! in the same transaction that changes a task's status — because every node reads them
//! and other nodes watch the Ready counter to learn of tasks made ready elsewhere (the
//! cluster's queue watch reads that key directly). On a **single-node** store (RocksDB,
//! memory) no counter row is written: the counts live in memory here, a transaction's
//! changes are applied only once it committed (with its other [`Effects`]; an attempt
//! that conflicted, or whose commit result is unknown, counts nothing — on RocksDB such
//! a write is in no memtable, and a restart rebuilds), and they are rebuilt when the
//! engine opens by counting the task rows (closed tasks are deleted, so every task row
//! is an open task), so a restart reports the same numbers. Counter rows an older
//! single-node store still holds are ignored: never read, never cleared (they cost a
//! little space and nothing else).
//!
//! A single-node store is one engine's alone: two engines on one single-node store
//! would each count only their own transitions.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::keys::KeyReader;
use crate::matching::QueueKey;
use crate::model::{TaskKind, TaskRecord, TaskStatus, TimerAction, TimerKey};
use crate::storage::{KeyRange, KvStore, KvTxn, ReadOptions};
use crate::tables::{self, QueueCounter};

use super::{Effects, Engine};

/// `(namespace, queue, kind code)`: ordered as the counter rows are.
type CountKey = (String, String, u8);

/// Task counts of one queue and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueCounts {
    pub queue: String,
    /// Task kind.
    pub kind: TaskKind,
    /// Tasks ready.
    pub ready: u64,
    /// Tasks leased.
    pub leased: u64,
}

/// The counts, durable or in memory (see the module docs).
pub(crate) struct QueueTally {
    durable: bool,
    /// `[ready, leased]` per queue and kind (single-node stores only).
    memory: Mutex<BTreeMap<CountKey, [i64; 2]>>,
}

fn kind_of(code: u8) -> TaskKind {
    if code == TaskKind::Workflow.code() {
        TaskKind::Workflow
    } else {
        TaskKind::Activity
    }
}

impl QueueTally {
    /// Durable counters when `multi_node`, in-memory counts otherwise.
    pub(crate) fn new(multi_node: bool) -> Self {
        QueueTally {
            durable: multi_node,
            memory: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether the counts are durable counter rows.
    pub(crate) fn durable(&self) -> bool {
        self.durable
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<CountKey, [i64; 2]>> {
        self.memory
            .lock()
            .expect("invariant: queue counts lock not poisoned")
    }

    /// Applies a committed transaction's count changes (in-memory counts only).
    pub(super) fn apply(&self, changes: &[(QueueKey, QueueCounter, i64)]) {
        if changes.is_empty() {
            return;
        }
        let mut memory = self.lock();
        for (queue, counter, delta) in changes {
            let entry = memory
                .entry((
                    queue.namespace.to_string(),
                    queue.queue.to_string(),
                    queue.kind.code(),
                ))
                .or_default();
            entry[*counter as usize] += delta;
        }
    }

    /// Tasks leased from a queue, as the lease admission sees them: a snapshot read of
    /// the durable counter inside `txn` (no conflict), or the in-memory count.
    pub(crate) async fn leased(
        &self,
        txn: &mut dyn KvTxn,
        ns: &str,
        queue: &str,
        kind: TaskKind,
    ) -> Result<i64> {
        if self.durable {
            let key = tables::queue_counter_key(ns, queue, kind, QueueCounter::Leased);
            return Ok(crate::storage::decode_counter(
                txn.get_snapshot(&key).await?.as_deref(),
            ));
        }
        Ok(self
            .lock()
            .get(&(ns.to_string(), queue.to_string(), kind.code()))
            .map_or(0, |c| c[QueueCounter::Leased as usize]))
    }

    /// Replaces the in-memory counts by `counts`.
    fn replace(&self, counts: BTreeMap<CountKey, [i64; 2]>) {
        *self.lock() = counts;
    }

    /// The in-memory counts of a namespace, in counter-row order.
    fn of_namespace(&self, ns: &str) -> Vec<QueueCounts> {
        let memory = self.lock();
        let from = (ns.to_string(), String::new(), 0u8);
        memory
            .range(from..)
            .take_while(|((n, _, _), _)| n == ns)
            .map(|((_, queue, kind), c)| QueueCounts {
                queue: queue.clone(),
                kind: kind_of(*kind),
                ready: c[QueueCounter::Ready as usize].max(0) as u64,
                leased: c[QueueCounter::Leased as usize].max(0) as u64,
            })
            .collect()
    }
}

/// Adjusts a per-queue count by `delta` for `task`: an atomic add to its counter row
/// (never a conflict between transitions) on a multi-node store, a change applied after
/// commit otherwise.
pub(crate) fn count(
    txn: &mut dyn KvTxn,
    fx: &mut Effects,
    task: &TaskRecord,
    counter: QueueCounter,
    delta: i64,
) {
    if fx.multi_node {
        txn.atomic_add(
            &tables::queue_counter_key(&task.namespace, &task.task_queue, task.kind, counter),
            delta,
        );
    } else {
        fx.counts.push((
            QueueKey::new(&task.namespace, &task.task_queue, task.kind),
            counter,
            delta,
        ));
    }
}

impl Engine {
    /// Per-queue counts of a namespace: `(queue, kind, ready, leased)`.
    pub async fn queue_counts(&self, ns: &str) -> Result<Vec<QueueCounts>> {
        let tally = &self.inner.counts;
        if !tally.durable() {
            return Ok(tally.of_namespace(ns));
        }
        let mut txn = self.inner.store.begin().await?;
        let pairs = txn
            .get_range(
                &tables::queue_counters_range(ns),
                ReadOptions::limit(100_000).snapshot(),
            )
            .await?;
        let mut out: Vec<QueueCounts> = Vec::new();
        for (key, value) in pairs {
            let mut r = KeyReader::new(&key);
            let (Some(_), Some(queue), Some(kind), Some(counter)) =
                (r.str(), r.str(), r.u8(), r.u8())
            else {
                return Err(Error::corrupt("queue counter key"));
            };
            let kind = kind_of(kind);
            let n = crate::storage::decode_counter(Some(&value)).max(0) as u64;
            let entry = match out.iter_mut().find(|c| c.queue == queue && c.kind == kind) {
                Some(e) => e,
                None => {
                    out.push(QueueCounts {
                        queue,
                        kind,
                        ready: 0,
                        leased: 0,
                    });
                    out.last_mut().expect("invariant: just pushed")
                }
            };
            if counter == QueueCounter::Ready as u8 {
                entry.ready = n;
            } else {
                entry.leased = n;
            }
        }
        Ok(out)
    }

    /// On a single-node store, counts the open tasks (every task row) into the in-memory
    /// counts and re-arms the in-memory lease timers of the leased ones (see
    /// `kernel/tasks.rs`); run at open, before anything changes a task.
    pub(crate) async fn rebuild_counts_and_lease_timers(&self) -> Result<()> {
        if self.inner.counts.durable() {
            return Ok(());
        }
        let (counts, leases) = scan_task_rows(self.inner.store.as_ref(), |_| true).await?;
        let (queues, leased) = (counts.len(), leases.len());
        self.inner.counts.replace(counts);
        for (timer, action) in leases {
            self.inner.timers.schedule_in_memory(timer, action);
        }
        tracing::info!(
            queues,
            leased,
            "queue counts and lease timers rebuilt from task rows"
        );
        Ok(())
    }
}

/// What the task rows of the namespaces `keep` admits hold: the counts per queue and
/// kind, and the lease timers of the leased tasks (pages of snapshot reads, each its own
/// transaction: for open and offline tools).
async fn scan_task_rows(
    store: &dyn KvStore,
    keep: impl Fn(&str) -> bool,
) -> Result<(BTreeMap<CountKey, [i64; 2]>, Vec<(TimerKey, TimerAction)>)> {
    let mut counts: BTreeMap<CountKey, [i64; 2]> = BTreeMap::new();
    let mut leases = Vec::new();
    let mut range = Some(KeyRange::prefix(&[crate::keys::prefix::TASK]));
    while let Some(r) = range {
        let mut txn = store.begin().await?;
        let (records, rest) = tables::read_records(txn.as_mut(), r, 1024).await?;
        for (_, bytes) in records {
            let task: TaskRecord = tables::decode_record(&bytes)?;
            if !keep(&task.namespace) {
                continue;
            }
            leases.extend(super::tasks::lease_timers_of(&task));
            let entry = counts
                .entry((task.namespace, task.task_queue, task.kind.code()))
                .or_default();
            match task.status {
                TaskStatus::Ready => entry[QueueCounter::Ready as usize] += 1,
                TaskStatus::Leased => entry[QueueCounter::Leased as usize] += 1,
                TaskStatus::Backoff => {}
            }
        }
        range = rest;
    }
    Ok((counts, leases))
}

/// On a multi-node store, rewrites the counter rows of `namespaces` from their task rows
/// and writes the lease-scoped timer rows of every leased task (an import: the file may come
/// from a single-node store, whose counter rows are missing or stale and which keeps
/// lease timers in memory). Does nothing on a single-node store. Offline only: a
/// transition racing it could be counted twice or not at all.
pub(crate) async fn rewrite_counter_and_lease_rows(
    store: &dyn KvStore,
    namespaces: &[String],
) -> Result<()> {
    if !store.capabilities().multi_node {
        return Ok(());
    }
    let (counts, leases) = scan_task_rows(store, |ns| namespaces.iter().any(|n| n == ns)).await?;
    for chunk in leases.chunks(512) {
        let mut txn = store.begin().await?;
        for (timer, action) in chunk {
            tables::put(txn.as_mut(), &tables::timer_key(timer), action)?;
        }
        txn.commit().await?;
    }
    for ns in namespaces {
        let mut txn = store.begin().await?;
        txn.clear_range(&tables::queue_counters_range(ns));
        let from = (ns.clone(), String::new(), 0u8);
        for ((_, queue, kind), c) in counts.range(from..).take_while(|((n, _, _), _)| n == ns) {
            for counter in [QueueCounter::Ready, QueueCounter::Leased] {
                txn.set(
                    &tables::queue_counter_key(ns, queue, kind_of(*kind), counter),
                    &c[counter as usize].to_le_bytes(),
                );
            }
        }
        txn.commit().await?;
    }
    Ok(())
}
