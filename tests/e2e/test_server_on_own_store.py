"""A Keel built around a store of one's own through the public library entry point
(``keel_http::cli::main_with_store`` over ``keel_http::Server``): the example binary
``http/examples/keel_on_my_store.rs`` serves the store its ``open_my_store`` returns (the
in-repo RocksDB backend standing in for a third-party one), and real SDK traffic runs
against it, across a kill -9 and a restart.

The binary is ``$KEEL_MY_STORE_BIN`` or ``<repo>/target/debug/examples/keel_on_my_store``
(``cargo build -p keel-http --example keel_on_my_store``); missing, the test fails. The
same binary runs the whole suite: ``KEEL_BIN=<it> pytest tests/e2e`` (conformance/README.md).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from durable_workflow import Client, activity, workflow

from keel_harness import ON_FDB, KeelServer, RawApi, expect_status, running_worker, unique, wait_for_results

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BINARY = REPO / "target" / "debug" / "examples" / "keel_on_my_store"


def my_store_binary() -> Path:
    return Path(os.environ.get("KEEL_MY_STORE_BIN") or DEFAULT_BINARY).absolute()


@activity.defn(name="e2e.own_store.greet")
def greet(name: str) -> str:
    return f"hello, {name}"


@workflow.defn(name="e2e.own_store.greeter")
class Greeter:
    def run(self, ctx, name):  # type: ignore[no-untyped-def]
        greeting = yield ctx.schedule_activity("e2e.own_store.greet", [name], start_to_close_timeout=30)
        return {"name": name, "greeting": greeting}


@pytest.fixture
def keel_on_my_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeelServer]:
    if ON_FDB:
        pytest.skip("the example serves its own store in a directory; KEEL_E2E_STORAGE=fdb runs the keel binary's")
    binary = my_store_binary()
    if not binary.is_file():
        pytest.fail(
            f"example binary not found at {binary}: build it with "
            f"`cargo build -p keel-http --example keel_on_my_store` or set KEEL_MY_STORE_BIN.",
            pytrace=False,
        )
    server = KeelServer(binary=binary, data_dir=tmp_path / "my-store", log_path=tmp_path / "keel.log")
    request.node._keel_servers = [server]
    server.start()
    yield server
    assert server.stop() == 0, "the server built on the store did not exit cleanly"


def test_sdk_workflows_run_on_a_keel_built_around_a_store_and_survive_kill9(keel_on_my_store: KeelServer) -> None:
    keel = keel_on_my_store
    with RawApi(keel.url) as api:
        info = api.control("GET", "/cluster/info")
        expect_status(info, 200, "GET /api/cluster/info")
        # The store declares itself (KvStore::capabilities); the server only repeats it.
        assert info.json()["storage"] == {"backend": "rocksdb", "durable": True, "multi_node": False}

    task_queue = unique("e2e-own-store")
    names = ["ada", "grace", "edsger"]

    async def run_to_completion() -> list[tuple[str, str]]:
        async with Client(keel.url) as client:
            handles = [
                await client.start_workflow(
                    workflow_type="e2e.own_store.greeter",
                    task_queue=task_queue,
                    workflow_id=unique(f"e2e-own-store-{name}"),
                    input=[name],
                )
                for name in names
            ]
            async with running_worker(client, task_queue=task_queue, workflows=[Greeter], activities=[greet]) as worker:
                results = await wait_for_results(client, handles, worker=worker, timeout=60)
            assert results == [{"name": n, "greeting": f"hello, {n}"} for n in names]
            return [(h.workflow_id, h.run_id) for h in handles]

    finished = asyncio.run(run_to_completion())

    keel.kill9()
    keel.restart()

    async def still_there() -> None:
        async with Client(keel.url) as client:
            for workflow_id, run_id in finished:
                description = await client.describe_workflow(workflow_id)
                assert (description.status, description.run_id) == ("completed", run_id)

    asyncio.run(still_there())
