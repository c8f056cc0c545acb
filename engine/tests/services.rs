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
        spec("signal_workflow", Some("x")),
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
        .expect_err("only start_workflow bindings run");
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
