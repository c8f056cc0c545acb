//! Webhook bridge adapters: per-namespace configuration and the event intake.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::kernel::Engine;
use crate::keys::{prefix, Key};
use crate::storage::{KeyRange, ReadOptions};
use crate::workflow::{
    start_in_txn, DuplicatePolicy, SignalRequest, StartWorkflow, UpdateRequest, UpdateWait,
};
use crate::{ids, kernel, tables};

/// Actions a webhook bridge event may take.
pub const BRIDGE_ACTIONS: &[&str] = &["start_workflow", "signal_workflow", "update_workflow"];
/// Most adapters one namespace may configure.
pub const MAX_ADAPTERS: usize = 200;

/// What a webhook event asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BridgeAction {
    StartWorkflow,
    SignalWorkflow,
    UpdateWorkflow,
}

impl BridgeAction {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            BridgeAction::StartWorkflow => "start_workflow",
            BridgeAction::SignalWorkflow => "signal_workflow",
            BridgeAction::UpdateWorkflow => "update_workflow",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            BridgeAction::StartWorkflow,
            BridgeAction::SignalWorkflow,
            BridgeAction::UpdateWorkflow,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// An adapter's configuration: what its events may do in this namespace. Empty name lists
/// allow any name; `workflow_types` and `task_queues` must be non-empty for an adapter
/// that may start workflows (checked by the HTTP front).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterSpec {
    pub description: Option<String>,
    /// A disabled adapter refuses every event with `adapter_unavailable`.
    pub enabled: bool,
    /// The actions its events may take.
    pub actions: Vec<BridgeAction>,
    /// Workflow types it may start, signal or update.
    pub workflow_types: Vec<String>,
    /// Task queues it may start on; the first is used when an event names none.
    pub task_queues: Vec<String>,
    /// Signal names its events may send (empty: any).
    pub signal_names: Vec<String>,
    /// Update names its events may send (empty: any).
    pub update_names: Vec<String>,
}

/// A configured adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BridgeAdapterRecord {
    pub namespace: String,
    /// The adapter key of the route, `[A-Za-z0-9._:-]+`.
    pub adapter: String,
    #[serde(flatten)]
    pub spec: AdapterSpec,
    pub created_at_ms: Millis,
    pub updated_at_ms: Millis,
}

/// Where an event goes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BridgeTarget {
    pub workflow_id: Option<String>,
    pub workflow_type: Option<String>,
    pub task_queue: Option<String>,
    pub business_key: Option<String>,
    pub signal_name: Option<String>,
    pub update_name: Option<String>,
    /// Starts only: `true` refuses an id that already has an open run
    /// (`instance_already_started`), `false` (default, `use_existing`) reports it as a
    /// duplicate start.
    pub reject_duplicate: bool,
}

/// One webhook event, validated.
#[derive(Debug, Clone)]
pub struct BridgeEvent {
    pub adapter: String,
    pub action: BridgeAction,
    pub idempotency_key: String,
    pub target: BridgeTarget,
    /// The arguments envelope handed to the workflow (start input, signal or update
    /// arguments).
    pub input: Value,
    /// Caller correlation, echoed back (an object or null).
    pub correlation: Value,
}

/// The outcome of an event: `accepted`, `duplicate` or `rejected`. Accepted outcomes are
/// stored under the event's idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BridgeOutcome {
    pub adapter: String,
    pub action: String,
    pub accepted: bool,
    /// `accepted`, `duplicate` or `rejected`.
    pub outcome: String,
    pub idempotency_key: String,
    pub reason: Option<String>,
    pub message: Option<String>,
    /// The redacted target summary (ids, type, names, queue, business key; never input).
    pub target: Value,
    pub correlation: Value,
    pub workflow_id: Option<String>,
    pub run_id: Option<String>,
    pub workflow_type: Option<String>,
    pub control_plane_outcome: Option<String>,
    /// The command key signals and updates were sent with.
    pub request_id: Option<String>,
    pub update_id: Option<String>,
    /// When the event was first accepted.
    pub recorded_at_ms: Millis,
}

impl BridgeOutcome {
    /// The answer to a resent event: the stored outcome, marked as a duplicate of it.
    fn as_duplicate(&self) -> BridgeOutcome {
        let mut d = self.clone();
        d.accepted = false;
        d.outcome = "duplicate".into();
        d.reason = Some(match self.action.as_str() {
            "start_workflow" => "duplicate_start".into(),
            _ => "duplicate_event".into(),
        });
        d.control_plane_outcome = Some(match self.action.as_str() {
            "start_workflow" => "returned_existing_active".into(),
            _ => "deduped_existing_command".into(),
        });
        d
    }
}

/// A refusal of an event, reported as a `rejected` outcome.
#[derive(Debug, Clone)]
pub struct BridgeRejection {
    pub reason: String,
    pub message: String,
}

/// The workflow id a start event without one gets: stable per adapter and key, so a
/// resent start finds its own run.
pub fn bridge_workflow_id(adapter: &str, idempotency_key: &str) -> String {
    let mut h = Sha256::new();
    h.update(adapter.as_bytes());
    h.update([0]);
    h.update(idempotency_key.as_bytes());
    let digest = h.finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("bridge-{adapter}-{hex}")
}

fn adapter_key(ns: &str, adapter: &str) -> Vec<u8> {
    Key::new(prefix::BRIDGE_ADAPTER)
        .str(ns)
        .str(adapter)
        .into_bytes()
}

fn adapters_range(ns: &str) -> KeyRange {
    Key::new(prefix::BRIDGE_ADAPTER).str(ns).range()
}

fn receipt_key(ns: &str, adapter: &str, idempotency_key: &str) -> Vec<u8> {
    Key::new(prefix::BRIDGE_RECEIPT)
        .str(ns)
        .str(adapter)
        .str(idempotency_key)
        .into_bytes()
}

fn adapter_not_found(ns: &str, adapter: &str) -> Error {
    Error::not_found(
        "adapter_not_found",
        format!("webhook bridge adapter '{adapter}' is not configured in namespace '{ns}'"),
    )
    .with("namespace", ns)
    .with("adapter", adapter)
}

fn target_summary(event: &BridgeEvent, workflow_id: Option<&str>) -> Value {
    let t = &event.target;
    let mut out = serde_json::Map::new();
    let mut put = |k: &str, v: Option<&str>| {
        if let Some(v) = v {
            out.insert(k.into(), json!(v));
        }
    };
    put("workflow_id", workflow_id.or(t.workflow_id.as_deref()));
    put("workflow_type", t.workflow_type.as_deref());
    put("task_queue", t.task_queue.as_deref());
    put("business_key", t.business_key.as_deref());
    put("signal_name", t.signal_name.as_deref());
    put("update_name", t.update_name.as_deref());
    Value::Object(out)
}

fn rejected(event: &BridgeEvent, reason: &str, message: String, now: Millis) -> BridgeOutcome {
    BridgeOutcome {
        adapter: event.adapter.clone(),
        action: event.action.as_str().into(),
        accepted: false,
        outcome: "rejected".into(),
        idempotency_key: event.idempotency_key.clone(),
        reason: Some(reason.into()),
        message: Some(message),
        target: target_summary(event, None),
        correlation: event.correlation.clone(),
        workflow_id: event.target.workflow_id.clone(),
        run_id: None,
        workflow_type: event.target.workflow_type.clone(),
        control_plane_outcome: Some(format!("rejected_{reason}")),
        request_id: None,
        update_id: None,
        recorded_at_ms: now,
    }
}

/// A refusal of the engine (a missing workflow, a closed run, an undeclared signal) as the
/// event's rejection; storage failures stay errors.
fn as_rejection(e: Error) -> std::result::Result<BridgeRejection, Error> {
    match e {
        Error::Rejected {
            kind,
            reason,
            message,
            ..
        } => Ok(BridgeRejection {
            reason: match (kind, reason) {
                (_, "instance_not_found" | "run_not_found") => "unknown_target".into(),
                (_, "duplicate_not_allowed") => "instance_already_started".into(),
                (_, r) => r.into(),
            },
            message,
        }),
        Error::Validation(errors) => Ok(BridgeRejection {
            reason: "malformed_payload".into(),
            message: errors
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.join(" ")))
                .collect::<Vec<_>>()
                .join("; "),
        }),
        other => Err(other),
    }
}

fn allowed(list: &[String], name: &str) -> bool {
    list.is_empty() || list.iter().any(|n| n == name)
}

impl Engine {
    /// The namespace's adapters in name order.
    pub async fn list_bridge_adapters(&self, ns: &str) -> Result<Vec<BridgeAdapterRecord>> {
        let mut txn = self.inner.store.begin().await?;
        kernel::require_namespace(txn.as_mut(), ns).await?;
        let pairs = txn
            .get_range(
                &adapters_range(ns),
                ReadOptions::limit(MAX_ADAPTERS).snapshot(),
            )
            .await?;
        let (records, _) = tables::assemble(pairs)?;
        records
            .into_iter()
            .map(|(_, b)| tables::decode_record(&b))
            .collect()
    }

    /// Reads one adapter; 404 `adapter_not_found`.
    pub async fn describe_bridge_adapter(
        &self,
        ns: &str,
        adapter: &str,
    ) -> Result<BridgeAdapterRecord> {
        let mut txn = self.inner.store.begin().await?;
        kernel::require_namespace(txn.as_mut(), ns).await?;
        tables::get_snapshot(txn.as_mut(), &adapter_key(ns, adapter))
            .await?
            .ok_or_else(|| adapter_not_found(ns, adapter))
    }

    /// Creates or replaces an adapter's configuration; returns it and whether it is new.
    /// 422 `adapter_limit_reached` beyond [`MAX_ADAPTERS`].
    pub async fn put_bridge_adapter(
        &self,
        ns: &str,
        adapter: &str,
        spec: AdapterSpec,
    ) -> Result<(BridgeAdapterRecord, bool)> {
        let now = self.now_ms();
        let spec = &spec;
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                kernel::require_namespace(txn, ns).await?;
                let key = adapter_key(ns, adapter);
                let existing = tables::get::<BridgeAdapterRecord>(txn, &key).await?;
                if existing.is_none() {
                    let count = txn
                        .get_range(&adapters_range(ns), ReadOptions::limit(MAX_ADAPTERS))
                        .await?
                        .len();
                    if count >= MAX_ADAPTERS {
                        return Err(Error::reject(
                            crate::error::RejectKind::Invalid,
                            "adapter_limit_reached",
                            format!(
                                "a namespace configures at most {MAX_ADAPTERS} bridge adapters"
                            ),
                        )
                        .with("limit", MAX_ADAPTERS as u64));
                    }
                }
                let record = BridgeAdapterRecord {
                    namespace: ns.to_string(),
                    adapter: adapter.to_string(),
                    spec: spec.clone(),
                    created_at_ms: existing.as_ref().map_or(now, |e| e.created_at_ms),
                    updated_at_ms: now,
                };
                tables::put(txn, &key, &record)?;
                Ok((record, existing.is_none()))
            })
        })
        .await
    }

    /// Removes an adapter; its stored receipts stay (a later adapter of the same name
    /// still answers their resends as duplicates). 404 `adapter_not_found`.
    pub async fn delete_bridge_adapter(&self, ns: &str, adapter: &str) -> Result<()> {
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                kernel::require_namespace(txn, ns).await?;
                let key = adapter_key(ns, adapter);
                if tables::get::<BridgeAdapterRecord>(txn, &key)
                    .await?
                    .is_none()
                {
                    return Err(adapter_not_found(ns, adapter));
                }
                tables::delete(txn, &key).await?;
                Ok(())
            })
        })
        .await
    }

    /// Takes one webhook event: a resent key gets its stored outcome back as a duplicate;
    /// an unknown or disabled adapter, an action or target outside its configuration, or
    /// a refusal of the workflow engine is a `rejected` outcome (not stored, so the
    /// sender may retry once the cause is fixed); otherwise the action is applied and its
    /// `accepted` outcome stored.
    pub async fn bridge_webhook(&self, ns: &str, event: &BridgeEvent) -> Result<BridgeOutcome> {
        let now = self.now_ms();
        let rkey = receipt_key(ns, &event.adapter, &event.idempotency_key);
        let config = {
            let mut txn = self.inner.store.begin().await?;
            kernel::require_namespace(txn.as_mut(), ns).await?;
            if let Some(stored) = tables::get_snapshot::<BridgeOutcome>(txn.as_mut(), &rkey).await?
            {
                return Ok(stored.as_duplicate());
            }
            tables::get_snapshot::<BridgeAdapterRecord>(
                txn.as_mut(),
                &adapter_key(ns, &event.adapter),
            )
            .await?
        };
        let Some(config) = config.filter(|c| c.spec.enabled) else {
            return Ok(rejected(
                event,
                "adapter_unavailable",
                format!(
                    "webhook bridge adapter '{}' is not configured (or is disabled) in namespace '{ns}'",
                    event.adapter
                ),
                now,
            ));
        };
        if !config.spec.actions.contains(&event.action) {
            return Ok(rejected(
                event,
                "unsupported_action",
                format!(
                    "adapter '{}' may not {}",
                    event.adapter,
                    event.action.as_str()
                ),
                now,
            ));
        }
        let applied = match event.action {
            BridgeAction::StartWorkflow => {
                self.bridge_start(ns, &config.spec, event, &rkey).await?
            }
            BridgeAction::SignalWorkflow | BridgeAction::UpdateWorkflow => {
                self.bridge_message(ns, &config.spec, event, &rkey).await?
            }
        };
        Ok(match applied {
            Ok(outcome) => outcome,
            Err(r) => rejected(event, &r.reason, r.message, now),
        })
    }

    /// A start event, applied together with its receipt in one transaction.
    async fn bridge_start(
        &self,
        ns: &str,
        spec: &AdapterSpec,
        event: &BridgeEvent,
        rkey: &[u8],
    ) -> Result<std::result::Result<BridgeOutcome, BridgeRejection>> {
        let t = &event.target;
        let workflow_type = t.workflow_type.clone().unwrap_or_default();
        if !spec.workflow_types.contains(&workflow_type) {
            return Ok(Err(BridgeRejection {
                reason: "unknown_target".into(),
                message: format!(
                    "adapter '{}' is not configured to start workflow type '{workflow_type}'",
                    event.adapter
                ),
            }));
        }
        let Some(task_queue) = t
            .task_queue
            .clone()
            .or_else(|| spec.task_queues.first().cloned())
        else {
            return Ok(Err(BridgeRejection {
                reason: "unknown_target".into(),
                message: format!("adapter '{}' has no task queue to start on", event.adapter),
            }));
        };
        if !spec.task_queues.contains(&task_queue) {
            return Ok(Err(BridgeRejection {
                reason: "unknown_target".into(),
                message: format!(
                    "adapter '{}' is not configured to start on task queue '{task_queue}'",
                    event.adapter
                ),
            }));
        }
        let now = self.now_ms();
        let run_id = ids::new_id(now);
        let workflow_id = t
            .workflow_id
            .clone()
            .unwrap_or_else(|| bridge_workflow_id(&event.adapter, &event.idempotency_key));
        let request = StartWorkflow {
            workflow_id: Some(workflow_id.clone()),
            workflow_type: workflow_type.clone(),
            task_queue: task_queue.clone(),
            input: event.input.clone(),
            execution_timeout_seconds: None,
            run_timeout_seconds: None,
            duplicate_policy: if t.reject_duplicate {
                DuplicatePolicy::Fail
            } else {
                DuplicatePolicy::UseExisting
            },
            memo: json!({}),
            search_attributes: json!({}),
            priority: 5,
            build_id: None,
        };
        let mut summary_event = event.clone();
        summary_event.target.task_queue = Some(task_queue);
        let (request, run_id, workflow_id, summary_event) =
            (&request, &run_id, &workflow_id, &summary_event);
        let result = self
            .transact(move |tx| {
                Box::pin(async move {
                    let txn = tx.txn.as_mut();
                    let fx = &mut tx.fx;
                    if let Some(stored) = tables::get::<BridgeOutcome>(txn, rkey).await? {
                        // A concurrent delivery of the same event won.
                        return Ok(stored.as_duplicate());
                    }
                    let started =
                        start_in_txn(txn, ns, request, workflow_id, run_id, now, fx).await?;
                    let mut outcome = BridgeOutcome {
                        adapter: summary_event.adapter.clone(),
                        action: summary_event.action.as_str().into(),
                        accepted: started.started_new,
                        outcome: if started.started_new {
                            "accepted".into()
                        } else {
                            "duplicate".into()
                        },
                        idempotency_key: summary_event.idempotency_key.clone(),
                        reason: None,
                        message: None,
                        target: target_summary(summary_event, Some(workflow_id)),
                        correlation: summary_event.correlation.clone(),
                        workflow_id: Some(started.run.workflow_id.clone()),
                        run_id: Some(started.run.run_id.clone()),
                        workflow_type: Some(started.run.workflow_type.clone()),
                        control_plane_outcome: Some(if started.started_new {
                            "started_new".into()
                        } else {
                            "returned_existing_active".into()
                        }),
                        request_id: None,
                        update_id: None,
                        recorded_at_ms: now,
                    };
                    if !started.started_new {
                        outcome.reason = Some("duplicate_start".into());
                    }
                    tables::put(txn, rkey, &outcome)?;
                    Ok(outcome)
                })
            })
            .await;
        match result {
            Ok(outcome) => Ok(Ok(outcome)),
            Err(e) => as_rejection(e).map(Err),
        }
    }

    /// A signal or update event: sent with the command key `bridge:{adapter}:{key}`, so a
    /// resend after a crash before the receipt is deduplicated by the workflow engine's
    /// own command receipts; the outcome is stored afterwards.
    async fn bridge_message(
        &self,
        ns: &str,
        spec: &AdapterSpec,
        event: &BridgeEvent,
        rkey: &[u8],
    ) -> Result<std::result::Result<BridgeOutcome, BridgeRejection>> {
        let t = &event.target;
        let workflow_id = t.workflow_id.clone().unwrap_or_default();
        let (name, names) = match event.action {
            BridgeAction::SignalWorkflow => (t.signal_name.clone(), &spec.signal_names),
            _ => (t.update_name.clone(), &spec.update_names),
        };
        let name = name.unwrap_or_default();
        if !allowed(names, &name) {
            return Ok(Err(BridgeRejection {
                reason: "unknown_target".into(),
                message: format!(
                    "adapter '{}' is not configured to send '{name}'",
                    event.adapter
                ),
            }));
        }
        let view = match self.describe(ns, &workflow_id, None).await {
            Ok(v) => v,
            Err(e) => return as_rejection(e).map(Err),
        };
        if !spec.workflow_types.contains(&view.run.workflow_type) {
            return Ok(Err(BridgeRejection {
                reason: "unknown_target".into(),
                message: format!(
                    "adapter '{}' is not configured for workflows of type '{}'",
                    event.adapter, view.run.workflow_type
                ),
            }));
        }
        let request_id = format!("bridge:{}:{}", event.adapter, event.idempotency_key);
        let mut update_id = None;
        let run_id = match event.action {
            BridgeAction::SignalWorkflow => {
                let receipt = self
                    .signal_workflow(
                        ns,
                        &SignalRequest {
                            workflow_id: workflow_id.clone(),
                            run_id: None,
                            signal_name: name.clone(),
                            input: event.input.clone(),
                            request_id: Some(request_id.clone()),
                        },
                    )
                    .await;
                match receipt {
                    Ok(r) => r
                        .get("run_id")
                        .and_then(Value::as_str)
                        .map_or_else(|| view.run.run_id.clone(), str::to_string),
                    Err(e) => return as_rejection(e).map(Err),
                }
            }
            _ => {
                let outcome = self
                    .update_workflow(
                        ns,
                        &UpdateRequest {
                            workflow_id: workflow_id.clone(),
                            run_id: None,
                            update_name: name.clone(),
                            input: event.input.clone(),
                            request_id: Some(request_id.clone()),
                            wait_for: UpdateWait::Accepted,
                            wait_timeout: Duration::ZERO,
                        },
                    )
                    .await;
                match outcome {
                    Ok(o) => {
                        update_id = Some(o.update.update_id.clone());
                        o.update.run_id.clone()
                    }
                    Err(e) => return as_rejection(e).map(Err),
                }
            }
        };
        let now = self.now_ms();
        let outcome = BridgeOutcome {
            adapter: event.adapter.clone(),
            action: event.action.as_str().into(),
            accepted: true,
            outcome: "accepted".into(),
            idempotency_key: event.idempotency_key.clone(),
            reason: None,
            message: None,
            target: target_summary(event, Some(&workflow_id)),
            correlation: event.correlation.clone(),
            workflow_id: Some(workflow_id),
            run_id: Some(run_id),
            workflow_type: Some(view.run.workflow_type.clone()),
            control_plane_outcome: Some(match event.action {
                BridgeAction::SignalWorkflow => "signal_received".into(),
                _ => "update_accepted".into(),
            }),
            request_id: Some(request_id),
            update_id,
            recorded_at_ms: now,
        };
        let outcome = &outcome;
        let stored = self
            .transact(move |tx| {
                Box::pin(async move {
                    let txn = tx.txn.as_mut();
                    if let Some(stored) = tables::get::<BridgeOutcome>(txn, rkey).await? {
                        return Ok(stored.as_duplicate());
                    }
                    tables::put(txn, rkey, outcome)?;
                    Ok(outcome.clone())
                })
            })
            .await?;
        Ok(Ok(stored))
    }
}
