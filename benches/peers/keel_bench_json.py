"""Run keel-bench (the Rust load generator + Rust worker, benches/src/bin/keel-bench.rs) once and record
its summary (`--json`) as one JSON line in the peer harness's format (printed, and appended to $RESULTS if set), so
compare_table.py reads it next to the Python-harness lines.

    python keel_bench_json.py --bin target/release/keel-bench --url http://127.0.0.1:8380 \\
        --server-pid PID --kind latency_seq -n 200 -c 1 --label keel-fsync-keelbench

--kind latency_seq (use -c 1): p50/p95/p99 go to p50_ms/p95_ms/p99_ms, i.e. sequential latency.
--kind throughput: p50/p99 go to load_p50_ms/load_p99_ms (latency under load), as in the harness.
CPU per workflow: server (keel-bench reads it from /proc/PID/stat) and the keel-bench process itself
(`client`, from its rusage), in ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def parse(out: str) -> dict:
    """keel-bench's --json document (schema keel.bench.result.v1) as the fields recorded here."""
    doc = json.loads(out)
    if doc.get("schema") != "keel.bench.result.v1":
        raise ValueError(f"unexpected schema {doc.get('schema')!r}")
    lat = doc["latency_ms"]
    rec: dict = {"done": doc["workflows"]["completed"], "wall_s": doc["wall_seconds"],
                 "concurrency": doc["parameters"]["concurrency"],
                 "p50": lat["p50"], "p95": lat["p95"], "p99": lat["p99"],
                 "errors": doc["workflows"]["failed"]}
    if server := doc.get("server"):
        rec.update(server_cpu_ms=server["cpu_ms_per_workflow"], server_rss_mib=server["rss_mib"])
    return rec


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--server-pid", type=int, required=True)
    p.add_argument("--kind", choices=["latency_seq", "throughput"], required=True)
    p.add_argument("-n", type=int, required=True)
    p.add_argument("-c", "--concurrency", type=int, required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--durable-mode", default="fsync")
    p.add_argument("--rep", type=int, default=0)
    p.add_argument("--no-record", action="store_true", help="warm-up: run, print nothing, record nothing")
    a = p.parse_args()

    cmd = [a.bin, "--url", a.url, "--workflows", str(a.n), "--concurrency", str(a.concurrency),
           "--server-pid", str(a.server_pid), "--queue", f"keel-bench-{os.getpid()}-{time.time_ns()}",
           # No read-back after the run: the client CPU per workflow recorded below stays the
           # load's own (the bench's workers still check every workflow's result).
           "--json", "--quiet", "--no-verify"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    t = os.times()  # keel-bench has been waited for: its CPU is in the children's times
    child_cpu_s = t.children_user + t.children_system
    if proc.returncode != 0:
        sys.exit(f"keel-bench failed ({proc.returncode}): {err.strip() or out.strip()}")
    if a.no_record:
        return
    try:
        r = parse(out)
    except (ValueError, KeyError) as e:
        sys.exit(f"keel_bench_json: cannot read keel-bench's JSON ({e}):\n{out}")
    n = r["done"]
    rec = {"system": "keel", "driver": "keel-bench", "durable": True, "durable_mode": a.durable_mode,
           "label": a.label, "rep": a.rep, "kind": a.kind, "n": n, "concurrency": r["concurrency"],
           "errors": r.get("errors", 0) + (a.n - n), "wall_s": r["wall_s"],
           "wf_per_s": round(n / r["wall_s"], 1) if r["wall_s"] else None}
    if a.kind == "latency_seq":
        rec.update(p50_ms=r["p50"], p95_ms=r["p95"], p99_ms=r["p99"])
    else:
        rec.update(load_p50_ms=r["p50"], load_p95_ms=r["p95"], load_p99_ms=r["p99"])
    cpu = {}
    if "server_cpu_ms" in r:
        cpu["server"] = r["server_cpu_ms"]
        rec["server_rss_mib"] = r["server_rss_mib"]
    cpu["client"] = round(child_cpu_s * 1000 / max(n, 1), 3)
    rec["cpu_ms_per_wf"] = cpu
    line = json.dumps(rec)
    print(line, flush=True)
    if path := os.environ.get("RESULTS"):
        with open(path, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
