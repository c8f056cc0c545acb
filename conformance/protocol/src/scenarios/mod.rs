//! The scenarios, by group, and the scripted worker they share.
//!
//! Every scenario works on names of its own (`Ctx::name`): its own task queue, workflow
//! ids and schedule ids, so scenarios run side by side and a run can be repeated against
//! a server that keeps its data.

mod control;
mod discovery;
mod execution;
mod worker;

use futures::future::BoxFuture;

use crate::{Ctx, Outcome};

/// One scenario: where it belongs, what it exercises, and how to run it.
pub(crate) struct Scenario {
    pub id: &'static str,
    pub group: &'static str,
    pub title: &'static str,
    /// `platform-conformance/<manifest>#<scenario id>` where one exists, else the protocol
    /// contract (`sdk-protocol §N`, an upstream schema).
    pub upstream: &'static [&'static str],
    pub run: fn(Ctx) -> BoxFuture<'static, Outcome>,
}

macro_rules! scenario {
    ($group:literal, $id:literal, $title:literal, [$($up:literal),*], $f:path) => {
        Scenario {
            id: $id,
            group: $group,
            title: $title,
            upstream: &[$($up),*],
            run: |ctx| Box::pin($f(ctx)),
        }
    };
}

pub(crate) static ALL: &[Scenario] = &[
    // ── discovery and version negotiation ──
    scenario!("discovery", "discovery.cluster_info", "cluster/info answers the envelope: identity, control plane 2, worker protocol 1.x, schema-valid",
        ["cluster-info-envelope.schema.json", "sdk-protocol §2"], discovery::cluster_info),
    scenario!("discovery", "discovery.health", "GET /api/health answers 200 without credentials",
        ["control-plane-api.openapi.yaml#/health"], discovery::health),
    scenario!("discovery", "discovery.control_plane_version_refusal", "a control request without the version header, or with a future one, is a named 4xx before any mutation",
        ["skew-refusal-matrix-scenarios.json#future_version_boundary_matrix"], discovery::control_version_refusal),
    scenario!("discovery", "discovery.worker_protocol_version_refusal", "a worker request with a future major protocol version is a named 4xx",
        ["skew-refusal-matrix-scenarios.json#future_version_boundary_matrix"], discovery::worker_version_refusal),
    // ── start / describe / list ──
    scenario!("workflows", "workflows.start_describe_list", "a start answers the run id; describe, runs and a filtered list show it",
        ["sdk-protocol §5.1", "namespace-runtime-scenarios.json#namespace_create_update_describe_and_list"], control::start_describe_list),
    scenario!("workflows", "workflows.duplicate_start", "a second start of a running id is 409 (fail policy); use-existing returns the running run",
        ["sdk-protocol §5.1 duplicate_policy"], control::duplicate_start),
    // ── workflow tasks and leases ──
    scenario!("workflow_tasks", "workflow_tasks.complete_and_fencing", "a workflow task carries its history; a report with another lease owner or attempt, or a second completion, is refused",
        ["sdk-protocol §6.4", "worker-protocol-api.openapi.yaml"], execution::workflow_task_fencing),
    scenario!("workflow_tasks", "workflow_tasks.failure_redelivers_and_fences_old_attempt", "a failed workflow task is delivered again with a higher attempt and the old attempt's reports are refused",
        ["sdk-protocol §6.4 Fail"], execution::workflow_task_failure_redelivery),
    scenario!("workflow_tasks", "workflow_tasks.heartbeat_and_empty_poll", "a heartbeat echoes the lease; a poll of an empty queue answers 200 with no task within its timeout",
        ["sdk-protocol §6.2", "sdk-protocol §6.4 Heartbeat"], execution::heartbeat_and_empty_poll),
    scenario!("workflow_tasks", "workflow_tasks.waiting_for_history_is_a_noop", "the WorkflowTaskWaitingForHistory failure is a successful no-op, not a retried failure",
        ["sdk-protocol §6.4 quirk"], execution::waiting_for_history_noop),
    // ── activities ──
    scenario!("activities", "activities.complete_round_trip", "a scheduled activity is delivered with its arguments and its result reaches the workflow",
        ["replay-runtime-scenarios.json#python_completed_history_activity_replay", "sdk-protocol §6.5"], execution::activity_round_trip),
    scenario!("activities", "activities.retry_then_complete", "a retryable failure is retried as attempt 2 per the retry policy; the stale attempt is refused",
        ["migration-runtime-scenarios.json#mid_activity_retry_preserved", "sdk-protocol §6.6"], execution::activity_retry),
    scenario!("activities", "activities.non_retryable_failure", "a non-retryable failure closes the activity after one attempt",
        ["saga-runtime-scenarios.json#failure_at_a_no_compensation", "sdk-protocol §6.5 Fail"], execution::activity_non_retryable),
    scenario!("activities", "activities.start_to_close_timeout", "an activity past its start-to-close timeout times out; the late completion is refused",
        ["sdk-protocol §7 schedule_activity timeouts"], execution::activity_timeout),
    // ── signals, queries, updates ──
    scenario!("messages", "messages.signal_idempotency", "a signal is recorded once per request_id; a retry with the same id is not recorded again",
        ["principal-attribution-scenarios.json#start_signal_cancel_spoofing", "sdk-protocol §5.1 signal"], execution::signal_idempotency),
    scenario!("messages", "messages.query_round_trip", "a query is answered through a query task with the worker's result",
        ["principal-attribution-scenarios.json#query_attribution", "sdk-protocol §6.8"], execution::query_round_trip),
    scenario!("messages", "messages.update_round_trip_and_idempotency", "an update is accepted, applied by a workflow task, completed; the same request_id returns the same update",
        ["workflow-update-runtime-scenarios.json#completed_update_result_round_trip", "workflow-update-runtime-scenarios.json#duplicate_request_idempotency"], execution::update_round_trip),
    scenario!("messages", "messages.update_on_closed_workflow", "an update of a closed workflow is refused with a named 4xx",
        ["workflow-update-runtime-scenarios.json#terminal_workflow_update_behavior"], execution::update_closed),
    // ── timers ──
    scenario!("timers", "timers.fire", "a 1 s timer fires: TimerScheduled, TimerFired and a new workflow task",
        ["replay-runtime-scenarios.json#python_completed_history_wait_condition_replay", "sdk-protocol §7 start_timer"], execution::timer_fires),
    // ── children ──
    scenario!("children", "children.parent_child_completion", "a child started by a parent runs on its queue and its result reaches the parent",
        ["child-workflow-runtime-scenarios.json#python_parent_python_child_baseline"], execution::child_completion),
    // ── continue-as-new ──
    scenario!("continue_as_new", "continue_as_new.new_run", "continue-as-new closes the run and starts a new run of the same id",
        ["sdk-protocol §7 continue_as_new"], execution::continue_as_new),
    // ── cancel / terminate ──
    scenario!("cancel_terminate", "cancel_terminate.cancel", "cancel closes a running workflow as cancelled; its outstanding task's report is refused",
        ["child-workflow-runtime-scenarios.json#parent_cancellation_propagates_to_child", "sdk-protocol §5.1 cancel"], execution::cancel),
    scenario!("cancel_terminate", "cancel_terminate.terminate", "terminate closes a running workflow as terminated and records the reason",
        ["sdk-protocol §5.1 terminate"], execution::terminate),
    // ── schedules ──
    scenario!("schedules", "schedules.lifecycle", "create, describe, list, trigger (starts a workflow), pause, resume, delete",
        ["schedules-runtime-scenarios.json#list_describe_visibility", "schedules-runtime-scenarios.json#pause_resume_no_fire_window", "schedules-runtime-scenarios.json#delete_stops_future_fires"], control::schedule_lifecycle),
    scenario!("schedules", "schedules.invalid_cron_refusal", "a schedule with an invalid cron expression is a named 4xx; a duplicate id is 409",
        ["schedules-runtime-scenarios.json#invalid_cron_refusal"], control::schedule_refusals),
    // ── namespaces and search attributes ──
    scenario!("namespaces", "namespaces.create_describe_isolate", "a created namespace is described and listed; a workflow in it is invisible from another",
        ["namespace-runtime-scenarios.json#namespace_create_update_describe_and_list", "namespace-runtime-scenarios.json#workflow_cross_namespace_visibility_isolation"], control::namespace_isolation),
    scenario!("namespaces", "namespaces.search_attributes", "a registered attribute is set on start and upserted by a command (describe shows both), found by a schedule list query; a reserved name is refused",
        ["search-attribute-runtime-scenarios.json#schema_definition_and_reserved_name_refusal", "search-attribute-runtime-scenarios.json#python_worker_start_and_upsert_visibility", "search-attribute-runtime-scenarios.json#equality_range_bool_query_behavior", "search-attribute-runtime-scenarios.json#undefined_key_rejection"], control::search_attributes),
    // ── auth ──
    scenario!("auth", "auth.refusals", "with tokens: no token and a wrong token are 401 on both planes; the given token is accepted",
        ["principal-attribution-scenarios.json#named_token_actor_matrix", "sdk-protocol §4.1"], control::auth_refusals),
    // ── bad input ──
    scenario!("bad_input", "bad_input.named_4xx_never_5xx", "malformed JSON, missing fields, unknown ids and routes, bad commands: each a 4xx with a reason, never a 5xx",
        ["workflow-update-runtime-scenarios.json#invalid_input_refusal", "workflow-update-runtime-scenarios.json#unknown_update_refusal", "sdk-protocol §4.1"], control::bad_input),
    // ── history export ──
    scenario!("history", "history.export_bundle_schema", "a completed run's history export validates against history-export-bundle.schema.json and matches its history",
        ["history-export-bundle.schema.json", "replay-runtime-scenarios.json#server_history_mutation_refusal"], execution::history_export),
];
