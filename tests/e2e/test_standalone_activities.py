"""Standalone activities through the real SDK: ``client.start_activity`` runs an
activity as a top-level durable job on an ordinary activity worker; its handle reads
the result, a failure after its retries, a listing, and a cancel through the workflow
route (``POST /workflows/{activity_id}/cancel``) that the running attempt observes."""

from __future__ import annotations

import asyncio

import pytest

from durable_workflow import Client, activity
from durable_workflow.errors import WorkflowCancelled, WorkflowFailed

from keel_harness import KeelServer, async_wait_until, running_worker, unique

_started: set[str] = set()


@activity.defn(name="e2e.standalone.greet")
async def greet(name: str, times: int) -> str:
    return " ".join([f"hello {name}"] * times)


@activity.defn(name="e2e.standalone.always_fails")
async def always_fails() -> str:
    raise ValueError("this activity always fails")


@activity.defn(name="e2e.standalone.waits_for_cancel")
async def waits_for_cancel(key: str) -> str:
    _started.add(key)
    for _ in range(300):
        await activity.context().heartbeat({"waiting": True})
        await asyncio.sleep(0.1)
    return "not cancelled"


def test_a_standalone_activity_runs_on_an_activity_worker_and_returns_its_result(keel: KeelServer) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-standalone")
        activity_id = unique("greet")
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, activities=[greet, always_fails]):
                handle = await client.start_activity(
                    activity_type="e2e.standalone.greet",
                    task_queue=task_queue,
                    activity_id=activity_id,
                    activity_class="Greeter",
                    business_key="order-7",
                    input=["keel", 2],
                    start_to_close_timeout_seconds=30,
                )
                assert handle.activity_id == activity_id
                assert handle.workflow_run_id
                assert handle.activity_execution_id
                assert await handle.result(timeout=30, poll_interval=0.2) == "hello keel hello keel"

                described = await handle.describe()
                assert described.status == "completed"
                assert described.activity_status == "completed"
                assert described.activity_type == "e2e.standalone.greet"
                assert described.activity_class == "Greeter"
                assert described.business_key == "order-7"
                assert described.task_queue == task_queue
                assert described.result == "hello keel hello keel"

                failing = await client.start_activity(
                    activity_type="e2e.standalone.always_fails",
                    task_queue=task_queue,
                    retry_policy={"max_attempts": 2, "backoff_seconds": [1]},
                )
                with pytest.raises(WorkflowFailed):
                    await failing.result(timeout=30, poll_interval=0.2)
                assert (await failing.describe()).status == "failed"

            listed = await client.list_activities(status="completed")
            assert activity_id in [a.activity_id for a in listed.activities]
            assert failing.activity_id not in [a.activity_id for a in listed.activities]
            failed = await client.list_activities(status="failed")
            assert [a.activity_id for a in failed.activities] == [failing.activity_id]
            # A standalone activity is not a workflow an SDK worker runs: no workflow
            # worker ever saw a task for it, and the workflow list shows its host run.

    asyncio.run(scenario())


def test_cancelling_a_standalone_activity_through_the_workflow_route_stops_it(keel: KeelServer) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-standalone-cancel")
        key = unique("cancel")
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, activities=[waits_for_cancel]):
                handle = await client.start_activity(
                    activity_type="e2e.standalone.waits_for_cancel",
                    task_queue=task_queue,
                    input=[key],
                    heartbeat_timeout_seconds=10,
                )
                await async_wait_until(lambda: key in _started, timeout=30, what="the activity to start")
                running = await handle.describe()
                assert running.status == "running"
                assert running.activity_status == "running"
                await handle.cancel(reason="no longer needed")
                with pytest.raises(WorkflowCancelled):
                    await handle.result(timeout=30, poll_interval=0.2)
                assert (await handle.describe()).status == "cancelled"

    asyncio.run(scenario())


def test_an_unknown_standalone_activity_is_404(keel: KeelServer, api) -> None:  # type: ignore[no-untyped-def]
    response = api.control("GET", "/activities/no-such-activity")
    assert response.status_code == 404, response.text
    assert response.json()["reason"] == "activity_not_found"
