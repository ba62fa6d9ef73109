"""The destinations' routes: the queue overview, and an operator's pause and resume."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

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
        """Undoes a pause; a destination not paused but outside its send window is sent to
        at once, until its window opens anyway (pause it to return to the schedule)."""
        name = self._known(request)
        if name in self._pauses.paused or not self._outside_window(name):
            return await self._set_paused(request, False)
        until = self._next_opening(name)
        await self._pauses.open_window(name, until)
        details = {"destination": name, "changed": True, "outside_window_until": until}
        self._audit.record(OPERATOR.get(), "resume", details, None)
        log.warning("destination %s resumed outside its send window by %s", name, OPERATOR.get())
        return web.json_response({"destination": name, "paused": False, "window_open_until": until})

    def _known(self, request: web.Request) -> str:
        name = request.match_info["name"]
        if self._config.destination(name) is None:
            raise BadRequest(f"unknown destination {name!r}", 404)
        return name

    def _outside_window(self, name: str) -> bool:
        dest = self._config.destination(name)
        window = dest.window() if dest else None
        if window is None or self._pauses.open_until(name) is not None:
            return False
        return not window.is_open(datetime.now(UTC))

    def _next_opening(self, name: str) -> float:
        dest = self._config.destination(name)
        window = dest.window() if dest else None
        assert window is not None
        return window.next_change(datetime.now(UTC)).timestamp()

    async def _set_paused(self, request: web.Request, paused: bool) -> web.Response:
        name = self._known(request)
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
