"""The RabbitMQ management API answering badly (a proxy's page, garbage, a flood): the
queue statistics fail clearly, bounded in size and time, and the gauges say so."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from sendqueue.services.retry import queue_gauges
from sendqueue.services.retry.queue_gauges import ManagementSource
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(60)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def management() -> AsyncIterator[Callable[[Handler], Awaitable[ManagementSource]]]:
    runners: list[web.AppRunner] = []
    sources: list[ManagementSource] = []

    async def start(handler: Handler) -> ManagementSource:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        source = ManagementSource(f"http://guest:guest@127.0.0.1:{port}", "/", "sq")
        sources.append(source)
        return source

    yield start
    for source in sources:
        await source.close()
    for runner in runners:
        await runner.cleanup()


def body(data: bytes, content_type: str = "application/json") -> Handler:
    async def handle(_request: web.Request) -> web.StreamResponse:
        return web.Response(body=data, content_type=content_type)

    return handle


async def flood(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    try:
        await response.write(b"[")
        for _ in range(100):
            await response.write(b'{"name": "sq.x"},' * 10_000)
    except ConnectionError:
        pass
    return response


@pytest.mark.parametrize(
    "handler",
    [
        body(b"<html>login</html>", "text/html"),
        body(b'{"error": "not a list"}'),
        body(b"[1, 2, 3]"),
        body(b'[{"name": 42}]'),
        body(b"\xff\xfe garbage"),
        flood,
    ],
    ids=["html", "object", "numbers", "bad-name", "binary", "flood"],
)
async def test_a_bad_management_answer_is_a_clear_error(management, handler, monkeypatch):
    monkeypatch.setattr(queue_gauges, "_MAX_ANSWER_BYTES", 1024 * 1024)
    source = await management(handler)
    async with asyncio.timeout(15):
        with pytest.raises(ValueError):
            await source.fetch()


async def test_a_good_answer_still_counts(management):
    answer = b'[{"name": "sq.work.pacs", "messages_ready": 3, "messages_unacknowledged": 1}]'
    source = await management(body(answer))
    [stats] = await source.fetch()
    assert (stats.name, stats.ready) == ("sq.work.pacs", 3)
