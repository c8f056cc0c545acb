"""``kill -9`` in a loop under SDK load (issue 17, part 6).

One ``keel serve`` on RocksDB is killed with SIGKILL again and again while the
real Python SDK keeps starting workflows (one activity each) and SDK workers in
separate processes (never restarted; every other one sticky) keep working
them; after each kill the server is restarted on the same data dir and port.
A start counts as acknowledged once the SDK returns its handle (a 2xx was
received). A start that failed because the server was down is retried with the
same workflow id and duplicate policy ``use-existing``, so a retry whose first
attempt had committed is the same workflow. After the last restart the test
waits (with a deadline) until every acknowledged workflow is closed, then
asserts that each completed exactly once on the run it was acknowledged with:
one ``WorkflowStarted``, one ``ActivityScheduled``, one ``ActivityCompleted``,
one ``WorkflowCompleted`` and the right result. Workflows still open at the
deadline are named with their status.

An activity body may run more than once (a crash can lose its completion, and
the lease then expires and hands it out again, which history does not record);
the workers' ledgers count those re-runs for the summary line.

The CI size runs in the normal suite. ``KEEL_KILL_LOOP=long`` runs the long
one instead (12 kills, 3,000 workflows); ``KEEL_KILL_LOOP_WORKFLOWS`` and
``KEEL_KILL_LOOP_KILLS`` override either size, and ``KEEL_KILL_LOOP_SEED``
repeats a run's random pauses and choice of immediate kills.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from durable_workflow import Client

from keel_harness import KeelServer, async_wait_until, unique
from sdk_load import Load, WorkerProcesses, paced_ids, exactly_once_problems, start_loop, wait_until_all_closed


@dataclass(frozen=True)
class Plan:
    workflows: int
    kills: int
    # Starts per second, paced so that the starts span every kill (a burst
    # would be over before the first one) and the workers keep up with them.
    start_rate: float
    # Concurrent start loops in the test process, and SDK worker processes.
    starters: int
    worker_processes: int
    # Leases lost with a crash are handed out again after this long.
    lease_seconds: int
    # After the last restart: how long every workflow has to close.
    completion_timeout: float
    # Longest random pause before a kill and before the restart that follows it.
    max_jitter: float
    # The share of kills that land as soon as the previous restart is healthy
    # (while clients and workers reconnect and held-up starts rush in).
    immediate_kill_share: float
    test_timeout: int


PLANS = {
    "ci": Plan(
        workflows=200, kills=3, start_rate=20, starters=8, worker_processes=2, lease_seconds=3,
        completion_timeout=90, max_jitter=1.0, immediate_kill_share=0.25, test_timeout=240,
    ),
    "long": Plan(
        workflows=3000, kills=12, start_rate=30, starters=16, worker_processes=2, lease_seconds=3,
        completion_timeout=600, max_jitter=3.0, immediate_kill_share=0.25, test_timeout=3600,
    ),
}


def chosen_plan() -> tuple[str, Plan]:
    mode = os.environ.get("KEEL_KILL_LOOP") or "ci"
    if mode not in PLANS:
        raise ValueError(f"KEEL_KILL_LOOP={mode!r}: expected one of {sorted(PLANS)}")
    plan = PLANS[mode]
    if os.environ.get("KEEL_KILL_LOOP_WORKFLOWS"):
        plan = replace(plan, workflows=int(os.environ["KEEL_KILL_LOOP_WORKFLOWS"]))
    if os.environ.get("KEEL_KILL_LOOP_KILLS"):
        plan = replace(plan, kills=int(os.environ["KEEL_KILL_LOOP_KILLS"]))
    assert plan.workflows > plan.kills >= 1, plan
    return mode, plan


MODE, PLAN = chosen_plan()
pytestmark = pytest.mark.timeout(PLAN.test_timeout)


# ── the test ─────────────────────────────────────────────────────────────


def test_kill9_loop_under_sdk_load_completes_every_acknowledged_workflow_once(
    keel_factory: Callable[..., KeelServer], tmp_path: Path
) -> None:
    plan = PLAN
    seed = int(os.environ.get("KEEL_KILL_LOOP_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    keel = keel_factory(workflow_task_lease_seconds=plan.lease_seconds, activity_task_lease_seconds=plan.lease_seconds)
    task_queue = unique("e2e-kill-loop")
    load = Load([f"{task_queue}-wf-{n:05d}" for n in range(plan.workflows)])
    workers = WorkerProcesses(tmp_path, [keel.url] * plan.worker_processes, task_queue)
    timeline: list[str] = []
    restart_seconds: list[float] = []
    began = time.monotonic()

    def note(event: str) -> None:
        timeline.append(f"{time.monotonic() - began:7.2f}s {event}")

    async def scenario() -> dict[str, Any]:
        next_id = paced_ids(load.workflow_ids, plan.start_rate)

        async with Client(keel.url) as client, httpx.AsyncClient(timeout=2.0) as probe:
            # Private attribute (as in sdk_smoke.py): count the answers to starts.
            async def count(response: httpx.Response) -> None:
                if response.request.method == "POST" and response.request.url.path == "/api/workflows":
                    load.statuses[response.status_code] += 1

            client._http.event_hooks["response"].append(count)
            starters = asyncio.gather(
                *(
                    start_loop(client, probe, keel.url, task_queue, next_id, load)
                    for _ in range(plan.starters)
                )
            )
            try:
                for kill in range(plan.kills):
                    # Kill k lands once (k+1)/(kills+1) of the starts are settled, after
                    # a random pause: under load, and with load still to come after it.
                    # Some land instead as soon as the previous restart is healthy.
                    threshold = (kill + 1) * plan.workflows // (plan.kills + 1)

                    def reached(threshold: int = threshold) -> bool:
                        if starters.done():
                            starters.result()  # a start loop's own error
                        return load.settled >= threshold

                    immediate = kill > 0 and rng.random() < plan.immediate_kill_share
                    if not immediate:
                        await async_wait_until(reached, 120, f"{threshold} settled starts before kill {kill + 1}")
                        await asyncio.sleep(rng.uniform(0, plan.max_jitter))
                    workers.check_alive()
                    keel.kill9()
                    note(f"kill {kill + 1}{' right after the restart' if immediate else ''} with {load.settled} starts settled")
                    await asyncio.sleep(rng.uniform(0, plan.max_jitter / 4))
                    restarted = time.monotonic()
                    await asyncio.to_thread(keel.start)
                    restart_seconds.append(time.monotonic() - restarted)
                    note(f"restart {kill + 1} healthy after {restart_seconds[-1]:.2f}s")
                await asyncio.wait_for(starters, timeout=300)
            finally:
                if not starters.done():
                    starters.cancel()
                    await asyncio.gather(starters, return_exceptions=True)
            note(f"all {load.settled} starts settled")
            closed = await wait_until_all_closed(client, load.workflow_ids, workers, plan.completion_timeout)
            note("every workflow closed")
            return closed

    try:
        try:
            closed = asyncio.run(scenario())
        except Exception as error:
            error.add_note(f"seed {seed}; timeline:\n" + "\n".join(timeline) + "\n" + workers.tail())
            raise
    finally:
        stop_problems = workers.stop()

    activity_runs = workers.activity_runs()

    async def check() -> list[str]:
        async with Client(keel.url) as client:
            return await exactly_once_problems(client, load, closed, activity_runs)

    problems = asyncio.run(check())
    reran = sum(1 for workflow_id in load.workflow_ids if activity_runs[workflow_id] > 1)
    summary = (
        f"kill loop ({MODE}, seed {seed}): {plan.workflows} workflows "
        f"({len(load.acknowledged)} acknowledged, {len(load.existing_unacknowledged)} committed with the answer lost), "
        f"{plan.kills} kills, restarts healthy in max {max(restart_seconds):.2f}s, "
        f"{load.retried_starts} starts retried, start answers {dict(sorted(load.statuses.items()))}, "
        f"{reran} activity bodies ran more than once, {time.monotonic() - began:.1f}s in all"
    )
    print(summary)
    print("\n".join(timeline))
    assert not problems, (
        f"{len(problems)} of {plan.workflows} workflows did not complete exactly once:\n"
        + "\n".join(problems) + f"\n{summary}"
    )
    assert not load.server_errors, "starts answered with a 5xx:\n" + "\n".join(load.server_errors[:50])
    assert not stop_problems, "\n".join(stop_problems) + "\n" + workers.tail()
