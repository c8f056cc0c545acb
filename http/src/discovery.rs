//! Discovery documents: health, readiness and `cluster/info`. Only implemented features
//! are advertised; a capability the SDK sees as `true` makes it rely on the routes behind.

use serde_json::{json, Value};

/// Worker protocol version Keel speaks (the SDK accepts any 1.x with minor ≥ its own).
pub const WORKER_PROTOCOL_VERSION: &str = "1.20";
/// Highest worker protocol minor version accepted from clients.
pub const WORKER_PROTOCOL_MINOR: u32 = 20;
/// Control-plane version Keel speaks.
pub const CONTROL_PLANE_VERSION: &str = "2";
/// Server version.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Commands a workflow task completion may carry.
pub const SUPPORTED_COMMANDS: &[&str] = &[
    "schedule_activity",
    "complete_workflow",
    "fail_workflow",
    "start_child_workflow",
    "continue_as_new",
    "start_timer",
    "open_condition_wait",
    "open_signal_wait",
    "record_side_effect",
    "record_version_marker",
    "upsert_search_attributes",
    "upsert_memo",
    "record_local_activity",
    "complete_update",
    "fail_update",
    "start_service_operation",
];

/// Worker-registration capabilities Keel honours; a registration's reply echoes those
/// of its request found here (the Rust SDK confirms a feature only from that echo).
pub const WORKER_CAPABILITIES: &[&str] = &[
    "condition_wait_occurrence_identity",
    "local_activities",
    "memo_upserts",
    "query_tasks",
    "sticky_execution",
    "typed_search_attributes",
    "worker_sessions",
    "workflow_updates",
];

/// Portable worker-affinity features as the registration reply's `capability_manifest`
/// states them (worker protocol 1.18): what Keel does for every worker, whatever it asked.
pub fn worker_capability_manifest() -> Value {
    json!({
        "sticky_execution": {"supported": true, "minimum_protocol_version": "1.18"},
        "local_activities": {"supported": true, "minimum_protocol_version": "1.18"},
        "worker_sessions": {
            "supported": true,
            "minimum_protocol_version": "1.18",
            "implementation": "typed_worker_session",
        },
    })
}

/// The limits Keel enforces.
pub const MAX_PAYLOAD_BYTES: usize = 2 * 1024 * 1024;
/// Longest name of a signal, query or update (`limits.max_operation_name_length`),
/// enforced on the command routes' path.
pub const MAX_OPERATION_NAME_BYTES: usize = 256;

/// The worker-plane capabilities, merged into every worker response.
pub fn server_capabilities() -> Value {
    json!({
        "query_tasks": true,
        "workflow_memo_updates": {"supported": true},
        "poll_status": true,
        "long_poll_timeout": 30,
        "workflow_task_poll_request_idempotency": true,
        "sticky_execution": {"supported": true},
        "supported_workflow_task_commands": SUPPORTED_COMMANDS,
        "history_page_size_default": 500,
        "history_page_size_max": 1000,
        "activity_retry_policy": true,
        "activity_timeouts": true,
        "non_retryable_failures": true,
        "worker_session_verbs": ["create", "heartbeat", "close"],
        "worker_sessions": worker_sessions_contract(),
    })
}

/// The worker-session runtime contract (`workerSessionRuntimeContract`) as Keel keeps
/// it: what `sessions` and the lease-time admission do.
pub fn worker_sessions_contract() -> Value {
    json!({
        "feature": "worker_sessions",
        "contract_version": "1.0",
        "command_field": "worker_session",
        "activity_options_field": "worker_session",
        "verbs": ["create", "heartbeat", "close"],
        "lifecycle": {
            "creation": "lazy_create_on_first_admitted_activity_or_explicit_worker_create",
            "renewal": "activity_heartbeat_or_explicit_session_heartbeat",
            "close": "explicit_holder_close",
            "lease_expiry": "session_expires_when_lease_is_not_renewed",
            "ttl_expiry": "absolute_session_ttl_is_terminal_for_that_session_id",
        },
        "ownership": "single_worker_lease_owner",
        "lease": {
            "scope": "namespace_session_id",
            "owner": "registered_worker_id",
            "activity_attempt_leases_remain_independent": true,
        },
        "admission": {
            "queue_routing_first": true,
            "requires_registered_worker": true,
            "requires_capabilities": true,
            "create_if_missing_default": true,
            "allow_reacquire_after_failure_default": true,
        },
        "limits": {
            "max_concurrent_worker_sessions": "worker_registration",
            "max_concurrent_activities": "session",
        },
        "default_max_concurrent_activities": 1,
        "renewal": {
            "activity_heartbeat_renews_session": true,
            "explicit_session_heartbeat": true,
        },
        "failure_detection": ["lease_expiry", "registered_worker_heartbeat_staleness"],
        "holder_loss": {
            "in_flight_activities_keep_at_least_once_attempt_semantics": true,
            "replacement_worker_must_reacquire_session": true,
            "process_local_state_must_be_rebuilt_after_reacquire": true,
        },
        "cancellation": {
            "workflow_cancellation_observed_through_activity_heartbeat": true,
            "session_lease_does_not_override_activity_cancel_requested": true,
            "planned_shutdown_should_close_sessions": true,
        },
        "routing": ["queue", "connection", "requirements"],
        "visibility": ["active", "closed", "expired", "failed", "orphaned"],
        "statuses": ["active", "closed", "expired", "failed", "orphaned"],
        "terminal_statuses": ["closed"],
        "terminal_conditions": ["explicit_close", "ttl_expired", "allow_reacquire_after_failure_false"],
        "session_unavailable_failure": {
            "event": "ActivityFailed",
            "exception_type": "WorkerSessionUnavailable",
            "failure_category": "worker_session",
            "non_retryable": true,
        },
        "authoring_guidance": [
            "Schedule activities with worker_session to run them on the worker holding that session; the first admitted activity creates it unless create_if_missing is false.",
            "A worker that reacquires a session after its holder was lost must rebuild any process-local state.",
            "Close sessions on planned shutdown: a closed session's open activities fail with WorkerSessionUnavailable.",
        ],
    })
}

/// The role topology of a standalone node hosting `node`'s roles.
pub fn topology(
    node: &crate::gates::NodeRoles,
    workflow_lease_s: u64,
    activity_lease_s: u64,
) -> Value {
    json!({
        "schema": "durable-workflow.v2.role-topology",
        "version": 4,
        "supported_shapes": ["standalone_server"],
        "current_shape": "standalone_server",
        "current_process_class": node.process_class(),
        "current_roles": node.roles(),
        "role_vocabulary": crate::gates::ROLE_VOCABULARY,
        "execution_mode": "remote_worker_protocol",
        "matching_role": {
            "queue_wake_enabled": true,
            "shape": "in_worker",
            "wake_owner": "worker_loop",
            "task_dispatch_mode": "poll",
            "partition_primitives": ["queue", "compatibility", "namespace"],
            "backpressure_model": "lease_ownership",
            "discovery_limits": {
                "poll_batch_cap": 100,
                "availability_ceiling_seconds": 1,
                "wake_signal_ttl_seconds": 60,
                "workflow_task_lease_seconds": workflow_lease_s,
                "activity_task_lease_seconds": activity_lease_s,
            },
        },
    })
}

/// Lists `invocable_http` among the service-call binding kinds when this server may call
/// out at all (its `--service-http-allow` list is not empty), with what its client
/// speaks; the allowed hosts themselves are not published.
pub fn advertise_service_http(info: &mut Value, allowed_hosts: usize) {
    let Some(calls) = info.pointer_mut("/capabilities/service_calls") else {
        return;
    };
    if allowed_hosts == 0 {
        return;
    }
    if let Some(kinds) = calls.get_mut("binding_kinds").and_then(Value::as_array_mut) {
        kinds.push(json!("invocable_http"));
    }
    calls["invocable_http"] = json!({
        "schemes": ["http"],
        "host_allow_list": true,
        "idempotency_header": "Idempotency-Key",
        "delivery": "at_least_once",
    });
}

/// The `cluster/info` document (its static part; `probes` adds the live blocks).
pub fn cluster_info(
    server_id: &str,
    default_namespace: &str,
    topology: &Value,
    storage: Option<&keel_engine::storage::Capabilities>,
) -> Value {
    let mut info = json!({
        "server_id": server_id,
        "version": SERVER_VERSION,
        "product": "keel",
        "default_namespace": default_namespace,
        "supported_sdk_versions": {"python": ">=2.12.0"},
        "capabilities": {
            "workflow_tasks": true,
            "activity_tasks": true,
            "signals": true,
            "queries": true,
            "updates": true,
            "schedules": true,
            "history_export": true,
            "embedded_v2_import": false,
            "payload_codec_envelope": true,
            "payload_codec_envelope_responses": true,
            "bridge_adapter_outcome_contract": true,
            // Keel's name for the admin catalog routes (`/api/service-endpoints/...`).
            "service_catalog": true,
            // Keel's name for durable service calls (execute route and the workflow
            // command `start_service_operation`, listed in the worker protocol's
            // `supported_workflow_task_commands`); the SDK gates neither on a flag.
            "service_calls": {
                "supported": true,
                // `invocable_http` joins once the operator allows a host (see
                // `advertise_service_http`).
                "binding_kinds": [
                    "start_workflow",
                    "signal_workflow",
                    "update_workflow",
                    "query_workflow",
                    "activity_execution",
                ],
                "workflow_command": "start_service_operation",
            },
            "replay_verification_contract": false,
            "external_executor_config_contract": false,
            "invocable_carrier_contract": false,
            "payload_codecs": ["avro"],
            "response_compression": [],
        },
        "limits": {
            "max_payload_bytes": MAX_PAYLOAD_BYTES,
            "max_memo_bytes": keel_engine::model::MAX_MEMO_BYTES,
            "max_search_attributes": keel_engine::namespaces::MAX_SEARCH_ATTRIBUTES,
            "max_pending_activities": keel_engine::model::MAX_PENDING_ACTIVITIES,
        },
        "topology": topology,
        "control_plane": {
            // An integer: the schema types it so, and the SDK compares str(version).
            "version": 2,
            "header": "X-Durable-Workflow-Control-Plane-Version",
            "request_contract": {
                "schema": "durable-workflow.v2.control-plane-request.contract",
                "version": 1,
                "operations": {
                    "start": {"fields": {"duplicate_policy": {"canonical_values": ["fail", "use-existing"], "aliases": {"reject": "fail"}}}},
                    "update": {"fields": {"wait_for": {"canonical_values": ["accepted", "completed"]}}},
                },
            },
        },
        "worker_protocol": {
            "version": WORKER_PROTOCOL_VERSION,
            "header": "X-Durable-Workflow-Protocol-Version",
            "server_capabilities": server_capabilities(),
        },
        "auth_composition_contract": {
            "schema": "durable-workflow.v2.auth-composition.contract",
            "version": 1,
            "precedence": {
                "connection_values": ["flag", "environment", "selected_profile", "default"],
                "profile_selection": ["flag_env", "DW_ENV", "current_profile", "default_profile"],
            },
            "canonical_environment": {
                "server_url": "DURABLE_WORKFLOW_SERVER_URL",
                "namespace": "DURABLE_WORKFLOW_NAMESPACE",
                "auth_token": "DURABLE_WORKFLOW_AUTH_TOKEN",
                "tls_verify": "DURABLE_WORKFLOW_TLS_VERIFY",
                "profile": "DW_ENV",
            },
            "auth_material": {
                "token": {"status": "supported", "effective_config_value": "redacted"},
                "mtls": {"status": "reserved"},
                "signed_headers": {"status": "reserved"},
            },
            "effective_config": {"required_fields": ["server_url", "namespace", "profile", "auth", "tls", "identity"]},
            "redaction": {"never_echo": ["bearer_tokens", "private_keys", "raw_authorization_headers"]},
        },
    });
    if let Some(backend) = storage {
        info["storage"] = crate::metrics::storage_json(backend);
    }
    add_manifests(&mut info);
    info
}

/// Adds the contract manifests the envelope schema requires, and fills in limits others
/// did not set. Values already present win (other modules own their capabilities).
pub fn add_manifests(info: &mut Value) {
    use keel_engine::namespaces::{
        MAX_SEARCH_ATTRIBUTES, MAX_SEARCH_ATTRIBUTE_KEY_BYTES, MAX_SEARCH_ATTRIBUTE_VALUE_BYTES,
    };
    let Some(obj) = info.as_object_mut() else {
        return;
    };
    if let Some(limits) = obj.get_mut("limits").and_then(Value::as_object_mut) {
        for (k, v) in [
            ("max_search_attributes", json!(MAX_SEARCH_ATTRIBUTES)),
            (
                "max_search_attribute_key_length",
                json!(MAX_SEARCH_ATTRIBUTE_KEY_BYTES),
            ),
            (
                "max_search_attribute_value_bytes",
                json!(MAX_SEARCH_ATTRIBUTE_VALUE_BYTES),
            ),
            ("max_operation_name_length", json!(MAX_OPERATION_NAME_BYTES)),
            (
                "max_pending_activities",
                json!(keel_engine::model::MAX_PENDING_ACTIVITIES),
            ),
            (
                "max_pending_children",
                json!(keel_engine::model::MAX_PENDING_CHILDREN),
            ),
        ] {
            limits.entry(k).or_insert(v);
        }
    }
    let defaults = json!({
        "supported_sdk_versions": {"python": ">=2.12.0"},
        "structural_limits": {
            "max_payload_bytes": MAX_PAYLOAD_BYTES,
            "max_value_bytes": keel_engine::storage::MAX_VALUE_BYTES,
            "max_transaction_bytes": keel_engine::storage::MAX_TXN_BYTES,
            "history_page_size_max": 1000,
        },
        "client_compatibility": {
            "authority": "protocol_manifests",
            "manifests": ["control_plane", "worker_protocol", "auth_composition_contract"],
        },
        "surface_stability_contract": {
            "schema": "durable-workflow.v2.surface-stability.contract",
            "version": 1,
            "authority_url": "https://durable-workflow.github.io/docs/2.0/compatibility",
            "stability_levels": ["stable", "experimental", "deprecated"],
            "release_rules": {"additive_minor_breaking_major": true},
            "field_visibility_rule": "unknown_fields_ignored",
            "surface_families": {
                "server_api": {"stability": "stable", "authority_manifest": "control_plane"},
                "worker_protocol": {"stability": "stable", "authority_manifest": "worker_protocol"},
                "cluster_info_manifests": {"stability": "stable", "authority_manifest": "cluster_info"},
            },
            "release_check": {"status": "not_run_by_this_server"},
        },
        "platform_protocol_specs": {
            "schema": "durable-workflow.v2.platform-protocol-specs.catalog",
            "version": 16,
            "catalog_url": "https://durable-workflow.github.io/platform-protocol-specs.json",
            "authority_url": "https://durable-workflow.github.io/docs/2.0/platform-protocol-specs",
            "formats": ["openapi", "json_schema", "asyncapi"],
            "owner_repos": ["durable-workflow/workflow", "durable-workflow/server"],
            "status_levels": ["published", "in_progress", "planned"],
            "evolution_rules": ["additive_minor_breaking_major", "parallel_primitive_only"],
            "specs": {
                "control_plane_api": {"spec_id": "durable-workflow.v2.control-plane-api", "format": "openapi", "server_coverage": "partial"},
                "worker_protocol_api": {"spec_id": "durable-workflow.v2.worker-protocol-api", "format": "openapi", "server_coverage": "partial"},
                "cluster_info_envelope": {"spec_id": "durable-workflow.v2.cluster-info-envelope", "format": "json_schema", "server_coverage": "full_with_documented_deviation"},
            },
            "release_check": {"status": "not_run_by_this_server"},
        },
        "platform_conformance_suite": {
            "schema": "durable-workflow.v2.platform-conformance.suite",
            "version": 41,
            "authority_doc": "https://durable-workflow.github.io/docs/2.0/platform-conformance",
            "surface_stability_authority": "surface_stability_contract",
            "result_schema": "durable-workflow.v2.platform-conformance.result",
            "result_version": 1,
            "conformance_levels": ["full", "partial", "provisional", "nonconforming"],
            "targets": {"standalone_server": {"claimed_level": "partial"}},
            "fixture_catalog": {},
            "pass_fail_rules": {},
            "harness_contract": {},
            "release_gates": {},
        },
        "sdk_neutrality_contract": {
            "schema": "durable-workflow.v2.sdk-neutrality.contract",
            "version": 1,
            "authority_url": "https://durable-workflow.github.io/docs/2.0/sdk-neutrality",
        },
        "bridge_adapter_outcome_contract": {
            "schema": "durable-workflow.v2.bridge-adapter-outcome.contract",
            "version": 1,
            "supported": true,
            "boundary": {
                "role": "bounded_ingress_or_handoff",
                "not_a_workflow_runtime": true,
                "allowed_actions": keel_engine::services::BRIDGE_ACTIONS,
            },
            "patterns": {
                "webhook_receiver": {
                    "path_template": "/api/bridge-adapters/webhook/{adapter}",
                    "allowed_actions": keel_engine::services::BRIDGE_ACTIONS,
                },
            },
            "configuration": {
                "scope": "namespace",
                "routes": ["GET /api/bridge-adapters", "GET|PUT|DELETE /api/bridge-adapters/webhook/{adapter}"],
                "required_role": "admin",
            },
            "idempotency": {
                "required": true,
                "scope": ["namespace", "adapter", "idempotency_key"],
                "durable": true,
                "duplicate_answer": "duplicate",
            },
            "visibility": {
                "outcome_fields": [
                    "schema", "version", "adapter", "action", "accepted", "outcome", "reason",
                    "idempotency_key", "target", "correlation", "workflow_id", "run_id",
                    "workflow_type", "control_plane_outcome", "rejection_reason", "message",
                ],
                "redaction": {"never_echo": ["authorization", "signature", "token", "secret", "raw_payload", "input"]},
            },
            "outcomes": {
                "accepted": {"http_status": 202, "retriable": false, "terminal": false},
                "duplicate": {"http_status": 200, "retriable": false, "terminal": true},
                "rejected": {"http_status": 422, "retriable": false, "terminal": true},
            },
            "rejection_reasons": [
                "adapter_unavailable", "unsupported_action", "malformed_payload", "unknown_target",
                "instance_already_started", "run_not_active", "unknown_signal", "unknown_update",
            ],
        },
        "replay_verification_contract": {
            "schema": "durable-workflow.v2.replay-verification.contract",
            "version": 1,
            "supported": false,
        },
    });
    if let Value::Object(defaults) = defaults {
        for (k, v) in defaults {
            obj.entry(k).or_insert(v);
        }
    }
}
