//! The engine's external payload operations: policy validation, upload, fetch, the
//! round-trip test, and the verification history export relies on.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::blobs::{self, Unresolvable};
use super::{
    payload_error, payload_key, valid_reference_id, Location, PayloadRecord, Policy, CODECS,
    COMPLETION_SCHEMA, MAX_PAYLOAD_BYTES, PREPARED_COMPLETION_SCHEMA,
};
use crate::error::{Error, RejectKind, Result};
use crate::kernel::Engine;
use crate::model::{TaskKind, TaskRecord, TaskStatus};
use crate::tables;

/// One upload, as the transport's headers declare it.
#[derive(Debug)]
pub struct Upload {
    /// `X-Durable-Workflow-Payload-Codec`.
    pub codec: String,
    /// `X-Durable-Workflow-Payload-Size`.
    pub declared_size: u64,
    /// `X-Durable-Workflow-Payload-SHA256` (lowercase hex).
    pub declared_sha256: String,
    /// The body: the encoded payload text's bytes.
    pub bytes: Vec<u8>,
    /// The completion this upload belongs to, when the uploader sent one (it may then
    /// pass while storage is draining).
    pub completion: Option<CompletionContext>,
}

/// `X-Durable-Workflow-Payload-Completion`: the leased task whose completion needs this
/// upload.
#[derive(Debug, Clone)]
pub struct CompletionContext {
    /// `workflow`, `activity` or `query`.
    pub kind: String,
    pub task_id: String,
    pub lease_owner: String,
    /// The workflow task attempt (an integer), or the activity attempt id (a string).
    pub attempt: Value,
}

impl CompletionContext {
    /// Parses the header's JSON; `None` when it is not a completion context.
    pub fn parse(header: &str) -> Option<CompletionContext> {
        let v: Value = serde_json::from_str(header).ok()?;
        let schema = v.get("schema")?.as_str()?;
        if schema != COMPLETION_SCHEMA && schema != PREPARED_COMPLETION_SCHEMA {
            return None;
        }
        Some(CompletionContext {
            kind: v.get("kind")?.as_str()?.to_string(),
            task_id: v.get("task_id")?.as_str()?.to_string(),
            lease_owner: v.get("lease_owner")?.as_str()?.to_string(),
            attempt: v.get("attempt").cloned().unwrap_or(Value::Null),
        })
    }
}

/// One step of `POST /api/storage/test`.
#[derive(Debug, Clone, Serialize)]
pub struct StorageTestStep {
    /// `passed` or `failed`.
    pub status: &'static str,
    /// Payload length.
    pub bytes: usize,
    /// SHA-256 of what was written.
    pub sha256: String,
    /// Where it was written.
    pub reference_uri: Option<String>,
    /// What each stage did: `write`, `read`, `verify`, `delete`.
    pub steps: Vec<Value>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

/// What `POST /api/storage/test` reports.
#[derive(Debug, Clone, Serialize)]
pub struct StorageTestReport {
    /// `passed` when both payloads round-tripped.
    pub status: &'static str,
    pub namespace: String,
    pub driver: String,
    pub small_payload: StorageTestStep,
    pub large_payload: StorageTestStep,
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn unavailable(reference_id: Option<&str>, message: impl Into<String>) -> Error {
    payload_error(
        RejectKind::Unavailable,
        "external_payload_unavailable",
        true,
        reference_id,
        message,
    )
}

fn unsupported(reference_id: Option<&str>, message: impl Into<String>) -> Error {
    payload_error(
        RejectKind::Invalid,
        "external_payload_unsupported",
        false,
        reference_id,
        message,
    )
}

fn integrity(reference_id: Option<&str>, message: impl Into<String>) -> Error {
    payload_error(
        RejectKind::Invalid,
        "external_payload_integrity_mismatch",
        false,
        reference_id,
        message,
    )
}

fn not_found(reference_id: &str, message: impl Into<String>) -> Error {
    payload_error(
        RejectKind::NotFound,
        "external_payload_not_found",
        false,
        Some(reference_id),
        message,
    )
}

fn no_disk(reference_id: Option<&str>, e: Unresolvable) -> Error {
    let Unresolvable::NoDisk(why) = e;
    unavailable(
        reference_id,
        format!("the payload's storage provider is not available on this server: {why}"),
    )
}

/// Runs blocking filesystem work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
}

impl Engine {
    /// The namespace's external payload storage policy (`None` when it has none).
    pub async fn payload_policy(&self, ns: &str) -> Result<Option<Policy>> {
        let record = self.describe_namespace(ns).await?;
        Ok(Policy::from_record(
            record.external_payload_storage.as_ref(),
        ))
    }

    /// 422 with field errors when `policy` could not work on this server (an unknown
    /// driver, a disk or directory the server does not have, a bad bucket or prefix).
    pub fn validate_payload_policy(&self, policy: &Policy) -> Result<()> {
        let errors = super::policy_errors(policy, &self.config().payloads);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Validation(errors))
        }
    }

    /// Whether the namespace's policy can store payloads now: `available`, `disabled`
    /// (no policy, or switched off) or `unavailable` (its disk is not on this server).
    pub fn payload_status(&self, policy: Option<&Policy>) -> &'static str {
        match policy {
            Some(p) if p.enabled => {
                if blobs::root(&self.config().payloads, &p.location()).is_ok() {
                    "available"
                } else {
                    "unavailable"
                }
            }
            _ => "disabled",
        }
    }

    /// The object URI a policy gives `reference_id` (for discovery and describe).
    pub fn payload_uri(&self, location: &Location, reference_id: &str) -> String {
        location.uri(&self.config().payloads, reference_id)
    }

    /// Stores one uploaded payload and returns its record, once the blob is durable and
    /// the record committed. See [`Upload`] for what is checked.
    pub async fn upload_payload(&self, ns: &str, up: Upload) -> Result<PayloadRecord> {
        let policy = self
            .payload_policy(ns)
            .await?
            .filter(|p| p.enabled)
            .ok_or_else(|| {
                unsupported(
                    None,
                    format!(
                        "namespace '{ns}' has no enabled external payload storage policy \
                     (PUT /api/namespaces/{ns}/external-storage)"
                    ),
                )
            })?;
        if !CODECS.contains(&up.codec.as_str()) {
            return Err(unsupported(
                None,
                format!(
                    "payload codec '{}' is not supported; use one of: {}",
                    up.codec,
                    CODECS.join(", ")
                ),
            ));
        }
        if up.bytes.len() > MAX_PAYLOAD_BYTES {
            return Err(payload_error(
                RejectKind::TooLarge,
                "external_payload_oversized",
                false,
                None,
                format!("the payload exceeds the transport limit of {MAX_PAYLOAD_BYTES} bytes"),
            )
            .with("max_payload_bytes", MAX_PAYLOAD_BYTES));
        }
        if up.declared_size != up.bytes.len() as u64 {
            return Err(integrity(
                None,
                format!(
                    "X-Durable-Workflow-Payload-Size says {} bytes; the body has {}",
                    up.declared_size,
                    up.bytes.len()
                ),
            ));
        }
        let sha256 = sha256_hex(&up.bytes);
        if sha256 != up.declared_sha256 {
            return Err(integrity(
                None,
                "X-Durable-Workflow-Payload-SHA256 does not match the uploaded bytes",
            ));
        }
        let stores = self.config().payloads.clone();
        let location = policy.location();
        let root = blobs::root(&stores, &location).map_err(|e| no_disk(None, e))?;
        if stores.reserve_bytes > 0 {
            let probe = root.clone();
            let free = blocking(move || blobs::free_bytes(&probe))
                .await
                .map_err(|e| unavailable(None, format!("the payload disk cannot be read: {e}")))?;
            if free < stores.reserve_bytes.saturating_add(up.bytes.len() as u64) {
                self.admit_completion_under_pressure(ns, up.completion.as_ref(), free)
                    .await?;
            }
        }
        let now = self.now_ms();
        let reference_id = format!("ep_{}", crate::ids::new_id(now));
        let path =
            blobs::object_path(&stores, &location, &reference_id).map_err(|e| no_disk(None, e))?;
        let bytes = up.bytes;
        let size_bytes = bytes.len() as u64;
        blocking(move || blobs::write_durably(&path, &bytes))
            .await
            .map_err(|e| {
                if e.raw_os_error() == Some(28) {
                    storage_pressure(0)
                } else {
                    unavailable(None, format!("the payload could not be written: {e}"))
                }
            })?;
        let record = PayloadRecord {
            uri: location.uri(&stores, &reference_id),
            reference_id,
            codec: up.codec,
            size_bytes,
            sha256,
            location,
            created_at_ms: now,
        };
        let rec = &record;
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                tables::put(txn, &payload_key(ns, &rec.reference_id), rec)?;
                Ok(())
            })
        })
        .await?;
        tracing::debug!(namespace = ns, reference_id = %record.reference_id, size_bytes, "external payload stored");
        Ok(record)
    }

    /// Under storage pressure only an upload completing a task leased now may pass: its
    /// context must name a task of this namespace that `lease_owner` holds.
    async fn admit_completion_under_pressure(
        &self,
        ns: &str,
        completion: Option<&CompletionContext>,
        free: u64,
    ) -> Result<()> {
        let Some(ctx) = completion else {
            return Err(storage_pressure(free));
        };
        let kind = match ctx.kind.as_str() {
            "workflow" => TaskKind::Workflow,
            "activity" => TaskKind::Activity,
            _ => return Err(storage_pressure(free)),
        };
        let mut txn = self.inner.store.begin().await?;
        let task =
            tables::get_snapshot::<TaskRecord>(txn.as_mut(), &tables::task_key(&ctx.task_id))
                .await?;
        let held = task.is_some_and(|t| {
            t.namespace == ns
                && t.kind == kind
                && t.status == TaskStatus::Leased
                && t.lease.as_ref().is_some_and(|l| l.owner == ctx.lease_owner)
                && (kind != TaskKind::Workflow
                    || ctx.attempt.as_u64() == Some(u64::from(t.attempt)))
        });
        if held {
            Ok(())
        } else {
            Err(storage_pressure(free))
        }
    }

    /// Reads a stored payload and verifies it against its record: the named failure when
    /// the record or blob is missing, the blob's location is outside the namespace's
    /// configured storage, its provider is not on this server, or its bytes changed.
    pub async fn fetch_payload(
        &self,
        ns: &str,
        reference_id: &str,
    ) -> Result<(PayloadRecord, Vec<u8>)> {
        if !valid_reference_id(reference_id) {
            return Err(not_found(
                reference_id,
                "not a runtime external payload reference id (ep_ and 26 Crockford base32 characters)",
            ));
        }
        let mut txn = self.inner.store.begin().await?;
        let record =
            tables::get_snapshot::<PayloadRecord>(txn.as_mut(), &payload_key(ns, reference_id))
                .await?
                .ok_or_else(|| {
                    not_found(
                        reference_id,
                        format!("no external payload '{reference_id}' in namespace '{ns}'"),
                    )
                })?;
        drop(txn);
        let policy = self.payload_policy(ns).await?.ok_or_else(|| {
            unavailable(
                Some(reference_id),
                format!("namespace '{ns}' has no external payload storage provider configured"),
            )
        })?;
        if record.location != policy.location() {
            return Err(payload_error(
                RejectKind::Forbidden,
                "external_payload_unauthorized",
                false,
                Some(reference_id),
                format!(
                    "payload '{reference_id}' lives at {} outside the namespace's configured \
                     storage (driver {}, bucket {}, prefix '{}')",
                    record.uri,
                    policy.driver,
                    policy.bucket().unwrap_or("-"),
                    policy.prefix()
                ),
            ));
        }
        let path = blobs::object_path(&self.config().payloads, &record.location, reference_id)
            .map_err(|e| no_disk(Some(reference_id), e))?;
        let bytes = match blocking(move || std::fs::read(path)).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(not_found(
                    reference_id,
                    format!(
                        "the blob of payload '{reference_id}' is missing from {}",
                        record.uri
                    ),
                ))
            }
            Err(e) => {
                return Err(unavailable(
                    Some(reference_id),
                    format!("the blob of payload '{reference_id}' cannot be read: {e}"),
                ))
            }
        };
        if bytes.len() as u64 != record.size_bytes || sha256_hex(&bytes) != record.sha256 {
            return Err(integrity(
                Some(reference_id),
                format!(
                    "the blob of payload '{reference_id}' at {} no longer matches its recorded \
                     size and SHA-256",
                    record.uri
                ),
            ));
        }
        Ok((record, bytes))
    }

    /// Resolves every runtime reference in `value` (each fetched and verified once) and
    /// returns the blobs by reference id. Fails with the first reference's named failure.
    pub async fn resolve_payloads(
        &self,
        ns: &str,
        value: &Value,
    ) -> Result<BTreeMap<String, (PayloadRecord, Vec<u8>)>> {
        let mut out = BTreeMap::new();
        for id in crate::history::payload_references(value) {
            if out.contains_key(&id) {
                continue;
            }
            let found = self.fetch_payload(ns, &id).await?;
            out.insert(id, found);
        }
        Ok(out)
    }

    /// Checks the runtime references a request carries before it is accepted: each must
    /// be exactly `{codec, external_payload}` around a well-formed reference to a payload
    /// stored in this namespace with the same codec, size and SHA-256.
    pub async fn check_payload_references(&self, ns: &str, body: &Value) -> Result<()> {
        let mut envelopes = Vec::new();
        collect_envelopes(body, &mut envelopes);
        if envelopes.is_empty() {
            return Ok(());
        }
        let mut txn = self.inner.store.begin().await?;
        for env in envelopes {
            let reference = env.get("external_payload");
            let id = reference
                .and_then(|r| r.get("reference_id"))
                .and_then(Value::as_str);
            let well_formed = env.as_object().is_some_and(|m| m.len() == 2)
                && reference.and_then(Value::as_object).is_some_and(|r| {
                    r.len() == 5
                        && r.get("schema").and_then(Value::as_str) == Some(super::REFERENCE_SCHEMA)
                        && r.get("codec") == env.get("codec")
                        && r.get("size_bytes").is_some_and(Value::is_u64)
                        && r.get("sha256").and_then(Value::as_str).is_some()
                })
                && id.is_some_and(valid_reference_id);
            if !well_formed {
                return Err(unsupported(
                    id,
                    "an external payload envelope must be exactly {codec, external_payload} \
                     holding {schema, reference_id, codec, size_bytes, sha256}",
                ));
            }
            let id = id.expect("invariant: checked above");
            let record =
                tables::get_snapshot::<PayloadRecord>(txn.as_mut(), &payload_key(ns, id)).await?;
            let Some(record) = record else {
                return Err(not_found(
                    id,
                    format!("no external payload '{id}' in namespace '{ns}'; upload it first"),
                ));
            };
            let r = reference.expect("invariant: checked above");
            if r.get("codec").and_then(Value::as_str) != Some(record.codec.as_str())
                || r.get("size_bytes").and_then(Value::as_u64) != Some(record.size_bytes)
                || r.get("sha256").and_then(Value::as_str) != Some(record.sha256.as_str())
            {
                return Err(integrity(
                    Some(id),
                    format!("reference '{id}' does not match the stored payload's codec, size or SHA-256"),
                ));
            }
        }
        Ok(())
    }

    /// Round-trips a small and a large payload through the namespace's policy (or the
    /// given driver with the policy's settings) and reports each step; the test blobs are
    /// deleted afterwards and never get a record.
    pub async fn storage_test(
        &self,
        ns: &str,
        driver: Option<&str>,
        small: usize,
        large: usize,
    ) -> Result<StorageTestReport> {
        let mut policy = self.payload_policy(ns).await?.unwrap_or(Policy {
            driver: "local".into(),
            enabled: true,
            threshold_bytes: super::DEFAULT_THRESHOLD_BYTES,
            config: BTreeMap::new(),
        });
        if let Some(d) = driver {
            policy.driver = d.to_string();
        }
        policy.enabled = true;
        self.validate_payload_policy(&policy)?;
        let stores = self.config().payloads.clone();
        let location = policy.location();
        let mut steps = Vec::new();
        for size in [small, large] {
            steps.push(round_trip(&stores, &location, size, self.now_ms()).await);
        }
        let large_payload = steps.pop().expect("invariant: two steps");
        let small_payload = steps.pop().expect("invariant: two steps");
        Ok(StorageTestReport {
            status: if small_payload.status == "passed" && large_payload.status == "passed" {
                "passed"
            } else {
                "failed"
            },
            namespace: ns.to_string(),
            driver: policy.driver,
            small_payload,
            large_payload,
        })
    }
}

fn storage_pressure(free: u64) -> Error {
    Error::reject(
        RejectKind::Unavailable,
        "storage_pressure",
        "the payload disk is low on space: new payloads are refused, except those completing \
         a leased task (send X-Durable-Workflow-Payload-Completion)",
    )
    .with("storage_state", "draining")
    .with("retryable", true)
    .with("free_bytes", free)
    .with("retry_after_seconds", 1)
}

/// Objects holding an `external_payload` member, anywhere in `value`.
fn collect_envelopes<'v>(value: &'v Value, out: &mut Vec<&'v Value>) {
    match value {
        Value::Object(map) => {
            if map.contains_key("external_payload") {
                out.push(value);
            }
            for v in map.values() {
                collect_envelopes(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_envelopes(v, out)),
        _ => {}
    }
}

/// Writes, reads back, verifies and deletes one test payload of `size` bytes.
async fn round_trip(
    stores: &super::PayloadStores,
    location: &Location,
    size: usize,
    now: i64,
) -> StorageTestStep {
    let bytes: Vec<u8> = (0..size).map(|i| b'A' + (i % 26) as u8).collect();
    let sha256 = sha256_hex(&bytes);
    let id = format!("ep_{}", crate::ids::new_id(now));
    let test_location = Location {
        prefix: if location.prefix.is_empty() {
            ".keel-storage-test".into()
        } else {
            format!("{}/.keel-storage-test", location.prefix)
        },
        ..location.clone()
    };
    let uri = test_location.uri(stores, &id);
    let mut step = StorageTestStep {
        status: "failed",
        bytes: size,
        sha256: sha256.clone(),
        reference_uri: Some(uri),
        steps: Vec::new(),
        error: None,
    };
    let path = match blobs::object_path(stores, &test_location, &id) {
        Ok(p) => p,
        Err(Unresolvable::NoDisk(why)) => {
            step.error = Some(serde_json::json!({"stage": "resolve", "message": why}));
            return step;
        }
    };
    let started = std::time::Instant::now();
    let (p, b) = (path.clone(), bytes.clone());
    if let Err(e) = blocking(move || blobs::write_durably(&p, &b)).await {
        step.steps.push(
            serde_json::json!({"stage": "write", "status": "failed", "message": e.to_string()}),
        );
        step.error = Some(serde_json::json!({"stage": "write", "message": e.to_string()}));
        return step;
    }
    step.steps.push(serde_json::json!({"stage": "write", "status": "passed", "durable": true, "elapsed_ms": started.elapsed().as_millis() as u64}));
    let p = path.clone();
    let read = blocking(move || std::fs::read(p)).await;
    match read {
        Ok(back) => {
            step.steps.push(
                serde_json::json!({"stage": "read", "status": "passed", "bytes": back.len()}),
            );
            let ok = back.len() == size && sha256_hex(&back) == sha256;
            step.steps.push(
                serde_json::json!({"stage": "verify", "status": if ok {"passed"} else {"failed"}}),
            );
            if ok {
                step.status = "passed";
            } else {
                step.error = Some(
                    serde_json::json!({"stage": "verify", "reason": "external_payload_integrity_mismatch"}),
                );
            }
        }
        Err(e) => {
            step.steps.push(
                serde_json::json!({"stage": "read", "status": "failed", "message": e.to_string()}),
            );
            step.error = Some(serde_json::json!({"stage": "read", "message": e.to_string()}));
        }
    }
    let p = path.clone();
    match blocking(move || std::fs::remove_file(p)).await {
        Ok(()) => step
            .steps
            .push(serde_json::json!({"stage": "delete", "status": "passed"})),
        Err(e) => {
            step.status = "failed";
            step.steps.push(serde_json::json!({"stage": "delete", "status": "failed", "message": e.to_string()}));
        }
    }
    step
}

impl Engine {
    /// Keeps the payloads `value` references for as long as `holder` may use them: a use
    /// that no run's deletion releases. For references held outside any run's history,
    /// such as a schedule's action input, which every fire copies into a new run.
    pub async fn pin_payload_references(
        &self,
        ns: &str,
        value: &Value,
        holder: &str,
    ) -> Result<()> {
        let ids = crate::history::payload_references(value);
        if ids.is_empty() {
            return Ok(());
        }
        let (ids, holder) = (&ids, &format!("pinned:{holder}"));
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                for id in ids {
                    txn.set(&crate::history::payload_use_key(ns, id, holder), b"");
                }
                Ok(())
            })
        })
        .await
    }
}
