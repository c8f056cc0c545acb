"""The SDK worker process of ``test_kill_loop.py`` (not a test module).

Runs one ``durable_workflow.Worker`` for the kill loop's workflow types until
SIGTERM, riding through every ``kill -9`` of the server on the SDK's own
poll backoff: the process is never restarted, so whatever state it holds
across a server crash is part of what the test exercises. Only when the SDK
itself gives up on a server still restarting (its request retries ran out,
an ``httpx.TransportError``) is a new ``Worker`` started in the same process,
as a supervisor would, with a line in the log.

Each run of the activity body appends the workflow id (the activity's
argument) to ``--ledger``, so the test can tell how often a body ran: at
least once per workflow, more often only where a crash lost a completion.

    python kill_loop_worker.py --url http://127.0.0.1:PORT --task-queue Q --ledger FILE [--sticky-cache N]

``--sticky-cache N`` keeps up to N workflow runs cached between their tasks
(sticky execution), so a crash also drops the server's sticky hints while the
worker still holds the runs.

``DURABLE_WORKFLOW_AUTH_TOKEN``, when set, is sent as the bearer token.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import httpx
from durable_workflow import Client, Worker, activity, workflow

WORKFLOW_TYPE = "e2e.kill_loop.greeter"
# The greeter with a durable timer first (NAP_SECONDS), for timer-firing checks.
NAPPING_WORKFLOW_TYPE = "e2e.kill_loop.napping_greeter"
NAP_SECONDS = 2
ACTIVITY_TYPE = "e2e.kill_loop.greet"

_ledger: Path | None = None


@activity.defn(name=ACTIVITY_TYPE)
def greet(workflow_id: str) -> str:
    if _ledger is not None:
        # One short write per line on an O_APPEND file: lines never interleave.
        with _ledger.open("a") as ledger:
            ledger.write(workflow_id + "\n")
    return f"hello, {workflow_id}"


@workflow.defn(name=WORKFLOW_TYPE)
class KillLoopGreeter:
    def run(self, ctx, workflow_id):  # type: ignore[no-untyped-def]
        greeting = yield ctx.schedule_activity(ACTIVITY_TYPE, [workflow_id], start_to_close_timeout=120)
        return {"greeting": greeting}


@workflow.defn(name=NAPPING_WORKFLOW_TYPE)
class NappingGreeter:
    def run(self, ctx, workflow_id):  # type: ignore[no-untyped-def]
        yield ctx.sleep(NAP_SECONDS)
        greeting = yield ctx.schedule_activity(ACTIVITY_TYPE, [workflow_id], start_to_close_timeout=120)
        return {"greeting": greeting}


def expected_result(workflow_id: str) -> dict[str, str]:
    return {"greeting": f"hello, {workflow_id}"}


async def serve(url: str, task_queue: str, sticky_cache: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    token = os.environ.get("DURABLE_WORKFLOW_AUTH_TOKEN") or None
    async with Client(url, token=token) as client:
        stopping = asyncio.create_task(stop.wait())
        while True:
            worker = Worker(
                client,
                task_queue=task_queue,
                workflows=[KillLoopGreeter, NappingGreeter],
                activities=[greet],
                poll_timeout=5.0,
                shutdown_timeout=10.0,
                sticky_cache_capacity=sticky_cache,
            )
            run = asyncio.create_task(worker.run())
            await asyncio.wait({run, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not run.done():
                break
            error = run.exception()
            if isinstance(error, httpx.TransportError):
                # The SDK gave up reaching a server that was still restarting (its
                # request retries ran out): a supervisor would start the worker again,
                # so this process does, and says so in its log.
                print(f"worker restarted after the SDK gave up: {error!r}", file=sys.stderr, flush=True)
                await asyncio.sleep(0.5)
                continue
            # Any other end of the worker is a failure the test reports.
            run.result()
            raise RuntimeError("worker.run() returned before SIGTERM")
        await worker.stop()
        await asyncio.gather(run, return_exceptions=True)


def main() -> int:
    global _ledger
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--ledger", required=True, type=Path)
    parser.add_argument("--sticky-cache", type=int, default=0)
    args = parser.parse_args()
    _ledger = args.ledger
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.url, args.task_queue, args.sticky_cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
