"""The misbehaving proxy does what the fault scenarios count on. Fast: loopback only."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.faults.proxy import FaultyProxy

pytestmark = pytest.mark.faults


class Sink:
    """A TCP server that keeps what it reads, and echoes it if asked to."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.received = bytearray()
        self.server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(4096):
                self.received += data
                if self.echo:
                    writer.write(data)
                    await writer.drain()
        writer.close()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def _through(echo: bool):
    sink = Sink(echo)
    port = await sink.__aenter__()
    proxy = await FaultyProxy(port).start()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    return sink, proxy, reader, writer


async def test_bytes_pass_both_ways_until_a_planned_reset_cuts_the_stream():
    sink, proxy, reader, writer = await _through(echo=True)
    try:
        writer.write(b"a" * 100)
        assert await asyncio.wait_for(reader.readexactly(100), 5) == b"a" * 100
        assert proxy.reset_one(after=10)
        writer.write(b"b" * 100)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(100), 5)
        assert proxy.resets == 1
        assert bytes(sink.received) == b"a" * 100 + b"b" * 10
    finally:
        writer.transport.abort()
        await proxy.close()
        await sink.__aexit__()


async def test_a_stall_in_the_middle_of_a_large_send_stops_the_stream_and_keeps_it_open():
    sink, proxy, reader, writer = await _through(echo=False)
    try:
        proxy.stall_one_beyond(20_000)
        writer.write(b"x" * 200_000)
        await asyncio.sleep(0.5)
        assert proxy.stalls == 1
        # What passed stops where the stall caught it; the connection is still open.
        assert 20_000 - 4096 < len(sink.received) <= 20_000
        assert not reader.at_eof() and not writer.is_closing()
    finally:
        writer.transport.abort()
        await proxy.close()
        await sink.__aexit__()


async def test_a_throttled_proxy_forwards_at_about_its_rate():
    sink, proxy, _reader, writer = await _through(echo=False)
    try:
        proxy.throttle(20_000)
        writer.write(b"y" * 100_000)
        await asyncio.sleep(1.0)
        assert 8_000 <= len(sink.received) <= 40_000
    finally:
        writer.transport.abort()
        await proxy.close()
        await sink.__aexit__()
