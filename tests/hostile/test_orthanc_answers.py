"""The Orthanc client against an HTTP peer that answers badly: garbage, truncated files,
5xx, throttling, bodies that drip. Each is a clear error, bounded in time; none a hang.

The peer is a small aiohttp server on loopback standing in for Orthanc (or for a proxy in
front of it), so that each way of answering badly can be scripted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from sendqueue.shared import orthanc as orthanc_module
from sendqueue.shared.config import OrthancConfig
from sendqueue.shared.durations import Duration
from sendqueue.shared.errors import (
    InstanceNotFound,
    SourceThrottled,
    SourceUnavailable,
    SpoolUnavailable,
)
from sendqueue.shared.orthanc import OrthancClient
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(60)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def peer() -> AsyncIterator[Callable[[Handler], Awaitable[OrthancClient]]]:
    """Start a peer answering with `handler`; returns an OrthancClient (timeout 2 s) on it."""
    runners: list[web.AppRunner] = []
    clients: list[OrthancClient] = []

    async def start(handler: Handler) -> OrthancClient:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        client = OrthancClient(OrthancConfig(url=f"http://127.0.0.1:{port}", timeout=Duration(2)))
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()
    for runner in runners:
        await runner.cleanup()


def answer(status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None) -> Handler:
    async def handle(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers)

    return handle


async def drip(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    try:
        for _ in range(1000):
            await response.write(b" ")
            await asyncio.sleep(0.05)
    except (ConnectionError, asyncio.CancelledError):
        pass
    return response


async def truncated(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Length": "100000"})
    await response.prepare(request)
    await response.write(b"DICM" * 100)
    if request.transport is not None:
        request.transport.close()  # the connection drops mid-file
    return response


@pytest.mark.parametrize(
    "handler",
    [
        answer(body=b"<html>Sign in</html>", headers={"Content-Type": "text/html"}),
        answer(body=b'{"Name": "Orth'),
        answer(body=b"\xff\xfe\x00garbage"),
        answer(status=500, body=b"oops"),
        answer(status=502),
        drip,
    ],
    ids=["html", "truncated-json", "binary", "500", "502", "drip"],
)
async def test_a_system_answer_that_is_not_orthancs_means_orthanc_does_not_answer(peer, handler):
    client = await peer(handler)
    async with asyncio.timeout(15):
        assert await client.answers() is False


@pytest.mark.parametrize("status", [408, 429])
async def test_throttling_is_its_own_error_and_no_fault_of_the_instance(peer, status):
    client = await peer(answer(status=status, headers={"Retry-After": "3"}))
    with pytest.raises(SourceThrottled):
        await client.get_json("/instances/abc")


async def test_a_json_answer_bigger_than_the_cap_is_refused(peer, monkeypatch):
    monkeypatch.setattr(orthanc_module, "MAX_JSON_BYTES", 1000)
    client = await peer(answer(body=b"[" + b"1," * 2000 + b"1]"))
    with pytest.raises(SourceUnavailable):
        await client.get_json("/changes")


async def test_a_truncated_file_is_never_taken_whole(peer, tmp_path: Path):
    client = await peer(truncated)
    with pytest.raises(SourceUnavailable):
        await client.download_instance("abc", tmp_path / "x.dcm")


async def test_a_file_that_drips_is_given_up_within_its_deadline(peer, tmp_path, monkeypatch):
    monkeypatch.setattr(orthanc_module, "MIN_DOWNLOAD_RATE", 1024 * 1024)
    client = await peer(drip)
    async with asyncio.timeout(20):
        with pytest.raises(SourceUnavailable) as slow:
            await client.download_instance("abc", tmp_path / "x.dcm")
    assert slow.value.reason_class == "source-slow"


async def test_a_missing_instance_is_not_found(peer, tmp_path):
    client = await peer(answer(status=404))
    with pytest.raises(InstanceNotFound):
        await client.download_instance("abc", tmp_path / "x.dcm")


async def test_a_full_spool_is_the_spools_fault(peer):
    client = await peer(answer(body=b"DICM" * 1024))
    with pytest.raises(SpoolUnavailable) as full:
        await client.download_instance("abc", Path("/dev/full"))
    assert "full" in str(full.value)


async def test_a_vanished_spool_is_the_spools_fault(peer, tmp_path):
    client = await peer(answer(body=b"DICM" * 1024))
    with pytest.raises(SpoolUnavailable) as gone:
        await client.download_instance("abc", tmp_path / "gone" / "x.dcm")
    assert "gone" in str(gone.value)


async def test_an_id_cannot_reach_another_path_of_the_api(peer, tmp_path):
    seen: list[str] = []

    async def record(request: web.Request) -> web.StreamResponse:
        seen.append(request.raw_path)
        return web.Response(body=b"DICM")

    client = await peer(record)
    await client.download_instance("../../tools/reset", tmp_path / "x.dcm")
    assert seen == ["/instances/..%2F..%2Ftools%2Freset/file"]
