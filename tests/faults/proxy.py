"""An asyncio TCP proxy between the sender and its DICOM peer that misbehaves on demand.

Each accepted connection gets its own pair of pumps (sender -> peer, peer -> sender). The
faults act on bytes in flight, so they land wherever the stream happens to be: in the
middle of a PDU, of a dataset, of an association negotiation.

- `reset_one(after)`: the next `after` bytes towards the peer of one open connection still
  pass, then both sides get a TCP RST (SO_LINGER 0), as a middlebox dropping state would.
- `throttle(rate)`: every pump forwards at most `rate` bytes a second (None: full speed).
- `stall_one(after)`: one open connection forwards `after` more bytes towards the peer,
  then nothing more in either direction, while both sockets stay open: a peer that stopped
  reading. It stays so until the proxy closes. `stall_next(after)` does the same to the
  next connection opened, and `stall_one_beyond(size)` to the first connection caught in
  the middle of a send larger than `size`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field

CHUNK = 4096


@dataclass(eq=False)  # kept in a set: identity, not value
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    #: Bytes towards the peer still allowed before a reset (None: no reset planned).
    reset_after: int | None = None
    #: Bytes towards the peer still allowed before the link stalls for good.
    stall_after: int | None = None
    stalled: bool = False
    #: Bytes towards the peer since the peer last said anything: one instance's worth.
    since_answer: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class FaultyProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.upstream_port = upstream_port
        self.port = 0
        self.rate: float | None = None
        self.resets = 0
        self.stalls = 0
        self.connections = 0
        self._stall_next: int | None = None
        #: Stall the first link whose current send passes this many bytes.
        self._stall_beyond: int | None = None
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> FaultyProxy:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            _abort(link)
        for link in list(self._links):
            for task in link.tasks:
                task.cancel()
            await asyncio.gather(*link.tasks, return_exceptions=True)
        self._links.clear()

    # -- faults ---------------------------------------------------------------------------
    def throttle(self, rate: float | None) -> None:
        self.rate = rate

    def stall_next(self, after: int | None) -> None:
        self._stall_next = after

    def reset_one(self, after: int) -> bool:
        """Plan a reset of one open, healthy connection; False if there is none."""
        link = self._healthy_link()
        if link is not None:
            link.reset_after = after
        return link is not None

    def stall_one(self, after: int) -> bool:
        """Plan a stall of one open, healthy connection; False if there is none."""
        link = self._healthy_link()
        if link is not None:
            link.stall_after = after
        return link is not None

    def stall_one_beyond(self, size: int | None) -> None:
        """Stall the first connection caught sending more than `size` bytes without an
        answer: in the middle of a large instance, with more left than any buffer holds."""
        self._stall_beyond = size

    def _healthy_link(self) -> _Link | None:
        for link in self._links:
            if not link.stalled and link.reset_after is None and link.stall_after is None:
                return link
        return None

    # -- pumping --------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            _rst(writer)  # the peer is down: refuse as it would
            return
        self.connections += 1
        link = _Link(client=writer, upstream=up_writer)
        if self._stall_next is not None:
            link.stall_after, self._stall_next = self._stall_next, None
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(link, reader, up_writer, towards_peer=True)),
            asyncio.create_task(self._pump(link, up_reader, writer, towards_peer=False)),
        ]
        await asyncio.gather(*link.tasks, return_exceptions=True)
        self._links.discard(link)

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        towards_peer: bool,
    ) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                if towards_peer:
                    link.since_answer += len(data)
                    data = self._apply_plans(link, data)
                else:
                    link.since_answer = 0
                if data and not (link.stalled and not towards_peer):
                    writer.write(data)
                    await writer.drain()
                while link.stalled:  # neither reads nor writes again, sockets kept open
                    await asyncio.sleep(3600)
                if link.reset_after == 0:
                    self.resets += 1
                    _abort(link)
                    break
                if self.rate:
                    await asyncio.sleep(len(data) / self.rate)
        except (OSError, asyncio.IncompleteReadError):
            _abort(link)
        else:
            with contextlib.suppress(OSError):
                writer.write_eof()

    def _apply_plans(self, link: _Link, data: bytes) -> bytes:
        beyond = self._stall_beyond
        if beyond is not None and link.stall_after is None and link.since_answer > beyond:
            link.stall_after, self._stall_beyond = 0, None
        if link.reset_after is not None:
            data, link.reset_after = data[: link.reset_after], max(0, link.reset_after - len(data))
        if link.stall_after is not None and not link.stalled:
            if len(data) >= link.stall_after:
                data = data[: link.stall_after]
                link.stalled = True
                self.stalls += 1
            else:
                link.stall_after -= len(data)
        return data


def _abort(link: _Link) -> None:
    _rst(link.client)
    _rst(link.upstream)


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN: the other side gets ECONNRESET."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
