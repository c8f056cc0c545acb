//! Operator passes: retention of closed runs, repair of runs whose workflow task went
//! missing, enforcement of overdue activity timers, and the namespace-scoped counts the
//! operator surfaces report. Every scan and every pass is bounded by a caller-given limit;
//! a pass does its work in many small transactions, never one large one.

use serde::Serialize;
use serde_json::Value;

use crate::clock::Millis;
use crate::error::Result;
use crate::kernel::Engine;
use crate::keys::{prefix, Key, KeyReader};
use crate::model::{InstanceRecord, RunRecord, TaskKind, TaskRecord, TimerKey};
use crate::storage::{KeyRange, KvTxn, ReadOptions};
use crate::tables;

/// Most keys one scan reads.
pub const MAX_SCAN: usize = 10_000;
/// An overdue timer is one due longer ago than this (the timer service is not late).
pub const OVERDUE_GRACE_MS: Millis = 5_000;

fn closed_run_key(ns: &str, closed_at_ms: Millis, run_id: &str) -> Vec<u8> {
    Key::new(prefix::CLOSED_RUN)
        .str(ns)
        .i64(closed_at_ms)
        .str(run_id)
        .into_bytes()
}

/// Closed runs of `ns` that closed strictly before `cutoff_ms`.
fn closed_before(ns: &str, cutoff_ms: Millis) -> KeyRange {
    let base = Key::new(prefix::CLOSED_RUN).str(ns);
    KeyRange::new(base.clone().into_bytes(), base.i64(cutoff_ms).into_bytes())
}

/// Records a run's close in the retention index. Called by the run's close, in its
/// transaction, so that the index holds exactly the closed runs.
pub(crate) fn index_closed_run(
    txn: &mut dyn KvTxn,
    ns: &str,
    workflow_id: &str,
    run_id: &str,
    closed_at_ms: Millis,
) {
    txn.set(
        &closed_run_key(ns, closed_at_ms, run_id),
        workflow_id.as_bytes(),
    );
}

/// One closed run that retention may delete.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionCandidate {
    pub run_id: String,
    pub workflow_id: String,
    /// Close time.
    pub closed_at_ms: Millis,
}

/// What the retention index holds for a namespace (bounded).
#[derive(Debug, Clone, Serialize)]
pub struct RetentionBacklog {
    /// The namespace's retention.
    pub retention_days: u32,
    /// Runs that closed before this time are past retention.
    pub cutoff_ms: Millis,
    /// Eligible runs found (at most the scan limit).
    pub eligible: usize,
    /// Whether the scan stopped at its limit (more may be eligible).
    pub truncated: bool,
    /// The oldest eligible runs.
    pub candidates: Vec<RetentionCandidate>,
}

/// What one retention pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RetentionOutcome {
    /// Runs deleted (record, history and index entry).
    pub deleted_runs: usize,
    /// Workflow instances deleted with their last run.
    pub deleted_instances: usize,
    /// External payloads deleted with the last run referencing them.
    pub deleted_payloads: usize,
    /// Runs deleted, by id.
    pub run_ids: Vec<String>,
    /// Whether eligible runs remain after this pass.
    pub more: bool,
}

/// Why a run is a repair candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RepairReason {
    /// Open, with an event the workflow has not been given, and no workflow task.
    WorkflowTaskMissing,
    /// Names a workflow task whose record does not exist.
    WorkflowTaskDangling,
}

/// A run the repair pass would fix.
#[derive(Debug, Clone, Serialize)]
pub struct RepairCandidate {
    pub run_id: String,
    pub workflow_id: String,
    /// The run's task queue: the scope the pass is fair across.
    pub task_queue: String,
    /// Run status.
    pub status: &'static str,
    /// Why.
    pub reason: RepairReason,
}

/// How the repair pass picks among more candidates than its limit:
/// [`scope_fair_round_robin`], one candidate per task queue in turn.
pub const REPAIR_SCAN_STRATEGY: &str = "scope_fair_round_robin";

/// Orders `candidates` (in scan order) so that taking any prefix is fair across task
/// queues: the first candidate of each queue (queues in order of first appearance), then
/// the second of each, and so on. One busy queue cannot starve the others' repairs.
pub fn scope_fair_round_robin(candidates: Vec<RepairCandidate>) -> Vec<RepairCandidate> {
    let mut queues: Vec<std::collections::VecDeque<RepairCandidate>> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for c in candidates {
        let i = *index.entry(c.task_queue.clone()).or_insert_with(|| {
            queues.push(std::collections::VecDeque::new());
            queues.len() - 1
        });
        queues[i].push_back(c);
    }
    let mut out = Vec::new();
    loop {
        let before = out.len();
        for q in &mut queues {
            if let Some(c) = q.pop_front() {
                out.push(c);
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

/// The repair scan of a namespace.
#[derive(Debug, Clone, Serialize)]
pub struct RepairScan {
    /// Runs examined.
    pub scanned: usize,
    /// Whether the scan stopped at its limit.
    pub truncated: bool,
    /// Runs needing repair.
    pub candidates: Vec<RepairCandidate>,
}

/// One overdue durable timer.
#[derive(Debug, Clone, Serialize)]
pub struct OverdueTimer {
    /// The timer's action tag (`lease_expiry`, `activity_timeout`, ...).
    pub action: String,
    /// The task it concerns, when it concerns one.
    pub task_id: Option<String>,
    /// When it was due.
    pub fire_at_ms: Millis,
    /// Its identity, for firing.
    #[serde(skip)]
    pub key: TimerKey,
}

/// Counts of a namespace's runs by status, from a bounded scan.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunCounts {
    /// Runs examined.
    pub scanned: usize,
    /// Whether the scan stopped at its limit.
    pub truncated: bool,
    /// Open runs (pending, running, waiting).
    pub open: usize,
    /// Runs by status.
    pub by_status: std::collections::BTreeMap<&'static str, usize>,
}

async fn scan_runs(txn: &mut dyn KvTxn, ns: &str, limit: usize) -> Result<(Vec<RunRecord>, bool)> {
    let range = Key::new(prefix::RUN).str(ns).range();
    let pairs = txn
        .get_range(&range, ReadOptions::limit(limit).snapshot())
        .await?;
    let full = pairs.len() >= limit;
    let (records, cut) = tables::assemble(pairs)?;
    let runs = records
        .into_iter()
        .map(|(_, b)| tables::decode_record(&b))
        .collect::<Result<Vec<RunRecord>>>()?;
    Ok((runs, full || cut))
}

/// Whether the run's last history event came from outside its workflow tasks (a start,
/// an activity result, a signal, a timeout): then the workflow has something to decide
/// and must have a workflow task.
async fn last_event_is_external(txn: &mut dyn KvTxn, run: &RunRecord) -> Result<bool> {
    let bytes = tables::get_bytes(
        txn,
        &tables::history_key(&run.namespace, &run.run_id, run.last_event_seq),
        true,
    )
    .await?;
    let Some(bytes) = bytes else {
        return Ok(false);
    };
    let event: Value = tables::decode_record(&bytes)?;
    Ok(event.get("workflow_task_id").is_none_or(Value::is_null))
}

async fn repair_reason(txn: &mut dyn KvTxn, run: &RunRecord) -> Result<Option<RepairReason>> {
    if run.status.is_terminal() {
        return Ok(None);
    }
    match &run.workflow_task {
        Some(task_id) => {
            let task = tables::get_snapshot::<TaskRecord>(txn, &tables::task_key(task_id)).await?;
            Ok(task.is_none().then_some(RepairReason::WorkflowTaskDangling))
        }
        None => Ok(last_event_is_external(txn, run)
            .await?
            .then_some(RepairReason::WorkflowTaskMissing)),
    }
}

impl Engine {
    /// The retention backlog of `ns`: closed runs past its retention, oldest first.
    pub async fn retention_backlog(&self, ns: &str, limit: usize) -> Result<RetentionBacklog> {
        let mut backlog = self.retention_scan(ns, limit).await?;
        backlog.candidates.truncate(100);
        Ok(backlog)
    }

    /// The retention backlog with every candidate found (up to `limit`), not only the
    /// first 100 the backlog view shows.
    async fn retention_scan(&self, ns: &str, limit: usize) -> Result<RetentionBacklog> {
        let record = self.describe_namespace(ns).await?;
        let cutoff_ms = self.now_ms() - i64::from(record.retention_days) * 86_400_000;
        let limit = limit.clamp(1, MAX_SCAN);
        let mut txn = self.inner.store.begin().await?;
        let pairs = txn
            .get_range(
                &closed_before(ns, cutoff_ms),
                ReadOptions::limit(limit).snapshot(),
            )
            .await?;
        let truncated = pairs.len() >= limit;
        let candidates: Vec<RetentionCandidate> = pairs
            .iter()
            .filter_map(|(k, v)| {
                let mut r = KeyReader::new(k);
                let _ns = r.str()?;
                let closed_at_ms = r.i64()?;
                let run_id = r.str()?;
                Some(RetentionCandidate {
                    run_id,
                    workflow_id: String::from_utf8_lossy(v).into_owned(),
                    closed_at_ms,
                })
            })
            .collect();
        Ok(RetentionBacklog {
            retention_days: record.retention_days,
            cutoff_ms,
            eligible: candidates.len(),
            truncated,
            candidates,
        })
    }

    /// Deletes up to `limit` closed runs of `ns` past its retention (or only those of
    /// `run_ids` that are), oldest first, one transaction per run.
    pub async fn retention_pass(
        &self,
        ns: &str,
        limit: usize,
        run_ids: Option<&[String]>,
    ) -> Result<RetentionOutcome> {
        let limit = limit.clamp(1, 1000);
        let scan = if run_ids.is_some() {
            MAX_SCAN
        } else {
            limit + 1
        };
        let backlog = self.retention_scan(ns, scan).await?;
        let mut eligible: Vec<&RetentionCandidate> = backlog
            .candidates
            .iter()
            .filter(|c| run_ids.is_none_or(|ids| ids.contains(&c.run_id)))
            .collect();
        // More remain when this pass leaves some of what it found, or found a full scan.
        let more = eligible.len() > limit || backlog.truncated;
        eligible.truncate(limit);
        let mut out = RetentionOutcome {
            more,
            ..RetentionOutcome::default()
        };
        for candidate in eligible {
            let (deleted_instance, released) = self.purge_run(ns, candidate).await?;
            // The records are gone with the commit; the blobs follow (a crash here
            // leaves orphaned files, never a reference without its blob).
            crate::payloads::delete_released(&released);
            out.deleted_payloads += released.reference_ids.len();
            out.deleted_runs += 1;
            out.deleted_instances += usize::from(deleted_instance);
            out.run_ids.push(candidate.run_id.clone());
        }
        if out.deleted_runs > 0 {
            tracing::info!(
                namespace = ns,
                runs = out.deleted_runs,
                "retention pass deleted closed runs"
            );
        }
        Ok(out)
    }

    /// Deletes one closed run: its record, history, updates and index entry, and its
    /// workflow instance (with its command receipts) when it is the instance's current
    /// run. Older runs of a continue-as-new
    /// chain closed before the current one, so they are past retention too and go in
    /// the same or an earlier pass. Returns whether the instance was deleted.
    async fn purge_run(
        &self,
        ns: &str,
        c: &RetentionCandidate,
    ) -> Result<(bool, crate::payloads::Released)> {
        let stores = &self.config().payloads;
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                let mut released = crate::payloads::Released::default();
                let index_key = closed_run_key(ns, c.closed_at_ms, &c.run_id);
                let rkey = tables::run_key(ns, &c.run_id);
                let run = tables::get::<RunRecord>(txn, &rkey).await?;
                let mut deleted_instance = false;
                if let Some(run) = run.filter(|r| r.status.is_terminal()) {
                    crate::payloads::release_run(txn, stores, ns, &run.run_id, &mut released)
                        .await?;
                    txn.clear_range(&Key::new(prefix::HISTORY).str(ns).str(&run.run_id).range());
                    txn.clear_range(&Key::new(prefix::UPDATE).str(ns).str(&run.run_id).range());
                    tables::delete(txn, &rkey).await?;
                    let ikey = tables::instance_key(ns, &run.workflow_id);
                    if let Some(instance) = tables::get::<InstanceRecord>(txn, &ikey).await? {
                        if instance.current_run_id == run.run_id {
                            tables::delete(txn, &ikey).await?;
                            // Command receipts are per workflow id: they go with the instance.
                            txn.clear_range(
                                &Key::new(prefix::COMMAND_RECEIPT)
                                    .str(ns)
                                    .str(&run.workflow_id)
                                    .range(),
                            );
                            // Older runs of a chain left the workflow list when continued.
                            crate::workflow::unlist_run(txn, &run);
                            deleted_instance = true;
                        }
                    }
                }
                txn.clear(&index_key);
                Ok((deleted_instance, released))
            })
        })
        .await
    }

    /// Open runs of `ns` whose workflow task is missing (first `scan_limit` runs).
    pub async fn repair_scan(&self, ns: &str, scan_limit: usize) -> Result<RepairScan> {
        self.check_namespace(ns).await?;
        let mut txn = self.inner.store.begin().await?;
        let (runs, truncated) = scan_runs(txn.as_mut(), ns, scan_limit.clamp(1, MAX_SCAN)).await?;
        let mut candidates = Vec::new();
        for run in &runs {
            if let Some(reason) = repair_reason(txn.as_mut(), run).await? {
                candidates.push(RepairCandidate {
                    run_id: run.run_id.clone(),
                    workflow_id: run.workflow_id.clone(),
                    task_queue: run.task_queue.clone(),
                    status: run.status.as_str(),
                    reason,
                });
            }
        }
        Ok(RepairScan {
            scanned: runs.len(),
            truncated,
            candidates,
        })
    }

    /// Recreates the workflow task of up to `limit` repair candidates (or of those in
    /// `run_ids`), chosen [`scope_fair_round_robin`] across task queues. Each repair
    /// re-checks the run in its own transaction.
    pub async fn repair_pass(
        &self,
        ns: &str,
        limit: usize,
        run_ids: Option<&[String]>,
    ) -> Result<Vec<RepairCandidate>> {
        let scan = self.repair_scan(ns, MAX_SCAN).await?;
        let mut repaired = Vec::new();
        let selected: Vec<RepairCandidate> = scan
            .candidates
            .into_iter()
            .filter(|c| run_ids.is_none_or(|ids| ids.contains(&c.run_id)))
            .collect();
        for candidate in scope_fair_round_robin(selected)
            .into_iter()
            .take(limit.clamp(1, 1000))
        {
            let run_id = candidate.run_id.clone();
            let run_id = &run_id;
            let now = self.now_ms();
            let done = self
                .transact(move |tx| {
                    Box::pin(async move {
                        let txn = tx.txn.as_mut();
                        let fx = &mut tx.fx;
                        let rkey = tables::run_key(ns, run_id);
                        let Some(mut run) = tables::get::<RunRecord>(txn, &rkey).await? else {
                            return Ok(false);
                        };
                        if repair_reason(txn, &run).await?.is_none() {
                            return Ok(false);
                        }
                        run.workflow_task = None;
                        crate::workflow::ensure_workflow_task(txn, &mut run, now, fx)?;
                        tables::put(txn, &rkey, &run)?;
                        Ok(true)
                    })
                })
                .await?;
            if done {
                tracing::info!(namespace = ns, run_id = %candidate.run_id, reason = ?candidate.reason, "repaired a run's missing workflow task");
                repaired.push(candidate);
            }
        }
        Ok(repaired)
    }

    /// Durable timers due more than [`OVERDUE_GRACE_MS`] ago (among the first `limit`
    /// due), whose action concerns an activity task of namespace `ns`: activity timeouts,
    /// and lease expiries and backoffs of activity tasks. The timer service fires them
    /// normally; these are the ones it is late on (e.g. the node was stopped).
    pub async fn overdue_activity_timers(
        &self,
        ns: &str,
        limit: usize,
    ) -> Result<Vec<OverdueTimer>> {
        let cutoff = self.now_ms() - OVERDUE_GRACE_MS;
        let mut txn = self.inner.store.begin().await?;
        let pairs = txn
            .get_range(
                &tables::timers_before(cutoff),
                ReadOptions::limit(limit.clamp(1, MAX_SCAN)).snapshot(),
            )
            .await?;
        let (records, _) = tables::assemble(pairs)?;
        let mut out = Vec::new();
        for (key, bytes) in records {
            let mut r = KeyReader::new(&key);
            let (Some(fire_at_ms), Some(timer_id)) = (r.i64(), r.str()) else {
                continue;
            };
            let action: Value = tables::decode_record(&bytes)?;
            let tag = action
                .get("action")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let task_id = action
                .get("task_id")
                .and_then(Value::as_str)
                .map(str::to_string);
            let is_activity = match (&*tag, &task_id) {
                ("activity_timeout" | "lease_expiry" | "task_backoff", Some(id)) => {
                    tables::get_snapshot::<TaskRecord>(txn.as_mut(), &tables::task_key(id))
                        .await?
                        .is_some_and(|t| t.kind == TaskKind::Activity && t.namespace == ns)
                }
                _ => false,
            };
            if is_activity {
                out.push(OverdueTimer {
                    action: tag,
                    task_id,
                    fire_at_ms,
                    key: TimerKey {
                        fire_at_ms,
                        timer_id,
                    },
                });
            }
        }
        Ok(out)
    }

    /// Fires up to `limit` overdue activity timers now; returns the ones fired.
    pub async fn activity_timeout_pass(&self, ns: &str, limit: usize) -> Result<Vec<OverdueTimer>> {
        let overdue = self.overdue_activity_timers(ns, limit).await?;
        for timer in &overdue {
            self.fire_timer(timer.key.clone()).await?;
        }
        Ok(overdue)
    }

    /// Counts the runs of `ns` by status (first `limit` runs).
    pub async fn run_counts(&self, ns: &str, limit: usize) -> Result<RunCounts> {
        let mut txn = self.inner.store.begin().await?;
        let (runs, truncated) = scan_runs(txn.as_mut(), ns, limit.clamp(1, MAX_SCAN)).await?;
        let mut counts = RunCounts {
            scanned: runs.len(),
            truncated,
            ..RunCounts::default()
        };
        for run in &runs {
            *counts.by_status.entry(run.status.as_str()).or_default() += 1;
            if !run.status.is_terminal() {
                counts.open += 1;
            }
        }
        Ok(counts)
    }

    /// Whether storage answers a real read (readiness and health).
    pub async fn storage_reachable(&self) -> Result<()> {
        let mut txn = self.inner.store.begin().await?;
        txn.get_snapshot(&tables::meta_key(crate::namespaces::SCHEMA_VERSION_KEY))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{scope_fair_round_robin, RepairCandidate, RepairReason};

    fn candidate(run_id: &str, queue: &str) -> RepairCandidate {
        RepairCandidate {
            run_id: run_id.into(),
            workflow_id: run_id.into(),
            task_queue: queue.into(),
            status: "running",
            reason: RepairReason::WorkflowTaskMissing,
        }
    }

    #[test]
    fn a_busy_queue_does_not_starve_the_repairs_of_other_queues() {
        let scanned = vec![
            candidate("a1", "busy"),
            candidate("a2", "busy"),
            candidate("a3", "busy"),
            candidate("b1", "quiet"),
            candidate("a4", "busy"),
            candidate("c1", "other"),
            candidate("b2", "quiet"),
        ];
        let order: Vec<String> = scope_fair_round_robin(scanned)
            .into_iter()
            .map(|c| c.run_id)
            .collect();
        assert_eq!(order, ["a1", "b1", "c1", "a2", "b2", "a3", "a4"]);
    }
}
