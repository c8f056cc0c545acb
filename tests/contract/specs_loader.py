"""The upstream documents as the stage reads them: ``specs/`` holds unchanged copies;
``load_patched`` writes them, with ``deviations.SCHEMA_PATCHES`` applied, to a temporary
directory (so relative ``$ref``s between the files still resolve) and returns the path."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from functools import cache
from pathlib import Path

import yaml

import deviations as dev

SPECS = Path(__file__).resolve().parent / "specs"
CONTROL_PLANE = "control-plane-api.openapi.yaml"
WORKER_PROTOCOL = "worker-protocol-api.openapi.yaml"
METHODS = ("get", "put", "post", "delete", "patch")


def _read(name: str):
    text = (SPECS / name).read_text()
    return yaml.safe_load(text) if name.endswith(".yaml") else json.loads(text)


def _set(document, pointer: str, value) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.lstrip("/").split("/")]
    node = document
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        if last not in node and not isinstance(value, dict):
            raise KeyError(f"{pointer}: nothing there to patch")
        node[last] = value


@cache
def _patched_dir() -> Path:
    out = Path(tempfile.mkdtemp(prefix="keel-contract-specs-"))
    atexit.register(shutil.rmtree, out, True)
    documents = {p.name: _read(p.name) for p in SPECS.iterdir() if p.suffix in (".yaml", ".json")}
    for name, pointer, value, _reason in dev.SCHEMA_PATCHES:
        _set(documents[name], pointer, value)
    for name, document in documents.items():
        text = yaml.safe_dump(document, sort_keys=False) if name.endswith(".yaml") else json.dumps(document, indent=1)
        (out / name).write_text(text)
    return out


def load_patched(document: str) -> Path:
    return _patched_dir() / document


@cache
def operations(document: str) -> dict[str, tuple[str, str]]:
    """operationId -> (METHOD, path template) of an unpatched document."""
    out = {}
    for path, item in _read(document)["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                out[op["operationId"]] = (method.upper(), path)
    return out


def operation_ids(document: str) -> set[str]:
    return set(operations(document))


def operation_request(operation_id: str) -> tuple[str, str, dict[str, str]]:
    """A request line for ``operation_id`` with every path parameter ``x`` (an enum
    parameter takes its first value), and the version header of its plane."""
    for document, version in (
        (CONTROL_PLANE, {"X-Durable-Workflow-Control-Plane-Version": "2"}),
        (WORKER_PROTOCOL, {"X-Durable-Workflow-Protocol-Version": "1.20"}),
    ):
        if operation_id in operations(document):
            method, template = operations(document)[operation_id]
            raw = _read(document)
            params = raw["paths"][template][method.lower()].get("parameters", [])
            path = template
            for p in params:
                if "$ref" in p:
                    p = raw["components"]["parameters"][p["$ref"].rsplit("/", 1)[-1]]
                if p.get("in") == "path":
                    enum = p.get("schema", {}).get("enum")
                    path = path.replace("{" + p["name"] + "}", enum[0] if enum else "x")
            return method, path, version
    raise KeyError(operation_id)
