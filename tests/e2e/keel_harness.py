"""Shared helpers for Keel's end-to-end tests.

* ``KeelServer`` runs the real ``keel serve`` binary on a free loopback port
  with its own data dir, and can stop it (SIGTERM), kill it (SIGKILL) and start
  it again on the same data dir and port.
* ``RawApi`` is a small synchronous httpx client that adds the right protocol
  headers for the control plane and the worker plane.
* ``wait_until`` / ``async_wait_until`` poll a predicate until a deadline.
  Tests never sleep a fixed time to "wait for things".
* ``running_worker`` and ``wait_for_results`` run the real Python SDK worker
  and wait for workflow results with deadlines.

Fixtures that use these live in ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BINARY = REPO_ROOT / "target" / "debug" / "keel"

# When set, every server the suite starts requires this bearer token (roles admin and
# worker) unless a test configures its own KEEL_TOKENS, and conftest.py makes every HTTP
# client of the test process (the SDK's included) send it: the whole suite then runs
# with authentication on. `KEEL_E2E_TOKEN=... pytest tests/e2e`.
E2E_TOKEN = os.environ.get("KEEL_E2E_TOKEN") or None

CONTROL_PLANE_VERSION = "2"
WORKER_PROTOCOL_VERSION = "1.20"
NAMESPACE = "default"

CONTROL_HEADERS = {
    "X-Durable-Workflow-Control-Plane-Version": CONTROL_PLANE_VERSION,
    "X-Namespace": NAMESPACE,
    "Accept": "application/json",
}
WORKER_HEADERS = {
    "X-Durable-Workflow-Protocol-Version": WORKER_PROTOCOL_VERSION,
    "X-Namespace": NAMESPACE,
    "Accept": "application/json",
}

# Avro single-object encoding of the argument list ["world"] (sdk-protocol.md §3.2).
WORLD_INPUT = {"codec": "avro", "blob": "wwHioz3/VYAiNwwCCgp3b3JsZAA="}

# The backend every server of the suite runs on: unset or ``rocksdb`` for RocksDB in the
# server's data dir (the default), or ``fdb:CLUSTER_FILE`` for FoundationDB, each server
# in a subspace of its own (``e2e-<id>``, kept across its restarts and cleared at its
# end). `KEEL_E2E_STORAGE=fdb:/path/fdb.cluster pytest tests/e2e` with a binary built
# `--features fdb`. Tests of one backend's mechanics skip on the other with a reason.
E2E_STORAGE = os.environ.get("KEEL_E2E_STORAGE") or "rocksdb"
if not (E2E_STORAGE == "rocksdb" or E2E_STORAGE.startswith("fdb:")):
    raise ValueError(f"KEEL_E2E_STORAGE={E2E_STORAGE!r}: expected rocksdb or fdb:CLUSTER_FILE")
ON_FDB = E2E_STORAGE.startswith("fdb:")

T = TypeVar("T")


def unique(prefix: str) -> str:
    """A short unique name, e.g. for a workflow id or a task queue."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# ── polling with deadlines ────────────────────────────────────────────────


class WaitTimeout(AssertionError):
    """A ``wait_until`` deadline passed before its predicate held."""


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something
    truthy, and return that value. Raise ``WaitTimeout`` naming ``what`` once
    ``timeout`` seconds have passed. Exceptions from the predicate propagate."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what} (last value: {last!r})")
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], Awaitable[T] | T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.1,
) -> T:
    """``wait_until`` for async code: ``predicate`` may be a coroutine function."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if loop.time() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what} (last value: {last!r})")
        await asyncio.sleep(interval)


# ── the server process ────────────────────────────────────────────────────


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def keel_binary() -> Path:
    return Path(os.environ.get("KEEL_BIN") or DEFAULT_BINARY).absolute()


_LIVE_PROCESSES: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftover_servers() -> None:
    # Last resort if a test run is interrupted: never leave a server behind.
    for proc in list(_LIVE_PROCESSES):
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)


class KeelServer:
    """One ``keel serve`` process on a fixed loopback port and data dir.

    Output (stdout and stderr) of every start goes to one log file, with a
    marker line before each start, so a failure can show what happened across
    restarts.
    """

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        *,
        binary: Path | None = None,
        workflow_task_lease_seconds: int = 30,
        activity_task_lease_seconds: int = 30,
        startup_timeout: float | None = None,
        shutdown_timeout: float = 20.0,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        fdb_subspace: str | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.binary = Path(binary) if binary is not None else keel_binary()
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path)
        self.workflow_task_lease_seconds = workflow_task_lease_seconds
        self.activity_task_lease_seconds = activity_task_lease_seconds
        self.startup_timeout = (
            startup_timeout
            if startup_timeout is not None
            else float(os.environ.get("KEEL_E2E_STARTUP_TIMEOUT", "30"))
        )
        self.shutdown_timeout = shutdown_timeout
        # Extra `keel serve` flags, and environment variables for the process (e.g.
        # KEEL_TOKENS). KEEL_TOKENS from the test runner's own environment never leaks in.
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.port = free_loopback_port()
        # On FoundationDB, this server's subspace (see E2E_STORAGE): its own unless
        # ``fdb_subspace`` names another server's (several nodes, one store); None on RocksDB.
        self.fdb_subspace = (fdb_subspace or f"e2e-{uuid.uuid4().hex[:16]}") if ON_FDB else None
        # A server started with --tls-cert/--tls-key (in ``extra_args``): its URL is
        # https, and start-up health checks trust the server (and present a client
        # certificate) through this context.
        self.tls_context = tls_context
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        # True once the process's end is expected (kill9) or already reported.
        self._exit_accounted_for = False

    # The SDK wants the origin without /api; RawApi adds /api itself.
    @property
    def url(self) -> str:
        scheme = "https" if self.tls_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def storage_args(self) -> list[str]:
        if self.fdb_subspace is None:
            return ["--data-dir", str(self.data_dir)]
        # The `local` payload driver's directory lives in the data dir on RocksDB only.
        payload_dir = [] if "--payload-dir" in self.extra_args else ["--payload-dir", str(self.data_dir / "payloads")]
        return ["--storage", E2E_STORAGE, "--fdb-subspace", self.fdb_subspace, *payload_dir]

    def command(self) -> list[str]:
        return [
            str(self.binary),
            "serve",
            "--listen", f"127.0.0.1:{self.port}",
            *self.storage_args(),
            "--workflow-task-lease-seconds", str(self.workflow_task_lease_seconds),
            "--activity-task-lease-seconds", str(self.activity_task_lease_seconds),
            *self.extra_args,
        ]

    def check_binary(self) -> None:
        if not self.binary.is_file():
            raise AssertionError(
                f"keel binary not found at {self.binary}. Build it first (cargo build, which "
                f"produces target/debug/keel) or point KEEL_BIN at a built binary."
            )
        if not os.access(self.binary, os.X_OK):
            raise AssertionError(f"keel binary at {self.binary} is not executable")

    def start(self) -> KeelServer:
        """Start the process and wait until ``/api/health`` says it is serving."""
        if self.running:
            raise AssertionError("KeelServer.start(): the server is already running")
        self.check_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        command = self.command()
        with self.log_path.open("ab") as log:
            log.write(f"\n===== e2e: start #{self.starts}: {' '.join(command)}\n".encode())
            log.flush()
            env = dict(os.environ)
            env.pop("KEEL_TOKENS", None)
            env.pop("KEEL_E2E_TOKEN", None)
            if E2E_TOKEN:
                env["KEEL_TOKENS"] = f"admin+worker:{E2E_TOKEN}"
            env.update(self.env)
            env.setdefault("RUST_BACKTRACE", "1")
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir.parent,
                env=env,
            )
        _LIVE_PROCESSES.add(self.proc)
        self._exit_accounted_for = False
        self._wait_until_serving()
        return self

    def _wait_until_serving(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        last_problem = "no answer yet"
        verify: ssl.SSLContext | bool = self.tls_context if self.tls_context is not None else True
        with httpx.Client(timeout=1.0, verify=verify) as http:
            while True:
                code = self.proc.poll()
                if code is not None:
                    self._exit_accounted_for = True  # reported here; teardown need not repeat it
                    raise AssertionError(
                        f"keel exited with status {code} during startup (start #{self.starts})\n"
                        f"{self.log_tail()}"
                    )
                try:
                    response = http.get(f"{self.url}/api/health")
                    if response.status_code == 200 and _json_or_none(response).get("status") == "serving":
                        return
                    last_problem = f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as error:
                    last_problem = f"{type(error).__name__}: {error}"
                if time.monotonic() >= deadline:
                    self._exit_accounted_for = True
                    self._force_kill()
                    raise AssertionError(
                        f"keel did not report healthy on {self.url}/api/health within "
                        f"{self.startup_timeout:g}s (last: {last_problem})\n{self.log_tail()}"
                    )
                time.sleep(0.05)

    def stop(self, timeout: float | None = None) -> int:
        """Graceful shutdown: SIGTERM, then wait. Fails (after killing the
        process) if it does not exit in time or exits with a non-zero status,
        and also if the process had already died without ``kill9()``."""
        if self.proc is None:
            return 0
        if self.proc.poll() is not None and self._exit_accounted_for:
            return self.proc.returncode
        timeout = self.shutdown_timeout if timeout is None else timeout
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._force_kill()
                raise AssertionError(
                    f"keel did not exit within {timeout:g}s of SIGTERM; killed it\n{self.log_tail()}"
                ) from None
        code = self.proc.returncode
        _LIVE_PROCESSES.discard(self.proc)
        if code != 0:
            raise AssertionError(
                f"keel exited with status {code} (expected 0 after SIGTERM)\n{self.log_tail()}"
            )
        return code

    def kill9(self) -> None:
        """Crash the server: SIGKILL and wait for the process to be gone."""
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"kill9(): keel is not running\n{self.log_tail()}")
        self._exit_accounted_for = True
        self._force_kill()
        with self.log_path.open("ab") as log:
            log.write(b"\n===== e2e: sent SIGKILL\n")

    def restart(
        self,
        *,
        workflow_task_lease_seconds: int | None = None,
        activity_task_lease_seconds: int | None = None,
    ) -> KeelServer:
        """Start again on the same data dir and port (stopping gracefully first
        if still running). Lease settings may be changed for the new process."""
        if self.running:
            self.stop()
        if workflow_task_lease_seconds is not None:
            self.workflow_task_lease_seconds = workflow_task_lease_seconds
        if activity_task_lease_seconds is not None:
            self.activity_task_lease_seconds = activity_task_lease_seconds
        return self.start()

    def clear_storage(self) -> None:
        """Delete this server's FoundationDB subspace (its keys only: the tuple encoding
        ends with a terminator, so no other subspace shares the prefix). Needs ``fdbcli``
        on PATH or in KEEL_FDB_BIN_DIR; without it the subspace is left (and said so)."""
        if self.fdb_subspace is None or self.running:
            return
        fdbcli = shutil.which("fdbcli", path=os.environ.get("KEEL_FDB_BIN_DIR") or None) or shutil.which("fdbcli")
        if fdbcli is None:
            print(f"e2e: fdbcli not found; FoundationDB subspace {self.fdb_subspace} left in place")
            return
        prefix = "\\x02" + self.fdb_subspace + "\\x00"
        subprocess.run(
            [fdbcli, "-C", E2E_STORAGE.removeprefix("fdb:"), "--exec", f"writemode on; clearrange {prefix} {prefix}\\xff"],
            check=True, capture_output=True, timeout=60,
        )

    def _force_kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired as error:  # pragma: no cover - kernel trouble
                raise AssertionError(f"keel (pid {self.proc.pid}) survived SIGKILL for 10s") from error
        _LIVE_PROCESSES.discard(self.proc)

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return f"(no keel log at {self.log_path})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"----- last {lines} lines of {self.log_path} -----\n{tail}\n----- end of keel log -----"


def _json_or_none(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


# ── raw HTTP ──────────────────────────────────────────────────────────────


def start_workflow_body(
    workflow_id: str,
    workflow_type: str,
    task_queue: str,
    **extra: Any,
) -> dict[str, Any]:
    """A ``POST /api/workflows`` body as the SDK sends it, with input ["world"]."""
    body: dict[str, Any] = {
        "workflow_id": workflow_id,
        "workflow_type": workflow_type,
        "task_queue": task_queue,
        "input": WORLD_INPUT,
        "execution_timeout_seconds": 3600,
        "run_timeout_seconds": 600,
    }
    body.update(extra)
    return body


class RawApi:
    """Synchronous httpx client for ``{server}/api``.

    ``control()`` adds the control-plane headers, ``worker()`` the worker
    protocol headers, and ``request()`` adds nothing (for header tests).
    Every response is remembered in ``responses`` so a test can check that
    none was a 5xx.
    """

    def __init__(self, server_url: str, *, timeout: float = 30.0) -> None:
        self.responses: list[httpx.Response] = []
        self.http = httpx.Client(
            base_url=f"{server_url}/api",
            timeout=timeout,
            event_hooks={"response": [self.responses.append]},
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RawApi:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, **kwargs)

    def control(self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, headers={**CONTROL_HEADERS, **(headers or {})}, **kwargs)

    def worker(self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, headers={**WORKER_HEADERS, **(headers or {})}, **kwargs)

    def server_errors(self) -> list[str]:
        return [
            f"{r.request.method} {r.request.url.path} -> {r.status_code} {r.text[:300]}"
            for r in self.responses
            if r.status_code >= 500
        ]

    # Conveniences. Each asserts the call succeeded, with the body on failure.

    def health(self) -> httpx.Response:
        return self.http.get("/health")

    def start_workflow(self, workflow_id: str, workflow_type: str, task_queue: str, **extra: Any) -> dict[str, Any]:
        response = self.control("POST", "/workflows", json=start_workflow_body(workflow_id, workflow_type, task_queue, **extra))
        expect_status(response, 201, f"start workflow {workflow_id}")
        return response.json()

    def describe_workflow(self, workflow_id: str) -> dict[str, Any]:
        response = self.control("GET", f"/workflows/{workflow_id}")
        expect_status(response, 200, f"describe workflow {workflow_id}")
        return response.json()

    def register_worker(
        self,
        worker_id: str,
        task_queue: str,
        *,
        workflow_types: Sequence[str] = (),
        activity_types: Sequence[str] = (),
    ) -> dict[str, Any]:
        response = self.worker(
            "POST",
            "/worker/register",
            json={
                "worker_id": worker_id,
                "task_queue": task_queue,
                "runtime": "python",
                "supported_workflow_types": list(workflow_types),
                "supported_activity_types": list(activity_types),
            },
        )
        expect_status(response, (200, 201), f"register worker {worker_id}")
        return _json_or_none(response)

    def poll_workflow_task(self, worker_id: str, task_queue: str, *, timeout_seconds: int = 5) -> dict[str, Any] | None:
        return self._poll("/worker/workflow-tasks/poll", "wf-poll", worker_id, task_queue, timeout_seconds)

    def poll_activity_task(self, worker_id: str, task_queue: str, *, timeout_seconds: int = 5) -> dict[str, Any] | None:
        return self._poll("/worker/activity-tasks/poll", "activity-poll", worker_id, task_queue, timeout_seconds)

    def _poll(self, path: str, prefix: str, worker_id: str, task_queue: str, timeout_seconds: int) -> dict[str, Any] | None:
        response = self.worker(
            "POST",
            path,
            json={
                "worker_id": worker_id,
                "task_queue": task_queue,
                "timeout_seconds": timeout_seconds,
                "poll_request_id": f"{prefix}-{uuid.uuid4().hex}",
            },
            timeout=timeout_seconds + 10,
        )
        expect_status(response, 200, f"poll {path} on {task_queue}")
        task = response.json().get("task")
        return task if task else None

    def lease_workflow_task(self, worker_id: str, task_queue: str, *, within: float = 20.0) -> dict[str, Any]:
        """Poll until a workflow task is leased to ``worker_id``."""
        return wait_until(
            lambda: self.poll_workflow_task(worker_id, task_queue, timeout_seconds=2),
            within,
            f"a workflow task on {task_queue}",
            interval=0.0,
        )

    def lease_activity_task(self, worker_id: str, task_queue: str, *, within: float = 20.0) -> dict[str, Any]:
        """Poll until an activity task is leased to ``worker_id``."""
        return wait_until(
            lambda: self.poll_activity_task(worker_id, task_queue, timeout_seconds=2),
            within,
            f"an activity task on {task_queue}",
            interval=0.0,
        )

    def complete_workflow_task(
        self,
        task: dict[str, Any],
        commands: list[dict[str, Any]],
        *,
        lease_owner: str | None = None,
        workflow_task_attempt: int | None = None,
    ) -> httpx.Response:
        """``POST .../complete`` for a leased task; owner and attempt default
        to the ones the task was leased with."""
        return self.worker(
            "POST",
            f"/worker/workflow-tasks/{task['task_id']}/complete",
            json={
                "lease_owner": task.get("lease_owner") if lease_owner is None else lease_owner,
                "workflow_task_attempt": (
                    task.get("workflow_task_attempt", 1) if workflow_task_attempt is None else workflow_task_attempt
                ),
                "commands": commands,
            },
        )


def expect_status(response: httpx.Response, expected: int | Iterable[int], what: str) -> None:
    allowed = {expected} if isinstance(expected, int) else set(expected)
    if response.status_code not in allowed:
        raise AssertionError(
            f"{what}: expected HTTP {sorted(allowed)}, got {response.status_code} "
            f"for {response.request.method} {response.request.url.path}: {response.text[:1000]}"
        )


def expect_error(response: httpx.Response, status: int, reasons: str | Iterable[str]) -> dict[str, Any]:
    """Assert an error response: exact status, a JSON object body whose
    ``reason`` is one of ``reasons`` and which has a string ``message``."""
    allowed = {reasons} if isinstance(reasons, str) else set(reasons)
    described = f"{response.request.method} {response.request.url.path} -> {response.status_code}: {response.text[:1000]}"
    assert response.status_code == status, f"expected HTTP {status}; got {described}"
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"error body is not JSON: {described}") from None
    assert isinstance(body, dict), f"error body is not a JSON object: {described}"
    assert body.get("reason") in allowed, f"expected reason in {sorted(allowed)}; got {described}"
    assert isinstance(body.get("message"), str) and body["message"], f"error body has no message: {described}"
    return body


# ── the real Python SDK ───────────────────────────────────────────────────


class WorkerRun:
    """A ``durable_workflow.Worker`` whose ``run()`` is an asyncio task."""

    def __init__(self, worker: Any, task: asyncio.Task[None]) -> None:
        self.worker = worker
        self.task = task

    async def stop(self) -> None:
        """Stop and deregister; raise if either the stop or the run failed."""
        try:
            await self.worker.stop()
        finally:
            results = await asyncio.gather(self.task, return_exceptions=True)
        error = results[0]
        if isinstance(error, BaseException) and not isinstance(error, asyncio.CancelledError):
            raise error

    async def abandon(self) -> None:
        """Stop without caring how it went (e.g. the server was just killed)."""
        with contextlib.suppress(Exception):
            await self.worker.stop()
        await asyncio.gather(self.task, return_exceptions=True)


@contextlib.asynccontextmanager
async def running_worker(
    client: Any,
    *,
    task_queue: str,
    workflows: Iterable[type] = (),
    activities: Iterable[Callable[..., Any]] = (),
    stop_must_succeed: bool = True,
    **worker_options: Any,
) -> AsyncIterator[WorkerRun]:
    """Run an SDK worker for the duration of the block.

    On a clean exit the worker is stopped and, if ``stop_must_succeed``, any
    shutdown or deregistration error fails the test. If the block raised, the
    worker is stopped quietly so the original error is what gets reported.
    """
    from durable_workflow import Worker

    options: dict[str, Any] = {"poll_timeout": 5.0, "shutdown_timeout": 15.0}
    options.update(worker_options)
    worker = Worker(client, task_queue=task_queue, workflows=list(workflows), activities=list(activities), **options)
    run = WorkerRun(worker, asyncio.create_task(worker.run()))
    try:
        yield run
    except BaseException:
        await run.abandon()
        raise
    if stop_must_succeed:
        await run.stop()
    else:
        await run.abandon()


async def wait_for_results(
    client: Any,
    handles: Sequence[Any],
    *,
    worker: WorkerRun | None = None,
    timeout: float = 60.0,
) -> list[Any]:
    """Wait (concurrently) for every handle's result, in order.

    Each ``client.get_result`` has ``timeout``. If ``worker`` is given and its
    ``run()`` ends first, its error is raised instead of waiting out the
    deadline. For a single handle, its error (``WorkflowFailed``,
    ``TimeoutError`` ...) propagates as is; for several, one AssertionError
    lists every workflow that did not produce a result.
    """
    outcomes_future = asyncio.gather(
        *(client.get_result(handle, timeout=timeout, poll_interval=0.2) for handle in handles),
        return_exceptions=True,
    )
    if worker is not None:
        done, _ = await asyncio.wait({outcomes_future, worker.task}, return_when=asyncio.FIRST_COMPLETED)
        if outcomes_future not in done:
            outcomes_future.cancel()
            await asyncio.gather(outcomes_future, return_exceptions=True)
            worker.task.result()  # raises the worker's own error, if any
            raise AssertionError("the worker stopped before the workflows finished")
    outcomes = await outcomes_future
    errors = [(handle, outcome) for handle, outcome in zip(handles, outcomes) if isinstance(outcome, BaseException)]
    if errors and len(handles) == 1:
        raise errors[0][1]
    if errors:
        listing = "\n".join(f"  {handle.workflow_id}: {type(error).__name__}: {error}" for handle, error in errors)
        raise AssertionError(f"{len(errors)} of {len(handles)} workflows did not produce a result:\n{listing}") from errors[0][1]
    return list(outcomes)


async def history_events(client: Any, workflow_id: str, run_id: str) -> list[dict[str, Any]]:
    """All history events of one run (following page tokens)."""
    events: list[dict[str, Any]] = []
    token: str | None = None
    seen: set[str] = set()
    while True:
        page = await client.get_history(workflow_id, run_id, page_size=1000, next_page_token=token)
        events.extend(page.get("events", []))
        token = page.get("next_page_token")
        if not token:
            return events
        assert token not in seen, f"history of {workflow_id}/{run_id} repeated page token {token!r}"
        seen.add(token)


def event_types(events: Iterable[dict[str, Any]]) -> list[str]:
    return [str(event.get("event_type")) for event in events]
