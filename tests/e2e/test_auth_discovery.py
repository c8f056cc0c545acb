"""Auth, discovery and the cluster/info contract, against the real binary."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import httpx
import jsonschema
from durable_workflow import Client, activity, workflow

from keel_harness import (
    CONTROL_HEADERS,
    WORKER_HEADERS,
    KeelServer,
    RawApi,
    expect_error,
    expect_status,
    free_loopback_port,
    keel_binary,
    running_worker,
    unique,
    wait_for_results,
)

SCHEMA_PATH = Path(__file__).parent / "specs" / "cluster-info-envelope.schema.json"
# The envelope's `worker_protocol.server_capabilities.worker_sessions` refers to this one.
SESSIONS_SCHEMA_PATH = Path(__file__).parent / "specs" / "worker-sessions-runtime.schema.json"

# The one schema rule Keel deviates from, on purpose: the schema types
# worker_protocol.version as an integer, but the SDK requires the string
# "MAJOR.MINOR" with minor >= 20 (an integer would read as "1" and fail), and the
# SDK's behaviour outranks the schema.
ALLOWED_DEVIATIONS = {(("worker_protocol", "version"), "type")}


@activity.defn(name="e2e.auth.greet")
def greet(name: str) -> str:
    return f"hello, {name}"


@workflow.defn(name="e2e.auth.greeter")
class Greeter:
    def run(self, ctx, name):  # type: ignore[no-untyped-def]
        greeting = yield ctx.schedule_activity("e2e.auth.greet", [name], start_to_close_timeout=30)
        return {"greeting": greeting}


def schema_errors(document: dict) -> list[jsonschema.ValidationError]:
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    schema = json.loads(SCHEMA_PATH.read_text())
    sessions = json.loads(SESSIONS_SCHEMA_PATH.read_text())
    resource = Resource.from_contents(sessions, default_specification=DRAFT202012)
    # The envelope refers to it relatively; its own refs resolve against its `$id`.
    registry = Registry().with_resources(
        [("worker-sessions-runtime.schema.json", resource), (sessions["$id"], resource)]
    )
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return list(validator.iter_errors(document))


def test_cluster_info_validates_against_the_upstream_schema(keel: KeelServer) -> None:
    with RawApi(keel.url) as api:
        response = api.request("GET", "/cluster/info", headers={"X-Namespace": "default"})
        expect_status(response, 200, "GET /api/cluster/info")
        info = response.json()
    errors = schema_errors(info)
    unexpected = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message} ({e.validator})"
        for e in errors
        if (tuple(e.absolute_path), e.validator) not in ALLOWED_DEVIATIONS
    ]
    assert not unexpected, "cluster/info violates the envelope schema:\n" + "\n".join(unexpected)
    # The deviation is exactly the documented one, and what the SDK requires.
    assert info["worker_protocol"]["version"] == "1.20"
    assert info["control_plane"]["version"] == 2
    assert info["topology"]["matching_role"]["discovery_limits"]["workflow_task_lease_seconds"] == 30
    assert {c["name"] for c in info["coordination_health"]["checks"]} >= {"activity_path", "task_transport"}
    # Without a namespace storage policy nothing advertises the payload transport
    # (tests/e2e/test_external_payloads.py covers a namespace with one).
    assert "runtime_external_payload_transport" not in info["worker_protocol"]["server_capabilities"]
    assert info["namespace"]["external_payload_storage"] is None


def test_health_and_ready_carry_topology_and_checks(keel_factory) -> None:  # type: ignore[no-untyped-def]
    keel = keel_factory(env={"KEEL_TOKENS": ""})  # open mode, even under KEEL_E2E_TOKEN
    with RawApi(keel.url) as api:
        health = api.health()
        expect_status(health, 200, "GET /api/health")
        assert health.json()["topology"]["current_process_class"] == "server_http_node"
        ready = api.request("GET", "/ready")
        expect_status(ready, 200, "GET /api/ready")
        checks = ready.json()["checks"]
        assert {"database", "migrations", "default_namespace", "auth", "workflow_v2"} <= set(checks)
        assert checks["migrations"]["status"] == "ok"
        assert checks["auth"]["driver"] == "none"


def test_tokens_gate_routes_and_the_sdk_works_with_them(keel_factory) -> None:  # type: ignore[no-untyped-def]
    server = keel_factory(env={"KEEL_TOKENS": "worker:e2e-worker-token,operator:e2e-operator-token,admin+worker:e2e-both"})
    with RawApi(server.url) as api:
        expect_status(api.health(), 200, "health needs no token")
        expect_error(api.control("GET", "/workflows/nope"), 401, "unauthorized")
        bad = api.control("GET", "/workflows/nope", headers={"Authorization": "Bearer wrong-e2e-token"})
        expect_error(bad, 401, "unauthorized")
        assert "wrong-e2e-token" not in bad.text
        forbidden = api.control("GET", "/workflows/nope", headers={"Authorization": "Bearer e2e-worker-token"})
        body = expect_error(forbidden, 403, "forbidden")
        assert body["required_roles"] == ["operator", "admin"] and body["actual_roles"] == ["worker"]
        not_found = api.control("GET", "/workflows/nope", headers={"Authorization": "Bearer e2e-operator-token"})
        expect_error(not_found, 404, "instance_not_found")
        info = api.request("GET", "/cluster/info", headers={**WORKER_HEADERS, "Authorization": "Bearer e2e-worker-token"})
        expect_status(info, 200, "cluster/info accepts any role")

    async def scenario(client: Client) -> None:
        task_queue = unique("e2e-auth")
        async with running_worker(client, task_queue=task_queue, workflows=[Greeter], activities=[greet]) as worker:
            handle = await client.start_workflow(
                workflow_type="e2e.auth.greeter",
                task_queue=task_queue,
                workflow_id=unique("e2e-auth"),
                input=["tokens"],
            )
            [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)
            assert result == {"greeting": "hello, tokens"}

    async def both() -> None:
        # Split credentials: the SDK sends the worker token on worker routes.
        async with Client(server.url, control_token="e2e-operator-token", worker_token="e2e-worker-token") as client:
            await scenario(client)
        # One token holding both roles.
        async with Client(server.url, token="e2e-both") as client:
            await scenario(client)

    asyncio.run(both())


def test_without_tokens_a_non_loopback_listener_refuses_to_start(tmp_path: Path) -> None:
    port = free_loopback_port()
    proc = subprocess.run(
        [str(keel_binary()), "serve", "--listen", f"0.0.0.0:{port}", "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        timeout=60,
        # No token variables; the library path stays (a binary built with FoundationDB
        # support loads libfdb_c through it).
        env={"PATH": "/usr/bin:/bin", **{k: v for k, v in os.environ.items() if k == "LD_LIBRARY_PATH"}},
    )
    assert proc.returncode != 0
    assert b"without authentication" in proc.stderr, proc.stderr.decode(errors="replace")


def test_open_mode_warns_loudly(keel_factory) -> None:  # type: ignore[no-untyped-def]
    keel = keel_factory(env={"KEEL_TOKENS": ""})
    assert "AUTHENTICATION IS DISABLED" in keel.log_tail(200)
    with httpx.Client() as http:
        response = http.get(f"{keel.url}/api/namespaces", headers=CONTROL_HEADERS)
        expect_status(response, 200, "open mode serves without a token")
