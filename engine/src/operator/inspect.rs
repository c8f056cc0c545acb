//! Read-only inspections for `doctor`: run counts by status and recent failures.
//!
//! Counts come from the workflow list (one entry per workflow id, at its current run):
//! the exact total from its atomic counters, statuses from a paged read of at most
//! [`RUN_SCAN_CAP`] entries (`truncated` says when there were more). Recent failures
//! have two sources, as Restate's `completion_failure` and `last_failure`: closed runs
//! that failed, timed out, were cancelled or terminated (read newest first from the
//! retention index of closed runs, within a budget), and open runs whose current
//! attempt chain failed (an activity retrying after failed attempts, a failing workflow
//! task).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::clock::Millis;
use crate::error::Result;
use crate::history;
use crate::kernel::Engine;
use crate::keys::{prefix, Key, KeyReader};
use crate::model::{RunRecord, RunStatus, TaskRecord, TaskStatus};
use crate::storage::{KvTxn, ReadOptions};
use crate::tables;
use crate::workflow::ListQuery;

/// Most workflow-list entries a count reads.
pub const RUN_SCAN_CAP: usize = 10_000;
/// Most recent failures reported.
pub const MAX_RECENT_FAILURES: usize = 20;
/// Closed-run index entries examined for recent failures.
const CLOSED_SCAN_BUDGET: usize = 2_000;
/// Open runs whose tasks are read for failure evidence.
const OPEN_EVIDENCE_BUDGET: usize = 1_000;

/// A failed invocation (run), as `recentFailures` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct FailureItem {
    /// Run id.
    pub id: String,
    /// Workflow type.
    pub service_name: String,
    /// Workflow id.
    pub service_key: String,
    /// When it failed (close time, or the end of the failed attempt).
    pub failed_at_ms: Millis,
    /// The failure message (at most 1 KiB).
    pub error_message: String,
    /// The run's status (`failed`, `terminated`, ..., or an open status when an attempt
    /// of a still-open run failed).
    pub status: &'static str,
    /// `run` (the run closed unsuccessfully) or `attempt` (an attempt of an open run
    /// failed and is being retried).
    pub source: &'static str,
}

/// Run counts of a namespace.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InvocationCounts {
    /// Workflow ids by the status of their current run (from the paged read).
    pub by_status: BTreeMap<&'static str, u64>,
    /// Workflow ids in all (exact, from the list's counters).
    pub total: u64,
    /// Entries read.
    pub scanned: usize,
    /// Whether the read stopped at [`RUN_SCAN_CAP`].
    pub truncated: bool,
    /// Open runs showing failure evidence (among those examined).
    pub stuck: u64,
    /// Failures of open runs (attempt failures), newest first.
    #[serde(skip)]
    pub open_failures: Vec<FailureItem>,
}

/// Evidence that an open run is stuck: its newest failed-and-retried attempt, if any.
pub(crate) async fn failure_evidence(
    txn: &mut dyn KvTxn,
    run: &RunRecord,
) -> Result<Option<FailureItem>> {
    if run.status.is_terminal() {
        return Ok(None);
    }
    let mut best: Option<FailureItem> = None;
    let mut consider = |item: FailureItem| {
        if best
            .as_ref()
            .is_none_or(|b| item.failed_at_ms > b.failed_at_ms)
        {
            best = Some(item);
        }
    };
    let item = |at: Millis, message: String| FailureItem {
        id: run.run_id.clone(),
        service_name: run.workflow_type.clone(),
        service_key: run.workflow_id.clone(),
        failed_at_ms: at,
        error_message: super::truncate_message(&message),
        status: run.status.as_str(),
        source: "attempt",
    };
    for task_id in &run.open_activities {
        let Some(task) =
            tables::get_snapshot::<TaskRecord>(txn, &tables::task_key(task_id)).await?
        else {
            continue;
        };
        let Some(activity) = &task.activity else {
            continue;
        };
        match &activity.last_failure {
            Some(f) => consider(item(
                f.at_ms,
                format!(
                    "activity {} attempt {}: {}",
                    task.type_name, f.attempt_number, f.message
                ),
            )),
            // Records from before attempts kept their failure: the attempt count says it.
            None if activity.attempt_number > 1 || task.status == TaskStatus::Backoff => {
                consider(item(
                    task.ready_at_ms,
                    format!(
                        "activity {} is on attempt {} after failed attempts",
                        task.type_name, activity.attempt_number
                    ),
                ))
            }
            None => {}
        }
    }
    if let Some(f) = &run.workflow_task_failure {
        let kind = if f.failure_type.is_empty() {
            String::new()
        } else {
            format!(" ({})", f.failure_type)
        };
        consider(item(
            f.at_ms,
            format!(
                "workflow task failed {} time(s){kind}: {}",
                f.failures, f.message
            ),
        ));
    } else if let Some(task_id) = &run.workflow_task {
        if let Some(task) =
            tables::get_snapshot::<TaskRecord>(txn, &tables::task_key(task_id)).await?
        {
            if task.failures > 0 {
                // A record from before failures were kept on the run: the task's last
                // ready time is the nearest known instant.
                consider(item(
                    task.ready_at_ms,
                    format!("workflow task failed {} time(s)", task.failures),
                ));
            }
        }
    }
    Ok(best)
}

/// The message of a closed run's terminal event.
async fn close_message(txn: &mut dyn KvTxn, run: &RunRecord) -> Result<String> {
    let seq = run.lifecycle.close_event_seq.unwrap_or(run.last_event_seq);
    let payload = history::event_payload(txn, &run.namespace, &run.run_id, seq)
        .await?
        .unwrap_or(Value::Null);
    let text = |k: &str| payload.get(k).and_then(Value::as_str).map(str::to_string);
    let message = text("message")
        .filter(|m| !m.is_empty())
        .or_else(|| {
            payload
                .get("exception")
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .or_else(|| text("reason"))
        .or_else(|| run.closed_reason.clone())
        .unwrap_or_else(|| format!("workflow {}", run.status.as_str()));
    Ok(message)
}

impl Engine {
    /// Counts the namespace's workflow ids by the status of their current run, and
    /// collects failure evidence of open runs. Stops early (`truncated`) after
    /// [`RUN_SCAN_CAP`] entries or once `budget` of real time is spent, so a large
    /// namespace yields partial counts rather than a probe that never answers.
    pub async fn invocation_counts(
        &self,
        ns: &str,
        budget: std::time::Duration,
    ) -> Result<InvocationCounts> {
        let started = std::time::Instant::now();
        let mut counts = InvocationCounts::default();
        let mut token: Option<String> = None;
        let mut open: Vec<RunRecord> = Vec::new();
        loop {
            let page = self
                .list_workflows(
                    ns,
                    &ListQuery {
                        page_size: crate::workflow::MAX_PAGE_SIZE,
                        page_token: token.take(),
                        ..ListQuery::default()
                    },
                )
                .await?;
            if let Some(total) = page.workflow_count {
                counts.total = total;
            }
            for run in page.runs {
                counts.scanned += 1;
                *counts.by_status.entry(run.status.as_str()).or_default() += 1;
                if !run.status.is_terminal() && open.len() < OPEN_EVIDENCE_BUDGET {
                    open.push(run);
                }
            }
            match page.next_page_token {
                Some(t) if counts.scanned < RUN_SCAN_CAP && started.elapsed() < budget => {
                    token = Some(t)
                }
                Some(_) => {
                    counts.truncated = true;
                    break;
                }
                None => break,
            }
        }
        let mut txn = self.inner.store.begin().await?;
        for run in &open {
            if started.elapsed() >= budget {
                counts.truncated = true;
                break;
            }
            if let Some(item) = failure_evidence(txn.as_mut(), run).await? {
                counts.stuck += 1;
                counts.open_failures.push(item);
            }
        }
        counts
            .open_failures
            .sort_by(|a, b| b.failed_at_ms.cmp(&a.failed_at_ms).then(a.id.cmp(&b.id)));
        Ok(counts)
    }

    /// Closed runs that ended unsuccessfully, newest first (at most `limit`, from the
    /// newest [`CLOSED_SCAN_BUDGET`] closed runs).
    pub async fn recent_closed_failures(&self, ns: &str, limit: usize) -> Result<Vec<FailureItem>> {
        let limit = limit.min(MAX_RECENT_FAILURES);
        let mut txn = self.inner.store.begin().await?;
        let pairs = txn
            .get_range(
                &Key::new(prefix::CLOSED_RUN).str(ns).range(),
                ReadOptions::limit(CLOSED_SCAN_BUDGET).snapshot().reverse(),
            )
            .await?;
        let mut out = Vec::new();
        for (key, _) in pairs {
            if out.len() >= limit {
                break;
            }
            let mut r = KeyReader::new(&key);
            let (Some(_), Some(closed_at), Some(run_id)) = (r.str(), r.i64(), r.str()) else {
                continue;
            };
            let Some(run) =
                tables::get_snapshot::<RunRecord>(txn.as_mut(), &tables::run_key(ns, &run_id))
                    .await?
            else {
                continue;
            };
            if !run.status.is_terminal() || run.status == RunStatus::Completed {
                continue;
            }
            let message = close_message(txn.as_mut(), &run).await?;
            out.push(FailureItem {
                id: run.run_id.clone(),
                service_name: run.workflow_type.clone(),
                service_key: run.workflow_id.clone(),
                failed_at_ms: run.closed_at_ms.unwrap_or(closed_at),
                error_message: super::truncate_message(&message),
                status: run.status.as_str(),
                source: "run",
            });
        }
        Ok(out)
    }
}

/// Recent failures of both kinds, newest first (ties by run id), at most `limit` (≤ 20).
pub fn merge_failures(
    closed: Vec<FailureItem>,
    open: &[FailureItem],
    limit: usize,
) -> Vec<FailureItem> {
    let mut all: Vec<FailureItem> = closed.into_iter().chain(open.iter().cloned()).collect();
    all.sort_by(|a, b| b.failed_at_ms.cmp(&a.failed_at_ms).then(a.id.cmp(&b.id)));
    all.truncate(limit.min(MAX_RECENT_FAILURES));
    all
}
