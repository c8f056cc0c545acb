"""Control-plane reads through the real SDK (raw HTTP where the SDK has no call): the
workflow list with filters and paging, the history export bundle (checked with the SDK's
``verify_history_bundle`` and the protocol's JSON Schema) and the debug view."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from durable_workflow import Client, activity, workflow
from durable_workflow.history_bundle_verify import verify_bundle

from keel_harness import (
    KeelServer,
    RawApi,
    async_wait_until,
    expect_error,
    expect_status,
    running_worker,
    unique,
    wait_for_results,
)

SCHEMAS = Path(__file__).resolve().parent / "schemas"


@activity.defn(name="e2e.reads.shout")
def shout(text: str) -> str:
    return text.upper() + " ✓"


@workflow.defn(name="e2e.reads.shouter")
class Shouter:
    def run(self, ctx, text):  # type: ignore[no-untyped-def]
        loud = yield ctx.schedule_activity("e2e.reads.shout", [text], start_to_close_timeout=30)
        return {"loud": loud}


@workflow.defn(name="e2e.reads.refuser")
class Refuser:
    def run(self, ctx, text):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"refused {text}")


# ── a small JSON Schema (2020-12 subset) checker, enough for the bundle schema ──


def _load_schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text())


_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def schema_errors(value: Any, schema: Any, root: dict[str, Any], path: str = "$") -> list[str]:
    """Violations of `schema` by `value` (type, required, properties, items, const,
    enum, minimum, minLength, local and sibling-file `$ref`)."""
    if schema is True:
        return []
    errors: list[str] = []
    ref = schema.get("$ref")
    if isinstance(ref, str):
        if ref.startswith("#/"):
            target: Any = root
            for part in ref[2:].split("/"):
                target = target[part]
            errors += schema_errors(value, target, root, path)
        else:
            other = _load_schema(ref.removeprefix("./"))
            errors += schema_errors(value, other, other, path)
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_is_type(value, n) for n in names):
            return errors + [f"{path}: {value!r:.60} is not of type {names}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in enum")
    if isinstance(value, (int, float)) and "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{path}: below minimum {schema['minimum']}")
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        errors.append(f"{path}: shorter than {schema['minLength']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing required {key!r}")
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += schema_errors(value[key], sub, root, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], root, f"{path}[{i}]")
    return errors


# ── tests ─────────────────────────────────────────────────────────────────


def test_workflow_list_filters_pages_and_counts(keel: KeelServer, api: RawApi) -> None:
    async def scenario() -> list[str]:
        task_queue = unique("e2e-reads-list")
        async with Client(keel.url) as client:
            async with running_worker(
                client, task_queue=task_queue, workflows=[Shouter, Refuser], activities=[shout]
            ) as worker:
                done = [
                    await client.start_workflow(
                        workflow_type="e2e.reads.shouter", task_queue=task_queue,
                        workflow_id=f"list-ok-{i}", input=["hi"],
                    )
                    for i in range(3)
                ]
                refused = await client.start_workflow(
                    workflow_type="e2e.reads.refuser", task_queue=task_queue, workflow_id="list-bad-0", input=["x"],
                )
                await wait_for_results(client, done, worker=worker, timeout=60)

                async def refused_closed() -> bool:
                    return (await client.describe_workflow(refused.workflow_id)).status == "failed"

                await async_wait_until(refused_closed, 30, "the refuser to fail")
            # One more, left running (no worker now).
            await client.start_workflow(
                workflow_type="e2e.reads.shouter", task_queue=task_queue, workflow_id="list-open-0", input=["later"],
            )

            everything = await client.list_workflows()
            ids = [w.workflow_id for w in everything.executions]
            assert ids == ["list-open-0", "list-bad-0", "list-ok-2", "list-ok-1", "list-ok-0"]
            assert everything.next_page_token is None
            assert {w.workflow_id: w.status for w in everything.executions} == {
                "list-open-0": "pending", "list-bad-0": "failed",
                "list-ok-0": "completed", "list-ok-1": "completed", "list-ok-2": "completed",
            }
            assert all(w.task_queue == task_queue and w.namespace == "default" for w in everything.executions)

            completed = await client.list_workflows(status="completed")
            assert [w.workflow_id for w in completed.executions] == ["list-ok-2", "list-ok-1", "list-ok-0"]
            failed = await client.list_workflows(status="failed")
            assert [w.workflow_id for w in failed.executions] == ["list-bad-0"]
            running = await client.list_workflows(status="running")
            assert [w.workflow_id for w in running.executions] == ["list-open-0"]
            refusers = await client.list_workflows(workflow_type="e2e.reads.refuser")
            assert [w.workflow_id for w in refusers.executions] == ["list-bad-0"]
            text = await client.list_workflows(query="OK-1")
            assert [w.workflow_id for w in text.executions] == ["list-ok-1"]

            pages: list[str] = []
            token = None
            while True:
                page = await client.list_workflows(page_size=2, next_page_token=token)
                assert len(page.executions) <= 2
                pages += [w.workflow_id for w in page.executions]
                token = page.next_page_token
                if not token:
                    break
            return pages

    pages = asyncio.run(scenario())
    assert pages == ["list-open-0", "list-bad-0", "list-ok-2", "list-ok-1", "list-ok-0"]

    body = api.control("GET", "/workflows", params={"status": "completed"}).json()
    assert body["workflow_count"] == 3
    assert body["workflows"][0]["status_bucket"] == "completed"
    assert body["workflows"][0]["is_terminal"] is True
    assert api.control("GET", "/workflows").json()["workflow_count"] == 5
    expect_error(api.control("GET", "/workflows", params={"page_size": "0"}), 422, "validation_failed")
    expect_error(api.control("GET", "/workflows", params={"page_size": "201"}), 422, "validation_failed")
    expect_error(api.control("GET", "/workflows", params={"status": "cancelled"}), 422, "validation_failed")
    expect_error(api.control("GET", "/workflows", params={"next_page_token": "not a token"}), 400, "invalid_page_token")


def test_history_export_bundle_verifies_and_matches_the_schema(keel: KeelServer, api: RawApi) -> None:
    async def scenario() -> tuple[Any, Any, str, str]:
        task_queue = unique("e2e-reads-export")
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, workflows=[Shouter], activities=[shout]) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.reads.shouter", task_queue=task_queue,
                    workflow_id=unique("e2e-export"), input=["naïve café"],
                    memo={"owner": "ops"},
                )
                [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)
            assert result == {"loud": "NAÏVE CAFÉ ✓"}
            bundle = await client.export_history(handle.workflow_id, handle.run_id)
            via_handle = await handle.export_history()
            return bundle, via_handle, handle.workflow_id, handle.run_id

    bundle, via_handle, workflow_id, run_id = asyncio.run(scenario())
    report = verify_bundle(bundle)
    assert report["status"] == "ok", json.dumps(report["findings"], indent=2)
    assert report["integrity"]["checksum_matches"] is True
    assert verify_bundle(via_handle)["status"] == "ok"

    root = _load_schema("history-export-bundle.schema.json")
    assert schema_errors(bundle, root, root) == []

    assert bundle["workflow"]["instance_id"] == workflow_id
    assert bundle["workflow"]["run_id"] == run_id
    assert bundle["workflow"]["status"] == "completed"
    assert bundle["history_complete"] is True
    assert bundle["workflow"]["memo"] == {"owner": "ops"}
    # One type key per event, `type`: the SDK's verifier requires it, and the Rust SDK
    # refuses an event that carries `event_type` as well.
    types = [e["type"] for e in bundle["history_events"]]
    assert all("event_type" not in e for e in bundle["history_events"])
    assert types == ["WorkflowStarted", "ActivityScheduled", "ActivityCompleted", "WorkflowCompleted"]
    assert [e["sequence"] for e in bundle["history_events"]] == [1, 2, 3, 4]
    assert bundle["payloads"]["output"]["available"] is True
    assert [a["status"] for a in bundle["activities"]] == ["completed"]
    assert re.fullmatch(r"[0-9a-f]{64}", bundle["integrity"]["checksum"])

    # Tampering is caught by the SDK's verifier.
    bundle["history_events"][1]["payload"]["activity_type"] = "something.else"
    tampered = verify_bundle(bundle)
    assert tampered["status"] == "failed"
    assert "integrity.checksum_mismatch" in tampered["summary"]["findings_by_rule"]

    expect_error(api.control("GET", f"/workflows/{workflow_id}/runs/nope/history/export"), 404, "run_not_found")
    expect_error(api.control("GET", f"/workflows/{unique('missing')}/runs/{run_id}/history/export"), 404, "instance_not_found")


def test_debug_view_reports_run_state_tasks_and_failures(keel: KeelServer, api: RawApi) -> None:
    task_queue = unique("e2e-reads-debug")
    workflow_id = unique("e2e-debug")
    api.start_workflow(workflow_id, "e2e.reads.shouter", task_queue)

    body = api.control("GET", f"/workflows/{workflow_id}/debug").json()
    assert body["workflow_id"] == workflow_id
    assert body["status"] == "pending"
    assert body["liveness_state"] == "workflow_task_ready"
    assert body["workflow_task"]["status"] == "ready"
    assert body["workflow_task"]["lease_attempt"] == 0
    assert body["activities"] == [] and body["recent_failures"] == []
    assert body["last_event"]["event_type"] == "WorkflowStarted"
    assert "payload" not in body["last_event"]
    assert [t["timer_kind"] for t in body["timers"]] == ["run_deadline"]

    # A raw worker leases the task and fails it: the debug view shows the retry backoff.
    api.register_worker("debug-worker", task_queue)
    task = api.lease_workflow_task("debug-worker", task_queue)
    failed = api.worker(
        "POST",
        f"/worker/workflow-tasks/{task['task_id']}/fail",
        json={"lease_owner": "debug-worker", "workflow_task_attempt": task["workflow_task_attempt"],
              "failure": {"message": "replay exploded", "type": "NonDeterministicReplayError"}},
    )
    expect_status(failed, 200, "fail the workflow task")
    run_id = task["run_id"]
    body = api.control(
        "GET", f"/workflows/{workflow_id}/runs/{run_id}/debug", params={"include_last_event_payload": "1"}
    ).json()
    assert body["run_id"] == run_id and body["is_current_run"] is True
    assert body["liveness_state"] == "workflow_task_retry_backoff"
    assert body["workflow_task"]["failures"] == 1
    assert body["workflow_task"]["backoff_until"] is not None
    assert body["last_event"]["payload"]["workflow_type"] == "e2e.reads.shouter"

    expect_error(api.control("GET", f"/workflows/{unique('missing')}/debug"), 404, "instance_not_found")
    expect_error(api.control("GET", f"/workflows/{workflow_id}/runs/nope/debug"), 404, "run_not_found")
