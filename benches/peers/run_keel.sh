#!/usr/bin/env bash
# Keel server + Python SDK worker process + the shared peer harness client (keel_sdk_bench.py), then
# keel-bench (Rust load generator + Rust worker) for sequential latency and Keel's own ceiling.
# Mirrors ../shared/perf/peers/run_restate.sh.
# Usage: bash benches/peers/run_keel.sh MODE [harness args...]
#   MODE = fsync   `keel serve` as shipped: every acknowledged transition is in a RocksDB WriteBatch
#                  written with sync=true (WAL fsync), group-committed. Keel has no switch to turn the
#                  fsync off, so there is no `nofsync` mode.
# Env: PEERS (install/data dir, default ${TMPDIR:-/tmp}/keel-peers), PEERS_HARNESS (the shared harness,
#      default <repo>/../shared/perf/peers), RESULTS (JSONL to append to),
#      KEEL_BIN / KEEL_BENCH_BIN (default <repo>/target/release/keel, keel-bench), KEEL_PORT (default:
#      first free port from 8380), KEEL_RESULT_POLL (client --result-poll), KEEL_STEP=local (the step as a local
#      activity; label keel-MODE-local),
#      KEEL_SDK=0 (skip the SDK harness run), KEEL_BENCH="lat ceil" (keel-bench steps; "" = none),
#      KEEL_BENCH_LAT_N (200), KEEL_BENCH_CEIL_N (5000), KEEL_BENCH_CEIL_C (200), KEEL_REP (rep index
#      stored in the keel-bench lines), FSYNC_COUNT=1 (count fsync-family syscalls machine-wide during
#      FSYNC_N (1000) SDK workflows after FSYNC_WARMUP (200); nothing else is run).
set -euo pipefail
MODE=${1:?usage: run_keel.sh MODE [harness args...]}; shift
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export PEERS=${PEERS:-${TMPDIR:-/tmp}/keel-peers}
export PEERS_HARNESS=${PEERS_HARNESS:-$REPO/../shared/perf/peers}
export PYTHONDONTWRITEBYTECODE=1   # never write __pycache__ next to the shared harness
PY=$PEERS/venv/bin/python
KEEL=${KEEL_BIN:-$REPO/target/release/keel}
KEEL_BENCH_BIN=${KEEL_BENCH_BIN:-$REPO/target/release/keel-bench}
DATA=$PEERS/data/keel-$MODE
case $MODE in
  fsync) ;;
  *) echo "run_keel.sh: unknown mode $MODE (Keel has only 'fsync')" >&2; exit 2 ;;
esac
for f in "$PY" "$KEEL" "$KEEL_BENCH_BIN"; do
  [ -x "$f" ] || { echo "run_keel.sh: $f missing (run benches/peers/compare.sh, or install_peers.sh + cargo build --release -p keel-http -p keel-benches)" >&2; exit 1; }
done
[ -f "$PEERS_HARNESS/harness.py" ] || { echo "run_keel.sh: no harness.py in PEERS_HARNESS=$PEERS_HARNESS" >&2; exit 1; }

KEEL_SCRIPT=run_keel.sh
# shellcheck source=keel_server.sh
source "$HERE/keel_server.sh"
start_keel

"$PY" "$HERE/keel_sdk_bench.py" worker --url "$URL" >"$DATA/worker.log" 2>&1 & WRK=$!
export WATCH_PIDS="server=$SRV,worker=$WRK"
label="keel-$MODE"
cflags=(--url "$URL" --durable-mode "$MODE")
if [ "${KEEL_STEP:-activity}" = local ]; then label="keel-$MODE-local"; cflags+=(--step local); fi
[ -n "${KEEL_RESULT_POLL:-}" ] && cflags+=(--result-poll "$KEEL_RESULT_POLL")

if [ "${FSYNC_COUNT:-0}" = 1 ]; then
  FN=${FSYNC_N:-1000}
  RESULTS="" "$PY" "$HERE/keel_sdk_bench.py" client "${cflags[@]}" --mode throughput -n "${FSYNC_WARMUP:-200}" \
    --reps 1 --warmup 0 --label "$label" >/dev/null
  # Whole machine (-a), as the shared scripts count: `-p PID` can miss threads spawned after attaching.
  # The machine may be shared, so the server process is counted too (-p, all its threads at attach
  # time, after the warm-up has started every long-lived thread).
  ev=syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync,syscalls:sys_enter_sync_file_range
  perf stat -a -e "$ev" -o "$DATA/perf.txt" & PERF=$!
  perf stat -p "$SRV" -e "$ev" -o "$DATA/perf-server.txt" & PERFS=$!
  sleep 0.5
  "$PY" "$HERE/keel_sdk_bench.py" client "${cflags[@]}" --mode throughput -n "$FN" --reps 1 --warmup 0 \
    --label "$label-fsynccount"
  kill -INT $PERF $PERFS; wait $PERF $PERFS || true
  echo "fsync-family syscalls during $FN workflows, whole machine:"; grep syscalls "$DATA/perf.txt"
  echo "and of the keel server process:"; grep syscalls "$DATA/perf-server.txt"
  "$PY" "$HERE/fsync_record.py" "$DATA/perf.txt" --server-perf "$DATA/perf-server.txt" --system keel \
    --label "$label" --n "$FN" >/dev/null
  exit 0
fi

if [ "${KEEL_SDK:-1}" = 1 ]; then
  "$PY" "$HERE/keel_sdk_bench.py" client "${cflags[@]}" --label "$label" "$@"
fi
kb=("$PY" "$HERE/keel_bench_json.py" --bin "$KEEL_BENCH_BIN" --url "$URL" --server-pid "$SRV"
    --durable-mode "$MODE" --rep "${KEEL_REP:-0}")
for step in ${KEEL_BENCH-lat ceil}; do
  case $step in
    lat)
      "${kb[@]}" --kind latency_seq -n 20 -c 1 --label "$label-keelbench" --no-record   # warm-up
      "${kb[@]}" --kind latency_seq -n "${KEEL_BENCH_LAT_N:-200}" -c 1 --label "$label-keelbench" ;;
    ceil)
      "${kb[@]}" --kind throughput -n "${KEEL_BENCH_CEIL_N:-5000}" -c "${KEEL_BENCH_CEIL_C:-200}" \
        --label "$label-keelbench" ;;
    *) echo "run_keel.sh: unknown KEEL_BENCH step $step (lat, ceil)" >&2; exit 2 ;;
  esac
done
du -sh "$DATA/db" | sed 's/^/data dir size: /'
