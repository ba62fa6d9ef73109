"""The admin HTTP API on the retry service's listen address (see docs/operations.md).

    GET  /api/parked                 list (filters, paging, format=csv)      parked.py
    POST /api/parked/requeue         {"ids": [...]} | {"all": true} | filters, optional "to"
    POST /api/parked/delete          the same selectors
    GET  /api/operations/current     progress of a bulk requeue/delete
    GET  /api/queues                 per destination: ready, in flight, ... destinations.py
    POST /api/destinations/{name}/pause | /resume
    POST /api/send                   queue Orthanc resources for a destination
    GET  /api/audit                  who did what, newest first              audit.py
    GET  /api/whoami                 the caller's name and scope             auth.py
    GET  /api/openapi.json           this API, described                     openapi.py
    GET  /, /console/                the console page                        console_page.py
Every /api/ call but openapi.json needs "Authorization: Bearer <token>": a read token
for GETs, an admin token for POSTs (auth.py); POSTs are written to the audit log. Host,
Origin and Content-Type checks and the security headers: hardening.py. Every error is
JSON {"error": "..."} with a 4xx/5xx.
"""

from __future__ import annotations

import logging

from aiohttp import web

from sendqueue.services.retry.admin.audit import AuditLog, add_audit_route
from sendqueue.services.retry.admin.auth import Access, Handler
from sendqueue.services.retry.admin.console_page import add_console
from sendqueue.services.retry.admin.destinations import DestinationRoutes
from sendqueue.services.retry.admin.hardening import harden
from sendqueue.services.retry.admin.input import BadRequest
from sendqueue.services.retry.admin.openapi import OPENAPI
from sendqueue.services.retry.admin.overview import QueueOverview
from sendqueue.services.retry.admin.parked import ParkedRoutes
from sendqueue.services.retry.parking.queue import Parking
from sendqueue.services.retry.pauses import PauseStore
from sendqueue.shared.amqp import BROKER_ERRORS
from sendqueue.shared.config import Config

log = logging.getLogger(__name__)

#: Bodies larger than this are refused (100k ids fit).
MAX_BODY = 8 * 1024 * 1024


def error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


def add_admin_api(
    app: web.Application,
    *,
    config: Config,
    parking: Parking,
    audit: AuditLog,
    pauses: PauseStore,
    overview: QueueOverview,
    send: Handler | None = None,
) -> None:
    """Every admin route and the console on `app` (whose client_max_size is MAX_BODY)."""
    access = Access.from_config(config.retry)
    app.middlewares.append(_errors)  # outermost: the checks' refusals become JSON too
    harden(app, config.retry)
    ParkedRoutes(config=config, parking=parking, audit=audit).register(app, access)
    DestinationRoutes(config=config, pauses=pauses, overview=overview, audit=audit).register(
        app, access
    )
    add_audit_route(app, audit, access)
    access.add_whoami(app)
    app.router.add_get("/api/openapi.json", _openapi)
    if send is not None:
        app.router.add_post("/api/send", access.act(send))
    add_console(app)


async def _openapi(_request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        return error(str(exc), exc.status)
    except web.HTTPRequestEntityTooLarge:
        return error(f"request body too large (limit {MAX_BODY} bytes)", 413)
    except web.HTTPException as exc:
        if exc.status >= 400 and request.path.startswith("/api/"):
            return error(exc.reason, exc.status)
        raise
    except BROKER_ERRORS as exc:
        # RabbitMQ went away (it reconnects by itself). A bulk pass stops where it was:
        # what it already requeued or deleted stays so, the rest stays parked.
        log.warning("%s %s: RabbitMQ unavailable: %r", request.method, request.path, exc)
        return error(
            f"RabbitMQ is unavailable ({exc!r}): the call did not complete; repeat it once"
            " RabbitMQ is back (sendqueue reconnects by itself)",
            503,
        )
    except Exception as exc:
        log.exception("%s %s failed", request.method, request.path)
        return error(f"internal error: {exc!r}", 500)
