"""Local activities (sdk-protocol §7.2): the SDK runs the activity inside its workflow
task and reports it with ``record_local_activity``; Keel records an activity-shaped step
with ``execution_mode: "local"`` that later tasks replay."""

from __future__ import annotations

import asyncio

from durable_workflow import Client, activity, workflow

from keel_harness import (
    KeelServer,
    RawApi,
    event_types,
    expect_error,
    history_events,
    running_worker,
    unique,
    wait_for_results,
)

WORKFLOW_TYPE = "e2e.local.raw"


@activity.defn(name="e2e.local.echo")
def echo(text: str) -> str:
    return text


@activity.defn(name="e2e.local.boom")
def boom(text: str) -> str:
    raise ValueError(f"boom {text}")


@workflow.defn(name="e2e.local.steps")
class LocalSteps:
    """A local step, a timer (so a later task replays it), another local step, then a
    failing local step retried once and caught."""

    def run(self, ctx, text):  # type: ignore[no-untyped-def]
        first = yield ctx.local_activity("e2e.local.echo", [text], start_to_close_timeout=30)
        yield ctx.start_timer(1)
        second = yield ctx.local_activity("e2e.local.echo", [first + "!"], start_to_close_timeout=30)
        try:
            yield ctx.local_activity(
                "e2e.local.boom", [text], start_to_close_timeout=30, retry_policy={"max_attempts": 2}
            )
        except Exception as error:  # noqa: BLE001 (the workflow reports what it caught)
            return {"result": second, "caught": type(error).__name__}
        return {"result": second, "caught": None}


def test_local_activities_are_recorded_replayed_and_their_failures_reach_the_workflow(keel: KeelServer) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-local")
        async with Client(keel.url) as client:
            async with running_worker(
                client, task_queue=task_queue, workflows=[LocalSteps], activities=[echo, boom]
            ) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.local.steps",
                    task_queue=task_queue,
                    workflow_id=unique("e2e-local"),
                    input=["hi"],
                )
                [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)

            assert result == {"result": "hi!", "caught": "ActivityFailed"}
            events = await history_events(client, handle.workflow_id, handle.run_id)
            steps = [e for e in events if e["event_type"].startswith("Activity")]
            assert [(e["event_type"], e["payload"]["sequence"]) for e in steps] == [
                ("ActivityScheduled", 1),
                ("ActivityCompleted", 1),
                ("ActivityScheduled", 3),
                ("ActivityCompleted", 3),
                ("ActivityScheduled", 4),
                ("ActivityFailed", 4),
            ]
            assert all(e["payload"]["execution_mode"] == "local" for e in steps)
            failed = steps[-1]["payload"]
            assert failed["attempt_number"] == 2 and failed["message"] == "boom hi", failed
            assert failed["exception_type"] == "ValueError"
            # The second local step ran in a later task, which replayed the first.
            types = event_types(events)
            assert types.index("TimerFired") < types.index("ActivityCompleted", types.index("TimerFired")), types

    asyncio.run(scenario())


def test_record_local_activity_without_an_outcome_is_rejected(api: RawApi) -> None:
    task_queue = unique("e2e-local-raw")
    worker_id = unique("e2e-raw-worker")
    workflow_id = unique("e2e-local-raw")
    api.start_workflow(workflow_id, WORKFLOW_TYPE, task_queue)
    api.register_worker(worker_id, task_queue, workflow_types=[WORKFLOW_TYPE])
    task = api.lease_workflow_task(worker_id, task_queue)
    response = api.complete_workflow_task(
        task,
        [{"type": "record_local_activity", "activity_type": "x", "execution_mode": "local", "arguments": None}],
    )
    expect_error(response, 422, "invalid_commands")
