"""Cost as the work grows: keel-bench rounds against one store that keeps every workflow.

Starts `keel serve` (release) on a fresh RocksDB data dir, then repeats: one `keel bench`
round of STEP one-activity workflows (their runs stay stored), and after it, with the
server otherwise idle, the latency of `describe` on stored workflows and of the first
page of `GET /api/workflows`. Prints one markdown row per round: workflows stored, the
round's wf/s, p50/p99, server CPU per workflow and RSS, RocksDB's block cache and
table-reader memory (from `/metrics`), describe p50/p99, list p50.
Per-workflow cost is flat when the CPU column does not grow with the stored count.

    python3 benches/scripts/scale.py [--target 100000] [--step 10000] [--concurrency 200]
    python3 benches/scripts/scale.py --target 1000000      # the opt-in million (~20 min)
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEADERS = {"X-Durable-Workflow-Control-Plane-Version": "2", "X-Namespace": "default"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(conn: http.client.HTTPConnection, path: str) -> tuple[float, dict]:
    started = time.perf_counter()
    conn.request("GET", path, headers=HEADERS)
    resp = conn.getresponse()
    body = resp.read()
    elapsed = time.perf_counter() - started
    if resp.status != 200:
        raise RuntimeError(f"GET {path}: {resp.status} {body[:200]!r}")
    return elapsed, json.loads(body)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sample_reads(port: int, ids: list[str], samples: int) -> tuple[float, float, float]:
    """Describe p50/p99 and list-page p50, in ms, over one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    describes = [get(conn, f"/api/workflows/{random.choice(ids)}")[0] for _ in range(samples)]
    lists = [get(conn, "/api/workflows?page_size=100")[0] for _ in range(max(5, samples // 20))]
    conn.close()
    return (
        statistics.median(describes) * 1000,
        percentile(describes, 0.99) * 1000,
        statistics.median(lists) * 1000,
    )


def rocksdb_memory_mib(port: int) -> str:
    """RocksDB's block cache and table-reader memory from `/metrics`, in MiB."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    parts = {}
    for line in text.splitlines():
        if line.startswith("keel_storage_memory_bytes{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            parts[kind] = float(line.rsplit(" ", 1)[1]) / (1 << 20)
    return f"{parts.get('block_cache', 0):.0f} / {parts.get('table_readers', 0):.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keel", default=str(REPO / "target/release/keel"))
    ap.add_argument("--target", type=int, default=100_000, help="workflows stored at the end")
    ap.add_argument("--step", type=int, default=10_000, help="workflows per round")
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--samples", type=int, default=400, help="describes timed per round")
    ap.add_argument("--data-dir", help="default: a temporary directory, removed at the end")
    args = ap.parse_args()

    tmp = None if args.data_dir else tempfile.TemporaryDirectory(prefix="keel-scale-")
    data = args.data_dir or tmp.name
    port = free_port()
    server = subprocess.Popen(
        [args.keel, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", f"{data}/store"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("keel serve did not start")
                time.sleep(0.1)
        print("| stored | wf/s | p50 / p99 ms | server CPU ms/wf | RSS MiB | cache / table readers MiB | describe p50 / p99 ms | list page p50 ms |")
        print("|---|---|---|---|---|---|---|---|")
        stored = 0
        ids: list[str] = []
        while stored < args.target:
            out = subprocess.run(
                [args.keel, "bench", "--url", f"http://127.0.0.1:{port}", "--workflows", str(args.step),
                 "--concurrency", str(args.concurrency), "--server-pid", str(server.pid),
                 "--json", "--quiet", "--no-verify"],
                check=True, capture_output=True, text=True,
            )
            r = json.loads(out.stdout)
            stored += r["workflows"]["completed"]
            conn = http.client.HTTPConnection("127.0.0.1", port)
            _, page = get(conn, "/api/workflows?page_size=100")
            conn.close()
            ids.extend(w["workflow_id"] for w in page["workflows"])
            d50, d99, l50 = sample_reads(port, ids, args.samples)
            lat = r["latency_ms"]
            srv = r["server"]
            print(
                f"| {stored:,} | {r['throughput']['workflows_per_second']:.0f} | {lat['p50']:.0f} / {lat['p99']:.0f} "
                f"| {srv['cpu_ms_per_workflow']:.3f} | {srv['rss_mib']:.0f} | {rocksdb_memory_mib(port)} | {d50:.2f} / {d99:.2f} | {l50:.2f} |",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
        if tmp:
            tmp.cleanup()


if __name__ == "__main__":
    main()
