"""Worker sessions through the real SDK, the way a user writes them: a worker takes a
session with ``worker.worker_session(WorkerSessionOptions(...)).create()``, a workflow
schedules activities with ``ctx.schedule_activity(..., worker_session=options)``, and
those activities run only on the worker holding the session. The holder renews it with
``session.renew()`` and closes it with ``session.close()`` (``Worker.stop()`` closes the
sessions it holds). A session whose lease lapses can be reacquired by another worker, or
ends when ``allow_reacquire_after_failure=False``; an activity whose session ended fails
in workflow code with ``ActivityFailed`` (``exception_type`` ``WorkerSessionUnavailable``)."""

from __future__ import annotations

import asyncio

from durable_workflow import ActivityFailed, Client, WorkerSessionOptions, activity, workflow

from keel_harness import KeelServer, RawApi, async_wait_until, running_worker, unique, wait_for_results


@activity.defn(name="e2e.sessions.where")
async def where(step: int) -> str:
    """Which worker ran this step."""
    return activity.context().info.worker_id


@workflow.defn(name="e2e.sessions.steps")
class Steps:
    def run(self, ctx, session_id, steps):  # type: ignore[no-untyped-def]
        options = WorkerSessionOptions(session_id=session_id)
        ran_on = []
        for step in range(steps):
            ran_on.append((yield ctx.schedule_activity("e2e.sessions.where", [step], worker_session=options)))
        return ran_on


@workflow.defn(name="e2e.sessions.one_step")
class OneStep:
    def run(self, ctx, session_id, allow_reacquire):  # type: ignore[no-untyped-def]
        options = WorkerSessionOptions(session_id=session_id, allow_reacquire_after_failure=allow_reacquire)
        try:
            worker_id = yield ctx.schedule_activity("e2e.sessions.where", [0], worker_session=options)
        except ActivityFailed as error:
            return {"failed": error.exception_type, "message": str(error)}
        return {"ran_on": worker_id}


def _session(api: RawApi, session_id: str) -> dict:  # type: ignore[type-arg]
    response = api.control("GET", f"/worker-sessions/{session_id}")
    assert response.status_code == 200, response.text
    return response.json()["session"]


async def _registered(api: RawApi, *runs) -> None:  # type: ignore[no-untyped-def]
    """Waits until each worker's registration is in (a session needs a registered holder)."""
    for run in runs:
        worker_id = run.worker.worker_id
        await async_wait_until(
            lambda: api.control("GET", f"/workers/{worker_id}").status_code == 200,
            timeout=20,
            what=f"worker {worker_id} to register",
        )


def test_a_sessions_activities_run_only_on_the_worker_holding_it(keel: KeelServer, api: RawApi) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-sessions")
        session_id = unique("session")
        async with Client(keel.url) as client:
            async with (
                running_worker(client, task_queue=task_queue, workflows=[Steps], activities=[where]) as holder,
                running_worker(client, task_queue=task_queue, workflows=[Steps], activities=[where]) as other,
            ):
                await _registered(api, holder, other)
                session = holder.worker.worker_session(WorkerSessionOptions(session_id=session_id))
                created = await session.create()
                assert created["outcome"] == "created"
                assert created["session"]["lease_owner"] == holder.worker.worker_id
                assert session.active

                handle = await client.start_workflow(
                    workflow_type="e2e.sessions.steps",
                    task_queue=task_queue,
                    workflow_id=unique("e2e-session-steps"),
                    input=[session_id, 6],
                )
                [ran_on] = await wait_for_results(client, [handle], worker=holder, timeout=60)
                assert ran_on == [holder.worker.worker_id] * 6, (
                    f"every step on the holder {holder.worker.worker_id}, none on {other.worker.worker_id}"
                )

                renewed = await session.renew()
                assert renewed["outcome"] == "heartbeat_recorded"
                seen = _session(api, session_id)
                assert seen["status"] == "active"
                assert seen["lease_owner"] == holder.worker.worker_id
                assert seen["holder"]["worker_id"] == holder.worker.worker_id

                listed = api.control("GET", "/worker-sessions")
                assert listed.status_code == 200, listed.text
                assert session_id in [s["session_id"] for s in listed.json()["sessions"]]
            # Stopping the holder closed the session it held.
            closed = _session(api, session_id)
            assert closed["status"] == "closed"
            assert closed["close_reason"] == "worker_shutdown"

    asyncio.run(scenario())


def test_an_activity_of_a_closed_session_fails_in_workflow_code(keel: KeelServer, api: RawApi) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-sessions-closed")
        session_id = unique("session")
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, workflows=[OneStep], activities=[where]) as run:
                await _registered(api, run)
                session = run.worker.worker_session(WorkerSessionOptions(session_id=session_id))
                await session.create()
                closed = await session.close("done_with_it")
                assert closed["outcome"] == "closed"
                assert not session.active

                handle = await client.start_workflow(
                    workflow_type="e2e.sessions.one_step",
                    task_queue=task_queue,
                    workflow_id=unique("e2e-session-closed"),
                    input=[session_id, True],
                )
                [result] = await wait_for_results(client, [handle], worker=run, timeout=60)
            assert result["failed"] == "WorkerSessionUnavailable", result
            assert "session_closed" in result["message"], result

    asyncio.run(scenario())


def test_a_renewed_session_stays_held_and_a_lapsed_one_is_reacquired_or_ends(keel: KeelServer, api: RawApi) -> None:
    async def scenario() -> None:
        task_queue = unique("e2e-sessions-lapse")
        renewed_id = unique("renewed")
        reacquirable = unique("reacquirable")
        one_holder = unique("one-holder")
        async with Client(keel.url) as client:
            # A holder that renews keeps its 1-second lease well past a second.
            async with running_worker(client, task_queue=task_queue, activities=[where]) as holder:
                await _registered(api, holder)
                session = holder.worker.worker_session(WorkerSessionOptions(session_id=renewed_id, lease_seconds=1))
                await session.create()
                for _ in range(6):
                    await asyncio.sleep(0.4)
                    await session.renew()
                    assert _session(api, renewed_id)["status"] == "active"

            # A holder that is gone (it never renews): its leases lapse on the server's
            # timers.
            api.register_worker("gone-worker", task_queue, activity_types=["e2e.sessions.where"])
            for session_id, allow in ((reacquirable, True), (one_holder, False)):
                response = api.worker(
                    "POST",
                    "/worker/sessions",
                    json={
                        "worker_id": "gone-worker",
                        "session_id": session_id,
                        "lease_seconds": 1,
                        "allow_reacquire_after_failure": allow,
                    },
                )
                assert response.status_code == 201, response.text
            await async_wait_until(
                lambda: _session(api, reacquirable)["status"] == "expired"
                and _session(api, one_holder)["status"] == "closed",
                timeout=20,
                what="the unrenewed sessions to lapse",
            )
            assert _session(api, reacquirable)["failure_reason"] == "lease_expired"
            assert _session(api, one_holder)["failure_reason"] == "lease_expired"

            # Another worker picks the lapsed session up with its next activity; the one
            # that may not be reacquired fails its activity instead.
            async with running_worker(
                client, task_queue=task_queue, workflows=[OneStep], activities=[where]
            ) as replacement:
                handles = [
                    await client.start_workflow(
                        workflow_type="e2e.sessions.one_step",
                        task_queue=task_queue,
                        workflow_id=unique("e2e-session-lapse"),
                        input=[session_id, allow],
                    )
                    for session_id, allow in ((reacquirable, True), (one_holder, False))
                ]
                reacquired, refused = await wait_for_results(client, handles, worker=replacement, timeout=60)
                assert reacquired == {"ran_on": replacement.worker.worker_id}
                seen = _session(api, reacquirable)
                assert seen["status"] == "active"
                assert seen["lease_owner"] == replacement.worker.worker_id
            assert refused["failed"] == "WorkerSessionUnavailable", refused
            assert "lease_expired" in refused["message"], refused

    asyncio.run(scenario())


def test_bad_session_requests_are_refused_with_named_reasons(keel: KeelServer, api: RawApi) -> None:
    task_queue = unique("e2e-sessions-bad")
    api.register_worker("w-a", task_queue)
    api.register_worker("w-b", task_queue)

    bad = api.worker("POST", "/worker/sessions", json={"worker_id": "w-a", "session_id": "s", "lease_seconds": 0})
    assert bad.status_code == 422, bad.text
    assert "lease_seconds" in bad.json()["errors"], bad.text

    unknown = api.worker("POST", "/worker/sessions", json={"worker_id": "nobody", "session_id": "s"})
    assert unknown.status_code == 412, unknown.text
    assert unknown.json()["reason"] == "worker_not_registered"

    created = api.worker("POST", "/worker/sessions", json={"worker_id": "w-a", "session_id": "s"})
    assert created.status_code == 201, created.text
    taken = api.worker("POST", "/worker/sessions", json={"worker_id": "w-b", "session_id": "s"})
    assert taken.status_code == 409, taken.text
    assert taken.json()["reason"] == "session_owned_by_another_worker"
    renew = api.worker("POST", "/worker/sessions/s/heartbeat", json={"worker_id": "w-b"})
    assert renew.status_code == 409 and renew.json()["reason"] == "session_owner_mismatch", renew.text
    missing = api.worker("POST", "/worker/sessions/nope/heartbeat", json={"worker_id": "w-a"})
    assert missing.status_code == 404 and missing.json()["reason"] == "session_not_found", missing.text
    assert api.control("GET", "/worker-sessions/nope").status_code == 404
