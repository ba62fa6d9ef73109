"""`POST /api/send {"orthanc_job": ID}`: Orthanc's OnJobFailure Lua hook (lua/) hands a
failed job to ingest the moment it fails, before the job history can forget it; with
`"take_over": true` (OnJobSubmitted) ingest takes the send over (services/ingest/take_over.py).

Any other body goes to the usual send handler. The answer (202) comes at once: the job is
read back from Orthanc afterwards (never taken from the request; Orthanc would not answer
while its Lua hook waits) and captured once: the history watch skips it afterwards.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from sendqueue.services.ingest.job_capture import JobCapture
from sendqueue.services.ingest.take_over import TakeOver
from sendqueue.shared.send_api import ORTHANC_ID

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def with_job_hook(send: Handler, capture: JobCapture, take_over: TakeOver) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            body = msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            return await send(request)  # it explains the error
        if not isinstance(body, dict) or "orthanc_job" not in body:
            return await send(request)
        return await _capture(body["orthanc_job"], capture, take_over, body.get("take_over"))

    return handle


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
