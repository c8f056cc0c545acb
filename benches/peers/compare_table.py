"""Markdown tables for a compare.sh results file (JSON lines from ../shared/perf/peers/harness.py,
keel_bench_json.py, fsync_record.py, keel-rust-sdk-bench and restate-native's restate-driver): one row
per configuration, medians over repetitions, and the Keel ÷ peer ratios.

    python benches/peers/compare_table.py $PEERS/out/compare-<timestamp>.jsonl
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict

# Durability of each configuration as compare.sh runs it (label prefix -> statement).
DURABILITY = {
    "keel-fsync": "durable: each transition in a RocksDB WriteBatch written with sync=true (WAL fsync), "
                  "group-committed, before the reply; task leases only handed to the OS (survive kill -9; "
                  "lost on an OS crash = expired) and synced by the next synced batch",
    "keel-rust-sdk": "durable: `keel serve` as shipped, as keel-fsync (each transition in a synced RocksDB "
                     "WriteBatch, group-committed, before the reply)",
    "restate-native": "durable: server defaults (as restate-default), log-server + bifrost RocksDB WAL fsync on "
                      "(group commit), 24 partitions",
    "restate-default": "durable: server defaults, log-server + bifrost RocksDB WAL fsync on (group commit), "
                       "24 partitions",
    "restate-nofsync": "NOT durable: log-server + bifrost WAL fsync off",
    "temporal-file": "durable: dev server, SQLite file, journal DELETE, synchronous=FULL (fsync per commit)",
    "temporal-mem": "NOT durable: dev server, in-memory SQLite",
}
PEER_CONFIGS = ["restate-default", "temporal-file"]  # durable peers the ratios are taken against
KEEL_SDK = "keel-fsync"
KEEL_SDK_LOCAL = "keel-fsync-local"  # the same workflow with its step as a local activity
KEEL_BENCH = "keel-fsync-keelbench"
# SDK to SDK, both from Rust: Keel via the official Rust SDK ÷ Restate via its Rust SDK (restate-native).
KEEL_RUST_SDK = "keel-rust-sdk"
RESTATE_NATIVE = "restate-native"


def durability(label: str) -> str:
    for prefix in sorted(DURABILITY, key=len, reverse=True):
        if label.startswith(prefix):
            return DURABILITY[prefix]
    return "?"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=0):
    if x is None:
        return "-"
    return f"{x:,.{nd}f}"


def driver(r: dict) -> str:
    if r.get("driver"):
        return r["driver"]
    return {"restate": "Python aiohttp client -> ingress; Python SDK endpoint (hypercorn)",
            "temporal": "Python SDK (temporalio) client + worker"}.get(r.get("system", ""), r.get("system", "?"))


def cpu_parts(r: dict) -> dict:
    c = r.get("cpu_ms_per_wf") or {}
    return {"server": c.get("server"), "worker": c.get("worker", c.get("endpoint")), "client": c.get("client")}


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    thr, lat, fs = defaultdict(list), defaultdict(list), defaultdict(list)
    for r in rows:
        label = r.get("label") or r.get("system", "?")
        if r["kind"] == "fsync_count":
            fs[label].append(r)
        elif label.endswith("fsynccount"):
            continue  # the throughput line of an fsync-count run: not a clean throughput figure
        elif r["kind"] == "throughput":
            thr[(label, r["n"], r["concurrency"])].append(r)
        elif r["kind"].startswith("latency_seq"):
            lat[(label, r["kind"])].append(r)

    summary: dict = {}
    print(f"Results: `{path}` ({len(rows)} lines). Medians over runs; (best / worst) for wf/s.\n")
    print("### Throughput: N workflows of one activity each, at most C in flight\n")
    print("| config | driver | N | C | runs | wf/s median (best / worst) | p50 / p99 under load ms | "
          "CPU ms/wf server | worker / endpoint | client | total | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (label, n, c), rs in thr.items():
        w = [r["wf_per_s"] for r in rs]
        parts = [cpu_parts(r) for r in rs]
        cpu = {k: med([p[k] for p in parts]) for k in ("server", "worker", "client")}
        totals = [sum(v for v in p.values() if v is not None) for p in parts]
        s = dict(wf=med(w), p50=med([r.get("load_p50_ms") for r in rs]), p99=med([r.get("load_p99_ms") for r in rs]),
                 total=med(totals), n=n, c=c, runs=len(rs), **cpu)
        summary[("thr", label, n, c)] = s
        print(f"| {label} | {driver(rs[0])} | {n} | {c} | {len(rs)} | {fmt(s['wf'])} ({fmt(max(w))} / {fmt(min(w))}) | "
              f"{fmt(s['p50'])} / {fmt(s['p99'])} | {fmt(cpu['server'], 2)} | {fmt(cpu['worker'], 2)} | "
              f"{fmt(cpu['client'], 2)} | {fmt(s['total'], 2)} | {sum(r.get('errors', 0) for r in rs)} |")

    if lat:
        print("\n### Latency of one workflow at low load (sequential, back-to-back unless a gap is named)\n")
        print("| config | driver | kind | runs x n | p50 ms median (min) | p99 ms median (min) |")
        print("|---|---|---|---|---|---|")
        for (label, kind), rs in lat.items():
            p50 = [r["p50_ms"] for r in rs]
            p99 = [r["p99_ms"] for r in rs]
            summary[("lat", label, kind)] = dict(p50=med(p50), p99=med(p99), runs=len(rs), n=rs[0]["n"])
            print(f"| {label} | {driver(rs[0])} | {kind} | {len(rs)} x {rs[0]['n']} | {fmt(med(p50), 1)} ({fmt(min(p50), 1)}) | "
                  f"{fmt(med(p99), 1)} ({fmt(min(p99), 1)}) |")

    if fs:
        print("\n### fsync-family syscalls per workflow (during one throughput run at C=100, after a warm-up)\n")
        print("Whole machine = `perf stat -a` (counts anything else running on the box too); server process = "
              "`perf stat -p` (threads that exist when counting starts).\n")
        print("| config | runs x N | whole machine, per workflow (median) | server process, per workflow | "
              "fsync / fdatasync / sync_file_range, whole machine (last run) |")
        print("|---|---|---|---|---|")
        for label, rs in fs.items():
            last = rs[-1]["syscalls"]
            summary[("fsync", label)] = med([r["per_wf"] for r in rs])
            server = med([r.get("server_per_wf") for r in rs])
            print(f"| {label} | {len(rs)} x {rs[0]['n']} | {fmt(summary[('fsync', label)], 2)} | {fmt(server, 2)} | "
                  f"{last.get('fsync', '-')} / {last.get('fdatasync', '-')} / {last.get('sync_file_range', '-')} |")

    labels = sorted({k[1] for k in summary if k[0] != "fsync"} | {k[1] for k in summary if k[0] == "fsync"})
    print("\n### Durable mode of each configuration\n")
    print("| config | durability as run |")
    print("|---|---|")
    for label in labels:
        print(f"| {label} | {durability(label)} |")

    print_ratios(summary)
    print_rust_sdk(summary, thr)
    print_native(summary)


def thr_for(summary: dict, label: str, n=None, c=None):
    """The throughput summary of `label`, preferring the given N and C, else the largest N."""
    cands = [(k, v) for k, v in summary.items() if k[0] == "thr" and k[1] == label]
    exact = [v for k, v in cands if k[2] == n and k[3] == c]
    if exact:
        return exact[0]
    return max(cands, key=lambda kv: kv[0][2])[1] if cands else None


def print_ratios(summary: dict) -> None:
    print("\n### Ratios: Keel ÷ peer (medians over runs)\n")
    print("wf/s: > 1 means Keel is faster. CPU and latency: < 1 means Keel uses less / answers sooner.\n")
    print("| ratio | Keel | peer | Keel ÷ peer |")
    print("|---|---|---|---|")
    keel_thr = [v for k, v in summary.items() if k[0] == "thr" and k[1] == KEEL_SDK]
    keel_seq = summary.get(("lat", KEEL_BENCH, "latency_seq"))
    any_row = False

    def row(name, k, p, nd=1):
        nonlocal any_row
        if k is None or p is None:
            return
        any_row = True
        print(f"| {name} | {fmt(k, nd)} | {fmt(p, nd)} | **{k / p:.2f}** |" if p else f"| {name} | {fmt(k, nd)} | {fmt(p, nd)} | - |")

    for peer in PEER_CONFIGS:
        for ks in keel_thr:
            ps = thr_for(summary, peer, ks["n"], ks["c"])
            if ps is None:
                continue
            nc = f"Keel N={ks['n']}, C={ks['c']}; {peer} N={ps['n']}, C={ps['c']}"
            row(f"SDK wf/s, Keel (Python SDK) ÷ {peer} ({nc})", ks["wf"], ps["wf"], 0)
            row(f"server CPU ms/wf ÷ {peer} server", ks["server"], ps["server"], 2)
            row(f"worker/endpoint CPU ms/wf ÷ {peer}", ks["worker"], ps["worker"], 2)
            row(f"client CPU ms/wf ÷ {peer}", ks["client"], ps["client"], 2)
            row(f"total CPU ms/wf (server + worker + client) ÷ {peer}", ks["total"], ps["total"], 2)
            if ks["server"] is not None and ks["total"] and ps["server"] is not None and ps["total"]:
                row(f"server's share of the total CPU, % ÷ {peer} (#18 goal for Keel: ≤ 10 %)",
                    100 * ks["server"] / ks["total"], 100 * ps["server"] / ps["total"], 0)
        for ks in (v for k, v in summary.items() if k[0] == "thr" and k[1] == KEEL_SDK_LOCAL):
            ps = thr_for(summary, peer, ks["n"], ks["c"])
            if ps is not None:
                row(f"SDK wf/s, Keel with the step as a local activity ÷ {peer}", ks["wf"], ps["wf"], 0)
                row(f"total CPU ms/wf, Keel local-activity step ÷ {peer}", ks["total"], ps["total"], 2)
        ps = summary.get(("lat", peer, "latency_seq"))
        if keel_seq and ps:
            row(f"sequential p50 ms, Keel (keel-bench, Rust worker) ÷ {peer} (its Python SDK)", keel_seq["p50"], ps["p50"], 1)
            row(f"sequential p99 ms, Keel (keel-bench) ÷ {peer}", keel_seq["p99"], ps["p99"], 1)
        kf, pf = summary.get(("fsync", KEEL_SDK)), summary.get(("fsync", peer))
        if kf is not None and pf is not None:
            row(f"fsync-family syscalls per workflow, whole machine ÷ {peer}", kf, pf, 2)
    if not any_row:
        print("| (no Keel Python SDK and peer pair in this file) | - | - | - |")

    ceil = [v for k, v in summary.items() if k[0] == "thr" and k[1] == KEEL_BENCH]
    if ceil or keel_seq:
        print("\nKeel's own figures with the Rust driver (keel-bench: Rust client + Rust worker, no Python):")
        for s in ceil:
            print(f"- ceiling: {fmt(s['wf'])} wf/s at N={s['n']}, C={s['c']} ({s['runs']} runs, median); "
                  f"p50 / p99 under load {fmt(s['p50'])} / {fmt(s['p99'])} ms; server CPU {fmt(s['server'], 3)} ms/wf, "
                  f"keel-bench CPU {fmt(s['client'], 3)} ms/wf")
        if keel_seq:
            print(f"- sequential latency: p50 {fmt(keel_seq['p50'], 1)} ms, p99 {fmt(keel_seq['p99'], 1)} ms "
                  f"({keel_seq['runs']} x {keel_seq['n']} workflows)")


def print_rust_sdk(summary: dict, thr: dict) -> None:
    """The SDK-to-SDK row pair: Keel via its Rust SDK beside Restate via its Rust SDK (native)."""
    ks, ps = thr_for(summary, KEEL_RUST_SDK), thr_for(summary, RESTATE_NATIVE)
    if ks is None and ps is None:
        return
    if ks is not None and ps is not None and (ks["n"], ks["c"]) != (ps["n"], ps["c"]):
        ps = thr_for(summary, RESTATE_NATIVE, ks["n"], ks["c"])
    print("\n### SDK to SDK, both driven from Rust (same run, interleaved)\n")
    print("Keel via the official Rust SDK (durable-workflow 4.10.2, unmodified: SDK worker process + SDK client "
          "process, `handle.result` polling describe) beside Restate via its Rust SDK (restate-sdk 0.13 endpoint + "
          "Rust ingress driver, ../shared/perf/peers/restate-native). CPU from /proc/PID/stat utime+stime deltas "
          "(process trees) over the measured run.\n")
    print("| system | N | C | runs | wf/s median (range) | p50 / p99 ms | CPU ms/wf server | worker / endpoint | "
          "client | total | describe req/wf (Keel /metrics) | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, label, s in (("Keel via its Rust SDK", KEEL_RUST_SDK, ks),
                           ("Restate via its Rust SDK (native)", RESTATE_NATIVE, ps)):
        if s is None:
            print(f"| {name} | - | - | 0 | - | - | - | - | - | - | - | - |")
            continue
        rs = thr[(label, s["n"], s["c"])]
        w = [r["wf_per_s"] for r in rs]
        desc = med([r.get("describe_per_wf") for r in rs])
        poll = rs[0].get("result_poll_ms")
        extra = f" (poll {poll} ms)" if poll is not None else ""
        print(f"| {name}{extra} | {s['n']} | {s['c']} | {s['runs']} | {fmt(s['wf'])} ({fmt(min(w))} – {fmt(max(w))}) | "
              f"{fmt(s['p50'])} / {fmt(s['p99'])} | {fmt(s['server'], 2)} | {fmt(s['worker'], 2)} | "
              f"{fmt(s['client'], 2)} | {fmt(s['total'], 2)} | {fmt(desc, 1)} | {sum(r.get('errors', 0) for r in rs)} |")
    if ks is None or ps is None:
        return
    print("\n| ratio, Keel via its Rust SDK ÷ Restate via its Rust SDK (medians) | Keel | Restate | Keel ÷ Restate |")
    print("|---|---|---|---|")
    for name, k, nd in (("wf/s (> 1: Keel faster)", "wf", 0), ("server CPU ms/wf (< 1: Keel uses less)", "server", 2),
                        ("worker / endpoint CPU ms/wf", "worker", 2), ("client CPU ms/wf", "client", 2),
                        ("total CPU ms/wf", "total", 2), ("p50 ms under load", "p50", 0)):
        a, b = ks.get(k), ps.get(k)
        if a is None or b is None:
            continue
        print(f"| {name} | {fmt(a, nd)} | {fmt(b, nd)} | **{a / b:.2f}** |" if b else f"| {name} | {fmt(a, nd)} | {fmt(b, nd)} | - |")


def print_native(summary: dict) -> None:
    """Server to server, both driven natively: keel-bench (Rust client + worker over the worker
    protocol) beside Restate via its Rust SDK, at the same N and C, with the goals of issue #18 §3."""
    ks = thr_for(summary, KEEL_BENCH)
    ps = thr_for(summary, RESTATE_NATIVE, ks["n"], ks["c"]) if ks else None
    if ks is None or ps is None or (ks["n"], ks["c"]) != (ps["n"], ps["c"]):
        return
    print("\n### Server to server, both driven natively (same run, interleaved)\n")
    print(f"Keel driven by keel-bench (Rust client and Rust workers speaking the worker protocol) beside "
          f"Restate via its Rust SDK (restate-native), both durable, N={ks['n']}, C={ks['c']}; "
          f"sequential latency back to back. Goal (#18 §3): Keel ≥ 3× Restate's wf/s at ≤ ¼ of its "
          f"server CPU per workflow.\n")
    print("| measurement | Keel (keel-bench) | Restate (Rust SDK) | Keel ÷ Restate | goal |")
    print("|---|---|---|---|---|")
    kl = summary.get(("lat", KEEL_BENCH, "latency_seq"))
    pl = summary.get(("lat", RESTATE_NATIVE, "latency_seq"))
    rows = [("wf/s (> 1: Keel faster)", ks["wf"], ps["wf"], 0, "≥ 3"),
            ("server CPU ms/wf (< 1: Keel uses less)", ks["server"], ps["server"], 2, "≤ 0.25"),
            ("p50 / p99 ms under load", ks["p50"], ps["p50"], 0, "-")]
    if kl and pl:
        rows.append(("sequential p50 ms", kl["p50"], pl["p50"], 1, "-"))
        rows.append(("sequential p99 ms", kl["p99"], pl["p99"], 1, "-"))
    for name, a, b, nd, goal in rows:
        if a is None or b is None:
            continue
        if name.startswith("p50 / p99"):
            a_txt = f"{fmt(ks['p50'])} / {fmt(ks['p99'])}"
            b_txt = f"{fmt(ps['p50'])} / {fmt(ps['p99'])}"
        else:
            a_txt, b_txt = fmt(a, nd), fmt(b, nd)
        ratio = f"**{a / b:.2f}**" if b else "-"
        print(f"| {name} | {a_txt} | {b_txt} | {ratio} | {goal} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
