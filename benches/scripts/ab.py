#!/usr/bin/env python3
"""A/B two `keel` server builds on this machine, interleaved (A, B, A, B, ...).

    python3 benches/scripts/ab.py OLD_KEEL NEW_KEEL [--pairs 5] [--workflows 5000]
        [--concurrency 200] [--bench target/release/keel-bench]
    python3 benches/scripts/ab.py OLD_KEEL NEW_KEEL --callgrind [--pairs 2]

Default mode: each run starts the build on a fresh data directory, drives it with
keel-bench (one-activity workflows) and prints throughput, latency under load and the
server's CPU per workflow; then the medians of each side. Wall-clock figures on a shared
machine move by 10-20 % between runs: read the pairs, not one run.

--callgrind: each run serves under `valgrind --tool=callgrind` and keel-bench runs 400
workflows at concurrency 20 (8 workflow and 8 activity pollers); prints the instructions
the server executed (startup and shutdown included), repeatable to about 1.5 %. Needs
valgrind (Debian: apt-get install valgrind).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url, deadline_s):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"ab.py: no server at {url} after {deadline_s} s")


def run_once(keel, args):
    data = tempfile.mkdtemp(prefix="keel-ab-")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = [keel, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", f"{data}/store"]
    log = open(f"{data}/server.log", "w")
    if args.callgrind:
        serve = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={data}/callgrind.out"] + serve
    server = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_healthy(url, 60 if args.callgrind else 10)
        bench = [args.bench, "--url", url, "--no-verify", "--quiet", "--json"]
        if args.callgrind:
            bench += ["--workflows", "400", "--concurrency", "20",
                      "--workflow-pollers", "8", "--activity-pollers", "8"]
        else:
            bench += ["--workflows", str(args.workflows), "--concurrency", str(args.concurrency),
                      "--server-pid", str(server.pid)]
        out = subprocess.run(bench, check=True, capture_output=True, text=True).stdout
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
        log.close()
    try:
        if args.callgrind:
            with open(f"{data}/server.log") as f:
                line = next(l for l in f if "Collected" in l)
            return {"instructions": int(line.split(":")[-1].strip())}
        r = json.loads(out)
        return {
            "wf/s": r["throughput"]["workflows_per_second"],
            "p50 ms": r["latency_ms"]["p50"],
            "p99 ms": r["latency_ms"]["p99"],
            "server ms/wf": r["server"]["cpu_ms_per_workflow"],
        }
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="the `keel` binary of build A")
    p.add_argument("b", help="the `keel` binary of build B")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--workflows", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--bench", default="target/release/keel-bench", help="the keel-bench binary")
    p.add_argument("--callgrind", action="store_true", help="count instructions instead")
    args = p.parse_args()
    for path in (args.a, args.b, args.bench):
        if not os.access(path, os.X_OK):
            sys.exit(f"ab.py: {path} is not an executable")
    if args.callgrind and not shutil.which("valgrind"):
        sys.exit("ab.py: --callgrind needs valgrind (Debian: apt-get install valgrind)")
    results = {"A": [], "B": []}
    for pair in range(1, args.pairs + 1):
        for side, keel in (("A", args.a), ("B", args.b)):
            r = run_once(keel, args)
            results[side].append(r)
            print(f"pair {pair} {side}: " + ", ".join(f"{k} {v:,.3f}" if isinstance(v, float) else f"{k} {v:,}" for k, v in r.items()), flush=True)
    print("medians:")
    for side in ("A", "B"):
        keys = results[side][0].keys()
        medians = {k: statistics.median(r[k] for r in results[side]) for k in keys}
        print(f"  {side}: " + ", ".join(f"{k} {v:,.0f}" if k == "instructions" else f"{k} {v:,.3f}" for k, v in medians.items()))


if __name__ == "__main__":
    main()
