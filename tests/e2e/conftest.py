"""Fixtures for Keel's end-to-end tests (the real binary, over loopback HTTP).

* ``keel``: a started server with default leases; always stopped (SIGTERM,
  which must exit 0) at the end of the test.
* ``keel_factory``: start servers with other options, e.g.
  ``keel_factory(workflow_task_lease_seconds=2, activity_task_lease_seconds=2)``.
* ``api``: a ``RawApi`` (httpx) bound to ``keel``; at the end of the test it
  checks that no request got a 5xx and that ``/api/health`` still answers.

When a test fails, the tail of each of its servers' logs is attached to the
report. The binary is ``$KEEL_BIN`` or ``<repo>/target/debug/keel``; if it is
missing the tests fail (they are never skipped).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import httpx

from keel_harness import E2E_TOKEN, KeelServer, RawApi, expect_status, keel_binary

KeelFactory = Callable[..., KeelServer]


@pytest.fixture(autouse=True, scope="session")
def _send_e2e_token() -> Iterator[None]:
    """With KEEL_E2E_TOKEN set, every httpx client of this process sends it by default
    (the SDK's clients included; a header set per request, e.g. a test's own token,
    still wins)."""
    if not E2E_TOKEN:
        yield
        return
    patched = []
    for cls in (httpx.Client, httpx.AsyncClient):
        original = cls.__init__

        def init(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> None:
            headers = httpx.Headers(kwargs.pop("headers", None) or {})
            headers.setdefault("Authorization", f"Bearer {E2E_TOKEN}")
            __original(self, *args, headers=headers, **kwargs)

        cls.__init__ = init  # type: ignore[method-assign]
        patched.append((cls, original))
    yield
    for cls, original in patched:
        cls.__init__ = original  # type: ignore[method-assign]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call" and report.failed:
        for server in getattr(item, "_keel_servers", ()):
            report.sections.append((f"keel log ({server.log_path})", server.log_tail(120)))


@pytest.fixture
def keel_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeelFactory]:
    binary = keel_binary()
    if not binary.is_file():
        pytest.fail(
            f"keel binary not found at {binary}: build it first (cargo build produces "
            f"target/debug/keel) or set KEEL_BIN to a built binary.",
            pytrace=False,
        )
    servers: list[KeelServer] = []
    request.node._keel_servers = servers

    def start(**options: Any) -> KeelServer:
        index = len(servers)
        server = KeelServer(
            binary=binary,
            data_dir=tmp_path / f"keel-data-{index}",
            log_path=tmp_path / f"keel-{index}.log",
            **options,
        )
        servers.append(server)
        return server.start()

    yield start

    problems: list[str] = []
    for server in servers:
        try:
            server.stop()
        except AssertionError as error:
            problems.append(str(error))
        else:
            server.clear_storage()
    if problems:
        pytest.fail("keel did not shut down cleanly:\n" + "\n\n".join(problems), pytrace=False)


@pytest.fixture
def keel(keel_factory: KeelFactory) -> KeelServer:
    return keel_factory()


@pytest.fixture
def api(keel: KeelServer) -> Iterator[RawApi]:
    with RawApi(keel.url) as client:
        yield client
        server_errors = client.server_errors()
        assert not server_errors, "requests answered with a 5xx:\n" + "\n".join(server_errors)
        if keel.running:
            expect_status(client.health(), 200, "GET /api/health after the test")
