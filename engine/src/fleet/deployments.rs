//! Worker deployments: the lifecycle of a build-id cohort `(namespace, task_queue,
//! build_id)` as operators promote, drain, resume and roll it back.
//!
//! A deployment exists once a cohort record exists (a drain intent or a lifecycle
//! action was recorded) or a registered worker belongs to the cohort. Its state is
//! derived from the cohort record and the cohort's workers:
//!
//! - `rolled_back` once rolled back (terminal);
//! - `draining` while its drain intent is set and one of its workers still heartbeats,
//!   `drained` (terminal) once none does;
//! - `promoted` while it is its queue's promoted deployment;
//! - `active` otherwise.
//!
//! At most one cohort of a queue is promoted. While the promoted cohort is versioned and
//! not draining, fresh starts on the queue that name no build id are pinned to its build
//! id (the queue's new-start build): its workflow tasks go only to its workers. Drain
//! and rollback take that selection away; a resume of a still-promoted cohort gives it
//! back. A refused transition changes nothing and names every blockage.

use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::kernel;
use crate::kernel::Engine;
use crate::model::{CohortRecord, WorkerRecord};
use crate::storage::{KvTxn, ReadOptions};
use crate::tables;

/// A worker with no heartbeat for this long is stale: it no longer counts as a live
/// worker of its deployment (the SDK heartbeats every 60 s).
pub const WORKER_STALE_AFTER_MS: Millis = 120_000;
/// Most worker registrations and cohorts one deployment read examines.
const MAX_READ: usize = 10_000;

/// A deployment's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentState {
    /// Accepts new work.
    Active,
    /// Accepts new work and is its queue's target for fresh starts.
    Promoted,
    /// Its workers get no new tasks; some still heartbeat.
    Draining,
    /// Draining with no live worker left (terminal).
    Drained,
    /// Rolled back (terminal).
    RolledBack,
}

impl DeploymentState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Active => "active",
            DeploymentState::Promoted => "promoted",
            DeploymentState::Draining => "draining",
            DeploymentState::Drained => "drained",
            DeploymentState::RolledBack => "rolled_back",
        }
    }

    /// Whether the deployment may receive new work.
    pub fn accepts_new_work(self) -> bool {
        matches!(self, DeploymentState::Active | DeploymentState::Promoted)
    }

    fn is_terminal(self) -> bool {
        matches!(self, DeploymentState::Drained | DeploymentState::RolledBack)
    }
}

/// A lifecycle transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentAction {
    Promote,
    Drain,
    Resume,
    Rollback,
}

impl DeploymentAction {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentAction::Promote => "promote",
            DeploymentAction::Drain => "drain",
            DeploymentAction::Resume => "resume",
            DeploymentAction::Rollback => "rollback",
        }
    }
}

/// A deployment as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerDeployment {
    pub namespace: String,
    pub task_queue: String,
    /// `None`: the unversioned cohort.
    pub build_id: Option<String>,
    pub state: DeploymentState,
    pub promoted_at_ms: Option<Millis>,
    pub drained_at_ms: Option<Millis>,
    pub resumed_at_ms: Option<Millis>,
    pub rolled_back_at_ms: Option<Millis>,
    /// Whether fresh starts on the queue without a build id are pinned to it.
    pub new_start_selected: bool,
    /// Workflow types its workers registered, sorted, without duplicates.
    pub workflow_types: Vec<String>,
    /// Registered workers with a recent heartbeat.
    pub live_workers: usize,
    /// Registered workers without one.
    pub stale_workers: usize,
}

impl WorkerDeployment {
    /// The operator-visible name: `namespace/task_queue@build_id` (`@unversioned`).
    pub fn name(&self) -> String {
        format!(
            "{}/{}@{}",
            self.namespace,
            self.task_queue,
            self.build_id.as_deref().unwrap_or("unversioned")
        )
    }
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blockage {
    /// `unknown_deployment`, `incompatible_policy`, `fleet_is_draining`,
    /// `no_compatible_workers` or `missing_worker_heartbeat`.
    pub reason: &'static str,
    pub message: String,
    /// The next step that would lift it.
    pub expected_resolution: &'static str,
}

/// What a lifecycle action did.
#[derive(Debug, Clone)]
pub enum DeploymentOutcome {
    /// Applied (or already in effect); the deployment after it.
    Done(WorkerDeployment),
    /// Refused: nothing changed. The deployment as it is (`None`: unknown) and every
    /// blockage, configuration ones first, then fleet ones.
    Refused(Option<WorkerDeployment>, Vec<Blockage>),
}

/// Parses `namespace/task_queue@build_id` (`@unversioned` for the unversioned cohort)
/// into `(namespace, task_queue, build_id)`; the error is a message for the name.
pub fn parse_deployment_name(
    name: &str,
) -> std::result::Result<(String, String, Option<String>), String> {
    let name = name.trim();
    let Some((scope, build)) = name.rsplit_once('@') else {
        return Err("must be of the form namespace/task_queue@build_id (build_id 'unversioned' for the unversioned cohort)".into());
    };
    let Some((ns, queue)) = scope.split_once('/') else {
        return Err("must name a namespace and a task queue separated by '/'".into());
    };
    let (ns, queue, build) = (ns.trim(), queue.trim(), build.trim());
    if ns.is_empty() || queue.is_empty() || build.is_empty() {
        return Err("must name a namespace, a task queue and a build id (or 'unversioned')".into());
    }
    let build = (build != "unversioned").then(|| build.to_string());
    Ok((ns.to_string(), queue.to_string(), build))
}

/// The deployment of one cohort from its record and the namespace's workers, or `None`
/// when neither a record nor a worker of the cohort exists.
fn project(
    ns: &str,
    queue: &str,
    build_id: Option<&str>,
    record: Option<&CohortRecord>,
    workers: &[WorkerRecord],
    new_start: Option<&Option<String>>,
    now: Millis,
) -> Option<WorkerDeployment> {
    let members: Vec<&WorkerRecord> = workers
        .iter()
        .filter(|w| w.task_queue == queue && w.build_id.as_deref() == build_id)
        .collect();
    if record.is_none() && members.is_empty() {
        return None;
    }
    let live = members
        .iter()
        .filter(|w| now - w.last_heartbeat_at_ms <= WORKER_STALE_AFTER_MS)
        .count();
    let mut types: Vec<String> = members
        .iter()
        .flat_map(|w| w.supported_workflow_types.iter().cloned())
        .collect();
    types.sort();
    types.dedup();
    let rolled_back = record.and_then(|r| r.rolled_back_at_ms);
    let draining = record.is_some_and(|r| r.draining);
    let promoted = record.and_then(|r| r.promoted_at_ms);
    let state = if rolled_back.is_some() {
        DeploymentState::RolledBack
    } else if draining && live == 0 {
        DeploymentState::Drained
    } else if draining {
        DeploymentState::Draining
    } else if promoted.is_some() {
        DeploymentState::Promoted
    } else {
        DeploymentState::Active
    };
    Some(WorkerDeployment {
        namespace: ns.to_string(),
        task_queue: queue.to_string(),
        build_id: build_id.map(str::to_string),
        state,
        promoted_at_ms: promoted,
        drained_at_ms: record.filter(|r| r.draining).and_then(|r| r.drained_at_ms),
        resumed_at_ms: record.and_then(|r| r.resumed_at_ms),
        rolled_back_at_ms: rolled_back,
        new_start_selected: build_id.is_some()
            && new_start.is_some_and(|b| b.as_deref() == build_id),
        workflow_types: types,
        live_workers: live,
        stale_workers: members.len() - live,
    })
}

/// The blockages of `action` against `d` (`None`: unknown); `queue_live` counts the live
/// workers of the whole queue.
fn blockages(
    action: DeploymentAction,
    name: &str,
    d: Option<&WorkerDeployment>,
    queue_live: usize,
) -> Vec<Blockage> {
    let Some(d) = d else {
        return match action {
            DeploymentAction::Promote | DeploymentAction::Rollback => vec![Blockage {
                reason: "unknown_deployment",
                message: format!("no deployment is registered for {name}"),
                expected_resolution:
                    "Start a worker that registers this task queue and build id, then retry.",
            }],
            // Drain and resume record an intent for a cohort before its workers exist.
            DeploymentAction::Drain | DeploymentAction::Resume => Vec::new(),
        };
    };
    let state = d.state.as_str();
    let policy = |message: String, expected_resolution: &'static str| Blockage {
        reason: "incompatible_policy",
        message,
        expected_resolution,
    };
    let mut out = Vec::new();
    match action {
        DeploymentAction::Promote => {
            if d.state.is_terminal() {
                out.push(policy(
                    format!("{name} is {state}; a {state} deployment cannot be promoted"),
                    "Deploy workers under a new build id and promote that deployment.",
                ));
            } else if d.state == DeploymentState::Draining {
                out.push(Blockage {
                    reason: "fleet_is_draining",
                    message: format!("{name} is draining; promoting it would resurrect it"),
                    expected_resolution: "Resume the deployment first, then promote it.",
                });
            }
            if queue_live == 0 {
                out.push(Blockage {
                    reason: "no_compatible_workers",
                    message: format!(
                        "no live worker polls task queue '{}' in namespace '{}'",
                        d.task_queue, d.namespace
                    ),
                    expected_resolution:
                        "Start workers for this build id on the task queue, then retry promotion.",
                });
            } else if d.live_workers == 0 {
                out.push(Blockage {
                    reason: "missing_worker_heartbeat",
                    message: format!(
                        "task queue '{}' has live workers, but none of build id '{}' heartbeats",
                        d.task_queue,
                        d.build_id.as_deref().unwrap_or("unversioned")
                    ),
                    expected_resolution:
                        "Roll out workers that register this build id before promoting.",
                });
            }
        }
        DeploymentAction::Drain => {
            if d.state == DeploymentState::RolledBack {
                out.push(policy(
                    format!("{name} is rolled_back; draining it has no meaning"),
                    "Nothing to do: a rolled-back deployment receives no fresh starts.",
                ));
            }
        }
        DeploymentAction::Resume => {
            if d.state.is_terminal() {
                out.push(policy(
                    format!("{name} is {state}; a {state} deployment cannot be resumed"),
                    "Deploy workers under a new build id, or resume the cohort through the build-id route.",
                ));
            }
        }
        DeploymentAction::Rollback => {
            if d.state == DeploymentState::RolledBack {
                out.push(policy(
                    format!("{name} is already rolled_back"),
                    "Promote another deployment to route fresh starts again.",
                ));
            }
        }
    }
    out
}

async fn read_records<T: serde::de::DeserializeOwned>(
    txn: &mut dyn KvTxn,
    range: &crate::storage::KeyRange,
    snapshot: bool,
) -> Result<Vec<T>> {
    let opts = ReadOptions::limit(MAX_READ);
    let opts = if snapshot { opts.snapshot() } else { opts };
    let pairs = txn.get_range(range, opts).await?;
    let (records, _) = tables::assemble(pairs)?;
    records
        .into_iter()
        .map(|(_, b)| tables::decode_record(&b))
        .collect()
}

/// A fresh cohort record.
fn new_cohort(ns: &str, queue: &str, build_id: Option<&str>, now: Millis) -> CohortRecord {
    CohortRecord {
        namespace: ns.to_string(),
        task_queue: queue.to_string(),
        build_id: build_id.map(str::to_string),
        draining: false,
        drained_at_ms: None,
        resumed_at_ms: None,
        promoted_at_ms: None,
        rolled_back_at_ms: None,
        updated_at_ms: now,
    }
}

/// Applies `action` to the cohort inside `txn` and returns the outcome.
async fn apply_in_txn(
    txn: &mut dyn KvTxn,
    ns: &str,
    queue: &str,
    build_id: Option<&str>,
    action: DeploymentAction,
    now: Millis,
) -> Result<DeploymentOutcome> {
    kernel::require_namespace(txn, ns).await?;
    let workers: Vec<WorkerRecord> = read_records(txn, &tables::workers_range(ns), true).await?;
    let key = tables::cohort_key(ns, queue, build_id);
    let record: Option<CohortRecord> = tables::get(txn, &key).await?;
    let nskey = kernel::new_start_build_key(ns, queue);
    let new_start: Option<Option<String>> = tables::get(txn, &nskey).await?;
    let current = project(
        ns,
        queue,
        build_id,
        record.as_ref(),
        &workers,
        new_start.as_ref(),
        now,
    );
    let queue_live = workers
        .iter()
        .filter(|w| w.task_queue == queue && now - w.last_heartbeat_at_ms <= WORKER_STALE_AFTER_MS)
        .count();
    let name = format!("{ns}/{queue}@{}", build_id.unwrap_or("unversioned"));
    let refused = blockages(action, &name, current.as_ref(), queue_live);
    if !refused.is_empty() {
        return Ok(DeploymentOutcome::Refused(current, refused));
    }
    let mut rec = record.unwrap_or_else(|| new_cohort(ns, queue, build_id, now));
    let before = rec.clone();
    let mut selected: Option<Option<String>> = new_start.clone();
    let this = || build_id.map(str::to_string);
    let selects_this = |s: &Option<Option<String>>| s.as_ref().is_some_and(|b| *b == this());
    match action {
        DeploymentAction::Promote => {
            if rec.promoted_at_ms.is_none() {
                // One promoted cohort per queue: the previous one goes back to active.
                let others: Vec<CohortRecord> =
                    read_records(txn, &tables::cohorts_range(ns, queue), false).await?;
                for mut other in others
                    .into_iter()
                    .filter(|c| c.build_id.as_deref() != build_id && c.promoted_at_ms.is_some())
                {
                    other.promoted_at_ms = None;
                    other.updated_at_ms = now;
                    let k = tables::cohort_key(ns, queue, other.build_id.as_deref());
                    tables::put(txn, &k, &other)?;
                }
                rec.promoted_at_ms = Some(now);
            }
            rec.rolled_back_at_ms = None;
            selected = Some(this());
        }
        DeploymentAction::Drain => {
            if !rec.draining {
                rec.draining = true;
                rec.drained_at_ms = Some(now);
            }
            if selects_this(&selected) {
                selected = None;
            }
        }
        DeploymentAction::Resume => {
            if rec.draining {
                rec.draining = false;
                rec.resumed_at_ms = Some(now);
            }
            if rec.promoted_at_ms.is_some() {
                selected = Some(this());
            }
        }
        DeploymentAction::Rollback => {
            rec.rolled_back_at_ms = Some(now);
            rec.promoted_at_ms = None;
            if selects_this(&selected) {
                selected = None;
            }
        }
    }
    if rec != before {
        rec.updated_at_ms = now;
        tables::put(txn, &key, &rec)?;
    }
    if selected != new_start {
        match &selected {
            Some(b) => tables::put(txn, &nskey, b)?,
            None => txn.clear(&nskey),
        }
    }
    let after = project(
        ns,
        queue,
        build_id,
        Some(&rec),
        &workers,
        selected.as_ref(),
        now,
    )
    .ok_or_else(|| Error::corrupt("a cohort with a record projects to a deployment"))?;
    Ok(DeploymentOutcome::Done(after))
}

impl Engine {
    /// Every deployment of `ns` (cohorts with a record or a registered worker), ordered
    /// by task queue, then build id (unversioned first).
    pub async fn worker_deployments(&self, ns: &str) -> Result<Vec<WorkerDeployment>> {
        let now = self.now_ms();
        let mut txn = self.inner.store.begin().await?;
        let txn = txn.as_mut();
        kernel::require_namespace(txn, ns).await?;
        let workers: Vec<WorkerRecord> =
            read_records(txn, &tables::workers_range(ns), true).await?;
        let cohorts: Vec<CohortRecord> = read_records(
            txn,
            &crate::keys::Key::new(crate::keys::prefix::COHORT)
                .str(ns)
                .range(),
            true,
        )
        .await?;
        let mut keys: Vec<(String, Option<String>)> = workers
            .iter()
            .map(|w| (w.task_queue.clone(), w.build_id.clone()))
            .chain(
                cohorts
                    .iter()
                    .map(|c| (c.task_queue.clone(), c.build_id.clone())),
            )
            .collect();
        keys.sort();
        keys.dedup();
        let mut out = Vec::with_capacity(keys.len());
        let mut selections: std::collections::HashMap<String, Option<Option<String>>> =
            std::collections::HashMap::new();
        for (queue, build_id) in keys {
            if !selections.contains_key(&queue) {
                let sel: Option<Option<String>> =
                    tables::get_snapshot(txn, &kernel::new_start_build_key(ns, &queue)).await?;
                selections.insert(queue.clone(), sel);
            }
            let record = cohorts
                .iter()
                .find(|c| c.task_queue == queue && c.build_id == build_id);
            if let Some(d) = project(
                ns,
                &queue,
                build_id.as_deref(),
                record,
                &workers,
                selections.get(&queue).and_then(Option::as_ref),
                now,
            ) {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// One deployment, or `None` if the cohort has neither a record nor a worker.
    pub async fn worker_deployment(
        &self,
        ns: &str,
        queue: &str,
        build_id: Option<&str>,
    ) -> Result<Option<WorkerDeployment>> {
        let now = self.now_ms();
        let mut txn = self.inner.store.begin().await?;
        let txn = txn.as_mut();
        kernel::require_namespace(txn, ns).await?;
        let workers: Vec<WorkerRecord> =
            read_records(txn, &tables::workers_range(ns), true).await?;
        let record: Option<CohortRecord> =
            tables::get_snapshot(txn, &tables::cohort_key(ns, queue, build_id)).await?;
        let sel: Option<Option<String>> =
            tables::get_snapshot(txn, &kernel::new_start_build_key(ns, queue)).await?;
        Ok(project(
            ns,
            queue,
            build_id,
            record.as_ref(),
            &workers,
            sel.as_ref(),
            now,
        ))
    }

    /// Applies a lifecycle action to a deployment in one transaction. A refusal changes
    /// nothing. Drain and resume move the cohort's drain intent, so its workers' polls
    /// follow at once on this node (and within the cache's freshness on others).
    pub async fn deployment_action(
        &self,
        ns: &str,
        queue: &str,
        build_id: Option<&str>,
        action: DeploymentAction,
    ) -> Result<DeploymentOutcome> {
        let now = self.now_ms();
        let outcome = self
            .transact(move |tx| {
                Box::pin(async move {
                    let txn = tx.txn.as_mut();
                    apply_in_txn(txn, ns, queue, build_id, action, now).await
                })
            })
            .await;
        // Whatever happened (a commit may have applied before an error), the cached
        // drain intent is re-read from storage.
        self.forget_cohort(ns, queue, build_id);
        let outcome = outcome?;
        if let DeploymentOutcome::Done(d) = &outcome {
            tracing::info!(namespace = ns, deployment = %d.name(), action = action.as_str(),
                state = d.state.as_str(), "worker deployment lifecycle action");
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_deployment_name;

    #[test]
    fn deployment_names_parse_with_unversioned_and_at_signs_in_the_queue() {
        assert_eq!(
            parse_deployment_name("default/orders@v2"),
            Ok(("default".into(), "orders".into(), Some("v2".into())))
        );
        assert_eq!(
            parse_deployment_name("default/orders@unversioned"),
            Ok(("default".into(), "orders".into(), None))
        );
        assert_eq!(
            parse_deployment_name("ns/a/b@x@v1"),
            Ok(("ns".into(), "a/b@x".into(), Some("v1".into())))
        );
        for bad in ["", "orders@v1", "default/orders", "/q@v", "ns/@v", "ns/q@"] {
            assert!(
                parse_deployment_name(bad).is_err(),
                "{bad} should be refused"
            );
        }
    }
}
