"""Webhook bridge adapters through the SDK's bridge client
(``Client.send_webhook_bridge_event``): an operator configures an adapter for the
namespace, events start, signal and update a workflow, each event is applied once per
idempotency key — also when resent after ``kill -9`` — and refusals come back as
``rejected`` outcomes with a named reason (HTTP 422, which the SDK returns instead of
raising)."""

from __future__ import annotations

import asyncio

from durable_workflow import Client, workflow

from keel_harness import (
    KeelServer,
    RawApi,
    async_wait_until,
    event_types,
    expect_status,
    history_events,
    running_worker,
    unique,
    wait_for_results,
)

ADAPTER = "shop"


@workflow.defn(name="e2e.bridge.order")
class Order:
    def __init__(self) -> None:
        self.payments: list[int] = []
        self.approved: str | None = None

    @workflow.signal("paid")
    def paid(self, amount: int) -> None:
        self.payments.append(amount)

    @workflow.update("approve")
    def approve(self, who: str) -> str:
        self.approved = who
        return who

    def run(self, ctx, order):  # type: ignore[no-untyped-def]
        yield ctx.wait_condition(lambda: self.approved is not None and bool(self.payments), key="done")
        return {"order": order, "payments": self.payments, "approved": self.approved}


def configure(url: str, task_queue: str) -> None:
    with RawApi(url) as api:
        r = api.control(
            "PUT",
            f"/bridge-adapters/webhook/{ADAPTER}",
            json={
                "description": "storefront webhooks",
                "workflow_types": ["e2e.bridge.order"],
                "task_queues": [task_queue],
                "signal_names": ["paid"],
            },
        )
        expect_status(r, 201, "configure the adapter")


def test_webhook_events_apply_once_across_kill9(keel: KeelServer) -> None:
    task_queue = unique("e2e-bridge")
    configure(keel.url, task_queue)
    start_key, signal_key, update_key = unique("evt-start"), unique("evt-paid"), unique("evt-approve")

    async def send(client: Client, action: str, key: str, target: dict, input: object = None):  # type: ignore[no-untyped-def]
        return await client.send_webhook_bridge_event(
            ADAPTER,
            action=action,
            idempotency_key=key,
            target=target,
            input=input,  # type: ignore[arg-type]
            correlation={"provider": "storefront"},
        )

    async def phase_one() -> tuple[str, str]:
        async with Client(keel.url) as client:
            first = await send(
                client, "start_workflow", start_key,
                {"workflow_type": "e2e.bridge.order", "business_key": "order-7"},
                {"order_id": "order-7"},
            )
            assert (first.accepted, first.outcome, first.control_plane_outcome) == (True, "accepted", "started_new"), first.raw
            assert first.schema == "durable-workflow.v2.bridge-adapter-outcome.contract" and first.version == 1
            assert first.target == {
                "workflow_id": first.workflow_id, "workflow_type": "e2e.bridge.order",
                "task_queue": task_queue, "business_key": "order-7",
            }
            again = await send(client, "start_workflow", start_key, {"workflow_type": "e2e.bridge.order"})
            assert (again.outcome, again.run_id) == ("duplicate", first.run_id), again.raw
            assert first.workflow_id and first.run_id
            return first.workflow_id, first.run_id

    workflow_id, run_id = asyncio.run(phase_one())
    keel.kill9()
    keel.restart()

    async def phase_two() -> None:
        async with Client(keel.url) as client:
            again = await send(client, "start_workflow", start_key, {"workflow_type": "e2e.bridge.order"})
            assert (again.outcome, again.workflow_id, again.run_id) == ("duplicate", workflow_id, run_id), again.raw
            paid = await send(client, "signal_workflow", signal_key, {"workflow_id": workflow_id, "signal_name": "paid"}, [5])
            assert (paid.outcome, paid.control_plane_outcome) == ("accepted", "signal_received"), paid.raw
            not_allowed = await send(
                client, "signal_workflow", unique("evt-x"), {"workflow_id": workflow_id, "signal_name": "refund"}, [1]
            )
            assert (not_allowed.outcome, not_allowed.reason) == ("rejected", "unknown_target"), not_allowed.raw

    asyncio.run(phase_two())
    keel.kill9()
    keel.restart()

    async def phase_three() -> None:
        async with Client(keel.url) as client:
            paid = await send(client, "signal_workflow", signal_key, {"workflow_id": workflow_id, "signal_name": "paid"}, [5])
            assert paid.outcome == "duplicate", paid.raw
            async with running_worker(client, task_queue=task_queue, workflows=[Order]):
                async def waiting() -> bool:
                    return "ConditionWaitOpened" in event_types(await history_events(client, workflow_id, run_id))

                await async_wait_until(waiting, 30, "the order waits for approval")
                approve = await send(
                    client, "update_workflow", update_key, {"workflow_id": workflow_id, "update_name": "approve"}, ["ops"]
                )
                assert (approve.outcome, approve.control_plane_outcome) == ("accepted", "update_accepted"), approve.raw
                assert approve.raw and approve.raw.get("update_id")
                dup = await send(
                    client, "update_workflow", update_key, {"workflow_id": workflow_id, "update_name": "approve"}, ["again"]
                )
                assert (dup.outcome, dup.accepted) == ("duplicate", False), dup.raw
                handle = client.get_workflow_handle(workflow_id)
                [result] = await wait_for_results(client, [handle], timeout=30)
                assert result == {"order": {"order_id": "order-7"}, "payments": [5], "approved": "ops"}
            events = event_types(await history_events(client, workflow_id, run_id))
            assert events.count("SignalReceived") == 1, events
            assert events.count("UpdateAccepted") == 1, events

    asyncio.run(phase_three())


def test_unknown_adapters_and_malformed_events_are_named_rejections(keel: KeelServer) -> None:
    async def scenario() -> None:
        async with Client(keel.url) as client:
            unknown = await client.send_webhook_bridge_event(
                "nobody", action="start_workflow", idempotency_key="k1",
                target={"workflow_type": "e2e.bridge.order", "task_queue": "q"},
            )
            assert (unknown.accepted, unknown.outcome, unknown.reason) == (False, "rejected", "adapter_unavailable")
            bad = await client.send_webhook_bridge_event(
                "nobody", action="signal_workflow", idempotency_key="k2", target={"signal_name": "paid"},
            )
            assert (bad.outcome, bad.reason) == ("rejected", "malformed_payload")
            assert bad.raw and "target.workflow_id" in bad.raw["errors"]
            odd = await client.send_webhook_bridge_event(
                "nobody", action="cancel_workflow", idempotency_key="k3", target={},
            )
            assert (odd.outcome, odd.reason, odd.action) == ("rejected", "unsupported_action", "cancel_workflow")

    asyncio.run(scenario())
