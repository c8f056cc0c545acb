"""The upstream contract, operation by operation: schemathesis drives every operation of
both upstream OpenAPI documents (control plane, worker protocol) against a real
``keel serve`` that requires bearer tokens, and each response must

* not be a server error (5xx),
* conform to the document (response schema, content type, headers; the statuses and
  checks Keel deliberately answers otherwise are listed in ``deviations.py``),
* come from a handler: a 404 ``not_found`` (no route) or a 405 for a method the
  document defines means the route is missing.

Operations other work is still building are listed in ``deviations.NOT_YET_IMPLEMENTED``
and checked to still lack a route. See ``deviations.py`` for every departure.
"""

from __future__ import annotations

import json
import os

import pytest
import requests
import schemathesis
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.core.failures import FailureGroup
from schemathesis.core.parameters import ParameterLocation

import deviations as dev
from harness import TOKEN
from specs_loader import CONTROL_PLANE, WORKER_PROTOCOL, load_patched, operation_ids

load_all_checks()

def _config(security_scheme: str) -> schemathesis.Config:
    """Deterministic generation under the stage's seed and budget, every request
    carrying the token under the document's security scheme."""
    return schemathesis.Config.from_dict(
        {
            "seed": dev.SEED,
            "generation": {
                "max-examples": dev.MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
            "auth": {"openapi": {security_scheme: {"api_key": f"Bearer {TOKEN}"}}},
        }
    )


NYI = sorted(dev.NOT_YET_IMPLEMENTED)
# CONTRACT_SURVEY=FILE: instead of stopping an operation at its first failure, record
# every failure (operation, check, status, reason, message) to FILE as JSON lines: a
# map of what the fuzzer finds, for working through it. The stage itself never sets it.
SURVEY = os.environ.get("CONTRACT_SURVEY") or None


def _schema(document: str, security_scheme: str):
    schema = schemathesis.openapi.from_path(load_patched(document), config=_config(security_scheme))
    if NYI:
        schema = schema.exclude(operation_id=NYI)
    return schema


control_plane = _schema(CONTROL_PLANE, "durableAuth")
worker_protocol = _schema(WORKER_PROTOCOL, "durableWorkerAuth")


@schemathesis.check
def answered_by_a_handler(ctx, response, case) -> None:
    """A request with the document's own method must reach a handler: Keel answers a
    path it has no route for with 404 ``not_found`` and a path it has under other
    methods with 405."""
    if response.request.method.upper() != case.operation.method.upper():
        return None  # the coverage phase's unsupported-method probes
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.PATH):
        return None  # a path parameter outside its schema (an enum's) names no route
    reason = None
    try:
        reason = json.loads(response.content or b"{}").get("reason")
    except (ValueError, AttributeError):
        pass
    if (response.status_code == 404 and reason == "not_found") or response.status_code == 405:
        raise AssertionError(
            f"{case.method} {case.formatted_path}: no handler ({response.status_code} {reason}); "
            f"the document defines {case.operation.label}"
        )
    return None


@schemathesis.check
def error_envelope(ctx, response, case) -> None:
    """Every error answer uses the document's error envelope, whatever its status (the
    status lists of the documents are not checked, see deviations.py): a control-plane
    error is a ControlPlaneError (``message``, a string ``reason``); a worker-plane
    answer, error or not, carries ``protocol_version`` and ``server_capabilities``."""
    if response.status_code < 400 and "/worker/" not in case.operation.path:
        return None
    try:
        body = json.loads(response.content or b"null")
    except ValueError:
        raise AssertionError(f"{response.status_code}: the body is not JSON: {response.content[:200]!r}")
    assert isinstance(body, dict), f"{response.status_code}: the body is not an object: {body!r}"[:300]
    if response.status_code >= 400:
        assert isinstance(body.get("message"), str), f"{response.status_code}: no message: {body}"[:400]
        assert isinstance(body.get("reason"), str), f"{response.status_code}: no reason: {body}"[:400]
    if case.operation.path.startswith("/worker/"):
        assert body.get("protocol_version") == dev.WORKER_PROTOCOL_VERSION, (
            f"{response.status_code}: protocol_version {body.get('protocol_version')!r}"
        )
        assert isinstance(body.get("server_capabilities"), dict), (
            f"{response.status_code}: no server_capabilities"
        )
    return None


def excluded_check_names(operation) -> list[str]:
    """The checks ``deviations.py`` excludes for this operation (and for all)."""
    op_id = operation.definition.raw.get("operationId")
    return sorted(set(dev.GLOBAL_EXCLUDED_CHECKS) | set(dev.EXCLUDED_CHECKS.get(op_id, {})))


def exercise(case, keel, stats) -> None:
    assert keel.alive(), f"keel exited:\n{keel.log_tail()}"
    response = case.call(base_url=keel.url, timeout=dev.REQUEST_TIMEOUT_SECONDS)
    stats.record(case, response)
    names = set(excluded_check_names(case.operation))
    op_id = case.operation.definition.raw.get("operationId")
    for target, check, when, _reason in dev.CONDITIONAL_EXCLUSIONS:
        if target in ("*", op_id) and when(case, response):
            names.add(check)
    excluded = [CHECKS.get_one(name) for name in sorted(names)]
    try:
        case.validate_response(
            response,
            additional_checks=[answered_by_a_handler, error_envelope],
            excluded_checks=excluded,
        )
    except FailureGroup as group:
        if SURVEY is None:
            raise
        # Survey mode: record every failure and keep going (see SURVEY).
        for failure in group.exceptions:
            stats.failure(case, response, failure)


@control_plane.parametrize()
def test_control_plane(case, keel, stats) -> None:
    exercise(case, keel, stats)


@worker_protocol.parametrize()
def test_worker_protocol(case, keel, stats) -> None:
    exercise(case, keel, stats)


def test_every_operation_is_fuzzed_or_listed_as_not_yet_implemented() -> None:
    documented = operation_ids(CONTROL_PLANE) | operation_ids(WORKER_PROTOCOL)
    stale = sorted(set(dev.NOT_YET_IMPLEMENTED) - documented)
    assert not stale, f"NOT_YET_IMPLEMENTED names operations no document defines: {stale}"
    for op in list(dev.EXCLUDED_CHECKS) + [c[0] for c in dev.CONDITIONAL_EXCLUSIONS if c[0] != "*"]:
        assert op in documented, f"deviations.py names {op}, which no document defines"
    for op in dev.EXCLUDED_CHECKS:
        assert op not in dev.NOT_YET_IMPLEMENTED, f"{op} is both excluded and not yet implemented"


@pytest.mark.parametrize("operation_id", NYI or ["(none)"])
def test_not_yet_implemented_operations_still_have_no_route(operation_id, keel) -> None:
    """Each listed operation must still answer 404 ``not_found``; once its route lands,
    delete its entry from ``deviations.NOT_YET_IMPLEMENTED`` so the stage fuzzes it."""
    if operation_id == "(none)":
        return
    from specs_loader import operation_request

    method, path, headers = operation_request(operation_id)
    r = requests.request(
        method,
        keel.url + path,
        headers={**headers, "Authorization": f"Bearer {TOKEN}"},
        json={},
        timeout=dev.REQUEST_TIMEOUT_SECONDS,
    )
    reason = r.json().get("reason") if r.content else None
    assert (r.status_code, reason) == (404, "not_found"), (
        f"{operation_id} ({method} {path}) now has a handler ({r.status_code} {reason}): "
        f"delete it from NOT_YET_IMPLEMENTED in tests/contract/deviations.py "
        f"({dev.NOT_YET_IMPLEMENTED[operation_id]})"
    )
