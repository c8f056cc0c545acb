"""Child workflows through the real SDK: results and failures reach the parent, and a
closing parent applies its children's parent-close policy."""

from __future__ import annotations

import asyncio

import pytest
import threading
from collections import Counter

from durable_workflow import (
    ActivityRetryPolicy,
    ChildWorkflowFailed,
    ChildWorkflowRetryPolicy,
    Client,
    WorkflowTimedOut,
    activity,
    workflow,
)

from keel_harness import KeelServer, async_wait_until, event_types, history_events, running_worker, unique, wait_for_results

# ── workflows (type names are unique to this module) ──────────────────────


@activity.defn(name="e2e.children.never_runs")
def never_runs() -> str:  # pragma: no cover - scheduled on a queue no worker polls
    return "unreachable"


@workflow.defn(name="e2e.children.greeter")
class ChildGreeter:
    def run(self, ctx, name):  # type: ignore[no-untyped-def]
        return f"hello from the child, {name}"


@workflow.defn(name="e2e.children.refuser")
class ChildRefuser:
    def run(self, ctx, name):  # type: ignore[no-untyped-def]
        raise ValueError(f"the child refuses {name}")


@workflow.defn(name="e2e.children.parent")
class Parent:
    # One child that succeeds, one that fails and is caught.
    def run(self, ctx, name):  # type: ignore[no-untyped-def]
        greeting = yield ctx.start_child_workflow("e2e.children.greeter", [name])
        try:
            yield ctx.start_child_workflow("e2e.children.refuser", [name])
            failure = None
        except ChildWorkflowFailed as error:
            failure = {"message": str(error), "class": error.exception_class, "type": type(error).__name__}
        return {"greeting": greeting, "failure": failure}


@workflow.defn(name="e2e.children.waits_forever")
class WaitsForever:
    # Blocks on an activity nobody will ever run.
    def run(self, ctx, queue):  # type: ignore[no-untyped-def]
        return (yield ctx.schedule_activity("e2e.children.never_runs", [], queue=queue))


@workflow.defn(name="e2e.children.doomed_parent")
class DoomedParent:
    # Starts a child that never finishes, with the given policy; the parent's own run
    # timeout closes it while it waits.
    def run(self, ctx, policy, idle_queue):  # type: ignore[no-untyped-def]
        return (
            yield ctx.start_child_workflow(
                "e2e.children.waits_forever", [idle_queue], parent_close_policy=policy
            )
        )


_flaky_calls: Counter[str] = Counter()
_flaky_lock = threading.Lock()


@activity.defn(name="e2e.children.flaky_once")
def flaky_once(key: str) -> str:
    with _flaky_lock:
        _flaky_calls[key] += 1
        calls = _flaky_calls[key]
    if calls == 1:
        raise RuntimeError("first call fails")
    return f"call {calls} worked"


@workflow.defn(name="e2e.children.flaky_child")
class FlakyChild:
    # Fails its first run (the activity is not retried), succeeds when retried.
    def run(self, ctx, key):  # type: ignore[no-untyped-def]
        return (
            yield ctx.schedule_activity(
                "e2e.children.flaky_once", [key], start_to_close_timeout=30,
                retry_policy=ActivityRetryPolicy(max_attempts=1),
            )
        )


@workflow.defn(name="e2e.children.retrying_parent")
class RetryingParent:
    def run(self, ctx, key):  # type: ignore[no-untyped-def]
        return (
            yield ctx.start_child_workflow(
                "e2e.children.flaky_child", [key],
                retry_policy=ChildWorkflowRetryPolicy(max_attempts=2, initial_interval_seconds=1),
            )
        )


# ── tests ─────────────────────────────────────────────────────────────────


def test_child_results_and_failures_reach_the_parent(keel: KeelServer) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-children")
        async with Client(keel.url) as client:
            async with running_worker(
                client, task_queue=task_queue, workflows=[Parent, ChildGreeter, ChildRefuser]
            ) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.children.parent",
                    task_queue=task_queue,
                    workflow_id=unique("e2e-parent"),
                    input=["ada"],
                )
                [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)

            assert result["greeting"] == "hello from the child, ada"
            assert result["failure"] == {
                "message": "the child refuses ada",
                "class": "builtins.ValueError",
                "type": "ChildWorkflowFailed",
            }

            events = await history_events(client, handle.workflow_id, handle.run_id)
            types = event_types(events)
            assert types.count("ChildWorkflowScheduled") == 2, types
            assert types.count("ChildRunStarted") == 2, types
            assert types.count("ChildRunCompleted") == 1, types
            assert types.count("ChildRunFailed") == 1, types
            assert types[-1] == "WorkflowCompleted", types
            scheduled = [e["payload"] for e in events if e["event_type"] == "ChildWorkflowScheduled"]
            assert [p["sequence"] for p in scheduled] == [1, 2]
            assert [p["child_workflow_type"] for p in scheduled] == ["e2e.children.greeter", "e2e.children.refuser"]

            # The children are ordinary workflows of the same namespace.
            child_id = scheduled[0]["child_workflow_instance_id"]
            assert child_id == f"{handle.run_id}:1"
            child = await client.describe_workflow(child_id)
            assert child.status == "completed"
            assert child.workflow_type == "e2e.children.greeter"
            assert await client.get_result(client.get_workflow_handle(child_id)) == "hello from the child, ada"
            refuser = await client.describe_workflow(scheduled[1]["child_workflow_instance_id"])
            assert refuser.status == "failed"

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("policy", "child_status"),
    [("terminate", "terminated"), ("request_cancel", "cancelled"), ("abandon", "running")],
)
def test_parent_close_policy_is_applied_when_the_parent_closes(keel: KeelServer, policy: str, child_status: str) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-children-policy")
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, workflows=[DoomedParent, WaitsForever]) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.children.doomed_parent",
                    task_queue=task_queue,
                    workflow_id=unique("e2e-doomed"),
                    input=[policy, unique("idle-queue")],
                    run_timeout_seconds=2,
                )
                with pytest.raises(WorkflowTimedOut):
                    await wait_for_results(client, [handle], worker=worker, timeout=30)

                child_id = f"{handle.run_id}:1"

                async def child_settled() -> bool:
                    description = await client.describe_workflow(child_id)
                    bucket = "running" if description.status in ("pending", "running", "waiting") else description.status
                    return bucket == child_status

                await async_wait_until(child_settled, 10, f"child {child_id} to be {child_status}")

            child_events = event_types(await history_events(client, child_id, (await client.describe_workflow(child_id)).run_id))
            if child_status == "terminated":
                assert child_events[-1] == "WorkflowTerminated", child_events
            elif child_status == "cancelled":
                assert child_events[-1] == "WorkflowCancelled", child_events
            else:
                assert child_events[-1] == "ActivityScheduled", child_events

    asyncio.run(scenario())


def test_failed_child_is_retried_per_its_retry_policy(keel: KeelServer) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-children-retry")
        key = unique("flaky")
        async with Client(keel.url) as client:
            async with running_worker(
                client, task_queue=task_queue, workflows=[RetryingParent, FlakyChild], activities=[flaky_once]
            ) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.children.retrying_parent",
                    task_queue=task_queue,
                    workflow_id=unique("e2e-retrying"),
                    input=[key],
                )
                [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)
            assert result == "call 2 worked"

            events = await history_events(client, handle.workflow_id, handle.run_id)
            started = [e["payload"] for e in events if e["event_type"] == "ChildRunStarted"]
            assert [p.get("retry_attempt") for p in started] == [1, 2]
            child_id = started[0]["child_workflow_instance_id"]
            runs = await client.list_workflow_runs(child_id)
            assert [r.status for r in runs.runs] == ["failed", "completed"]
            assert started[1]["retry_of_child_workflow_run_id"] == runs.runs[0].run_id
            assert event_types(events)[-2:] == ["ChildRunCompleted", "WorkflowCompleted"]

    asyncio.run(scenario())
