"""How a service starts and stops: its parts are opened in order and closed in reverse,
whatever happens, and SIGTERM/SIGINT are handled here only.

Each service's `app.py` reads as a list of parts::

    async with ServiceParts() as parts:
        conn = await parts.connection(url, "sendqueue-x")
        ...
        await parts.server(app, listen)
        await stop.wait()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol, TypeVar

from aio_pika.abc import AbstractRobustConnection
from aiohttp import web

from sendqueue.shared.amqp import connect
from sendqueue.shared.metrics_server import start_server

log = logging.getLogger(__name__)

#: run_x(config, stop, registry=None): each service's entry point.
ServiceMain = Callable[..., Coroutine[Any, Any, None]]


class _Closable(Protocol):
    def close(self) -> Awaitable[None] | None: ...


_Part = TypeVar("_Part", bound=_Closable)


class ServiceParts(contextlib.AsyncExitStack):
    """An AsyncExitStack that knows sendqueue's kinds of part."""

    async def connection(self, url: str, name: str) -> AbstractRobustConnection:
        connection = await connect(url, name)
        self.push_async_callback(_quietly, connection.close)
        return connection

    async def server(
        self,
        app: web.Application,
        listen: str,
        ssl_context: ssl.SSLContext | None = None,
        sock: socket.socket | None = None,
    ) -> web.AppRunner:
        runner = await start_server(app, listen, ssl_context, sock)
        self.push_async_callback(runner.cleanup)
        return runner

    def task(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Runs until the service stops; then cancelled and awaited (its cleanup runs)."""
        task = asyncio.create_task(coroutine, name=name)
        self.push_async_callback(_cancel, task)
        return task

    def closing(self, part: _Part) -> _Part:
        """A part with a close() method, sync or async (clients, SQLite files)."""
        self.push_async_callback(_close, part)
        return part


async def _close(part: _Closable) -> None:
    result = part.close()
    if result is not None:
        await result


async def _quietly(close: Callable[[], Awaitable[Any]]) -> None:
    # A connection already lost (RabbitMQ gone) may fail to close: nothing is left to do.
    with contextlib.suppress(Exception):
        await close()


#: How long a stopping service waits for one of its tasks to end.
_TASK_STOP_TIMEOUT = 5.0


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel until it ends: a library may turn a cancellation into an error of its own,
    which a loop that tolerates errors then swallows. Never hang a shutdown on it."""
    deadline = asyncio.get_running_loop().time() + _TASK_STOP_TIMEOUT
    while not task.done() and asyncio.get_running_loop().time() < deadline:
        task.cancel()
        await asyncio.wait({task}, timeout=0.2)
    if not task.done():
        log.warning("task %s did not stop within %.0fs", task.get_name(), _TASK_STOP_TIMEOUT)
    elif not task.cancelled() and task.exception() is not None:
        log.warning("task %s ended with %r", task.get_name(), task.exception())


async def run_until_signalled(mains: Mapping[str, ServiceMain], config: Any) -> None:
    """Run the services side by side until SIGTERM/SIGINT, or until one of them fails
    (then the others are stopped too and its error is raised)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(main(config, stop), name=name) for name, main in mains.items()]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    stop.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result
    log.info("stopped: %s", ", ".join(mains))
