#!/usr/bin/env bash
# Keel driven by the official Rust SDK (durable-workflow 4.10.2, unmodified): `keel serve` as shipped
# (durable: every acknowledged transition fsynced, group-committed) + the SDK worker process
# (keel-rust-sdk-bench --role worker: workflow bench.echo_wf + activity bench.echo on one queue) + the
# SDK client process (--role client: start_workflow, then handle.result polling describe every
# --result-poll-ms). The Keel half of the SDK-to-SDK row pair in compare.sh; the Restate half is
# ../shared/perf/peers/restate-native (Restate's Rust SDK endpoint + Rust driver).
# Usage: bash benches/peers/run_keel_rust_sdk.sh [--n 1000] [--concurrency 100] [--warmup 200] [--reps 1]
#                                                [--result-poll-ms 50]
# Env: PEERS (data dir, default ${TMPDIR:-/tmp}/keel-peers), RESULTS (JSONL the client appends to),
#      KEEL_BIN (default <repo>/target/release/keel), RUST_SDK_BENCH_BIN (default
#      <repo>/target/sdk-rust/release/keel-rust-sdk-bench), KEEL_PORT (default: first free from 8380).
# Prints the client's JSON result line(s) on stdout; label keel-rust-sdk.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PEERS=${PEERS:-${TMPDIR:-/tmp}/keel-peers}
KEEL=${KEEL_BIN:-$REPO/target/release/keel}
BENCH=${RUST_SDK_BENCH_BIN:-$REPO/target/sdk-rust/release/keel-rust-sdk-bench}
DATA=$PEERS/data/keel-rust-sdk
die() { echo "run_keel_rust_sdk.sh: $*" >&2; exit 1; }

N=1000 C=100 W=200 REPS=1 POLL=50
while [ $# -gt 0 ]; do
  case $1 in
    --n|-n) N=${2:?}; shift ;;
    --concurrency|-c) C=${2:?}; shift ;;
    --warmup) W=${2:?}; shift ;;
    --reps) REPS=${2:?}; shift ;;
    --result-poll-ms) POLL=${2:?}; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
[ -x "$KEEL" ] || die "$KEEL missing (set KEEL_BIN)"
[ -x "$BENCH" ] || die "$BENCH missing (CARGO_TARGET_DIR=$REPO/target/sdk-rust cargo build --release --manifest-path tests/sdk-rust/Cargo.toml --bin keel-rust-sdk-bench)"

KEEL_SCRIPT=run_keel_rust_sdk.sh
# shellcheck source=keel_server.sh
source "$HERE/keel_server.sh"
start_keel

# Slots = C, so the worker never holds back a task the client is waiting for.
"$BENCH" --role worker --url "$URL" --slots "$C" >"$DATA/worker.log" 2>&1 & WRK=$!
echo "run_keel_rust_sdk.sh: keel pid $SRV ($URL), SDK worker pid $WRK; N=$N C=$C warm-up $W reps $REPS result poll ${POLL} ms" >&2
rc=0
"$BENCH" --role client --url "$URL" --server-pid "$SRV" --worker-pid "$WRK" --n "$N" --concurrency "$C" \
  --warmup "$W" --reps "$REPS" --result-poll-ms "$POLL" --label keel-rust-sdk --durable-mode fsync || rc=$?
kill -0 "$SRV" 2>/dev/null || { tail -20 "$DATA/server.log" >&2; die "keel died during the run"; }
kill -0 "$WRK" 2>/dev/null || { tail -20 "$DATA/worker.log" >&2; die "the SDK worker died during the run"; }
du -sh "$DATA/db" | sed 's/^/run_keel_rust_sdk.sh: data dir size: /' >&2
exit "$rc"
