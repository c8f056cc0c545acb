"""Service calls through the SDK's Nexus client (``Client.execute_nexus_operation``)
against an operation bound to ``start_workflow`` in another namespace: a synchronous
call returns the linked workflow's result, an asynchronous one returns at once and is
described until it completes, a resent idempotency key returns the same call, a failing
workflow surfaces as ``NexusOperationFailed``, a call is cancelled through its cancel
route, and the operation then refuses deletion (``operation_has_service_calls``).

Not covered because not implemented: the workflow command ``start_service_operation``
(``ctx.call_nexus_service``) and bindings other than ``start_workflow``."""

from __future__ import annotations

import asyncio

import pytest
from durable_workflow import Client, workflow
from durable_workflow.errors import NexusOperationFailed

from keel_harness import KeelServer, RawApi, async_wait_until, expect_status, running_worker, unique


@workflow.defn(name="e2e.svc.greeter")
class Greeter:
    def run(self, ctx, name):  # type: ignore[no-untyped-def]
        return f"hello, {name}"
        yield  # a generator, like every workflow


@workflow.defn(name="e2e.svc.failer")
class Failer:
    def run(self, ctx, name):  # type: ignore[no-untyped-def]
        raise ValueError(f"no greeting for {name}")
        yield


@workflow.defn(name="e2e.svc.waiter")
class Waiter:
    def run(self, ctx):  # type: ignore[no-untyped-def]
        yield ctx.wait_condition(lambda: False, key="never")


def catalog(api: RawApi, ns: str, task_queue: str) -> None:
    h = {"X-Namespace": ns}
    expect_status(api.control("POST", "/namespaces", json={"name": ns}), 201, "namespace")
    expect_status(api.control("POST", "/service-endpoints", headers=h, json={"endpoint_name": "Greetings"}), 201, "endpoint")
    expect_status(
        api.control("POST", "/service-endpoints/greetings/services", headers=h, json={"service_name": "Hello"}), 201, "service"
    )
    for name, mode, workflow_type in [
        ("greet", "sync", "e2e.svc.greeter"),
        ("greet_later", "async", "e2e.svc.greeter"),
        ("fail", "sync", "e2e.svc.failer"),
        ("wait", "async", "e2e.svc.waiter"),
    ]:
        r = api.control(
            "POST",
            "/service-endpoints/greetings/services/hello/operations",
            headers=h,
            json={
                "operation_name": name,
                "operation_mode": mode,
                "handler_binding_kind": "start_workflow",
                "handler_binding": {"workflow_type": workflow_type, "task_queue": task_queue},
            },
        )
        expect_status(r, 201, f"operation {name}")


def test_start_workflow_operations_through_the_sdk(keel: KeelServer, api: RawApi) -> None:
    target = unique("svc-target").lower()
    task_queue = unique("e2e-svc")
    catalog(api, target, task_queue)
    ops = "/service-endpoints/greetings/services/hello/operations"
    h = {"X-Namespace": target}

    async def scenario() -> None:
        async with Client(keel.url) as caller, Client(keel.url, namespace=target) as callee:
            async with running_worker(callee, task_queue=task_queue, workflows=[Greeter, Failer, Waiter]):
                key = unique("greet-ada")
                sync = await caller.execute_nexus_operation(
                    "Greetings", "hello", "GREET", ["Ada"], target_namespace=target, idempotency_key=key
                )
                assert (sync.status, sync.result) == ("completed", "hello, Ada"), sync.response_or_failure_surface
                again = await caller.execute_nexus_operation(
                    "greetings", "hello", "greet", ["Ada"], target_namespace=target, idempotency_key=key
                )
                assert again.service_call_id == sync.service_call_id
                assert again.response_or_failure_surface["idempotent_replay"] is True

                later = await caller.execute_nexus_operation(
                    "greetings", "hello", "greet_later", ["Bo"], target_namespace=target
                )
                assert later.status == "started", later.response_or_failure_surface
                call_path = f"{ops}/greet_later/service-calls/{later.service_call_id}"

                async def completed() -> bool:
                    r = await asyncio.to_thread(api.control, "GET", call_path, headers=h)
                    return r.status_code == 200 and r.json()["status"] == "completed" and r.json()["result"] == "hello, Bo"

                await async_wait_until(completed, 30, "the async call completes")
                snapshot = api.control("GET", call_path, headers=h).json()
                assert snapshot["caller_namespace"] == "default"
                assert snapshot["resolved_binding_kind"] == "start_workflow"
                assert snapshot["linked_workflow_instance_id"] and snapshot["completed_at"]

                with pytest.raises(NexusOperationFailed) as failed:
                    await caller.execute_nexus_operation("greetings", "hello", "fail", ["Cy"], target_namespace=target)
                assert "no greeting for Cy" in str(failed.value)

                waiting = await caller.execute_nexus_operation("greetings", "hello", "wait", [], target_namespace=target)
                r = api.control("POST", f"{ops}/wait/service-calls/{waiting.service_call_id}/cancel", headers=h, json={"reason": "not needed"})
                expect_status(r, 200, "cancel")
                assert (r.json()["status"], r.json()["message"]) == ("cancelled", "not needed")
                linked = await callee.describe_workflow(r.json()["linked_workflow_instance_id"])
                assert linked.status == "cancelled"

    asyncio.run(scenario())
    r = api.control("DELETE", f"{ops}/greet", headers=h)
    expect_status(r, 409, "delete an operation with calls")
    assert r.json()["reason"] == "operation_has_service_calls"
    r = api.control("GET", f"{ops}/greet/service-calls/nope", headers=h)
    expect_status(r, 404, "unknown call")
    assert r.json()["reason"] == "service_call_not_found"
