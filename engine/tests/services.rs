//! The service catalog and the webhook bridge over the in-memory store: lowercase names,
//! 404s naming the missing level, delete refusals while dependents exist, and bridge
//! events applied once per idempotency key, across a restart too.

mod support;

use std::time::Duration;

use keel_engine::services::{
    AdapterSpec, BridgeAction, BridgeEvent, BridgeTarget, CatalogPatch, OperationPatch,
    OperationSpec,
};
use keel_engine::Error;
use serde_json::{json, Value};
use support::{harness, open, reason, NS, QUEUE};

fn spec(kind: &str, target: Option<&str>) -> OperationSpec {
    OperationSpec {
        description: None,
        operation_mode: "sync".into(),
        handler_binding_kind: kind.into(),
        handler_target_reference: target.map(str::to_string),
        handler_binding: Value::Null,
        deadline_policy: Value::Null,
        idempotency_policy: Value::Null,
        cancellation_policy: Value::Null,
        retry_policy: Value::Null,
        boundary_policy: Value::Null,
        metadata: json!({}),
    }
}

fn extra(e: &Error, key: &str) -> Value {
    match e {
        Error::Rejected { extra, .. } => extra.get(key).cloned().unwrap_or(Value::Null),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn catalog_names_are_case_insensitive_and_answered_lowercase() {
    let h = harness(Duration::from_secs(30), &[]).await;
    let e = &h.engine;
    let ep = e
        .create_service_endpoint(NS, "Billing", Some("billing".into()), json!({"team": "b"}))
        .await
        .expect("endpoint created");
    assert_eq!(ep.endpoint_name, "billing");
    let dup = e
        .create_service_endpoint(NS, "BILLING", None, json!({}))
        .await
        .expect_err("the same name in another case is taken");
    assert_eq!(extra(&dup, "endpoint_id"), json!(ep.id));
    assert_eq!(reason(dup), "endpoint_already_exists");
    let svc = e
        .create_service(NS, "BILLING", "Invoices", None, json!({}))
        .await
        .expect("service created");
    assert_eq!(
        (svc.endpoint_id.as_str(), svc.service_name.as_str()),
        (ep.id.as_str(), "invoices")
    );
    let op = e
        .create_operation(
            NS,
            "billing",
            "INVOICES",
            "Charge",
            spec("start_workflow", Some("invoice.charge")),
        )
        .await
        .expect("operation created");
    assert_eq!(op.operation_name, "charge");
    assert_eq!(op.service_id, svc.id);
    assert_eq!(op.endpoint_id, ep.id);
    let read = e
        .describe_operation(NS, "BiLLing", "invoices", "CHARGE")
        .await
        .expect("found in any case");
    assert_eq!(read, op);
    assert_eq!(
        e.list_operations(NS, "billing", "invoices")
            .await
            .expect("list")
            .len(),
        1
    );
}

#[tokio::test]
async fn a_missing_level_is_named_by_its_404() {
    let h = harness(Duration::from_secs(30), &[]).await;
    let e = &h.engine;
    assert_eq!(
        reason(
            e.describe_service_endpoint(NS, "nope")
                .await
                .expect_err("refused")
        ),
        "endpoint_not_found"
    );
    e.create_service_endpoint(NS, "billing", None, json!({}))
        .await
        .expect("endpoint");
    assert_eq!(
        reason(e.list_services(NS, "other").await.expect_err("refused")),
        "endpoint_not_found"
    );
    assert_eq!(
        reason(
            e.describe_service(NS, "billing", "nope")
                .await
                .expect_err("refused")
        ),
        "service_not_found"
    );
    e.create_service(NS, "billing", "invoices", None, json!({}))
        .await
        .expect("service");
    let err = e
        .describe_operation(NS, "billing", "invoices", "nope")
        .await
        .expect_err("refused");
    assert_eq!(extra(&err, "operation_name"), json!("nope"));
    assert_eq!(reason(err), "operation_not_found");
    assert_eq!(
        reason(
            e.create_operation(
                NS,
                "billing",
                "nope",
                "x",
                spec("signal_workflow", Some("t"))
            )
            .await
            .expect_err("refused")
        ),
        "service_not_found"
    );
    assert_eq!(
        reason(
            e.list_service_endpoints("elsewhere")
                .await
                .expect_err("refused")
        ),
        "namespace_not_found"
    );
}

#[tokio::test]
async fn deletes_fail_closed_while_dependents_exist() {
    let h = harness(Duration::from_secs(30), &[]).await;
    let e = &h.engine;
    e.create_service_endpoint(NS, "billing", None, json!({}))
        .await
        .expect("endpoint");
    e.create_service(NS, "billing", "invoices", None, json!({}))
        .await
        .expect("service");
    e.create_operation(
        NS,
        "billing",
        "invoices",
        "charge",
        spec("start_workflow", Some("t")),
    )
    .await
    .expect("operation");
    assert_eq!(
        reason(
            e.delete_service_endpoint(NS, "billing")
                .await
                .expect_err("refused")
        ),
        "endpoint_has_services"
    );
    assert_eq!(
        reason(
            e.delete_service(NS, "billing", "invoices")
                .await
                .expect_err("refused")
        ),
        "service_has_operations"
    );
    e.delete_operation(NS, "billing", "invoices", "charge")
        .await
        .expect("operation deleted");
    e.delete_service(NS, "billing", "invoices")
        .await
        .expect("service deleted");
    e.delete_service_endpoint(NS, "billing")
        .await
        .expect("endpoint deleted");
    assert!(e.list_service_endpoints(NS).await.expect("list").is_empty());
    // The name is free again, with a new id.
    e.create_service_endpoint(NS, "billing", None, json!({}))
        .await
        .expect("re-created");
}

#[tokio::test]
async fn updates_change_only_what_they_name_and_keep_a_target() {
    let h = harness(Duration::from_secs(30), &[]).await;
    let e = &h.engine;
    let ep = e
        .create_service_endpoint(NS, "billing", Some("d".into()), json!({"a": 1}))
        .await
        .expect("endpoint");
    h.clock.advance(Duration::from_secs(5));
    let ep2 = e
        .update_service_endpoint(
            NS,
            "billing",
            CatalogPatch {
                description: Some(None),
                metadata: None,
            },
        )
        .await
        .expect("updated");
    assert_eq!((ep2.description, ep2.metadata), (None, json!({"a": 1})));
    assert_eq!(ep2.created_at_ms, ep.created_at_ms);
    assert_eq!(ep2.updated_at_ms, ep.updated_at_ms + 5_000);
    e.create_service(NS, "billing", "invoices", None, json!({}))
        .await
        .expect("service");
    e.create_operation(
        NS,
        "billing",
        "invoices",
        "charge",
        spec("start_workflow", Some("t")),
    )
    .await
    .expect("op");
    let cleared = e
        .update_operation(
            NS,
            "billing",
            "invoices",
            "charge",
            OperationPatch {
                handler_target_reference: Some(None),
                ..OperationPatch::default()
            },
        )
        .await
        .expect_err("an operation must keep a target");
    assert!(matches!(&cleared, Error::Validation(f) if f.contains_key("handler_target_reference")));
    let op = e
        .update_operation(
            NS,
            "billing",
            "invoices",
            "charge",
            OperationPatch {
                operation_mode: Some("async".into()),
                handler_target_reference: Some(None),
                handler_binding: Some(json!({"workflow_type": "invoice.charge"})),
                ..OperationPatch::default()
            },
        )
        .await
        .expect("binding replaces the reference");
    assert_eq!(op.spec.operation_mode, "async");
    assert_eq!(
        op.spec.handler_binding,
        json!({"workflow_type": "invoice.charge"})
    );
    assert_eq!(op.spec.handler_binding_kind, "start_workflow");
}

fn adapter() -> AdapterSpec {
    AdapterSpec {
        description: None,
        enabled: true,
        actions: vec![BridgeAction::StartWorkflow, BridgeAction::SignalWorkflow],
        workflow_types: vec!["orders.fulfil".into()],
        task_queues: vec![QUEUE.into()],
        signal_names: vec![],
        update_names: vec![],
    }
}

fn start_event(key: &str, workflow_type: &str) -> BridgeEvent {
    BridgeEvent {
        adapter: "stripe".into(),
        action: BridgeAction::StartWorkflow,
        idempotency_key: key.into(),
        target: BridgeTarget {
            workflow_type: Some(workflow_type.into()),
            business_key: Some("order-1".into()),
            ..BridgeTarget::default()
        },
        input: json!({"codec": "avro", "blob": support::ARGS}),
        correlation: json!({"provider": "stripe"}),
    }
}

#[tokio::test]
async fn a_bridge_start_is_applied_once_per_key_across_a_restart() {
    let h = harness(Duration::from_secs(30), &[]).await;
    let rejected = h
        .engine
        .bridge_webhook(NS, &start_event("evt-1", "orders.fulfil"))
        .await
        .expect("answered");
    assert_eq!(
        (rejected.outcome.as_str(), rejected.reason.as_deref()),
        ("rejected", Some("adapter_unavailable"))
    );
    h.engine
        .put_bridge_adapter(NS, "stripe", adapter())
        .await
        .expect("configured");
    let first = h
        .engine
        .bridge_webhook(NS, &start_event("evt-1", "orders.fulfil"))
        .await
        .expect("answered");
    assert_eq!((first.outcome.as_str(), first.accepted), ("accepted", true));
    assert_eq!(first.control_plane_outcome.as_deref(), Some("started_new"));
    let wf = first.workflow_id.clone().expect("a workflow id");
    assert!(wf.starts_with("bridge-stripe-"), "{wf}");
    assert_eq!(first.target["task_queue"], json!(QUEUE));

    let engine = open(&h.store, &h.clock, Duration::from_secs(30), &[]).await;
    let again = engine
        .bridge_webhook(NS, &start_event("evt-1", "orders.fulfil"))
        .await
        .expect("answered");
    assert_eq!(
        (again.outcome.as_str(), again.accepted),
        ("duplicate", false)
    );
    assert_eq!(
        (again.workflow_id, again.run_id),
        (first.workflow_id, first.run_id.clone())
    );
    let (_, runs) = engine.list_runs(NS, &wf).await.expect("runs");
    assert_eq!(runs.len(), 1, "one run for one event");
}

#[tokio::test]
async fn bridge_targets_outside_the_adapter_configuration_are_rejected_by_name() {
    let h = harness(Duration::from_secs(30), &[]).await;
    let e = &h.engine;
    e.put_bridge_adapter(NS, "stripe", adapter())
        .await
        .expect("configured");
    let other_type = e
        .bridge_webhook(NS, &start_event("evt-2", "payroll.run"))
        .await
        .expect("answered");
    assert_eq!(other_type.reason.as_deref(), Some("unknown_target"));
    let mut queue = start_event("evt-3", "orders.fulfil");
    queue.target.task_queue = Some("elsewhere".into());
    assert_eq!(
        e.bridge_webhook(NS, &queue)
            .await
            .expect("answered")
            .reason
            .as_deref(),
        Some("unknown_target")
    );
    let mut update = start_event("evt-4", "orders.fulfil");
    update.action = BridgeAction::UpdateWorkflow;
    assert_eq!(
        e.bridge_webhook(NS, &update)
            .await
            .expect("answered")
            .reason
            .as_deref(),
        Some("unsupported_action")
    );
    let mut signal = start_event("evt-5", "orders.fulfil");
    signal.action = BridgeAction::SignalWorkflow;
    signal.target.workflow_id = Some("missing".into());
    signal.target.signal_name = Some("paid".into());
    assert_eq!(
        e.bridge_webhook(NS, &signal)
            .await
            .expect("answered")
            .reason
            .as_deref(),
        Some("unknown_target")
    );
    // Rejections are not remembered: once the workflow exists, the same key goes through.
    e.start_workflow(NS, support::start("missing", "orders.fulfil"))
        .await
        .expect("started");
    let ok = e.bridge_webhook(NS, &signal).await.expect("answered");
    assert_eq!(ok.outcome, "accepted");
    assert_eq!(ok.request_id.as_deref(), Some("bridge:stripe:evt-5"));
    let dup = e.bridge_webhook(NS, &signal).await.expect("answered");
    assert_eq!(
        (dup.outcome.as_str(), dup.control_plane_outcome.as_deref()),
        ("duplicate", Some("deduped_existing_command"))
    );
}

#[tokio::test]
async fn a_service_call_starts_its_workflow_once_per_key_and_follows_its_run() {
    use keel_engine::services::ExecuteRequest;
    use keel_engine::workflow::CloseCommand;
    let h = harness(Duration::from_secs(30), &[]).await;
    let e = &h.engine;
    e.create_service_endpoint(NS, "billing", None, json!({}))
        .await
        .expect("endpoint");
    e.create_service(NS, "billing", "invoices", None, json!({}))
        .await
        .expect("service");
    let mut charge = spec("start_workflow", None);
    charge.handler_binding = json!({"workflow_type": "invoice.charge", "task_queue": QUEUE});
    e.create_operation(NS, "billing", "invoices", "charge", charge)
        .await
        .expect("operation");
    e.create_operation(
        NS,
        "billing",
        "invoices",
        "poke",
        spec("query_workflow", Some("x")),
    )
    .await
    .expect("operation");
    let req = ExecuteRequest {
        arguments: json!({"codec": "avro", "blob": support::ARGS}),
        idempotency_key: Some("k1".into()),
        ..ExecuteRequest::default()
    };
    let first = e
        .execute_operation(NS, "billing", "invoices", "charge", req.clone())
        .await
        .expect("executed");
    assert_eq!((first.status, first.idempotent_replay), ("started", false));
    let again = e
        .execute_operation(NS, "Billing", "invoices", "charge", req)
        .await
        .expect("replayed");
    assert_eq!(
        (again.call.id.as_str(), again.idempotent_replay),
        (first.call.id.as_str(), true)
    );
    assert_eq!(
        again.call.linked_workflow_run_id,
        first.call.linked_workflow_run_id
    );
    let poke = e
        .execute_operation(NS, "billing", "invoices", "poke", ExecuteRequest::default())
        .await
        .expect_err("query bindings do not run");
    assert_eq!(reason(poke), "binding_not_supported");

    // The linked run closes (here: cancelled by an operator); the call follows it, and a
    // cancel of the call afterwards leaves the outcome as it was.
    e.close_workflow(
        NS,
        &first.call.linked_workflow_instance_id,
        None,
        CloseCommand::Terminate,
        Some("ops"),
    )
    .await
    .expect("terminated");
    let v = e
        .describe_service_call(NS, "billing", "invoices", "charge", &first.call.id)
        .await
        .expect("described");
    assert_eq!(v.status, "failed");
    let v = e
        .cancel_service_call(
            NS,
            "billing",
            "invoices",
            "charge",
            &first.call.id,
            Some("late".into()),
        )
        .await
        .expect("cancel answered");
    assert_eq!((v.status, v.call.cancelled_at_ms), ("failed", None));
    assert_eq!(
        reason(
            e.delete_operation(NS, "billing", "invoices", "charge")
                .await
                .expect_err("refused")
        ),
        "operation_has_service_calls"
    );
    assert_eq!(
        reason(
            e.describe_service_call(NS, "billing", "invoices", "charge", "nope")
                .await
                .expect_err("refused")
        ),
        "service_call_not_found"
    );
}

// ---- service calls: the state machine (workflow callers, deadlines, races) ----

const TARGET: &str = "svc";

/// An operation `billing/invoices/{name}` in `TARGET` bound to start `invoice.charge` on
/// `QUEUE`, with `deadline_policy`.
async fn target_operation(e: &keel_engine::Engine, name: &str, deadline_policy: Value) {
    e.ensure_namespace(TARGET).await.expect("namespace");
    e.register_worker(keel_engine::model::WorkerRecord {
        worker_id: support::WORKER.into(),
        namespace: TARGET.into(),
        task_queue: QUEUE.into(),
        runtime: Some("test".into()),
        sdk_version: None,
        build_id: None,
        supported_workflow_types: vec![],
        supported_activity_types: vec![],
        capabilities: vec![],
        registered_at_ms: support::START,
        last_heartbeat_at_ms: support::START,
    })
    .await
    .expect("worker registers in the target namespace");
    let _ = e
        .create_service_endpoint(TARGET, "billing", None, json!({}))
        .await;
    let _ = e
        .create_service(TARGET, "billing", "invoices", None, json!({}))
        .await;
    let mut op = spec("start_workflow", None);
    op.handler_binding = json!({"workflow_type": "invoice.charge", "task_queue": QUEUE});
    op.deadline_policy = deadline_policy;
    e.create_operation(TARGET, "billing", "invoices", name, op)
        .await
        .expect("operation");
}

fn target_poll() -> keel_engine::workflow::Poll {
    keel_engine::workflow::Poll {
        namespace: TARGET.into(),
        ..support::probe()
    }
}

/// Leases the target namespace's next workflow task (the linked run's).
async fn lease_target(e: &keel_engine::Engine) -> keel_engine::workflow::WorkflowTaskView {
    e.poll_workflow_task(&target_poll())
        .await
        .expect("poll")
        .expect("the linked run has a workflow task")
}

/// Starts a caller run in `NS` and completes its first task with a
/// `start_service_operation` command for `operation` (sync, waiting for completion).
async fn caller_calls(
    e: &keel_engine::Engine,
    id: &str,
    operation: &str,
    extra: Value,
) -> keel_engine::workflow::WorkflowTaskView {
    e.start_workflow(NS, support::start(id, "caller"))
        .await
        .expect("caller starts");
    let task = support::poll_wf(e).await.expect("caller task");
    let mut command = json!({
        "type": "start_service_operation",
        "endpoint_name": "Billing",
        "service_name": "invoices",
        "operation_name": operation,
        "payload_codec": "avro",
        "request_payload": support::ARGS,
        "namespace": TARGET,
        "idempotency_key": format!("key-{id}"),
        "mode_override": "sync",
        "wait_for": "completed",
    });
    if let (Some(c), Some(x)) = (command.as_object_mut(), extra.as_object()) {
        c.extend(x.clone());
    }
    e.complete_workflow_task(
        NS,
        &task.task_id,
        support::WORKER,
        task.workflow_task_attempt,
        &[command],
    )
    .await
    .expect("completion accepted");
    task
}

/// The caller run's history, as JSON events.
async fn caller_history(e: &keel_engine::Engine, id: &str) -> Vec<Value> {
    let run = e.describe(NS, id, None).await.expect("caller").run;
    let page = e
        .history(NS, id, &run.run_id, 0, 1000)
        .await
        .expect("history");
    page.events
        .iter()
        .map(|ev| serde_json::from_str::<Value>(ev.get()).expect("event json"))
        .collect()
}

fn service_events(events: &[Value]) -> Vec<(String, Value)> {
    events
        .iter()
        .filter(|e| {
            e["event_type"]
                .as_str()
                .is_some_and(|t| t.starts_with("ServiceCall"))
        })
        .map(|e| {
            (
                e["event_type"].as_str().unwrap_or("").to_string(),
                e["payload"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_waiting_caller_gets_started_then_the_linked_runs_result_and_a_task() {
    let h = harness(Duration::from_secs(30), &[]).await;
    let e = &h.engine;
    target_operation(e, "charge", Value::Null).await;
    caller_calls(e, "caller-1", "charge", json!({})).await;

    let recorded = service_events(&caller_history(e, "caller-1").await);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let (event, started) = &recorded[0];
    assert_eq!(event, "ServiceCallStarted");
    // The names are echoed as the command spelled them (the SDK compares them).
    assert_eq!(started["endpoint_name"], "Billing");
    assert_eq!(started["service_call"]["target_namespace"], TARGET);
    assert_eq!(started["service_call"]["idempotency_key"], "key-caller-1");
    assert_eq!(
        (&started["operation_mode"], &started["wait_for"]),
        (&json!("sync"), &json!("completed"))
    );
    assert_eq!(started["sequence"], 1);
    // A pending sync call does not wake the caller.
    assert!(
        support::poll_wf(e).await.is_none(),
        "no caller task while waiting"
    );

    let linked = lease_target(e).await;
    e.complete_workflow_task(
        TARGET,
        &linked.task_id,
        support::WORKER,
        linked.workflow_task_attempt,
        &[json!({"type": "complete_workflow", "result": {"codec": "avro", "blob": "BB=="}})],
    )
    .await
    .expect("linked run completes");

    let recorded = service_events(&caller_history(e, "caller-1").await);
    let (event, done) = recorded.last().expect("a closing event");
    assert_eq!(event, "ServiceCallCompleted");
    assert_eq!(
        done["response_payload"],
        json!({"codec": "avro", "blob": "BB=="})
    );
    assert_eq!(done["service_call"]["status"], "completed");
    assert_eq!(done["sequence"], 1);
    assert!(support::poll_wf(e).await.is_some(), "the caller wakes");
    let call_id = started["service_call_id"].as_str().expect("call id");
    let v = e
        .describe_service_call(TARGET, "billing", "invoices", "charge", call_id)
        .await
        .expect("described");
    assert_eq!(v.status, "completed");
    assert_eq!(
        v.call.caller_workflow_instance_id.as_deref(),
        Some("caller-1")
    );
}

#[tokio::test]
async fn an_unknown_operation_resolves_the_callers_step_as_failed() {
    let h = harness(Duration::from_secs(30), &[]).await;
    let e = &h.engine;
    target_operation(e, "charge", Value::Null).await;
    caller_calls(e, "caller-2", "refund", json!({})).await;
    let recorded = service_events(&caller_history(e, "caller-2").await);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let (event, failed) = &recorded[0];
    assert_eq!(event, "ServiceCallFailed");
    assert_eq!(failed["reason"], "operation_not_found");
    assert_eq!(failed["service_call"]["accepted"], false);
    assert!(
        support::poll_wf(e).await.is_some(),
        "the caller wakes to see it"
    );
}

#[tokio::test]
async fn an_async_caller_is_resolved_by_started_and_hears_nothing_more() {
    let h = harness(Duration::from_secs(30), &[]).await;
    let e = &h.engine;
    target_operation(e, "charge", Value::Null).await;
    caller_calls(
        e,
        "caller-3",
        "charge",
        json!({"mode_override": "async", "wait_for": "accepted"}),
    )
    .await;
    assert!(
        support::poll_wf(e).await.is_some(),
        "started resolves the step"
    );
    let linked = lease_target(e).await;
    e.complete_workflow_task(
        TARGET,
        &linked.task_id,
        support::WORKER,
        linked.workflow_task_attempt,
        &[json!({"type": "complete_workflow", "result": {"codec": "avro", "blob": "BB=="}})],
    )
    .await
    .expect("linked run completes");
    let recorded = service_events(&caller_history(e, "caller-3").await);
    assert_eq!(
        recorded.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
        ["ServiceCallStarted"]
    );
}

#[tokio::test]
async fn a_call_past_its_deadline_times_out_cancels_its_run_and_fails_the_caller() {
    let h = harness(Duration::from_secs(300), &[]).await;
    let e = &h.engine;
    target_operation(e, "charge", json!({"timeout_seconds": 10})).await;
    caller_calls(e, "caller-4", "charge", json!({})).await;
    let started = service_events(&caller_history(e, "caller-4").await)[0]
        .1
        .clone();
    let call_id = started["service_call_id"]
        .as_str()
        .expect("call id")
        .to_string();
    let v = e
        .describe_service_call(TARGET, "billing", "invoices", "charge", &call_id)
        .await
        .expect("described");
    assert_eq!(v.call.deadline_at_ms, Some(support::START + 10_000));

    h.clock.advance(Duration::from_secs(9));
    e.fire_due_timers(100).await.expect("timers");
    let v = e
        .describe_service_call(TARGET, "billing", "invoices", "charge", &call_id)
        .await
        .expect("described");
    assert_eq!(v.status, "started", "not due yet");

    h.clock.advance(Duration::from_secs(2));
    e.fire_due_timers(100).await.expect("timers");
    let v = e
        .describe_service_call(TARGET, "billing", "invoices", "charge", &call_id)
        .await
        .expect("described");
    assert_eq!(v.status, "timed_out");
    let linked = e
        .describe(TARGET, &v.call.linked_workflow_instance_id, None)
        .await
        .expect("linked");
    assert_eq!(linked.run.status.as_str(), "cancelled");
    let recorded = service_events(&caller_history(e, "caller-4").await);
    let (event, failed) = recorded.last().expect("closing event");
    assert_eq!(event, "ServiceCallFailed");
    assert_eq!(failed["service_call"]["status"], "timed_out");
    assert_eq!(recorded.len(), 2, "one closing event only: {recorded:?}");
}

#[tokio::test]
async fn a_cancel_after_completion_and_a_completion_after_cancel_change_nothing() {
    let h = harness(Duration::from_secs(300), &[]).await;
    let e = &h.engine;
    target_operation(e, "charge", json!({"timeout_seconds": 60})).await;
    let req = keel_engine::services::ExecuteRequest {
        arguments: json!({"codec": "avro", "blob": support::ARGS}),
        ..Default::default()
    };

    // Completion first: the cancel answers the completed call.
    let done = e
        .execute_operation(TARGET, "billing", "invoices", "charge", req.clone())
        .await
        .expect("executed");
    let linked = lease_target(e).await;
    e.complete_workflow_task(
        TARGET,
        &linked.task_id,
        support::WORKER,
        linked.workflow_task_attempt,
        &[json!({"type": "complete_workflow", "result": {"codec": "avro", "blob": "BB=="}})],
    )
    .await
    .expect("linked run completes");
    let v = e
        .cancel_service_call(TARGET, "billing", "invoices", "charge", &done.call.id, None)
        .await
        .expect("cancel answered");
    assert_eq!((v.status, v.call.cancelled_at_ms), ("completed", None));

    // Cancel first: the linked run's late completion is refused and the call stays
    // cancelled; its deadline timer, due later, is stale.
    let cancelled = e
        .execute_operation(TARGET, "billing", "invoices", "charge", req)
        .await
        .expect("executed");
    let linked = lease_target(e).await;
    let v = e
        .cancel_service_call(
            TARGET,
            "billing",
            "invoices",
            "charge",
            &cancelled.call.id,
            Some("changed my mind".into()),
        )
        .await
        .expect("cancelled");
    assert_eq!(
        (v.status, v.message.as_deref()),
        ("cancelled", Some("changed my mind"))
    );
    let late = e
        .complete_workflow_task(
            TARGET,
            &linked.task_id,
            support::WORKER,
            linked.workflow_task_attempt,
            &[json!({"type": "complete_workflow", "result": {"codec": "avro", "blob": "BB=="}})],
        )
        .await;
    assert!(late.is_err(), "the cancelled run takes no completion");
    h.clock.advance(Duration::from_secs(61));
    e.fire_due_timers(100).await.expect("timers");
    let v = e
        .describe_service_call(TARGET, "billing", "invoices", "charge", &cancelled.call.id)
        .await
        .expect("described");
    assert_eq!(v.status, "cancelled");
}

#[tokio::test]
async fn a_closing_caller_cancels_the_calls_it_waits_on() {
    use keel_engine::workflow::CloseCommand;
    let h = harness(Duration::from_secs(300), &[]).await;
    let e = &h.engine;
    target_operation(e, "charge", Value::Null).await;
    caller_calls(e, "caller-5", "charge", json!({})).await;
    let started = service_events(&caller_history(e, "caller-5").await)[0]
        .1
        .clone();
    let call_id = started["service_call_id"]
        .as_str()
        .expect("call id")
        .to_string();
    e.close_workflow(NS, "caller-5", None, CloseCommand::Cancel, Some("user"))
        .await
        .expect("caller cancelled");
    let v = e
        .describe_service_call(TARGET, "billing", "invoices", "charge", &call_id)
        .await
        .expect("described");
    assert_eq!(v.status, "cancelled");
    let linked = e
        .describe(TARGET, &v.call.linked_workflow_instance_id, None)
        .await
        .expect("linked");
    assert_eq!(linked.run.status.as_str(), "cancelled");
}

#[tokio::test]
async fn a_replayed_command_key_returns_the_call_an_execute_created() {
    let h = harness(Duration::from_secs(30), &[]).await;
    let e = &h.engine;
    target_operation(e, "charge", Value::Null).await;
    let first = e
        .execute_operation(
            TARGET,
            "billing",
            "invoices",
            "charge",
            keel_engine::services::ExecuteRequest {
                idempotency_key: Some("key-caller-6".into()),
                caller_namespace: Some(NS.into()),
                ..Default::default()
            },
        )
        .await
        .expect("executed");
    caller_calls(e, "caller-6", "charge", json!({})).await;
    let started = service_events(&caller_history(e, "caller-6").await)[0]
        .1
        .clone();
    assert_eq!(started["service_call_id"], json!(first.call.id));
    let v = e
        .describe_service_call(TARGET, "billing", "invoices", "charge", &first.call.id)
        .await
        .expect("described");
    assert_eq!(v.call.callers.len(), 1, "the workflow joined the call");
}

#[tokio::test]
async fn an_update_binding_closes_with_the_update_or_with_the_run_before_it() {
    use keel_engine::workflow::CloseCommand;
    let h = harness(Duration::from_secs(300), &[]).await;
    let e = &h.engine;
    target_operation(e, "charge", Value::Null).await;
    let mut op = spec("update_workflow", None);
    op.handler_binding = json!({"update_name": "approve"});
    e.create_operation(TARGET, "billing", "invoices", "approve", op)
        .await
        .expect("operation");
    let mut order = support::start("order-1", "order");
    order.workflow_id = Some("order-1".into());
    e.start_workflow(TARGET, order).await.expect("order starts");
    let req = |target: &str| keel_engine::services::ExecuteRequest {
        arguments: json!({"codec": "avro", "blob": support::ARGS}),
        target_workflow_instance_id: Some(target.into()),
        ..Default::default()
    };
    let call = e
        .execute_operation(TARGET, "billing", "invoices", "approve", req("order-1"))
        .await
        .expect("executed");
    assert_eq!(call.status, "started");
    let update_id = call
        .call
        .linked_workflow_update_id
        .clone()
        .expect("update id");
    let task = lease_target(e).await;
    e.complete_workflow_task(
        TARGET,
        &task.task_id,
        support::WORKER,
        task.workflow_task_attempt,
        &[json!({"type": "complete_update", "update_id": update_id, "result": {"codec": "avro", "blob": "BB=="}})],
    )
    .await
    .expect("update completed");
    let v = e
        .describe_service_call(TARGET, "billing", "invoices", "approve", &call.call.id)
        .await
        .expect("described");
    assert_eq!(
        (v.status, &v.output),
        ("completed", &json!({"codec": "avro", "blob": "BB=="}))
    );

    // A run that closes before its update finishes fails the update and the call.
    let second = e
        .execute_operation(TARGET, "billing", "invoices", "approve", req("order-1"))
        .await
        .expect("executed");
    e.close_workflow(
        TARGET,
        "order-1",
        None,
        CloseCommand::Terminate,
        Some("ops"),
    )
    .await
    .expect("terminated");
    let v = e
        .describe_service_call(TARGET, "billing", "invoices", "approve", &second.call.id)
        .await
        .expect("described");
    assert_eq!(v.status, "failed");
    assert!(v.message.is_some_and(|m| m.contains("closed")));
}
