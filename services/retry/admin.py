"""The admin HTTP API on the retry service's listen address (see docs/operations.md).

    GET  /api/parked                 list (filters, paging, format=csv)
    POST /api/parked/requeue         {"ids": [...]} | {"all": true} | filters, optional "to"
    POST /api/parked/delete          the same selectors
    GET  /api/operations/current     progress of a bulk requeue/delete
    GET  /api/queues                 per destination: ready, in flight, delayed, parked, state
    POST /api/destinations/{name}/pause | /resume
    POST /api/send                   queue Orthanc resources for a destination
    GET  /api/audit                  who did what, newest first
    GET  /api/openapi.json           this API, described
Mutating calls need "Authorization: Bearer <token>" when tokens are configured, and are
written to the audit log. Every error is JSON {"error": "..."} with a 4xx/5xx status.
"""

from __future__ import annotations

import csv
import hmac
import io
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from sendqueue.services.retry import admin_input as inp
from sendqueue.services.retry.admin_input import BadRequest
from sendqueue.services.retry.audit import AuditLog
from sendqueue.services.retry.control import PauseStore
from sendqueue.services.retry.index import Filters, ParkedItem
from sendqueue.services.retry.openapi import OPENAPI
from sendqueue.services.retry.parking import Action, Parking, Selector
from sendqueue.services.retry.queues import QueueOverview
from sendqueue.shared.amqp import PUBLISH_ERRORS
from sendqueue.shared.config import Config

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Who is calling (the token's name), for the audit log; set per request (each request
#: runs in its own task, so its own context).
OPERATOR: ContextVar[str] = ContextVar("sendqueue_operator", default="anonymous")
CONSOLE_DIR = Path(__file__).parent / "console"
#: Bodies larger than this are refused (100k ids fit).
MAX_BODY = 8 * 1024 * 1024
_CSV_PAGE = 1000


def error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


class AdminApi:
    def __init__(
        self,
        *,
        config: Config,
        parking: Parking,
        audit: AuditLog,
        pauses: PauseStore,
        overview: QueueOverview,
        send: Handler | None = None,
    ) -> None:
        self._config = config
        self._parking = parking
        self._audit = audit
        self._pauses = pauses
        self._overview = overview
        self._send = send
        self._tokens = config.retry.tokens()

    def register(self, app: web.Application) -> None:
        app.middlewares.append(self._errors)
        route = app.router
        route.add_get("/api/parked", self.list_parked)
        route.add_post("/api/parked/requeue", self._mutating(self.requeue))
        route.add_post("/api/parked/delete", self._mutating(self.delete))
        route.add_get("/api/operations/current", self.operation)
        route.add_get("/api/queues", self.queues)
        route.add_post("/api/destinations/{name}/pause", self._mutating(self.pause))
        route.add_post("/api/destinations/{name}/resume", self._mutating(self.resume))
        route.add_get("/api/audit", self.audit)
        route.add_get("/api/openapi.json", self.openapi)
        if self._send is not None:
            route.add_post("/api/send", self._mutating(self._send))
        if CONSOLE_DIR.is_dir():
            route.add_get("/", self.console)
            route.add_get("/console", self.console)
            route.add_static("/console/", CONSOLE_DIR)

    # -- plumbing ------------------------------------------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
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
        except PUBLISH_ERRORS as exc:
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

    def _mutating(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            OPERATOR.set(self._authorize(request))
            return await handler(request)

        return guarded

    def _authorize(self, request: web.Request) -> str:
        if not self._tokens:
            return "anonymous"  # only possible on a loopback listen address (checked at start)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise BadRequest("missing 'Authorization: Bearer <token>' header", 401)
        for token, name in self._tokens.items():
            if hmac.compare_digest(given.strip().encode(), token.encode()):
                return name
        raise BadRequest("invalid admin token", 403)

    # -- parked items ----------------------------------------------------------------------
    async def list_parked(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        unknown = set(query) - {"limit", "cursor", "format", *inp.SELECTORS} - {"ids", "all"}
        if unknown:
            raise BadRequest(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
        filters = self._filters(query)
        if query.get("format", "json") not in ("json", "csv"):
            raise BadRequest("'format' must be json or csv")
        if query.get("format") == "csv":
            return await self._csv(request, filters)
        limit = inp.bounded_int(query.get("limit", "100"), "limit", 1, 10_000)
        after = inp.decode_cursor(query["cursor"]) if "cursor" in query else None
        index = self._parking.index
        items = index.page(filters, limit, after)
        current = self._parking.current
        return web.json_response(
            {
                # True while the index is rebuilt from the queue: the list is partial.
                "rebuilding": current is not None and current.action == "rebuild",
                "items": [present(i) for i in items],
                "total": index.count(filters),
                "next_cursor": inp.encode_cursor(items[-1]) if len(items) == limit else None,
            }
        )

    async def _csv(self, request: web.Request, filters: Filters) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": 'attachment; filename="parked.csv"',
            }
        )
        await response.prepare(request)
        columns = [*ParkedItem.__struct_fields__, "error"]
        await response.write(_csv_line(columns))
        after: tuple[float, str] | None = None
        while True:
            items = self._parking.index.page(filters, _CSV_PAGE, after)
            for item in items:
                row = present(item)
                await response.write(_csv_line([row[c] for c in columns]))
            if len(items) < _CSV_PAGE:
                break
            after = (items[-1].parked_at, items[-1].id)
        await response.write_eof()
        return response

    async def requeue(self, request: web.Request) -> web.Response:
        body = await inp.json_body(request)
        to = body.pop("to", None)
        if to is not None and (not isinstance(to, str) or self._config.destination(to) is None):
            raise BadRequest(f"'to' must name a configured destination, got {to!r}")
        select = self._selector(body, "requeue")
        entry = self._audit.record(OPERATOR.get(), "requeue", _summary(body, to), None)
        result = await self._parking.run_pass(select, action="requeue", to=to)
        self._audit.update_count(entry, result.requeued)
        return web.json_response({"requeued": result.requeued, "failed": result.failed})

    async def delete(self, request: web.Request) -> web.Response:
        body = await inp.json_body(request)
        select = self._selector(body, "delete")
        entry = self._audit.record(OPERATOR.get(), "delete", _summary(body, None), None)
        result = await self._parking.run_pass(select, action="delete")
        self._audit.update_count(entry, result.deleted)
        return web.json_response({"deleted": result.deleted, "failed": result.failed})

    async def operation(self, _request: web.Request) -> web.Response:
        current = self._parking.current
        if current is None:
            return web.json_response({"running": False, "action": None, "done": 0, "total": 0})
        return web.json_response(
            {
                "running": True,
                "action": current.action,
                "done": current.done,
                "total": current.total,
            }
        )

    def _selector(self, body: dict[str, Any], action: Action) -> Selector:
        unknown = set(body) - set(inp.SELECTORS)
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        if not body:
            raise BadRequest('say what to select: {"ids": [...]}, {"all": true} or filters')
        if "ids" in body:
            if len(body) > 1:
                raise BadRequest("'ids' cannot be combined with other selectors")
            wanted = inp.ids(body["ids"])
            return lambda item: action if item.id in wanted else "keep"
        if "all" in body:
            if body["all"] is not True:
                raise BadRequest("'all' must be true")
            if len(body) > 1:
                raise BadRequest("'all' cannot be combined with filters")
            return lambda _item: action
        filters = self._filters(body)
        return lambda item: action if filters.matches(item) else "keep"

    def _filters(self, values: dict[str, Any]) -> Filters:
        destination = values.get("destination")
        if destination is not None:
            known = {d.name for d in self._config.destinations}
            known |= self._parking.index.destinations()
            if not isinstance(destination, str) or destination not in known:
                raise BadRequest(f"unknown destination {destination!r}")
        return Filters(
            destination=destination,
            reason_class=inp.opt_str(values, "reason"),
            study=inp.opt_str(values, "study"),
            patient=inp.opt_str(values, "patient"),
            since=inp.opt_time(values, "since"),
            until=inp.opt_time(values, "until"),
        )

    # -- queues and destinations -------------------------------------------------------------
    async def queues(self, _request: web.Request) -> web.Response:
        try:
            snapshot = await self._overview.snapshot()
        except Exception as exc:
            return error(f"queue statistics unavailable: {exc!r}", 503)
        return web.json_response(snapshot)

    async def pause(self, request: web.Request) -> web.Response:
        return await self._set_paused(request, True)

    async def resume(self, request: web.Request) -> web.Response:
        return await self._set_paused(request, False)

    async def _set_paused(self, request: web.Request, paused: bool) -> web.Response:
        name = request.match_info["name"]
        if self._config.destination(name) is None:
            raise BadRequest(f"unknown destination {name!r}", 404)
        changed = await self._pauses.set(name, paused)
        self._audit.record(
            OPERATOR.get(),
            "pause" if paused else "resume",
            {"destination": name, "changed": changed},
            None,
        )
        log.warning(
            "destination %s %s by %s", name, "paused" if paused else "resumed", OPERATOR.get()
        )
        return web.json_response({"destination": name, "paused": paused})

    # -- audit, docs, console ------------------------------------------------------------
    async def audit(self, request: web.Request) -> web.Response:
        query = request.query
        limit = inp.bounded_int(query.get("limit", "100"), "limit", 1, 1000)
        before = inp.bounded_int(query["cursor"], "cursor", 1, 2**62) if "cursor" in query else None
        items = self._audit.page(limit, before)
        next_cursor = str(items[-1]["id"]) if len(items) == limit else None
        return web.json_response({"items": items, "next_cursor": next_cursor})

    async def openapi(self, _request: web.Request) -> web.Response:
        return web.json_response(OPENAPI)

    async def console(self, _request: web.Request) -> web.FileResponse:
        return web.FileResponse(CONSOLE_DIR / "index.html")


def present(item: ParkedItem) -> dict[str, Any]:
    data = msgspec.structs.asdict(item)
    data["error"] = item.reason
    return data


def _summary(body: dict[str, Any], to: str | None) -> dict[str, Any]:
    """What an audit entry keeps of a selection: filters whole, ids only counted."""
    summary = {k: v for k, v in body.items() if k != "ids"}
    if "ids" in body and isinstance(body["ids"], list):
        summary["ids"] = len(body["ids"])
    if to:
        summary["to"] = to
    return summary


def _csv_line(values: list[Any]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow(["" if v is None else v for v in values])
    return out.getvalue().encode()
