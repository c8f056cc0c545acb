"""Updates through the real SDK: accepted into history, run by a workflow task that
carries ``workflow_update_id``, answered with the handler's result (200), accepted
only (202), failed (422, ``UpdateFailed``), resent by ``request_id`` (applied once),
unknown (404) and on a closed run (409)."""

from __future__ import annotations

import asyncio

import pytest
from durable_workflow import Client, workflow
from durable_workflow.errors import UpdateFailed
from durable_workflow.serializer import decode_envelope

from keel_harness import (
    KeelServer,
    RawApi,
    async_wait_until,
    event_types,
    expect_error,
    history_events,
    running_worker,
    unique,
    wait_for_results,
)

# ── workflows (type names are unique to this module) ──────────────────────


@workflow.defn(name="e2e.updates.account")
class Account:
    def __init__(self) -> None:
        self.balance = 0
        self.closed = False

    @workflow.update("deposit")
    def deposit(self, amount: int) -> int:
        if amount <= 0:
            raise ValueError("amount must be positive")
        self.balance += amount
        return self.balance

    @workflow.update("close")
    def close(self) -> str:
        self.closed = True
        return "closed"

    @workflow.query("balance")
    def current(self) -> int:
        return self.balance

    def run(self, ctx):  # type: ignore[no-untyped-def]
        yield ctx.wait_condition(lambda: self.closed, key="closed")
        return self.balance


async def _started(client: Client, task_queue: str) -> object:
    handle = await client.start_workflow(
        workflow_type="e2e.updates.account",
        task_queue=task_queue,
        workflow_id=unique("e2e-account"),
        input=[],
    )

    async def wait_opened() -> bool:
        events = await history_events(client, handle.workflow_id, handle.run_id)
        return "ConditionWaitOpened" in event_types(events)

    await async_wait_until(wait_opened, 30, "ConditionWaitOpened")
    return handle


# ── tests ─────────────────────────────────────────────────────────────────


def test_updates_complete_fail_and_drive_the_workflow(keel: KeelServer) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-updates")
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, workflows=[Account]) as worker:
                handle = await _started(client, task_queue)
                first = await client.update_workflow(handle.workflow_id, "deposit", args=[10], wait_for="completed")
                assert first["update_status"] == "completed", first
                assert first["outcome"] == "update_completed"
                assert decode_envelope(first["result"], codec="avro") == 10
                second = await client.update_workflow(handle.workflow_id, "deposit", args=[5], wait_for="completed")
                assert decode_envelope(second["result"], codec="avro") == 15

                with pytest.raises(UpdateFailed) as failed:
                    await client.update_workflow(handle.workflow_id, "deposit", args=[-1], wait_for="completed")
                assert "amount must be positive" in str(failed.value)

                # The failed update changed nothing; a query sees the applied ones.
                assert (await client.query_workflow(handle.workflow_id, "balance"))["result"] == 15
                done = await client.update_workflow(handle.workflow_id, "close", wait_for="completed")
                assert decode_envelope(done["result"], codec="avro") == "closed"
                [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)

            assert result == 15
            events = await history_events(client, handle.workflow_id, handle.run_id)
            types = event_types(events)
            assert types.count("UpdateAccepted") == 4, types
            assert types.count("UpdateApplied") == 3, types
            assert types.count("UpdateCompleted") == 4, types
            completed = [e["payload"] for e in events if e["event_type"] == "UpdateCompleted"]
            assert [c["outcome"] for c in completed] == ["completed", "completed", "failed", "completed"]

    asyncio.run(scenario())


def test_update_accepted_only_and_request_id_idempotency(keel: KeelServer, api: RawApi) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-updates-accept")
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, workflows=[Account]) as worker:
                handle = await _started(client, task_queue)
                accepted = await client.update_workflow(
                    handle.workflow_id, "deposit", args=[7], wait_for="accepted", request_id="dep-1"
                )
                assert accepted["update_status"] in ("accepted", "completed"), accepted
                again = await client.update_workflow(
                    handle.workflow_id, "deposit", args=[7], wait_for="completed", request_id="dep-1"
                )
                assert again["update_id"] == accepted["update_id"]
                assert again["retained"] is True
                assert decode_envelope(again["result"], codec="avro") == 7
                with pytest.raises(UpdateFailed) as conflict:
                    await client.update_workflow(handle.workflow_id, "deposit", args=[8], request_id="dep-1")
                assert conflict.value.reason == "request_id_conflict"

                # Unknown update names are refused up front (the worker declared its updates).
                response = api.control("POST", f"/workflows/{handle.workflow_id}/update/nope", json={})
                body = expect_error(response, 404, "unknown_update")
                assert body["outcome"] == "rejected_unknown_update"
                # Run-targeted update on the current run.
                # (In a thread: the worker shares this event loop and must run the update.)
                response = await asyncio.to_thread(
                    api.control,
                    "POST",
                    f"/workflows/{handle.workflow_id}/runs/{handle.run_id}/update/close",
                    json={"wait_for": "completed", "wait_timeout_seconds": 30},
                )
                assert response.status_code == 200, response.text
                assert response.json()["target_scope"] == "run"
                [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)

            assert result == 7
            types = event_types(await history_events(client, handle.workflow_id, handle.run_id))
            assert types.count("UpdateAccepted") == 2, types
            # Closed run.
            response = api.control("POST", f"/workflows/{handle.workflow_id}/update/deposit", json={"input": [1]})
            body = expect_error(response, 409, "run_not_active")
            assert body["control_plane"]["operation"] == "update"
            expect_error(
                api.control(
                    "POST", f"/workflows/{handle.workflow_id}/update/deposit", json={"wait_for": "whenever"}
                ),
                422,
                "validation_failed",
            )

    asyncio.run(scenario())


def test_update_wait_times_out_as_accepted_without_a_worker(api: RawApi) -> None:
    workflow_id = unique("e2e-update-nobody")
    api.start_workflow(workflow_id, "e2e.updates.nobody", unique("e2e-q"))
    response = api.control(
        "POST",
        f"/workflows/{workflow_id}/update/anything",
        json={"wait_for": "completed", "wait_timeout_seconds": 1, "input": [1]},
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["update_status"] == "accepted" and body["wait_timed_out"] is True
    # The accepted update waits in the run's next workflow task.
    task_queue = api.describe_workflow(workflow_id)["task_queue"]
    worker_id = unique("e2e-raw")
    api.register_worker(worker_id, task_queue, workflow_types=["e2e.updates.nobody"])
    task = api.lease_workflow_task(worker_id, task_queue)
    assert task["workflow_update_id"] == body["update_id"], task
    # An update task may only finish its update.
    expect_error(
        api.complete_workflow_task(task, [{"type": "start_timer", "delay_seconds": 1}]), 422, "invalid_commands"
    )
    done = api.complete_workflow_task(
        task, [{"type": "complete_update", "update_id": body["update_id"], "result": {"codec": "avro", "blob": "wwHioz3/VYAiNwA="}}]
    )
    assert done.status_code == 200, done.text
    # The main body gets its own task afterwards.
    follow_up = api.lease_workflow_task(worker_id, task_queue)
    assert "workflow_update_id" not in follow_up, follow_up
    types = [e["event_type"] for e in follow_up["history_events"]]
    assert types[-2:] == ["UpdateApplied", "UpdateCompleted"], types
