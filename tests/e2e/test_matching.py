"""Matching over raw HTTP: poll idempotency, build-id cohorts and drains, parked-poll
backpressure, type filtering, and the fleet and task-queue routes."""

from __future__ import annotations

import threading
from typing import Any

import httpx

from keel_harness import RawApi, expect_error, expect_status, unique, wait_until


def poll(api: RawApi, worker_id: str, queue: str, *, request_id: str | None = None, timeout: int = 0) -> httpx.Response:
    body: dict[str, Any] = {"worker_id": worker_id, "task_queue": queue, "timeout_seconds": timeout}
    if request_id:
        body["poll_request_id"] = request_id
    return api.worker("POST", "/worker/workflow-tasks/poll", json=body, timeout=timeout + 10)


def register(api: RawApi, worker_id: str, queue: str, **extra: Any) -> None:
    body = {"worker_id": worker_id, "task_queue": queue, "runtime": "python", **extra}
    expect_status(api.worker("POST", "/worker/register", json=body), (200, 201), "register")


def test_a_retried_poll_with_the_same_request_id_gets_the_same_task_back(api: RawApi) -> None:
    queue = unique("idem")
    register(api, "w1", queue)
    api.start_workflow(unique("wf"), "t", queue)
    api.start_workflow(unique("wf"), "t", queue)
    first = poll(api, "w1", queue, request_id="req-1").json()["task"]
    again = poll(api, "w1", queue, request_id="req-1").json()
    assert again["poll_status"] == "leased"
    assert (again["task"]["task_id"], again["task"]["workflow_task_attempt"]) == (first["task_id"], first["workflow_task_attempt"])
    other = poll(api, "w1", queue, request_id="req-2").json()["task"]
    assert other["task_id"] != first["task_id"], "a new request id leases another task"
    assert poll(api, "w1", queue, request_id="req-3").json() ["poll_status"] == "empty"


def test_a_draining_cohort_is_refused_until_resumed(api: RawApi) -> None:
    queue = unique("drain")
    register(api, "w-v1", queue, build_id="v1")
    api.start_workflow(unique("wf"), "t", queue)
    for _ in range(2):  # idempotent
        r = api.control("POST", f"/task-queues/{queue}/build-ids/drain", json={"build_id": "v1"})
        expect_status(r, 200, "drain")
        assert r.json()["drain_intent"] == "draining"
    body = expect_error(poll(api, "w-v1", queue), 409, "worker_draining")
    assert body["poll_status"] == "draining" and body["task"] is None
    listing = api.control("GET", f"/task-queues/{queue}/build-ids").json()
    entry = next(b for b in listing["build_ids"] if b["build_id"] == "v1")
    assert entry["drain_intent"] == "draining" and entry["draining_worker_count"] == 1
    worker = api.control("GET", "/workers/w-v1").json()
    assert worker["status"] == "draining"
    r = api.control("POST", f"/task-queues/{queue}/build-ids/resume", json={"build_id": "v1"})
    expect_status(r, 200, "resume")
    assert r.json()["drain_intent"] == "active"
    assert poll(api, "w-v1", queue).json()["task"] is not None
    expect_error(api.control("POST", f"/task-queues/{queue}/build-ids/drain", json={}), 422, "validation_failed")


def test_a_task_pinned_to_a_build_id_goes_only_to_that_cohort(api: RawApi) -> None:
    queue = unique("pin")
    register(api, "w-v1", queue, build_id="v1")
    register(api, "w-v2", queue, build_id="v2")
    register(api, "w-none", queue)
    api.start_workflow(unique("wf"), "t", queue, build_id="v2")
    assert poll(api, "w-v1", queue).json()["task"] is None
    assert poll(api, "w-none", queue).json()["task"] is None
    assert poll(api, "w-v2", queue).json()["task"] is not None


def test_a_poll_never_returns_a_task_of_a_type_the_worker_did_not_register(api: RawApi) -> None:
    queue = unique("types")
    register(api, "w-a", queue, supported_workflow_types=["a"])
    register(api, "w-b", queue, supported_workflow_types=["b"])
    api.start_workflow(unique("wf"), "b", queue)
    assert poll(api, "w-a", queue).json()["task"] is None
    task = poll(api, "w-b", queue).json()["task"]
    assert task["workflow_type"] == "b"


def test_parked_polls_beyond_the_limit_are_refused_with_retry_after(keel_factory: Any) -> None:
    server = keel_factory(extra_args=["--max-parked-polls-per-queue", "2"])
    queue = unique("full")
    with RawApi(server.url) as api:
        register(api, "w1", queue)
        results: list[int] = []

        def park() -> None:
            with RawApi(server.url) as own:
                results.append(poll(own, "w1", queue, timeout=3).status_code)

        threads = [threading.Thread(target=park) for _ in range(2)]
        for t in threads:
            t.start()
        wait_until(
            lambda: api.control("GET", f"/task-queues/{queue}").json()["stats"]["workflow_tasks"]["parked_pollers"] == 2,
            10,
            "two parked polls",
        )
        refused = poll(api, "w1", queue, timeout=3)
        body = expect_error(refused, 429, "long_poll_capacity_exhausted")
        assert refused.headers.get("retry-after") == "1"
        assert body["retryable"] is True and body["retry_after_seconds"] == 1 and body["task"] is None
        assert body["task_kind"] == "workflow_task" and body["task_queue"] == queue
        for t in threads:
            t.join(timeout=15)
        assert results == [200, 200]


def test_fleet_routes_report_workers_backlog_and_leases(api: RawApi) -> None:
    queue = unique("fleet")
    register(api, "w1", queue, build_id="b1")
    register(api, "w2", queue)
    for _ in range(3):
        api.start_workflow(unique("wf"), "t", queue)
    workers = api.control("GET", "/workers", params={"task_queue": queue}).json()
    assert sorted(w["worker_id"] for w in workers["workers"]) == ["w1", "w2"]
    assert all(w["status"] == "active" for w in workers["workers"])
    described = api.control("GET", f"/task-queues/{queue}").json()
    assert described["stats"]["workflow_tasks"]["ready"] == 3
    assert poll(api, "w2", queue).json()["task"] is not None
    described = api.control("GET", f"/task-queues/{queue}").json()
    assert (described["stats"]["workflow_tasks"]["ready"], described["stats"]["workflow_tasks"]["leased"]) == (2, 1)
    assert described["current_leases"] == 1
    assert sorted(p["worker_id"] for p in described["pollers"]) == ["w1", "w2"]
    listed = api.control("GET", "/task-queues").json()
    assert any(q["name"] == queue for q in listed["task_queues"])
    ids = api.control("GET", f"/task-queues/{queue}/build-ids").json()
    assert sorted(str(b["build_id"]) for b in ids["build_ids"]) == ["None", "b1"]
    expect_status(api.control("DELETE", "/workers/w1"), 200, "delete worker")
    expect_error(api.control("GET", "/workers/w1"), 404, "worker_not_found")


def test_lease_admission_limit_throttles_polls_until_a_lease_ends(keel_factory: Any) -> None:
    server = keel_factory(extra_args=["--max-leases-per-queue", "1"])
    queue = unique("admit")
    with RawApi(server.url) as api:
        register(api, "w1", queue)
        api.start_workflow(unique("wf"), "t", queue)
        api.start_workflow(unique("wf"), "t", queue)
        first = poll(api, "w1", queue).json()["task"]
        assert first is not None
        body = expect_error(poll(api, "w1", queue), 429, "queue_lease_limit_reached")
        assert body["poll_status"] == "throttled" and body["task"] is None
        failure = {"message": "waiting", "type": "WorkflowTaskWaitingForHistory"}
        lease = {"lease_owner": "w1", "workflow_task_attempt": first["workflow_task_attempt"]}
        expect_status(api.worker("POST", f"/worker/workflow-tasks/{first['task_id']}/fail", json={**lease, "failure": failure}), 200, "close")
        assert poll(api, "w1", queue).json()["task"] is not None
