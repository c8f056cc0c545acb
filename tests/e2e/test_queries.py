"""Queries through the real SDK: the server routes a query task to the worker's query
poller, which replays the run and answers; unknown queries are 404, a queue without a
query-capable worker is 409, and a worker that never answers gives 504."""

from __future__ import annotations

import asyncio

import pytest
from durable_workflow import Client, workflow
from durable_workflow.errors import QueryFailed

from keel_harness import (
    KeelServer,
    RawApi,
    WORKER_HEADERS,
    async_wait_until,
    event_types,
    expect_error,
    history_events,
    running_worker,
    unique,
    wait_for_results,
)

# ── workflows (type names are unique to this module) ──────────────────────


@workflow.defn(name="e2e.queries.counter")
class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.done = False

    @workflow.signal("increment")
    def increment(self, by: int) -> None:
        self.count += by

    @workflow.signal("finish")
    def finish(self) -> None:
        self.done = True

    @workflow.query("count")
    def current(self) -> int:
        return self.count

    @workflow.query("describe")
    def describe(self, prefix: str) -> dict:
        return {"label": f"{prefix}:{self.count}", "done": self.done}

    def run(self, ctx):  # type: ignore[no-untyped-def]
        yield ctx.wait_condition(lambda: self.done, key="finished")
        return self.count


# ── tests ─────────────────────────────────────────────────────────────────


def test_query_replays_state_through_the_worker(keel: KeelServer) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-queries")
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, workflows=[Counter]) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.queries.counter",
                    task_queue=task_queue,
                    workflow_id=unique("e2e-counter"),
                    input=[],
                )

                async def wait_opened() -> bool:
                    events = await history_events(client, handle.workflow_id, handle.run_id)
                    return "ConditionWaitOpened" in event_types(events)

                await async_wait_until(wait_opened, 30, "ConditionWaitOpened")
                reply = await client.query_workflow(handle.workflow_id, "count")
                assert reply["result"] == 0
                await client.signal_workflow(handle.workflow_id, "increment", args=[5])
                await client.signal_workflow(handle.workflow_id, "increment", args=[2])
                reply = await client.query_workflow(handle.workflow_id, "count")
                assert reply["result"] == 7, reply
                assert reply["query_name"] == "count"
                assert reply["workflow_id"] == handle.workflow_id
                assert reply["run_id"] == handle.run_id
                assert reply["result_envelope"]["codec"] == "avro"
                reply = await client.query_workflow(handle.workflow_id, "describe", args=["n"])
                assert reply["result"] == {"label": "n:7", "done": False}

                # An undeclared query is refused before any worker is asked.
                with pytest.raises(QueryFailed):
                    await client.query_workflow(handle.workflow_id, "no_such_query")

                await client.signal_workflow(handle.workflow_id, "finish")
                [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)
                assert result == 7
                # A closed run can still be queried: its history replays to the end.
                reply = await client.query_workflow(handle.workflow_id, "describe", args=["end"])
                assert reply["result"] == {"label": "end:7", "done": True}

            # Queries never write history.
            types = event_types(await history_events(client, handle.workflow_id, handle.run_id))
            assert not [t for t in types if "Query" in t], types

    asyncio.run(scenario())


def test_query_without_a_capable_worker_is_409_and_unknown_run_404(api: RawApi) -> None:
    workflow_id = unique("e2e-query-none")
    task_queue = unique("e2e-query-none")
    started = api.start_workflow(workflow_id, "e2e.queries.nobody", task_queue)
    body = expect_error(
        api.control("POST", f"/workflows/{workflow_id}/query/count", json={}), 409, "query_worker_unavailable"
    )
    assert body["task_queue"] == task_queue
    expect_error(api.control("POST", "/workflows/nope-no-such/query/count", json={}), 404, "instance_not_found")
    expect_error(
        api.control("POST", f"/workflows/{workflow_id}/runs/no-such-run/query/count", json={}), 404, "run_not_found"
    )
    # The run-targeted form reaches the same checks for the real run.
    expect_error(
        api.control("POST", f"/workflows/{workflow_id}/runs/{started['run_id']}/query/count", json={}),
        409,
        "query_worker_unavailable",
    )


def test_raw_query_task_round_trip_and_worker_timeout(keel: KeelServer, api: RawApi) -> None:
    """A raw worker polls the query task, checks its shape, and answers; a second
    query nobody answers times out with 504 ``query_worker_timeout``."""
    workflow_type = "e2e.queries.raw"
    workflow_id = unique("e2e-query-raw")
    task_queue = unique("e2e-query-raw")
    worker_id = unique("e2e-raw-query-worker")
    started = api.start_workflow(workflow_id, workflow_type, task_queue)
    response = api.worker(
        "POST",
        "/worker/register",
        json={
            "worker_id": worker_id,
            "task_queue": task_queue,
            "supported_workflow_types": [workflow_type],
            "capabilities": ["query_tasks"],
            "workflow_command_contracts": {workflow_type: {"queries": ["status"], "signals": [], "updates": []}},
        },
    )
    assert response.status_code in (200, 201), response.text

    import threading

    answers: dict[str, object] = {}

    def ask() -> None:
        answers["status"] = api.control(
            "POST", f"/workflows/{workflow_id}/query/status", json={"input": ["x"], "timeout_seconds": 20}
        )

    asker = threading.Thread(target=ask)
    asker.start()
    poll = api.worker(
        "POST",
        "/worker/query-tasks/poll",
        json={"worker_id": worker_id, "task_queue": task_queue, "timeout_seconds": 10},
        timeout=20,
    )
    assert poll.status_code == 200, poll.text
    task = poll.json()["task"]
    assert task is not None, poll.text
    assert task["query_name"] == "status"
    assert task["lease_owner"] == worker_id and task["task_queue"] == task_queue
    assert task["query_task_attempt"] == 1
    assert task["workflow_id"] == workflow_id and task["run_id"] == started["run_id"]
    assert task["workflow_type"] == workflow_type and task["payload_codec"] == "avro"
    assert task["lease_expires_at"].endswith("Z")
    assert [e["event_type"] for e in task["history_events"]] == ["WorkflowStarted"]
    assert task["workflow_arguments"]["codec"] == "avro"
    assert task["query_arguments"]["codec"] == "avro"

    wrong = api.worker(
        "POST",
        f"/worker/query-tasks/{task['query_task_id']}/complete",
        json={"lease_owner": "someone-else", "query_task_attempt": 1, "result": 1},
    )
    expect_error(wrong, 409, "lease_owner_mismatch")
    done = api.worker(
        "POST",
        f"/worker/query-tasks/{task['query_task_id']}/complete",
        json={"lease_owner": worker_id, "query_task_attempt": 1, "result": {"ok": True},
              "result_envelope": {"codec": "avro", "blob": "wwHioz3/VYAiNwA="}},
    )
    assert done.status_code == 200, done.text
    asker.join(timeout=30)
    answer = answers["status"]
    assert answer.status_code == 200, answer.text  # type: ignore[attr-defined]
    assert answer.json()["result"] == {"ok": True}  # type: ignore[attr-defined]
    expect_error(
        api.worker(
            "POST",
            f"/worker/query-tasks/{task['query_task_id']}/complete",
            json={"lease_owner": worker_id, "query_task_attempt": 1, "result": 1},
        ),
        404,
        "query_task_not_found",
    )

    # An undeclared query is 404 without routing; a failed one maps the worker's reason.
    expect_error(api.control("POST", f"/workflows/{workflow_id}/query/other", json={}), 404, "query_not_found")

    def ask_again() -> None:
        answers["fail"] = api.control("POST", f"/workflows/{workflow_id}/query/status", json={"timeout_seconds": 20})

    asker = threading.Thread(target=ask_again)
    asker.start()
    poll = api.worker(
        "POST",
        "/worker/query-tasks/poll",
        json={"worker_id": worker_id, "task_queue": task_queue, "timeout_seconds": 10},
        timeout=20,
    )
    task = poll.json()["task"]
    failed = api.worker(
        "POST",
        f"/worker/query-tasks/{task['query_task_id']}/fail",
        json={"lease_owner": worker_id, "query_task_attempt": 1,
              "failure": {"message": "unknown query 'status'", "reason": "rejected_unknown_query"}},
    )
    assert failed.status_code == 200, failed.text
    asker.join(timeout=30)
    expect_error(answers["fail"], 404, "query_not_found")  # type: ignore[arg-type]

    # Nobody polls: the caller gets 504 after its timeout. (A separate client: the
    # `api` fixture fails the test on any 5xx it saw, and this one is expected.)
    with RawApi(keel.url) as other:
        timed_out = other.control("POST", f"/workflows/{workflow_id}/query/status", json={"timeout_seconds": 1})
    expect_error(timed_out, 504, "query_worker_timeout")

    # Polls from unknown workers are refused.
    expect_error(
        api.worker("POST", "/worker/query-tasks/poll", json={"worker_id": "nobody", "task_queue": task_queue}),
        412,
        "worker_not_registered",
    )
    assert WORKER_HEADERS  # the raw worker used the standard protocol headers
