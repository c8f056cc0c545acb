#!/usr/bin/env bash
# Create (or reuse) the project-local Python venv used by the end-to-end tests
# in tests/e2e: pytest, pytest-timeout, jsonschema (cluster/info is validated against
# the upstream envelope schema), selenium (the web console's browser test drives Debian's
# chromedriver, scripts/setup-browser.sh) and the durable-workflow Python SDK.
#
#   bash scripts/setup-venv.sh            # creates $REPO/.venv
#   .venv/bin/pytest tests/e2e -q
#
# Idempotent: when the venv already imports the SDK at the pinned version and
# pytest (with pytest-timeout), nothing is installed.
#
# Environment:
#   PYTHON        interpreter used to create the venv (default: python3.11 if
#                 present, else python3)
set -euo pipefail

SDK_VERSION="2.12.0"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"

if [[ -z "${PYTHON:-}" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then
        PYTHON=python3.11
    else
        PYTHON=python3
    fi
fi

venv_is_ready() {
    [[ -x "$VENV/bin/python" ]] || return 1
    "$VENV/bin/python" - "$SDK_VERSION" >/dev/null 2>&1 <<'EOF'
import sys
from importlib.metadata import version

import durable_workflow  # noqa: F401
import jsonschema  # noqa: F401
import pytest  # noqa: F401
import pytest_timeout  # noqa: F401
import selenium  # noqa: F401
import sniffio  # noqa: F401

sys.exit(0 if version("durable-workflow") == sys.argv[1] else 1)
EOF
}

if venv_is_ready; then
    exit 0
fi

# A venv whose interpreter no longer runs (e.g. the base Python moved) is rebuilt.
if [[ -e "$VENV" ]] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$VENV"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi

PIP=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)
# durable-workflow 2.12.0 pins certifi>=2026.10.19, which the registry may not
# have; install its real dependencies first and the SDK itself without deps.
# sniffio: without it httpcore retries a failing `import sniffio` on every request,
# about a third of the SDK client's CPU.
"${PIP[@]}" install httpx "fastavro>=1.12.2,<2" certifi sniffio pytest pytest-timeout jsonschema \
    "selenium>=4.20,<5"
"${PIP[@]}" install --no-deps "durable-workflow==$SDK_VERSION"

if ! venv_is_ready; then
    echo "setup-venv: $VENV was set up but cannot import durable_workflow==$SDK_VERSION, jsonschema, pytest, pytest_timeout and selenium" >&2
    exit 1
fi
