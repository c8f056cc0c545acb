//! The workflow list (visibility) and a workflow id's chain of runs.
//!
//! Every workflow id has one list entry, at its current run, keyed
//! `(namespace, u64::MAX - started_at, !run_id)` so a forward scan is newest first. Each
//! entry is its own key, written by the transactions that create and close runs: two
//! transitions never write the same list key, so the index adds no conflicts. Counters
//! per status bucket are atomic adds, for the same reason. An entry keeps what the
//! filters need (type, bucket, id); the page itself is read from the run records, so
//! statuses and attributes are current.

use crate::kernel;
use base64::Engine as _;

use super::{
    tables, Engine, Error, InstanceRecord, KvTxn, Millis, RejectKind, Result, RunRecord, Serialize,
};
use crate::keys::{prefix, Key};
use crate::storage::{decode_counter, ReadOptions};

/// Largest page.
pub const MAX_PAGE_SIZE: usize = 200;
/// List entries one request examines at most (a filtered page may come back short, with
/// a token to go on).
const SCAN_BUDGET: usize = 5_000;
/// Runs of one chain listed at most.
pub const MAX_CHAIN_RUNS: usize = 1_000;

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct ListEntry {
    workflow_id: String,
    run_id: String,
    workflow_type: String,
    bucket: String,
}

fn entry_key(ns: &str, started_at_ms: Millis, run_id: &str) -> Vec<u8> {
    let mut key = Key::new(prefix::WORKFLOW_LIST)
        .str(ns)
        .u64(u64::MAX - started_at_ms.max(0) as u64);
    // Runs started in the same millisecond: the later id (ids grow with creation) first.
    // Inverted ASCII bytes are never 0, and run ids have one length, so no terminator.
    for b in run_id.bytes() {
        key = key.u8(!b);
    }
    key.into_bytes()
}

fn namespace_prefix(ns: &str) -> Key {
    Key::new(prefix::WORKFLOW_LIST).str(ns)
}

fn count_key(ns: &str, bucket: &str) -> Vec<u8> {
    Key::new(prefix::WORKFLOW_COUNT)
        .str(ns)
        .str(bucket)
        .into_bytes()
}

fn put_entry(txn: &mut dyn KvTxn, run: &RunRecord) -> Result<()> {
    let entry = ListEntry {
        workflow_id: run.workflow_id.clone(),
        run_id: run.run_id.clone(),
        workflow_type: run.workflow_type.clone(),
        bucket: run.status.bucket().to_string(),
    };
    tables::put(
        txn,
        &entry_key(&run.namespace, run.started_at_ms, &run.run_id),
        &entry,
    )
}

/// Lists a new run (a new workflow id, or the next run of a continued one).
pub(super) fn index_new_run(txn: &mut dyn KvTxn, run: &RunRecord) -> Result<()> {
    put_entry(txn, run)?;
    txn.atomic_add(&count_key(&run.namespace, run.status.bucket()), 1);
    Ok(())
}

/// Moves a closing run's entry to its terminal bucket.
pub(super) fn on_close(txn: &mut dyn KvTxn, run: &RunRecord) -> Result<()> {
    put_entry(txn, run)?;
    txn.atomic_add(&count_key(&run.namespace, "running"), -1);
    txn.atomic_add(&count_key(&run.namespace, run.status.bucket()), 1);
    Ok(())
}

/// Removes a run's entry: its workflow id continued in a newer run, or the run (the
/// current one of its id) was purged.
pub(crate) fn unindex(txn: &mut dyn KvTxn, run: &RunRecord) {
    txn.clear(&entry_key(&run.namespace, run.started_at_ms, &run.run_id));
    txn.atomic_add(&count_key(&run.namespace, run.status.bucket()), -1);
}

/// Filters and paging of a workflow list request.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only this workflow type.
    pub workflow_type: Option<String>,
    /// Only this status bucket: `running`, `completed` or `failed`.
    pub status_bucket: Option<String>,
    /// Case-insensitive substring of the workflow id.
    pub query: Option<String>,
    /// Page size, 1..=[`MAX_PAGE_SIZE`].
    pub page_size: usize,
    /// A token from an earlier page.
    pub page_token: Option<String>,
}

/// One page of the workflow list.
#[derive(Debug, Clone)]
pub struct WorkflowListPage {
    /// Current runs of the listed workflow ids, newest first.
    pub runs: Vec<RunRecord>,
    /// Where the next page starts, when there may be more.
    pub next_page_token: Option<String>,
    /// How many workflow ids match, when the counters can tell (no type or text filter).
    pub workflow_count: Option<u64>,
}

fn invalid_token() -> Error {
    Error::reject(
        RejectKind::BadRequest,
        "invalid_page_token",
        "next_page_token is not a token this server issued",
    )
}

/// A list page stops growing once its entries' memos and search attributes reach this
/// many bytes (the page then ends early, with a token for the rest).
pub const MAX_PAGE_BYTES: usize = 4 << 20;

/// Roughly what a run adds to a list page: its memo and search attributes plus the fixed
/// fields.
fn listed_bytes(run: &RunRecord) -> usize {
    let json_len = |v: &serde_json::Value| serde_json::to_vec(v).map_or(0, |b| b.len());
    512 + json_len(&run.memo) + json_len(&run.search_attributes)
}

impl Engine {
    /// Lists workflow ids (at their current runs), newest first.
    pub async fn list_workflows(&self, ns: &str, q: &ListQuery) -> Result<WorkflowListPage> {
        let mut txn = self.inner.store.begin().await?;
        let txn = txn.as_mut();
        kernel::require_namespace(txn, ns).await?;
        let base = namespace_prefix(ns);
        let mut range = base.range();
        if let Some(token) = q.page_token.as_deref().filter(|t| !t.is_empty()) {
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .map_err(|_| invalid_token())?;
            if !key.starts_with(&base.clone().into_bytes()) {
                return Err(invalid_token());
            }
            range.start = std::ops::Bound::Excluded(key);
        }
        let page_size = q.page_size.clamp(1, MAX_PAGE_SIZE);
        let needle = q.query.as_deref().map(str::to_lowercase);
        let mut runs = Vec::new();
        let mut scanned = 0usize;
        let mut last_key: Option<Vec<u8>> = None;
        let mut exhausted = false;
        let mut page_bytes = 0usize;
        'scan: while runs.len() < page_size {
            if scanned >= SCAN_BUDGET {
                break;
            }
            let chunk = txn
                .get_range(&range, ReadOptions::limit(256).snapshot())
                .await?;
            let full = chunk.len() == 256;
            let Some((tail, _)) = chunk.last() else {
                exhausted = true;
                break;
            };
            range.start = std::ops::Bound::Excluded(tail.clone());
            let (records, _) = tables::assemble(chunk)?;
            for (key, bytes) in records {
                scanned += 1;
                last_key = Some(key);
                let entry: ListEntry = tables::decode_record(&bytes)?;
                let wanted = q
                    .workflow_type
                    .as_ref()
                    .is_none_or(|t| *t == entry.workflow_type)
                    && q.status_bucket.as_ref().is_none_or(|b| *b == entry.bucket)
                    && needle
                        .as_ref()
                        .is_none_or(|n| entry.workflow_id.to_lowercase().contains(n));
                if wanted {
                    let run =
                        tables::get_snapshot::<RunRecord>(txn, &tables::run_key(ns, &entry.run_id))
                            .await?;
                    // The run record is the truth; a stale entry is skipped.
                    if let Some(run) = run.filter(|r| {
                        q.status_bucket
                            .as_ref()
                            .is_none_or(|b| b == r.status.bucket())
                    }) {
                        page_bytes += listed_bytes(&run);
                        runs.push(run);
                    }
                }
                if runs.len() >= page_size || page_bytes >= MAX_PAGE_BYTES {
                    break 'scan;
                }
            }
            if !full {
                exhausted = true;
                break;
            }
        }
        // A short final chunk means nothing follows, unless the page filled first.
        let done = exhausted && runs.len() < page_size && page_bytes < MAX_PAGE_BYTES;
        let next_page_token = if done {
            None
        } else {
            last_key.map(|k| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k))
        };
        let workflow_count = if q.workflow_type.is_none() && needle.is_none() {
            let mut total = 0i64;
            for bucket in ["running", "completed", "failed"] {
                if q.status_bucket.as_deref().is_none_or(|b| b == bucket) {
                    total +=
                        decode_counter(txn.get_snapshot(&count_key(ns, bucket)).await?.as_deref());
                }
            }
            Some(total.max(0) as u64)
        } else {
            None
        };
        Ok(WorkflowListPage {
            runs,
            next_page_token,
            workflow_count,
        })
    }

    /// The runs of a workflow id, oldest first (following the continue-as-new chain back
    /// from the current run; at most [`MAX_CHAIN_RUNS`] of the newest).
    pub async fn list_runs(
        &self,
        ns: &str,
        workflow_id: &str,
    ) -> Result<(InstanceRecord, Vec<RunRecord>)> {
        let mut txn = self.inner.store.begin().await?;
        let txn = txn.as_mut();
        kernel::require_namespace(txn, ns).await?;
        let instance: InstanceRecord =
            tables::get_snapshot(txn, &tables::instance_key(ns, workflow_id))
                .await?
                .ok_or_else(|| {
                    Error::not_found(
                        "instance_not_found",
                        format!("workflow '{workflow_id}' does not exist"),
                    )
                })?;
        let mut runs = Vec::new();
        let mut next = Some(instance.current_run_id.clone());
        while let Some(run_id) = next.take() {
            if runs.len() >= MAX_CHAIN_RUNS {
                break;
            }
            let Some(run) =
                tables::get_snapshot::<RunRecord>(txn, &tables::run_key(ns, &run_id)).await?
            else {
                break;
            };
            next = run.lifecycle.continued_from_run_id.clone();
            runs.push(run);
        }
        runs.reverse();
        Ok((instance, runs))
    }
}
