"""Measures the server CPU that parked long-polls cost while idle.

Starts `keel serve` on a temporary data dir, registers a worker, parks N workflow-task
polls (timeout 60 s, nothing to deliver), then samples the server's CPU time (utime +
stime from /proc) over a window while they stay parked. Prints CPU seconds per wall
second (1.0 = one core busy) for the idle server and with the polls parked.

    .venv/bin/python benches/scripts/idle_polls.py [--polls 500] [--window 10]
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

import httpx

REPO = Path(__file__).resolve().parents[2]
HEADERS = {"X-Durable-Workflow-Protocol-Version": "1.20", "X-Namespace": "default"}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


async def sample(pid: int, window: float) -> float:
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(window)
    return (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


async def main(polls: int, window: float) -> None:
    binary = os.environ.get("KEEL_BIN", str(REPO / "target" / "release" / "keel"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as data:
        proc = subprocess.Popen(
            [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}/api"
            limits = httpx.Limits(max_connections=polls + 10)
            async with httpx.AsyncClient(base_url=base, timeout=90, limits=limits) as http:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        if (await http.get("/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        raise SystemExit("keel did not start")
                    await asyncio.sleep(0.05)
                r = await http.post("/worker/register", headers=HEADERS, json={"worker_id": "idle", "task_queue": "idle-q"})
                r.raise_for_status()
                idle = await sample(proc.pid, window)
                body = {"worker_id": "idle", "task_queue": "idle-q", "timeout_seconds": 60}
                parked = [asyncio.create_task(http.post("/worker/workflow-tasks/poll", headers=HEADERS, json=body)) for _ in range(polls)]
                await asyncio.sleep(2)  # let every poll reach the server and park
                busy = await sample(proc.pid, window)
                for t in parked:
                    t.cancel()
                await asyncio.gather(*parked, return_exceptions=True)
            print(f"idle server: {idle * 1000:.2f} ms CPU per second")
            print(f"{polls} parked polls: {busy * 1000:.2f} ms CPU per second")
        finally:
            proc.terminate()
            proc.wait(timeout=20)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--polls", type=int, default=500)
    parser.add_argument("--window", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(main(args.polls, args.window))
