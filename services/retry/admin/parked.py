"""The parked items' routes: list (JSON or CSV), requeue, delete, and bulk progress."""

from __future__ import annotations

import csv
import io
from typing import Any

import msgspec
from aiohttp import web

from sendqueue.services.retry.admin import input as inp
from sendqueue.services.retry.admin.audit import AuditLog
from sendqueue.services.retry.admin.auth import OPERATOR, Access
from sendqueue.services.retry.admin.input import BadRequest
from sendqueue.services.retry.parking.index import Filters, ParkedItem
from sendqueue.services.retry.parking.passes import Action, Selector
from sendqueue.services.retry.parking.queue import Parking
from sendqueue.shared.config import Config

_CSV_PAGE = 1000


class ParkedRoutes:
    def __init__(self, *, config: Config, parking: Parking, audit: AuditLog) -> None:
        self._config = config
        self._parking = parking
        self._audit = audit

    def register(self, app: web.Application, access: Access) -> None:
        app.router.add_get("/api/parked", access.read(self.list_parked))
        app.router.add_post("/api/parked/requeue", access.act(self.requeue))
        app.router.add_post("/api/parked/delete", access.act(self.delete))
        app.router.add_get("/api/operations/current", access.read(self.operation))

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
            orthanc_job=inp.opt_str(values, "orthanc_job"),
            since=inp.opt_time(values, "since"),
            until=inp.opt_time(values, "until"),
        )


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


#: A cell starting with one of these is a formula to a spreadsheet: a peer's error text
#: or a DICOM header could run one on the operator's machine (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value  # shown as text, the quote says it was escaped
    return value


def _csv_line(values: list[Any]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow([csv_cell(v) for v in values])
    return out.getvalue().encode()
