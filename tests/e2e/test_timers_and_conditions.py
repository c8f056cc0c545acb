"""Durable timers, condition waits (with and without timeouts), side effects, version
markers and search-attribute / memo upserts through the real SDK."""

from __future__ import annotations

import asyncio
import itertools
import time

from durable_workflow import Client, workflow
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

_counter = itertools.count(100)

# ── workflows (type names are unique to this module) ──────────────────────


@workflow.defn(name="e2e.timers.sleeper")
class Sleeper:
    def run(self, ctx, seconds):  # type: ignore[no-untyped-def]
        started = ctx.now().isoformat()
        yield ctx.sleep(seconds)
        yield ctx.start_timer(0)
        return {"slept": seconds, "started": started}


@workflow.defn(name="e2e.timers.waiter")
class Waiter:
    """Waits for a signal with a timeout; reports whether it came."""

    def __init__(self) -> None:
        self.arrived = False

    @workflow.signal("arrive")
    def arrive(self) -> None:
        self.arrived = True

    def run(self, ctx, timeout):  # type: ignore[no-untyped-def]
        came = yield ctx.wait_condition(lambda: self.arrived, key="arrival", timeout=timeout)
        # A plain timer after the wait, with the same delay as the wait's timeout.
        yield ctx.sleep(1)
        return {"came": came}


@workflow.defn(name="e2e.timers.non_blocking")
class NonBlocking:
    """Side effect, version marker, search attributes and memo, then a timer."""

    def run(self, ctx):  # type: ignore[no-untyped-def]
        token = yield ctx.side_effect(lambda: next(_counter))
        version = yield ctx.get_version("checkout-flow", 1, 3)
        patched = yield ctx.patched("fix-rounding")
        yield ctx.upsert_search_attributes({"CustomerId": "cust-42", "Stage": "started"})
        yield ctx.upsert_memo({"note": "first", "count": 1})
        yield ctx.sleep(1)
        yield ctx.upsert_memo({"note": None, "extra": [1, 2]})
        return {"token": token, "version": version, "patched": patched}


# ── tests ─────────────────────────────────────────────────────────────────


def test_durable_timer_fires_and_resumes_the_workflow(keel: KeelServer) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-timers")
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, workflows=[Sleeper]) as worker:
                began = time.monotonic()
                handle = await client.start_workflow(
                    workflow_type="e2e.timers.sleeper",
                    task_queue=task_queue,
                    workflow_id=unique("e2e-sleeper"),
                    input=[2],
                )
                [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)
                elapsed = time.monotonic() - began

            assert result["slept"] == 2
            assert elapsed >= 2.0, f"a 2 s timer resolved after {elapsed:.2f} s"
            events = await history_events(client, handle.workflow_id, handle.run_id)
            types = event_types(events)
            assert types.count("TimerScheduled") == 2 and types.count("TimerFired") == 2, types
            scheduled = [e["payload"] for e in events if e["event_type"] == "TimerScheduled"]
            fired = [e["payload"] for e in events if e["event_type"] == "TimerFired"]
            assert [p["sequence"] for p in scheduled] == [1, 2]
            assert [p["delay_seconds"] for p in scheduled] == [2, 0]
            assert [p["timer_id"] for p in fired] == [p["timer_id"] for p in scheduled]
            assert all(p["fire_at"].endswith("Z") for p in scheduled)

    asyncio.run(scenario())


def test_condition_wait_times_out_without_taking_a_sequence(keel: KeelServer) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-cond-timeout")
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, workflows=[Waiter]) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.timers.waiter",
                    task_queue=task_queue,
                    workflow_id=unique("e2e-waiter"),
                    input=[1],
                )
                [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)

            assert result == {"came": False}
            events = await history_events(client, handle.workflow_id, handle.run_id)
            opened = [e["payload"] for e in events if e["event_type"] == "ConditionWaitOpened"]
            assert len(opened) == 1 and opened[0]["sequence"] == 1 and opened[0]["timeout_seconds"] == 1
            timeout = [e["payload"] for e in events if e["event_type"] == "ConditionWaitTimedOut"]
            assert len(timeout) == 1, events
            assert timeout[0]["condition_wait_id"] == opened[0]["condition_wait_id"]
            assert timeout[0]["sequence"] == 1
            # The plain timer after the wait takes sequence 2: the timeout took no slot.
            scheduled = [e["payload"] for e in events if e["event_type"] == "TimerScheduled"]
            assert [p["sequence"] for p in scheduled] == [2]

    asyncio.run(scenario())


def test_condition_wait_satisfied_before_its_timeout(keel: KeelServer) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-cond-signal")
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, workflows=[Waiter]) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.timers.waiter",
                    task_queue=task_queue,
                    workflow_id=unique("e2e-waiter"),
                    input=[60],
                )

                async def wait_opened() -> bool:
                    events = await history_events(client, handle.workflow_id, handle.run_id)
                    return "ConditionWaitOpened" in event_types(events)

                await async_wait_until(wait_opened, 30, "ConditionWaitOpened")
                await client.signal_workflow(handle.workflow_id, "arrive")
                [result] = await wait_for_results(client, [handle], worker=worker, timeout=30)

            assert result == {"came": True}
            events = await history_events(client, handle.workflow_id, handle.run_id)
            assert "ConditionWaitTimedOut" not in event_types(events), "the satisfied wait's timeout must not fire"

    asyncio.run(scenario())


def test_side_effects_version_markers_and_upserts_replay(keel: KeelServer, api: RawApi) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-non-blocking")
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, workflows=[NonBlocking]) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.timers.non_blocking",
                    task_queue=task_queue,
                    workflow_id=unique("e2e-nb"),
                    input=[],
                    memo={"origin": "test"},
                )
                [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)

            # The side effect ran once; replays after the timer returned the recorded value.
            assert result["version"] == 3 and result["patched"] is True
            assert isinstance(result["token"], int)
            events = await history_events(client, handle.workflow_id, handle.run_id)
            by_type = {e["event_type"]: e["payload"] for e in events}
            side = [e["payload"] for e in events if e["event_type"] == "SideEffectRecorded"]
            assert len(side) == 1 and side[0]["sequence"] == 1
            assert decode_envelope(side[0]["result"], codec="avro") == result["token"]
            markers = [e["payload"] for e in events if e["event_type"] == "VersionMarkerRecorded"]
            assert [(m["sequence"], m["change_id"], m["version"], m["min_supported"], m["max_supported"]) for m in markers] == [
                (2, "checkout-flow", 3, 1, 3),
                (3, "fix-rounding", 1, -1, 1),
            ]
            attrs = by_type["SearchAttributesUpserted"]
            assert attrs["sequence"] == 4
            assert attrs["merged"] == {"CustomerId": "cust-42", "Stage": "started"}
            memos = [e["payload"] for e in events if e["event_type"] == "MemoUpserted"]
            assert [m["sequence"] for m in memos] == [5, 7]
            assert all(set(m["entries"]) == {"codec", "blob"} and set(m["merged"]) == {"codec", "blob"} for m in memos)
            assert decode_envelope(memos[0]["merged"], codec="avro") == {"count": 1, "note": "first", "origin": "test"}
            assert decode_envelope(memos[1]["merged"], codec="avro") == {"count": 1, "extra": [1, 2], "origin": "test"}
            assert by_type["TimerScheduled"]["sequence"] == 6

            described = api.describe_workflow(handle.workflow_id)
            assert described["search_attributes"] == {"CustomerId": "cust-42", "Stage": "started"}
            assert described["memo"] == {"count": 1, "extra": [1, 2], "origin": "test"}

    asyncio.run(scenario())


def test_malformed_wait_commands_are_rejected(api: RawApi) -> None:
    task_queue = unique("e2e-bad-waits")
    worker_id = unique("e2e-raw")
    workflow_id = unique("e2e-bad-waits")
    api.start_workflow(workflow_id, "e2e.timers.raw", task_queue)
    api.register_worker(worker_id, task_queue, workflow_types=["e2e.timers.raw"])
    task = api.lease_workflow_task(worker_id, task_queue)
    bad_commands = [
        {"type": "start_timer"},
        {"type": "start_timer", "delay_seconds": -1},
        {"type": "record_version_marker", "change_id": "c", "version": 5, "min_supported": 1, "max_supported": 2},
        {"type": "upsert_memo", "entries": {"a": 1}},
        {"type": "upsert_memo", "entries": {"codec": "avro", "blob": "not-avro"}},
        {"type": "upsert_search_attributes", "attributes": [1]},
        {"type": "open_condition_wait", "timeout_seconds": "soon"},
        {"type": "complete_update", "update_id": "no-such-update"},
    ]
    for command in bad_commands:
        expect_error(api.complete_workflow_task(task, [command]), 422, "invalid_commands")
    # The lease survived every rejection.
    response = api.complete_workflow_task(task, [{"type": "start_timer", "delay_seconds": 0}])
    assert response.status_code == 200, response.text
