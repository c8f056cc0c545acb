"""Workflow execution and run timeouts through the real SDK: the run ends `failed`
with a `WorkflowTimedOut` event, which `get_result` raises as `WorkflowTimedOut`."""

from __future__ import annotations

import asyncio

import pytest
from durable_workflow import Client
from durable_workflow.errors import WorkflowTimedOut

from keel_harness import KeelServer, event_types, history_events, unique


@pytest.mark.parametrize("which", ["run", "execution"])
def test_a_workflow_past_its_deadline_fails_with_workflow_timed_out(keel: KeelServer, which: str) -> None:
    async def scenario() -> None:
        async with Client(keel.url) as client:
            timeouts = {"run_timeout_seconds": 1, "execution_timeout_seconds": 60}
            if which == "execution":
                timeouts = {"run_timeout_seconds": 60, "execution_timeout_seconds": 1}
            # No worker polls this queue: only the deadline can end the run.
            handle = await client.start_workflow(
                workflow_type="e2e.timeouts.never", task_queue=unique("timeouts"), workflow_id=unique("to"), input=[], **timeouts
            )
            with pytest.raises(WorkflowTimedOut):
                await client.get_result(handle, timeout=30, poll_interval=0.2)
            described = await client.describe_workflow(handle.workflow_id)
            assert described.status == "failed"
            events = await history_events(client, handle.workflow_id, handle.run_id)
            assert event_types(events)[-1] == "WorkflowTimedOut"
            assert events[-1]["payload"]["timeout_kind"] == f"{which}_timeout"

    asyncio.run(scenario())
