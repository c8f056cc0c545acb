"""Activity timeouts through the real SDK: enforced by the server's durable timers,
retried per the retry policy, and surfaced to workflow code as ``ActivityFailed``."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict

from durable_workflow import ActivityFailed, ActivityRetryPolicy, Client, activity, workflow

from keel_harness import KeelServer, event_types, history_events, running_worker, unique, wait_for_results

_attempts: dict[str, list[int]] = defaultdict(list)
_attempts_lock = threading.Lock()


def _record(key: str) -> int:
    number = activity.context().info.attempt_number
    with _attempts_lock:
        _attempts[key].append(number)
    return number


@activity.defn(name="e2e.timeouts.slow_first_attempt")
async def slow_first_attempt(key: str) -> str:
    # Attempt 1 overruns its 1 s start-to-close budget; attempt 2 is quick.
    number = _record(key)
    if number == 1:
        await asyncio.sleep(3)
    return f"done on attempt {number}"


@activity.defn(name="e2e.timeouts.stops_heartbeating")
async def stops_heartbeating(key: str) -> str:
    _record(key)
    await activity.context().heartbeat({"progress": 1})
    await asyncio.sleep(3)
    return "too late"


@activity.defn(name="e2e.timeouts.never_polled")
def never_polled() -> str:  # pragma: no cover - its queue has no worker
    return "unreachable"


def _failure(error: ActivityFailed) -> dict[str, object]:
    return {"message": str(error), "category": error.failure_category, "type": error.exception_type}


@workflow.defn(name="e2e.timeouts.retries_slow_attempt")
class RetriesSlowAttempt:
    def run(self, ctx, key):  # type: ignore[no-untyped-def]
        return (
            yield ctx.schedule_activity(
                "e2e.timeouts.slow_first_attempt",
                [key],
                start_to_close_timeout=1,
                retry_policy=ActivityRetryPolicy(max_attempts=2, initial_interval_seconds=1),
            )
        )


@workflow.defn(name="e2e.timeouts.heartbeat")
class HeartbeatTimeout:
    def run(self, ctx, key):  # type: ignore[no-untyped-def]
        try:
            yield ctx.schedule_activity(
                "e2e.timeouts.stops_heartbeating", [key], heartbeat_timeout=1, start_to_close_timeout=30
            )
        except ActivityFailed as error:
            return _failure(error)
        return None


@workflow.defn(name="e2e.timeouts.schedule_to_start")
class ScheduleToStartTimeout:
    def run(self, ctx, idle_queue):  # type: ignore[no-untyped-def]
        try:
            yield ctx.schedule_activity("e2e.timeouts.never_polled", [], queue=idle_queue, schedule_to_start_timeout=1)
        except ActivityFailed as error:
            return _failure(error)
        return None


@workflow.defn(name="e2e.timeouts.schedule_to_close")
class ScheduleToCloseTimeout:
    def run(self, ctx, idle_queue):  # type: ignore[no-untyped-def]
        try:
            yield ctx.schedule_activity("e2e.timeouts.never_polled", [], queue=idle_queue, schedule_to_close_timeout=1)
        except ActivityFailed as error:
            return _failure(error)
        return None


def _timed_out_payloads(events: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e["payload"] for e in events if e.get("event_type") == "ActivityTimedOut"]  # type: ignore[misc]


def test_start_to_close_timeout_retries_the_attempt_and_the_retry_succeeds(keel: KeelServer) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-timeouts-stc")
        key = unique("stc")
        async with Client(keel.url) as client:
            async with running_worker(
                client, task_queue=task_queue, workflows=[RetriesSlowAttempt], activities=[slow_first_attempt]
            ) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.timeouts.retries_slow_attempt",
                    task_queue=task_queue,
                    workflow_id=unique("e2e-stc"),
                    input=[key],
                )
                [result] = await wait_for_results(client, [handle], worker=worker, timeout=30)
            assert result == "done on attempt 2"
            with _attempts_lock:
                assert _attempts[key][:2] == [1, 2]
            events = await history_events(client, handle.workflow_id, handle.run_id)
            assert _timed_out_payloads(events) == [], "the timed-out attempt was retried, not recorded"
            completed = [e for e in events if e["event_type"] == "ActivityCompleted"]
            assert completed[0]["payload"]["attempt_number"] == 2

    asyncio.run(scenario())


def test_heartbeat_timeout_fails_the_activity_in_workflow_code(keel: KeelServer) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-timeouts-hb")
        key = unique("hb")
        async with Client(keel.url) as client:
            async with running_worker(
                client, task_queue=task_queue, workflows=[HeartbeatTimeout], activities=[stops_heartbeating]
            ) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.timeouts.heartbeat",
                    task_queue=task_queue,
                    workflow_id=unique("e2e-hb"),
                    input=[key],
                )
                [result] = await wait_for_results(client, [handle], worker=worker, timeout=30)
            assert result["category"] == "timeout"
            assert "heartbeat timeout" in result["message"]
            events = await history_events(client, handle.workflow_id, handle.run_id)
            [timed_out] = _timed_out_payloads(events)
            assert timed_out["timeout_kind"] == "heartbeat"
            assert timed_out["attempt_number"] == 1
            assert timed_out["heartbeat_details"] == {"progress": 1}
            assert event_types(events)[-1] == "WorkflowCompleted"

    asyncio.run(scenario())


def test_schedule_to_start_and_schedule_to_close_timeouts_fire_without_a_worker(keel: KeelServer) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-timeouts-queue")
        async with Client(keel.url) as client:
            async with running_worker(
                client, task_queue=task_queue, workflows=[ScheduleToStartTimeout, ScheduleToCloseTimeout]
            ) as worker:
                handles = [
                    await client.start_workflow(
                        workflow_type=workflow_type,
                        task_queue=task_queue,
                        workflow_id=unique("e2e-queue-timeout"),
                        input=[unique("idle-queue")],
                    )
                    for workflow_type in ("e2e.timeouts.schedule_to_start", "e2e.timeouts.schedule_to_close")
                ]
                results = await wait_for_results(client, handles, worker=worker, timeout=30)
            for handle, result, kind in zip(handles, results, ("schedule_to_start", "schedule_to_close")):
                assert result["category"] == "timeout", result
                assert kind.replace("_", "-") in result["message"], result
                [timed_out] = _timed_out_payloads(await history_events(client, handle.workflow_id, handle.run_id))
                assert timed_out["timeout_kind"] == kind

    asyncio.run(scenario())
