"""The one place where the contract stage departs from the upstream documents.

Every entry says why. The stage (``test_contract.py``) reads nothing else: a deviation
that is not listed here fails it.

* ``SCHEMA_PATCHES``: edits applied to in-memory copies of the upstream documents
  before the fuzzer loads them (the copies in ``specs/`` stay byte-for-byte upstream).
* ``GLOBAL_EXCLUDED_CHECKS`` / ``EXCLUDED_CHECKS``: schemathesis checks not run, for
  every operation or for one, where Keel deliberately answers otherwise than the
  document's loose schemas suggest (mostly: Keel validates more strictly).
* ``NOT_YET_IMPLEMENTED``: operations whose routes other work is still building, with
  the issue that builds them. They are not fuzzed; the stage checks that each still
  has no handler, so an entry whose route has landed fails the stage until it is
  deleted here (and the operation is fuzzed from then on).
"""

from __future__ import annotations

# ── the fuzzer's budget ──────────────────────────────────────────────────────────────
# Fixed seed, deterministic generation, no example database: the same requests in
# every run.
SEED = 20261202
# Examples per operation in the fuzzing phase (the coverage phase adds its own
# boundary and negative cases, the examples phase the documents' examples).
MAX_EXAMPLES = 25
# No request may take longer (parked long-polls and queries return well before).
REQUEST_TIMEOUT_SECONDS = 30

# ── deviations from the documents ────────────────────────────────────────────────────

# The worker protocol version Keel advertises, and the request versions it accepts.
WORKER_PROTOCOL_VERSION = "1.20"
ACCEPTED_WORKER_PROTOCOL_VERSIONS = [f"1.{minor}" for minor in range(21)]

_VERSION_REASON = (
    "Keel speaks worker protocol 1.20, not the documents' default 1.13, and advertises it "
    "as the string '1.20' (cluster/info worker_protocol.version, every worker reply's "
    "protocol_version and X-Durable-Workflow-Protocol-Version header), accepting request "
    "versions 1.0 to 1.20. The Python SDK 2.12.0 (which outranks the documents) parses the "
    "version as 'MAJOR.MINOR' and requires minor >= 20; the envelope schema types "
    "worker_protocol.version as an integer, which the SDK would refuse."
)

# (document, JSON pointer, new value, reason): applied to in-memory copies only.
SCHEMA_PATCHES: list[tuple[str, str, object, str]] = [
    (
        "cluster-info-envelope.schema.json",
        "/properties/worker_protocol/properties/version",
        {"type": "string", "const": WORKER_PROTOCOL_VERSION},
        _VERSION_REASON,
    ),
    (
        "worker-protocol-api.openapi.yaml",
        "/components/schemas/AdvertisedWorkerProtocolVersion",
        {"type": "string", "const": WORKER_PROTOCOL_VERSION},
        _VERSION_REASON,
    ),
    (
        "worker-protocol-api.openapi.yaml",
        "/components/schemas/AcceptedWorkerProtocolRequestVersion",
        {"type": "string", "enum": ACCEPTED_WORKER_PROTOCOL_VERSIONS},
        _VERSION_REASON,
    ),
]

# Checks not run for any operation.
GLOBAL_EXCLUDED_CHECKS: dict[str, str] = {
    "status_code_conformance": (
        "The documents list a few statuses per operation (startWorkflow: 200, 201, 409, "
        "422; most GET routes only 200) while the error model every route follows "
        "(seeds, README 'Errors') answers 400 for a missing or unsupported version header "
        "or malformed JSON, 401/403 for auth, 404 for a missing namespace or object, 413, "
        "415, 422 for field errors and 503 for gates. Instead of the status list, every "
        "error answer is checked against the document's own error envelope "
        "(ControlPlaneError, WorkerError) by the stage's error_envelope check."
    ),
}

# operationId -> {check: reason}: checks not run for one operation. All of these are
# `positive_data_acceptance` (the document's schema allows a request Keel refuses with a
# 422 naming the field): Keel validates more strictly than the documents' loose schemas,
# following the SDK 2.12.0 and the seeds.
_STRICT = "positive_data_acceptance"
_LEASE = (
    "Keel requires the lease identity the SDK sends with every task report "
    "(sdk-protocol.md: lease_owner plus workflow_task_attempt / activity_attempt_id / "
    "query_task_attempt), so that a worker whose lease lapsed cannot report for the task's "
    "next holder; the document requires only worker_id."
)
_QUEUE = (
    "Keel reads the SDK's task_queue (one string, as the Python SDK 2.12.0 sends it); the "
    "document's schema has a task_queues array and requires no task_queue."
)
_NAME = (
    "A signal, query or update name with a control character is refused (422 on "
    "signal_name / query_name / update_name, as the upstream server does, server-spec 5.3); "
    "the document's name schema is any non-empty string."
)
EXCLUDED_CHECKS: dict[str, dict[str, str]] = {
    "createNamespace": {_STRICT: "name is required: it is the namespace's identity."},
    "updateNamespaceExternalStorage": {_STRICT: "driver is required: a storage policy names its driver."},
    "startWorkflow": {_STRICT: "workflow_type and task_queue are required: a run without them can never be dispatched."},
    "signalWorkflow": {_STRICT: _NAME},
    "queryWorkflow": {_STRICT: _NAME},
    "updateWorkflow": {_STRICT: _NAME},
    "commandWorkflowRunByName": {_STRICT: _NAME},
    "setBuildIdDrainIntent": {_STRICT: "build_id is required: it names the cohort to drain or resume."},
    "createSchedule": {_STRICT: "spec and action are required: a schedule without them cannot fire."},
    "scheduleAction": {_STRICT: "backfill requires start_time and end_time (the window it fills)."},
    "createSearchAttribute": {_STRICT: "name and type are required: an attribute is typed."},
    "registerWorker": {_STRICT: _QUEUE},
    "pollWorkflowTask": {_STRICT: _QUEUE},
    "pollActivityTask": {_STRICT: _QUEUE},
    "pollQueryTask": {_STRICT: _QUEUE},
    "getWorkflowTaskHistoryPage": {_STRICT: _LEASE},
    "heartbeatWorkflowTask": {_STRICT: _LEASE},
    "completeWorkflowTask": {_STRICT: _LEASE},
    "failWorkflowTask": {_STRICT: _LEASE},
    "heartbeatActivityTask": {_STRICT: _LEASE},
    "completeActivityTask": {_STRICT: _LEASE},
    "failActivityTask": {_STRICT: _LEASE},
    "completeQueryTask": {_STRICT: _LEASE},
    "failQueryTask": {_STRICT: _LEASE},
    "testExternalStorage": {_STRICT: "driver is required: the test round-trips through a named driver."},
    "bridgeAdapterWebhook": {
        _STRICT: "An event must carry the fields its adapter maps (422 malformed_payload with the fields named).",
        "unsupported_method": "Keel also serves GET/PUT/DELETE on this path to configure the adapter (a Keel extension), so those methods are not 405.",
        "allow_header_conformance": "The Allow header lists the configuration methods (GET, PUT, DELETE) Keel serves on this path besides the document's POST.",
    },
}


_CATALOG = (
    "Service-catalog names (endpoint, service, operation, in the path and the body) are "
    "validated as lowercase identifiers, and bodies need their required fields "
    "(README, service catalog); the document allows any non-empty string and any object."
)
for _op in (
    "listServiceEndpoints createServiceEndpoint getServiceEndpoint updateServiceEndpoint "
    "deleteServiceEndpoint listServices createService getService updateService deleteService "
    "listOperations createOperation getOperation updateOperation deleteOperation "
    "executeServiceOperation getServiceCall cancelServiceCall"
).split():
    EXCLUDED_CHECKS[_op] = {_STRICT: _CATALOG}
EXCLUDED_CHECKS["importEmbeddedV2WorkflowHistory"] = {_STRICT: "bundle (the history export to import) is required."}
_SESSION_BOUNDS = (
    "lease_seconds and ttl_seconds are at most ten years (315360000) and "
    "max_concurrent_activities at most 10000, each refused beyond with a 422 naming the "
    "field (the document sets no maximum); and a session is held by a registered worker "
    "(the contract's admission.requires_registered_worker), so a worker_id that never "
    "registered is 412 worker_not_registered, a status the document lists."
)
for _op in ("createWorkerSession", "heartbeatWorkerSession"):
    EXCLUDED_CHECKS[_op] = {_STRICT: _SESSION_BOUNDS}
for _op in ("getDeployment", "runDeploymentLifecycleAction"):
    EXCLUDED_CHECKS[_op] = {_STRICT: "A deployment name in the path is validated as an identifier before the lookup."}


def _reason_of(response) -> object:
    try:
        return response.json().get("reason")
    except (ValueError, AttributeError):
        return None


def _only_negative_at(case, location) -> bool:
    """Whether the case's negative (schema-violating) part is at `location` alone."""
    meta = case.meta
    if meta is None:
        return False
    negative = [loc for loc, component in meta.components.items() if component.mode.is_negative]
    return negative == [location]


# (operationId or "*", check, when(case, response) -> bool, reason): a check skipped for
# the answers `when` picks, and only for those.
CONDITIONAL_EXCLUSIONS: list[tuple[str, str, object, str]] = [
    (
        "listSchedules",
        "response_schema_conformance",
        lambda case, response: _reason_of(response)
        in ("missing_control_plane_version", "unsupported_control_plane_version"),
        "The version-header refusal of the request pipeline (400 missing_ / "
        "unsupported_control_plane_version, the seeds' reasons, the same on every "
        "control-plane route) is not one of ScheduleListError's schedule-filter reasons; "
        "it is still checked as a ControlPlaneError by the stage's error_envelope check.",
    ),
    (
        "*",
        "negative_data_rejection",
        lambda case, response: case.body is None
        and case.meta is not None
        and case.meta.is_negative_at(_body_location()),
        "A JSON null request body reads as no body (an empty object): both SDKs send no "
        "body, never null, where a route's fields are all optional. Other bodies that are "
        "not objects are refused with 422.",
    ),
    (
        "getClusterInfo",
        "negative_data_rejection",
        # X-Namespace is the operation's one header parameter.
        lambda case, response: _only_negative_at(case, _header_location()),
        "An empty X-Namespace header selects the default namespace, as an absent one does "
        "(the SDK sends its configured namespace, which may be empty).",
    ),
    (
        "listWorkflows",
        "negative_data_rejection",
        # page is the operation's one query parameter.
        lambda case, response: _only_negative_at(case, _query_location()),
        "Keel pages the workflow list with page_size and next_page_token (the Python SDK's "
        "parameters); the document's page parameter is not read, like any unknown one.",
    ),
]


def _body_location():
    from schemathesis.core.parameters import ParameterLocation

    return ParameterLocation.BODY


def _header_location():
    from schemathesis.core.parameters import ParameterLocation

    return ParameterLocation.HEADER


def _query_location():
    from schemathesis.core.parameters import ParameterLocation

    return ParameterLocation.QUERY

# operationId -> the issue building its route. Not fuzzed; checked to still lack a route.
_DEPLOYMENTS = "#15 section 2 (worker deployments)"
_IMPORT = "#15 section 2 (embedded-v2 history import)"
NOT_YET_IMPLEMENTED: dict[str, str] = {}
