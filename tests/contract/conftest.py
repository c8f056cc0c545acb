"""Fixtures of the contract stage: one ``keel serve`` for the whole session (tokens
required) and a tally of what it answered, printed at the end."""

from __future__ import annotations

import collections
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Keel  # noqa: E402


def _tolerate_cpython_ast_bug() -> None:
    """Python 3.11.7's ``ast.parse`` can raise ``SystemError: AST constructor recursion
    depth mismatch`` (CPython gh-106905, fixed in later 3.11 releases) when Hypothesis
    parses a module to describe one of schemathesis's lambdas, which is only cosmetic.
    The description falls back to Hypothesis's own ``lambda: <unknown>``."""
    from hypothesis.internal import lambda_sources

    original = lambda_sources._lambda_description

    def describe(f: Any, *args: Any, **kwargs: Any) -> str:
        try:
            return original(f, *args, **kwargs)
        except SystemError:
            return "lambda: <unknown>"

    lambda_sources._lambda_description = describe


_tolerate_cpython_ast_bug()


class Stats:
    """Requests per operation and status, for the summary (and the report)."""

    def __init__(self) -> None:
        self.by_operation: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)

    def record(self, case: Any, response: Any) -> None:
        self.by_operation[case.operation.label][response.status_code] += 1

    def failure(self, case: Any, response: Any, failure: Any) -> None:
        """Survey mode (``CONTRACT_SURVEY``): one JSON line per failure."""
        try:
            body = json.loads(response.content or b"{}")
            reason = body.get("reason")
            fields = sorted(body.get("errors") or {})
        except (ValueError, AttributeError):
            reason, fields = None, []
        line = {
            "operation": case.operation.label,
            "method": response.request.method,
            "path": response.request.url.split("/api", 1)[-1],
            "failure": getattr(failure, "title", type(failure).__name__),
            "status": response.status_code,
            "reason": reason,
            "fields": fields,
            "message": str(getattr(failure, "message", failure))[:400],
        }
        with open(os.environ["CONTRACT_SURVEY"], "a") as out:
            out.write(json.dumps(line) + "\n")

    def summary(self) -> dict[str, Any]:
        statuses: collections.Counter[int] = collections.Counter()
        for counter in self.by_operation.values():
            statuses.update(counter)
        return {
            "operations": len(self.by_operation),
            "requests": sum(statuses.values()),
            "statuses": dict(sorted(statuses.items())),
        }


_STATS = Stats()


@pytest.fixture(scope="session")
def stats() -> Stats:
    return _STATS


@pytest.fixture(scope="session")
def keel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keel]:
    server = Keel(tmp_path_factory.mktemp("keel") / "keel.log")
    try:
        yield server
    finally:
        alive = server.alive()
        code = server.stop()
        assert alive, f"keel exited during the stage:\n{server.log_tail()}"
        assert code == 0, f"keel exited {code} on SIGTERM:\n{server.log_tail()}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    summary = _STATS.summary()
    if summary["requests"]:
        terminalreporter.write_line(f"contract: {json.dumps(summary)}")
