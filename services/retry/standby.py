"""What a retry process does while another one is active: it waits, and says where that is.

The active retry process writes its admin address to the register `retry.active` when it
takes over. A standby serves /metrics (`sendqueue_retry_active` 0) and answers everything
else with 503 naming the active process's address: /healthz too, so that a load balancer
in front of several retry processes sends the operators to the active one. The console
page redirects to the active process, and the console, meeting such a 503, moves there.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from sendqueue.shared.amqp import BROKER_ERRORS
from sendqueue.shared.config import parse_listen
from sendqueue.shared.register import Registers

log = logging.getLogger(__name__)

ACTIVE_REGISTER = "retry.active"
_UNSPECIFIED = {"", "0.0.0.0", "::"}
#: Why a standby may not know the active process: RabbitMQ away, or a register not ours.
_UNKNOWN: tuple[type[BaseException], ...] = (*BROKER_ERRORS, msgspec.DecodeError)


class ActiveRetry(msgspec.Struct, frozen=True):
    """Who is the active retry process, and where its admin API answers."""

    url: str
    holder: str
    since: float


def admin_url(listen: str, *, tls: bool = False) -> str:
    """The admin API's address as others reach it: a wildcard listen names this host."""
    host, port = parse_listen(listen)
    if host in _UNSPECIFIED:
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


async def announce_active(
    registers: Registers, listen: str, holder: str, *, tls: bool = False
) -> None:
    """Retried until RabbitMQ confirms (run in the background: an alarm blocks publishes)."""
    active = ActiveRetry(url=admin_url(listen, tls=tls), holder=holder, since=time.time())
    pause = 1.0
    while True:
        try:
            await registers.write(ACTIVE_REGISTER, msgspec.json.encode(active))
            return
        except BROKER_ERRORS as exc:
            log.warning("cannot announce this retry process as the active one yet (%r)", exc)
        await asyncio.sleep(pause)
        pause = min(pause * 2, 30.0)


async def read_active(registers: Registers) -> ActiveRetry | None:
    try:
        raw = await registers.read(ACTIVE_REGISTER)
        return None if raw is None else msgspec.json.decode(raw, type=ActiveRetry)
    except _UNKNOWN as exc:
        log.info("cannot tell which retry process is active: %r", exc)
        return None


def standby_app(registry: CollectorRegistry, registers: Registers) -> web.Application:
    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(registry))

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        active = await read_active(registers)
        if active is not None and request.method == "GET" and request.path == "/":
            raise web.HTTPTemporaryRedirect(active.url + "/")
        body: dict[str, Any] = {
            "status": "standby",
            "error": (
                f"this retry process is a standby; the active one ({active.holder}) answers"
                f" at {active.url}"
                if active
                else "this retry process is a standby; the active one is not known yet"
            ),
            "active": active.url if active else None,
        }
        return web.json_response(body, status=503, headers={"Retry-After": "2"})

    app.router.add_route("*", "/{tail:.*}", elsewhere)
    return app
