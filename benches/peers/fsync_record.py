"""Turn a `perf stat -a -e syscalls:sys_enter_fsync,...` output file into one JSON line (kind
"fsync_count"), printed and appended to $RESULTS if set, so compare_table.py can show fsync-family
syscalls per workflow.

    python fsync_record.py PERF_TXT [--server-perf PERF_TXT] --system keel --label keel-fsync --n 1000

PERF_TXT is the whole-machine count (`perf stat -a`); --server-perf a count of the server process only
(`perf stat -p PID`), kept apart because the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys


def counts_of(path: str) -> dict:
    counts = {}
    for line in open(path):
        m = re.match(r"\s*([\d,.]+)\s+syscalls:sys_enter_(\w+)", line)
        if m:
            counts[m[2]] = int(m[1].replace(",", "").replace(".", ""))
    if not counts:
        sys.exit(f"fsync_record: no syscall counts in {path}")
    return counts


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("perf_txt")
    p.add_argument("--server-perf", help="perf stat -p output for the server process")
    p.add_argument("--system", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--n", type=int, required=True, help="workflows run while perf counted")
    a = p.parse_args()
    counts = counts_of(a.perf_txt)
    total = sum(counts.values())
    rec = {"system": a.system, "label": a.label, "kind": "fsync_count", "n": a.n, "scope": "whole machine",
           "syscalls": counts, "total": total, "per_wf": round(total / a.n, 2)}
    if a.server_perf:
        sc = counts_of(a.server_perf)
        rec.update(server_syscalls=sc, server_per_wf=round(sum(sc.values()) / a.n, 2))
    line = json.dumps(rec)
    print(line, flush=True)
    if path := os.environ.get("RESULTS"):
        with open(path, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
