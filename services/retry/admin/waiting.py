"""POST /api/jobs/cancel: jobs still waiting (queued or delayed) go to parking, `cancelled`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from sendqueue.services.retry.admin import input as inp
from sendqueue.services.retry.admin.audit import AuditLog
from sendqueue.services.retry.admin.auth import OPERATOR, Access
from sendqueue.services.retry.admin.input import BadRequest
from sendqueue.services.retry.cancel import CancelFilter, Canceller
from sendqueue.shared.config import Config

#: What a cancel body may say; every filter given must match.
_FIELDS = ("destination", "study", "patient", "before", "all")


class WaitingRoutes:
    def __init__(self, *, config: Config, canceller: Canceller, audit: AuditLog) -> None:
        self._config = config
        self._canceller = canceller
        self._audit = audit

    def register(self, app: web.Application, access: Access) -> None:
        app.router.add_post("/api/jobs/cancel", access.act(self.cancel))

    async def cancel(self, request: web.Request) -> web.Response:
        body = await inp.json_body(request)
        select = self.filter(body)
        operator = OPERATOR.get()
        entry = self._audit.record(operator, "cancel", dict(body), None)
        result = await self._canceller.cancel(select, operator)
        self._audit.update_count(entry, result.cancelled)
        return web.json_response(
            {
                "cancelled": result.cancelled,
                "kept": result.kept,
                "failed": result.failed,
                "by_destination": result.by_destination,
            }
        )

    def filter(self, body: dict[str, Any]) -> CancelFilter:
        unknown = set(body) - set(_FIELDS)
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        if not body:
            raise BadRequest(
                'say what to cancel: filters (destination, study, patient, before) or {"all": true}'
            )
        if "all" in body:
            if body["all"] is not True or len(body) > 1:
                raise BadRequest("'all' must be true, and alone")
            return CancelFilter()
        destination = inp.opt_str(body, "destination")
        if destination is not None and self._config.destination(destination) is None:
            raise BadRequest(f"unknown destination {destination!r}")
        return CancelFilter(
            destination=destination,
            study=inp.opt_str(body, "study"),
            patient=inp.opt_str(body, "patient"),
            queued_before=inp.opt_time(body, "before"),
        )
