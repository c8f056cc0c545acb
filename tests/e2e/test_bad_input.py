"""Bad requests get a precise 4xx with a JSON ``{"reason", "message"}`` body.

Every test uses the ``api`` fixture, which afterwards also checks that no
request got a 5xx and that ``/api/health`` still answers 200.
"""

from __future__ import annotations

from typing import Any

from durable_workflow.workflow import CompleteWorkflow

from keel_harness import (
    CONTROL_HEADERS,
    WORKER_HEADERS,
    RawApi,
    expect_error,
    expect_status,
    start_workflow_body,
    unique,
)

WORKFLOW_TYPE = "e2e.bad_input.greeter"


def complete_workflow_command() -> dict[str, Any]:
    """A well-formed ``complete_workflow`` command, as the SDK would send it."""
    return CompleteWorkflow({"greeting": "hello, world"}).to_server_command("e2e-bad-input")


def without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {key: value for key, value in headers.items() if key.lower() != name.lower()}


def register_body(worker_id: str, task_queue: str) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "task_queue": task_queue,
        "runtime": "python",
        "supported_workflow_types": [WORKFLOW_TYPE],
        "supported_activity_types": [],
    }


def leased_workflow_task(api: RawApi) -> dict[str, Any]:
    """Start a workflow and lease its first workflow task to a raw worker."""
    task_queue = unique("e2e-bad-input")
    worker_id = unique("e2e-raw-worker")
    workflow_id = unique("e2e-bad-input")
    api.start_workflow(workflow_id, WORKFLOW_TYPE, task_queue)
    api.register_worker(worker_id, task_queue, workflow_types=[WORKFLOW_TYPE])
    task = api.lease_workflow_task(worker_id, task_queue)
    assert task["workflow_id"] == workflow_id, task
    assert task.get("lease_owner", worker_id) == worker_id, task
    return task


def assert_completes_normally(api: RawApi, task: dict[str, Any]) -> None:
    """The rejected calls did not disturb the lease: the owner can still complete."""
    response = api.complete_workflow_task(task, [complete_workflow_command()])
    expect_status(response, 200, "complete by the real lease owner")
    assert api.describe_workflow(task["workflow_id"])["status"] == "completed"


# ── transport and headers ─────────────────────────────────────────────────


def test_malformed_json_body_is_rejected(api: RawApi) -> None:
    response = api.control(
        "POST",
        "/workflows",
        content=b'{"workflow_id": "half-a-document", ',
        headers={"Content-Type": "application/json"},
    )
    expect_error(response, 400, "malformed_json")


def test_control_plane_request_without_version_header_is_rejected(api: RawApi) -> None:
    response = api.request("GET", "/workflows/x", headers=without(CONTROL_HEADERS, "X-Durable-Workflow-Control-Plane-Version"))
    expect_error(response, 400, "missing_control_plane_version")


def test_control_plane_request_with_unknown_version_is_rejected(api: RawApi) -> None:
    response = api.control("GET", "/workflows/x", headers={"X-Durable-Workflow-Control-Plane-Version": "3"})
    expect_error(response, 400, "unsupported_control_plane_version")


def test_worker_request_without_protocol_header_is_rejected(api: RawApi) -> None:
    response = api.request(
        "POST",
        "/worker/register",
        headers=without(WORKER_HEADERS, "X-Durable-Workflow-Protocol-Version"),
        json=register_body(unique("e2e-raw-worker"), unique("e2e-bad-input")),
    )
    expect_error(response, 400, "missing_protocol_version")


def test_worker_request_with_other_major_protocol_version_is_rejected(api: RawApi) -> None:
    response = api.worker(
        "POST",
        "/worker/register",
        headers={"X-Durable-Workflow-Protocol-Version": "2.0"},
        json=register_body(unique("e2e-raw-worker"), unique("e2e-bad-input")),
    )
    expect_error(response, 400, "unsupported_protocol_version")


def test_worker_request_with_newer_minor_protocol_version_is_rejected(api: RawApi) -> None:
    response = api.worker(
        "POST",
        "/worker/register",
        headers={"X-Durable-Workflow-Protocol-Version": "1.99"},
        json=register_body(unique("e2e-raw-worker"), unique("e2e-bad-input")),
    )
    expect_error(response, 400, "unsupported_protocol_version")


# ── routing ───────────────────────────────────────────────────────────────


def test_unknown_route_is_not_found(api: RawApi) -> None:
    expect_error(api.control("GET", "/nope"), 404, "not_found")


def test_wrong_method_on_known_route_is_not_allowed(api: RawApi) -> None:
    expect_error(api.control("DELETE", "/workflows"), 405, "method_not_allowed")


def test_unknown_workflow_is_not_found(api: RawApi) -> None:
    expect_error(api.control("GET", f"/workflows/{unique('does-not-exist')}"), 404, "instance_not_found")


def test_unknown_run_of_a_real_workflow_is_not_found(api: RawApi) -> None:
    workflow_id = unique("e2e-bad-input")
    api.start_workflow(workflow_id, WORKFLOW_TYPE, unique("e2e-bad-input"))
    expect_error(api.control("GET", f"/workflows/{workflow_id}/runs/bogus/history"), 404, "run_not_found")


# ── workflow-task ownership ───────────────────────────────────────────────


def test_completing_an_unknown_workflow_task_is_not_found(api: RawApi) -> None:
    response = api.worker(
        "POST",
        "/worker/workflow-tasks/bogus/complete",
        json={
            "lease_owner": unique("e2e-raw-worker"),
            "workflow_task_attempt": 1,
            "commands": [complete_workflow_command()],
        },
    )
    expect_error(response, 404, "task_not_found")


def test_completing_a_task_leased_to_someone_else_is_a_conflict(api: RawApi) -> None:
    task = leased_workflow_task(api)
    response = api.complete_workflow_task(task, [complete_workflow_command()], lease_owner=unique("e2e-intruder"))
    expect_error(response, 409, "lease_owner_mismatch")
    assert_completes_normally(api, task)


def test_completing_a_task_with_a_stale_attempt_is_a_conflict(api: RawApi) -> None:
    task = leased_workflow_task(api)
    attempt = int(task.get("workflow_task_attempt", 1))
    response = api.complete_workflow_task(task, [complete_workflow_command()], workflow_task_attempt=attempt + 1)
    expect_error(response, 409, "workflow_task_attempt_mismatch")
    assert_completes_normally(api, task)


# ── start validation and duplicates ───────────────────────────────────────


def test_start_without_workflow_type_fails_validation(api: RawApi) -> None:
    body = start_workflow_body(unique("e2e-bad-input"), WORKFLOW_TYPE, unique("e2e-bad-input"))
    del body["workflow_type"]
    error = expect_error(api.control("POST", "/workflows", json=body), 422, "validation_failed")
    assert isinstance(error.get("errors"), dict) and "workflow_type" in error["errors"], error


def test_start_with_unknown_duplicate_policy_fails_validation(api: RawApi) -> None:
    body = start_workflow_body(
        unique("e2e-bad-input"), WORKFLOW_TYPE, unique("e2e-bad-input"), duplicate_policy="bogus"
    )
    expect_error(api.control("POST", "/workflows", json=body), 422, "validation_failed")


def test_starting_a_running_workflow_id_again_is_a_conflict(api: RawApi) -> None:
    workflow_id = unique("e2e-bad-input")
    task_queue = unique("e2e-bad-input")
    api.start_workflow(workflow_id, WORKFLOW_TYPE, task_queue)
    second = api.control("POST", "/workflows", json=start_workflow_body(workflow_id, WORKFLOW_TYPE, task_queue))
    expect_error(second, 409, ("duplicate_not_allowed", "instance_already_started"))


def test_use_existing_returns_the_running_run(api: RawApi) -> None:
    workflow_id = unique("e2e-bad-input")
    task_queue = unique("e2e-bad-input")
    first = api.start_workflow(workflow_id, WORKFLOW_TYPE, task_queue)
    second = api.control(
        "POST",
        "/workflows",
        json=start_workflow_body(workflow_id, WORKFLOW_TYPE, task_queue, duplicate_policy="use-existing"),
    )
    expect_status(second, 200, "start with duplicate_policy=use-existing while running")
    body = second.json()
    assert body["workflow_id"] == workflow_id, body
    assert body["run_id"] == first["run_id"], (first, body)
