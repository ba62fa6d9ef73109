"""What the HTTP kinds share: a session per destination, the download from Orthanc in the
destination's own threads, bodies sent from memory or streamed from the spool file, and
what an HTTP answer means for the job.

The hot path (`HttpPeer.fetch`): each of the destination's `concurrency` threads downloads
with its own kept-alive connection to Orthanc (sender/fetch.py), off the event loop; an
instance up to [sender] in_memory_mb stays in memory and is posted from there (no spool
write and read back); a bigger one streams into the spool file and is posted from it, so
memory stays flat for any size. The upload stays on the event loop (aiohttp): every rule
below holds the same for both.

    2xx                       -> the kind looks at the body (read with a size cap and a deadline)
    3xx                       -> DestinationUnavailable "redirected": never followed (a POST
                                 redirected to an SSO login page would "succeed" there)
    401, 403                  -> DestinationUnavailable "auth-rejected": pause and probe
    404, 405                  -> DestinationUnavailable "endpoint-missing": the url is wrong
    408, 429, 5xx             -> TransientError, with the peer's Retry-After when it sent one
    other 4xx (400, 409, 415) -> PermanentError: the same request will fail the same way
    connection refused, TLS   -> DestinationUnavailable: nothing reached the peer
    lost connection, timeout  -> TransientError: the peer may have stored it (a resend is harmless)
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import aiohttp
from aiohttp.abc import AbstractStreamWriter

from sendqueue.services.sender.destinations.tls import client_context
from sendqueue.services.sender.fetch import Fetched, InstanceFetcher
from sendqueue.shared.config import HttpDestinationConfig
from sendqueue.shared.errors import DestinationUnavailable, PermanentError, TransientError

#: Bytes read from the spool file per write: the only part of an instance held in memory.
CHUNK = 256 * 1024
#: Characters of the peer's error body kept in the failure reason.
_BODY_EXCERPT = 300
#: The most of an answer body read into memory: a STOW-RS answer for a batch of a
#: thousand instances is about 1 MB; anything bigger is not an answer we asked for.
MAX_ANSWER_BYTES = 16 * 1024 * 1024

Part = bytes | Path
T = TypeVar("T")


class StreamedBody(aiohttp.payload.Payload):
    """Byte strings and whole files, sent in CHUNK pieces with a Content-Length.

    The files are opened when the body is built, so a spool file removed meanwhile (a
    shutdown) still sends whole. A write that the peer does not take within `stall`
    seconds fails the request: aiohttp has no timeout of its own for a stalled upload.
    """

    def __init__(self, parts: Sequence[Part], content_type: str, stall: float) -> None:
        super().__init__(None, content_type=content_type)
        self._stall = stall
        self._parts: list[bytes | BinaryIO] = []
        try:
            for part in parts:
                self._parts.append(part if isinstance(part, bytes) else open(part, "rb"))  # noqa: SIM115
        except OSError:
            self.close_files()
            raise
        self._size = sum(
            len(p) if isinstance(p, bytes) else Path(p.name).stat().st_size for p in self._parts
        )

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a streamed DICOM body has no text form")

    async def write(self, writer: AbstractStreamWriter) -> None:
        try:
            for part in self._parts:
                if isinstance(part, bytes):
                    # In pieces, like a file: the peer's pace paces us, piece by piece.
                    view = memoryview(part)
                    for start in range(0, len(view), CHUNK):
                        await self._put(writer, view[start : start + CHUNK])
                    continue
                while chunk := await asyncio.to_thread(part.read, CHUNK):
                    await self._put(writer, chunk)
        finally:
            self.close_files()

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        await self.write(writer)

    async def _put(self, writer: AbstractStreamWriter, data: bytes | memoryview) -> None:
        try:
            await asyncio.wait_for(writer.write(data), self._stall)
        except TimeoutError:
            raise TransientError(
                f"the peer stopped reading the request body for {self._stall:g} s",
                reason_class="http-stalled",
            ) from None

    def close_files(self) -> None:
        for part in self._parts:
            if not isinstance(part, bytes):
                part.close()

    def _close(self) -> None:
        self.close_files()


class HttpPeer:
    """One destination's aiohttp session: auth, extra headers, TLS and timeouts applied."""

    def __init__(self, config: HttpDestinationConfig) -> None:
        self.config = config
        self.base = config.url.rstrip("/")
        self._ssl = client_context(config.tls, config.name) if config.tls else True
        self._server_name = config.tls.server_name if config.tls else ""
        self._session: aiohttp.ClientSession | None = None
        self._downloads: ThreadPoolExecutor | None = None
        self.in_flight = 0

    async def fetch(self, fetcher: InstanceFetcher, orthanc_id: str, spool: Path) -> Fetched:
        """Download the instance in one of this destination's threads (module doc).

        Raises what the fetcher raises (source and spool faults), for the consumer."""
        return await self.in_thread(fetcher.fetch, orthanc_id, spool)

    async def in_thread(self, work: Callable[..., T], *args: Any) -> T:
        """Run work in one of the destination's threads: one per unit of concurrency, each
        keeping its own connection to Orthanc."""
        if self._downloads is None:
            self._downloads = ThreadPoolExecutor(
                max_workers=self.config.concurrency,
                thread_name_prefix=f"sq-http-{self.config.name}",
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._downloads, work, *args)

    def _get_session(self) -> aiohttp.ClientSession:
        # Made on first use: a ClientSession belongs to the running event loop.
        if self._session is None or self._session.closed:
            cfg = self.config
            headers = {"Accept-Encoding": "identity", **cfg.headers}
            if cfg.token:
                headers["Authorization"] = f"Bearer {cfg.token}"
            elif cfg.username:
                pair = f"{cfg.username}:{cfg.password}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
            self._session = aiohttp.ClientSession(
                headers=headers,
                connector=aiohttp.TCPConnector(limit=cfg.concurrency + 1, ssl=self._ssl),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=cfg.connect_timeout, sock_read=cfg.http_timeout
                ),
            )
        return self._session

    @asynccontextmanager
    async def request(
        self, method: str, path: str, body: Callable[[], StreamedBody] | None = None, **kw: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request, tried once more if a kept-alive connection turns out closed.

        body is a factory: the retry needs a fresh body (the first one is consumed).
        Connection errors become DestinationUnavailable or TransientError (module doc).
        """
        url = self.base + path
        if self._server_name:
            kw["server_hostname"] = self._server_name
        self.in_flight += 1
        try:
            for attempt in (1, 2):
                data = body() if body else None
                try:
                    resp = await self._get_session().request(
                        method, url, data=data, allow_redirects=False, **kw
                    )
                except aiohttp.ServerDisconnectedError:
                    _close(data)
                    # Orthanc and others drop idle keep-alive connections: one fresh try.
                    if attempt == 2:
                        raise TransientError(
                            f"{method} {url}: the server closed the connection",
                            reason_class="connection-lost",
                        ) from None
                    continue
                except BaseException:
                    _close(data)
                    raise
                try:
                    async with resp:
                        yield resp
                finally:
                    _close(data)  # an early answer (a 401) may have left the body unsent
                return
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            raise DestinationUnavailable(
                f"{method} {url}: TLS failed: {exc}", reason_class="tls-failed"
            ) from None
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise DestinationUnavailable(
                f"{method} {url}: cannot connect: {exc}", reason_class="unreachable"
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(
                f"{method} {url}: {type(exc).__name__}: {exc}", reason_class="http-io-error"
            ) from None
        finally:
            self.in_flight -= 1

    async def probe(self, path: str, headers: dict[str, str] | None = None) -> None:
        """GET path; DestinationUnavailable unless the peer answers and accepts our credentials.

        Any answer other than auth, missing endpoint or 5xx counts as up: a STOW-only server
        may well refuse the GET itself (405) while accepting our POSTs.
        """
        try:
            async with self.request("GET", path, headers=headers) as resp:
                if 300 <= resp.status < 400 or resp.status in (401, 403, 404) or resp.status >= 500:
                    await raise_for_http(resp, f"GET {self.base}{path}")
        except TransientError as exc:
            if isinstance(exc, DestinationUnavailable):
                raise
            raise DestinationUnavailable(str(exc), reason_class=exc.reason_class) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._downloads is not None:
            self._downloads.shutdown(wait=False, cancel_futures=True)
            self._downloads = None


def body_part(fetched: Fetched, spool: Path) -> Part:
    """What to post: the bytes in memory, or the spool file they were streamed into."""
    return bytes(fetched.data) if fetched.data is not None else spool


def _close(body: StreamedBody | None) -> None:
    if body is not None:
        body.close_files()


async def raise_for_http(resp: aiohttp.ClientResponse, what: str) -> None:
    """Raise the error an HTTP status means (module doc); return on 2xx."""
    status = resp.status
    if 200 <= status < 300:
        return
    excerpt = await body_excerpt(resp)
    message = f"{what}: HTTP {status} {resp.reason or ''}".rstrip() + (
        f": {excerpt}" if excerpt else ""
    )
    if 300 <= status < 400:
        where = resp.headers.get("Location", "")
        raise DestinationUnavailable(
            f"{message}: redirected{f' to {where}' if where else ''}; a redirect is never"
            " followed (check the destination's url, or an expired proxy session)",
            reason_class="redirected",
        )
    if status in (401, 403):
        raise DestinationUnavailable(
            message + " (check the destination's credentials)", reason_class="auth-rejected"
        )
    if status in (404, 405):
        raise DestinationUnavailable(
            message + " (check the destination's url)", reason_class="endpoint-missing"
        )
    if status in (408, 429) or status >= 500:
        raise TransientError(
            message,
            reason_class=f"http-{status}",
            retry_after=parse_retry_after(resp.headers.get("Retry-After")),
        )
    raise PermanentError(message, reason_class=f"http-{status}")


async def read_answer(
    resp: aiohttp.ClientResponse, what: str, deadline: float, limit: int | None = None
) -> bytes:
    """The whole answer body, or TransientError if it is bigger than `limit` bytes or
    does not arrive within `deadline` seconds (a peer dripping a byte at a time would pass
    every per-read timeout)."""
    limit = MAX_ANSWER_BYTES if limit is None else limit
    try:
        async with asyncio.timeout(deadline):
            raw = await resp.content.read(limit + 1)
            while len(raw) <= limit and (more := await resp.content.read(limit + 1 - len(raw))):
                raw += more
    except TimeoutError:
        raise TransientError(
            f"{what}: the answer did not arrive whole within {deadline:g} s",
            reason_class="http-slow-answer",
        ) from None
    if len(raw) > limit:
        raise TransientError(
            f"{what}: the answer is bigger than {limit} bytes", reason_class="http-huge-answer"
        )
    return raw


async def body_excerpt(resp: aiohttp.ClientResponse) -> str:
    try:
        async with asyncio.timeout(5):
            raw = await resp.content.read(_BODY_EXCERPT * 4)
    except (aiohttp.ClientError, TimeoutError):
        return ""
    return " ".join(raw.decode("utf-8", errors="replace").split())[:_BODY_EXCERPT]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
