"""A full disk (#17.1): keel serve on a small tmpfs fills it with workflow starts.

While the disk is full, starts get 503 ``storage_unavailable`` but every acknowledged
workflow still reads back, and ``/api/ready`` and ``/metrics`` say the disk is full.
Once space is freed (a filler file made on the same tmpfs before keel started is
deleted), starts succeed again without a restart, and SIGTERM exits 0. Nothing
acknowledged is lost, before or after a restart.

Mounting a tmpfs needs root (CAP_SYS_ADMIN); without it the test is skipped with one
line saying so.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keel_harness import ON_FDB, KeelServer, RawApi, expect_status, start_workflow_body, unique

TMPFS_SIZE = "64m"
# Deleting this frees well over the 16 MiB (a memtable) RocksDB waits for before it
# resumes writing after a full disk.
FILLER_BYTES = 32 * 1024 * 1024
# Incompressible input, so each start takes real space and the disk fills in seconds.
INPUT_BYTES = 192 * 1024
FILL_DEADLINE = 90.0
RECOVERY_DEADLINE = 60.0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MB tmpfs mounted on a fresh directory, unmounted at the end."""
    if ON_FDB:
        pytest.skip("disk-full test skipped: it fills RocksDB's data dir, and this run is on FoundationDB")
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("disk-full test skipped: no mount(8) on this machine to make a small tmpfs")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        output = (mounted.stderr or mounted.stdout).strip().splitlines()
        why = output[0] if output else f"exit status {mounted.returncode}"
        pytest.skip(
            f"disk-full test skipped: mounting a {TMPFS_SIZE} tmpfs needs root or "
            f"CAP_SYS_ADMIN ({why})"
        )
    try:
        yield mount_point
    finally:
        unmounted = subprocess.run(["umount", str(mount_point)], capture_output=True, text=True)
        if unmounted.returncode != 0:
            # A process still holding a file there: detach now, the kernel frees it later.
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, text=True)


def start_body(workflow_id: str, task_queue: str) -> dict[str, object]:
    blob = base64.b64encode(os.urandom(INPUT_BYTES)).decode()
    return start_workflow_body(
        workflow_id, "e2e.disk_full.filler", task_queue, input={"codec": "avro", "blob": blob}
    )


def metric(server: KeelServer, name: str) -> float | None:
    response = httpx.get(f"{server.url}/metrics", timeout=30)
    expect_status(response, 200, "GET /metrics")
    for line in response.text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


def fill_until_refused(api: RawApi, server: KeelServer, queue: str) -> tuple[list[str], httpx.Response]:
    """Start workflows with large inputs until one is refused; the acknowledged ids and
    the refusal."""
    acknowledged: list[str] = []
    deadline = time.monotonic() + FILL_DEADLINE
    while True:
        assert time.monotonic() < deadline, (
            f"the {TMPFS_SIZE} disk never filled: {len(acknowledged)} starts acknowledged "
            f"in {FILL_DEADLINE:g}s\n{server.log_tail()}"
        )
        workflow_id = unique("disk-full")
        response = api.control("POST", "/workflows", json=start_body(workflow_id, queue))
        if response.status_code == 201:
            acknowledged.append(workflow_id)
        elif response.status_code == 503:
            assert acknowledged, f"the first start was already refused: {response.text}"
            return acknowledged, response
        else:
            expect_status(response, (201, 503), f"start {workflow_id} while filling the disk")


def fill_filler(disk: Path) -> Path:
    filler = disk / "filler"
    with filler.open("wb") as f:
        f.write(b"\0" * FILLER_BYTES)
    return filler


def test_a_full_disk_refuses_writes_serves_reads_and_recovers_by_itself(
    small_disk: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    filler = fill_filler(small_disk)
    server = KeelServer(data_dir=small_disk / "keel-data", log_path=tmp_path / "keel-disk-full.log")
    request.node._keel_servers = [server]  # its log is attached to a failure report
    queue = unique("disk-full-q")
    try:
        server.start()
        with RawApi(server.url) as api:
            acknowledged, refused = fill_until_refused(api, server, queue)

            # The refusal names its reason and promises a retry that can succeed.
            body = refused.json()
            assert body["reason"] == "storage_unavailable", body
            assert body["retryable"] is True, body
            assert body["retry_after_seconds"] >= 1, body

            # Reads of acknowledged workflows still answer while writes are refused.
            for workflow_id in (acknowledged[0], acknowledged[-1]):
                api.describe_workflow(workflow_id)
            listed = api.control("GET", "/workflows", params={"page_size": 5})
            expect_status(listed, 200, "list workflows while the disk is full")

            # /api/ready and /metrics say so, in words an operator understands.
            ready = api.request("GET", "/ready")
            assert ready.status_code == 503, ready.text
            database = ready.json()["checks"]["database"]
            assert database["status"] == "read_only", database
            assert database["reason"] == "disk_full", database
            assert "disk full" in database["message"].lower(), database
            assert database["writes"] == "refused" and database["reads"] == "ok", database
            assert metric(server, "keel_storage_writable") == 0
            assert (metric(server, "keel_storage_write_failures_total") or 0) >= 1

            # Another start while full is refused too, and writes nothing.
            again = api.control("POST", "/workflows", json=start_body(unique("disk-full"), queue))
            assert again.status_code == 503, again.text

            # Free space; starts succeed again without a restart.
            filler.unlink()
            recovered_id = None
            response = again
            deadline = time.monotonic() + RECOVERY_DEADLINE
            while recovered_id is None:
                assert time.monotonic() < deadline, (
                    f"starts still refused {RECOVERY_DEADLINE:g}s after space was freed: "
                    f"{response.status_code} {response.text[:300]}\n{server.log_tail()}"
                )
                workflow_id = unique("disk-full-after")
                response = api.control("POST", "/workflows", json=start_workflow_body(
                    workflow_id, "e2e.disk_full.filler", queue
                ))
                if response.status_code == 201:
                    recovered_id = workflow_id
                else:
                    expect_status(response, 503, "start after freeing space")
                    time.sleep(0.2)
            acknowledged.append(recovered_id)

            ready = api.request("GET", "/ready")
            expect_status(ready, 200, "/api/ready once writes resumed")
            assert ready.json()["checks"]["database"]["status"] == "ok", ready.text
            assert metric(server, "keel_storage_writable") == 1
            for workflow_id in acknowledged:
                api.describe_workflow(workflow_id)

        # A clean shutdown after the episode (stop() fails unless SIGTERM exits 0).
        assert server.stop() == 0

        # Nothing acknowledged was lost.
        server.start()
        with RawApi(server.url) as api:
            for workflow_id in acknowledged:
                api.describe_workflow(workflow_id)
        assert server.stop() == 0
    finally:
        if server.running:
            server.kill9()  # cleanup after a failure; the test's own stop() checks exit 0


def test_sigterm_while_the_disk_is_full_exits_0_and_loses_nothing(
    small_disk: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    filler = fill_filler(small_disk)
    server = KeelServer(data_dir=small_disk / "keel-data", log_path=tmp_path / "keel-sigterm-full.log")
    request.node._keel_servers = [server]
    try:
        server.start()
        with RawApi(server.url) as api:
            acknowledged, _ = fill_until_refused(api, server, unique("disk-full-q"))
        # stop() fails unless SIGTERM exits 0; the disk is still full.
        assert server.stop() == 0
        filler.unlink()
        server.start()
        with RawApi(server.url) as api:
            for workflow_id in acknowledged:
                api.describe_workflow(workflow_id)
        assert server.stop() == 0
    finally:
        if server.running:
            server.kill9()  # cleanup after a failure; the test's own stop() checks exit 0
