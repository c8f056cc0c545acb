"""Crash safety: what keel acknowledged survives kill -9, and leased work that
was lost with a crash (or a vanished worker) is handed out again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from durable_workflow import Client, activity, workflow
from durable_workflow.workflow import ScheduleActivity

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

# ── workflows and activities (type names are unique to this module) ──────


@activity.defn(name="e2e.durability.greet")
def greet(name: str) -> str:
    return f"hello, {name}"


@workflow.defn(name="e2e.durability.greeter")
class Greeter:
    def run(self, ctx, name):  # type: ignore[no-untyped-def]
        greeting = yield ctx.schedule_activity("e2e.durability.greet", [name], start_to_close_timeout=30)
        return {"name": name, "greeting": greeting}


def greeter_result(name: str) -> dict[str, str]:
    return {"name": name, "greeting": f"hello, {name}"}


@activity.defn(name="e2e.durability.slow_greet")
def slow_greet(name: str) -> str:
    time.sleep(0.2)  # simulated work, so that a crash lands while workflows are in flight
    return f"hello, {name}"


@workflow.defn(name="e2e.durability.two_steps")
class TwoSteps:
    def run(self, ctx, name):  # type: ignore[no-untyped-def]
        first = yield ctx.schedule_activity("e2e.durability.slow_greet", [name], start_to_close_timeout=30)
        second = yield ctx.schedule_activity("e2e.durability.slow_greet", [first], start_to_close_timeout=30)
        return {"name": name, "greeting": second}


def two_steps_result(name: str) -> dict[str, str]:
    return {"name": name, "greeting": f"hello, hello, {name}"}


@dataclass(frozen=True)
class Started:
    name: str
    workflow_id: str
    run_id: str


async def start_greeters(client: Client, task_queue: str, workflow_type: str, names: list[str]) -> list[Started]:
    """Start one workflow per name; each start is acknowledged before the next."""
    started = []
    for name in names:
        handle = await client.start_workflow(
            workflow_type=workflow_type,
            task_queue=task_queue,
            workflow_id=unique(f"e2e-durable-{name}"),
            input=[name],
        )
        assert handle.run_id, f"start of {handle.workflow_id} returned no run_id"
        started.append(Started(name, handle.workflow_id, handle.run_id))
    return started


async def assert_each_completed_once(
    client: Client,
    started: list[Started],
    expected: Callable[[str], object],
    worker_options: dict[str, object],
    activities_per_workflow: int,
) -> None:
    """Run a fresh SDK worker until every workflow has its exact result, then
    check that each history has one completion and one completed activity per
    scheduled activity (no duplicated or lost steps)."""
    handles = [client.get_workflow_handle(s.workflow_id, run_id=s.run_id) for s in started]
    async with running_worker(client, **worker_options) as worker:  # type: ignore[arg-type]
        results = await wait_for_results(client, handles, worker=worker, timeout=90)

    for item, result in zip(started, results, strict=True):
        assert result == expected(item.name), f"{item.workflow_id}: got {result!r}"
    for item in started:
        description = await client.describe_workflow(item.workflow_id)
        assert (description.status, description.run_id) == ("completed", item.run_id), item
        types = event_types(await history_events(client, item.workflow_id, item.run_id))
        assert types.count("WorkflowCompleted") == 1, (item.workflow_id, types)
        assert types.count("ActivityScheduled") == activities_per_workflow, (item.workflow_id, types)
        assert types.count("ActivityCompleted") == activities_per_workflow, (item.workflow_id, types)


# ── tests ─────────────────────────────────────────────────────────────────


def test_acknowledged_starts_survive_kill9(keel: KeelServer) -> None:
    task_queue = unique("e2e-durable-starts")
    names = [f"w{i}" for i in range(20)]

    async def start_without_worker() -> list[Started]:
        async with Client(keel.url) as client:
            return await start_greeters(client, task_queue, "e2e.durability.greeter", names)

    started = asyncio.run(start_without_worker())

    keel.kill9()
    keel.restart()

    async def finish_after_restart() -> None:
        async with Client(keel.url) as client:
            for item in started:
                description = await client.describe_workflow(item.workflow_id)
                assert description.run_id == item.run_id, item
                assert description.status not in ("completed", "failed"), (item, description.status)
            await assert_each_completed_once(
                client,
                started,
                greeter_result,
                {"task_queue": task_queue, "workflows": [Greeter], "activities": [greet]},
                activities_per_workflow=1,
            )

    asyncio.run(finish_after_restart())


def test_leased_tasks_are_redelivered_after_restart(keel_factory: Callable[..., KeelServer]) -> None:
    keel = keel_factory(workflow_task_lease_seconds=2, activity_task_lease_seconds=2)
    task_queue = unique("e2e-durable-leases")
    names = [f"w{i}" for i in range(4)]

    async def start() -> list[Started]:
        async with Client(keel.url) as client:
            return await start_greeters(client, task_queue, "e2e.durability.greeter", names)

    started = asyncio.run(start())
    name_of = {item.workflow_id: item.name for item in started}

    # A raw worker takes work and vanishes without reporting anything:
    # one workflow task, and (for a second workflow) one activity task.
    with RawApi(keel.url) as api:
        raw_worker = unique("e2e-raw-worker")
        api.register_worker(
            raw_worker,
            task_queue,
            workflow_types=["e2e.durability.greeter"],
            activity_types=["e2e.durability.greet"],
        )
        abandoned_workflow_task = api.lease_workflow_task(raw_worker, task_queue)
        assert abandoned_workflow_task["workflow_id"] in name_of, abandoned_workflow_task
        assert abandoned_workflow_task.get("lease_owner", raw_worker) == raw_worker

        scheduling_task = api.lease_workflow_task(raw_worker, task_queue)
        assert scheduling_task["workflow_id"] in name_of, scheduling_task
        assert scheduling_task["workflow_id"] != abandoned_workflow_task["workflow_id"]
        # Exactly the command the SDK's Greeter yields first, so the real
        # worker can replay this history later.
        schedule = ScheduleActivity(
            "e2e.durability.greet",
            [name_of[scheduling_task["workflow_id"]]],
            start_to_close_timeout=30,
        ).to_server_command(task_queue)
        expect_status(api.complete_workflow_task(scheduling_task, [schedule]), 200, "complete with schedule_activity")

        abandoned_activity_task = api.lease_activity_task(raw_worker, task_queue)
        assert abandoned_activity_task["activity_type"] == "e2e.durability.greet", abandoned_activity_task
        assert abandoned_activity_task.get("workflow_id", scheduling_task["workflow_id"]) == scheduling_task["workflow_id"]
        assert api.server_errors() == []

    keel.kill9()
    keel.restart()

    async def finish_after_restart() -> None:
        async with Client(keel.url) as client:
            await assert_each_completed_once(
                client,
                started,
                greeter_result,
                {"task_queue": task_queue, "workflows": [Greeter], "activities": [greet]},
                activities_per_workflow=1,
            )

    asyncio.run(finish_after_restart())


def test_kill9_while_workers_run_loses_no_workflow(keel_factory: Callable[..., KeelServer]) -> None:
    keel = keel_factory(workflow_task_lease_seconds=3, activity_task_lease_seconds=3)
    task_queue = unique("e2e-durable-busy")
    names = [f"w{i}" for i in range(30)]
    worker_options: dict[str, object] = {
        "task_queue": task_queue,
        "workflows": [TwoSteps],
        "activities": [slow_greet],
    }

    async def run_until_crash() -> tuple[list[Started], int]:
        async with Client(keel.url) as client:
            # Two activity slots x 0.2 s x 60 activities: at least 6 s of work,
            # so the crash below lands with most workflows still in flight.
            async with running_worker(
                client, max_concurrent_activity_tasks=2, stop_must_succeed=False, **worker_options  # type: ignore[arg-type]
            ) as worker:
                started = await start_greeters(client, task_queue, "e2e.durability.two_steps", names)

                async def completed_count() -> int:
                    descriptions = await asyncio.gather(*(client.describe_workflow(s.workflow_id) for s in started))
                    return sum(d.status == "completed" for d in descriptions)

                async def three_or_more_completed() -> int:
                    count = await completed_count()
                    return count if count >= 3 else 0

                completed = await async_wait_until(
                    three_or_more_completed, 60, "3 workflows to complete before the crash"
                )
                keel.kill9()
                # The server is gone: stopping the worker cannot deregister it.
                await worker.abandon()
        return started, completed

    started, completed_before_crash = asyncio.run(run_until_crash())
    assert completed_before_crash < len(started), "every workflow finished before the crash; nothing was tested"

    keel.restart()

    async def finish_after_restart() -> None:
        async with Client(keel.url) as client:
            await assert_each_completed_once(
                client, started, two_steps_result, worker_options, activities_per_workflow=2
            )

    asyncio.run(finish_after_restart())

