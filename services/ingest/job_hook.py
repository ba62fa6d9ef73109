"""`POST /api/orthanc-jobs {"orthanc_job": ID}`: Orthanc's OnJobFailure Lua hook (lua/)
hands a failed job to ingest the moment it fails, before the job history can forget it; with
`"take_over": true` (OnJobSubmitted) ingest takes the send over (services/ingest/take_over.py).

The caller names a job, never resources: the job is read back from Orthanc afterwards (never
taken from the request; Orthanc would not answer while its Lua hook waits) and captured once
(the history watch skips it afterwards), under the same rules as the history watch. The answer
(202) comes at once. The hook changes what is sent, so it needs an admin token of the same
config ([retry] admin_token or [retry.admin_tokens]; none only with [retry] allow_anonymous),
and a JSON body (a browser cannot post one cross-site without asking first).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from sendqueue.services.ingest.job_capture import JobCapture
from sendqueue.services.ingest.take_over import TakeOver
from sendqueue.shared.config import RetryConfig
from sendqueue.shared.send_api import ORTHANC_ID

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def job_hook(retry: RetryConfig, capture: JobCapture, take_over: TakeOver) -> Handler:
    """The hook's handler: an admin token and a JSON body naming one Orthanc job."""
    tokens = [t.encode() for t in retry.tokens()]
    anonymous = retry.allow_anonymous and not tokens

    async def handle(request: web.Request) -> web.StreamResponse:
        if not anonymous and not _is_admin(request, tokens):
            return web.json_response(
                {"error": "an admin token ([retry] admin_token or [retry.admin_tokens]) is needed"},
                status=401,
            )
        if request.content_type != "application/json":
            return web.json_response({"error": "the body must be application/json"}, status=415)
        try:
            body = msgspec.json.decode(await request.read())
        except msgspec.DecodeError as exc:
            return web.json_response({"error": f"the body is not JSON: {exc}"}, status=400)
        if not isinstance(body, dict) or "orthanc_job" not in body:
            return web.json_response(
                {"error": 'the body must be {"orthanc_job": "<Orthanc job ID>"}'}, status=400
            )
        return await _capture(body["orthanc_job"], capture, take_over, body.get("take_over"))

    return handle


def _is_admin(request: web.Request, tokens: list[bytes]) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    presented = given.strip().encode()
    found = False
    for token in tokens:  # no early exit: the same time for every token
        found |= hmac.compare_digest(presented, token)
    return scheme.lower() == "bearer" and found


async def _capture(
    job_id: object, capture: JobCapture, take_over: TakeOver, taking: object
) -> web.Response:
    if not isinstance(job_id, str) or not ORTHANC_ID.match(job_id):
        return web.json_response({"error": f"malformed Orthanc job ID {job_id!r}"}, status=400)
    if not capture.enabled:
        return web.json_response(
            {"error": "capture of failed Orthanc jobs is off ([ingest] capture_failed_jobs)"},
            status=409,
        )
    if taking is True:
        take_over.soon(job_id)
    else:
        capture.capture_soon(job_id)
    return web.json_response({"orthanc_job": job_id, "accepted": True}, status=202)
