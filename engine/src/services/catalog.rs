//! The service catalog: endpoints, services and operations of a namespace.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::kernel::Engine;
use crate::keys::{prefix, Key};
use crate::storage::{KeyRange, KvTxn, ReadOptions};
use crate::{ids, kernel, tables};

/// Longest endpoint, service or operation name, in bytes.
pub const MAX_CATALOG_NAME: usize = 191;
/// Most entries one catalog list returns (endpoints of a namespace, services of an
/// endpoint, operations of a service).
pub const MAX_CATALOG_LIST: usize = 1000;
/// `operation_mode` values.
pub const OPERATION_MODES: &[&str] = &["sync", "async"];
/// `handler_binding_kind` values.
pub const BINDING_KINDS: &[&str] = &[
    "start_workflow",
    "signal_workflow",
    "update_workflow",
    "query_workflow",
    "activity_execution",
    "invocable_http",
];

/// Catalog names are matched case-insensitively: stored and looked up lowercased.
pub fn normalize_name(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// Whether `name` is a valid catalog name: `^[A-Za-z0-9._-]+$`, at most
/// [`MAX_CATALOG_NAME`] bytes.
pub fn valid_catalog_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CATALOG_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A service endpoint: the top of the catalog, one per name in a namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// Stable id, kept across updates (a re-created name gets a new one).
    pub id: String,
    pub namespace: String,
    /// Lowercase.
    pub endpoint_name: String,
    pub description: Option<String>,
    /// An object (empty when none was given).
    pub metadata: Value,
    pub created_at_ms: Millis,
    pub updated_at_ms: Millis,
}

/// A service under an endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub id: String,
    pub namespace: String,
    /// The id of the endpoint it was created under.
    pub endpoint_id: String,
    pub endpoint_name: String,
    /// Lowercase.
    pub service_name: String,
    pub description: Option<String>,
    pub metadata: Value,
    pub created_at_ms: Millis,
    pub updated_at_ms: Millis,
}

/// An operation binding under a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationRecord {
    pub id: String,
    pub namespace: String,
    pub endpoint_id: String,
    pub endpoint_name: String,
    pub service_id: String,
    pub service_name: String,
    /// Lowercase.
    pub operation_name: String,
    #[serde(flatten)]
    pub spec: OperationSpec,
    pub created_at_ms: Millis,
    pub updated_at_ms: Millis,
}

/// The fields of an operation a caller sets (validated by the HTTP front: modes and kinds
/// from [`OPERATION_MODES`] and [`BINDING_KINDS`], policies objects or null, and a target
/// reference or a non-empty binding).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationSpec {
    pub description: Option<String>,
    /// `sync` or `async`.
    pub operation_mode: String,
    /// One of [`BINDING_KINDS`].
    pub handler_binding_kind: String,
    pub handler_target_reference: Option<String>,
    /// An object or null.
    pub handler_binding: Value,
    pub deadline_policy: Value,
    pub idempotency_policy: Value,
    pub cancellation_policy: Value,
    pub retry_policy: Value,
    pub boundary_policy: Value,
    /// An object (empty when none was given).
    pub metadata: Value,
}

/// A change to an endpoint or service; `None` leaves a field as it is, `Some(None)`
/// clears the description.
#[derive(Debug, Clone, Default)]
pub struct CatalogPatch {
    pub description: Option<Option<String>>,
    pub metadata: Option<Value>,
}

/// A change to an operation; `None` leaves a field as it is. The result must still name
/// a target reference or a non-empty binding (checked here, 422 on
/// `handler_target_reference`).
#[derive(Debug, Clone, Default)]
pub struct OperationPatch {
    pub description: Option<Option<String>>,
    pub operation_mode: Option<String>,
    pub handler_binding_kind: Option<String>,
    pub handler_target_reference: Option<Option<String>>,
    pub handler_binding: Option<Value>,
    pub deadline_policy: Option<Value>,
    pub idempotency_policy: Option<Value>,
    pub cancellation_policy: Option<Value>,
    pub retry_policy: Option<Value>,
    pub boundary_policy: Option<Value>,
    pub metadata: Option<Value>,
}

/// Whether an operation names what it runs: a non-blank target reference or a non-empty
/// binding object.
pub(crate) fn has_target(spec: &OperationSpec) -> bool {
    spec.handler_target_reference
        .as_deref()
        .is_some_and(|r| !r.trim().is_empty())
        || spec
            .handler_binding
            .as_object()
            .is_some_and(|b| !b.is_empty())
}

fn missing_target() -> Error {
    Error::invalid(
        "handler_target_reference",
        "Provide handler_target_reference or a non-empty handler_binding.",
    )
}

// ---- keys ----

fn endpoint_key(ns: &str, endpoint: &str) -> Vec<u8> {
    Key::new(prefix::SERVICE_ENDPOINT)
        .str(ns)
        .str(endpoint)
        .into_bytes()
}

fn endpoints_range(ns: &str) -> KeyRange {
    Key::new(prefix::SERVICE_ENDPOINT).str(ns).range()
}

fn service_key(ns: &str, endpoint: &str, service: &str) -> Vec<u8> {
    Key::new(prefix::SERVICE_DEFINITION)
        .str(ns)
        .str(endpoint)
        .str(service)
        .into_bytes()
}

fn services_range(ns: &str, endpoint: &str) -> KeyRange {
    Key::new(prefix::SERVICE_DEFINITION)
        .str(ns)
        .str(endpoint)
        .range()
}

fn operation_key(ns: &str, endpoint: &str, service: &str, operation: &str) -> Vec<u8> {
    Key::new(prefix::SERVICE_OPERATION)
        .str(ns)
        .str(endpoint)
        .str(service)
        .str(operation)
        .into_bytes()
}

fn operations_range(ns: &str, endpoint: &str, service: &str) -> KeyRange {
    Key::new(prefix::SERVICE_OPERATION)
        .str(ns)
        .str(endpoint)
        .str(service)
        .range()
}

/// The service calls recorded against one operation.
pub(crate) fn service_calls_range(
    ns: &str,
    endpoint: &str,
    service: &str,
    operation: &str,
) -> KeyRange {
    Key::new(prefix::SERVICE_CALL)
        .str(ns)
        .str(endpoint)
        .str(service)
        .str(operation)
        .range()
}

// ---- errors ----

fn endpoint_not_found(ns: &str, endpoint: &str) -> Error {
    Error::not_found(
        "endpoint_not_found",
        format!("service endpoint '{endpoint}' not found in namespace '{ns}'"),
    )
    .with("namespace", ns)
    .with("endpoint_name", endpoint)
}

fn service_not_found(ns: &str, endpoint: &str, service: &str) -> Error {
    Error::not_found(
        "service_not_found",
        format!("service '{service}' not found under endpoint '{endpoint}' in namespace '{ns}'"),
    )
    .with("namespace", ns)
    .with("endpoint_name", endpoint)
    .with("service_name", service)
}

fn operation_not_found(ns: &str, endpoint: &str, service: &str, operation: &str) -> Error {
    Error::not_found(
        "operation_not_found",
        format!(
            "operation '{operation}' not found under service '{service}' at endpoint '{endpoint}' in namespace '{ns}'"
        ),
    )
    .with("namespace", ns)
    .with("endpoint_name", endpoint)
    .with("service_name", service)
    .with("operation_name", operation)
}

// ---- in-transaction reads ----

/// Whether any record lies in `range` (a conflict-tracked read of at most one key, so a
/// delete decided on it conflicts with a concurrent create in the range).
async fn any_in(txn: &mut dyn KvTxn, range: &KeyRange) -> Result<bool> {
    Ok(!txn
        .get_range(range, ReadOptions::limit(1))
        .await?
        .is_empty())
}

async fn list_in<T: serde::de::DeserializeOwned>(
    txn: &mut dyn KvTxn,
    range: &KeyRange,
) -> Result<Vec<T>> {
    let pairs = txn
        .get_range(range, ReadOptions::limit(MAX_CATALOG_LIST).snapshot())
        .await?;
    let (records, _) = tables::assemble(pairs)?;
    records
        .into_iter()
        .map(|(_, bytes)| tables::decode_record(&bytes))
        .collect()
}

pub(crate) async fn load_endpoint(
    txn: &mut dyn KvTxn,
    ns: &str,
    endpoint: &str,
) -> Result<EndpointRecord> {
    tables::get::<EndpointRecord>(txn, &endpoint_key(ns, endpoint))
        .await?
        .ok_or_else(|| endpoint_not_found(ns, endpoint))
}

pub(crate) async fn load_service(
    txn: &mut dyn KvTxn,
    ns: &str,
    endpoint: &str,
    service: &str,
) -> Result<ServiceRecord> {
    load_endpoint(txn, ns, endpoint).await?;
    tables::get::<ServiceRecord>(txn, &service_key(ns, endpoint, service))
        .await?
        .ok_or_else(|| service_not_found(ns, endpoint, service))
}

/// The operation at `(endpoint, service, operation)`, failing with the 404 that names the
/// first missing level.
pub(crate) async fn load_operation(
    txn: &mut dyn KvTxn,
    ns: &str,
    endpoint: &str,
    service: &str,
    operation: &str,
) -> Result<OperationRecord> {
    load_service(txn, ns, endpoint, service).await?;
    tables::get::<OperationRecord>(txn, &operation_key(ns, endpoint, service, operation))
        .await?
        .ok_or_else(|| operation_not_found(ns, endpoint, service, operation))
}

fn apply_catalog_patch(
    description: &mut Option<String>,
    metadata: &mut Value,
    patch: &CatalogPatch,
) {
    if let Some(d) = &patch.description {
        description.clone_from(d);
    }
    if let Some(m) = &patch.metadata {
        *metadata = m.clone();
    }
}

// ---- the engine API ----

impl Engine {
    /// The namespace's endpoints in name order (at most [`MAX_CATALOG_LIST`]).
    pub async fn list_service_endpoints(&self, ns: &str) -> Result<Vec<EndpointRecord>> {
        let mut txn = self.inner.store.begin().await?;
        kernel::require_namespace(txn.as_mut(), ns).await?;
        list_in(txn.as_mut(), &endpoints_range(ns)).await
    }

    /// Creates an endpoint (its name lowercased); 409 `endpoint_already_exists`.
    pub async fn create_service_endpoint(
        &self,
        ns: &str,
        name: &str,
        description: Option<String>,
        metadata: Value,
    ) -> Result<EndpointRecord> {
        let now = self.now_ms();
        let id = ids::new_id(now).to_ascii_lowercase();
        let name = normalize_name(name);
        let (id, name, description, metadata) = (&id, &name, &description, &metadata);
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                kernel::require_namespace(txn, ns).await?;
                let key = endpoint_key(ns, name);
                if let Some(existing) = tables::get::<EndpointRecord>(txn, &key).await? {
                    if existing.id == *id {
                        // Our own earlier attempt committed (commit-unknown retry).
                        return Ok(existing);
                    }
                    return Err(Error::conflict(
                        "endpoint_already_exists",
                        format!("a service endpoint '{name}' already exists in namespace '{ns}'"),
                    )
                    .with("namespace", ns)
                    .with("endpoint_name", name.as_str())
                    .with("endpoint_id", existing.id));
                }
                let record = EndpointRecord {
                    id: id.clone(),
                    namespace: ns.to_string(),
                    endpoint_name: name.clone(),
                    description: description.clone(),
                    metadata: metadata.clone(),
                    created_at_ms: now,
                    updated_at_ms: now,
                };
                tables::put(txn, &key, &record)?;
                Ok(record)
            })
        })
        .await
    }

    /// Reads one endpoint; 404 `endpoint_not_found`.
    pub async fn describe_service_endpoint(
        &self,
        ns: &str,
        endpoint: &str,
    ) -> Result<EndpointRecord> {
        let endpoint = normalize_name(endpoint);
        let mut txn = self.inner.store.begin().await?;
        kernel::require_namespace(txn.as_mut(), ns).await?;
        load_endpoint(txn.as_mut(), ns, &endpoint).await
    }

    /// Changes an endpoint's description or metadata.
    pub async fn update_service_endpoint(
        &self,
        ns: &str,
        endpoint: &str,
        patch: CatalogPatch,
    ) -> Result<EndpointRecord> {
        let now = self.now_ms();
        let endpoint = normalize_name(endpoint);
        let (endpoint, patch) = (&endpoint, &patch);
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                kernel::require_namespace(txn, ns).await?;
                let mut record = load_endpoint(txn, ns, endpoint).await?;
                apply_catalog_patch(&mut record.description, &mut record.metadata, patch);
                record.updated_at_ms = now;
                tables::put(txn, &endpoint_key(ns, endpoint), &record)?;
                Ok(record)
            })
        })
        .await
    }

    /// Deletes an endpoint that holds no services; 409 `endpoint_has_services`.
    pub async fn delete_service_endpoint(&self, ns: &str, endpoint: &str) -> Result<String> {
        let endpoint = normalize_name(endpoint);
        let endpoint = &endpoint;
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                kernel::require_namespace(txn, ns).await?;
                load_endpoint(txn, ns, endpoint).await?;
                if any_in(txn, &services_range(ns, endpoint)).await? {
                    return Err(Error::conflict(
                        "endpoint_has_services",
                        format!(
                            "service endpoint '{endpoint}' in namespace '{ns}' still has registered services; delete them first"
                        ),
                    )
                    .with("namespace", ns)
                    .with("endpoint_name", endpoint.as_str()));
                }
                tables::delete(txn, &endpoint_key(ns, endpoint)).await?;
                Ok(endpoint.clone())
            })
        })
        .await
    }

    /// The services of an endpoint in name order; 404 names the missing endpoint.
    pub async fn list_services(&self, ns: &str, endpoint: &str) -> Result<Vec<ServiceRecord>> {
        let endpoint = normalize_name(endpoint);
        let mut txn = self.inner.store.begin().await?;
        kernel::require_namespace(txn.as_mut(), ns).await?;
        load_endpoint(txn.as_mut(), ns, &endpoint).await?;
        list_in(txn.as_mut(), &services_range(ns, &endpoint)).await
    }

    /// Creates a service under an endpoint; 409 `service_already_exists`.
    pub async fn create_service(
        &self,
        ns: &str,
        endpoint: &str,
        name: &str,
        description: Option<String>,
        metadata: Value,
    ) -> Result<ServiceRecord> {
        let now = self.now_ms();
        let id = ids::new_id(now).to_ascii_lowercase();
        let endpoint = normalize_name(endpoint);
        let name = normalize_name(name);
        let (id, endpoint, name, description, metadata) =
            (&id, &endpoint, &name, &description, &metadata);
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                kernel::require_namespace(txn, ns).await?;
                let parent = load_endpoint(txn, ns, endpoint).await?;
                let key = service_key(ns, endpoint, name);
                if let Some(existing) = tables::get::<ServiceRecord>(txn, &key).await? {
                    if existing.id == *id {
                        return Ok(existing);
                    }
                    return Err(Error::conflict(
                        "service_already_exists",
                        format!(
                            "a service '{name}' already exists under endpoint '{endpoint}' in namespace '{ns}'"
                        ),
                    )
                    .with("namespace", ns)
                    .with("endpoint_name", endpoint.as_str())
                    .with("service_name", name.as_str())
                    .with("service_id", existing.id));
                }
                let record = ServiceRecord {
                    id: id.clone(),
                    namespace: ns.to_string(),
                    endpoint_id: parent.id,
                    endpoint_name: endpoint.clone(),
                    service_name: name.clone(),
                    description: description.clone(),
                    metadata: metadata.clone(),
                    created_at_ms: now,
                    updated_at_ms: now,
                };
                tables::put(txn, &key, &record)?;
                Ok(record)
            })
        })
        .await
    }

    /// Reads one service; 404 names the missing endpoint or service.
    pub async fn describe_service(
        &self,
        ns: &str,
        endpoint: &str,
        service: &str,
    ) -> Result<ServiceRecord> {
        let (endpoint, service) = (normalize_name(endpoint), normalize_name(service));
        let mut txn = self.inner.store.begin().await?;
        kernel::require_namespace(txn.as_mut(), ns).await?;
        load_service(txn.as_mut(), ns, &endpoint, &service).await
    }

    /// Changes a service's description or metadata.
    pub async fn update_service(
        &self,
        ns: &str,
        endpoint: &str,
        service: &str,
        patch: CatalogPatch,
    ) -> Result<ServiceRecord> {
        let now = self.now_ms();
        let (endpoint, service) = (normalize_name(endpoint), normalize_name(service));
        let (endpoint, service, patch) = (&endpoint, &service, &patch);
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                kernel::require_namespace(txn, ns).await?;
                let mut record = load_service(txn, ns, endpoint, service).await?;
                apply_catalog_patch(&mut record.description, &mut record.metadata, patch);
                record.updated_at_ms = now;
                tables::put(txn, &service_key(ns, endpoint, service), &record)?;
                Ok(record)
            })
        })
        .await
    }

    /// Deletes a service that holds no operations; 409 `service_has_operations`.
    pub async fn delete_service(&self, ns: &str, endpoint: &str, service: &str) -> Result<()> {
        let (endpoint, service) = (normalize_name(endpoint), normalize_name(service));
        let (endpoint, service) = (&endpoint, &service);
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                kernel::require_namespace(txn, ns).await?;
                load_service(txn, ns, endpoint, service).await?;
                if any_in(txn, &operations_range(ns, endpoint, service)).await? {
                    return Err(Error::conflict(
                        "service_has_operations",
                        format!(
                            "service '{service}' under endpoint '{endpoint}' in namespace '{ns}' still has registered operations; delete them first"
                        ),
                    )
                    .with("namespace", ns)
                    .with("endpoint_name", endpoint.as_str())
                    .with("service_name", service.as_str()));
                }
                tables::delete(txn, &service_key(ns, endpoint, service)).await?;
                Ok(())
            })
        })
        .await
    }

    /// The operations of a service in name order; 404 names the missing level.
    pub async fn list_operations(
        &self,
        ns: &str,
        endpoint: &str,
        service: &str,
    ) -> Result<Vec<OperationRecord>> {
        let (endpoint, service) = (normalize_name(endpoint), normalize_name(service));
        let mut txn = self.inner.store.begin().await?;
        kernel::require_namespace(txn.as_mut(), ns).await?;
        load_service(txn.as_mut(), ns, &endpoint, &service).await?;
        list_in(txn.as_mut(), &operations_range(ns, &endpoint, &service)).await
    }

    /// Creates an operation binding; 409 `operation_already_exists`, 422 on
    /// `handler_target_reference` when it names no target.
    pub async fn create_operation(
        &self,
        ns: &str,
        endpoint: &str,
        service: &str,
        name: &str,
        spec: OperationSpec,
    ) -> Result<OperationRecord> {
        if !has_target(&spec) {
            return Err(missing_target());
        }
        let now = self.now_ms();
        let id = ids::new_id(now).to_ascii_lowercase();
        let (endpoint, service, name) = (
            normalize_name(endpoint),
            normalize_name(service),
            normalize_name(name),
        );
        let (id, endpoint, service, name, spec) = (&id, &endpoint, &service, &name, &spec);
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                kernel::require_namespace(txn, ns).await?;
                let parent = load_service(txn, ns, endpoint, service).await?;
                let key = operation_key(ns, endpoint, service, name);
                if let Some(existing) = tables::get::<OperationRecord>(txn, &key).await? {
                    if existing.id == *id {
                        return Ok(existing);
                    }
                    return Err(Error::conflict(
                        "operation_already_exists",
                        format!(
                            "an operation '{name}' already exists under service '{service}' at endpoint '{endpoint}' in namespace '{ns}'"
                        ),
                    )
                    .with("namespace", ns)
                    .with("endpoint_name", endpoint.as_str())
                    .with("service_name", service.as_str())
                    .with("operation_name", name.as_str())
                    .with("operation_id", existing.id));
                }
                let record = OperationRecord {
                    id: id.clone(),
                    namespace: ns.to_string(),
                    endpoint_id: parent.endpoint_id,
                    endpoint_name: endpoint.clone(),
                    service_id: parent.id,
                    service_name: service.clone(),
                    operation_name: name.clone(),
                    spec: spec.clone(),
                    created_at_ms: now,
                    updated_at_ms: now,
                };
                tables::put(txn, &key, &record)?;
                Ok(record)
            })
        })
        .await
    }

    /// Reads one operation; 404 names the missing level.
    pub async fn describe_operation(
        &self,
        ns: &str,
        endpoint: &str,
        service: &str,
        operation: &str,
    ) -> Result<OperationRecord> {
        let (endpoint, service, operation) = (
            normalize_name(endpoint),
            normalize_name(service),
            normalize_name(operation),
        );
        let mut txn = self.inner.store.begin().await?;
        kernel::require_namespace(txn.as_mut(), ns).await?;
        load_operation(txn.as_mut(), ns, &endpoint, &service, &operation).await
    }

    /// Changes an operation binding; the result must still name a target.
    pub async fn update_operation(
        &self,
        ns: &str,
        endpoint: &str,
        service: &str,
        operation: &str,
        patch: OperationPatch,
    ) -> Result<OperationRecord> {
        let now = self.now_ms();
        let (endpoint, service, operation) = (
            normalize_name(endpoint),
            normalize_name(service),
            normalize_name(operation),
        );
        let (endpoint, service, operation, patch) = (&endpoint, &service, &operation, &patch);
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                kernel::require_namespace(txn, ns).await?;
                let mut record = load_operation(txn, ns, endpoint, service, operation).await?;
                let s = &mut record.spec;
                if let Some(v) = &patch.description {
                    s.description.clone_from(v);
                }
                if let Some(v) = &patch.operation_mode {
                    s.operation_mode.clone_from(v);
                }
                if let Some(v) = &patch.handler_binding_kind {
                    s.handler_binding_kind.clone_from(v);
                }
                if let Some(v) = &patch.handler_target_reference {
                    s.handler_target_reference.clone_from(v);
                }
                for (field, value) in [
                    (&mut s.handler_binding, &patch.handler_binding),
                    (&mut s.deadline_policy, &patch.deadline_policy),
                    (&mut s.idempotency_policy, &patch.idempotency_policy),
                    (&mut s.cancellation_policy, &patch.cancellation_policy),
                    (&mut s.retry_policy, &patch.retry_policy),
                    (&mut s.boundary_policy, &patch.boundary_policy),
                    (&mut s.metadata, &patch.metadata),
                ] {
                    if let Some(v) = value {
                        *field = v.clone();
                    }
                }
                if !has_target(s) {
                    return Err(missing_target());
                }
                record.updated_at_ms = now;
                tables::put(
                    txn,
                    &operation_key(ns, endpoint, service, operation),
                    &record,
                )?;
                Ok(record)
            })
        })
        .await
    }

    /// Deletes an operation no service call was recorded against; 409
    /// `operation_has_service_calls`.
    pub async fn delete_operation(
        &self,
        ns: &str,
        endpoint: &str,
        service: &str,
        operation: &str,
    ) -> Result<()> {
        let (endpoint, service, operation) = (
            normalize_name(endpoint),
            normalize_name(service),
            normalize_name(operation),
        );
        let (endpoint, service, operation) = (&endpoint, &service, &operation);
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                kernel::require_namespace(txn, ns).await?;
                load_operation(txn, ns, endpoint, service, operation).await?;
                if any_in(txn, &service_calls_range(ns, endpoint, service, operation)).await? {
                    return Err(Error::conflict(
                        "operation_has_service_calls",
                        format!(
                            "operation '{operation}' under service '{service}' at endpoint '{endpoint}' in namespace '{ns}' still has recorded service calls"
                        ),
                    )
                    .with("namespace", ns)
                    .with("endpoint_name", endpoint.as_str())
                    .with("service_name", service.as_str())
                    .with("operation_name", operation.as_str()));
                }
                tables::delete(txn, &operation_key(ns, endpoint, service, operation)).await?;
                Ok(())
            })
        })
        .await
    }
}
