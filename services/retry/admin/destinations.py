"""The destinations' routes: the queue overview, and an operator's pause and resume."""

from __future__ import annotations

import logging

from aiohttp import web

from sendqueue.services.retry.admin.audit import AuditLog
from sendqueue.services.retry.admin.auth import OPERATOR, Access
from sendqueue.services.retry.admin.input import BadRequest
from sendqueue.services.retry.admin.overview import QueueOverview
from sendqueue.services.retry.pauses import PauseStore
from sendqueue.shared.config import Config

log = logging.getLogger(__name__)


class DestinationRoutes:
    def __init__(
        self, *, config: Config, pauses: PauseStore, overview: QueueOverview, audit: AuditLog
    ) -> None:
        self._config = config
        self._pauses = pauses
        self._overview = overview
        self._audit = audit

    def register(self, app: web.Application, access: Access) -> None:
        app.router.add_get("/api/queues", access.read(self.queues))
        app.router.add_post("/api/destinations/{name}/pause", access.act(self.pause))
        app.router.add_post("/api/destinations/{name}/resume", access.act(self.resume))

    async def queues(self, _request: web.Request) -> web.Response:
        try:
            snapshot = await self._overview.snapshot()
        except Exception as exc:
            raise BadRequest(f"queue statistics unavailable: {exc!r}", 503) from None
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
