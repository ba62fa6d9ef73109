"""POST /api/send: queue Orthanc resources for a destination, like `sendqueue send`.

Served by the retry service on the admin listen, behind an admin token, and written to
its audit log (ingest does not serve it: see docs/architecture.md).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from sendqueue.shared.amqp import BROKER_ERRORS
from sendqueue.shared.config import Config
from sendqueue.shared.errors import SourceUnavailable, UnknownResources
from sendqueue.shared.submit import queue_resources

_MAX_RESOURCES = 10_000
#: Orthanc IDs are dash-separated hex (SHA-1 based); anything else cannot be one.
ORTHANC_ID = re.compile(r"^[0-9A-Za-z-]{1,100}$")


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


def make_send_handler(
    config: Config, *, on_done: Callable[[web.Request, str, int], None] | None = None, **deps: Any
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """deps: resolver, publisher, names, on_queued (see shared.submit.queue_resources)."""

    async def send(request: web.Request) -> web.Response:
        try:
            body = msgspec.json.decode(await request.read())
        except msgspec.DecodeError as exc:
            return _error(f"body is not valid JSON: {exc}", 400)
        except RecursionError:
            return _error("body is nested too deeply", 400)
        if not isinstance(body, dict):
            return _error("body must be a JSON object", 400)
        destination = body.get("destination", body.get("to"))
        resources = body.get("resources", body.get("ids"))
        if not isinstance(destination, str) or config.destination(destination) is None:
            return _error(f"unknown destination {destination!r}", 400)
        if (
            not isinstance(resources, list)
            or not resources
            or len(resources) > _MAX_RESOURCES
            or not all(isinstance(r, str) for r in resources)
        ):
            return _error("'resources' must be a non-empty list of Orthanc IDs", 400)
        malformed = [r for r in resources if not ORTHANC_ID.match(r)]
        if malformed:
            return _error(f"malformed Orthanc ID(s): {malformed[:5]!r}", 400)
        try:
            queued = await queue_resources(destination=destination, resource_ids=resources, **deps)
        except UnknownResources as exc:
            return web.json_response({"error": str(exc), "unknown": exc.ids}, status=404)
        except SourceUnavailable as exc:
            return _error(f"Orthanc unavailable: {exc}", 503)
        except BROKER_ERRORS as exc:
            return _error(f"RabbitMQ did not confirm the jobs: {exc!r}", 503)
        if on_done is not None:
            on_done(request, destination, queued)
        return web.json_response({"queued": queued, "destination": destination})

    return send
