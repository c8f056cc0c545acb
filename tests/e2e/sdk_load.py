"""SDK load with crashes, shared by ``test_kill_loop.py`` and ``test_multi_node.py``
(not a test module): SDK worker processes (``kill_loop_worker.py``) that ride through
server crashes, start loops that retry a start until the server answers it, and the
exactly-once check of every acknowledged workflow's history.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from durable_workflow import Client
from durable_workflow.errors import ServerError, WorkflowAlreadyStarted, WorkflowNotFound

from keel_harness import E2E_TOKEN, async_wait_until, event_types, history_events
from kill_loop_worker import WORKFLOW_TYPE, expected_result

WORKER_SCRIPT = Path(__file__).with_name("kill_loop_worker.py")
TERMINAL = {"completed", "failed", "terminated", "cancelled", "canceled", "timed_out"}
STUCK_HISTORIES_SHOWN = 20
# Stands for the description of a workflow the server does not know.
MISSING = None


# ── SDK worker processes ─────────────────────────────────────────────────


class WorkerProcesses:
    """The SDK workers, each a ``kill_loop_worker.py`` process that lives
    through every server restart; every other one uses sticky execution."""

    def __init__(self, directory: Path, urls: Sequence[str], task_queue: str) -> None:
        """One worker process per entry of ``urls``, polling that server."""
        env = dict(os.environ)
        env.pop("DURABLE_WORKFLOW_AUTH_TOKEN", None)
        if E2E_TOKEN:
            env["DURABLE_WORKFLOW_AUTH_TOKEN"] = E2E_TOKEN
        self.logs = [directory / f"worker-{n}.log" for n in range(len(urls))]
        self.ledgers = [directory / f"worker-{n}.ledger" for n in range(len(urls))]
        self.procs: list[subprocess.Popen[bytes]] = []
        for n, (url, log_path, ledger) in enumerate(zip(urls, self.logs, self.ledgers, strict=True)):
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


def paced_ids(workflow_ids: Sequence[str], rate: float) -> Callable[[], Awaitable[str | None]]:
    """Hands out ``workflow_ids`` in order to concurrent start loops: the n-th no earlier
    than n / ``rate`` seconds after the first call (so the starts span the test, not one
    burst); ids held up by an outage go out together once the server is back. None when
    all are out."""
    first: float | None = None
    issued = 0

    async def next_id() -> str | None:
        nonlocal first, issued
        loop = asyncio.get_running_loop()
        if first is None:
            first = loop.time()
        if issued >= len(workflow_ids):
            return None
        n = issued
        issued += 1
        await asyncio.sleep(max(0.0, first + n / rate - loop.time()))
        return workflow_ids[n]

    return next_id


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
    workflow_type: str = WORKFLOW_TYPE,
) -> None:
    """Start workflows until none are left; each start is retried (same id,
    ``use-existing``) until the server answers it."""
    while (workflow_id := await next_id()) is not None:
        while True:
            try:
                handle = await client.start_workflow(
                    workflow_type=workflow_type,
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


ONCE_EVENTS = ("WorkflowStarted", "ActivityScheduled", "ActivityCompleted", "WorkflowCompleted")


async def exactly_once_problems(
    client: Client,
    load: Load,
    closed: dict[str, Any],
    activity_runs: Counter[str],
    once_events: Sequence[str] = ONCE_EVENTS,
) -> list[str]:
    """Every workflow completed on its acknowledged run with the right result, each of
    ``once_events`` exactly once in its history, and its activity body ran."""
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
        counts = {name: types.count(name) for name in once_events}
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
