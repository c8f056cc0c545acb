"""Cancel and terminate through the real SDK: the run closes at once (``cancelled`` /
``terminated``) with the request and terminal events, ``get_result`` raises the
matching error, closed runs refuse both with 409, and an activity attempt of a
cancelled run learns it from its heartbeat."""

from __future__ import annotations

import asyncio
import threading

import pytest
from durable_workflow import Client, activity, workflow
from durable_workflow.errors import WorkflowCancelled, WorkflowTerminated

from keel_harness import (
    KeelServer,
    RawApi,
    async_wait_until,
    event_types,
    expect_error,
    history_events,
    running_worker,
    unique,
)

_heartbeats: dict[str, str] = {}
_heartbeats_lock = threading.Lock()


@activity.defn(name="e2e.cancel.heartbeating")
async def heartbeating(key: str) -> str:
    """Heartbeats until the server says stop; records how it was told."""
    ctx = activity.context()
    try:
        for _ in range(600):
            await ctx.heartbeat({"key": key})
            await asyncio.sleep(0.1)
    except BaseException as error:  # ActivityCancelled is a BaseException
        with _heartbeats_lock:
            _heartbeats[key] = type(error).__name__
        raise
    return "never cancelled"


@workflow.defn(name="e2e.cancel.long_runner")
class LongRunner:
    def run(self, ctx, key):  # type: ignore[no-untyped-def]
        result = yield ctx.schedule_activity(
            "e2e.cancel.heartbeating", [key], start_to_close_timeout=120, heartbeat_timeout=30
        )
        return result


@workflow.defn(name="e2e.cancel.sleeper")
class Sleeper:
    def run(self, ctx):  # type: ignore[no-untyped-def]
        yield ctx.sleep(3600)
        return "woke"


async def _start(client: Client, workflow_type: str, task_queue: str, args: list) -> object:
    return await client.start_workflow(
        workflow_type=workflow_type, task_queue=task_queue, workflow_id=unique("e2e-cancel"), input=args
    )


def test_cancel_closes_the_run_and_stops_its_activity(keel: KeelServer, api: RawApi) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-cancel")
        key = unique("hb")
        async with Client(keel.url) as client:
            async with running_worker(
                client, task_queue=task_queue, workflows=[LongRunner], activities=[heartbeating]
            ):
                handle = await _start(client, "e2e.cancel.long_runner", task_queue, [key])

                async def scheduled() -> bool:
                    events = await history_events(client, handle.workflow_id, handle.run_id)
                    return "ActivityScheduled" in event_types(events)

                await async_wait_until(scheduled, 30, "ActivityScheduled")
                await client.cancel_workflow(handle.workflow_id, reason="customer asked")

                async def told() -> bool:
                    with _heartbeats_lock:
                        return key in _heartbeats

                await async_wait_until(told, 30, "the activity to see the cancellation")
                with _heartbeats_lock:
                    assert _heartbeats[key] == "ActivityCancelled"

            with pytest.raises(WorkflowCancelled) as cancelled:
                await client.get_result(handle, timeout=10)
            assert "customer asked" in str(cancelled.value)
            description = await client.describe_workflow(handle.workflow_id)
            assert description.status == "cancelled"
            events = await history_events(client, handle.workflow_id, handle.run_id)
            types = event_types(events)
            assert types[-2:] == ["CancelRequested", "WorkflowCancelled"], types
            assert events[-1]["payload"]["reason"] == "customer asked"

            # Closed: both commands are refused.
            for verb in ("cancel", "terminate"):
                body = expect_error(
                    await asyncio.to_thread(api.control, "POST", f"/workflows/{handle.workflow_id}/{verb}", json={}),
                    409,
                    "run_not_active",
                )
                assert body["outcome"] == "rejected_not_active"

    asyncio.run(scenario())


def test_terminate_closes_the_run_and_deletes_its_timer(keel: KeelServer, api: RawApi) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-terminate")
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, workflows=[Sleeper]):
                handle = await _start(client, "e2e.cancel.sleeper", task_queue, [])

                async def sleeping() -> bool:
                    events = await history_events(client, handle.workflow_id, handle.run_id)
                    return "TimerScheduled" in event_types(events)

                await async_wait_until(sleeping, 30, "TimerScheduled")
                response = await asyncio.to_thread(
                    api.control,
                    "POST",
                    f"/workflows/{handle.workflow_id}/runs/{handle.run_id}/terminate",
                    json={"reason": "operator"},
                )
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["outcome"] == "terminated" and body["command_status"] == "accepted"
                assert body["run_id"] == handle.run_id and body["target_scope"] == "run"

            with pytest.raises(WorkflowTerminated):
                await client.get_result(handle, timeout=10)
            assert (await client.describe_workflow(handle.workflow_id)).status == "terminated"
            types = event_types(await history_events(client, handle.workflow_id, handle.run_id))
            assert types[-2:] == ["TerminateRequested", "WorkflowTerminated"], types
            assert "TimerFired" not in types

    asyncio.run(scenario())


def test_sdk_cancel_and_bad_targets(keel: KeelServer, api: RawApi) -> None:
    workflow_id = unique("e2e-cancel-raw")
    started = api.start_workflow(workflow_id, "e2e.cancel.raw", unique("e2e-q"))
    expect_error(api.control("POST", "/workflows/no-such-workflow/cancel", json={}), 404, "instance_not_found")
    expect_error(
        api.control("POST", f"/workflows/{workflow_id}/runs/no-such-run/cancel", json={}), 404, "run_not_found"
    )
    expect_error(
        api.control("POST", f"/workflows/{workflow_id}/cancel", json={"reason": 5}), 422, "validation_failed"
    )
    response = api.control("POST", f"/workflows/{workflow_id}/cancel", json={})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["outcome"] == "cancelled" and body["run_id"] == started["run_id"]
    assert body["control_plane"]["operation"] == "cancel"
    assert api.describe_workflow(workflow_id)["status"] == "cancelled"

    async def sdk_result() -> None:
        async with Client(keel.url) as client:
            handle = client.get_workflow_handle(workflow_id)
            with pytest.raises(WorkflowCancelled):
                await client.get_result(handle, timeout=10)

    asyncio.run(sdk_result())


def test_activity_attempt_of_a_closed_run_is_told_to_stop(api: RawApi) -> None:
    """Raw worker: after cancel the attempt's heartbeat says ``cancel_requested``; after
    terminate it says ``can_continue: false``; its reports are ignored, not 404."""
    for verb, cancel_requested, reason in (
        ("cancel", True, "run_cancelled"),
        ("terminate", False, "run_terminated"),
    ):
        task_queue = unique(f"e2e-{verb}-act")
        worker_id = unique("e2e-raw")
        workflow_id = unique(f"e2e-{verb}-act")
        api.start_workflow(workflow_id, "e2e.cancel.raw_activity", task_queue)
        api.register_worker(
            worker_id, task_queue, workflow_types=["e2e.cancel.raw_activity"], activity_types=["e2e.cancel.act"]
        )
        task = api.lease_workflow_task(worker_id, task_queue)
        command = {"type": "schedule_activity", "activity_type": "e2e.cancel.act", "arguments": None, "queue": task_queue}
        assert api.complete_workflow_task(task, [command]).status_code == 200
        attempt = api.lease_activity_task(worker_id, task_queue)
        lease = {"activity_attempt_id": attempt["activity_attempt_id"], "lease_owner": worker_id}
        beat = api.worker("POST", f"/worker/activity-tasks/{attempt['task_id']}/heartbeat", json=lease)
        assert beat.status_code == 200 and beat.json()["can_continue"] is True, beat.text

        assert api.control("POST", f"/workflows/{workflow_id}/{verb}", json={}).status_code == 200
        beat = api.worker("POST", f"/worker/activity-tasks/{attempt['task_id']}/heartbeat", json=lease)
        assert beat.status_code == 200, beat.text
        body = beat.json()
        assert body["cancel_requested"] is cancel_requested and body["can_continue"] is False, body
        assert body["reason"] == reason
        failed = api.worker(
            "POST",
            f"/worker/activity-tasks/{attempt['task_id']}/fail",
            json={**lease, "failure": {"message": "activity cancelled", "type": "ActivityCancelled"}},
        )
        assert failed.status_code == 200 and failed.json()["outcome"] == "ignored", failed.text
        # Someone else's attempt id is still a 404.
        stranger = {"activity_attempt_id": "not-mine", "lease_owner": "someone"}
        expect_error(
            api.worker("POST", f"/worker/activity-tasks/{attempt['task_id']}/heartbeat", json=stranger),
            404,
            "task_not_found",
        )
