"""Signals through the real SDK: delivery into workflow state, waking a condition
wait, idempotent resends by ``request_id``, unknown names and closed runs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import pytest
from durable_workflow import Client, activity, workflow
from durable_workflow.errors import SignalFailed

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

# ── workflows and activities (type names are unique to this module) ──────


@workflow.defn(name="e2e.signals.collector")
class Collector:
    """Waits until `count` items were signalled, then returns them."""

    def __init__(self) -> None:
        self.items: list[str] = []

    @workflow.signal("add")
    def add(self, item: str) -> None:
        self.items.append(item)

    def run(self, ctx, count):  # type: ignore[no-untyped-def]
        yield ctx.wait_condition(lambda: len(self.items) >= count, key="enough-items")
        return self.items


class _Turnstile:
    """Holds each workflow task of ``GatedCollector`` at the top of ``run()`` (the SDK
    replays in a thread, while the task is leased) until the test lets that pass
    through, so a test can send signals while a given task is in flight."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.entered = 0
        self.allowed = 0

    def pass_through(self) -> None:
        with self._cond:
            self.entered += 1
            mine = self.entered
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: self.allowed >= mine, timeout=30):
                raise TimeoutError(f"turnstile pass {mine} was never allowed")

    def allow(self, passes: int) -> None:
        with self._cond:
            self.allowed = passes
            self._cond.notify_all()


_turnstile = _Turnstile()


@workflow.defn(name="e2e.signals.gated_collector")
class GatedCollector:
    """``Collector`` whose every workflow task waits at ``_turnstile`` first."""

    def __init__(self) -> None:
        self.items: list[str] = []

    @workflow.signal("add")
    def add(self, item: str) -> None:
        self.items.append(item)

    def run(self, ctx, count):  # type: ignore[no-untyped-def]
        _turnstile.pass_through()
        yield ctx.wait_condition(lambda: len(self.items) >= count, key="enough-items")
        return self.items


_release = asyncio.Event()


@activity.defn(name="e2e.signals.slow_step")
async def slow_step() -> str:
    # Held open until the test has signalled, so the signal lands during the activity.
    await asyncio.wait_for(_release.wait(), timeout=60)
    return "stepped"


@workflow.defn(name="e2e.signals.during_activity")
class SignalDuringActivity:
    def __init__(self) -> None:
        self.notes: list[str] = []

    @workflow.signal("note")
    def note(self, text: str) -> None:
        self.notes.append(text)

    def run(self, ctx):  # type: ignore[no-untyped-def]
        step = yield ctx.schedule_activity("e2e.signals.slow_step", [], start_to_close_timeout=60)
        return {"step": step, "notes": self.notes}


# ── tests ─────────────────────────────────────────────────────────────────


def test_signals_reach_handlers_and_wake_the_condition_wait(keel: KeelServer) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-signals")
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, workflows=[Collector]) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.signals.collector",
                    task_queue=task_queue,
                    workflow_id=unique("e2e-collector"),
                    input=[3],
                )
                # The first wait is open before any signal arrives.
                async def wait_opened() -> bool:
                    events = await history_events(client, handle.workflow_id, handle.run_id)
                    return "ConditionWaitOpened" in event_types(events)

                await async_wait_until(wait_opened, 30, "the first ConditionWaitOpened")
                receipts = []
                for item in ["a", "b", "c"]:
                    receipts.append(await client.signal_workflow(handle.workflow_id, "add", args=[item]))
                [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)

            assert result == ["a", "b", "c"]
            for receipt in receipts:
                assert receipt["outcome"] == "signal_received", receipt
                assert receipt["workflow_id"] == handle.workflow_id
                assert receipt["run_id"] == handle.run_id
                assert receipt["signal_name"] == "add"
                assert receipt["command_id"] and receipt["request_id"].startswith("sdk-python-signal-")
            events = await history_events(client, handle.workflow_id, handle.run_id)
            types = event_types(events)
            assert types.count("SignalReceived") == 3, types
            assert types.count("ConditionWaitOpened") >= 1, types
            assert types[-1] == "WorkflowCompleted", types
            signal_payloads = [e["payload"] for e in events if e["event_type"] == "SignalReceived"]
            assert [p["signal_name"] for p in signal_payloads] == ["add", "add", "add"]
            assert all(p["arguments"]["codec"] == "avro" for p in signal_payloads)
            # Condition waits take consecutive workflow sequences.
            opened = [e["payload"] for e in events if e["event_type"] == "ConditionWaitOpened"]
            assert [p["sequence"] for p in opened] == list(range(1, len(opened) + 1))
            assert all(p["condition_key"] == "enough-items" for p in opened)

    asyncio.run(scenario())


def test_signal_during_an_activity_is_applied_after_it(keel: KeelServer) -> None:
    async def scenario() -> None:
        _release.clear()
        task_queue = unique("e2e-signal-activity")
        async with Client(keel.url) as client:
            async with running_worker(
                client, task_queue=task_queue, workflows=[SignalDuringActivity], activities=[slow_step]
            ) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.signals.during_activity",
                    task_queue=task_queue,
                    workflow_id=unique("e2e-during"),
                    input=[],
                )

                async def scheduled() -> bool:
                    events = await history_events(client, handle.workflow_id, handle.run_id)
                    return "ActivityScheduled" in event_types(events)

                await async_wait_until(scheduled, 30, "ActivityScheduled")
                await client.signal_workflow(handle.workflow_id, "note", args=["while running"])
                # The signal's workflow task finds nothing new to do (the SDK's
                # WorkflowTaskWaitingForHistory); then the activity finishes.
                _release.set()
                [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)

            assert result == {"step": "stepped", "notes": ["while running"]}

    asyncio.run(scenario())


def test_resent_signal_with_the_same_request_id_is_applied_once(keel: KeelServer, api: RawApi) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-signal-idem")
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, workflows=[Collector]) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.signals.collector",
                    task_queue=task_queue,
                    workflow_id=unique("e2e-idem"),
                    input=[2],
                )
                first = await client.signal_workflow(handle.workflow_id, "add", args=["x"], request_id="req-1")
                again = await client.signal_workflow(handle.workflow_id, "add", args=["x"], request_id="req-1")
                assert again["command_id"] == first["command_id"]
                assert again["request_id"] == "req-1"
                assert first["retained"] is False and again["retained"] is True
                # The same key with a different intent is refused.
                with pytest.raises(SignalFailed) as conflict:
                    await client.signal_workflow(handle.workflow_id, "add", args=["other"], request_id="req-1")
                assert conflict.value.reason == "request_id_conflict"
                await client.signal_workflow(handle.workflow_id, "add", args=["y"], request_id="req-2")
                [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)

            assert result == ["x", "y"]
            types = event_types(await history_events(client, handle.workflow_id, handle.run_id))
            assert types.count("SignalReceived") == 2, types

    asyncio.run(scenario())


async def _signal_in_flight(client: Client, workflow_id: str, task_pass: int, item: str | None = None) -> None:
    """Waits until workflow task ``task_pass`` is held at ``_turnstile`` (leased, its
    worker deciding), signals ``item`` if given, then lets the task through."""
    await async_wait_until(lambda: _turnstile.entered >= task_pass, 30, f"workflow task pass {task_pass}")
    if item is not None:
        await client.signal_workflow(workflow_id, "add", args=[item])
    _turnstile.allow(task_pass)


async def _run_gated_collector(
    keel: KeelServer, count: int, drive: Callable[[Client, str, int], Awaitable[None]]
) -> tuple[list[str], list[str]]:
    """Runs a ``GatedCollector`` for ``count`` items: ``drive(client, workflow_id,
    base)`` sends the signals (task pass ``base + n`` is the run's n-th workflow task),
    then every later task is let through. Returns the result and the history's types."""
    task_queue = unique("e2e-signal-gated")
    async with Client(keel.url) as client:
        async with running_worker(client, task_queue=task_queue, workflows=[GatedCollector]) as worker:
            base = _turnstile.entered
            handle = await client.start_workflow(
                workflow_type="e2e.signals.gated_collector",
                task_queue=task_queue,
                workflow_id=unique("e2e-gated"),
                input=[count],
            )
            await drive(client, handle.workflow_id, base)
            _turnstile.allow(1 << 30)
            [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)
        types = event_types(await history_events(client, handle.workflow_id, handle.run_id))
    return result, types


def test_signals_sent_while_workflow_tasks_are_in_flight_replay_in_the_order_the_worker_saw(keel: KeelServer) -> None:
    # Each signal lands while a workflow task is leased and its worker has not seen it:
    # "x" during the first task (which then opens the wait), "y" during the task that
    # "x" woke (which reopens it). History must place each signal after the commands
    # of the task that did not see it, or the SDK's replay binds both signals to the
    # first wait and rejects its own reopen as non-deterministic.
    async def drive(client: Client, workflow_id: str, base: int) -> None:
        await _signal_in_flight(client, workflow_id, base + 1, "x")
        await _signal_in_flight(client, workflow_id, base + 2, "y")

    result, types = asyncio.run(_run_gated_collector(keel, 2, drive))
    assert result == ["x", "y"]
    waits_and_signals = [t for t in types if t in ("ConditionWaitOpened", "SignalReceived")]
    assert waits_and_signals == [
        "ConditionWaitOpened", "SignalReceived", "ConditionWaitOpened", "SignalReceived"
    ], types
    assert types[-1] == "WorkflowCompleted", types


def test_a_signal_sent_while_the_closing_task_is_in_flight_is_handled_before_the_run_closes(keel: KeelServer) -> None:
    # The task woken by "x" returns ["x"], but "y" arrived while it was deciding: the
    # run must not close over a signal its worker never saw.
    async def drive(client: Client, workflow_id: str, base: int) -> None:
        await _signal_in_flight(client, workflow_id, base + 1)  # opens the wait
        await client.signal_workflow(workflow_id, "add", args=["x"])
        await _signal_in_flight(client, workflow_id, base + 2, "y")

    result, types = asyncio.run(_run_gated_collector(keel, 1, drive))
    assert result == ["x", "y"]
    assert types.count("WorkflowCompleted") == 1 and types[-1] == "WorkflowCompleted", types


def test_unknown_signal_and_closed_run_are_rejected(keel: KeelServer, api: RawApi) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-signal-reject")
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, workflows=[Collector]) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.signals.collector",
                    task_queue=task_queue,
                    workflow_id=unique("e2e-reject"),
                    input=[1],
                )
                # Once the worker has run a task it has registered, with Collector's
                # contract: "add" only.
                async def wait_opened() -> bool:
                    events = await history_events(client, handle.workflow_id, handle.run_id)
                    return "ConditionWaitOpened" in event_types(events)

                await async_wait_until(wait_opened, 30, "ConditionWaitOpened")
                with pytest.raises(SignalFailed):
                    await client.signal_workflow(handle.workflow_id, "no_such_signal", args=[1])
                response = api.control(
                    "POST", f"/workflows/{handle.workflow_id}/signal/no_such_signal", json={"request_id": "r"}
                )
                body = expect_error(response, 404, "unknown_signal")
                assert body["outcome"] == "rejected_unknown_signal"

                # Run-targeted: the current run is accepted, an unknown run is 404.
                receipt = await client.signal_workflow(handle.workflow_id, "add", args=["z"], run_id=handle.run_id)
                assert receipt["target_scope"] == "run"
                response = api.control(
                    "POST", f"/workflows/{handle.workflow_id}/runs/no-such-run/signal/add", json={}
                )
                expect_error(response, 404, "run_not_found")
                [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)
            assert result == ["z"]

            # The run is closed now.
            with pytest.raises(SignalFailed):
                await client.signal_workflow(handle.workflow_id, "add", args=["late"])
            response = api.control("POST", f"/workflows/{handle.workflow_id}/signal/add", json={})
            body = expect_error(response, 409, "run_not_active")
            assert body["control_plane"]["operation"] == "signal"
            assert body["outcome"] == "rejected_not_active"
            expect_error(api.control("POST", "/workflows/nope-missing/signal/add", json={}), 404, "instance_not_found")

    asyncio.run(scenario())


def test_signal_bad_input_gets_named_4xx(api: RawApi) -> None:
    workflow_id = unique("e2e-signal-bad")
    api.start_workflow(workflow_id, "e2e.signals.unregistered", unique("e2e-q"))
    expect_error(api.control("POST", f"/workflows/{workflow_id}/signal/x", json={"input": 5}), 422, "validation_failed")
    expect_error(
        api.control("POST", f"/workflows/{workflow_id}/signal/x", json={"request_id": 7}), 422, "validation_failed"
    )
    long_name = "n" * 300
    expect_error(api.control("POST", f"/workflows/{workflow_id}/signal/{long_name}", json={}), 422, "validation_failed")
    # With no worker contract declared for the type, any name is accepted.
    response = api.control("POST", f"/workflows/{workflow_id}/signal/anything", json={"input": ["a", 1]})
    assert response.status_code == 202, response.text


@workflow.defn(name="e2e.signals.renewing")
class Renewing:
    """Continues as new once, then waits for a poke."""

    def __init__(self) -> None:
        self.got: list[str] = []

    @workflow.signal("poke")
    def poke(self, value: str) -> None:
        self.got.append(value)

    def run(self, ctx, generation):  # type: ignore[no-untyped-def]
        if generation == 0:
            return ctx.continue_as_new(1)
        yield ctx.wait_condition(lambda: bool(self.got), key="poked")
        return {"generation": generation, "got": self.got}


def test_run_targeted_signal_rejects_a_run_that_is_not_current(keel: KeelServer, api: RawApi) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-signal-runs")
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, workflows=[Renewing]) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.signals.renewing",
                    task_queue=task_queue,
                    workflow_id=unique("e2e-renewing"),
                    input=[0],
                )

                async def continued() -> str | None:
                    described = await client.describe_workflow(handle.workflow_id)
                    return described.run_id if described.run_id != handle.run_id else None

                current = await async_wait_until(continued, 30, "the continued run")
                response = await asyncio.to_thread(
                    api.control,
                    "POST",
                    f"/workflows/{handle.workflow_id}/runs/{handle.run_id}/signal/poke",
                    json={"input": ["old"]},
                )
                body = expect_error(response, 409, "historical_run_command_rejected")
                assert body["outcome"] == "rejected_not_current"
                assert body["current_run_id"] == current
                receipt = await client.signal_workflow(handle.workflow_id, "poke", args=["new"], run_id=current)
                assert receipt["run_id"] == current
                latest = client.get_workflow_handle(handle.workflow_id)
                [result] = await wait_for_results(client, [latest], worker=worker, timeout=60)
            assert result == {"generation": 1, "got": ["new"]}

    asyncio.run(scenario())
