#!/usr/bin/env bash
# Keel vs Restate (and optionally the Temporal dev server), same machine, same run, same Python harness
# (../shared/perf/peers/harness.py), same workload: N workflows of one activity each, C in flight.
# Plus an SDK-to-SDK row pair, both sides driven from Rust by each system's own Rust SDK: Keel via the
# official Rust SDK (tests/sdk-rust keel-rust-sdk-bench: SDK worker + SDK client, result poll 50 ms)
# and Restate via its Rust SDK (../shared/perf/peers/restate-native, used in place: its endpoint and
# driver are built into $PEERS/restate-native-target and its run script is run through a symlink).
# Installs what is missing into $PEERS, builds Keel (release), runs the systems interleaved per
# repetition (Restate, Keel, Keel local-activity step, Restate native, Keel Rust SDK, Restate native
# at keel-bench's N and C[, Temporal]; again ...), counts fsyncs, and prints a table of ratios,
# including server to server with native drivers: keel-bench ÷ Restate via its Rust SDK.
#
#   bash benches/peers/compare.sh [--quick] [--reps R] [--with-temporal] [--no-build] [--no-fsync-count]
#                                 [--keel-bin PATH] [--only-rust-sdk | --no-rust-sdk]
#
#   default          N=1000, C=100, warm-up 200, 3 reps; Restate sequential latency 200 runs per rep;
#                    keel-bench latency (C=1, 200) and ceiling (5000, C=200) per rep; fsync counts
#                    (1000 workflows after a 200 warm-up) for Keel and Restate once at the end
#   --quick          smoke test: N=300, 1 rep, warm-up 100, latency 100 runs, keel-bench ceiling 300 at
#                    C=100, Keel fsync count over 300 workflows, no Restate fsync count (its script is
#                    fixed at 1000 workflows)
#   --with-temporal  also the Temporal dev server, SQLite file (durable), N=200, latency 50 runs per rep
#                    (quick: N=50, latency 20): it does ~8 wf/s
#   --no-build       use the existing binaries (Keel, keel-bench, keel-rust-sdk-bench, restate-native)
#   --no-fsync-count skip the perf-stat fsync counts
#   --keel-bin PATH  benchmark this `keel` binary (and the keel-bench next to it) and do not build Keel
#                    here, e.g. one built from a clean worktree of HEAD: git worktree add /tmp/keel-bench-wt
#                    HEAD && (cd /tmp/keel-bench-wt && cargo build --release -p keel-http -p keel-benches);
#                    same as env KEEL_BIN (KEEL_BENCH_BIN overrides the keel-bench next to it)
#   --only-rust-sdk  only the SDK-to-SDK row pair (Keel via its Rust SDK, Restate via its Rust SDK)
#   --no-rust-sdk    without that row pair
# Env: PEERS (default ${TMPDIR:-/tmp}/keel-peers), PEERS_HARNESS (default <repo>/../shared/perf/peers),
#      KEEL_BIN, KEEL_BENCH_BIN, RUST_SDK_BENCH_BIN (default <repo>/target/sdk-rust/release/keel-rust-sdk-bench),
#      RUST_SDK_RESULT_POLL_MS (the Keel Rust SDK client's result poll interval, default 50; the SDK's
#      default is 500).
# Output: $PEERS/out/compare-<timestamp>.jsonl (every result line), .md (the table), and a folder of logs.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export PEERS=${PEERS:-${TMPDIR:-/tmp}/keel-peers}
export PEERS_HARNESS=${PEERS_HARNESS:-$REPO/../shared/perf/peers}
export PYTHONDONTWRITEBYTECODE=1   # never write __pycache__ next to the shared harness

QUICK=0 REPS="" WITH_TEMPORAL=0 BUILD=1 FSYNC=1 ROWS=all
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --reps) REPS=${2:?--reps needs a number}; shift ;;
    --with-temporal) WITH_TEMPORAL=1 ;;
    --no-build) BUILD=0 ;;
    --no-fsync-count) FSYNC=0 ;;
    --keel-bin) KEEL_BIN=${2:?--keel-bin needs a path}; shift ;;
    --only-rust-sdk) ROWS=rust-sdk ;;
    --no-rust-sdk) ROWS=python ;;
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
PY_ROWS=1 RS_ROWS=1
[ "$ROWS" = rust-sdk ] && PY_ROWS=0
[ "$ROWS" = python ] && RS_ROWS=0
# Keel under test: --keel-bin / KEEL_BIN (not built here), else this repository's target/release.
KEEL_BIN_GIVEN=0
if [ -n "${KEEL_BIN:-}" ]; then
  KEEL_BIN_GIVEN=1
  KEEL_BIN=$(cd "$(dirname "$KEEL_BIN")" && pwd)/$(basename "$KEEL_BIN")
  KEEL_BENCH_BIN=${KEEL_BENCH_BIN:-$(dirname "$KEEL_BIN")/keel-bench}
fi
export KEEL_BIN=${KEEL_BIN:-$REPO/target/release/keel}
export KEEL_BENCH_BIN=${KEEL_BENCH_BIN:-$REPO/target/release/keel-bench}
export RUST_SDK_BENCH_BIN=${RUST_SDK_BENCH_BIN:-$REPO/target/sdk-rust/release/keel-rust-sdk-bench}
RS_NATIVE_SRC=$PEERS_HARNESS/restate-native
RS_NATIVE_TARGET=$PEERS/restate-native-target
# The shared run_restate_native.sh runs its binaries from <its dir>/target/release: run it through a
# symlink in a directory of ours whose `target` points at $RS_NATIVE_TARGET (the script is unchanged).
RS_NATIVE_SHIM=$PEERS/restate-native-shim
if [ "$RS_ROWS" = 1 ]; then
  [ -f "$RS_NATIVE_SRC/run_restate_native.sh" ] || {
    echo "compare.sh: no restate-native harness at $RS_NATIVE_SRC" >&2; exit 1; }
fi

say() { printf '\n== %s: %s\n' "$(date +%H:%M:%S)" "$*"; }
say "installing into $PEERS (skipped where present)"
tflag=(); [ "$WITH_TEMPORAL" = 1 ] && tflag=(--with-temporal)
bash "$HERE/install_peers.sh" "${tflag[@]}" || { echo "compare.sh: install failed" >&2; exit 1; }
if [ "$BUILD" = 1 ] && [ "$KEEL_BIN_GIVEN" = 0 ]; then
  say "cargo build --release -p keel-http -p keel-benches"
  (cd "$REPO" && cargo build --release --quiet -p keel-http -p keel-benches) || {
    echo "compare.sh: Keel build failed" >&2; exit 1; }
fi
say "Keel under test: $KEEL_BIN"
if [ "$RS_ROWS" = 1 ]; then
  if [ "$BUILD" = 1 ] || [ ! -x "$RUST_SDK_BENCH_BIN" ]; then
    say "cargo build --release keel-rust-sdk-bench (tests/sdk-rust, target/sdk-rust)"
    CARGO_TARGET_DIR=$REPO/target/sdk-rust cargo build --release --quiet \
      --manifest-path "$REPO/tests/sdk-rust/Cargo.toml" --bin keel-rust-sdk-bench || {
      echo "compare.sh: keel-rust-sdk-bench build failed" >&2; exit 1; }
  fi
  if [ "$BUILD" = 1 ] || [ ! -x "$RS_NATIVE_TARGET/release/restate-driver" ]; then
    say "cargo build --release $RS_NATIVE_SRC (target $RS_NATIVE_TARGET)"
    CARGO_TARGET_DIR=$RS_NATIVE_TARGET cargo build --release --quiet --locked \
      --manifest-path "$RS_NATIVE_SRC/Cargo.toml" || {
      echo "compare.sh: restate-native build failed" >&2; exit 1; }
  fi
  mkdir -p "$RS_NATIVE_SHIM"
  ln -sfn "$RS_NATIVE_SRC/run_restate_native.sh" "$RS_NATIVE_SHIM/run_restate_native.sh"
  ln -sfn "$RS_NATIVE_TARGET" "$RS_NATIVE_SHIM/target"
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
  if [ "$PY_ROWS" = 1 ]; then
    run "rep$r-restate-default" bash "$PEERS_HARNESS/run_restate.sh" default --mode both -n "$N" -c "$C" \
      --lat-n "$LAT_N" --lat-gap-ms 0 --warmup "$W" --reps 1
    run "rep$r-keel-fsync" env KEEL_REP="$r" KEEL_BENCH_LAT_N="$KB_LAT_N" KEEL_BENCH_CEIL_N="$KB_CEIL_N" \
      KEEL_BENCH_CEIL_C="$KB_CEIL_C" bash "$HERE/run_keel.sh" fsync --mode throughput -n "$N" -c "$C" \
      --warmup "$W" --reps 1
    # The same workflow with its step as a local activity: Restate's `ctx.run` step is also
    # run inline by the endpoint and journaled, not dispatched as a separate task.
    run "rep$r-keel-fsync-local" env KEEL_REP="$r" KEEL_STEP=local KEEL_BENCH="" \
      bash "$HERE/run_keel.sh" fsync --mode throughput -n "$N" -c "$C" --warmup "$W" --reps 1
  fi
  if [ "$RS_ROWS" = 1 ]; then
    # SDK to SDK, both driven from Rust: Restate via its Rust SDK (endpoint + driver), Keel via the
    # official Rust SDK (worker + client). Server CPU from /proc/PID/stat utime+stime deltas in both.
    run "rep$r-restate-native" bash "$RS_NATIVE_SHIM/run_restate_native.sh" --no-build --mode throughput \
      --n "$N" --concurrency "$C" --warmup "$W" --reps 1
    run "rep$r-keel-rust-sdk" bash "$HERE/run_keel_rust_sdk.sh" --n "$N" --concurrency "$C" --warmup "$W" \
      --reps 1 --result-poll-ms "${RUST_SDK_RESULT_POLL_MS:-50}"
    # Server to server, both driven natively (issue #18 §3): Restate via its Rust SDK at keel-bench's
    # ceiling N and C, and its sequential latency, beside the keel-bench rows of run_keel.sh.
    run "rep$r-restate-native-ceiling" bash "$RS_NATIVE_SHIM/run_restate_native.sh" --no-build --mode both \
      --n "$KB_CEIL_N" --concurrency "$KB_CEIL_C" --warmup "$W" --latency-n "$KB_LAT_N" --reps 1
  fi
  if [ "$WITH_TEMPORAL" = 1 ]; then
    run "rep$r-temporal-file" bash "$PEERS_HARNESS/run_temporal.sh" file --mode both -n "$T_N" -c "$C" \
      --lat-n "$T_LAT" --lat-gap-ms 0 --warmup "$T_W" --reps 1
  fi
done

if [ "$FSYNC" = 1 ] && [ "$PY_ROWS" = 1 ]; then
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
