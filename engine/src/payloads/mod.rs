//! External payload storage: a namespace's storage policy (driver, threshold, where blobs
//! live), the blob stores behind the drivers, and the runtime-mediated transport's records.
//!
//! **Drivers.** `local` keeps blobs in the directory the operator gave the server
//! (`keel serve --payload-dir`). `s3`, `gcs` and `azure` keep them on a filesystem disk the
//! operator configured by name (`--payload-disk NAME=DIR`), under `DIR/<bucket>/<prefix>`,
//! and name them with the provider's URI scheme (`s3://bucket/prefix/object`): the layout
//! an object store would have, on a disk the server can fsync.
//!
//! **Records.** An upload writes the blob (fsynced, then its directory) and then commits a
//! [`PayloadRecord`] under `(namespace, reference_id)`; the reference is acknowledged only
//! after both. History stores the reference envelope; every event that holds one indexes
//! it per run (`history::append`), and retention deletes a blob with the last run whose
//! history references it ([`release_run`]).
//!
//! **Reads fail loudly.** A reference whose record is gone, whose blob is missing, whose
//! bytes no longer hash to the recorded SHA-256, whose location is outside the namespace's
//! configured driver/bucket/prefix, or whose disk this server does not have, is refused
//! with its own `external_payload_*` reason; nothing is ever replaced by null.

mod blobs;
mod service;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Millis;
use crate::error::{Error, RejectKind, Result};
use crate::keys::{prefix, Key, KeyReader};
use crate::storage::{KvTxn, ReadOptions};
use crate::tables;

pub use crate::kernel::PayloadStores;
pub use service::{CompletionContext, StorageTestReport, StorageTestStep, Upload};

/// Schema of the runtime transport manifest.
pub const TRANSPORT_SCHEMA: &str = "durable-workflow.v2.runtime-external-payload-transport.v1";
/// Schema of a runtime reference.
pub const REFERENCE_SCHEMA: &str = "durable-workflow.v2.runtime-external-payload-reference.v1";
/// Schema of an upload reply.
pub const UPLOAD_SCHEMA: &str = "durable-workflow.v2.runtime-external-payload-upload.v1";
/// Schema of the completion context an upload may carry under storage pressure.
pub const COMPLETION_SCHEMA: &str = "durable-workflow.v2.payload-completion-context.v1";
/// Its prepared (local-activity) form.
pub const PREPARED_COMPLETION_SCHEMA: &str = "durable-workflow.v2.payload-completion-context.v2";
/// The header carrying a completion context.
pub const COMPLETION_HEADER: &str = "X-Durable-Workflow-Payload-Completion";
/// Largest blob the transport accepts (the upload body limit).
pub const MAX_PAYLOAD_BYTES: usize = 10 * 1024 * 1024;
/// The threshold a policy gets when it names none (bytes of encoded payload text).
pub const DEFAULT_THRESHOLD_BYTES: u64 = 256 * 1024;
/// How long one transfer may take, as advertised to clients.
pub const REQUEST_TIMEOUT_SECONDS: u64 = 30;
/// Most payload references one run's deletion releases (a history holds far fewer).
const MAX_RUN_REFERENCES: usize = 100_000;
/// Codecs a stored payload may declare.
pub const CODECS: &[&str] = &["avro", "json"];
/// Drivers a policy may name.
pub const DRIVERS: &[&str] = &["local", "s3", "gcs", "azure"];

/// A namespace's storage policy, as validated and stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// One of [`DRIVERS`].
    pub driver: String,
    /// Whether payloads above the threshold are offloaded.
    pub enabled: bool,
    /// Encoded payloads longer than this travel by reference.
    pub threshold_bytes: u64,
    /// Driver settings: `disk`, `bucket`, `prefix` (and informational keys).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

impl Policy {
    /// The policy stored on a namespace record, if it parses.
    pub fn from_record(stored: Option<&Value>) -> Option<Policy> {
        let v = stored?;
        let driver = v.get("driver")?.as_str()?.to_string();
        let enabled = v.get("enabled").and_then(Value::as_bool).unwrap_or(true);
        let threshold_bytes = v
            .get("threshold_bytes")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_THRESHOLD_BYTES);
        let config = v
            .get("config")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Some(Policy {
            driver,
            enabled,
            threshold_bytes,
            config,
        })
    }

    /// The object prefix, without leading or trailing slashes ("" for none).
    pub fn prefix(&self) -> String {
        self.config
            .get("prefix")
            .map(|p| p.trim_matches('/').to_string())
            .unwrap_or_default()
    }

    /// The bucket (container, for `azure`) of an object-store driver.
    pub fn bucket(&self) -> Option<&str> {
        self.config.get("bucket").map(String::as_str)
    }

    /// The disk backing an object-store driver.
    pub fn disk(&self) -> Option<&str> {
        self.config.get("disk").map(String::as_str)
    }

    /// Where this policy puts blobs: the location every record it writes carries, and
    /// every read compares with.
    pub fn location(&self) -> Location {
        let object_store = self.driver != "local";
        Location {
            driver: self.driver.clone(),
            disk: if object_store {
                self.disk().map(str::to_string)
            } else {
                None
            },
            bucket: if object_store {
                self.bucket().map(str::to_string)
            } else {
                None
            },
            prefix: self.prefix(),
        }
    }
}

/// Checks a policy's settings against the server's configuration: the errors, by field,
/// that would make it unusable.
pub fn policy_errors(policy: &Policy, stores: &PayloadStores) -> BTreeMap<String, Vec<String>> {
    let mut errors: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut err = |field: &str, message: String| {
        errors.entry(field.to_string()).or_default().push(message);
    };
    if !DRIVERS.contains(&policy.driver.as_str()) {
        err(
            "driver",
            "The driver field must be one of: local, s3, gcs, azure.".into(),
        );
    }
    let prefix = policy.prefix();
    if !prefix.is_empty()
        && (prefix.len() > 256
            || prefix
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == ".." || !safe_segment(seg)))
    {
        err(
            "config.prefix",
            "The prefix must be '/'-separated segments of letters, digits, '.', '_' and '-' \
             (no empty, '.' or '..' segment), at most 256 characters."
                .into(),
        );
    }
    if !policy.enabled {
        return errors;
    }
    if policy.driver == "local" {
        if stores.local_dir.is_none() {
            err(
                "driver",
                "The local driver has no directory on this server (start it with --payload-dir DIR)."
                    .into(),
            );
        }
    } else if DRIVERS.contains(&policy.driver.as_str()) {
        match policy.disk() {
            None => err(
                "config.disk",
                format!(
                    "The {} driver needs config.disk, the name of a disk configured on the server \
                     (--payload-disk NAME=DIR); configured: [{}].",
                    policy.driver,
                    stores.disks.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ),
            Some(d) if !stores.disks.contains_key(d) => err(
                "config.disk",
                format!(
                    "No disk named '{d}' is configured on this server (--payload-disk {d}=DIR); \
                     configured: [{}].",
                    stores.disks.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ),
            Some(_) => {}
        }
        match policy.bucket() {
            None => err(
                "config.bucket",
                format!("The {} driver needs config.bucket.", policy.driver),
            ),
            Some(b)
                if b.len() < 3
                    || b.len() > 63
                    || !b.bytes().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-'
                    })
                    || b.starts_with(['.', '-']) =>
            {
                err(
                    "config.bucket",
                    "The bucket must be 3 to 63 lowercase letters, digits, '.' and '-', \
                     starting with a letter or digit."
                        .into(),
                )
            }
            Some(_) => {}
        }
    }
    errors
}

fn safe_segment(seg: &str) -> bool {
    seg.bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-')
}

/// Where a blob lives: the driver, the disk behind an object-store driver, the bucket and
/// the prefix. Reads require the record's location to equal the namespace's current one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub driver: String,
    #[serde(default)]
    pub disk: Option<String>,
    #[serde(default)]
    pub bucket: Option<String>,
    #[serde(default)]
    pub prefix: String,
}

impl Location {
    /// The object's URI in the driver's scheme.
    pub fn uri(&self, stores: &PayloadStores, reference_id: &str) -> String {
        let key = self.object_key(reference_id);
        match self.driver.as_str() {
            "local" => {
                let root = stores
                    .local_dir
                    .as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default();
                format!("file://{}/{key}", root.trim_end_matches('/'))
            }
            driver => {
                let scheme = match driver {
                    "gcs" => "gs",
                    "azure" => "azure",
                    _ => "s3",
                };
                format!(
                    "{scheme}://{}/{key}",
                    self.bucket.as_deref().unwrap_or_default()
                )
            }
        }
    }

    /// The object's key under its bucket (or under the local directory).
    pub fn object_key(&self, reference_id: &str) -> String {
        if self.prefix.is_empty() {
            reference_id.to_string()
        } else {
            format!("{}/{reference_id}", self.prefix)
        }
    }
}

/// A payload stored through the runtime transport.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PayloadRecord {
    /// `ep_` followed by 26 Crockford base32 characters.
    pub reference_id: String,
    /// The codec the uploader declared.
    pub codec: String,
    /// Length of the stored bytes.
    pub size_bytes: u64,
    /// Lowercase hex SHA-256 of the stored bytes.
    pub sha256: String,
    /// Where the blob was written.
    pub location: Location,
    /// The object's URI when written.
    pub uri: String,
    /// Upload time.
    pub created_at_ms: Millis,
}

impl PayloadRecord {
    /// The wire reference (exactly the five members the SDK accepts).
    pub fn reference_json(&self) -> Value {
        serde_json::json!({
            "schema": REFERENCE_SCHEMA,
            "reference_id": self.reference_id,
            "codec": self.codec,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
        })
    }
}

/// Key of a payload record.
pub fn payload_key(ns: &str, reference_id: &str) -> Vec<u8> {
    Key::new(prefix::PAYLOAD)
        .str(ns)
        .str(reference_id)
        .into_bytes()
}

/// Whether `id` has the shape of a runtime reference id.
pub fn valid_reference_id(id: &str) -> bool {
    id.len() == 29
        && id.starts_with("ep_")
        && id[3..]
            .bytes()
            .all(|c| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&c))
}

/// An `external_payload_*` rejection naming the reference.
pub(crate) fn payload_error(
    kind: RejectKind,
    reason: &'static str,
    retryable: bool,
    reference_id: Option<&str>,
    message: impl Into<String>,
) -> Error {
    let mut e = Error::reject(kind, reason, message).with("retryable", retryable);
    if let Some(id) = reference_id {
        e = e.with("reference_id", id);
    }
    e
}

/// Blobs whose last referencing run was deleted: removed from storage after the deleting
/// transaction commits.
#[derive(Debug, Default)]
pub struct Released {
    /// Files to delete.
    pub(crate) files: Vec<PathBuf>,
    /// Reference ids whose record was deleted.
    pub reference_ids: Vec<String>,
}

/// Drops `run_id`'s references (inside the transaction deleting the run). A payload no
/// other run's history references loses its record here, and its file is returned for
/// deletion once the transaction has committed; a payload another run still references
/// (open or closed) stays.
pub(crate) async fn release_run(
    txn: &mut dyn KvTxn,
    stores: &PayloadStores,
    ns: &str,
    run_id: &str,
    released: &mut Released,
) -> Result<()> {
    let range = Key::new(prefix::RUN_PAYLOAD).str(ns).str(run_id).range();
    let rows = txn
        .get_range(&range, ReadOptions::limit(MAX_RUN_REFERENCES))
        .await?;
    for (key, _) in rows {
        let mut r = KeyReader::new(&key);
        let (Some(_), Some(_), Some(reference_id)) = (r.str(), r.str(), r.str()) else {
            continue;
        };
        txn.clear(&key);
        txn.clear(&crate::history::payload_use_key(ns, &reference_id, run_id));
        let users = Key::new(prefix::PAYLOAD_USE)
            .str(ns)
            .str(&reference_id)
            .range();
        if !txn
            .get_range(&users, ReadOptions::limit(1))
            .await?
            .is_empty()
        {
            continue;
        }
        let pkey = payload_key(ns, &reference_id);
        if let Some(record) = tables::get::<PayloadRecord>(txn, &pkey).await? {
            tables::delete(txn, &pkey).await?;
            if let Ok(path) = blobs::object_path(stores, &record.location, &record.reference_id) {
                released.files.push(path);
            }
            released.reference_ids.push(reference_id);
        }
    }
    Ok(())
}

/// Deletes released blobs (after the commit that dropped their records). A failure leaves
/// an orphaned file, never a record without its blob.
pub fn delete_released(released: &Released) {
    for path in &released.files {
        if let Err(e) = std::fs::remove_file(path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "could not delete a released payload blob");
            }
        }
    }
}

/// `value` with every runtime reference envelope replaced by the inline envelope of its
/// resolved bytes (`{codec, blob}`): the form a client holds once it has fetched them.
pub fn inline_payloads(value: &Value, blobs: &BTreeMap<String, (PayloadRecord, Vec<u8>)>) -> Value {
    match value {
        Value::Object(map) => {
            let id = map
                .get("external_payload")
                .and_then(|r| r.get("reference_id"))
                .and_then(Value::as_str);
            if let Some((record, bytes)) = id.and_then(|id| blobs.get(id)) {
                return serde_json::json!({
                    "codec": record.codec,
                    "blob": String::from_utf8_lossy(bytes),
                });
            }
            Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), inline_payloads(v, blobs)))
                    .collect(),
            )
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| inline_payloads(v, blobs)).collect())
        }
        other => other.clone(),
    }
}
