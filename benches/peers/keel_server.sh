# Sourced by run_keel.sh and run_keel_rust_sdk.sh. `start_keel` starts `keel serve` ($KEEL) with a
# fresh data dir ($DATA/db, log $DATA/server.log) on KEEL_PORT or the first free port from 8380,
# waits for /api/health, and sets PORT, URL and SRV. The EXIT trap it installs stops the server and
# the worker whose pid the caller puts in WRK. Errors name $KEEL_SCRIPT.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
keel_die() { echo "$KEEL_SCRIPT: $*" >&2; exit 1; }

start_keel() {
  PORT=${KEEL_PORT:-}
  if [ -z "$PORT" ]; then
    for p in $(seq 8380 8399); do port_busy "$p" || { PORT=$p; break; }; done
    [ -n "$PORT" ] || keel_die "no free port in 8380-8399"
  elif port_busy "$PORT"; then
    keel_die "127.0.0.1:$PORT is already in use"
  fi
  URL=http://127.0.0.1:$PORT
  rm -rf "$DATA"; mkdir -p "$DATA"
  "$KEEL" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA/db" >"$DATA/server.log" 2>&1 & SRV=$!
  WRK=""
  trap stop_keel EXIT
  for _ in $(seq 1 120); do
    curl -fs "$URL/api/health" >/dev/null 2>&1 && return 0
    kill -0 "$SRV" 2>/dev/null || { tail -20 "$DATA/server.log" >&2; keel_die "keel exited at start"; }
    sleep 0.5
  done
  keel_die "keel not healthy at $URL"
}

stop_keel() {
  [ -n "$WRK" ] && kill "$WRK" 2>/dev/null
  kill "$SRV" 2>/dev/null
  wait 2>/dev/null || true
}
