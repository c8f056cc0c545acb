//! The service catalog and the webhook bridge over the in-memory store: lowercase names,
//! 404s naming the missing level, delete refusals while dependents exist, and bridge
//! events applied once per idempotency key, across a restart too.

use crate::support;

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

/// `billing/invoices/charge` in `NS`, bound to start `invoice.charge` on `QUEUE`.
async fn charge_operation(e: &keel_engine::Engine) {
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
}

#[tokio::test]
async fn a_service_call_starts_its_workflow_once_per_key_and_follows_its_run() {
    use keel_engine::services::ExecuteRequest;
    use keel_engine::workflow::CloseCommand;
    let h = harness(Duration::from_secs(30), &[]).await;
    let e = &h.engine;
    charge_operation(e).await;
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
        .expect_err("a query binding needs a workflow to query");
    assert!(
        matches!(&poke, Error::Validation(fields) if fields.contains_key("target_workflow_instance_id")),
        "{poke:?}"
    );

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

/// A store written before closing runs looked for the namespace mark (here: the mark
/// removed by hand) gets the mark when an engine opens it, so a linked run's close still
/// closes its call.
#[tokio::test]
async fn calls_of_a_store_without_the_namespace_mark_still_follow_their_runs() {
    use keel_engine::keys::{prefix, Key};
    use keel_engine::services::ExecuteRequest;
    use keel_engine::storage::KvStore;
    use keel_engine::workflow::CloseCommand;
    let h = harness(Duration::from_secs(30), &[]).await;
    let e = &h.engine;
    charge_operation(e).await;
    let call = e
        .execute_operation(
            NS,
            "billing",
            "invoices",
            "charge",
            ExecuteRequest::default(),
        )
        .await
        .expect("executed")
        .call;
    e.stop().await;
    let mark = Key::new(prefix::SERVICE_CALL_NAMESPACE)
        .str(NS)
        .into_bytes();
    let mut txn = h.store.begin().await.expect("begin");
    assert!(
        txn.get(&mark).await.expect("read").is_some(),
        "the call marked its namespace"
    );
    txn.clear(&mark);
    txn.commit().await.expect("commit");

    let e = open(&h.store, &h.clock, Duration::from_secs(30), &[]).await;
    e.close_workflow(
        NS,
        &call.linked_workflow_instance_id,
        None,
        CloseCommand::Terminate,
        Some("ops"),
    )
    .await
    .expect("terminated");
    let v = e
        .describe_service_call(NS, "billing", "invoices", "charge", &call.id)
        .await
        .expect("described");
    assert_eq!(v.status, "failed", "the call followed its terminated run");
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

// ---- dispatched bindings: invocable_http and query_workflow ----

mod dispatched {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use keel_engine::avro::{decode_blob, envelope, AvroValue};
    use keel_engine::clock::{Clock, ManualClock};
    use keel_engine::services::{ExecuteRequest, ServiceCallView, ServiceHttpConfig};
    use keel_engine::storage::memory::MemoryStore;
    use keel_engine::storage::KvStore;
    use keel_engine::{Engine, EngineConfig};
    use serde_json::{json, Value};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::spec;
    use super::support::{self, reason, Harness, NS, QUEUE, WORKER};

    /// One request the stub received: its head (lowercase header names) and body.
    #[derive(Debug, Clone)]
    struct Seen {
        line: String,
        headers: Vec<(String, String)>,
        body: Value,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// A loopback HTTP server answering each request with the next scripted
    /// `(status, body)` (the last one repeats; status 0: never answer), recording what
    /// it received.
    struct Stub {
        port: u16,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Stub {
        async fn start(script: Vec<(u16, &'static str)>) -> Stub {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
            let port = listener.local_addr().expect("addr").port();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let log = seen.clone();
            tokio::spawn(async move {
                let mut n = 0usize;
                loop {
                    let Ok((mut conn, _)) = listener.accept().await else {
                        return;
                    };
                    let mut raw = Vec::new();
                    let mut buf = [0u8; 4096];
                    let (head_end, len) = loop {
                        let k = conn.read(&mut buf).await.unwrap_or(0);
                        if k == 0 {
                            break (None, 0);
                        }
                        raw.extend_from_slice(&buf[..k]);
                        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&raw[..at]).to_string();
                            let len = head
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            if raw.len() >= at + 4 + len {
                                break (Some(at), len);
                            }
                        }
                    };
                    let Some(at) = head_end else { continue };
                    let head = String::from_utf8_lossy(&raw[..at]).to_string();
                    let mut lines = head.split("\r\n");
                    let line = lines.next().unwrap_or_default().to_string();
                    let headers = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let body =
                        serde_json::from_slice(&raw[at + 4..at + 4 + len]).unwrap_or(Value::Null);
                    log.lock().expect("log").push(Seen {
                        line,
                        headers,
                        body,
                    });
                    let (status, text) = script[n.min(script.len() - 1)];
                    n += 1;
                    if status == 0 {
                        // Scripted silence: hold the connection open, never answer.
                        tokio::spawn(async move {
                            let mut sink = [0u8; 1];
                            let _ = conn.read(&mut sink).await;
                        });
                        continue;
                    }
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                    let _ = conn.shutdown().await;
                }
            });
            Stub { port, seen }
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().expect("log").clone()
        }
    }

    /// An engine whose `invocable_http` bindings may call `allow`, with `WORKER`
    /// registered on `QUEUE` with `capabilities`.
    async fn harness(allow: &[String], capabilities: &[&str]) -> Harness {
        let store = MemoryStore::new();
        let clock = ManualClock::new(support::START);
        reopen(store, clock, allow, capabilities).await
    }

    /// An engine on an existing store and clock (a restart).
    async fn reopen(
        store: MemoryStore,
        clock: ManualClock,
        allow: &[String],
        capabilities: &[&str],
    ) -> Harness {
        let config = EngineConfig {
            service_http: ServiceHttpConfig {
                allow: allow.to_vec(),
                request_timeout: Duration::from_secs(5),
            },
            ..EngineConfig::default()
        };
        let engine = Engine::open(
            Arc::new(store.clone()) as Arc<dyn KvStore>,
            Arc::new(clock.clone()) as Arc<dyn Clock>,
            config,
        )
        .await
        .expect("engine opens");
        support::register(&engine, WORKER, capabilities).await;
        Harness {
            engine,
            clock,
            store,
        }
    }

    /// `hooks/http/{name}` bound to `kind` with `binding` and `retry_policy`.
    async fn operation(e: &Engine, name: &str, kind: &str, binding: Value, retry: Value) {
        let _ = e
            .create_service_endpoint(NS, "hooks", None, json!({}))
            .await;
        let _ = e.create_service(NS, "hooks", "http", None, json!({})).await;
        let mut op = spec(kind, None);
        op.handler_binding = binding;
        op.retry_policy = retry;
        e.create_operation(NS, "hooks", "http", name, op)
            .await
            .expect("operation created");
    }

    fn args(value: Value) -> ExecuteRequest {
        ExecuteRequest {
            arguments: envelope(&AvroValue::Array(vec![AvroValue::from_json(&value)])),
            ..ExecuteRequest::default()
        }
    }

    /// Fires the due dispatch timer, then waits (bounded in real time) for the call to
    /// close.
    async fn settle(h: &Harness, name: &str, id: &str) -> ServiceCallView {
        h.engine.fire_due_timers(100).await.expect("timers");
        tokio::time::timeout(
            Duration::from_secs(10),
            h.engine
                .wait_service_call(NS, "hooks", "http", name, id, i64::MAX),
        )
        .await
        .expect("the call closes in time")
        .expect("described")
    }

    /// Waits (bounded in real time) until the call has recorded `attempts` outcomes.
    async fn recorded_attempts(h: &Harness, name: &str, id: &str, attempts: u32) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let v = h
                .engine
                .describe_service_call(NS, "hooks", "http", name, id)
                .await
                .expect("described");
            if v.call.attempts == attempts && !v.call.attempt_in_flight {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "attempt {attempts} recorded in time: {:?}",
                v.call
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn result(v: &ServiceCallView) -> Value {
        decode_blob(v.output["blob"].as_str().expect("a result envelope"))
            .expect("decodes")
            .to_json()
    }

    #[tokio::test]
    async fn an_http_binding_posts_once_with_the_call_id_and_completes_with_the_body() {
        let stub = Stub::start(vec![(200, r#"{"charged": true, "cents": 1200}"#)]).await;
        let h = harness(&[format!("127.0.0.1:{}", stub.port)], &[]).await;
        let e = &h.engine;
        operation(
            e,
            "charge",
            "invocable_http",
            json!({"url": format!("http://127.0.0.1:{}/charge?v=1", stub.port), "headers": {"X-Team": "billing"}}),
            Value::Null,
        )
        .await;
        let started = e
            .execute_operation(NS, "hooks", "http", "charge", args(json!({"order": 7})))
            .await
            .expect("accepted");
        assert_eq!(started.status, "started");
        assert_eq!(
            started.call.resolved_target_reference,
            format!("http://127.0.0.1:{}/charge?v=1", stub.port)
        );
        let done = settle(&h, "charge", &started.call.id).await;
        assert_eq!(done.status, "completed", "{:?}", done.message);
        assert_eq!(result(&done), json!({"charged": true, "cents": 1200}));
        let seen = stub.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].line, "POST /charge?v=1 HTTP/1.1");
        assert_eq!(
            seen[0].header("idempotency-key"),
            Some(started.call.id.as_str())
        );
        assert_eq!(seen[0].header("x-team"), Some("billing"));
        assert_eq!(seen[0].header("x-keel-service-call-attempt"), Some("1"));
        assert_eq!(seen[0].body["arguments"], json!([{"order": 7}]));
        assert_eq!(seen[0].body["service_call_id"], json!(started.call.id));
    }

    #[tokio::test]
    async fn a_4xx_answer_fails_the_call_without_a_retry() {
        let stub = Stub::start(vec![(422, r#"{"error": "bad card"}"#), (200, "{}")]).await;
        let h = harness(&["127.0.0.1".into()], &[]).await;
        let e = &h.engine;
        operation(
            e,
            "charge",
            "invocable_http",
            json!({"url": format!("http://127.0.0.1:{}/", stub.port)}),
            json!({"max_attempts": 3, "backoff_seconds": [1]}),
        )
        .await;
        let started = e
            .execute_operation(NS, "hooks", "http", "charge", args(json!(1)))
            .await
            .expect("accepted");
        let done = settle(&h, "charge", &started.call.id).await;
        assert_eq!(done.status, "failed");
        assert_eq!(
            done.call.error_type.as_deref(),
            Some("invocable_http_client_error")
        );
        let message = done.message.clone().unwrap_or_default();
        assert!(message.contains("422"), "{message}");
        assert!(
            !message.contains("bad card"),
            "no body in the message: {message}"
        );
        assert_eq!(stub.seen().len(), 1, "a 4xx is not retried");
    }

    #[tokio::test]
    async fn a_5xx_answer_is_retried_under_the_retry_policy_with_the_same_key() {
        let stub = Stub::start(vec![(503, "{}"), (201, r#""ok""#)]).await;
        let h = harness(&[format!("127.0.0.1:{}", stub.port)], &[]).await;
        let e = &h.engine;
        operation(
            e,
            "charge",
            "invocable_http",
            json!({"url": format!("http://127.0.0.1:{}/", stub.port)}),
            json!({"max_attempts": 3, "backoff_seconds": [5]}),
        )
        .await;
        let started = e
            .execute_operation(NS, "hooks", "http", "charge", args(json!(1)))
            .await
            .expect("accepted");
        e.fire_due_timers(100).await.expect("timers");
        recorded_attempts(&h, "charge", &started.call.id, 1).await;
        let waiting = e
            .describe_service_call(NS, "hooks", "http", "charge", &started.call.id)
            .await
            .expect("described");
        assert_eq!(waiting.status, "started", "the 503 left the call open");
        assert!(waiting
            .call
            .last_attempt_failure
            .as_deref()
            .is_some_and(|f| f.starts_with("invocable_http_server_error")));
        // Nothing before the backoff.
        e.fire_due_timers(100).await.expect("timers");
        assert_eq!(stub.seen().len(), 1);
        h.clock.advance(Duration::from_secs(5));
        let done = settle(&h, "charge", &started.call.id).await;
        assert_eq!(done.status, "completed", "{:?}", done.message);
        assert_eq!(result(&done), json!("ok"));
        let seen = stub.seen();
        assert_eq!(seen.len(), 2);
        for s in &seen {
            assert_eq!(s.header("idempotency-key"), Some(started.call.id.as_str()));
        }
        assert_eq!(seen[1].header("x-keel-service-call-attempt"), Some("2"));
    }

    #[tokio::test]
    async fn retries_end_at_max_attempts_and_connect_errors_count() {
        // A port nothing listens on: every attempt fails to connect.
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let h = harness(&["127.0.0.1".into()], &[]).await;
        let e = &h.engine;
        operation(
            e,
            "charge",
            "invocable_http",
            json!({"url": format!("http://127.0.0.1:{port}/")}),
            json!({"max_attempts": 2, "backoff_seconds": [1]}),
        )
        .await;
        let started = e
            .execute_operation(NS, "hooks", "http", "charge", args(json!(1)))
            .await
            .expect("accepted");
        e.fire_due_timers(100).await.expect("timers");
        recorded_attempts(&h, "charge", &started.call.id, 1).await;
        h.clock.advance(Duration::from_secs(1));
        let done = settle(&h, "charge", &started.call.id).await;
        assert_eq!(done.status, "failed");
        assert_eq!(done.call.attempts, 2);
        assert_eq!(
            done.call.error_type.as_deref(),
            Some("invocable_http_unreachable")
        );
    }

    #[tokio::test]
    async fn a_host_outside_the_allow_list_is_refused_by_name_and_never_called() {
        let stub = Stub::start(vec![(200, "{}")]).await;
        // Same host, another port; and an empty list.
        for allow in [vec!["127.0.0.1:1".to_string()], vec![]] {
            let h = harness(&allow, &[]).await;
            let e = &h.engine;
            operation(
                e,
                "charge",
                "invocable_http",
                json!({"url": format!("http://127.0.0.1:{}/", stub.port)}),
                Value::Null,
            )
            .await;
            let refused = e
                .execute_operation(NS, "hooks", "http", "charge", args(json!(1)))
                .await
                .expect_err("refused");
            assert_eq!(reason(refused), "invocable_http_host_not_allowed");
            // No call was created, so nothing can be dispatched.
            assert_eq!(e.fire_due_timers(100).await.expect("timers"), 0);
        }
        assert!(stub.seen().is_empty());
    }

    #[tokio::test]
    async fn a_workflow_caller_of_a_refused_host_gets_service_call_failed_with_the_reason() {
        let h = harness(&["127.0.0.1:1".into()], &[]).await;
        let e = &h.engine;
        operation(
            e,
            "charge",
            "invocable_http",
            json!({"url": "http://127.0.0.1:9/"}),
            Value::Null,
        )
        .await;
        e.start_workflow(NS, support::start("caller-h", "caller"))
            .await
            .expect("caller starts");
        let task = support::poll_wf(e).await.expect("caller task");
        let command = json!({
            "type": "start_service_operation",
            "endpoint_name": "hooks",
            "service_name": "http",
            "operation_name": "charge",
            "payload_codec": "avro",
            "request_payload": support::ARGS,
            "idempotency_key": "k",
        });
        e.complete_workflow_task(
            NS,
            &task.task_id,
            WORKER,
            task.workflow_task_attempt,
            &[command],
        )
        .await
        .expect("completion accepted");
        let next = support::poll_wf(e).await.expect("the caller is woken");
        let failed = support::events(&next)
            .into_iter()
            .find(|ev| ev["event_type"] == "ServiceCallFailed")
            .expect("ServiceCallFailed recorded");
        assert_eq!(
            failed["payload"]["reason"],
            json!("invocable_http_host_not_allowed")
        );
    }

    #[tokio::test]
    async fn a_query_binding_returns_the_workers_answer_for_the_named_run() {
        let h = harness(&[], &["query_tasks"]).await;
        let e = &h.engine;
        let started = e
            .start_workflow(NS, support::start("counter-1", "counter"))
            .await
            .expect("started");
        operation(
            e,
            "peek",
            "query_workflow",
            json!({"query_name": "count"}),
            Value::Null,
        )
        .await;
        let mut req = args(json!("x"));
        req.target_workflow_instance_id = Some("counter-1".into());
        req.target_workflow_run_id = Some(started.run.run_id.clone());
        let call = e
            .execute_operation(NS, "hooks", "http", "peek", req)
            .await
            .expect("accepted");
        assert_eq!(call.call.linked_workflow_run_id, started.run.run_id);
        e.fire_due_timers(100).await.expect("timers");
        let task = tokio::time::timeout(
            Duration::from_secs(10),
            e.poll_query_task(NS, WORKER, QUEUE, Duration::from_secs(3600)),
        )
        .await
        .expect("a query task in time")
        .expect("poll")
        .expect("a query task");
        assert_eq!(
            (task.query_name.as_str(), task.run_id.as_str()),
            ("count", started.run.run_id.as_str())
        );
        let answer = envelope(&AvroValue::Long(3));
        e.complete_query_task(
            NS,
            &task.query_task_id,
            WORKER,
            task.query_task_attempt,
            json!(3),
            answer.clone(),
        )
        .expect("answered");
        let done = tokio::time::timeout(
            Duration::from_secs(10),
            e.wait_service_call(NS, "hooks", "http", "peek", &call.call.id, i64::MAX),
        )
        .await
        .expect("closes in time")
        .expect("described");
        assert_eq!(done.status, "completed");
        assert_eq!(done.output, answer);
    }

    #[tokio::test]
    async fn a_query_no_worker_answers_fails_with_the_query_paths_reason() {
        let h = harness(&[], &["query_tasks"]).await;
        let e = &h.engine;
        e.start_workflow(NS, support::start("counter-2", "counter"))
            .await
            .expect("started");
        operation(
            e,
            "peek",
            "query_workflow",
            json!({"query_name": "count", "timeout_seconds": 2}),
            Value::Null,
        )
        .await;
        let mut req = args(json!("x"));
        req.target_workflow_instance_id = Some("counter-2".into());
        let call = e
            .execute_operation(NS, "hooks", "http", "peek", req)
            .await
            .expect("accepted");
        e.fire_due_timers(100).await.expect("timers");
        // The worker leases the query task and never answers.
        let task = tokio::time::timeout(
            Duration::from_secs(10),
            e.poll_query_task(NS, WORKER, QUEUE, Duration::from_secs(3600)),
        )
        .await
        .expect("a query task in time")
        .expect("poll");
        assert!(task.is_some());
        h.clock.advance(Duration::from_secs(3));
        let done = tokio::time::timeout(
            Duration::from_secs(10),
            e.wait_service_call(NS, "hooks", "http", "peek", &call.call.id, i64::MAX),
        )
        .await
        .expect("closes in time")
        .expect("described");
        assert_eq!(done.status, "failed");
        assert_eq!(
            done.call.error_type.as_deref(),
            Some("query_worker_timeout")
        );
    }

    #[tokio::test]
    async fn an_attempt_lost_in_a_crash_is_delivered_again_after_its_lease_with_the_same_key() {
        // The first request is never answered (the node dies mid-request); the second is.
        let stub = Stub::start(vec![(0, ""), (200, r#"{"n": 2}"#)]).await;
        let allow = [format!("127.0.0.1:{}", stub.port)];
        let h = harness(&allow, &[]).await;
        operation(
            &h.engine,
            "charge",
            "invocable_http",
            json!({"url": format!("http://127.0.0.1:{}/", stub.port), "timeout_seconds": 60}),
            Value::Null,
        )
        .await;
        let started = h
            .engine
            .execute_operation(NS, "hooks", "http", "charge", args(json!(1)))
            .await
            .expect("accepted");
        h.engine.fire_due_timers(100).await.expect("timers");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while stub.seen().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "first request sent");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Crash: the engine stops with the attempt in flight; another opens the store.
        h.engine.stop().await;
        let h = reopen(h.store.clone(), h.clock.clone(), &allow, &[]).await;
        let open = h
            .engine
            .describe_service_call(NS, "hooks", "http", "charge", &started.call.id)
            .await
            .expect("described");
        assert_eq!(
            (open.status, open.call.attempt_in_flight),
            ("started", true)
        );
        // Before the lease (timeout 60 s + margin) lapses nothing is sent again.
        h.clock.advance(Duration::from_secs(60));
        h.engine.fire_due_timers(100).await.expect("timers");
        assert_eq!(stub.seen().len(), 1);
        h.clock.advance(Duration::from_secs(31));
        let done = settle(&h, "charge", &started.call.id).await;
        assert_eq!(done.status, "completed", "{:?}", done.message);
        assert_eq!(result(&done), json!({"n": 2}));
        assert_eq!((done.call.attempts, done.call.lapsed_attempts), (2, 1));
        let seen = stub.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(
            seen[0].header("idempotency-key"),
            seen[1].header("idempotency-key")
        );
        assert_eq!(
            seen[1].header("idempotency-key"),
            Some(started.call.id.as_str())
        );
    }

    #[tokio::test]
    async fn a_start_carries_memo_and_search_attributes_and_a_signal_its_target_run() {
        use keel_engine::namespaces::SearchAttributeType;
        use keel_engine::Error;
        let h = harness(&[], &[]).await;
        let e = &h.engine;
        e.register_search_attribute(NS, "Customer", SearchAttributeType::Keyword)
            .await
            .expect("registered");
        operation(
            e,
            "open",
            "start_workflow",
            json!({"workflow_type": "account", "task_queue": QUEUE}),
            Value::Null,
        )
        .await;
        let mut req = args(json!(1));
        req.target_workflow_instance_id = Some("acct-1".into());
        req.memo = Some(json!({"source": "svc"}));
        req.search_attributes = Some(json!({"Customer": "c-9"}));
        let call = e
            .execute_operation(NS, "hooks", "http", "open", req.clone())
            .await
            .expect("started");
        let run = e
            .describe(NS, "acct-1", None)
            .await
            .expect("linked run")
            .run;
        assert_eq!(run.memo, json!({"source": "svc"}));
        assert_eq!(run.search_attributes["Customer"], json!("c-9"));
        // An unregistered attribute is refused with its field path; no call is made.
        req.target_workflow_instance_id = Some("acct-2".into());
        req.search_attributes = Some(json!({"Nope": "x"}));
        let refused = e
            .execute_operation(NS, "hooks", "http", "open", req)
            .await
            .expect_err("refused");
        assert!(
            matches!(&refused, Error::Validation(f) if f.contains_key("search_attributes.Nope")),
            "{refused:?}"
        );

        operation(
            e,
            "poke",
            "signal_workflow",
            json!({"signal_name": "poke"}),
            Value::Null,
        )
        .await;
        let mut signal = args(json!(1));
        signal.target_workflow_instance_id = Some("acct-1".into());
        signal.target_workflow_run_id = Some(call.call.linked_workflow_run_id.clone());
        let done = e
            .execute_operation(NS, "hooks", "http", "poke", signal.clone())
            .await
            .expect("signalled the named run");
        assert_eq!(done.status, "completed");
        signal.target_workflow_run_id = Some("not-a-run".into());
        let refused = e
            .execute_operation(NS, "hooks", "http", "poke", signal)
            .await
            .expect_err("an unknown run is refused");
        assert_eq!(reason(refused), "run_not_found");
    }
}
