"""External payload storage through the real SDK: the runtime-mediated transport (large
payloads uploaded to Keel, history holding `ep_` references), the SDK-side driver
(`external_storage` references stored opaquely), tampered and missing blobs failing with
their named reason, the storage test route, retention and storage pressure."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from durable_workflow import Client, activity, workflow
from durable_workflow.errors import (
    ExternalPayloadIntegrityMismatch,
    ExternalPayloadNotFound,
)
from durable_workflow.external_storage import LocalFilesystemExternalStorage
from durable_workflow.history_bundle_verify import verify_bundle

from keel_harness import (
    CONTROL_HEADERS,
    KeelServer,
    RawApi,
    expect_status,
    running_worker,
    unique,
    wait_for_results,
)

THRESHOLD = 1024
BIG = 6000  # characters: well above the threshold once encoded


@activity.defn(name="e2e.payloads.stretch")
def stretch(text: str) -> str:
    return text + text.upper()


@workflow.defn(name="e2e.payloads.large")
class LargePayloads:
    """Large input, activity argument and result, side effect, signal and result."""

    def __init__(self) -> None:
        self.note: str | None = None

    @workflow.signal("note")
    def on_note(self, note: str) -> None:
        self.note = note

    def run(self, ctx, text):  # type: ignore[no-untyped-def]
        stretched = yield ctx.schedule_activity("e2e.payloads.stretch", [text], start_to_close_timeout=30)
        marker = yield ctx.side_effect(lambda: "s" * BIG)
        yield ctx.wait_condition(lambda: self.note is not None)
        return {"stretched": stretched, "marker": len(marker), "note": self.note}


@workflow.defn(name="e2e.payloads.echo")
class Echo:
    def run(self, ctx, text):  # type: ignore[no-untyped-def]
        out = yield ctx.schedule_activity("e2e.payloads.stretch", [text], start_to_close_timeout=30)
        return out


def set_policy(api: RawApi, **policy: Any) -> dict[str, Any]:
    body = {"driver": "local", "enabled": True, "threshold_bytes": THRESHOLD, **policy}
    r = api.control("PUT", "/namespaces/default/external-storage", json=body)
    expect_status(r, 200, "PUT external-storage")
    return r.json()


def raw_history(api: RawApi, workflow_id: str, run_id: str) -> list[dict[str, Any]]:
    r = api.control("GET", f"/workflows/{workflow_id}/runs/{run_id}/history", params={"page_size": 1000})
    expect_status(r, 200, "history")
    return r.json()["events"]


def references(value: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if isinstance(value, dict):
        if "external_payload" in value:
            out.append(value["external_payload"])
        for v in value.values():
            out.extend(references(v))
    elif isinstance(value, list):
        for v in value:
            out.extend(references(v))
    return out


def blob_path(keel: KeelServer, reference_id: str, prefix: str = "") -> Path:
    root = keel.data_dir / "payloads"
    return (root / prefix / reference_id) if prefix else root / reference_id


async def run_large_workflow(keel: KeelServer) -> tuple[str, str, Any]:
    task_queue = unique("e2e-payloads")
    async with Client(keel.url) as client:
        async with running_worker(client, task_queue=task_queue, workflows=[LargePayloads], activities=[stretch]) as worker:
            handle = await client.start_workflow(
                workflow_type="e2e.payloads.large",
                task_queue=task_queue,
                workflow_id=unique("e2e-large"),
                input=["x" * BIG],
            )
            await client.signal_workflow(handle.workflow_id, "note", args=["n" * BIG])
            [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)
    return handle.workflow_id, handle.run_id, result


def test_discovery_advertises_the_runtime_transport_once_a_policy_is_set(keel: KeelServer, api: RawApi) -> None:
    info = api.control("GET", "/cluster/info").json()
    assert info["namespace"]["external_payload_storage"] is None
    assert "runtime_external_payload_transport" not in info["worker_protocol"]["server_capabilities"]

    described = set_policy(api)["external_payload_storage"]
    assert described["status"] == "available"
    assert described["threshold_bytes"] == THRESHOLD
    info = api.control("GET", "/cluster/info").json()
    caps = info["worker_protocol"]["server_capabilities"]
    assert caps["runtime_external_payload_transport"] is True
    transport = info["namespace"]["external_payload_storage"]["transport"]
    assert transport["upload"]["path"] == "/api/external-payloads/v1"
    assert transport["fetch"]["path_template"] == "/api/external-payloads/v1/{referenceId}"
    assert transport["limits"]["max_payload_bytes"] >= THRESHOLD

    # An object-store driver needs a disk this server has.
    r = api.control("PUT", "/namespaces/default/external-storage",
                    json={"driver": "s3", "enabled": True, "config": {"bucket": "b1", "disk": "nope"}})
    expect_status(r, 422, "s3 without a configured disk")
    assert "config.disk" in r.json()["errors"]


def test_large_payloads_travel_by_reference_through_the_sdk(keel: KeelServer, api: RawApi) -> None:
    set_policy(api)
    workflow_id, run_id, result = asyncio.run(run_large_workflow(keel))
    assert result == {"stretched": "x" * BIG + "X" * BIG, "marker": BIG, "note": "n" * BIG}

    events = raw_history(api, workflow_id, run_id)
    by_type = {e["event_type"]: e for e in events}
    # (Activity arguments travel on the activity task, not in ActivityScheduled.)
    for event_type in ["WorkflowStarted", "ActivityCompleted", "SideEffectRecorded",
                       "SignalReceived", "WorkflowCompleted"]:
        refs = references(by_type[event_type]["payload"])
        assert refs, f"{event_type} holds no external payload reference: {by_type[event_type]}"
        for ref in refs:
            assert ref["reference_id"].startswith("ep_")
            path = blob_path(keel, ref["reference_id"])
            data = path.read_bytes()
            assert hashlib.sha256(data).hexdigest() == ref["sha256"]
            assert len(data) == ref["size_bytes"]

    # The export carries references; its checksum covers the payloads the SDK resolves.
    raw = api.control("GET", f"/workflows/{workflow_id}/runs/{run_id}/history/export")
    expect_status(raw, 200, "export")
    assert references(raw.json())

    async def export() -> Any:
        async with Client(keel.url) as client:
            return await client.export_history(workflow_id, run_id)

    bundle = asyncio.run(export())
    assert not references(bundle)
    report = verify_bundle(bundle)
    assert report["status"] == "ok", json.dumps(report["findings"], indent=2)


def test_tampered_missing_and_foreign_blobs_fail_with_their_reason(keel: KeelServer, api: RawApi) -> None:
    set_policy(api)
    task_queue = unique("e2e-payloads")

    async def run() -> tuple[str, str]:
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, workflows=[Echo], activities=[stretch]) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.payloads.echo", task_queue=task_queue,
                    workflow_id=unique("e2e-tamper"), input=["t" * BIG],
                )
                await wait_for_results(client, [handle], worker=worker, timeout=60)
        return handle.workflow_id, handle.run_id

    workflow_id, run_id = asyncio.run(run())
    events = raw_history(api, workflow_id, run_id)
    [completed] = [e for e in events if e["event_type"] == "WorkflowCompleted"]
    [ref] = references(completed["payload"])
    path = blob_path(keel, ref["reference_id"])
    original = path.read_bytes()
    export_path = f"/workflows/{workflow_id}/runs/{run_id}/history/export"

    # Mutated: same length, one byte changed.
    path.write_bytes(original[:-2] + (b"A" if original[-2:-1] != b"A" else b"B") + original[-1:])
    r = api.control("GET", export_path)
    expect_status(r, 422, "export of a mutated blob")
    assert r.json()["reason"] == "external_payload_integrity_mismatch"
    assert r.json()["reference_id"] == ref["reference_id"]

    async def result() -> Any:
        async with Client(keel.url) as client:
            return await client.get_result(client.get_workflow_handle(workflow_id, run_id=run_id), timeout=10)

    with pytest.raises(ExternalPayloadIntegrityMismatch):
        asyncio.run(result())

    # Missing.
    path.unlink()
    r = api.control("GET", export_path)
    expect_status(r, 404, "export of a missing blob")
    assert r.json()["reason"] == "external_payload_not_found"
    with pytest.raises(ExternalPayloadNotFound):
        asyncio.run(result())

    # Outside the configured prefix: the namespace now stores under another prefix.
    path.write_bytes(original)
    expect_status(api.control("GET", export_path), 200, "export once restored")
    set_policy(api, config={"prefix": "elsewhere"})
    r = api.control("GET", export_path)
    expect_status(r, 403, "export of a blob outside the prefix")
    assert r.json()["reason"] == "external_payload_unauthorized"


def test_upload_and_fetch_routes_check_their_headers(keel: KeelServer, api: RawApi) -> None:
    data = b"A" * 2000
    sha = hashlib.sha256(data).hexdigest()
    headers = {**CONTROL_HEADERS, "Content-Type": "application/octet-stream",
               "X-Durable-Workflow-Payload-Codec": "avro",
               "X-Durable-Workflow-Payload-Size": str(len(data)),
               "X-Durable-Workflow-Payload-SHA256": sha}
    # No policy yet.
    r = api.request("POST", "/external-payloads/v1", headers=headers, content=data)
    expect_status(r, 422, "upload without a policy")
    assert r.json()["reason"] == "external_payload_unsupported"
    set_policy(api)
    r = api.request("POST", "/external-payloads/v1", headers=headers, content=data)
    expect_status(r, 201, "upload")
    body = r.json()
    assert body["schema"] == "durable-workflow.v2.runtime-external-payload-upload.v1"
    ref = body["reference"]
    assert set(ref) == {"schema", "reference_id", "codec", "size_bytes", "sha256"}
    assert (ref["codec"], ref["size_bytes"], ref["sha256"]) == ("avro", len(data), sha)

    got = api.request("GET", f"/external-payloads/v1/{ref['reference_id']}",
                      headers={**CONTROL_HEADERS, "Accept": "application/octet-stream"})
    expect_status(got, 200, "fetch")
    assert got.content == data
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["x-durable-workflow-payload-sha256"] == sha
    assert got.headers["x-durable-workflow-payload-size"] == str(len(data))
    assert got.headers["x-durable-workflow-payload-codec"] == "avro"

    cases = [
        ({"X-Durable-Workflow-Payload-SHA256": "0" * 64}, 422, "external_payload_integrity_mismatch"),
        ({"X-Durable-Workflow-Payload-Size": "5"}, 422, "external_payload_integrity_mismatch"),
        ({"X-Durable-Workflow-Payload-Codec": "msgpack"}, 422, "external_payload_unsupported"),
        ({"X-Durable-Workflow-Payload-SHA256": "XYZ"}, 422, "external_payload_unsupported"),
        ({"Content-Type": "application/json"}, 415, "external_payload_unsupported"),
    ]
    for change, status, reason in cases:
        r = api.request("POST", "/external-payloads/v1", headers={**headers, **change}, content=data)
        expect_status(r, status, f"upload with {change}")
        assert r.json()["reason"] == reason, (change, r.json())
    r = api.request("GET", "/external-payloads/v1/ep_00000000000000000000000000", headers=CONTROL_HEADERS)
    expect_status(r, 404, "unknown reference")
    assert r.json()["reason"] == "external_payload_not_found"

    # A start whose reference names no stored payload is refused before it enters history.
    bogus = {"codec": "avro", "external_payload": {**ref, "reference_id": "ep_00000000000000000000000000"}}
    r = api.control("POST", "/workflows", json={
        "workflow_type": "e2e.payloads.echo", "task_queue": "q", "workflow_id": unique("bogus"), "input": bogus})
    expect_status(r, 404, "start with an unknown reference")
    assert r.json()["reason"] == "external_payload_not_found"
    lying = {"codec": "avro", "external_payload": {**ref, "size_bytes": 1}}
    r = api.control("POST", "/workflows", json={
        "workflow_type": "e2e.payloads.echo", "task_queue": "q", "workflow_id": unique("lying"), "input": lying})
    expect_status(r, 422, "start with a misstated reference")
    assert r.json()["reason"] == "external_payload_integrity_mismatch"


def test_storage_test_round_trips_a_small_and_a_large_payload(keel_factory: Any, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    keel = keel_factory(extra_args=["--payload-disk", f"objects={disk}"])
    with RawApi(keel.url) as api:
        set_policy(api)
        r = api.control("POST", "/storage/test", json={"small_payload_bytes": 10, "large_payload_bytes": 3_000_000})
        expect_status(r, 200, "storage test (local)")
        report = r.json()
        assert report["status"] == "passed", report
        assert report["driver"] == "local"
        assert [s["stage"] for s in report["large_payload"]["steps"]] == ["write", "read", "verify", "delete"]
        assert report["large_payload"]["bytes"] == 3_000_000

        set_policy(api, driver="s3", config={"disk": "objects", "bucket": "archive", "prefix": "wf/v1"})
        r = api.control("POST", "/storage/test", json={})
        expect_status(r, 200, "storage test (s3 on a disk)")
        report = r.json()
        assert report["status"] == "passed", report
        assert report["small_payload"]["reference_uri"].startswith("s3://archive/wf/v1/")
        # The test blobs are deleted again.
        assert not any(p.is_file() for p in disk.rglob("ep_*"))


def test_runtime_transport_on_an_s3_policy_writes_under_its_bucket_and_prefix(keel_factory: Any, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    keel = keel_factory(extra_args=["--payload-disk", f"objects={disk}"])
    with RawApi(keel.url) as api:
        set_policy(api, driver="s3", config={"disk": "objects", "bucket": "archive", "prefix": "wf"})
        workflow_id, run_id, result = asyncio.run(run_large_workflow(keel))
        assert result["marker"] == BIG
        stored = sorted(p.name for p in (disk / "archive" / "wf").iterdir() if p.name.startswith("ep_"))
        refs = {r["reference_id"] for e in raw_history(api, workflow_id, run_id) for r in references(e)}
        assert refs and refs <= set(stored)


def test_sdk_side_driver_references_are_stored_opaquely(keel: KeelServer, api: RawApi, tmp_path: Path) -> None:
    # With the runtime transport advertised, the SDK first requires the namespace to accept
    # direct provider references; Keel negotiates them and stores the envelope untouched.
    set_policy(api, threshold_bytes=1024 * 1024)
    storage = LocalFilesystemExternalStorage(tmp_path / "sdk-blobs")
    task_queue = unique("e2e-direct")

    async def run() -> tuple[str, str, Any]:
        async with Client(keel.url, external_storage=storage, external_storage_threshold_bytes=512) as client:
            async with running_worker(client, task_queue=task_queue, workflows=[Echo], activities=[stretch]) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.payloads.echo", task_queue=task_queue,
                    workflow_id=unique("e2e-direct"), input=["d" * BIG],
                )
                [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)
        return handle.workflow_id, handle.run_id, result

    workflow_id, run_id, result = asyncio.run(run())
    assert result == "d" * BIG + "D" * BIG
    [started] = [e for e in raw_history(api, workflow_id, run_id) if e["event_type"] == "WorkflowStarted"]
    text = json.dumps(started["payload"])
    assert "external_storage" in text and "file://" in text
    assert not references(started["payload"])


@workflow.defn(name="e2e.payloads.mailbox")
class Mailbox:
    """Holds the last large message an update put in; a query reads it back."""

    def __init__(self) -> None:
        self.message = ""
        self.done = False

    @workflow.update("put")
    def put(self, message: str) -> str:
        self.message = message
        return message.upper()

    @workflow.update("finish")
    def finish(self) -> str:
        self.done = True
        return "done"

    @workflow.query("message")
    def read(self) -> str:
        return self.message

    def run(self, ctx):  # type: ignore[no-untyped-def]
        yield ctx.wait_condition(lambda: self.done)
        return len(self.message)


def test_updates_and_queries_carry_large_payloads_by_reference(keel: KeelServer, api: RawApi) -> None:
    from durable_workflow.serializer import decode_envelope

    set_policy(api)
    task_queue = unique("e2e-mailbox")

    async def run() -> tuple[Any, Any, Any, str, str]:
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, workflows=[Mailbox]) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.payloads.mailbox", task_queue=task_queue,
                    workflow_id=unique("e2e-mailbox"), input=[],
                )
                put = await client.update_workflow(handle.workflow_id, "put", args=["m" * BIG], wait_for="completed")
                queried = await client.query_workflow(handle.workflow_id, "message")
                await client.update_workflow(handle.workflow_id, "finish", wait_for="completed")
                [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)
        return put, queried, result, handle.workflow_id, handle.run_id

    put, queried, result, workflow_id, run_id = asyncio.run(run())
    assert put["update_status"] == "completed", put
    assert decode_envelope(put["result"], codec="avro") == "M" * BIG
    assert queried["result"] == "m" * BIG
    assert result == BIG
    events = raw_history(api, workflow_id, run_id)
    for event_type in ["UpdateAccepted", "UpdateCompleted"]:
        assert any(references(e["payload"]) for e in events if e["event_type"] == event_type), event_type


def test_under_storage_pressure_a_workers_completion_upload_is_admitted(keel_factory: Any) -> None:
    # Every upload meets a "draining" disk: the client's own large input would be refused,
    # but a worker completing a leased task resends its upload with the completion context
    # and it is admitted, so work in flight finishes.
    keel = keel_factory(extra_args=["--payload-reserve-bytes", str(10**18)])
    with RawApi(keel.url) as api:
        set_policy(api, threshold_bytes=2048)
        data = b"A" * 3000
        r = api.request("POST", "/external-payloads/v1", content=data, headers={
            **CONTROL_HEADERS, "Content-Type": "application/octet-stream",
            "X-Durable-Workflow-Payload-Codec": "avro", "X-Durable-Workflow-Payload-Size": str(len(data)),
            "X-Durable-Workflow-Payload-SHA256": hashlib.sha256(data).hexdigest()})
        expect_status(r, 503, "upload under pressure without a completion context")
        assert r.json()["reason"] == "storage_pressure"
        assert r.json()["storage_state"] == "draining"
        task_queue = unique("e2e-pressure")

        async def run() -> tuple[str, str, Any]:
            async with Client(keel.url) as client:
                async with running_worker(client, task_queue=task_queue, workflows=[Echo], activities=[stretch]) as worker:
                    handle = await client.start_workflow(
                        workflow_type="e2e.payloads.echo", task_queue=task_queue,
                        workflow_id=unique("e2e-pressure"), input=["p" * 1000],
                    )
                    # The activity's result (2,000 characters, encoded past the threshold)
                    # and the workflow's result are uploaded under pressure.
                    [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)
            return handle.workflow_id, handle.run_id, result

        workflow_id, run_id, result = asyncio.run(run())
        assert result == "p" * 1000 + "P" * 1000
        events = raw_history(api, workflow_id, run_id)
        [completed] = [e for e in events if e["event_type"] == "ActivityCompleted"]
        assert references(completed["payload"])


@workflow.defn(name="e2e.payloads.memo")
class LargeMemo:
    def run(self, ctx):  # type: ignore[no-untyped-def]
        yield ctx.upsert_memo({"note": "u" * BIG})
        return "ok"


def test_a_memo_upsert_sent_by_reference_is_merged(keel: KeelServer, api: RawApi) -> None:
    # The SDK externalizes the upsert_memo entries like any payload above the threshold;
    # Keel resolves them (the memo is state it merges and describes).
    set_policy(api)
    task_queue = unique("e2e-memo")

    async def run() -> Any:
        async with Client(keel.url) as client:
            async with running_worker(client, task_queue=task_queue, workflows=[LargeMemo]) as worker:
                handle = await client.start_workflow(
                    workflow_type="e2e.payloads.memo", task_queue=task_queue,
                    workflow_id=unique("e2e-memo"), input=[],
                )
                [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)
                assert result == "ok"
                return await client.describe_workflow(handle.workflow_id)

    described = asyncio.run(run())
    assert described.memo == {"note": "u" * BIG}
