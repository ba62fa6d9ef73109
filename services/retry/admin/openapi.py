"""The admin API described as OpenAPI 3.0 (served at /api/openapi.json)."""

from __future__ import annotations

from typing import Any


def _obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM_OR_NULL = {"type": "number", "nullable": True}
_ERROR = _json({"$ref": "#/components/schemas/Error"}, "What is wrong, in words")
_ERRORS_OF_READS = {
    "401": _json({"$ref": "#/components/schemas/Error"}, "No token, or an unknown one"),
    "403": _json({"$ref": "#/components/schemas/Error"}, "Another Origin than the API's"),
    "421": _json({"$ref": "#/components/schemas/Error"}, "A Host name not allowed"),
}
#: Every mutating call: besides those of reads, a read token (403), no JSON body (415),
#: or RabbitMQ away (503: repeat the call later).
_AUTH_ERRORS = {
    **_ERRORS_OF_READS,
    "403": _json(
        {"$ref": "#/components/schemas/Error"}, "A read token (state changes need an admin one)"
    ),
    "415": _json({"$ref": "#/components/schemas/Error"}, "Content-Type is not application/json"),
    "503": _ERROR,
}
#: An admin token; reads take a read or an admin token (same scheme, scope by token).
_SECURED: list[dict[str, list[str]]] = [{"bearer": []}]
_NAME_IN_PATH = [{"name": "name", "in": "path", "required": True, "schema": _STR}]

_FILTERS = {
    "destination": {"type": "string", "description": "destination name"},
    "reason": {"type": "string", "description": "reason class, e.g. dimse-a9xx, not-found"},
    "study": {"type": "string", "description": "StudyInstanceUID"},
    "patient": {"type": "string", "description": "PatientID"},
    "orthanc_job": {
        "type": "string",
        "description": "the failed Orthanc store job the items were captured from",
    },
    "since": {"type": "string", "description": "parked at or after: epoch, ISO-8601 or '2h'"},
    "until": {"type": "string", "description": "parked before: epoch, ISO-8601 or '2h'"},
}
_SELECTION: dict[str, Any] = {
    "type": "object",
    "description": 'Exactly one of: {"ids": [...]}, {"all": true}, or one or more filters.',
    "properties": {
        "ids": {"type": "array", "items": _STR, "maxItems": 100000},
        "all": {"type": "boolean", "enum": [True]},
        **_FILTERS,
    },
}
_REQUEUE = {**_SELECTION, "properties": {**_SELECTION["properties"], "to": _STR}}

_PARKED_ITEM = _obj(
    id=_STR,
    destination=_STR,
    orthanc_id=_STR,
    sop_instance_uid=_STR,
    series_instance_uid=_STR,
    study_instance_uid=_STR,
    patient_id=_STR,
    patient_name=_STR,
    modality=_STR,
    attempts=_INT,
    first_failed_at=_NUM_OR_NULL,
    last_failed_at=_NUM_OR_NULL,
    parked_at={"type": "number"},
    reason=_STR,
    reason_class=_STR,
    source=_STR,
    orthanc_job=_STR,
    orthanc_job_error=_STR,
    orthanc_job_failed_at=_NUM_OR_NULL,
    orthanc_job_instances=_INT,
    error=_STR,
)
_PARKED_PAGE = _obj(
    items={"type": "array", "items": {"$ref": "#/components/schemas/ParkedItem"}},
    total=_INT,
    next_cursor={"type": "string", "nullable": True},
)
_PARKED_QUERY = [
    *({"name": k, "in": "query", "schema": v} for k, v in _FILTERS.items()),
    {"name": "limit", "in": "query", "schema": {**_INT, "minimum": 1, "maximum": 10000}},
    {"name": "cursor", "in": "query", "schema": _STR},
    {"name": "format", "in": "query", "schema": {"enum": ["json", "csv"]}},
]
_DESTINATION = _obj(
    name=_STR,
    kind=_STR,
    ready=_INT,
    # null while no sender has reported (the retry service started, or none runs).
    in_flight={"type": "integer", "nullable": True},
    delayed={"type": "object"},
    parked=_INT,
    consumers=_INT,
    state={"enum": ["up", "down", "source-down", "paused", "unknown"]},
    state_reason=_STR,
    oldest_waiting_seconds=_NUM_OR_NULL,
)
_QUEUES = _obj(
    destinations={"type": "array", "items": _DESTINATION},
    delay_tiers={"type": "array", "items": _obj(tier=_STR, messages=_INT)},
    failed=_INT,
    parked=_INT,
)
_AUDIT_ENTRY = _obj(
    id=_INT,
    time={"type": "number"},
    who=_STR,
    action=_STR,
    details={"type": "object"},
    count={"type": "integer", "nullable": True},
)
_AUDIT = _obj(
    items={"type": "array", "items": _AUDIT_ENTRY},
    next_cursor={"type": "string", "nullable": True},
)
_OPERATION = _obj(
    running={"type": "boolean"}, action={"type": "string", "nullable": True}, done=_INT, total=_INT
)
_PAUSED = _obj(destination=_STR, paused={"type": "boolean"})
_SEND = _obj(destination=_STR, resources={"type": "array", "items": _STR})

_PATHS: dict[str, Any] = {
    "/api/parked": {
        "get": {
            "summary": "List parked items, oldest first (format=csv exports all that match)",
            "parameters": _PARKED_QUERY,
            "responses": {
                "200": {
                    "description": "A page of parked items, or with format=csv all of them",
                    "content": {
                        "application/json": {"schema": _PARKED_PAGE},
                        "text/csv": {"schema": _STR},
                    },
                },
                "400": _ERROR,
                **_ERRORS_OF_READS,
            },
        }
    },
    "/api/parked/requeue": {
        "post": {
            "summary": "Send parked items back to a work queue, attempts reset to 0",
            "security": _SECURED,
            "requestBody": _body(_REQUEUE),
            "responses": {
                "200": _json(_obj(requeued=_INT, failed=_INT)),
                "400": _ERROR,
                "413": _ERROR,
                **_AUTH_ERRORS,
            },
        }
    },
    "/api/parked/delete": {
        "post": {
            "summary": "Delete parked items",
            "security": _SECURED,
            "requestBody": _body(_SELECTION),
            "responses": {
                "200": _json(_obj(deleted=_INT, failed=_INT)),
                "400": _ERROR,
                "413": _ERROR,
                **_AUTH_ERRORS,
            },
        }
    },
    "/api/operations/current": {
        "get": {
            "summary": "Progress of the bulk operation under way",
            "responses": {"200": _json(_OPERATION), **_ERRORS_OF_READS},
        }
    },
    "/api/queues": {
        "get": {
            "summary": "Per destination: ready, in flight, delayed, parked, consumers, state",
            "responses": {"200": _json(_QUEUES), "503": _ERROR, **_ERRORS_OF_READS},
        }
    },
    "/api/destinations/{name}/pause": {
        "post": {
            "summary": "Stop sending to a destination; its jobs wait (survives restarts)",
            "security": _SECURED,
            "parameters": _NAME_IN_PATH,
            "responses": {"200": _json(_PAUSED), "404": _ERROR, **_AUTH_ERRORS},
        }
    },
    "/api/destinations/{name}/resume": {
        "post": {
            "summary": "Resume sending to a paused destination",
            "security": _SECURED,
            "parameters": _NAME_IN_PATH,
            "responses": {"200": _json(_PAUSED), "404": _ERROR, **_AUTH_ERRORS},
        }
    },
    "/api/send": {
        "post": {
            "summary": "Queue Orthanc instances, series, studies or patients for a destination",
            "security": _SECURED,
            "requestBody": _body(_SEND),
            "responses": {
                "200": _json(_obj(queued=_INT, destination=_STR)),
                "400": _ERROR,
                "404": _ERROR,
                "503": _ERROR,
                **_AUTH_ERRORS,
            },
        }
    },
    "/api/audit": {
        "get": {
            "summary": "The audit log, newest first",
            "parameters": [
                {"name": "limit", "in": "query", "schema": _INT},
                {"name": "cursor", "in": "query", "schema": _STR},
            ],
            "responses": {"200": _json(_AUDIT), "400": _ERROR, **_ERRORS_OF_READS},
        }
    },
    "/api/whoami": {
        "get": {
            "summary": "The caller's name and scope (read or admin)",
            "responses": {
                "200": _json(
                    _obj(
                        name=_STR,
                        scope={"type": "string", "enum": ["read", "admin"]},
                        anonymous={"type": "boolean"},
                    )
                ),
                **_ERRORS_OF_READS,
            },
        }
    },
    "/api/openapi.json": {
        "get": {
            "summary": "This document (no token needed)",
            "security": [],
            "responses": {"200": _json({"type": "object"})},
        }
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "sendqueue admin API",
        "version": "1",
        "description": "See, requeue and remove what is stuck. Every call but this"
        " document needs 'Authorization: Bearer <token>': a read token ([retry.read_tokens])"
        " for GETs, an admin token ([retry] admin_token, [retry.admin_tokens]) for POSTs,"
        " which also need 'Content-Type: application/json' and are written to the audit log.",
    },
    "security": _SECURED,
    "components": {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "a read token (GETs) or an admin token (GETs and POSTs)",
            }
        },
        "schemas": {"Error": _obj(error=_STR), "ParkedItem": _PARKED_ITEM},
    },
    "paths": _PATHS,
}
