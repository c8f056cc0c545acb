"""Keel driven by the real Python SDK, on the same workload and harness as the peers in
../shared/perf/peers (harness.py): one workflow = one durable invocation running exactly
one activity that returns its 32-byte input; N workflows with at most C in flight.

The worker runs in its own process (like Restate's Python endpoint in the peer runs);
the client starts each workflow and waits for its result with `get_result`, polling
every --result-poll seconds (the SDK default of 0.5 s would cap C=100 at 200 wf/s).

    KEEL_URL=http://127.0.0.1:8080 WATCH_PIDS=server=PID \\
      .venv/bin/python benches/peers/keel_sdk_bench.py --mode throughput -n 1000 --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
from pathlib import Path

from durable_workflow import Client, Worker, activity, workflow

PEERS = Path(os.environ.get("PEERS_HARNESS", Path(__file__).resolve().parents[3] / "shared" / "perf" / "peers"))
sys.path.insert(0, str(PEERS))
import harness  # noqa: E402  (the shared peer harness)

QUEUE = "keel-sdk-bench"


@activity.defn(name="bench.echo")
def echo(x: str) -> str:
    return x


@workflow.defn(name="bench.echo_wf")
class EchoWorkflow:
    def run(self, ctx, x):  # type: ignore[no-untyped-def]
        result = yield ctx.schedule_activity("bench.echo", [x], start_to_close_timeout=30)
        return result


def run_worker(url: str, slots: int) -> None:
    async def main() -> None:
        async with Client(url) as client:
            worker = Worker(client, task_queue=QUEUE, workflows=[EchoWorkflow], activities=[echo], poll_timeout=5.0,
                            max_concurrent_workflow_tasks=slots, max_concurrent_activity_tasks=slots)
            await worker.run()

    asyncio.run(main())


async def client_main(args: argparse.Namespace) -> None:
    async with Client(args.url, timeout=60) as client:
        async def one(wid: str, payload: str) -> str:
            handle = await client.start_workflow(workflow_type="bench.echo_wf", task_queue=QUEUE,
                                                 workflow_id=f"sdk-{wid}", input=[payload])
            return await client.get_result(handle, timeout=120, poll_interval=args.result_poll)

        await harness.drive(one, args, {"system": "keel", "durable": True, "result_poll_s": args.result_poll})


def main() -> None:
    parser = harness.common_args(argparse.ArgumentParser())
    parser.add_argument("--url", default=os.environ.get("KEEL_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--worker-slots", type=int, default=100)
    parser.add_argument("--result-poll", type=float, default=0.02)
    args = parser.parse_args()
    worker = multiprocessing.Process(target=run_worker, args=(args.url, args.worker_slots), daemon=True)
    worker.start()
    os.environ["WATCH_PIDS"] = ",".join(filter(None, [os.environ.get("WATCH_PIDS", ""), f"worker={worker.pid}"]))
    try:
        asyncio.run(client_main(args))
    finally:
        worker.terminate()
        worker.join(timeout=10)


if __name__ == "__main__":
    main()
