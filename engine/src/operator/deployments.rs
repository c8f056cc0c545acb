//! Deployments and the service registry.
//!
//! A deployment is a `serviceUrl` bound to worker cohorts `(task_queue, build_id)`: the
//! cohorts named by the request, plus those of registered workers that announced the URL
//! (`service_url` at registration, kept as a [`WorkerEndpoint`]). Its services are the
//! workflow and activity types those workers registered. The registry keeps, per type,
//! the active revision and the deployment serving it; a revision is bumped when a
//! deployment's set of types changes or a type moves to another deployment.
//!
//! Deployments match by normalised URL (host lowercased, default port elided, trailing
//! slashes, query and fragment dropped; the scheme is ignored, as Restate does), so one
//! URL has at most one deployment: registering it again keeps the id.
//!
//! Draining a deployment drains its cohorts (the existing build-id drain), except a
//! cohort the kept deployment also uses; its workers' polls then get 409
//! `worker_draining`. A drained deployment is removed once no unfinished run is pinned
//! to one of its versioned cohorts (a run with a `build_id` on that queue).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::audit::{put_audit, Actor, AuditEntry};
use crate::clock::Millis;
use crate::error::{Error, RejectKind, Result};
use crate::kernel;
use crate::kernel::Engine;
use crate::keys::{prefix, Key};
use crate::model::WorkerRecord;
use crate::storage::{KeyRange, KvTxn, ReadOptions};
use crate::workflow::{CloseCommand, ListQuery};
use crate::{ids, tables};

/// Most deployments a namespace holds (reads stop here).
pub const MAX_DEPLOYMENTS: usize = 1_000;
/// Most worker registrations and endpoints a discovery reads.
const MAX_DISCOVERY_WORKERS: usize = 10_000;
/// Run ids listed per skipped deployment.
const LISTED_RUN_IDS: usize = 20;

/// One `(task_queue, build_id)` cohort a deployment is bound to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CohortRef {
    /// Queue.
    pub task_queue: String,
    /// Build id (`None`: the unversioned cohort).
    #[serde(default)]
    pub build_id: Option<String>,
}

/// Whether a service is a workflow type or an activity type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    /// A workflow type.
    Workflow,
    /// An activity type.
    Activity,
}

impl ServiceKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Workflow => "workflow",
            ServiceKind::Activity => "activity",
        }
    }

    fn code(self) -> u8 {
        match self {
            ServiceKind::Workflow => 1,
            ServiceKind::Activity => 2,
        }
    }
}

/// A type a deployment serves, at the revision it registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentService {
    /// Type name.
    pub name: String,
    /// Workflow or activity.
    pub kind: ServiceKind,
    /// Revision this deployment registered.
    pub revision: u64,
}

/// A deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// `dp_` + a time-ordered unique id.
    pub deployment_id: String,
    pub namespace: String,
    /// The URL as registered (last registration).
    pub service_url: String,
    /// The normalised URL deployments match on.
    pub url_key: String,
    /// The worker cohorts it is bound to.
    #[serde(default)]
    pub cohorts: Vec<CohortRef>,
    /// The types its workers registered.
    #[serde(default)]
    pub services: Vec<DeploymentService>,
    /// First registration.
    pub created_at_ms: Millis,
    /// Last change.
    pub updated_at_ms: Millis,
    /// Whether it is draining (its cohorts get no new tasks).
    #[serde(default)]
    pub draining: bool,
    /// When the drain started.
    #[serde(default)]
    pub drained_at_ms: Option<Millis>,
    /// How many times it was registered (force-redeploy).
    #[serde(default)]
    pub registrations: u32,
}

/// The active revision of one service (type).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Type name.
    pub name: String,
    /// Workflow or activity.
    pub kind: ServiceKind,
    /// Active revision (1 for the first registration).
    pub revision: u64,
    /// The deployment holding the active revision.
    pub deployment_id: String,
    /// Last change.
    pub updated_at_ms: Millis,
}

/// The URL a worker announced at registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerEndpoint {
    pub worker_id: String,
    /// The URL as announced.
    pub service_url: String,
    /// Its normalised form.
    pub url_key: String,
    /// When it was announced.
    pub announced_at_ms: Millis,
}

/// A `force-redeploy` request.
#[derive(Debug, Clone)]
pub struct RedeployRequest {
    /// The URL to register.
    pub service_url: String,
    /// Re-discover and overwrite an existing registration of the URL (default true);
    /// `false` returns an existing registration untouched.
    pub force: bool,
    /// A queue to bind besides the cohorts of workers announcing the URL.
    pub task_queue: Option<String>,
    /// The build id of `task_queue`'s cohort (`None`: unversioned).
    pub build_id: Option<String>,
}

/// What `force-redeploy` did.
#[derive(Debug, Clone)]
pub struct RedeployOutcome {
    /// The deployment as stored.
    pub deployment: DeploymentRecord,
    /// `created`, `updated` (its types changed), `rediscovered` (same types) or
    /// `unchanged` (`force: false` and already registered).
    pub result: &'static str,
    /// Services whose revision was bumped.
    pub bumped: Vec<String>,
}

/// A `cleanup-stale-deployments` request.
#[derive(Debug, Clone)]
pub struct CleanupRequest {
    /// The URL of the deployment to keep.
    pub service_url: String,
    /// Also terminate unfinished runs pinned to the stale deployments, then remove them.
    pub force_drain: bool,
}

/// A stale deployment that was drained but not removed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SkippedDeployment {
    pub deployment_id: String,
    /// Its URL.
    pub service_url: String,
    /// `unfinished_runs`, `scan_truncated` or `reactivated` (registered again meanwhile).
    pub reason: &'static str,
    /// Unfinished runs pinned to it.
    pub unfinished_runs: usize,
    /// Up to 20 of them.
    pub run_ids: Vec<String>,
}

/// What `cleanup-stale-deployments` did.
#[derive(Debug, Clone)]
pub struct CleanupOutcome {
    /// The kept deployment.
    pub kept: DeploymentRecord,
    /// Stale deployments now draining (all of them).
    pub drained: Vec<String>,
    /// Stale deployments removed.
    pub removed: Vec<String>,
    /// Stale deployments left in place, and why.
    pub skipped: Vec<SkippedDeployment>,
    /// Runs terminated (`forceDrain`).
    pub terminated_runs: Vec<String>,
    /// Cohorts left running because the kept deployment uses them too.
    pub shared_cohorts: Vec<CohortRef>,
    /// Open runs examined for pins.
    pub runs_scanned: usize,
    /// Whether that scan stopped at its cap.
    pub scan_truncated: bool,
}

/// Validates an absolute `http`/`https` URL and returns its matching key
/// (`host[:port]/path`, host lowercased, default port, trailing `/`, query and fragment
/// dropped). The error is a message for the `serviceUrl` field.
pub fn normalize_service_url(url: &str) -> std::result::Result<String, String> {
    let url = url.trim();
    if url.len() > 2048 {
        return Err("must not exceed 2048 characters".into());
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "must be an absolute http or https URL".to_string())?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return Err("must be an absolute http or https URL".into()),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let authority = authority.rsplit('@').next().unwrap_or("");
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        let (h, after) = stripped
            .split_once(']')
            .ok_or_else(|| "has an unterminated IPv6 host".to_string())?;
        (
            format!("[{}]", h.to_ascii_lowercase()),
            after.strip_prefix(':'),
        )
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
            None => (authority.to_ascii_lowercase(), None),
        }
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')));
    if !host_ok {
        return Err("must name a host".into());
    }
    let port = match port {
        None | Some("") => None,
        Some(p) if p.parse::<u16>().is_ok() => (p != default_port).then_some(p),
        Some(_) => return Err("has an invalid port".into()),
    };
    if path.chars().any(char::is_whitespace) {
        return Err("must not contain spaces".into());
    }
    let path = path.trim_end_matches('/');
    Ok(match port {
        Some(p) => format!("{host}:{p}{path}"),
        None => format!("{host}{path}"),
    })
}

fn deployment_key(ns: &str, deployment_id: &str) -> Vec<u8> {
    Key::new(prefix::DEPLOYMENT)
        .str(ns)
        .str(deployment_id)
        .into_bytes()
}

fn deployments_range(ns: &str) -> KeyRange {
    Key::new(prefix::DEPLOYMENT).str(ns).range()
}

fn service_key(ns: &str, kind: ServiceKind, name: &str) -> Vec<u8> {
    Key::new(prefix::SERVICE)
        .str(ns)
        .u8(kind.code())
        .str(name)
        .into_bytes()
}

fn services_range(ns: &str) -> KeyRange {
    Key::new(prefix::SERVICE).str(ns).range()
}

/// Reads every record of `range` (at most `limit` values), conflict-tracked unless
/// `snapshot`.
async fn read_all<T: DeserializeOwned>(
    txn: &mut dyn KvTxn,
    range: &KeyRange,
    limit: usize,
    snapshot: bool,
) -> Result<Vec<T>> {
    let opts = ReadOptions::limit(limit);
    let opts = if snapshot { opts.snapshot() } else { opts };
    let pairs = txn.get_range(range, opts).await?;
    let (records, _) = tables::assemble(pairs)?;
    records
        .into_iter()
        .map(|(_, b)| tables::decode_record(&b))
        .collect()
}

fn deployment_not_found(service_url: &str, known: &[DeploymentRecord]) -> Error {
    Error::not_found(
        "deployment_not_found",
        format!("no deployment is registered for serviceUrl '{service_url}'"),
    )
    .with("serviceUrl", service_url)
    .with(
        "registeredServiceUrls",
        known
            .iter()
            .map(|d| Value::from(d.service_url.clone()))
            .collect::<Vec<_>>(),
    )
    .with(
        "remediation",
        "Run doctor and retry with the exact registered service URL, or register it with force-redeploy.",
    )
}

fn types_of(worker: &WorkerRecord) -> impl Iterator<Item = (ServiceKind, String)> + '_ {
    worker
        .supported_workflow_types
        .iter()
        .map(|t| (ServiceKind::Workflow, t.clone()))
        .chain(
            worker
                .supported_activity_types
                .iter()
                .map(|t| (ServiceKind::Activity, t.clone())),
        )
}

/// Moves the active revision of a type that `leaving` no longer serves to the newest
/// other active deployment that lists it (bumping the revision), or unregisters it.
async fn release_service(
    txn: &mut dyn KvTxn,
    ns: &str,
    kind: ServiceKind,
    name: &str,
    leaving: &str,
    all: &[DeploymentRecord],
    now: Millis,
) -> Result<()> {
    let key = service_key(ns, kind, name);
    let Some(mut record) = tables::get::<ServiceRecord>(txn, &key).await? else {
        return Ok(());
    };
    if record.deployment_id != leaving {
        return Ok(());
    }
    let successor = all
        .iter()
        .filter(|d| d.deployment_id != leaving && !d.draining)
        .filter(|d| d.services.iter().any(|s| s.kind == kind && s.name == name))
        .max_by_key(|d| d.created_at_ms);
    match successor {
        Some(d) => {
            record.deployment_id = d.deployment_id.clone();
            record.revision += 1;
            record.updated_at_ms = now;
            tables::put(txn, &key, &record)
        }
        None => tables::delete(txn, &key).await,
    }
}

impl Engine {
    /// Registers a worker and, in the same transaction, records (or clears) the
    /// `service_url` it announces; a deployment registered for that URL binds the
    /// worker's cohort.
    pub async fn register_worker_endpoint(
        &self,
        worker: WorkerRecord,
        service_url: Option<String>,
    ) -> Result<WorkerRecord> {
        let now = self.now_ms();
        let endpoint = match service_url {
            Some(url) => {
                let url_key =
                    normalize_service_url(&url).map_err(|m| Error::invalid("service_url", m))?;
                Some(WorkerEndpoint {
                    worker_id: worker.worker_id.clone(),
                    service_url: url,
                    url_key,
                    announced_at_ms: now,
                })
            }
            None => None,
        };
        let mut worker = worker;
        worker.last_heartbeat_at_ms = now;
        let (w, endpoint) = (&worker, &endpoint);
        let saved = self
            .transact(move |tx| {
                Box::pin(async move {
                    let txn = tx.txn.as_mut();
                    let record = Self::put_worker(txn, w).await?;
                    let key = tables::worker_endpoint_key(&w.namespace, &w.worker_id);
                    match endpoint {
                        Some(e) => tables::put(txn, &key, e)?,
                        None => txn.clear(&key),
                    }
                    Ok(record)
                })
            })
            .await?;
        self.cache_worker(saved.clone());
        Ok(saved)
    }

    /// The deployments of `ns` (at most [`MAX_DEPLOYMENTS`]), oldest first.
    pub async fn deployments(&self, ns: &str) -> Result<Vec<DeploymentRecord>> {
        let mut txn = self.inner.store.begin().await?;
        let mut all: Vec<DeploymentRecord> =
            read_all(txn.as_mut(), &deployments_range(ns), MAX_DEPLOYMENTS, true).await?;
        all.sort_by(|a, b| a.deployment_id.cmp(&b.deployment_id));
        Ok(all)
    }

    /// The service registry of `ns`: each type's active revision and deployment.
    pub async fn services(&self, ns: &str) -> Result<Vec<ServiceRecord>> {
        let mut txn = self.inner.store.begin().await?;
        read_all(txn.as_mut(), &services_range(ns), 10_000, true).await
    }

    /// Registers `serviceUrl` as a deployment bound to worker cohorts (the request's and
    /// those of workers announcing the URL), records its services and makes it active
    /// (its cohorts resume). An existing registration of the URL keeps its id; with
    /// `force: false` it is returned untouched. Old deployments are never removed here.
    pub async fn force_redeploy(
        &self,
        ns: &str,
        req: &RedeployRequest,
        actor: &Actor,
    ) -> Result<RedeployOutcome> {
        let now = self.now_ms();
        let audit = AuditEntry::new(
            ns,
            "force-redeploy",
            actor,
            json!({"serviceUrl": req.service_url, "force": req.force,
                   "taskQueue": req.task_queue, "buildId": req.build_id}),
            now,
        );
        let url_key = match normalize_service_url(&req.service_url) {
            Ok(k) => k,
            Err(m) => {
                let e = Error::invalid("serviceUrl", m);
                self.audit_failure(audit, &e).await;
                return Err(e);
            }
        };
        // Lowercase Crockford base32 keeps the ids' time order (`dp_01j8m7k2...`).
        let new_id = format!("dp_{}", ids::new_id(now).to_ascii_lowercase());
        let touched: Mutex<BTreeSet<CohortRef>> = Mutex::new(BTreeSet::new());
        let (url_key, new_id, touched_ref, audit_ref) = (&url_key, &new_id, &touched, &audit);
        let result = self
            .transact(move |tx| Box::pin(async move {
let txn = tx.txn.as_mut();
                let t = txn;
                kernel::require_namespace(t, ns).await?;
                let all: Vec<DeploymentRecord> =
                    read_all(t, &deployments_range(ns), MAX_DEPLOYMENTS, false).await?;
                let existing = all
                    .iter()
                    .filter(|d| d.url_key == *url_key)
                    .max_by_key(|d| d.created_at_ms)
                    .cloned();
                if let Some(d) = existing.as_ref().filter(|_| !req.force) {
                    let entry = AuditEntry {
                        completed_at_ms: Some(now),
                        ..audit_ref.clone().with_outcome(
                            "acknowledged",
                            None,
                            json!({"deploymentId": d.deployment_id, "result": "unchanged"}),
                        )
                    };
                    put_audit(t, &entry)?;
                    let outcome = RedeployOutcome {
                        deployment: d.clone(),
                        result: "unchanged",
                        bumped: Vec::new(),
                    };
                    return Ok(outcome);
                }
                // Discovery: the cohorts of registered workers announcing the URL, and
                // the request's own.
                let endpoints: Vec<WorkerEndpoint> = read_all(
                    t,
                    &Key::new(prefix::WORKER_ENDPOINT).str(ns).range(),
                    MAX_DISCOVERY_WORKERS,
                    true,
                )
                .await?;
                let workers: Vec<WorkerRecord> =
                    read_all(t, &tables::workers_range(ns), MAX_DISCOVERY_WORKERS, true).await?;
                let by_id: HashMap<&str, &WorkerRecord> =
                    workers.iter().map(|w| (w.worker_id.as_str(), w)).collect();
                let mut cohorts: BTreeSet<CohortRef> = endpoints
                    .iter()
                    .filter(|e| e.url_key == *url_key)
                    .filter_map(|e| by_id.get(e.worker_id.as_str()))
                    .map(|w| CohortRef {
                        task_queue: w.task_queue.clone(),
                        build_id: w.build_id.clone(),
                    })
                    .collect();
                if let Some(queue) = &req.task_queue {
                    cohorts.insert(CohortRef {
                        task_queue: queue.clone(),
                        build_id: req.build_id.clone(),
                    });
                }
                if cohorts.is_empty() {
                    if let Some(d) = &existing {
                        cohorts.extend(d.cohorts.iter().cloned());
                    }
                }
                if cohorts.is_empty() {
                    return Err(Error::reject(
                        RejectKind::Invalid,
                        "discovery_failed",
                        format!(
                            "no registered worker announces serviceUrl '{}' and the request names no taskQueue",
                            req.service_url
                        ),
                    )
                    .with("serviceUrl", req.service_url.as_str())
                    .with(
                        "remediation",
                        "Register workers with service_url set to this URL, or pass taskQueue (and buildId) to bind their cohort.",
                    ));
                }
                let types: BTreeSet<(ServiceKind, String)> = workers
                    .iter()
                    .filter(|w| {
                        cohorts.iter().any(|c| {
                            c.task_queue == w.task_queue && c.build_id == w.build_id
                        })
                    })
                    .flat_map(types_of)
                    .collect();
                let deployment_id = existing
                    .as_ref()
                    .map(|d| d.deployment_id.clone())
                    .unwrap_or_else(|| new_id.clone());
                let previous: BTreeSet<(ServiceKind, String)> = existing
                    .iter()
                    .flat_map(|d| d.services.iter().map(|s| (s.kind, s.name.clone())))
                    .collect();
                let set_changed = existing.is_none() || previous != types;
                let mut services = Vec::new();
                let mut bumped = Vec::new();
                for (kind, name) in &types {
                    let key = service_key(ns, *kind, name);
                    let record = tables::get::<ServiceRecord>(t, &key).await?;
                    let bump = set_changed
                        || record
                            .as_ref()
                            .is_none_or(|r| r.deployment_id != deployment_id);
                    let revision = match (&record, bump) {
                        (Some(r), false) => r.revision,
                        (Some(r), true) => r.revision + 1,
                        (None, _) => 1,
                    };
                    if bump {
                        tables::put(
                            t,
                            &key,
                            &ServiceRecord {
                                name: name.clone(),
                                kind: *kind,
                                revision,
                                deployment_id: deployment_id.clone(),
                                updated_at_ms: now,
                            },
                        )?;
                        bumped.push(name.clone());
                    }
                    services.push(DeploymentService {
                        name: name.clone(),
                        kind: *kind,
                        revision,
                    });
                }
                for (kind, name) in previous.difference(&types) {
                    release_service(t, ns, *kind, name, &deployment_id, &all, now).await?;
                }
                // Registering a URL makes its deployment active: its cohorts resume.
                for c in &cohorts {
                    Self::put_cohort_draining(t, ns, &c.task_queue, c.build_id.as_deref(), false, now)
                        .await?;
                    touched_ref
                        .lock()
                        .expect("invariant: cohort list not poisoned")
                        .insert(c.clone());
                }
                let result = match &existing {
                    None => "created",
                    Some(d) if d.deployment_id == *new_id => "created",
                    Some(_) if set_changed => "updated",
                    Some(_) => "rediscovered",
                };
                let record = DeploymentRecord {
                    deployment_id: deployment_id.clone(),
                    namespace: ns.to_string(),
                    service_url: req.service_url.clone(),
                    url_key: url_key.clone(),
                    cohorts: cohorts.into_iter().collect(),
                    services,
                    created_at_ms: existing.as_ref().map_or(now, |d| d.created_at_ms),
                    updated_at_ms: now,
                    draining: false,
                    drained_at_ms: None,
                    registrations: existing.as_ref().map_or(0, |d| d.registrations) + 1,
                };
                tables::put(t, &deployment_key(ns, &deployment_id), &record)?;
                let entry = AuditEntry {
                    completed_at_ms: Some(now),
                    ..audit_ref.clone().with_outcome(
                        "acknowledged",
                        None,
                        json!({"deploymentId": deployment_id, "result": result,
                               "cohorts": record.cohorts.iter().map(|c| json!({
                                   "taskQueue": c.task_queue, "buildId": c.build_id,
                               })).collect::<Vec<_>>(),
                               "bumped": bumped}),
                    )
                };
                put_audit(t, &entry)?;
                Ok(RedeployOutcome {
                    deployment: record,
                    result,
                    bumped,
                })
            }))
            .await;
        // Whatever happened (a commit may have applied before an error), cached drain
        // intents of the cohorts touched are re-read from storage.
        for c in touched
            .lock()
            .expect("invariant: cohort list not poisoned")
            .iter()
        {
            self.forget_cohort(ns, &c.task_queue, c.build_id.as_deref());
        }
        match result {
            Ok(outcome) => {
                tracing::info!(namespace = ns, deployment_id = %outcome.deployment.deployment_id,
                    result = outcome.result, principal = %actor.principal, "operator force-redeploy");
                Ok(outcome)
            }
            Err(e) => {
                self.audit_failure(audit, &e).await;
                Err(e)
            }
        }
    }

    /// Keeps the deployment registered for `serviceUrl` and drains every other one of
    /// the namespace; removes those with no unfinished run pinned to them. With
    /// `forceDrain`, first terminates those runs (the engine's terminate path).
    pub async fn cleanup_stale_deployments(
        &self,
        ns: &str,
        req: &CleanupRequest,
        actor: &Actor,
    ) -> Result<CleanupOutcome> {
        let now = self.now_ms();
        let audit = AuditEntry::new(
            ns,
            "cleanup-stale-deployments",
            actor,
            json!({"serviceUrl": req.service_url, "forceDrain": req.force_drain}),
            now,
        );
        match self.cleanup_inner(ns, req, actor, &audit, now).await {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                self.audit_failure(audit, &e).await;
                Err(e)
            }
        }
    }

    async fn cleanup_inner(
        &self,
        ns: &str,
        req: &CleanupRequest,
        actor: &Actor,
        audit: &AuditEntry,
        now: Millis,
    ) -> Result<CleanupOutcome> {
        let url_key =
            normalize_service_url(&req.service_url).map_err(|m| Error::invalid("serviceUrl", m))?;
        // Step 1, one transaction: find the kept deployment, mark every other draining
        // and drain its cohorts (not those the kept one uses too).
        let touched: Mutex<BTreeSet<CohortRef>> = Mutex::new(BTreeSet::new());
        let (url_key, touched_ref) = (&url_key, &touched);
        let decided = self
            .transact(move |tx| Box::pin(async move {
let txn = tx.txn.as_mut();
                let t = txn;
                kernel::require_namespace(t, ns).await?;
                let all: Vec<DeploymentRecord> =
                    read_all(t, &deployments_range(ns), MAX_DEPLOYMENTS, false).await?;
                let Some(kept) = all
                    .iter()
                    .filter(|d| d.url_key == *url_key)
                    .max_by_key(|d| d.created_at_ms)
                    .cloned()
                else {
                    return Err(deployment_not_found(&req.service_url, &all));
                };
                let mut stale = Vec::new();
                let mut shared = BTreeSet::new();
                for mut d in all.into_iter().filter(|d| d.deployment_id != kept.deployment_id) {
                    if !d.draining {
                        d.draining = true;
                        d.drained_at_ms = Some(now);
                        d.updated_at_ms = now;
                        tables::put(t, &deployment_key(ns, &d.deployment_id), &d)?;
                    }
                    for c in &d.cohorts {
                        if kept.cohorts.contains(c) {
                            shared.insert(c.clone());
                            continue;
                        }
                        Self::put_cohort_draining(t, ns, &c.task_queue, c.build_id.as_deref(), true, now)
                            .await?;
                        touched_ref
                            .lock()
                            .expect("invariant: cohort list not poisoned")
                            .insert(c.clone());
                    }
                    stale.push(d);
                }
                // Types a stale deployment held move to the newest active deployment
                // listing them (usually the kept one), or are unregistered.
                let mut after: Vec<DeploymentRecord> = stale.clone();
                after.push(kept.clone());
                for d in &stale {
                    for s in &d.services {
                        release_service(t, ns, s.kind, &s.name, &d.deployment_id, &after, now)
                            .await?;
                    }
                }
                let entry = audit.clone().with_outcome(
                    "in_progress",
                    None,
                    json!({"keptDeploymentId": kept.deployment_id,
                           "drained": stale.iter().map(|d| d.deployment_id.clone()).collect::<Vec<_>>()}),
                );
                put_audit(t, &entry)?;
                Ok((kept, stale, shared))
            }))
            .await;
        for c in touched
            .lock()
            .expect("invariant: cohort list not poisoned")
            .iter()
        {
            self.forget_cohort(ns, &c.task_queue, c.build_id.as_deref());
        }
        let (kept, stale, shared) = decided?;

        // Step 2: unfinished runs pinned to a stale versioned cohort. Unfinished runs are
        // the current runs of their workflow ids, so the workflow list's `running`
        // bucket holds them all; it is read in pages, up to a cap.
        let pins: HashMap<CohortRef, Vec<&str>> = {
            let mut m: HashMap<CohortRef, Vec<&str>> = HashMap::new();
            for d in &stale {
                for c in d.cohorts.iter().filter(|c| c.build_id.is_some()) {
                    if !kept.cohorts.contains(c) {
                        m.entry(c.clone()).or_default().push(&d.deployment_id);
                    }
                }
            }
            m
        };
        let mut pinned: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        let (runs_scanned, scan_truncated) = if pins.is_empty() {
            (0, false)
        } else {
            let (open, truncated) = self.open_runs(ns, super::RUN_SCAN_CAP).await?;
            for run in &open {
                let cohort = CohortRef {
                    task_queue: run.task_queue.clone(),
                    build_id: run.build_id.clone(),
                };
                for dep in pins.get(&cohort).into_iter().flatten() {
                    pinned
                        .entry((*dep).to_string())
                        .or_default()
                        .push((run.workflow_id.clone(), run.run_id.clone()));
                }
            }
            (open.len(), truncated)
        };

        // Step 3 (forceDrain): end the pinned runs through the terminate path, one
        // transaction each; a run that ended meanwhile is already done.
        let mut terminated_runs = Vec::new();
        if req.force_drain {
            let reason = format!(
                "terminated by operator {}: cleanup-stale-deployments kept {}",
                actor.principal, req.service_url
            );
            for (workflow_id, run_id) in pinned.values().flatten() {
                match self
                    .close_workflow(
                        ns,
                        workflow_id,
                        Some(run_id),
                        CloseCommand::Terminate,
                        Some(&reason),
                    )
                    .await
                {
                    Ok(_) => terminated_runs.push(run_id.clone()),
                    Err(Error::Rejected {
                        kind: RejectKind::Conflict | RejectKind::NotFound,
                        ..
                    }) => {}
                    Err(e) => return Err(e),
                }
            }
        }

        // Step 4: remove each stale deployment nothing is pinned to, one transaction
        // each, re-checking that it is still draining.
        let mut removed = Vec::new();
        let mut skipped = Vec::new();
        for d in &stale {
            let runs: Vec<String> = pinned
                .get(&d.deployment_id)
                .map(|v| v.iter().map(|(_, r)| r.clone()).collect())
                .unwrap_or_default();
            let unfinished = if req.force_drain { 0 } else { runs.len() };
            let skip = |reason: &'static str| SkippedDeployment {
                deployment_id: d.deployment_id.clone(),
                service_url: d.service_url.clone(),
                reason,
                unfinished_runs: unfinished,
                run_ids: runs.iter().take(LISTED_RUN_IDS).cloned().collect(),
            };
            if scan_truncated {
                skipped.push(skip("scan_truncated"));
                continue;
            }
            if unfinished > 0 {
                skipped.push(skip("unfinished_runs"));
                continue;
            }
            let id = &d.deployment_id;
            let gone = self
                .transact(move |tx| {
                    Box::pin(async move {
                        let txn = tx.txn.as_mut();
                        let t = txn;
                        let all: Vec<DeploymentRecord> =
                            read_all(t, &deployments_range(ns), MAX_DEPLOYMENTS, false).await?;
                        let Some(current) = all.iter().find(|x| x.deployment_id == *id) else {
                            return Ok(true);
                        };
                        if !current.draining {
                            return Ok(false);
                        }
                        let rest: Vec<DeploymentRecord> = all
                            .iter()
                            .filter(|x| x.deployment_id != *id)
                            .cloned()
                            .collect();
                        for s in &current.services {
                            release_service(t, ns, s.kind, &s.name, id, &rest, now).await?;
                        }
                        tables::delete(t, &deployment_key(ns, id)).await?;
                        Ok(true)
                    })
                })
                .await?;
            if gone {
                removed.push(d.deployment_id.clone());
            } else {
                skipped.push(skip("reactivated"));
            }
        }
        let outcome = CleanupOutcome {
            drained: stale.iter().map(|d| d.deployment_id.clone()).collect(),
            kept,
            removed,
            skipped,
            terminated_runs,
            shared_cohorts: shared.into_iter().collect(),
            runs_scanned,
            scan_truncated,
        };
        let entry = AuditEntry {
            completed_at_ms: Some(self.now_ms()),
            ..audit.clone().with_outcome(
                "acknowledged",
                None,
                json!({"keptDeploymentId": outcome.kept.deployment_id,
                       "drained": outcome.drained, "removed": outcome.removed,
                       "terminatedRuns": outcome.terminated_runs,
                       "skipped": outcome.skipped}),
            )
        };
        self.record_audit(&entry).await?;
        tracing::info!(namespace = ns, kept = %outcome.kept.deployment_id,
            drained = outcome.drained.len(), removed = outcome.removed.len(),
            terminated = outcome.terminated_runs.len(), principal = %actor.principal,
            "operator cleanup-stale-deployments");
        Ok(outcome)
    }

    /// The open (unfinished) runs of `ns`, from the workflow list's `running` bucket,
    /// read in pages; at most `cap`, and whether more remained.
    pub(crate) async fn open_runs(
        &self,
        ns: &str,
        cap: usize,
    ) -> Result<(Vec<crate::model::RunRecord>, bool)> {
        // Each page examines a bounded number of list entries; so does the whole scan.
        const MAX_PAGES: usize = 200;
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .list_workflows(
                    ns,
                    &ListQuery {
                        status_bucket: Some("running".into()),
                        page_size: crate::workflow::MAX_PAGE_SIZE,
                        page_token: token.take(),
                        ..ListQuery::default()
                    },
                )
                .await?;
            out.extend(page.runs.into_iter().filter(|r| !r.status.is_terminal()));
            match page.next_page_token {
                Some(t) if out.len() < cap => token = Some(t),
                Some(_) => return Ok((out, true)),
                None => return Ok((out, false)),
            }
        }
        Ok((out, true))
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_service_url;

    #[test]
    fn service_urls_normalise_for_matching() {
        let n = |u: &str| normalize_service_url(u);
        assert_eq!(
            n("https://Workflow-Service.example.com/").as_deref(),
            Ok("workflow-service.example.com")
        );
        assert_eq!(n("http://h:80/a/b/?x=1#f").as_deref(), Ok("h/a/b"));
        assert_eq!(n("https://h:8443/svc").as_deref(), Ok("h:8443/svc"));
        assert_eq!(n("http://[::1]:9080").as_deref(), Ok("[::1]:9080"));
        assert_eq!(n("https://user@h.example").as_deref(), Ok("h.example"));
        assert_eq!(n("https://h").ok(), n("http://H/").ok());
        for bad in [
            "",
            "h.example",
            "ftp://h",
            "http://",
            "http://h:99999",
            "http://h h",
        ] {
            assert!(n(bad).is_err(), "{bad} should be rejected");
        }
    }
}
