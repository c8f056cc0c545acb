#!/usr/bin/env bash
# Create (or reuse) the virtualenv of the contract stage (tests/contract): the OpenAPI
# fuzzer schemathesis, pinned, and pytest (which it brings). Its own venv, apart from the
# SDK's .venv, so neither pins the other's dependencies.
#
#   scripts/setup-contract.sh            # creates $REPO/.venv-contract
#   scripts/contract                     # runs the stage
#
# Idempotent: when the venv already imports schemathesis at the pinned version, nothing
# is installed.
#
# Environment:
#   PYTHON        interpreter used to create the venv (default: python3.11 if present,
#                 else python3)
set -euo pipefail

SCHEMATHESIS_VERSION="4.32.5"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv-contract"

if [[ -z "${PYTHON:-}" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then
        PYTHON=python3.11
    else
        PYTHON=python3
    fi
fi

venv_is_ready() {
    [[ -x "$VENV/bin/python" ]] || return 1
    "$VENV/bin/python" - "$SCHEMATHESIS_VERSION" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version

import pytest  # noqa: F401
import schemathesis  # noqa: F401
import yaml  # noqa: F401

sys.exit(0 if version("schemathesis") == sys.argv[1] else 1)
PY
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

"$VENV/bin/python" -m pip --quiet --disable-pip-version-check install \
    "schemathesis==$SCHEMATHESIS_VERSION" pyyaml

if ! venv_is_ready; then
    echo "setup-contract: $VENV was set up but cannot import schemathesis==$SCHEMATHESIS_VERSION, pytest and yaml" >&2
    exit 1
fi
