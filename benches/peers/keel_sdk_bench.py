"""Keel driven by the real Python SDK (durable-workflow 2.12.0), on the same workload and harness as
the peers in ../shared/perf/peers (harness.py): one workflow = one durable invocation running exactly
one activity that returns its 32-byte input; N workflows with at most C in flight.

Two processes, like Restate's SDK endpoint + client and Temporal's worker + client in the peer runs,
so the harness reports their CPU separately (WATCH_PIDS=server=PID,worker=PID; the client is added by
the harness itself):

    python keel_sdk_bench.py worker --url http://127.0.0.1:8380 &
    WATCH_PIDS=server=$SRV,worker=$! python keel_sdk_bench.py client --url http://127.0.0.1:8380 \\
        --mode throughput -n 1000 -c 100 --warmup 200 --reps 1 --label keel-fsync

`run_keel.sh` does exactly this. The client starts each workflow with `Client.start_workflow` and
waits with `Client.get_result(poll_interval=--result-poll)`, which calls `describe_workflow` every
interval and `get_history` once the run is closed (only public SDK calls, no raw HTTP). Each SDK call
costs the client ~1-2 ms of CPU, so a short interval makes the Python client the bottleneck and a long
one caps throughput at about C / (latency + interval / 2). `--result-delay` sleeps once before the
first describe (saves the describe that would find the run still open).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from durable_workflow import Client, Worker, activity, workflow

PEERS_HARNESS = Path(os.environ.get("PEERS_HARNESS", Path(__file__).resolve().parents[3] / "shared" / "perf" / "peers"))
sys.path.insert(0, str(PEERS_HARNESS))
import harness  # noqa: E402  (the shared peer harness, used unchanged)

QUEUE = "keel-sdk-bench"
DEFAULT_URL = os.environ.get("KEEL_URL", "http://127.0.0.1:8380")
# Chosen by measurement (benches/README-peers.md, "Result-poll interval"): highest SDK throughput at C=100.
DEFAULT_RESULT_POLL = 0.2


@activity.defn(name="bench.echo")
def echo(x: str) -> str:
    return x


@workflow.defn(name="bench.echo_wf")
class EchoWorkflow:
    def run(self, ctx, x):  # type: ignore[no-untyped-def]
        result = yield ctx.schedule_activity("bench.echo", [x], start_to_close_timeout=30)
        return result


@workflow.defn(name="bench.echo_local_wf")
class EchoLocalWorkflow:
    """The same step as a local activity: run inside the workflow task and recorded with its
    result, like Restate's `ctx.run` step (no activity task, no second poll)."""

    def run(self, ctx, x):  # type: ignore[no-untyped-def]
        result = yield ctx.local_activity("bench.echo", [x], start_to_close_timeout=30)
        return result


WORKFLOW_TYPES = {"activity": "bench.echo_wf", "local": "bench.echo_local_wf"}


async def worker_main(args: argparse.Namespace) -> None:
    async with Client(args.url) as client:
        worker = Worker(client, task_queue=QUEUE, workflows=[EchoWorkflow, EchoLocalWorkflow], activities=[echo],
                        poll_timeout=args.poll_timeout, max_concurrent_workflow_tasks=args.slots,
                        max_concurrent_activity_tasks=args.slots)
        print(f"worker ready (pid {os.getpid()}, queue {QUEUE}, {args.slots} slots)", flush=True)
        await worker.run()


async def client_main(args: argparse.Namespace) -> None:
    async with Client(args.url, timeout=60) as client:
        async def one(wid: str, payload: str) -> str:
            handle = await client.start_workflow(workflow_type=WORKFLOW_TYPES[args.step], task_queue=QUEUE,
                                                 workflow_id=f"sdk-{wid}", input=[payload])
            if args.result_delay:
                await asyncio.sleep(args.result_delay)
            return await client.get_result(handle, timeout=120, poll_interval=args.result_poll)

        # One untimed round trip first: the worker process may still be registering.
        t0 = time.monotonic()
        while True:
            try:
                await asyncio.wait_for(one(f"ping-{os.getpid()}-{time.time_ns()}", "ping"), 30)
                break
            except Exception as e:  # noqa: BLE001 - keep trying for a while, then give up loudly
                if time.monotonic() - t0 > 60:
                    raise SystemExit(f"keel_sdk_bench: no round trip through the worker in 60 s: {e!r}")
                await asyncio.sleep(0.5)
        meta = {"system": "keel", "driver": "python-sdk", "durable": True, "durable_mode": args.durable_mode,
                "result_poll_s": args.result_poll, "result_delay_s": args.result_delay, "step": args.step}
        await harness.drive(one, args, meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="role", required=True)
    w = sub.add_parser("worker", help="the SDK worker (workflow + activity), its own process")
    w.add_argument("--url", default=DEFAULT_URL)
    w.add_argument("--slots", type=int, default=100, help="max concurrent workflow and activity tasks")
    w.add_argument("--poll-timeout", type=float, default=5.0)
    c = harness.common_args(sub.add_parser("client", help="the harness client (start + get_result)"))
    c.add_argument("--url", default=DEFAULT_URL)
    c.add_argument("--result-poll", type=float, default=DEFAULT_RESULT_POLL,
                   help=f"get_result poll_interval in seconds (default {DEFAULT_RESULT_POLL})")
    c.add_argument("--result-delay", type=float, default=0.0,
                   help="sleep this long after start_workflow before the first describe (default 0)")
    c.add_argument("--durable-mode", default="fsync", help="stored in every result line")
    c.add_argument("--step", choices=sorted(WORKFLOW_TYPES), default="activity",
                   help="the workflow's one step: an activity task (default) or a local activity")
    args = parser.parse_args()
    asyncio.run(worker_main(args) if args.role == "worker" else client_main(args))


if __name__ == "__main__":
    main()
