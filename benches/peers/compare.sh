#!/usr/bin/env bash
# Keel vs Restate (and optionally the Temporal dev server), same machine, same run, same Python harness
# (../shared/perf/peers/harness.py), same workload: N workflows of one activity each, C in flight.
# Installs what is missing into $PEERS, builds Keel (release), runs the systems interleaved per
# repetition (Restate, Keel[, Temporal]; again ...), counts fsyncs, and prints a table of ratios.
#
#   bash benches/peers/compare.sh [--quick] [--reps R] [--with-temporal] [--no-build] [--no-fsync-count]
#
#   default          N=1000, C=100, warm-up 200, 3 reps; Restate sequential latency 200 runs per rep;
#                    keel-bench latency (C=1, 200) and ceiling (5000, C=200) per rep; fsync counts
#                    (1000 workflows after a 200 warm-up) for Keel and Restate once at the end
#   --quick          smoke test: N=300, 1 rep, warm-up 100, latency 100 runs, keel-bench ceiling 300 at
#                    C=100, Keel fsync count over 300 workflows, no Restate fsync count (its script is
#                    fixed at 1000 workflows)
#   --with-temporal  also the Temporal dev server, SQLite file (durable), N=200, latency 50 runs per rep
#                    (quick: N=50, latency 20): it does ~8 wf/s
#   --no-build       use the existing target/release/keel and keel-bench
#   --no-fsync-count skip the perf-stat fsync counts
# Env: PEERS (default ${TMPDIR:-/tmp}/keel-peers), PEERS_HARNESS (default <repo>/../shared/perf/peers).
# Output: $PEERS/out/compare-<timestamp>.jsonl (every result line), .md (the table), and a folder of logs.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export PEERS=${PEERS:-${TMPDIR:-/tmp}/keel-peers}
export PEERS_HARNESS=${PEERS_HARNESS:-$REPO/../shared/perf/peers}
export PYTHONDONTWRITEBYTECODE=1   # never write __pycache__ next to the shared harness

QUICK=0 REPS="" WITH_TEMPORAL=0 BUILD=1 FSYNC=1
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --reps) REPS=${2:?--reps needs a number}; shift ;;
    --with-temporal) WITH_TEMPORAL=1 ;;
    --no-build) BUILD=0 ;;
    --no-fsync-count) FSYNC=0 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$QUICK" = 1 ]; then
  N=300 W=100 LAT_N=100 KB_LAT_N=100 KB_CEIL_N=300 KB_CEIL_C=100 T_N=50 T_LAT=20 T_W=10 FS_N=300 FS_W=100
  REPS=${REPS:-1}
else
  N=1000 W=200 LAT_N=200 KB_LAT_N=200 KB_CEIL_N=5000 KB_CEIL_C=200 T_N=200 T_LAT=50 T_W=20 FS_N=1000 FS_W=200
  REPS=${REPS:-3}
fi
C=100

[ -f "$PEERS_HARNESS/harness.py" ] && [ -f "$PEERS_HARNESS/run_restate.sh" ] || {
  echo "compare.sh: the shared peer harness is not at PEERS_HARNESS=$PEERS_HARNESS" >&2; exit 1; }

say() { printf '\n== %s: %s\n' "$(date +%H:%M:%S)" "$*"; }
say "installing into $PEERS (skipped where present)"
tflag=(); [ "$WITH_TEMPORAL" = 1 ] && tflag=(--with-temporal)
bash "$HERE/install_peers.sh" "${tflag[@]}" || { echo "compare.sh: install failed" >&2; exit 1; }
if [ "$BUILD" = 1 ]; then
  say "cargo build --release -p keel-http -p keel-benches"
  (cd "$REPO" && cargo build --release --quiet -p keel-http -p keel-benches) || {
    echo "compare.sh: Keel build failed" >&2; exit 1; }
fi

# Restate binds fixed ports (ingress 8080, admin 9070, node 5122; its SDK endpoint 9080; Temporal 7233).
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports=(8080 9070 9080 5122); [ "$WITH_TEMPORAL" = 1 ] && ports+=(7233)
for p in "${ports[@]}"; do
  port_busy "$p" && { echo "compare.sh: 127.0.0.1:$p is in use; Restate/Temporal need it" >&2; exit 1; }
done

TS=$(date +%Y%m%d-%H%M%S)
OUT=$PEERS/out; mkdir -p "$OUT/compare-$TS"
export RESULTS=$OUT/compare-$TS.jsonl
LOGS=$OUT/compare-$TS
: >"$RESULTS"
FAILED=()
run() {  # run NAME CMD...: log to $LOGS/NAME.log, keep going on failure
  local name=$1; shift
  say "$name"
  "$@" 2>&1 | tee -a "$LOGS/$name.log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" != 0 ]; then
    echo "!! $name failed (exit $rc); log: $LOGS/$name.log" >&2
    FAILED+=("$name")
  fi
  return 0
}
START=$SECONDS
say "N=$N C=$C warm-up $W, $REPS rep(s), interleaved; results -> $RESULTS"
for r in $(seq 1 "$REPS"); do
  run "rep$r-restate-default" bash "$PEERS_HARNESS/run_restate.sh" default --mode both -n "$N" -c "$C" \
    --lat-n "$LAT_N" --lat-gap-ms 0 --warmup "$W" --reps 1
  run "rep$r-keel-fsync" env KEEL_REP="$r" KEEL_BENCH_LAT_N="$KB_LAT_N" KEEL_BENCH_CEIL_N="$KB_CEIL_N" \
    KEEL_BENCH_CEIL_C="$KB_CEIL_C" bash "$HERE/run_keel.sh" fsync --mode throughput -n "$N" -c "$C" \
    --warmup "$W" --reps 1
  # The same workflow with its step as a local activity: Restate's `ctx.run` step is also
  # run inline by the endpoint and journaled, not dispatched as a separate task.
  run "rep$r-keel-fsync-local" env KEEL_REP="$r" KEEL_STEP=local KEEL_BENCH="" \
    bash "$HERE/run_keel.sh" fsync --mode throughput -n "$N" -c "$C" --warmup "$W" --reps 1
  if [ "$WITH_TEMPORAL" = 1 ]; then
    run "rep$r-temporal-file" bash "$PEERS_HARNESS/run_temporal.sh" file --mode both -n "$T_N" -c "$C" \
      --lat-n "$T_LAT" --lat-gap-ms 0 --warmup "$T_W" --reps 1
  fi
done

if [ "$FSYNC" = 1 ]; then
  if perf stat -a -e syscalls:sys_enter_fdatasync true >/dev/null 2>&1; then
    run "fsync-keel-fsync" env FSYNC_COUNT=1 FSYNC_N="$FS_N" FSYNC_WARMUP="$FS_W" bash "$HERE/run_keel.sh" fsync
    if [ "$QUICK" = 0 ]; then
      # run_restate.sh's FSYNC_COUNT mode writes its 200-workflow warm-up line too: keep that out of $RESULTS
      run "fsync-restate-default" env FSYNC_COUNT=1 RESULTS="$LOGS/restate-fsync-side.jsonl" \
        bash "$PEERS_HARNESS/run_restate.sh" default
      if [ -f "$PEERS/data/restate-default/perf.txt" ]; then
        "$PEERS/venv/bin/python" "$HERE/fsync_record.py" "$PEERS/data/restate-default/perf.txt" \
          --system restate --label restate-default --n 1000 >/dev/null || FAILED+=("fsync-restate-record")
      fi
    fi
  else
    echo "compare.sh: perf stat cannot count syscalls here (needs root and tracepoints); no fsync counts" >&2
  fi
fi

say "done in $(( (SECONDS - START) / 60 )) min $(( (SECONDS - START) % 60 )) s; table:"
echo
"$PEERS/venv/bin/python" "$HERE/compare_table.py" "$RESULTS" | tee "$OUT/compare-$TS.md"
echo
echo "results: $RESULTS"
echo "table:   $OUT/compare-$TS.md"
echo "logs:    $LOGS/"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "FAILED steps: ${FAILED[*]}" >&2
  exit 1
fi
