"""Repair and archive through the real SDK (``Client.repair_workflow`` and
``Client.archive_workflow``), with raw HTTP for the run-targeted routes and errors."""

from __future__ import annotations

import asyncio

from durable_workflow import Client, workflow

from keel_harness import KeelServer, RawApi, event_types, expect_error, expect_status, history_events, running_worker, unique, wait_for_results


@workflow.defn(name="e2e.repair.echo")
class Echo:
    def run(self, ctx, text):  # type: ignore[no-untyped-def]
        return text


@workflow.defn(name="e2e.repair.once_more")
class OnceMore:
    # Continues once, so the workflow id has a historical run.
    def run(self, ctx, n):  # type: ignore[no-untyped-def]
        if n == 0:
            return ctx.continue_as_new(1)
        return n


def test_repair_redispatches_a_failed_workflow_task_at_once(keel: KeelServer, api: RawApi) -> None:
    task_queue = unique("e2e-repair")
    workflow_id = unique("e2e-repair")
    api.start_workflow(workflow_id, "e2e.repair.echo", task_queue)
    api.register_worker("repair-worker", task_queue)
    task = api.lease_workflow_task("repair-worker", task_queue)

    async def repair() -> object:
        async with Client(keel.url) as client:
            return await client.repair_workflow(workflow_id)

    # A live lease needs nothing.
    healthy = asyncio.run(repair())
    assert healthy.outcome == "repair_not_needed"  # type: ignore[attr-defined]

    # A failed workflow task waits out a retry backoff; repair makes it ready now.
    failed = api.worker(
        "POST",
        f"/worker/workflow-tasks/{task['task_id']}/fail",
        json={"lease_owner": "repair-worker", "workflow_task_attempt": task["workflow_task_attempt"],
              "failure": {"message": "replay exploded", "type": "NonDeterministicReplayError"}},
    )
    expect_status(failed, 200, "fail the workflow task")
    result = asyncio.run(repair())
    assert result.outcome == "repair_dispatched"  # type: ignore[attr-defined]
    assert result.command_status == "accepted"  # type: ignore[attr-defined]
    assert result.run_id == task["run_id"]  # type: ignore[attr-defined]
    assert result.command_id  # type: ignore[attr-defined]
    again = api.poll_workflow_task("repair-worker", task_queue, timeout_seconds=2)
    assert again is not None and again["task_id"] == task["task_id"]
    assert again["history_events"][-1]["event_type"] == "RepairRequested"
    assert again["history_events"][-1]["payload"]["workflow_command_id"] == result.command_id  # type: ignore[attr-defined]

    # Run-targeted: the current run is accepted, an unknown one is not found.
    run_scoped = api.control("POST", f"/workflows/{workflow_id}/runs/{task['run_id']}/repair", json={})
    expect_status(run_scoped, 200, "run-targeted repair")
    assert run_scoped.json()["target_scope"] == "run"
    assert run_scoped.json()["outcome"] == "repair_not_needed"
    expect_error(api.control("POST", f"/workflows/{workflow_id}/runs/nope/repair", json={}), 404, "run_not_found")
    expect_error(api.control("POST", f"/workflows/{unique('missing')}/repair", json={}), 404, "instance_not_found")
    expect_error(api.control("POST", f"/workflows/{workflow_id}/repair", json=[1]), 422, "validation_failed")


def test_archive_takes_closed_current_runs_once(keel: KeelServer, api: RawApi) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-archive")
        async with Client(keel.url) as client:
            open_id = unique("e2e-open")
            await client.start_workflow(workflow_type="e2e.repair.echo", task_queue=unique("idle"), workflow_id=open_id, input=["x"])
            body = expect_error(api.control("POST", f"/workflows/{open_id}/archive", json={}), 409, "run_not_closed")
            assert body["run_status"] == "pending"

            workflow_id = unique("e2e-archive")
            async with running_worker(client, task_queue=task_queue, workflows=[OnceMore]) as worker:
                first = await client.start_workflow(
                    workflow_type="e2e.repair.once_more", task_queue=task_queue, workflow_id=workflow_id, input=[0]
                )
                [result] = await wait_for_results(client, [client.get_workflow_handle(workflow_id)], worker=worker, timeout=60)
            assert result == 1
            current = await client.describe_workflow(workflow_id)

            # The historical run cannot be targeted, by archive or repair.
            for command in ("archive", "repair"):
                body = expect_error(
                    api.control("POST", f"/workflows/{workflow_id}/runs/{first.run_id}/{command}", json={}),
                    409,
                    "historical_run_command_rejected",
                )
                assert body["current_run_id"] == current.run_id

            repaired = await client.repair_workflow(workflow_id)
            assert repaired.outcome == "repair_not_needed"

            archived = await client.archive_workflow(workflow_id, reason="quarterly cleanup")
            assert archived.outcome == "archived"
            assert archived.run_id == current.run_id
            assert archived.command_status == "accepted"
            again = await client.archive_workflow(workflow_id)
            assert again.outcome == "archive_not_needed"
            run_scoped = api.control("POST", f"/workflows/{workflow_id}/runs/{current.run_id}/archive", json={})
            expect_status(run_scoped, 200, "run-targeted archive")
            assert run_scoped.json()["outcome"] == "archive_not_needed"

            # The result survives: the archive events follow the terminal one.
            assert await client.get_result(client.get_workflow_handle(workflow_id)) == 1
            run = await client.describe_workflow_run(workflow_id, current.run_id)
            assert run.status == "completed"
            assert run.actions is not None and run.actions["can_archive"] is False
            types = event_types(await history_events(client, workflow_id, current.run_id))
            assert types[-3:] == ["WorkflowCompleted", "ArchiveRequested", "WorkflowArchived"], types

    asyncio.run(scenario())
