"""Three ``keel serve`` processes on one FoundationDB subspace act as one server
(issue 13, part 3), through a ``kill -9`` of one of them under SDK load.

The SDK client starts workflows (a durable timer, then one activity) through node
"front"; SDK worker processes poll the two other nodes, one of them the node that fires
timers. That node is killed with SIGKILL mid-load: another node must take over timer
firing, the leases the dead node handed out must be redelivered, and every
acknowledged workflow must complete exactly once on its acknowledged run: one
``TimerScheduled`` and one ``TimerFired`` (a timer fires once across the cluster), one
``ActivityScheduled``/``ActivityCompleted``, one ``WorkflowCompleted``, the right
result. The killed node is then restarted (same node id and subspace) so its worker
reconnects.

Runs only with ``KEEL_E2E_STORAGE=fdb:CLUSTER_FILE`` (several processes share one store
only on FoundationDB); otherwise skipped with the reason. The same mechanisms are
tested in process on the shared simulated store (engine/tests/suite/cluster.rs,
http/tests/suite/multi_node.rs) in every run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from durable_workflow import Client

from keel_harness import ON_FDB, KeelServer, RawApi, async_wait_until, expect_status, unique, wait_until
from kill_loop_worker import NAPPING_WORKFLOW_TYPE
from sdk_load import ONCE_EVENTS, Load, WorkerProcesses, paced_ids, exactly_once_problems, start_loop, wait_until_all_closed

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not ON_FDB,
        reason="multi-node test skipped: several keel processes share one store only on "
        "FoundationDB (set KEEL_E2E_STORAGE=fdb:CLUSTER_FILE)",
    ),
]

WORKFLOWS = 120
START_RATE = 30.0
STARTERS = 4
LEASE_SECONDS = 3
# The scheduler lease is valid 10 s; a survivor must hold it well within this.
TAKEOVER_DEADLINE = 30.0
COMPLETION_TIMEOUT = 120.0


def live_nodes(server: KeelServer) -> list[dict[str, Any]]:
    with RawApi(server.url) as api:
        response = api.control("GET", "/cluster/info")
        expect_status(response, 200, "GET /api/cluster/info")
        nodes = response.json()["topology"]["nodes"]
    assert isinstance(nodes, list), f"topology.nodes is not a list: {nodes!r}"
    return nodes


def timer_holder(server: KeelServer, among: set[str]) -> str | None:
    """The node id firing timers, if it is one of ``among`` and every node of ``among``
    is listed alive."""
    nodes = live_nodes(server)
    if not among <= {n["node_id"] for n in nodes}:
        return None
    holders = [n["node_id"] for n in nodes if n.get("fires_timers")]
    assert len(holders) <= 1, f"more than one node fires timers: {nodes}"
    return holders[0] if holders and holders[0] in among else None


def test_three_nodes_on_one_subspace_complete_every_workflow_once_through_a_kill9(
    keel_factory: Callable[..., KeelServer], tmp_path: Path
) -> None:
    leases = {"workflow_task_lease_seconds": LEASE_SECONDS, "activity_task_lease_seconds": LEASE_SECONDS}
    first = keel_factory(**leases, extra_args=["--node-id", "node-1"])
    nodes = {"node-1": first}
    for node_id in ("node-2", "node-3"):
        nodes[node_id] = keel_factory(**leases, extra_args=["--node-id", node_id], fdb_subspace=first.fdb_subspace)
    ids = set(nodes)
    holder = wait_until(lambda: timer_holder(first, ids), 30, "three live nodes, one of them firing timers")

    # The victim fires timers and serves one worker; the front takes the starts.
    victim = nodes[holder]
    others = [server for node_id, server in sorted(nodes.items()) if node_id != holder]
    front, worker_node = others
    task_queue = unique("e2e-multi-node")
    load = Load([f"{task_queue}-wf-{n:04d}" for n in range(WORKFLOWS)])
    workers = WorkerProcesses(tmp_path, [worker_node.url, victim.url], task_queue)
    timeline: list[str] = []
    began = time.monotonic()

    def note(event: str) -> None:
        timeline.append(f"{time.monotonic() - began:7.2f}s {event}")

    async def scenario() -> dict[str, Any]:
        next_id = paced_ids(load.workflow_ids, START_RATE)

        async with Client(front.url) as client, httpx.AsyncClient(timeout=2.0) as probe:
            starters = asyncio.gather(
                *(
                    start_loop(client, probe, front.url, task_queue, next_id, load, NAPPING_WORKFLOW_TYPE)
                    for _ in range(STARTERS)
                )
            )
            try:
                await async_wait_until(lambda: load.settled >= WORKFLOWS // 3, 60, "a third of the starts settled")
                workers.check_alive()
                victim.kill9()
                note(f"killed {holder} (the timer holder) with {load.settled} starts settled")
                new_holder = await async_wait_until(
                    lambda: asyncio.to_thread(timer_holder, front, ids - {holder}),
                    TAKEOVER_DEADLINE,
                    f"a surviving node to fire timers after {holder} died",
                    interval=0.25,
                )
                note(f"{new_holder} fires timers")
                await asyncio.to_thread(victim.start)
                note(f"restarted {holder}")
                await asyncio.wait_for(starters, timeout=120)
            finally:
                if not starters.done():
                    starters.cancel()
                    await asyncio.gather(starters, return_exceptions=True)
            note(f"all {load.settled} starts settled")
            closed = await wait_until_all_closed(client, load.workflow_ids, workers, COMPLETION_TIMEOUT)
            note("every workflow closed")
            return closed

    try:
        try:
            closed = asyncio.run(scenario())
        except Exception as error:
            error.add_note("timeline:\n" + "\n".join(timeline) + "\n" + workers.tail())
            raise
    finally:
        stop_problems = workers.stop()

    async def check() -> list[str]:
        # Read back through the worker-facing node: every node serves every read.
        async with Client(worker_node.url) as client:
            return await exactly_once_problems(
                client, load, closed, workers.activity_runs(), (*ONCE_EVENTS, "TimerScheduled", "TimerFired")
            )

    problems = asyncio.run(check())
    print("\n".join(timeline))
    assert not problems, f"{len(problems)} of {WORKFLOWS} workflows did not complete exactly once:\n" + "\n".join(problems)
    assert not load.server_errors, "starts answered with a 5xx:\n" + "\n".join(load.server_errors[:50])
    assert not stop_problems, "\n".join(stop_problems) + "\n" + workers.tail()
    # The restarted node is alive again beside the others.
    wait_until(lambda: timer_holder(front, ids) is not None, 30, "all three nodes listed alive again")
