"""Schedules through the real SDK schedule client (create, describe, list, update,
pause, resume, trigger, backfill, history, delete), scheduled runs completing on a real
worker, a schedule surviving kill -9 (the overdue fire runs promptly and exactly once
after restart), and the typed errors of the schedule routes."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any

import pytest
from durable_workflow import Client, activity, workflow
from durable_workflow.client import ScheduleAction, ScheduleSpec
from durable_workflow.errors import InvalidArgument, ScheduleAlreadyExists, ScheduleNotFound

from keel_harness import (
    KeelServer,
    RawApi,
    async_wait_until,
    expect_status,
    running_worker,
    unique,
    wait_for_results,
    wait_until,
)

# ── workflows and activities (type names are unique to this module) ──────


@activity.defn(name="e2e.schedules.greet")
def greet(name: str) -> str:
    return f"hello, {name}"


@workflow.defn(name="e2e.schedules.greeter")
class ScheduledGreeter:
    def run(self, ctx, name="nobody"):  # type: ignore[no-untyped-def]
        greeting = yield ctx.schedule_activity("e2e.schedules.greet", [name], start_to_close_timeout=30)
        return greeting


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def history_of(api: RawApi, schedule_id: str) -> list[dict[str, Any]]:
    response = api.control("GET", f"/schedules/{schedule_id}/history", params={"limit": 500})
    expect_status(response, 200, f"history of {schedule_id}")
    return response.json()["events"]


def started_ids(events: list[dict[str, Any]]) -> list[str]:
    return [
        e["workflow_instance_id"]
        for e in events
        if e["event_type"] == "ScheduleTriggered" and str(e["payload"].get("outcome", "")).startswith("started")
    ]


# ── the SDK schedule client ────────────────────────────────────────────────


def test_sdk_schedule_client_lifecycle(keel: KeelServer) -> None:
    task_queue = unique("e2e-sched-sdk")
    schedule_id = unique("e2e-sched")

    async def scenario() -> None:
        async with Client(keel.url) as client:
            handle = await client.create_schedule(
                schedule_id=schedule_id,
                spec=ScheduleSpec(cron_expressions=["0 0 1 1 *"], timezone="America/New_York"),
                action=ScheduleAction(
                    workflow_type="e2e.schedules.greeter",
                    task_queue=task_queue,
                    input=["world"],
                    execution_timeout_seconds=600,
                ),
                overlap_policy="allow_all",
                memo={"team": "e2e"},
                note="yearly greeting",
            )
            assert handle.schedule_id == schedule_id

            with pytest.raises(ScheduleAlreadyExists):
                await client.create_schedule(
                    schedule_id=schedule_id,
                    spec=ScheduleSpec(cron_expressions=["0 0 1 1 *"]),
                    action=ScheduleAction(workflow_type="e2e.schedules.greeter", task_queue=task_queue),
                )
            with pytest.raises(InvalidArgument) as invalid:
                await client.create_schedule(
                    schedule_id=unique("e2e-sched-bad"),
                    spec=ScheduleSpec(cron_expressions=["61 * * * *"], timezone="Mars/Olympus"),
                    action=ScheduleAction(workflow_type="e2e.schedules.greeter"),
                )
            assert invalid.value.errors is not None
            assert {"spec.cron_expressions.0", "spec.timezone"} <= set(invalid.value.errors)

            described = await handle.describe()
            assert described.status == "active"
            assert described.spec is not None and described.spec["cron_expressions"] == ["0 0 1 1 *"]
            assert described.spec["timezone"] == "America/New_York"
            assert described.action is not None and described.action["task_queue"] == task_queue
            assert described.overlap_policy == "allow_all"
            assert described.note == "yearly greeting"
            assert described.memo == {"team": "e2e"}
            assert described.next_fire_at is not None
            # New Year's midnight in New York is 05:00 UTC.
            assert parse_time(described.next_fire_at).strftime("%m-%dT%H:%M") == "01-01T05:00"

            listed = await client.list_schedules(workflow_type="e2e.schedules.greeter", status="active")
            assert schedule_id in [s.schedule_id for s in listed.schedules]

            await handle.update(note="updated", jitter_seconds=5)
            described = await handle.describe()
            assert (described.note, described.jitter_seconds) == ("updated", 5)

            await handle.pause(note="maintenance")
            described = await handle.describe()
            assert (described.status, described.next_fire_at) == ("paused", None)
            assert described.paused_at is not None
            paused = await client.list_schedules(status="paused")
            assert schedule_id in [s.schedule_id for s in paused.schedules]
            await handle.resume()
            assert (await handle.describe()).status == "active"

            triggered = await handle.trigger()
            assert triggered.outcome == "triggered", triggered
            assert triggered.workflow_id and triggered.workflow_id.startswith(f"{schedule_id}-")

            backfill = await handle.backfill(
                start_time="2024-01-01T00:00:00Z",
                end_time="2026-01-01T00:00:00Z",
            )
            assert backfill.fires_attempted == 2, backfill
            assert backfill.results is not None
            assert [r["workflow_id"] for r in backfill.results] == [
                f"{schedule_id}-2024-01-01T05:00:00Z",
                f"{schedule_id}-2025-01-01T05:00:00Z",
            ]
            assert all(r["outcome"] == "started" for r in backfill.results)

            # Every run the schedule started completes on a real worker, with the
            # schedule's input, and carries the schedule's id.
            workflow_ids = [triggered.workflow_id] + [r["workflow_id"] for r in backfill.results]
            handles = [client.get_workflow_handle(w) for w in workflow_ids]
            async with running_worker(
                client, task_queue=task_queue, workflows=[ScheduledGreeter], activities=[greet]
            ) as worker:
                results = await wait_for_results(client, handles, worker=worker, timeout=60)
            assert results == ["hello, world"] * 3
            run = await client.describe_workflow(workflow_ids[1])
            assert run.search_attributes is not None
            assert run.search_attributes["DurableWorkflowScheduleId"] == schedule_id
            assert run.memo == {"team": "e2e"}

            described = await handle.describe()
            assert described.fires_count == 3
            assert described.latest_workflow_instance_id in workflow_ids

            types = [e.event_type async for e in client.iter_schedule_history(schedule_id, limit=2)]
            assert types == [
                "ScheduleCreated",
                "ScheduleUpdated",
                "SchedulePaused",
                "ScheduleResumed",
                "ScheduleTriggered",
                "ScheduleTriggered",
                "ScheduleTriggered",
            ], types
            first_page = await client.get_schedule_history(schedule_id, limit=3)
            assert first_page.has_more and first_page.next_cursor == 3
            assert [e.sequence for e in first_page.events] == [1, 2, 3]

            await handle.delete()
            with pytest.raises(ScheduleNotFound):
                await handle.describe()
            remaining = await client.list_schedules()
            assert schedule_id not in [s.schedule_id for s in remaining.schedules]
            # The audit stream outlives the schedule.
            last = (await client.get_schedule_history(schedule_id, after_sequence=7)).events
            assert [e.event_type for e in last] == ["ScheduleDeleted"]

    asyncio.run(scenario())


def test_interval_schedule_starts_runs_on_time(keel: KeelServer) -> None:
    task_queue = unique("e2e-sched-interval")
    schedule_id = unique("e2e-sched-every")

    async def scenario() -> None:
        async with Client(keel.url) as client:
            await client.create_schedule(
                schedule_id=schedule_id,
                spec=ScheduleSpec(intervals=[{"every": "PT2S"}]),
                action=ScheduleAction(workflow_type="e2e.schedules.greeter", task_queue=task_queue, input=["tick"]),
                overlap_policy="allow_all",
            )
            async with running_worker(
                client, task_queue=task_queue, workflows=[ScheduledGreeter], activities=[greet]
            ) as worker:

                async def three_fires() -> list[Any]:
                    page = await client.get_schedule_history(schedule_id, limit=500)
                    fires = [
                        e for e in page.events
                        if e.event_type == "ScheduleTriggered" and e.payload and e.payload.get("outcome") == "started"
                    ]
                    return fires if len(fires) >= 3 else []

                fires = await async_wait_until(three_fires, 30, "three interval fires")
                handles = [client.get_workflow_handle(str(f.workflow_instance_id)) for f in fires[:3]]
                assert await wait_for_results(client, handles, worker=worker, timeout=60) == ["hello, tick"] * 3
            await client.delete_schedule(schedule_id)

        nominal = [parse_time(str(f.payload["occurrence_time"])) for f in fires[:3] if f.payload]
        recorded = [parse_time(str(f.recorded_at)) for f in fires[:3]]
        # Fires land on the 2-second grid, in order, one per interval...
        assert [(b - a).total_seconds() for a, b in zip(nominal, nominal[1:])] == [2.0, 2.0]
        assert all(n.timestamp() % 2 == 0 for n in nominal)
        # ...and on time: the drift between nominal and actual fire stays small.
        drift = [(r - n).total_seconds() for n, r in zip(nominal, recorded)]
        assert all(0 <= d < 1.5 for d in drift), drift

    asyncio.run(scenario())


# ── durability ─────────────────────────────────────────────────────────────


def test_schedule_fires_promptly_and_exactly_once_after_kill9(keel: KeelServer) -> None:
    schedule_id = unique("e2e-sched-crash")
    with RawApi(keel.url) as api:
        response = api.control(
            "POST",
            "/schedules",
            json={
                "schedule_id": schedule_id,
                "spec": {"cron_expressions": ["*/2 * * * * *"]},
                "action": {"workflow_type": "e2e.schedules.greeter", "task_queue": unique("e2e-sched-crash-q")},
                "overlap_policy": "allow_all",
            },
        )
        expect_status(response, 201, "create schedule")
        wait_until(lambda: started_ids(history_of(api, schedule_id)), 15, "the first fire before the crash")

    keel.kill9()
    # Keep the server down across at least two nominal fire times (a deadline, not a
    # guess: the point is that time passes while nothing runs).
    down_until = time.time() + 4.5
    wait_until(lambda: time.time() >= down_until, 10, "the downtime to span two fire times")
    restarted_at = datetime.now(timezone.utc)
    keel.restart()

    with RawApi(keel.url) as api:
        expect_status(api.control("GET", f"/schedules/{schedule_id}"), 200, "schedule survives the crash")

        def fired_after_restart() -> list[dict[str, Any]]:
            return [
                e for e in history_of(api, schedule_id)
                if e["event_type"] == "ScheduleTriggered" and parse_time(e["recorded_at"]) >= restarted_at
            ]

        after = wait_until(fired_after_restart, 15, "a fire after restart")
        # The overdue fire runs promptly after start (within the process's start-up time
        # plus a little), not only at some later cadence tick.
        delay = (parse_time(after[0]["recorded_at"]) - restarted_at).total_seconds()
        assert delay < 5.0, delay

        events = history_of(api, schedule_id)
        skipped = [e for e in events if e["event_type"] == "ScheduleTriggerSkipped"]
        assert skipped and skipped[0]["payload"]["reason"] == "missed_while_unavailable", events
        assert skipped[0]["payload"]["skipped_trigger_count"] >= 1

        expect_status(api.control("DELETE", f"/schedules/{schedule_id}"), 204, "delete")
        ids = started_ids(history_of(api, schedule_id))
        # Exactly once: every fire has its own deterministic workflow id, each with one run.
        assert len(ids) == len(set(ids)), ids
        for workflow_id in ids:
            described = api.describe_workflow(workflow_id)
            assert described["search_attributes"]["DurableWorkflowScheduleId"] == schedule_id
            runs = api.control("GET", f"/workflows/{workflow_id}/runs")
            expect_status(runs, 200, f"runs of {workflow_id}")
            assert runs.json()["run_count"] == 1, runs.json()


# ── the error contract ─────────────────────────────────────────────────────


def test_schedule_routes_answer_bad_input_with_named_4xx(api: RawApi) -> None:
    schedule_id = unique("e2e-sched-errors")
    good = {
        "schedule_id": schedule_id,
        "spec": {"cron_expressions": ["0 0 * * *"]},
        "action": {"workflow_type": "e2e.schedules.greeter"},
    }
    expect_status(api.control("POST", "/schedules", json=good), 201, "create")

    cases: list[tuple[str, str, dict[str, Any] | None, int, str]] = [
        ("POST", "/schedules", good, 409, "schedule_already_exists"),
        ("POST", "/schedules", {**good, "schedule_id": "x", "spec": {"cron_expressions": ["* * *"]}}, 422, "validation_failed"),
        ("POST", "/schedules", {**good, "schedule_id": "x", "spec": {"intervals": [{"every": "P1M"}]}}, 422, "validation_failed"),
        ("POST", "/schedules", {**good, "schedule_id": "x", "spec": {"cron_expressions": ["@daily"], "timezone": "Nope/Zone"}}, 422, "validation_failed"),
        ("POST", "/schedules", {**good, "schedule_id": "x", "overlap_policy": "sometimes"}, 422, "validation_failed"),
        ("POST", "/schedules", {**good, "schedule_id": "x", "memo": {"m": "x" * 300_000}}, 422, "memo_too_large"),
        ("POST", "/schedules", {"spec": "daily"}, 422, "validation_failed"),
        ("GET", "/schedules/missing", None, 404, "schedule_not_found"),
        ("PUT", "/schedules/missing", {"note": "x"}, 404, "schedule_not_found"),
        ("DELETE", "/schedules/missing", None, 404, "schedule_not_found"),
        ("POST", "/schedules/missing/trigger", {}, 404, "schedule_not_found"),
        ("GET", "/schedules/missing/history", None, 404, "schedule_not_found"),
        ("PUT", f"/schedules/{schedule_id}", {"spec": {"cron_expressions": ["0 0 31 2 * * *"]}}, 422, "validation_failed"),
        ("POST", f"/schedules/{schedule_id}/backfill", {"start_time": "2026-01-02T00:00:00Z", "end_time": "2026-01-01T00:00:00Z"}, 422, "invalid_time_range"),
        ("POST", f"/schedules/{schedule_id}/backfill", {"start_time": "yesterday"}, 422, "validation_failed"),
        ("POST", f"/schedules/{schedule_id}/backfill", {"start_time": "2000-01-01T00:00:00Z", "end_time": "2026-01-01T00:00:00Z"}, 422, "backfill_too_large"),
        ("POST", f"/schedules/{schedule_id}/trigger", {"overlap_policy": 3}, 422, "validation_failed"),
        ("GET", f"/schedules/{schedule_id}/history?after_sequence=-1", None, 422, "validation_failed"),
        ("GET", "/schedules?page_size=0", None, 422, "validation_failed"),
        ("GET", "/schedules?status=deleted", None, 422, "validation_failed"),
        ("GET", "/schedules?next_page_token=not-a-token", None, 400, "malformed_schedule_page_token"),
        ("GET", "/schedules?query=Nope%20%3D%20'x'", None, 422, "unsupported_schedule_visibility_field"),
        ("GET", "/schedules?query=Status%20%3D%20'active'%20OR%20Status%20%3D%20'paused'", None, 422, "unsupported_schedule_visibility_predicate"),
    ]
    for method, path, body, status, reason in cases:
        response = api.control(method, path, json=body) if body is not None else api.control(method, path)
        expect_status(response, status, f"{method} {path}")
        assert response.json()["reason"] == reason, (method, path, response.text)

    invalid = api.control("POST", "/schedules", json={**good, "schedule_id": "x", "spec": {"cron_expressions": ["* * *"]}})
    assert "spec.cron_expressions.0" in invalid.json()["errors"]
    listing_error = api.control("GET", "/schedules?next_page_token=not-a-token").json()
    assert {"field", "errors", "validation_errors", "last_safe_cursor"} <= set(listing_error)
    # Nothing invalid was stored.
    listed = api.control("GET", "/schedules", params={"page_size": 200}).json()
    assert "x" not in [s["schedule_id"] for s in listed["schedules"]]
    # A token is bound to its filters.
    for i in range(2):
        expect_status(api.control("POST", "/schedules", json={**good, "schedule_id": f"{schedule_id}-{i}"}), 201, "create")
    page = api.control("GET", "/schedules", params={"page_size": 1}).json()
    assert page["schedule_count"] == 1 and page["next_page_token"]
    mismatch = api.control("GET", "/schedules", params={"page_size": 1, "status": "paused", "next_page_token": page["next_page_token"]})
    expect_status(mismatch, 409, "token reused with other filters")
    assert mismatch.json()["reason"] == "schedule_page_token_filter_mismatch"
    rest = api.control("GET", "/schedules", params={"page_size": 200, "next_page_token": page["next_page_token"]}).json()
    assert page["schedules"][0]["schedule_id"] not in [s["schedule_id"] for s in rest["schedules"]]
    assert rest["next_page_token"] is None
