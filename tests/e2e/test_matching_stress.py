"""Matching under load over raw HTTP: hundreds of workflows, a dozen concurrent
pollers, a share of leases deliberately abandoned. Every workflow completes exactly
once, and no completion through a stale lease is accepted."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import httpx

from keel_harness import CONTROL_HEADERS, WORKER_HEADERS, WORLD_INPUT, KeelServer, start_workflow_body, unique

WORKFLOWS = 300
POLLERS = 12
ABANDON = 0.1


def history_types(task: dict[str, Any]) -> list[str]:
    return [e.get("event_type") for e in task.get("history_events") or []]


async def run_stress(server: KeelServer) -> None:
    queue = unique("stress")
    rng = random.Random(7)
    abandoned: list[tuple[str, str, dict[str, Any]]] = []
    accepted_terminal: dict[str, int] = {}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=f"{server.url}/api", timeout=30.0, limits=limits) as http:

        async def control(method: str, path: str, **kw: Any) -> httpx.Response:
            return await http.request(method, path, headers=CONTROL_HEADERS, **kw)

        async def worker(path: str, body: dict[str, Any]) -> httpx.Response:
            return await http.post(path, headers=WORKER_HEADERS, json=body)

        starts = await asyncio.gather(
            *(control("POST", "/workflows", json=start_workflow_body(f"{queue}-wf-{i}", "stress.wf", queue)) for i in range(WORKFLOWS))
        )
        assert all(r.status_code == 201 for r in starts), [r.text for r in starts if r.status_code != 201][:3]

        def done() -> bool:
            return len(accepted_terminal) == WORKFLOWS

        async def poller(n: int) -> None:
            worker_id = f"stress-{n}-{uuid.uuid4().hex[:6]}"
            r = await worker("/worker/register", {"worker_id": worker_id, "task_queue": queue, "runtime": "python"})
            assert r.status_code in (200, 201), r.text
            while not done():
                r = await worker(
                    "/worker/workflow-tasks/poll",
                    {"worker_id": worker_id, "task_queue": queue, "timeout_seconds": 1, "poll_request_id": uuid.uuid4().hex},
                )
                assert r.status_code == 200, r.text
                task = r.json().get("task")
                if task:
                    lease = {"lease_owner": worker_id, "workflow_task_attempt": task["workflow_task_attempt"]}
                    if rng.random() < ABANDON:
                        abandoned.append(("workflow", task["task_id"], lease))
                    else:
                        types = history_types(task)
                        if "ActivityCompleted" in types:
                            commands = [{"type": "complete_workflow", "result": WORLD_INPUT}]
                        elif "ActivityScheduled" not in types:
                            commands = [{"type": "schedule_activity", "activity_type": "stress.act", "arguments": WORLD_INPUT, "queue": queue}]
                        else:
                            commands = []
                        if commands:
                            c = await worker(f"/worker/workflow-tasks/{task['task_id']}/complete", {**lease, "commands": commands})
                        else:
                            failure = {"message": "waiting", "type": "WorkflowTaskWaitingForHistory"}
                            c = await worker(f"/worker/workflow-tasks/{task['task_id']}/fail", {**lease, "failure": failure})
                        assert c.status_code in (200, 409), c.text
                        if c.status_code == 200 and commands and commands[0]["type"] == "complete_workflow":
                            wf = task["workflow_id"]
                            accepted_terminal[wf] = accepted_terminal.get(wf, 0) + 1
                r = await worker(
                    "/worker/activity-tasks/poll",
                    {"worker_id": worker_id, "task_queue": queue, "timeout_seconds": 0, "poll_request_id": uuid.uuid4().hex},
                )
                assert r.status_code == 200, r.text
                task = r.json().get("task")
                if task:
                    lease = {"lease_owner": worker_id, "activity_attempt_id": task["activity_attempt_id"]}
                    if rng.random() < ABANDON:
                        abandoned.append(("activity", task["task_id"], lease))
                    else:
                        c = await worker(f"/worker/activity-tasks/{task['task_id']}/complete", {**lease, "result": WORLD_INPUT})
                        assert c.status_code in (200, 404, 409), c.text

        await asyncio.wait_for(asyncio.gather(*(poller(n) for n in range(POLLERS))), timeout=150)

        assert all(count == 1 for count in accepted_terminal.values()), "a workflow completed twice"
        for i in range(WORKFLOWS):
            wf = f"{queue}-wf-{i}"
            d = (await control("GET", f"/workflows/{wf}")).json()
            assert d["status"] == "completed", (wf, d["status"])
            h = (await control("GET", f"/workflows/{wf}/runs/{d['run_id']}/history", params={"page_size": 1000})).json()
            types = [e["event_type"] for e in h["events"]]
            assert types.count("WorkflowCompleted") == 1 and types.count("ActivityScheduled") == 1, (wf, types)
            assert types.count("ActivityCompleted") == 1, (wf, types)

        assert abandoned, "the run abandoned some leases"
        for kind, task_id, lease in abandoned:
            if kind == "workflow":
                body = {**lease, "commands": [{"type": "complete_workflow", "result": WORLD_INPUT}]}
                r = await worker(f"/worker/workflow-tasks/{task_id}/complete", body)
            else:
                r = await worker(f"/worker/activity-tasks/{task_id}/complete", {**lease, "result": WORLD_INPUT})
            assert r.status_code in (404, 409), f"stale {kind} lease was accepted: {r.status_code} {r.text}"


def test_hundreds_of_workflows_with_abandoned_leases_complete_exactly_once(keel_factory: Any) -> None:
    server = keel_factory(workflow_task_lease_seconds=1, activity_task_lease_seconds=1)
    asyncio.run(run_stress(server))
