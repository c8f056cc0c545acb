"""The operator recovery routes (``/api/v2/admin/operator/restate/*``) against a real
``keel serve``, with real workflows run by the Python SDK in each state: running (a
durable timer), stuck (an activity failing and retrying), succeeded and failed.

Each write route is checked with ``doctor`` before and after, as the operator
procedure says: doctor, one write route, doctor again.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest
from durable_workflow import ActivityRetryPolicy, Client, WorkflowFailed, activity, workflow

from keel_harness import (
    KeelServer,
    RawApi,
    async_wait_until,
    event_types,
    expect_error,
    expect_status,
    history_events,
    running_worker,
    unique,
    wait_until,
)

OPERATOR = "/v2/admin/operator/restate"

# Workflow types are operator keys (letters, digits, `_`, `-`): recover-stuck-workflow
# takes them as `serviceName`.
SLEEPER = "OpSleeper"
STUCK = "OpStuck"
SUCCEEDS = "OpSucceeds"
FAILS = "OpFails"

# Until a test "deploys the fix", the broken activity fails every attempt.
_fixed = threading.Event()


@activity.defn(name="op_ok")
def op_ok(key: str) -> str:
    return f"ok {key}"


@activity.defn(name="op_broken")
def op_broken(key: str) -> str:
    if _fixed.is_set():
        return f"fixed {key}"
    raise RuntimeError(f"op activity broken for {key}")


@workflow.defn(name=SLEEPER)
class Sleeper:
    def run(self, ctx, key):  # type: ignore[no-untyped-def]
        yield ctx.sleep(3600)
        return key


@workflow.defn(name=STUCK)
class Stuck:
    def run(self, ctx, key):  # type: ignore[no-untyped-def]
        result = yield ctx.schedule_activity(
            "op_broken",
            [key],
            start_to_close_timeout=30,
            retry_policy=ActivityRetryPolicy(max_attempts=1000, initial_interval_seconds=1),
        )
        return result


@workflow.defn(name=SUCCEEDS)
class Succeeds:
    def run(self, ctx, key):  # type: ignore[no-untyped-def]
        result = yield ctx.schedule_activity("op_ok", [key], start_to_close_timeout=30)
        return result


@workflow.defn(name=FAILS)
class Fails:
    def run(self, ctx, key):  # type: ignore[no-untyped-def]
        yield ctx.schedule_activity("op_ok", [key], start_to_close_timeout=30)
        raise ValueError(f"op workflow failed for {key}")


WORKFLOWS = [Sleeper, Stuck, Succeeds, Fails]
ACTIVITIES = [op_ok, op_broken]


# ── helpers ───────────────────────────────────────────────────────────────


def doctor(api: RawApi, **headers: str) -> dict[str, Any]:
    # No control-plane header: the version is in the path.
    response = api.request("POST", f"{OPERATOR}/doctor", json={}, headers=headers)
    expect_status(response, 200, "doctor")
    body = response.json()
    for component in ("ingress", "admin", "deployments", "services", "invocations"):
        assert body[component]["status"] in ("ok", "degraded", "unreachable"), body
        assert isinstance(body[component]["latencyMs"], int), body
    return body


def operator_post(api: RawApi, route: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return api.request("POST", f"{OPERATOR}/{route}", json=body, headers=headers)


def failure_ids(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["id"]: item for item in report["invocations"]["recentFailures"]}


def audit_items(api: RawApi, **headers: str) -> list[dict[str, Any]]:
    response = api.request("GET", "/v2/admin/operator/audit", params={"limit": 200}, headers=headers)
    expect_status(response, 200, "operator audit log")
    return response.json()["items"]


async def start(client: Client, workflow_type: str, task_queue: str, workflow_id: str, **extra: Any) -> Any:
    return await client.start_workflow(
        workflow_type=workflow_type, task_queue=task_queue, workflow_id=workflow_id, input=[workflow_id], **extra
    )


async def history_has(client: Client, handle: Any, event: str) -> bool:
    return event in event_types(await history_events(client, handle.workflow_id, handle.run_id))


# ── doctor and recover-stuck-workflow ─────────────────────────────────────


def test_doctor_and_recover_across_running_stuck_succeeded_and_failed_workflows(
    keel: KeelServer, api: RawApi
) -> None:
    _fixed.clear()

    async def scenario() -> None:
        task_queue = unique("op-recover")
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, workflows=WORKFLOWS, activities=ACTIVITIES):
                sleeper = await start(client, SLEEPER, task_queue, unique("op-sleeper"))
                stuck = await start(client, STUCK, task_queue, unique("op-stuck"))
                succeeded = await start(client, SUCCEEDS, task_queue, unique("op-succeeds"))
                failed = await start(client, FAILS, task_queue, unique("op-fails"))

                assert await client.get_result(succeeded, timeout=60, poll_interval=0.2) == f"ok {succeeded.workflow_id}"
                with pytest.raises(WorkflowFailed):
                    await client.get_result(failed, timeout=60, poll_interval=0.2)
                await async_wait_until(lambda: history_has(client, sleeper, "TimerScheduled"), 30, "the sleeper's timer")

                # Doctor before: every component answers; the stuck run shows up among
                # the recent failures as soon as its activity failed once.
                def stuck_reported() -> dict[str, Any] | None:
                    report = doctor(api)
                    return report if stuck.run_id in failure_ids(report) else None

                before = await asyncio.to_thread(wait_until, stuck_reported, 30, "the stuck run in doctor")
                assert before["status"] == "ok", before
                assert before["ingress"]["status"] == "ok" and before["admin"]["status"] == "ok"
                assert isinstance(before["admin"]["version"], str)
                invocations = before["invocations"]
                assert invocations["status"] == "ok" and invocations["error"] is None
                by_status = invocations["byStatus"]
                assert by_status.get("completed") == 1 and by_status.get("failed") == 1, by_status
                assert sum(by_status.get(s, 0) for s in ("pending", "running", "waiting")) == 2, by_status
                assert invocations["stuck"] == 1 and invocations["total"] == 4
                failures = failure_ids(before)
                assert set(failures) == {stuck.run_id, failed.run_id}, failures
                stuck_item, failed_item = failures[stuck.run_id], failures[failed.run_id]
                assert stuck_item["serviceName"] == STUCK and stuck_item["serviceKey"] == stuck.workflow_id
                assert "op activity broken" in stuck_item["errorMessage"] and stuck_item["source"] == "attempt"
                assert failed_item["serviceName"] == FAILS and failed_item["serviceKey"] == failed.workflow_id
                assert "op workflow failed" in failed_item["errorMessage"] and failed_item["status"] == "failed"
                for item in failures.values():
                    assert item["failedAt"].endswith("Z")
                times = [item["failedAt"] for item in before["invocations"]["recentFailures"]]
                assert times == sorted(times, reverse=True), "newest first"

                # Refusals change nothing: a running workflow, a succeeded one.
                blocked = expect_error(
                    await asyncio.to_thread(
                        operator_post,
                        api,
                        "recover-stuck-workflow",
                        {"serviceName": SLEEPER, "serviceKey": sleeper.workflow_id},
                    ),
                    409,
                    "retry_blocked",
                )
                assert blocked["blockedReason"] == "run_active"
                assert blocked["invocationIds"] == [sleeper.run_id]
                blocked = expect_error(
                    await asyncio.to_thread(
                        operator_post,
                        api,
                        "recover-stuck-workflow",
                        {"serviceName": SUCCEEDS, "serviceKey": succeeded.workflow_id},
                    ),
                    409,
                    "retry_blocked",
                )
                assert blocked["blockedReason"] == "previous_run_succeeded"
                assert blocked["invocationIds"] == [succeeded.run_id]
                assert (await client.describe_workflow(sleeper.workflow_id)).status == "waiting"
                assert (await client.describe_workflow(succeeded.workflow_id)).status == "completed"

                # Bad input and unknown targets.
                invalid = expect_error(
                    await asyncio.to_thread(
                        operator_post, api, "recover-stuck-workflow", {"serviceName": STUCK, "serviceKey": "a.b/c"}
                    ),
                    422,
                    "validation_failed",
                )
                assert "serviceKey" in invalid["errors"]
                invalid = expect_error(
                    await asyncio.to_thread(operator_post, api, "recover-stuck-workflow", {"serviceKey": "x"}),
                    422,
                    "validation_failed",
                )
                assert "serviceName" in invalid["errors"]
                expect_error(
                    await asyncio.to_thread(
                        operator_post, api, "recover-stuck-workflow", {"serviceName": STUCK, "serviceKey": "op-nobody"}
                    ),
                    404,
                    "instance_not_found",
                )
                expect_error(
                    await asyncio.to_thread(
                        operator_post,
                        api,
                        "recover-stuck-workflow",
                        {"serviceName": SLEEPER, "serviceKey": stuck.workflow_id},
                    ),
                    404,
                    "instance_not_found",
                )

                # The stuck workflow: ended, purged, its id free again.
                response = await asyncio.to_thread(
                    operator_post,
                    api,
                    "recover-stuck-workflow",
                    {"serviceName": STUCK, "serviceKey": stuck.workflow_id},
                )
                expect_status(response, 200, "recover the stuck workflow")
                body = response.json()
                assert body["acknowledged"] is True
                assert body["terminatedInvocationIds"] == [stuck.run_id]
                assert body["purgedInvocationIds"] == [stuck.run_id] and body["stateCleared"] is True
                gone = await asyncio.to_thread(api.control, "GET", f"/workflows/{stuck.workflow_id}")
                expect_error(gone, 404, "instance_not_found")

                # The failed workflow: nothing to end, purged.
                response = await asyncio.to_thread(
                    operator_post,
                    api,
                    "recover-stuck-workflow",
                    {"serviceName": FAILS, "serviceKey": failed.workflow_id},
                )
                expect_status(response, 200, "recover the failed workflow")
                assert response.json()["terminatedInvocationIds"] == []
                assert response.json()["purgedInvocationIds"] == [failed.run_id]

                # Doctor after: the recovered runs are gone from counts and failures.
                after = await asyncio.to_thread(doctor, api)
                assert after["status"] == "ok"
                assert failure_ids(after) == {}
                assert after["invocations"]["stuck"] == 0 and after["invocations"]["total"] == 2
                assert after["invocations"]["byStatus"].get("completed") == 1
                assert "failed" not in after["invocations"]["byStatus"]

                # The fix is deployed; the next submission of the same id starts blank
                # and completes.
                _fixed.set()
                again = await start(client, STUCK, task_queue, stuck.workflow_id)
                assert again.run_id != stuck.run_id
                assert await client.get_result(again, timeout=60, poll_interval=0.2) == f"fixed {stuck.workflow_id}"
                types = event_types(await history_events(client, again.workflow_id, again.run_id))
                assert types[0] == "WorkflowStarted" and types.count("WorkflowStarted") == 1, types
                assert "ActivityFailed" not in types and "WorkflowTerminated" not in types, types
                runs = await asyncio.to_thread(api.control, "GET", f"/workflows/{stuck.workflow_id}/runs")
                expect_status(runs, 200, "runs of the restarted workflow")
                assert [r["run_id"] for r in runs.json()["runs"]] == [again.run_id]
                resubmitted = await start(client, FAILS, task_queue, failed.workflow_id)
                with pytest.raises(WorkflowFailed):
                    await client.get_result(resubmitted, timeout=60, poll_interval=0.2)

                # Recovering again after success is refused (nothing stuck any more).
                blocked = expect_error(
                    await asyncio.to_thread(
                        operator_post,
                        api,
                        "recover-stuck-workflow",
                        {"serviceName": STUCK, "serviceKey": stuck.workflow_id},
                    ),
                    409,
                    "retry_blocked",
                )
                assert blocked["blockedReason"] == "previous_run_succeeded"

                # Every call was audited, refusals included, newest first.
                items = await asyncio.to_thread(audit_items, api)
                recovers = [i for i in items if i["action"] == "recover-stuck-workflow"]
                outcomes = [(i["outcome"], i["reason"]) for i in recovers]
                assert outcomes.count(("acknowledged", None)) == 2, outcomes
                assert outcomes.count(("refused", "retry_blocked")) == 3, outcomes
                assert outcomes.count(("refused", "validation_failed")) == 2, outcomes
                assert outcomes.count(("refused", "instance_not_found")) == 2, outcomes
                done = next(i for i in recovers if i["request"]["serviceKey"] == stuck.workflow_id and i["outcome"] == "acknowledged")
                assert done["details"]["terminated"] == [stuck.run_id] and done["completedAt"]
                assert any(i["action"] == "doctor" for i in items)
                stamps = [i["id"] for i in items]
                assert stamps == sorted(stamps, reverse=True)

                await client.terminate_workflow(sleeper.workflow_id, reason="test over")

    asyncio.run(scenario())


# ── force-redeploy and cleanup-stale-deployments ──────────────────────────


def build_ids(api: RawApi, task_queue: str) -> dict[str | None, dict[str, Any]]:
    response = api.control("GET", f"/task-queues/{task_queue}/build-ids")
    expect_status(response, 200, "build ids")
    return {entry["build_id"]: entry for entry in response.json()["build_ids"]}


def test_force_redeploy_registers_deployments_and_cleanup_drains_the_stale_ones(
    keel: KeelServer, api: RawApi
) -> None:
    async def scenario() -> None:
        task_queue = unique("op-deploy")
        url_v1, url_v2, url_dead = (
            "http://svc-v1.internal:8080/workflows",
            "http://svc-v2.internal:8080/workflows",
            "http://dead.internal/",
        )
        async with Client(keel.url) as client:
            async with running_worker(
                client, task_queue=task_queue, workflows=[Succeeds], activities=[op_ok],
                build_id="v1", stop_must_succeed=False,
            ), running_worker(
                client, task_queue=task_queue, workflows=[Succeeds, Sleeper], activities=[op_ok], build_id="v2",
            ):
                def registered(build: str) -> bool:
                    return build in build_ids(api, task_queue)

                await asyncio.to_thread(wait_until, lambda: registered("v1") and registered("v2"), 30, "both SDK workers")
                # A dead deployment: its worker announced its URL at registration, and
                # a run pinned to its build id that nobody will ever run.
                dead = await asyncio.to_thread(
                    api.worker,
                    "POST",
                    "/worker/register",
                    json={
                        "worker_id": unique("dead-worker"), "task_queue": task_queue, "build_id": "dead",
                        "supported_workflow_types": [SLEEPER], "service_url": url_dead,
                    },
                )
                expect_status(dead, 201, "register the dead worker")

                empty = await asyncio.to_thread(doctor, api)
                assert empty["deployments"]["items"] == [] and empty["services"]["items"] == []

                # force-redeploy: the seed's shape, plus what was bound.
                first = await asyncio.to_thread(
                    operator_post, api, "force-redeploy", {"serviceUrl": url_v1, "taskQueue": task_queue, "buildId": "v1"}
                )
                expect_status(first, 200, "force-redeploy v1")
                v1 = first.json()
                assert v1["acknowledged"] is True and v1["deploymentId"].startswith("dp_")
                assert v1["result"] == "created"
                assert {(s["name"], s["revision"]) for s in v1["services"]} == {(SUCCEEDS, 1), ("op_ok", 1)}
                again = (await asyncio.to_thread(
                    operator_post, api, "force-redeploy", {"serviceUrl": "HTTP://SVC-V1.internal:8080/workflows/"}
                )).json()
                assert again["deploymentId"] == v1["deploymentId"] and again["result"] == "rediscovered"
                assert again["revisionsBumped"] == []
                v2 = (await asyncio.to_thread(
                    operator_post, api, "force-redeploy", {"serviceUrl": url_v2, "taskQueue": task_queue, "buildId": "v2"}
                )).json()
                assert v2["deploymentId"] != v1["deploymentId"]
                # The workflow type moved to the new deployment: its revision went up.
                assert {(s["name"], s["revision"]) for s in v2["services"]} == {(SUCCEEDS, 2), (SLEEPER, 1), ("op_ok", 2)}
                dead_dp = (await asyncio.to_thread(operator_post, api, "force-redeploy", {"serviceUrl": url_dead})).json()
                assert dead_dp["cohorts"] == [{"taskQueue": task_queue, "buildId": "dead"}]
                not_bound = expect_error(
                    await asyncio.to_thread(operator_post, api, "force-redeploy", {"serviceUrl": "http://nobody.internal"}),
                    422,
                    "discovery_failed",
                )
                assert not_bound["serviceUrl"] == "http://nobody.internal"
                expect_error(
                    await asyncio.to_thread(operator_post, api, "force-redeploy", {"serviceUrl": "not a url"}),
                    422,
                    "validation_failed",
                )

                pinned = await start(client, SLEEPER, task_queue, unique("op-pinned"), build_id="dead")
                ok_before = await start(client, SUCCEEDS, task_queue, unique("op-ok"))
                assert await client.get_result(ok_before, timeout=60, poll_interval=0.2) == f"ok {ok_before.workflow_id}"

                # Doctor before cleanup: three active deployments.
                before = await asyncio.to_thread(doctor, api)
                assert before["deployments"]["status"] == "ok", before["deployments"]
                deployments = {d["id"]: d for d in before["deployments"]["items"]}
                assert set(deployments) == {v1["deploymentId"], v2["deploymentId"], dead_dp["deploymentId"]}
                assert all(d["status"] == "active" for d in deployments.values())
                # The URL as its latest registration spelled it.
                assert deployments[v1["deploymentId"]]["serviceUrl"] == "HTTP://SVC-V1.internal:8080/workflows/"
                assert deployments[v1["deploymentId"]]["createdAt"].endswith("Z")
                assert deployments[v2["deploymentId"]]["liveWorkers"] >= 1
                services = {s["name"]: s for s in before["services"]["items"]}
                assert services[SUCCEEDS]["revision"] == 2 and services[SUCCEEDS]["deploymentId"] == v2["deploymentId"]

                # Unknown serviceUrl: not found, nothing drained or removed.
                missing = expect_error(
                    await asyncio.to_thread(
                        operator_post, api, "cleanup-stale-deployments", {"serviceUrl": "http://elsewhere.internal"}
                    ),
                    404,
                    "deployment_not_found",
                )
                assert url_v2 in missing["registeredServiceUrls"]
                unchanged = await asyncio.to_thread(doctor, api)
                assert {d["id"]: d["status"] for d in unchanged["deployments"]["items"]} == {
                    i: "active" for i in deployments
                }

                # Cleanup keeping v2: v1 and dead drain; v1 (nothing pinned) is removed,
                # dead (a pinned unfinished run) stays, draining.
                response = await asyncio.to_thread(
                    operator_post, api, "cleanup-stale-deployments", {"serviceUrl": url_v2}
                )
                expect_status(response, 200, "cleanup without forceDrain")
                cleaned = response.json()
                assert cleaned["acknowledged"] is True and cleaned["keptDeploymentId"] == v2["deploymentId"]
                assert set(cleaned["drained"]) == {v1["deploymentId"], dead_dp["deploymentId"]}
                assert cleaned["removed"] == [v1["deploymentId"]]
                [skipped] = cleaned["skipped"]
                assert skipped["deploymentId"] == dead_dp["deploymentId"] and skipped["reason"] == "unfinished_runs"
                assert skipped["invocationIds"] == [pinned.run_id]
                cohorts = await asyncio.to_thread(build_ids, api, task_queue)
                assert cohorts["v1"]["drain_intent"] == "draining" and cohorts["dead"]["drain_intent"] == "draining"
                assert cohorts["v2"]["drain_intent"] == "active"
                # A v1 worker's poll is refused: the cohort gets no new tasks.
                probe = unique("v1-probe")
                registered_probe = await asyncio.to_thread(
                    api.worker, "POST", "/worker/register",
                    json={"worker_id": probe, "task_queue": task_queue, "build_id": "v1"},
                )
                expect_status(registered_probe, 201, "register a v1 probe worker")
                refused = await asyncio.to_thread(
                    api.worker, "POST", "/worker/workflow-tasks/poll",
                    json={"worker_id": probe, "task_queue": task_queue, "timeout_seconds": 0},
                )
                assert expect_error(refused, 409, "worker_draining")["poll_status"] == "draining"
                # New work goes to the kept deployment's workers.
                ok_after = await start(client, SUCCEEDS, task_queue, unique("op-ok"))
                assert await client.get_result(ok_after, timeout=60, poll_interval=0.2) == f"ok {ok_after.workflow_id}"

                middle = await asyncio.to_thread(doctor, api)
                states = {d["id"]: d["status"] for d in middle["deployments"]["items"]}
                assert states == {v2["deploymentId"]: "active", dead_dp["deploymentId"]: "draining"}
                assert middle["deployments"]["status"] == "ok", middle["deployments"]
                services = {s["name"]: s for s in middle["services"]["items"]}
                assert services[SLEEPER]["deploymentId"] == v2["deploymentId"]
                assert middle["services"]["status"] == "ok"

                # forceDrain ends the run pinned to the dead deployment, then removes it.
                response = await asyncio.to_thread(
                    operator_post, api, "cleanup-stale-deployments", {"serviceUrl": url_v2, "forceDrain": True}
                )
                expect_status(response, 200, "cleanup with forceDrain")
                forced = response.json()
                assert forced["terminatedInvocationIds"] == [pinned.run_id]
                assert forced["removed"] == [dead_dp["deploymentId"]] and forced["skipped"] == []
                assert (await client.describe_workflow(pinned.workflow_id)).status == "terminated"
                events = await history_events(client, pinned.workflow_id, pinned.run_id)
                assert event_types(events)[-1] == "WorkflowTerminated"
                assert "cleanup-stale-deployments" in events[-1]["payload"]["reason"]

                after = await asyncio.to_thread(doctor, api)
                assert [d["id"] for d in after["deployments"]["items"]] == [v2["deploymentId"]]
                assert after["status"] == "ok", after

                # Idempotent: nothing left to drain or remove.
                repeat = (await asyncio.to_thread(
                    operator_post, api, "cleanup-stale-deployments", {"serviceUrl": url_v2, "forceDrain": True}
                )).json()
                assert repeat["acknowledged"] is True and repeat["drained"] == [] and repeat["removed"] == []

                # force-redeploy does not remove old deployments, and re-activates one.
                back = (await asyncio.to_thread(
                    operator_post, api, "force-redeploy", {"serviceUrl": url_v1, "taskQueue": task_queue, "buildId": "v1"}
                )).json()
                assert back["result"] == "created"
                cohorts = await asyncio.to_thread(build_ids, api, task_queue)
                assert cohorts["v1"]["drain_intent"] == "active"
                final = await asyncio.to_thread(doctor, api)
                assert {d["id"] for d in final["deployments"]["items"]} == {v2["deploymentId"], back["deploymentId"]}

                items = await asyncio.to_thread(audit_items, api)
                cleanups = [i for i in items if i["action"] == "cleanup-stale-deployments"]
                assert [(i["outcome"], i["reason"]) for i in cleanups][::-1] == [
                    ("refused", "deployment_not_found"),
                    ("acknowledged", None),
                    ("acknowledged", None),
                    ("acknowledged", None),
                ]
                assert cleanups[1]["details"]["terminatedRuns"] == [pinned.run_id]

    asyncio.run(scenario())


# ── permissions ───────────────────────────────────────────────────────────

TOKENS = "worker:op-e2e-worker-secret,operator:op-e2e-operator-secret,admin:op-e2e-admin-secret"


def test_operator_routes_require_the_operator_role_and_audit_who_called(keel_factory: Any) -> None:
    server = keel_factory(env={"KEEL_TOKENS": TOKENS})
    bearer = {role: {"Authorization": f"Bearer op-e2e-{role}-secret"} for role in ("worker", "operator", "admin")}
    routes = [
        ("POST", f"{OPERATOR}/doctor", {}),
        ("POST", f"{OPERATOR}/force-redeploy", {"serviceUrl": "http://svc.internal", "taskQueue": "op-q"}),
        ("POST", f"{OPERATOR}/cleanup-stale-deployments", {"serviceUrl": "http://svc.internal"}),
        ("POST", f"{OPERATOR}/recover-stuck-workflow", {"serviceName": "X", "serviceKey": "nobody"}),
        ("GET", "/v2/admin/operator/audit", None),
    ]
    # A refusal before the body is read ends the connection (the server does not drain
    # an unread body), so refused requests do not ask to keep it.
    close = {"Connection": "close"}
    with RawApi(server.url) as api:
        for method, path, body in routes:
            kwargs: dict[str, Any] = {} if body is None else {"json": body}
            expect_error(
                api.request(method, path, headers={"Authorization": "Bearer wrong", **close}, **kwargs),
                401,
                "unauthorized",
            )
            forbidden = expect_error(
                api.request(method, path, headers={**bearer["worker"], **close}, **kwargs), 403, "forbidden"
            )
            assert forbidden["actual_roles"] == ["worker"] and "operator" in forbidden["required_roles"]
            for role in ("operator", "admin"):
                response = api.request(method, path, headers=bearer[role], **kwargs)
                assert response.status_code not in (401, 403), f"{method} {path} as {role}: {response.text}"
                assert response.status_code < 500, f"{method} {path} as {role}: {response.text}"
        # A wrong version header is still refused; the right one is accepted.
        expect_error(
            api.request("POST", f"{OPERATOR}/doctor", json={},
                        headers={**bearer["operator"], **close, "X-Durable-Workflow-Control-Plane-Version": "9"}),
            400,
            "unsupported_control_plane_version",
        )
        report = api.request("POST", f"{OPERATOR}/doctor", json={},
                             headers={**bearer["operator"], "X-Durable-Workflow-Control-Plane-Version": "2"})
        expect_status(report, 200, "doctor with the version header")

        response = api.request("GET", "/v2/admin/operator/audit", headers=bearer["admin"])
        expect_status(response, 200, "audit log")
        text = response.text
        for secret in ("op-e2e-worker-secret", "op-e2e-operator-secret", "op-e2e-admin-secret", "wrong"):
            assert secret not in text, "the audit log must never hold a token"
        items = response.json()["items"]
        by_role = {tuple(i["roles"]) for i in items}
        assert ("operator",) in by_role and ("admin",) in by_role, by_role
        redeploys = [i for i in items if i["action"] == "force-redeploy"]
        assert len(redeploys) == 2 and all(i["outcome"] == "acknowledged" for i in redeploys)
        assert {i["principal"] for i in redeploys} == {"KEEL_TOKENS[1]", "KEEL_TOKENS[2]"}
        # Refused callers never reached the handler: only the admitted ones are listed.
        assert all(i["roles"] != ["worker"] for i in items)
        assert server.running
