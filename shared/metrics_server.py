"""The small HTTP server every service runs: /metrics, /healthz, plus its own routes."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from sendqueue.shared.config import parse_listen

HealthCheck = Callable[[], dict[str, bool]]


def make_app(
    registry: CollectorRegistry, health: HealthCheck, max_body: int = 1024 * 1024
) -> web.Application:
    app = web.Application(client_max_size=max_body)

    async def healthz(_request: web.Request) -> web.Response:
        checks = health()
        ok = all(checks.values())
        return web.json_response(
            {"status": "ok" if ok else "degraded", "checks": checks}, status=200 if ok else 503
        )

    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.router.add_get("/healthz", healthz)
    return app


async def start_server(
    app: web.Application,
    listen: str,
    ssl_context: ssl.SSLContext | None = None,
    sock: socket.socket | None = None,
) -> web.AppRunner:
    """Serve `app` at `listen`, or on `sock` when given (a socket a supervising process
    bound for this one)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2)
    await runner.setup()
    site: web.BaseSite
    if sock is not None:
        site = web.SockSite(runner, sock, ssl_context=ssl_context)
    else:
        host, port = parse_listen(listen)
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    return runner
