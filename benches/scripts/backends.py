"""keel-bench on each storage backend, interleaved in one run: the README's backend table.

Per repetition, in turn: one node on a fresh RocksDB data dir; with `--fdb-cluster`, one
node on a fresh FoundationDB subspace, and two nodes sharing one fresh subspace (each
node driven by its own `keel bench` with half the workflows and half the concurrency,
started together: the two-node row is the aggregate). Prints the median over the
repetitions of wf/s, p50/p99 start-to-result latency, Keel's CPU per workflow (all its
nodes) and, with `--fdbserver-pid`, the fdbserver's CPU per workflow.

Needs a `keel` built with `--features fdb` for the FoundationDB rows (it serves RocksDB
too, so every row runs the same binary) and a running, configured cluster; this script
does not build or start FoundationDB. Each subspace is cleared afterwards when `--fdbcli`
is given.

    python3 benches/scripts/backends.py --keel target/release/keel \\
        --fdb-cluster /etc/foundationdb/fdb.cluster --fdbserver-pid "$(pgrep -o fdbserver)"
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of a process so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(port: int, proc: subprocess.Popen, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"keel serve on port {port} did not start")
            time.sleep(0.1)


def start_nodes(keel: str, storage_args: list[list[str]]) -> list[tuple[subprocess.Popen, int]]:
    nodes = []
    for args in storage_args:
        port = free_port()
        proc = subprocess.Popen(
            [keel, "serve", "--listen", f"127.0.0.1:{port}", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        nodes.append((proc, port))
    for proc, port in nodes:
        wait_ready(port, proc)
    return nodes


def run(keel: str, storage_args: list[list[str]], workflows: int, concurrency: int,
        fdbserver_pid: int | None) -> dict[str, float]:
    """One measurement: the nodes started, one bench per node run together, nodes stopped."""
    nodes = start_nodes(keel, storage_args)
    try:
        share = len(nodes)
        fdb_before = cpu_seconds(fdbserver_pid) if fdbserver_pid else 0.0
        keel_before = sum(cpu_seconds(proc.pid) for proc, _ in nodes)
        started = time.perf_counter()
        benches = [
            subprocess.Popen(
                [keel, "bench", "--url", f"http://127.0.0.1:{port}", "--workflows", str(workflows // share),
                 "--concurrency", str(concurrency // share), "--json", "--quiet"],
                stdout=subprocess.PIPE, text=True,
            )
            for _, port in nodes
        ]
        results = []
        for bench in benches:
            out, _ = bench.communicate()
            if bench.returncode != 0:
                raise SystemExit(f"keel bench failed (exit {bench.returncode})")
            results.append(json.loads(out))
        wall = time.perf_counter() - started
        keel_cpu = sum(cpu_seconds(proc.pid) for proc, _ in nodes) - keel_before
        fdb_cpu = cpu_seconds(fdbserver_pid) - fdb_before if fdbserver_pid else float("nan")
        completed = sum(r["workflows"]["completed"] for r in results)
        failed = sum(r["workflows"]["failed"] for r in results)
        if failed or completed != (workflows // share) * share:
            raise SystemExit(f"{failed} workflows failed, {completed} completed")
        return {
            # Started together: the aggregate rate is the sum of each bench's own.
            "wfs": sum(r["throughput"]["workflows_per_second"] for r in results),
            "p50": statistics.median(r["latency_ms"]["p50"] for r in results),
            "p99": max(r["latency_ms"]["p99"] for r in results),
            "keel_cpu": keel_cpu * 1000 / completed,
            "fdb_cpu": fdb_cpu * 1000 / completed,
            "wall": wall,
        }
    finally:
        for proc, _ in nodes:
            proc.terminate()
        for proc, _ in nodes:
            proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keel", default=str(REPO / "target/release/keel"))
    ap.add_argument("--workflows", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--fdb-cluster", help="cluster file: adds the FoundationDB rows")
    ap.add_argument("--fdbserver-pid", type=int, help="the (single) fdbserver, for its CPU per workflow")
    ap.add_argument("--fdbcli", help="fdbcli binary: clears each bench subspace afterwards")
    args = ap.parse_args()

    configs: list[tuple[str, int]] = [("rocksdb, one node", 1)]
    if args.fdb_cluster:
        configs += [("fdb, one node", 1), ("fdb, two nodes", 2)]
    samples: dict[str, list[dict[str, float]]] = {name: [] for name, _ in configs}
    with tempfile.TemporaryDirectory(prefix="keel-backends-") as tmp:
        for rep in range(args.reps):
            for name, node_count in configs:
                if name.startswith("rocksdb"):
                    storage = [["--data-dir", f"{tmp}/rocksdb-{rep}"]]
                    subspace = None
                else:
                    subspace = f"bench-{uuid.uuid4().hex[:12]}"
                    storage = [
                        ["--storage", f"fdb:{args.fdb_cluster}", "--fdb-subspace", subspace, "--node-id", f"n{i}"]
                        for i in range(node_count)
                    ]
                try:
                    result = run(args.keel, storage, args.workflows, args.concurrency, args.fdbserver_pid)
                finally:
                    if subspace and args.fdbcli:
                        prefix = "\\x02" + subspace + "\\x00"
                        subprocess.run(
                            [args.fdbcli, "-C", args.fdb_cluster, "--exec",
                             f"writemode on; clearrange {prefix} {prefix}\\xff"],
                            check=False, capture_output=True, timeout=60,
                        )
                samples[name].append(result)
                print(f"rep {rep + 1} {name}: {result['wfs']:.0f} wf/s, p50 {result['p50']:.1f} ms, "
                      f"keel {result['keel_cpu']:.3f} ms/wf, fdbserver {result['fdb_cpu']:.3f} ms/wf", flush=True)
    print()
    print(f"Medians of {args.reps} interleaved repetitions, {args.workflows} one-activity workflows "
          f"at concurrency {args.concurrency}:")
    print()
    print("| backend | wf/s | p50 / p99 ms | Keel CPU ms/wf | fdbserver CPU ms/wf |")
    print("|---|---|---|---|---|")
    for name, _ in configs:
        rows = samples[name]
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        fdb = "–" if name.startswith("rocksdb") or args.fdbserver_pid is None else f"{med['fdb_cpu']:.2f}"
        print(f"| {name} | {med['wfs']:,.0f} | {med['p50']:.1f} / {med['p99']:.1f} | {med['keel_cpu']:.2f} | {fdb} |")


if __name__ == "__main__":
    main()
