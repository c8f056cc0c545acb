//! Namespaces, their search-attribute registry, and the store's schema version.
//!
//! A namespace is one record in the `NAMESPACE` table; its custom search attributes live
//! inside it (at most [`MAX_SEARCH_ATTRIBUTES`], so the record stays small). Namespaces
//! are never deleted, so the engine caches the names it has seen exist.
//!
//! The schema version lives in the `META` table under [`SCHEMA_VERSION_KEY`]: written at
//! first start, read by the readiness checks. A store written by a newer Keel (a higher
//! version) is reported as not current, and the bootstrap gate then refuses workflow
//! traffic instead of letting this binary misread newer records.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::kernel::Engine;
use crate::model::NamespaceRecord;
use crate::storage::ReadOptions;
use crate::tables;

/// The schema version this binary reads and writes.
pub const SCHEMA_VERSION: u64 = 1;
/// The `META` entry holding the schema version.
pub const SCHEMA_VERSION_KEY: &str = "schema_version";
/// Custom search attributes per namespace.
pub const MAX_SEARCH_ATTRIBUTES: usize = 100;
/// Longest search attribute name, in bytes.
pub const MAX_SEARCH_ATTRIBUTE_KEY_BYTES: usize = 128;
/// Largest search attribute value (its JSON), in bytes.
pub const MAX_SEARCH_ATTRIBUTE_VALUE_BYTES: usize = 2048;
/// Default retention of closed runs, in days.
pub const DEFAULT_RETENTION_DAYS: u32 = 30;
/// Longest namespace name.
pub const MAX_NAMESPACE_NAME: usize = 128;

/// The value types a search attribute may be registered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchAttributeType {
    /// An exact-match string.
    Keyword,
    /// A full-text string.
    Text,
    /// A 64-bit integer.
    Int,
    /// A floating-point number.
    Double,
    /// A boolean.
    Bool,
    /// An RFC 3339 timestamp string.
    Datetime,
    /// A list of exact-match strings.
    KeywordList,
}

impl SearchAttributeType {
    /// Every type, in wire order.
    pub const ALL: [SearchAttributeType; 7] = [
        SearchAttributeType::Keyword,
        SearchAttributeType::Text,
        SearchAttributeType::Int,
        SearchAttributeType::Double,
        SearchAttributeType::Bool,
        SearchAttributeType::Datetime,
        SearchAttributeType::KeywordList,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SearchAttributeType::Keyword => "keyword",
            SearchAttributeType::Text => "text",
            SearchAttributeType::Int => "int",
            SearchAttributeType::Double => "double",
            SearchAttributeType::Bool => "bool",
            SearchAttributeType::Datetime => "datetime",
            SearchAttributeType::KeywordList => "keyword_list",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Whether `value` is a valid value of this type.
    pub fn accepts(self, value: &Value) -> bool {
        match self {
            SearchAttributeType::Keyword | SearchAttributeType::Text => value.is_string(),
            SearchAttributeType::Int => {
                value.is_i64() || value.is_u64() && value.as_i64().is_some()
            }
            SearchAttributeType::Double => value.is_number(),
            SearchAttributeType::Bool => value.is_boolean(),
            SearchAttributeType::Datetime => value.as_str().is_some_and(|s| {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .is_ok()
            }),
            SearchAttributeType::KeywordList => value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string)),
        }
    }
}

/// Attributes the server maintains itself; they cannot be registered, deleted or set.
pub const SYSTEM_SEARCH_ATTRIBUTES: &[(&str, SearchAttributeType)] = &[
    ("WorkflowId", SearchAttributeType::Keyword),
    ("RunId", SearchAttributeType::Keyword),
    ("WorkflowType", SearchAttributeType::Keyword),
    ("TaskQueue", SearchAttributeType::Keyword),
    ("ExecutionStatus", SearchAttributeType::Keyword),
    ("StartTime", SearchAttributeType::Datetime),
    ("CloseTime", SearchAttributeType::Datetime),
    ("BuildId", SearchAttributeType::Keyword),
    // Set on runs a schedule starts (`schedules`).
    ("DurableWorkflowScheduleId", SearchAttributeType::Keyword),
    (
        "DurableWorkflowScheduledStartTime",
        SearchAttributeType::Datetime,
    ),
];

fn is_system_attribute(name: &str) -> bool {
    SYSTEM_SEARCH_ATTRIBUTES.iter().any(|(n, _)| *n == name)
}

/// Whether `name` is a valid search attribute name: `^[a-zA-Z][a-zA-Z0-9_]*$`, ≤128 bytes.
pub fn valid_attribute_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= MAX_SEARCH_ATTRIBUTE_KEY_BYTES
        && bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether `name` is a valid namespace name: `^[a-zA-Z0-9._-]+$`, ≤128 bytes.
pub fn valid_namespace_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAMESPACE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A namespace to create.
#[derive(Debug, Clone)]
pub struct NamespaceSpec {
    /// Name (stored lowercased).
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Days closed runs are kept.
    pub retention_days: u32,
    /// Operator metadata, a JSON object.
    pub metadata: Value,
}

/// Changes to a namespace; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct NamespacePatch {
    /// New description.
    pub description: Option<String>,
    /// New retention.
    pub retention_days: Option<u32>,
    /// New metadata (replaces the old object).
    pub metadata: Option<Value>,
}

/// The store's schema version against the binary's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaStatus {
    /// What the store holds (`None`: never written).
    pub stored: Option<u64>,
    /// What this binary expects.
    pub expected: u64,
}

impl SchemaStatus {
    /// Whether the store is at this binary's version.
    pub fn is_current(&self) -> bool {
        self.stored == Some(self.expected)
    }
}

fn namespace_not_found(ns: &str) -> Error {
    Error::not_found(
        "namespace_not_found",
        format!("namespace '{ns}' does not exist"),
    )
    .with("namespace", ns)
    .with(
        "remediation",
        "Create the namespace with POST /api/namespaces.",
    )
}

impl Engine {
    /// Writes the schema version at first start (a store that predates the entry is
    /// adopted at this version, since version 1 is the first layout). A newer stored
    /// version is left alone: readiness reports it.
    pub async fn ensure_schema_version(&self) -> Result<()> {
        self.transact(|tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                let key = tables::meta_key(SCHEMA_VERSION_KEY);
                if tables::get::<u64>(txn, &key).await?.is_none() {
                    tables::put(txn, &key, &SCHEMA_VERSION)?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Reads the stored schema version (a real storage read: readiness relies on it).
    pub async fn schema_status(&self) -> Result<SchemaStatus> {
        let mut txn = self.inner.store.begin().await?;
        let stored =
            tables::get_snapshot::<u64>(txn.as_mut(), &tables::meta_key(SCHEMA_VERSION_KEY))
                .await?;
        Ok(SchemaStatus {
            stored,
            expected: SCHEMA_VERSION,
        })
    }

    /// Overwrites the stored schema version. For tests and future migrations only.
    pub async fn set_schema_version(&self, version: u64) -> Result<()> {
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                tables::put(txn, &tables::meta_key(SCHEMA_VERSION_KEY), &version)?;
                Ok(())
            })
        })
        .await
    }

    fn cached_namespace(&self, ns: &str) -> bool {
        self.inner
            .namespaces
            .lock()
            .expect("invariant: namespace cache not poisoned")
            .contains(ns)
    }

    fn cache_namespace(&self, ns: &str) {
        self.inner
            .namespaces
            .lock()
            .expect("invariant: namespace cache not poisoned")
            .insert(ns.to_string());
    }

    /// Whether namespace `ns` exists (cached once seen: namespaces are never deleted).
    pub async fn namespace_exists(&self, ns: &str) -> Result<bool> {
        if self.cached_namespace(ns) {
            return Ok(true);
        }
        let found = self.namespace(ns).await?.is_some();
        if found {
            self.cache_namespace(ns);
        }
        Ok(found)
    }

    /// Fails with `namespace_not_found` unless `ns` exists.
    pub async fn check_namespace(&self, ns: &str) -> Result<()> {
        if self.namespace_exists(ns).await? {
            Ok(())
        } else {
            Err(namespace_not_found(ns))
        }
    }

    /// Lists namespaces in name order, at most `limit`.
    pub async fn list_namespaces(&self, limit: usize) -> Result<Vec<NamespaceRecord>> {
        let mut txn = self.inner.store.begin().await?;
        let pairs = txn
            .get_range(
                &tables::namespaces_range(),
                ReadOptions::limit(limit).snapshot(),
            )
            .await?;
        let (records, _) = tables::assemble(pairs)?;
        records
            .into_iter()
            .map(|(_, bytes)| tables::decode_record(&bytes))
            .collect()
    }

    /// Creates a namespace; `namespace_already_exists` (409) if the name is taken.
    pub async fn create_namespace(&self, spec: NamespaceSpec) -> Result<NamespaceRecord> {
        let now = self.now_ms();
        let name = spec.name.to_ascii_lowercase();
        let (spec, name) = (&spec, &name);
        let record = self
            .transact(move |tx| {
                Box::pin(async move {
                    let txn = tx.txn.as_mut();
                    let key = tables::namespace_key(name);
                    if tables::get::<NamespaceRecord>(txn, &key).await?.is_some() {
                        return Err(Error::conflict(
                            "namespace_already_exists",
                            format!("namespace '{name}' already exists"),
                        )
                        .with("namespace", name.as_str()));
                    }
                    let record = NamespaceRecord {
                        name: name.clone(),
                        description: spec.description.clone(),
                        retention_days: spec.retention_days,
                        created_at_ms: now,
                        updated_at_ms: now,
                        metadata: spec.metadata.clone(),
                        ..NamespaceRecord::default()
                    };
                    tables::put(txn, &key, &record)?;
                    Ok(record)
                })
            })
            .await?;
        self.cache_namespace(&record.name);
        Ok(record)
    }

    /// Reads a namespace, failing with `namespace_not_found`.
    pub async fn describe_namespace(&self, ns: &str) -> Result<NamespaceRecord> {
        self.namespace(ns)
            .await?
            .ok_or_else(|| namespace_not_found(ns))
    }

    /// Runs `change` on namespace `ns` in one transaction and saves the result.
    async fn change_namespace<F>(&self, ns: &str, change: F) -> Result<NamespaceRecord>
    where
        F: Fn(&mut NamespaceRecord) -> Result<()> + Send + Sync,
    {
        let now = self.now_ms();
        let change = &change;
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                let key = tables::namespace_key(ns);
                let Some(mut record) = tables::get::<NamespaceRecord>(txn, &key).await? else {
                    return Err(namespace_not_found(ns));
                };
                change(&mut record)?;
                record.updated_at_ms = now;
                tables::put(txn, &key, &record)?;
                Ok(record)
            })
        })
        .await
    }

    /// Updates description, retention or metadata.
    pub async fn update_namespace(
        &self,
        ns: &str,
        patch: NamespacePatch,
    ) -> Result<NamespaceRecord> {
        self.change_namespace(ns, |record| {
            if let Some(d) = &patch.description {
                record.description = Some(d.clone());
            }
            if let Some(days) = patch.retention_days {
                record.retention_days = days;
            }
            if let Some(m) = &patch.metadata {
                record.metadata = m.clone();
            }
            Ok(())
        })
        .await
    }

    /// Stores the external payload storage policy (Keel does not act on it).
    pub async fn set_external_storage(&self, ns: &str, policy: Value) -> Result<NamespaceRecord> {
        self.change_namespace(ns, |record| {
            record.external_payload_storage = Some(policy.clone());
            Ok(())
        })
        .await
    }

    /// The custom search attributes of `ns`: name → type.
    pub async fn search_attributes(&self, ns: &str) -> Result<BTreeMap<String, String>> {
        Ok(self.describe_namespace(ns).await?.search_attributes)
    }

    /// Registers a custom search attribute. 409 `name_reserved` for a system attribute's
    /// name, 409 `attribute_already_exists`, 422 `search_attribute_limit_reached`.
    pub async fn register_search_attribute(
        &self,
        ns: &str,
        name: &str,
        kind: SearchAttributeType,
    ) -> Result<()> {
        if is_system_attribute(name) {
            return Err(Error::conflict(
                "name_reserved",
                format!("'{name}' is a system search attribute"),
            )
            .with("name", name));
        }
        self.change_namespace(ns, |record| {
            if record.search_attributes.contains_key(name) {
                return Err(Error::conflict(
                    "attribute_already_exists",
                    format!("search attribute '{name}' is already registered"),
                )
                .with("name", name));
            }
            if record.search_attributes.len() >= MAX_SEARCH_ATTRIBUTES {
                return Err(Error::reject(
                    crate::error::RejectKind::Invalid,
                    "search_attribute_limit_reached",
                    format!("a namespace holds at most {MAX_SEARCH_ATTRIBUTES} custom search attributes"),
                )
                .with("limit", MAX_SEARCH_ATTRIBUTES as u64));
            }
            record
                .search_attributes
                .insert(name.to_string(), kind.as_str().to_string());
            Ok(())
        })
        .await
        .map(|_| ())
    }

    /// Deletes a custom search attribute. 409 `system_attribute`, 404
    /// `attribute_not_found`.
    pub async fn delete_search_attribute(&self, ns: &str, name: &str) -> Result<()> {
        if is_system_attribute(name) {
            return Err(Error::conflict(
                "system_attribute",
                format!("'{name}' is a system search attribute and cannot be deleted"),
            )
            .with("name", name));
        }
        self.change_namespace(ns, |record| {
            if record.search_attributes.remove(name).is_none() {
                return Err(Error::not_found(
                    "attribute_not_found",
                    format!("search attribute '{name}' is not registered"),
                )
                .with("name", name));
            }
            Ok(())
        })
        .await
        .map(|_| ())
    }

    /// Validates a `search_attributes` object (a start's, or an upsert command's) against
    /// the namespace's registry: every key registered and not a system attribute, every
    /// value of its type and at most [`MAX_SEARCH_ATTRIBUTE_VALUE_BYTES`] of JSON; at most
    /// [`MAX_SEARCH_ATTRIBUTES`] keys. A `null` value (an upsert's removal) is accepted.
    /// Fails with field-level [`Error::Validation`] under `search_attributes.<name>`.
    pub async fn validate_search_attributes(&self, ns: &str, attributes: &Value) -> Result<()> {
        let map = match attributes {
            Value::Null => return Ok(()),
            Value::Object(m) if m.is_empty() => return Ok(()),
            Value::Object(m) => m,
            _ => {
                return Err(Error::invalid(
                    "search_attributes",
                    "The search_attributes field must be an object.",
                ))
            }
        };
        let registry = self.search_attributes(ns).await?;
        check_attributes(&registry, map)
    }
}

/// The custom search attributes of `ns` read inside `txn` (for a command applied in a
/// workflow-task transaction, e.g. an upsert: pair it with [`check_attributes`]).
pub async fn search_attribute_registry(
    txn: &mut dyn crate::storage::KvTxn,
    ns: &str,
) -> Result<BTreeMap<String, String>> {
    Ok(
        tables::get_snapshot::<NamespaceRecord>(txn, &tables::namespace_key(ns))
            .await?
            .ok_or_else(|| namespace_not_found(ns))?
            .search_attributes,
    )
}

/// The pure part of [`Engine::validate_search_attributes`].
pub fn check_attributes(
    registry: &BTreeMap<String, String>,
    map: &Map<String, Value>,
) -> Result<()> {
    let mut errors: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if map.len() > MAX_SEARCH_ATTRIBUTES {
        // One error for the map, not one per key of an oversized map.
        return Err(Error::invalid(
            "search_attributes",
            format!(
                "At most {MAX_SEARCH_ATTRIBUTES} search attributes may be set; {} were given.",
                map.len()
            ),
        ));
    }
    for (name, value) in map {
        let field = format!("search_attributes.{name}");
        let mut fail = |m: String| errors.entry(field.clone()).or_default().push(m);
        if is_system_attribute(name) {
            fail(format!(
                "'{name}' is a system search attribute and cannot be set."
            ));
            continue;
        }
        let Some(kind) = registry
            .get(name)
            .and_then(|t| SearchAttributeType::parse(t))
        else {
            fail(format!(
                "'{name}' is not a registered search attribute of this namespace; register it with POST /api/search-attributes."
            ));
            continue;
        };
        if value.is_null() {
            continue;
        }
        if !kind.accepts(value) {
            fail(format!(
                "The value of '{name}' must be of type {}.",
                kind.as_str()
            ));
            continue;
        }
        let size = serde_json::to_vec(value)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        if size > MAX_SEARCH_ATTRIBUTE_VALUE_BYTES {
            fail(format!(
                "The value of '{name}' must not exceed {MAX_SEARCH_ATTRIBUTE_VALUE_BYTES} bytes."
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Validation(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::{check_attributes, valid_attribute_name, valid_namespace_name, BTreeMap, Error};
    use serde_json::json;

    fn registry() -> BTreeMap<String, String> {
        [
            ("CustomerId", "keyword"),
            ("Amount", "double"),
            ("Count", "int"),
            ("Tags", "keyword_list"),
            ("At", "datetime"),
            ("Vip", "bool"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn typed_values_are_accepted() {
        let v = json!({"CustomerId": "c-1", "Amount": 1.5, "Count": 3, "Tags": ["a", "b"], "At": "2026-01-02T03:04:05Z", "Vip": true});
        assert!(check_attributes(&registry(), v.as_object().expect("object")).is_ok());
    }

    #[test]
    fn wrong_types_unknown_and_system_attributes_are_field_errors() {
        let v =
            json!({"Count": "three", "Nope": 1, "WorkflowId": "x", "At": "yesterday", "Tags": [1]});
        let Err(Error::Validation(errors)) =
            check_attributes(&registry(), v.as_object().expect("object"))
        else {
            panic!("expected a validation error");
        };
        let fields: Vec<&str> = errors.keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            vec![
                "search_attributes.At",
                "search_attributes.Count",
                "search_attributes.Nope",
                "search_attributes.Tags",
                "search_attributes.WorkflowId"
            ]
        );
    }

    #[test]
    fn names_follow_the_documented_patterns() {
        assert!(valid_attribute_name("CustomerId_2"));
        assert!(!valid_attribute_name("2Customer"));
        assert!(!valid_attribute_name("a-b"));
        assert!(valid_namespace_name("orders.prod-1_a"));
        assert!(!valid_namespace_name("orders/prod"));
        assert!(!valid_namespace_name(""));
    }
}
