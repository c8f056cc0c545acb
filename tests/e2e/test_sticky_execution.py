"""Sticky execution: a worker that caches histories gets only the tail after its cached
prefix on later tasks of a run, and the workflow still completes correctly."""

from __future__ import annotations

import asyncio

from durable_workflow import Client, activity, workflow

from keel_harness import KeelServer, running_worker, unique, wait_for_results

STEPS = 6


@activity.defn(name="e2e.sticky.add")
def add(a: int, b: int) -> int:
    return a + b


@workflow.defn(name="e2e.sticky.counter")
class Counter:
    def run(self, ctx, start):  # type: ignore[no-untyped-def]
        total = start
        for i in range(STEPS):
            total = yield ctx.schedule_activity("e2e.sticky.add", [total, i], start_to_close_timeout=30)
        return total


def test_a_sticky_worker_gets_cache_hits_and_the_workflow_completes(keel: KeelServer) -> None:
    async def scenario() -> None:
        queue = unique("sticky")
        async with Client(keel.url) as client:
            async with running_worker(
                client, task_queue=queue, workflows=[Counter], activities=[add], sticky_cache_capacity=16
            ) as run:
                handle = await client.start_workflow(
                    workflow_type="e2e.sticky.counter", task_queue=queue, workflow_id=unique("sticky-wf"), input=[100]
                )
                [result] = await wait_for_results(client, [handle], worker=run)
                assert result == 100 + sum(range(STEPS))
                metrics = run.worker.sticky_cache_metrics()
                # Every workflow task after the first found its history in the cache.
                assert metrics["hit"] >= STEPS - 1, metrics

    asyncio.run(scenario())
