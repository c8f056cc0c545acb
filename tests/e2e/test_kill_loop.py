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
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from durable_workflow import Client
from durable_workflow.errors import ServerError, WorkflowAlreadyStarted, WorkflowNotFound

from keel_harness import E2E_TOKEN, KeelServer, async_wait_until, event_types, history_events, unique
from kill_loop_worker import WORKFLOW_TYPE, expected_result

WORKER_SCRIPT = Path(__file__).with_name("kill_loop_worker.py")
TERMINAL = {"completed", "failed", "terminated", "cancelled", "canceled", "timed_out"}
STUCK_HISTORIES_SHOWN = 20
# Stands for the description of a workflow the server does not know.
MISSING = None


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


# ── SDK worker processes ─────────────────────────────────────────────────


class WorkerProcesses:
    """The SDK workers, each a ``kill_loop_worker.py`` process that lives
    through every server restart; every other one uses sticky execution."""

    def __init__(self, directory: Path, url: str, task_queue: str, count: int) -> None:
        env = dict(os.environ)
        env.pop("DURABLE_WORKFLOW_AUTH_TOKEN", None)
        if E2E_TOKEN:
            env["DURABLE_WORKFLOW_AUTH_TOKEN"] = E2E_TOKEN
        self.logs = [directory / f"worker-{n}.log" for n in range(count)]
        self.ledgers = [directory / f"worker-{n}.ledger" for n in range(count)]
        self.procs: list[subprocess.Popen[bytes]] = []
        for n, (log_path, ledger) in enumerate(zip(self.logs, self.ledgers, strict=True)):
            sticky = ["--sticky-cache", "256"] if n % 2 else []
            with log_path.open("wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, str(WORKER_SCRIPT), "--url", url, "--task-queue", task_queue, "--ledger", str(ledger), *sticky],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
                )

    def tail(self, lines: int = 40) -> str:
        parts = []
        for log_path in self.logs:
            text = log_path.read_text(errors="replace") if log_path.exists() else "(no log)"
            parts.append(f"----- last {lines} lines of {log_path} -----\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)

    def check_alive(self) -> None:
        for n, proc in enumerate(self.procs):
            code = proc.poll()
            if code is not None:
                raise AssertionError(f"SDK worker process {n} exited with status {code}\n{self.tail()}")

    def stop(self) -> list[str]:
        """SIGTERM every worker (each stops and deregisters); problems as text."""
        problems = []
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for n, proc in enumerate(self.procs):
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                problems.append(f"SDK worker process {n} did not exit within 30s of SIGTERM")
                continue
            if code != 0:
                problems.append(f"SDK worker process {n} exited with status {code}")
        return problems

    def activity_runs(self) -> Counter[str]:
        runs: Counter[str] = Counter()
        for ledger in self.ledgers:
            if ledger.exists():
                runs.update(line for line in ledger.read_text().splitlines() if line)
        return runs


# ── the load ─────────────────────────────────────────────────────────────


@dataclass
class Load:
    """What the start loops saw. ``acknowledged`` maps a workflow id to the
    run id its start returned; ``existing_unacknowledged`` holds ids whose
    start committed but whose answer was lost, and whose workflow had closed
    by the time a retry asked again (``use-existing`` refuses a closed one)."""

    workflow_ids: list[str]
    acknowledged: dict[str, str] = field(default_factory=dict)
    existing_unacknowledged: set[str] = field(default_factory=set)
    retried_starts: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)

    @property
    def settled(self) -> int:
        return len(self.acknowledged) + len(self.existing_unacknowledged)


async def wait_for_health(probe: httpx.AsyncClient, url: str, timeout: float) -> None:
    async def serving() -> bool:
        try:
            response = await probe.get(f"{url}/api/health")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    await async_wait_until(serving, timeout, f"{url}/api/health to answer 200", interval=0.05)


async def start_loop(
    client: Client,
    probe: httpx.AsyncClient,
    url: str,
    task_queue: str,
    next_id: Callable[[], Awaitable[str | None]],
    load: Load,
) -> None:
    """Start workflows until none are left; each start is retried (same id,
    ``use-existing``) until the server answers it."""
    while (workflow_id := await next_id()) is not None:
        while True:
            try:
                handle = await client.start_workflow(
                    workflow_type=WORKFLOW_TYPE,
                    task_queue=task_queue,
                    workflow_id=workflow_id,
                    input=[workflow_id],
                    duplicate_policy="use-existing",
                )
            except WorkflowAlreadyStarted:
                # Ids are unique to this test, so the instance is ours: an earlier
                # attempt committed, its answer was lost, and it has closed since.
                load.existing_unacknowledged.add(workflow_id)
                break
            except (httpx.TransportError, ServerError) as error:
                if isinstance(error, ServerError):
                    if error.status is not None and error.status < 500:
                        raise
                    load.server_errors.append(f"start {workflow_id}: {error}")
                load.retried_starts += 1
                await wait_for_health(probe, url, timeout=60)
                continue
            assert handle.run_id, f"start of {workflow_id} was answered without a run_id"
            load.acknowledged[workflow_id] = handle.run_id
            break


# ── the check ────────────────────────────────────────────────────────────


async def gather_bounded(limit: int, calls: list[Callable[[], Any]]) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Any]) -> Any:
        async with semaphore:
            return await call()

    return await asyncio.gather(*(one(call) for call in calls))


async def wait_until_all_closed(
    client: Client, workflow_ids: list[str], workers: WorkerProcesses, timeout: float
) -> dict[str, Any]:
    """Describe the open workflows every half second until none is left. At
    the deadline, fail naming every open one with its status (and, for the
    first few, the event types of their history). A workflow the server does
    not know (its start was lost) maps to ``MISSING``."""
    open_ids = set(workflow_ids)
    latest: dict[str, Any] = {}
    deadline = time.monotonic() + timeout

    async def describe(workflow_id: str) -> Any:
        try:
            return await client.describe_workflow(workflow_id)
        except WorkflowNotFound:
            return MISSING

    while open_ids:
        batch = sorted(open_ids)
        descriptions = await gather_bounded(16, [lambda w=w: describe(w) for w in batch])
        for workflow_id, description in zip(batch, descriptions, strict=True):
            latest[workflow_id] = description
            if description is MISSING or description.status in TERMINAL:
                open_ids.discard(workflow_id)
        if not open_ids:
            break
        workers.check_alive()
        if time.monotonic() >= deadline:
            stuck = sorted(open_ids)
            shown = stuck[:STUCK_HISTORIES_SHOWN]
            histories = await gather_bounded(
                16, [lambda w=w: history_events(client, w, latest[w].run_id) for w in shown]
            )
            history_of = dict(zip(shown, histories, strict=True))
            listing = "\n".join(
                f"  {w} (run {latest[w].run_id}): {latest[w].status}"
                + (f", history {event_types(history_of[w])}" if w in history_of else "")
                for w in stuck
            )
            raise AssertionError(
                f"{len(stuck)} of {len(workflow_ids)} workflows still open {timeout:g}s after the last "
                f"restart:\n{listing}"
            )
        await asyncio.sleep(0.5)
    return latest


async def exactly_once_problems(
    client: Client, load: Load, closed: dict[str, Any], activity_runs: Counter[str]
) -> list[str]:
    problems = [
        f"{workflow_id}: not found, although its start was answered with run {load.acknowledged.get(workflow_id)}"
        for workflow_id, description in sorted(closed.items())
        if description is MISSING
    ]
    ids = sorted(w for w, description in closed.items() if description is not MISSING)
    histories = await gather_bounded(
        16, [lambda w=w: history_events(client, w, closed[w].run_id) for w in ids]
    )
    for workflow_id, events in zip(ids, histories, strict=True):
        description = closed[workflow_id]
        types = event_types(events)
        counts = {name: types.count(name) for name in ("WorkflowStarted", "ActivityScheduled", "ActivityCompleted", "WorkflowCompleted")}
        found = []
        if description.status != "completed":
            found.append(f"status {description.status}")
        acknowledged_run = load.acknowledged.get(workflow_id)
        if acknowledged_run is not None and description.run_id != acknowledged_run:
            found.append(f"acknowledged run {acknowledged_run}, but the current run is {description.run_id}")
        if any(count != 1 for count in counts.values()):
            found.append(f"event counts {counts}")
        if description.status == "completed" and description.output != expected_result(workflow_id):
            found.append(f"result {description.output!r}")
        if activity_runs[workflow_id] == 0:
            found.append("the activity body never ran in a worker")
        if found:
            problems.append(f"{workflow_id} (run {description.run_id}): {'; '.join(found)}\n    history: {types}")
    return problems


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
    workers = WorkerProcesses(tmp_path, keel.url, task_queue, plan.worker_processes)
    timeline: list[str] = []
    restart_seconds: list[float] = []
    began = time.monotonic()

    def note(event: str) -> None:
        timeline.append(f"{time.monotonic() - began:7.2f}s {event}")

    async def scenario() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        first_start = loop.time()
        issued = 0

        async def next_id() -> str | None:
            # The n-th start goes out no earlier than n / start_rate seconds in; ids
            # held up by an outage go out together once the server is back.
            nonlocal issued
            if issued >= len(load.workflow_ids):
                return None
            n = issued
            issued += 1
            await asyncio.sleep(max(0.0, first_start + n / plan.start_rate - loop.time()))
            return load.workflow_ids[n]

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
