"""The admin API against its own OpenAPI document (schemathesis), and against input no
client should send: every answer is no 5xx and matches the document.

The retry service runs as a process with a few parked jobs; each operation of
/api/openapi.json gets generated requests (valid and not), sent with the token the
`admin_api_token` fixture provides.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from tests.integration.harness import ADMIN_TOKEN, Pipeline, dicom_destination
from tests.integration.parked_factory import fill_parked, parked_job
from tests.support.ports import free_port

pytestmark = [pytest.mark.timeout(600), pytest.mark.hostile, pytest.mark.slow]

#: Generated requests per operation: enough to reach every branch of the input checks.
EXAMPLES_PER_OPERATION = 40
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


@pytest.fixture
def admin_api_token() -> str:
    """The token the hostile requests carry (one that may act, so that every operation
    is reached past its auth check)."""
    return ADMIN_TOKEN


@pytest.fixture
async def admin_api(make_pipeline: Any) -> AsyncIterator[str]:
    """The base URL of a running retry service's admin API, with parked jobs in it."""
    pipeline: Pipeline = make_pipeline(
        destinations=[dicom_destination("pacs", free_port(), "PACS")]
    )
    pipeline.spawn("retry")
    await pipeline.wait_healthy("retry", timeout=60)
    jobs = [parked_job(i, "pacs", patient_id=f"P<{i}>") for i in range(5)]
    await fill_parked(pipeline.config.amqp.url, "sq", jobs)
    await pipeline.wait_parked(5)
    yield pipeline.url("retry", "")
    pipeline.terminate("retry")


async def test_every_operation_answers_by_its_schema_and_never_5xx(admin_api, admin_api_token):
    headers = {"Authorization": f"Bearer {admin_api_token}"}
    schema = schemathesis.openapi.from_url(f"{admin_api}/api/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5  # the document describes the API, not nothing

    def run_all() -> None:
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def one(case: Any) -> None:
                try:
                    case.call_and_validate(
                        base_url=admin_api, headers=headers, checks=CHECKS, timeout=30
                    )
                except (AssertionError, ExceptionGroup) as exc:
                    # A failed check: collected, so that every operation is tried.
                    failures.append(f"{case.operation.label}: {str(exc)[:600]}")

            one()

    # Sync calls: the service is another process, this loop has nothing else to run.
    await asyncio.to_thread(run_all)
    assert failures == []


# -- input no client sends ---------------------------------------------------------------------


def _deep(depth: int) -> str:
    return '{"ids":' * depth + "[]" + "}" * depth


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return {}


HOSTILE = [
    ("oversized-body", "POST", "/api/parked/requeue", b"x" * (8 * 1024 * 1024), "application/json"),
    ("deep-json", "POST", "/api/parked/requeue", _deep(100_000).encode(), "application/json"),
    (
        "invalid-utf8",
        "POST",
        "/api/parked/delete",
        b'{"ids": ["\xff\xfe\xfa"]}',
        "application/json",
    ),
    ("not-json", "POST", "/api/parked/requeue", b"\x00\x01\x02", "application/octet-stream"),
    ("traversal-encoded", "GET", "/api/parked/..%2F..%2Fetc%2Fpasswd", b"", ""),
    ("traversal-dots", "GET", "/api/parked/%2e%2e/%2e%2e/audit", b"", ""),
    ("huge-limit", "GET", "/api/parked?limit=99999999999999999999999", b"", ""),
    ("negative-limit", "GET", "/api/parked?limit=-1", b"", ""),
    ("float-limit", "GET", "/api/parked?limit=1e309", b"", ""),
    ("invalid-utf8-query", "GET", "/api/parked?since=%ff%fe", b"", ""),
    ("huge-audit-limit", "GET", "/api/audit?limit=99999999999999999999999", b"", ""),
    (
        "traversal-destination",
        "POST",
        "/api/destinations/..%2Fpacs/pause",
        b"{}",
        "application/json",
    ),
    (
        "long-destination",
        "POST",
        "/api/destinations/" + "x" * 10_000 + "/pause",
        b"{}",
        "application/json",
    ),
]


async def test_hostile_requests_get_a_clear_4xx_and_lose_nothing(admin_api, admin_api_token):
    """Oversized bodies, deep JSON, invalid UTF-8, path traversal in ids, huge limits.

    A clear 4xx (an API error in JSON, or the HTTP server's own refusal of a request line
    it will not read), or a 200 that ignored what it could not use; never a 5xx."""
    headers = {"Authorization": f"Bearer {admin_api_token}"}
    wrong: list[str] = []
    for name, method, path, body, content_type in HOSTILE:
        sent = {**headers, **({"Content-Type": content_type} if content_type else {})}

        response = await asyncio.to_thread(
            requests.request,
            method,
            admin_api + path,
            data=body or None,
            headers=sent,
            timeout=30,
        )
        status = response.status_code
        if not (400 <= status < 500 or status == 200):
            wrong.append(f"{name}: HTTP {status}: {response.text[:200]}")
        elif (
            status >= 400
            and response.headers.get("Content-Type", "").startswith("application/json")
            and "error" not in _json_or_none(response.text)
        ):
            wrong.append(f"{name}: HTTP {status} without an error: {response.text[:200]}")
    assert wrong == []
    # And the service still answers, with every parked job still there
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.get(f"{admin_api}/api/parked") as listing,
    ):
        assert listing.status == 200
        assert (await listing.json())["total"] == 5
