"""Service calls, against operations in another namespace.

Through the SDK's Nexus client (``Client.execute_nexus_operation``), on an operation
bound to ``start_workflow``: a synchronous call returns the linked workflow's result, an
asynchronous one returns at once and is described until it completes, a resent
idempotency key returns the same call, a failing workflow surfaces as
``NexusOperationFailed``, a call is cancelled through its cancel route, and the
operation then refuses deletion (``operation_has_service_calls``).

From workflow code (``ctx.call_nexus_service`` / ``ctx.start_nexus_operation``, the
``start_service_operation`` command): the caller gets the linked workflow's result
(sync) or the accepted call (async), a ``signal_workflow`` binding signals a waiting
workflow, an ``update_workflow`` binding returns its handler's result, a failing or
unknown operation raises ``NexusOperationFailed`` inside the
workflow, cancelling the call cancels the caller's wait and cancelling the caller
cancels the linked workflow, an execute resent with the workflow's idempotency key
returns the workflow's call, and an ``activity_execution`` binding runs an activity of the target namespace.

``invocable_http`` and ``query_workflow`` bindings (a server started with
``--service-http-allow`` naming a tiny Python HTTP server of the test): the client and a
workflow get the endpoint's JSON body as the result, sent with the call id as
``Idempotency-Key``; a 503 is retried under the operation's retry policy, a 400 fails the
call, a host outside the allow-list is refused by name; a query binding returns the
workflow's query answer to the client and to a workflow, and fails with the query path's
reason when no worker can answer."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from durable_workflow import Client, activity, workflow
from durable_workflow.errors import NexusOperationFailed

from keel_harness import (
    KeelServer,
    RawApi,
    async_wait_until,
    expect_status,
    history_events,
    running_worker,
    unique,
    wait_for_results,
)


@workflow.defn(name="e2e.svc.greeter")
class Greeter:
    def run(self, ctx, name):  # type: ignore[no-untyped-def]
        return f"hello, {name}"
        yield  # a generator, like every workflow


@workflow.defn(name="e2e.svc.failer")
class Failer:
    def run(self, ctx, name):  # type: ignore[no-untyped-def]
        raise ValueError(f"no greeting for {name}")
        yield


@workflow.defn(name="e2e.svc.waiter")
class Waiter:
    def run(self, ctx):  # type: ignore[no-untyped-def]
        yield ctx.wait_condition(lambda: False, key="never")


@workflow.defn(name="e2e.svc.poked")
class Poked:
    def __init__(self) -> None:
        self.pokes: list[str] = []

    @workflow.signal("poke")
    def poke(self, who: str) -> None:
        self.pokes.append(who)

    @workflow.query("status")
    def status(self) -> int:
        return len(self.pokes)

    @workflow.update("count")
    def count(self, who: str) -> str:
        self.pokes.append(who)
        return f"{who} is poke {len(self.pokes)}"

    def run(self, ctx):  # type: ignore[no-untyped-def]
        yield ctx.wait_condition(lambda: bool(self.pokes), key="poked")
        return f"poked by {self.pokes[0]}"


@activity.defn(name="e2e.svc.shout")
def shout(word: str) -> str:
    return word.upper() + "!"


@workflow.defn(name="e2e.svc.caller")
class Caller:
    """Calls ``operation`` in ``target`` from workflow code and returns what it saw."""

    def run(self, ctx, target, operation, args, options):  # type: ignore[no-untyped-def]
        try:
            if options.get("start"):
                call = yield ctx.start_nexus_operation(
                    "Greetings", "hello", operation, args, target_namespace=target,
                    target_workflow_instance_id=options.get("target"),
                )
                return {"status": call.status, "id": call.service_call_id}
            call = yield ctx.call_nexus_service(
                "Greetings", "hello", operation, args, target_namespace=target,
                idempotency_key=options.get("key"), target_workflow_instance_id=options.get("target"),
            )
            return {"status": call.status, "id": call.service_call_id, "result": call.result}
        except NexusOperationFailed as e:
            return {
                "status": e.status, "failed": str(e), "reason": e.reason, "id": e.service_call_id,
                "error_type": e.service_error_type,
            }


def catalog(api: RawApi, ns: str, task_queue: str) -> None:
    h = {"X-Namespace": ns}
    expect_status(api.control("POST", "/namespaces", json={"name": ns}), 201, "namespace")
    expect_status(api.control("POST", "/service-endpoints", headers=h, json={"endpoint_name": "Greetings"}), 201, "endpoint")
    expect_status(
        api.control("POST", "/service-endpoints/greetings/services", headers=h, json={"service_name": "Hello"}), 201, "service"
    )
    for name, mode, workflow_type in [
        ("greet", "sync", "e2e.svc.greeter"),
        ("greet_later", "async", "e2e.svc.greeter"),
        ("fail", "sync", "e2e.svc.failer"),
        ("wait", "async", "e2e.svc.waiter"),
    ]:
        r = api.control(
            "POST",
            "/service-endpoints/greetings/services/hello/operations",
            headers=h,
            json={
                "operation_name": name,
                "operation_mode": mode,
                "handler_binding_kind": "start_workflow",
                "handler_binding": {"workflow_type": workflow_type, "task_queue": task_queue},
            },
        )
        expect_status(r, 201, f"operation {name}")
    r = api.control(
        "POST",
        "/service-endpoints/greetings/services/hello/operations",
        headers=h,
        json={
            "operation_name": "poke",
            "operation_mode": "sync",
            "handler_binding_kind": "signal_workflow",
            "handler_binding": {"signal_name": "poke"},
        },
    )
    expect_status(r, 201, "operation poke")
    r = api.control(
        "POST",
        "/service-endpoints/greetings/services/hello/operations",
        headers=h,
        json={
            "operation_name": "ask",
            "operation_mode": "sync",
            "handler_binding_kind": "query_workflow",
            "handler_binding": {"query_name": "status"},
        },
    )
    expect_status(r, 201, "operation ask")
    r = api.control(
        "POST",
        "/service-endpoints/greetings/services/hello/operations",
        headers=h,
        json={
            "operation_name": "shout",
            "operation_mode": "sync",
            "handler_binding_kind": "activity_execution",
            "handler_binding": {"activity_type": "e2e.svc.shout", "task_queue": task_queue},
        },
    )
    expect_status(r, 201, "operation shout")
    r = api.control(
        "POST",
        "/service-endpoints/greetings/services/hello/operations",
        headers=h,
        json={
            "operation_name": "count",
            "operation_mode": "sync",
            "handler_binding_kind": "update_workflow",
            "handler_binding": {"update_name": "count"},
        },
    )
    expect_status(r, 201, "operation count")


def test_start_workflow_operations_through_the_sdk(keel: KeelServer, api: RawApi) -> None:
    target = unique("svc-target").lower()
    task_queue = unique("e2e-svc")
    catalog(api, target, task_queue)
    ops = "/service-endpoints/greetings/services/hello/operations"
    h = {"X-Namespace": target}

    async def scenario() -> None:
        async with Client(keel.url) as caller, Client(keel.url, namespace=target) as callee:
            async with running_worker(callee, task_queue=task_queue, workflows=[Greeter, Failer, Waiter]):
                key = unique("greet-ada")
                sync = await caller.execute_nexus_operation(
                    "Greetings", "hello", "GREET", ["Ada"], target_namespace=target, idempotency_key=key
                )
                assert (sync.status, sync.result) == ("completed", "hello, Ada"), sync.response_or_failure_surface
                again = await caller.execute_nexus_operation(
                    "greetings", "hello", "greet", ["Ada"], target_namespace=target, idempotency_key=key
                )
                assert again.service_call_id == sync.service_call_id
                assert again.response_or_failure_surface["idempotent_replay"] is True

                later = await caller.execute_nexus_operation(
                    "greetings", "hello", "greet_later", ["Bo"], target_namespace=target
                )
                assert later.status == "started", later.response_or_failure_surface
                call_path = f"{ops}/greet_later/service-calls/{later.service_call_id}"

                async def completed() -> bool:
                    r = await asyncio.to_thread(api.control, "GET", call_path, headers=h)
                    return r.status_code == 200 and r.json()["status"] == "completed" and r.json()["result"] == "hello, Bo"

                await async_wait_until(completed, 30, "the async call completes")
                snapshot = api.control("GET", call_path, headers=h).json()
                assert snapshot["caller_namespace"] == "default"
                assert snapshot["resolved_binding_kind"] == "start_workflow"
                assert snapshot["linked_workflow_instance_id"] and snapshot["completed_at"]

                with pytest.raises(NexusOperationFailed) as failed:
                    await caller.execute_nexus_operation("greetings", "hello", "fail", ["Cy"], target_namespace=target)
                assert "no greeting for Cy" in str(failed.value)

                waiting = await caller.execute_nexus_operation("greetings", "hello", "wait", [], target_namespace=target)
                r = api.control("POST", f"{ops}/wait/service-calls/{waiting.service_call_id}/cancel", headers=h, json={"reason": "not needed"})
                expect_status(r, 200, "cancel")
                assert (r.json()["status"], r.json()["message"]) == ("cancelled", "not needed")
                linked = await callee.describe_workflow(r.json()["linked_workflow_instance_id"])
                assert linked.status == "cancelled"

    asyncio.run(scenario())
    r = api.control("DELETE", f"{ops}/greet", headers=h)
    expect_status(r, 409, "delete an operation with calls")
    assert r.json()["reason"] == "operation_has_service_calls"
    r = api.control("GET", f"{ops}/greet/service-calls/nope", headers=h)
    expect_status(r, 404, "unknown call")
    assert r.json()["reason"] == "service_call_not_found"


def test_workflows_call_operations_in_another_namespace(keel: KeelServer, api: RawApi) -> None:
    target = unique("svc-wf").lower()
    callee_queue, caller_queue = unique("e2e-svc-callee"), unique("e2e-svc-caller")
    catalog(api, target, callee_queue)
    ops = "/service-endpoints/greetings/services/hello/operations"
    h = {"X-Namespace": target}

    async def scenario() -> None:
        async with Client(keel.url) as caller, Client(keel.url, namespace=target) as callee:
            async with running_worker(
                callee, task_queue=callee_queue, workflows=[Greeter, Failer, Waiter, Poked], activities=[shout]
            ), \
                    running_worker(caller, task_queue=caller_queue, workflows=[Caller]) as caller_worker:

                async def run(operation: str, args: list, options: dict) -> dict:
                    handle = await caller.start_workflow(
                        workflow_type="e2e.svc.caller", task_queue=caller_queue, workflow_id=unique("caller"),
                        input=[target, operation, args, options],
                    )
                    [out] = await wait_for_results(caller, [handle], worker=caller_worker)
                    return out

                # Sync: the linked workflow's result comes back into the caller.
                key = unique("wf-key")
                out = await run("greet", ["Ada"], {"key": key})
                assert (out["status"], out["result"]) == ("completed", "hello, Ada"), out
                # A resent execute with the workflow's idempotency key finds its call.
                again = await caller.execute_nexus_operation(
                    "greetings", "hello", "greet", ["Ada"], target_namespace=target, idempotency_key=key
                )
                assert again.service_call_id == out["id"]
                assert again.response_or_failure_surface["idempotent_replay"] is True
                snapshot = api.control("GET", f"{ops}/greet/service-calls/{out['id']}", headers=h).json()
                assert snapshot["caller_namespace"] == "default" and snapshot["caller_workflow_instance_id"]

                # Async: the caller resumes at acceptance; the call completes on its own.
                out = await run("greet_later", ["Bo"], {"start": True})
                assert out["status"] == "started", out
                call_path = f"{ops}/greet_later/service-calls/{out['id']}"

                async def completed() -> bool:
                    r = await asyncio.to_thread(api.control, "GET", call_path, headers=h)
                    return r.status_code == 200 and r.json()["status"] == "completed"

                await async_wait_until(completed, 30, "the async call completes")

                # update_workflow: the caller gets the update handler's result.
                poked = await callee.start_workflow(
                    workflow_type="e2e.svc.poked", task_queue=callee_queue, workflow_id=unique("poked"), input=[]
                )
                out = await run("count", ["Ed"], {"target": poked.workflow_id})
                assert (out["status"], out["result"]) == ("completed", "Ed is poke 1"), out
                [poke_result] = await wait_for_results(callee, [poked])
                assert poke_result == "poked by Ed"

                # signal_workflow: the caller signals a waiting workflow of the target.
                poked = await callee.start_workflow(
                    workflow_type="e2e.svc.poked", task_queue=callee_queue, workflow_id=unique("poked"), input=[]
                )
                out = await run("poke", ["Cy"], {"target": poked.workflow_id})
                assert out["status"] == "completed", out
                [poke_result] = await wait_for_results(callee, [poked])
                assert poke_result == "poked by Cy"

                # activity_execution: an activity of the target namespace answers.
                out = await run("shout", ["hey"], {})
                assert (out["status"], out["result"]) == ("completed", "HEY!"), out

                # Failures are NexusOperationFailed inside the workflow.
                out = await run("fail", ["Di"], {})
                assert out["status"] == "failed" and "no greeting for Di" in out["failed"], out
                out = await run("nope", [], {})
                assert out["reason"] == "operation_not_found", out
                # A query binding needs a workflow to query: the step fails, naming the field.
                out = await run("ask", [], {})
                assert out["reason"] == "validation_failed" and "target_workflow_instance_id" in out["failed"], out

                # Cancelling the call (its cancel route) ends the caller's wait.
                linked = unique("linked")
                handle = await caller.start_workflow(
                    workflow_type="e2e.svc.caller", task_queue=caller_queue, workflow_id=unique("caller"),
                    input=[target, "wait", [], {"target": linked}],
                )

                async def call_id_of(workflow_id: str) -> str | None:
                    desc = await caller.describe_workflow(workflow_id)
                    for ev in await history_events(caller, workflow_id, desc.run_id):
                        if ev.get("event_type") == "ServiceCallStarted":
                            return ev["payload"]["service_call_id"]
                    return None

                await async_wait_until(lambda: call_id_of(handle.workflow_id), 30, "the caller's call starts")
                call_id = await call_id_of(handle.workflow_id)
                r = api.control("POST", f"{ops}/wait/service-calls/{call_id}/cancel", headers=h, json={"reason": "stop waiting"})
                expect_status(r, 200, "cancel")
                [out] = await wait_for_results(caller, [handle], worker=caller_worker)
                assert (out["status"], out["failed"]) == ("cancelled", "stop waiting"), out
                assert (await callee.describe_workflow(linked)).status == "cancelled"

                # Cancelling the caller cancels the linked workflow.
                linked = unique("linked")
                handle = await caller.start_workflow(
                    workflow_type="e2e.svc.caller", task_queue=caller_queue, workflow_id=unique("caller"),
                    input=[target, "wait", [], {"target": linked}],
                )
                await async_wait_until(lambda: call_id_of(handle.workflow_id), 30, "the caller's call starts")
                await caller.cancel_workflow(handle.workflow_id)

                async def linked_cancelled() -> bool:
                    return (await callee.describe_workflow(linked)).status == "cancelled"

                await async_wait_until(linked_cancelled, 30, "the linked workflow is cancelled")

    asyncio.run(scenario())


class HttpEndpoint:
    """A tiny HTTP server on a loopback port, in a thread: ``/echo`` answers 200 with the
    posted arguments, ``/flaky`` answers 503 once then 200, ``/bad`` answers 400. It
    records each request's path, ``Idempotency-Key`` and JSON body."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, dict]] = []
        self.flaky_left = 1
        lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with lock:
                    endpoint.seen.append((self.path, self.headers.get("Idempotency-Key"), body))
                    flaky = self.path == "/flaky" and endpoint.flaky_left > 0
                    if flaky:
                        endpoint.flaky_left -= 1
                if self.path == "/bad":
                    self.reply(400, {"error": "no such card"})
                elif flaky:
                    self.reply(503, {"error": "busy"})
                else:
                    self.reply(200, {"echo": body.get("arguments"), "path": self.path})

            def reply(self, status: int, doc: dict) -> None:
                raw = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def requests_to(self, path: str) -> list[tuple[str, str | None, dict]]:
        return [r for r in self.seen if r[0] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_http_and_query_bindings_through_the_sdk(keel_factory) -> None:  # type: ignore[no-untyped-def]
    endpoint = HttpEndpoint()
    try:
        keel = keel_factory(extra_args=["--service-http-allow", f"127.0.0.1:{endpoint.port}"])
        with RawApi(keel.url) as api:
            _http_and_query_bindings(keel, api, endpoint)
            assert not api.server_errors(), api.server_errors()
    finally:
        endpoint.close()


def _http_and_query_bindings(keel: KeelServer, api: RawApi, endpoint: HttpEndpoint) -> None:
    target = unique("svc-http").lower()
    callee_queue, caller_queue = unique("e2e-svc-callee"), unique("e2e-svc-caller")
    catalog(api, target, callee_queue)
    ops = "/service-endpoints/greetings/services/hello/operations"
    h = {"X-Namespace": target}
    for name, url, retry in [
        ("charge", endpoint.url("/echo"), None),
        ("flaky", endpoint.url("/flaky"), {"max_attempts": 3, "backoff_seconds": [1]}),
        ("reject", endpoint.url("/bad"), {"max_attempts": 3, "backoff_seconds": [1]}),
        ("elsewhere", "http://127.0.0.1:1/", None),
    ]:
        r = api.control(
            "POST", ops, headers=h,
            json={
                "operation_name": name,
                "operation_mode": "sync",
                "handler_binding_kind": "invocable_http",
                "handler_binding": {"url": url},
                "retry_policy": retry,
            },
        )
        expect_status(r, 201, f"operation {name}")
    r = api.control(
        "POST", ops, headers=h,
        json={"operation_name": "tls", "operation_mode": "sync", "handler_binding_kind": "invocable_http",
              "handler_binding": {"url": "https://127.0.0.1/"}},
    )
    expect_status(r, 422, "an https URL")
    assert "handler_binding.url" in r.json()["errors"], r.json()
    info = api.control("GET", "/cluster/info").json()
    kinds = info["capabilities"]["service_calls"]["binding_kinds"]
    assert "invocable_http" in kinds and "query_workflow" in kinds, kinds

    async def scenario() -> None:
        async with Client(keel.url) as caller, Client(keel.url, namespace=target) as callee:
            async with running_worker(callee, task_queue=callee_queue, workflows=[Poked]), \
                    running_worker(caller, task_queue=caller_queue, workflows=[Caller]) as caller_worker:
                # The client: the endpoint's JSON body is the result.
                out = await caller.execute_nexus_operation(
                    "greetings", "hello", "charge", ["Ada", 3], target_namespace=target
                )
                assert (out.status, out.result) == ("completed", {"echo": ["Ada", 3], "path": "/echo"}), out
                [(_, key, body)] = endpoint.requests_to("/echo")
                assert key == out.service_call_id and body["service_call_id"] == out.service_call_id

                # A 503 is retried (same key); a 400 is not; a host off the list is refused.
                out = await caller.execute_nexus_operation("greetings", "hello", "flaky", [], target_namespace=target)
                assert out.status == "completed", out.response_or_failure_surface
                keys = [k for (_, k, _) in endpoint.requests_to("/flaky")]
                assert keys == [out.service_call_id, out.service_call_id], keys
                with pytest.raises(NexusOperationFailed) as failed:
                    await caller.execute_nexus_operation("greetings", "hello", "reject", [], target_namespace=target)
                assert failed.value.service_error_type == "invocable_http_client_error", failed.value.body
                assert len(endpoint.requests_to("/bad")) == 1
                with pytest.raises(NexusOperationFailed) as failed:
                    await caller.execute_nexus_operation("greetings", "hello", "elsewhere", [], target_namespace=target)
                assert failed.value.reason == "invocable_http_host_not_allowed", failed.value.body

                async def run(operation: str, args: list, options: dict) -> dict:
                    handle = await caller.start_workflow(
                        workflow_type="e2e.svc.caller", task_queue=caller_queue, workflow_id=unique("caller"),
                        input=[target, operation, args, options],
                    )
                    [result] = await wait_for_results(caller, [handle], worker=caller_worker)
                    return result

                # A workflow: the same binding from workflow code.
                out = await run("charge", ["Bo"], {})
                assert (out["status"], out["result"]) == ("completed", {"echo": ["Bo"], "path": "/echo"}), out
                out = await run("reject", [], {})
                assert (out["status"], out["error_type"]) == ("failed", "invocable_http_client_error"), out

                # query_workflow: the workflow's query answer, to the client and to a workflow.
                poked = await callee.start_workflow(
                    workflow_type="e2e.svc.poked", task_queue=callee_queue, workflow_id=unique("poked"), input=[]
                )
                answer = await caller.execute_nexus_operation(
                    "greetings", "hello", "ask", [], target_namespace=target,
                    target_workflow_instance_id=poked.workflow_id,
                )
                assert (answer.status, answer.result) == ("completed", 0), answer.response_or_failure_surface
                out = await run("ask", [], {"target": poked.workflow_id})
                assert (out["status"], out["result"]) == ("completed", 0), out
                await callee.signal_workflow(poked.workflow_id, "poke", args=["Cy"])
                [poke_result] = await wait_for_results(callee, [poked])
                assert poke_result == "poked by Cy"

        # No worker polls the callee's queue any more: the query path's reason.
        async with Client(keel.url) as caller:
            with pytest.raises(NexusOperationFailed) as failed:
                await caller.execute_nexus_operation(
                    "greetings", "hello", "ask", [], target_namespace=target,
                    target_workflow_instance_id=poked.workflow_id,
                )
            assert failed.value.service_error_type in ("query_worker_unavailable", "query_worker_timeout"), (
                failed.value.body
            )

    asyncio.run(scenario())
