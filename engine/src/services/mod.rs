//! The service catalog and the webhook bridge: namespace-scoped ingress that hands work
//! to workflows.
//!
//! **Catalog.** Endpoints hold services, services hold operations; each is one record
//! under its own key prefix, keyed by its lowercase name inside its parent, so a parent's
//! children are one range read and the names are case-insensitive. A delete fails closed
//! while dependents exist (`endpoint_has_services`, `service_has_operations`,
//! `operation_has_service_calls`), decided in the transaction that deletes, which reads
//! the dependents' range and so conflicts with a concurrent create under it.
//!
//! **Bridge.** An adapter is configured per namespace (which actions it may take, which
//! workflow types and task queues it may start on, which workflows it may signal or
//! update). An accepted event is remembered by `(adapter, idempotency_key)`: a resent
//! event gets the stored outcome back and is not applied again. The action itself is
//! idempotent on its own (a deterministic workflow id for starts, the command's
//! `request_id` for signals and updates), so a crash between the action's commit and the
//! receipt's leaves nothing to apply twice: the resend finds the action done and records
//! the receipt then.

mod bridge;
mod calls;
mod catalog;
pub mod outbound;

pub use crate::kernel::ServiceHttpConfig;
pub use bridge::{
    bridge_workflow_id, AdapterSpec, BridgeAction, BridgeAdapterRecord, BridgeEvent, BridgeOutcome,
    BridgeRejection, BridgeTarget, BRIDGE_ACTIONS, MAX_ADAPTERS,
};
pub(crate) use calls::{
    admit_workflow_call, finish_dispatch, fire_deadline, lease_dispatch, on_run_closed,
    on_update_closed,
};
pub use calls::{
    CallerLink, Dispatch, DispatchOutcome, DispatchWork, ExecuteRequest, ServiceCallRecord,
    ServiceCallView, HOST_NOT_ALLOWED, TARGET_NAMESPACE_DENIED,
};
pub use catalog::{
    normalize_name, valid_catalog_name, CatalogPatch, EndpointRecord, OperationPatch,
    OperationRecord, OperationSpec, ServiceRecord, BINDING_KINDS, MAX_CATALOG_LIST,
    MAX_CATALOG_NAME, OPERATION_MODES,
};
