"""The real durable-workflow Python SDK (Client + Worker) against keel."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import pytest
from durable_workflow import ActivityRetryPolicy, Client, WorkflowFailed, activity, workflow

from keel_harness import KeelServer, event_types, history_events, running_worker, unique, wait_for_results

# ── workflows and activities (type names are unique to this module) ──────


@activity.defn(name="e2e.roundtrip.greet")
def greet(name: str) -> str:
    return f"hello, {name}"


@workflow.defn(name="e2e.roundtrip.greeter")
class Greeter:
    # As in sdk_smoke.py: one activity, then a small map as the result.
    def run(self, ctx, name):  # type: ignore[no-untyped-def]
        greeting = yield ctx.schedule_activity("e2e.roundtrip.greet", [name], start_to_close_timeout=30)
        return {"greeting": greeting, "length": len(greeting)}


@workflow.defn(name="e2e.roundtrip.refuser")
class Refuser:
    # Runs an activity, then raises from workflow code: a workflow failure,
    # not a workflow-task failure.
    def run(self, ctx, name):  # type: ignore[no-untyped-def]
        greeting = yield ctx.schedule_activity("e2e.roundtrip.greet", [name], start_to_close_timeout=30)
        raise ValueError(f"cannot accept {greeting}")


_broken_calls: Counter[str] = Counter()
_broken_calls_lock = threading.Lock()


@activity.defn(name="e2e.roundtrip.always_broken")
def always_broken(key: str) -> str:
    with _broken_calls_lock:
        _broken_calls[key] += 1
    raise RuntimeError(f"always broken: {key}")


@workflow.defn(name="e2e.roundtrip.uses_broken_activity")
class UsesBrokenActivity:
    # Does not catch the activity's failure, so the workflow fails with it.
    def run(self, ctx, key):  # type: ignore[no-untyped-def]
        result = yield ctx.schedule_activity(
            "e2e.roundtrip.always_broken",
            [key],
            start_to_close_timeout=30,
            retry_policy=ActivityRetryPolicy(max_attempts=2, initial_interval_seconds=1),
        )
        return result


# ── tests ─────────────────────────────────────────────────────────────────


def test_sdk_workflow_with_one_activity_returns_its_result(keel: KeelServer) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-roundtrip")
        async with Client(keel.url) as client:
            async with running_worker(
                client, task_queue=task_queue, workflows=[Greeter], activities=[greet], stop_must_succeed=False
            ) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.roundtrip.greeter",
                    task_queue=task_queue,
                    workflow_id=unique("e2e-greeter"),
                    input=["world"],
                )
                [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)
                # Drains the pollers and deregisters
                # (DELETE /api/worker/registrations/{id}); raises on a bad reply.
                await worker.stop()

            assert result == {"greeting": "hello, world", "length": 12}

            description = await client.describe_workflow(handle.workflow_id)
            assert description.status == "completed"
            assert description.run_id == handle.run_id
            assert description.workflow_type == "e2e.roundtrip.greeter"

            types = event_types(await history_events(client, handle.workflow_id, handle.run_id))
            assert types.count("WorkflowStarted") == 1, types
            assert types.count("ActivityScheduled") == 1, types
            assert types.count("ActivityCompleted") == 1, types
            assert types.count("WorkflowCompleted") == 1, types

    asyncio.run(scenario())


def test_sdk_workflow_failure_is_reported(keel: KeelServer) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-refuser")
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, workflows=[Refuser], activities=[greet]) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.roundtrip.refuser",
                    task_queue=task_queue,
                    workflow_id=unique("e2e-refuser"),
                    input=["world"],
                )
                with pytest.raises(WorkflowFailed) as failure:
                    await wait_for_results(client, [handle], worker=worker, timeout=60)

            assert str(failure.value) == "cannot accept hello, world"
            assert failure.value.exception_class == "builtins.ValueError"
            assert (await client.describe_workflow(handle.workflow_id)).status == "failed"

    asyncio.run(scenario())


def test_activity_failure_with_retries_exhausted_fails_the_workflow(keel: KeelServer) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-broken")
        key = unique("broken")
        async with Client(keel.url) as client:
            async with running_worker(
                client, task_queue=task_queue, workflows=[UsesBrokenActivity], activities=[always_broken]
            ) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.roundtrip.uses_broken_activity",
                    task_queue=task_queue,
                    workflow_id=unique("e2e-broken"),
                    input=[key],
                )
                with pytest.raises(WorkflowFailed) as failure:
                    await wait_for_results(client, [handle], worker=worker, timeout=60)

            assert f"always broken: {key}" in str(failure.value)
            # max_attempts=2: the server retried the activity exactly once.
            with _broken_calls_lock:
                assert _broken_calls[key] == 2

            assert (await client.describe_workflow(handle.workflow_id)).status == "failed"
            types = event_types(await history_events(client, handle.workflow_id, handle.run_id))
            assert types.count("ActivityCompleted") == 0, types
            assert types.count("WorkflowFailed") == 1, types

    asyncio.run(scenario())
