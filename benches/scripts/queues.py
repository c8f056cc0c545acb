"""Cost with many task queues (issue #18 §2): keel-bench beside 1,000 other queues.

Starts two `keel serve` (release) on fresh RocksDB data dirs. On the second it sets up
`--queues` other task queues: half hold a backlog of `--backlog` ready workflow tasks each
(workflows started, no worker takes them), the other half each have one workflow-task
long-poll parked on them (re-parked whenever one times out). Then it runs `keel bench`
against the two servers alternately, `--reps` times each, and prints the medians: wf/s,
p50 / p99 and server CPU per workflow. Per-workflow cost does not depend on how many
queues exist when the two rows agree within noise.

    .venv/bin/python benches/scripts/queues.py [--queues 1000] [--backlog 10] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
CONTROL = {"X-Durable-Workflow-Control-Plane-Version": "2", "X-Namespace": "default"}
WORKER = {"X-Durable-Workflow-Protocol-Version": "1.20", "X-Namespace": "default"}
INPUT = {"codec": "avro", "blob": "wwHioz3/VYAiNwwCCgp3b3JsZAA="}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(keel: str, data: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [keel, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, port
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("keel serve did not start")
            time.sleep(0.1)


async def populate(port: int, queues: int, backlog: int, stop: asyncio.Event) -> None:
    """Backlogged queues, then parked polls on the others until `stop` is set."""
    limits = httpx.Limits(max_connections=queues + 20)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/api", timeout=90, limits=limits) as http:
        sem = asyncio.Semaphore(32)

        async def start(queue: str, n: int) -> None:
            async with sem:
                body = {"workflow_id": f"{queue}-{n}", "workflow_type": "idle", "task_queue": queue, "input": INPUT}
                (await http.post("/workflows", headers=CONTROL, json=body)).raise_for_status()

        await asyncio.gather(*(start(f"backlog-{q}", n) for q in range(queues // 2) for n in range(backlog)))

        async def park(queue: str) -> None:
            async with sem:
                body = {"worker_id": f"w-{queue}", "task_queue": queue}
                (await http.post("/worker/register", headers=WORKER, json=body)).raise_for_status()
            body = {"worker_id": f"w-{queue}", "task_queue": queue, "timeout_seconds": 30}
            while not stop.is_set():
                r = await http.post("/worker/workflow-tasks/poll", headers=WORKER, json=body)
                r.raise_for_status()

        parked = [asyncio.create_task(park(f"parked-{q}")) for q in range(queues - queues // 2)]
        await stop.wait()
        for task in parked:
            task.cancel()
        await asyncio.gather(*parked, return_exceptions=True)


def bench(keel: str, port: int, pid: int, workflows: int, concurrency: int) -> dict:
    out = subprocess.run(
        [keel, "bench", "--url", f"http://127.0.0.1:{port}", "--workflows", str(workflows),
         "--concurrency", str(concurrency), "--server-pid", str(pid), "--json", "--quiet", "--no-verify"],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keel", default=str(REPO / "target/release/keel"))
    ap.add_argument("--queues", type=int, default=1000)
    ap.add_argument("--backlog", type=int, default=10, help="ready workflow tasks per backlogged queue")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workflows", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=200)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="keel-queues-") as tmp:
        plain, plain_port = serve(args.keel, f"{tmp}/plain")
        busy, busy_port = serve(args.keel, f"{tmp}/busy")
        stop = asyncio.Event()
        others = asyncio.create_task(populate(busy_port, args.queues, args.backlog, stop))
        try:
            # Wait until the backlog is written and the polls are parked (the server's
            # parked-poll gauge).
            deadline = time.monotonic() + 120
            want = args.queues - args.queues // 2
            async with httpx.AsyncClient() as http:
                while True:
                    text = (await http.get(f"http://127.0.0.1:{busy_port}/metrics")).text
                    parked = sum(
                        float(line.rsplit(" ", 1)[1])
                        for line in text.splitlines()
                        if line.startswith("keel_parked_polls")
                    )
                    if parked >= want:
                        break
                    if others.done():
                        others.result()
                    if time.monotonic() > deadline:
                        raise SystemExit(f"only {parked:.0f} of {want} polls parked")
                    await asyncio.sleep(0.5)
            results: dict[str, list[dict]] = {"plain": [], "busy": []}
            for _ in range(args.reps):
                for name, port, proc in (("plain", plain_port, plain), ("busy", busy_port, busy)):
                    r = await asyncio.to_thread(bench, args.keel, port, proc.pid, args.workflows, args.concurrency)
                    results[name].append(r)
            label = {
                "plain": "no other queues",
                "busy": f"{args.queues:,} other queues ({args.queues // 2 * args.backlog:,} ready tasks, {want:,} parked polls)",
            }
            print("| server | wf/s | p50 / p99 ms | server CPU ms/wf |")
            print("|---|---|---|---|")
            for name, runs in results.items():
                med = lambda f: statistics.median(f(r) for r in runs)  # noqa: E731
                print(
                    f"| {label[name]} | {med(lambda r: r['throughput']['workflows_per_second']):.0f} "
                    f"| {med(lambda r: r['latency_ms']['p50']):.0f} / {med(lambda r: r['latency_ms']['p99']):.0f} "
                    f"| {med(lambda r: r['server']['cpu_ms_per_workflow']):.3f} |"
                )
        finally:
            stop.set()
            others.cancel()
            for proc in (plain, busy):
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    asyncio.run(main())
