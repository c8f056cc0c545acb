"""A workflow that receives many signals (default 5,000) through the real Python SDK:
measures the server CPU and the history bytes sent to the worker per workflow task as
history grows, with and without sticky execution.

    KEEL_BIN=target/release/keel .venv/bin/python benches/scripts/signals_bench.py [--signals 5000] [--sticky 0|1]

Prints one line per 1,000 signals: history length, server CPU ms per workflow task, and
bytes of workflow-task poll + history responses per task over that stretch.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from durable_workflow import Client, Worker, workflow

REPO = Path(__file__).resolve().parents[2]


@workflow.defn(name="bench.signals.counter")
class SignalCounter:
    def __init__(self) -> None:
        self.count = 0

    @workflow.signal("tick")
    def tick(self) -> None:
        self.count += 1

    def run(self, ctx, total):  # type: ignore[no-untyped-def]
        yield ctx.wait_condition(lambda: self.count >= total, key="ticks")
        return self.count


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main(signals: int, sticky: bool) -> None:
    binary = os.environ.get("KEEL_BIN", str(REPO / "target" / "release" / "keel"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as data:
        proc = subprocess.Popen([binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            stats = {"tasks": 0, "bytes": 0}

            async def count(response):  # type: ignore[no-untyped-def]
                path = response.request.url.path
                if path.endswith("/workflow-tasks/poll") or path.endswith("/history"):
                    await response.aread()
                    stats["bytes"] += len(response.content)
                    if path.endswith("/poll") and b'"task":{' in response.content:
                        stats["tasks"] += 1

            for _ in range(300):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            async with Client(url) as client, Client(url) as worker_client:
                worker_client._http.event_hooks["response"].append(count)
                worker = Worker(worker_client, task_queue="bench-signals", workflows=[SignalCounter],
                                poll_timeout=5.0, sticky_cache_capacity=16 if sticky else 0)
                run = asyncio.create_task(worker.run())
                handle = await client.start_workflow(workflow_type="bench.signals.counter", task_queue="bench-signals",
                                                     workflow_id=f"signals-{os.getpid()}", input=[signals])
                mark = (time.monotonic(), cpu_seconds(proc.pid), 0, 0)
                print(f"sticky={sticky} signals={signals}")
                for i in range(1, signals + 1):
                    await client.signal_workflow(handle.workflow_id, "tick")
                    if i % 1000 == 0:
                        _, cpu0, tasks0, bytes0 = mark
                        tasks = stats["tasks"] - tasks0
                        print(f"  after {i:5d} signals: {(cpu_seconds(proc.pid) - cpu0) * 1e3 / max(tasks, 1):7.2f} ms server CPU/task, "
                              f"{(stats['bytes'] - bytes0) / max(tasks, 1):9.0f} bytes/task over {tasks} tasks")
                        mark = (time.monotonic(), cpu_seconds(proc.pid), stats["tasks"], stats["bytes"])
                result = await client.get_result(handle, timeout=600)
                print(f"  result: {result}")
                await worker.stop()
                run.cancel()
        finally:
            proc.terminate()
            proc.wait(timeout=20)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--signals", type=int, default=5000)
    parser.add_argument("--sticky", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(main(args.signals, bool(args.sticky)))
