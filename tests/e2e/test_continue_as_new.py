"""Continue-as-new through the real SDK: a chain of runs under one workflow id."""

from __future__ import annotations

import asyncio

from durable_workflow import Client, workflow

from keel_harness import KeelServer, RawApi, event_types, expect_error, history_events, running_worker, unique, wait_for_results


@workflow.defn(name="e2e.can.counter")
class Counter:
    # Each run adds one and continues until `limit`; the last run returns the count.
    def run(self, ctx, n, limit):  # type: ignore[no-untyped-def]
        if n < limit:
            return ctx.continue_as_new(n + 1, limit)
        return {"final": n}


def test_continue_as_new_chains_runs_under_one_workflow_id(keel: KeelServer, api: RawApi) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-can")
        workflow_id = unique("e2e-counter")
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, workflows=[Counter]) as worker:
                first = await client.start_workflow(
                    workflow_type="e2e.can.counter",
                    task_queue=task_queue,
                    workflow_id=workflow_id,
                    input=[0, 3],
                )
                # A handle without a run id follows the workflow id to its newest run.
                [result] = await wait_for_results(
                    client, [client.get_workflow_handle(workflow_id)], worker=worker, timeout=60
                )
            assert result == {"final": 3}

            # A handle pinned to the first run reads that run's history, which ends in
            # WorkflowContinuedAsNew: the SDK finds no result there.
            assert await client.get_result(first, timeout=10) is None

            current = await client.describe_workflow(workflow_id)
            assert current.status == "completed"
            assert current.run_id != first.run_id

            runs = await client.list_workflow_runs(workflow_id)
            assert runs.run_count == 4
            assert [r.run_number for r in runs.runs] == [1, 2, 3, 4]
            assert [r.status for r in runs.runs] == ["completed"] * 4
            assert [r.closed_reason for r in runs.runs] == ["continued", "continued", "continued", "completed"]
            assert runs.runs[0].run_id == first.run_id
            assert runs.runs[-1].run_id == current.run_id
            assert [r.is_current_run for r in runs.runs] == [False, False, False, True]

            old = await client.describe_workflow_run(workflow_id, first.run_id)
            assert old.run_number == 1 and old.run_count == 4 and old.is_current_run is False
            assert old.closed_reason == "continued"
            newest = await client.describe_workflow_run(workflow_id, current.run_id)
            assert newest.run_number == 4 and newest.is_current_run is True

            first_events = await history_events(client, workflow_id, first.run_id)
            assert event_types(first_events)[-1] == "WorkflowContinuedAsNew"
            assert first_events[-1]["payload"]["continued_to_run_id"] == runs.runs[1].run_id
            assert first_events[-1]["payload"]["continued_to_run_number"] == 2
            second_events = await history_events(client, workflow_id, runs.runs[1].run_id)
            assert second_events[0]["event_type"] == "WorkflowStarted"
            assert second_events[0]["payload"]["continued_from_run_id"] == first.run_id

            # The list shows the workflow id once, at its newest run.
            listed = await client.list_workflows(query=workflow_id)
            assert [(w.workflow_id, w.run_id) for w in listed.executions] == [(workflow_id, current.run_id)]

    asyncio.run(scenario())

    missing = api.control("GET", f"/workflows/{unique('missing')}/runs")
    expect_error(missing, 404, "instance_not_found")
