"""Instance downloads in the worker threads: one keep-alive HTTP connection per thread.

The event loop's aiohttp client costs ~1.3 ms of CPU per 0.5 MB file, most of it in the
main thread that also consumes and acks jobs; ``http.client`` reading into a buffer sized
from Content-Length costs ~0.4 ms, in the thread that then sends the instance. Small
instances stay in memory; larger ones stream into the spool file one block at a time, so
memory stays flat whatever the size.

Errors and limits are those of sendqueue.shared.orthanc's client: 404 -> InstanceNotFound,
408/429 -> SourceThrottled, network failure, 5xx, a file cut short or a download slower than
MIN_DOWNLOAD_RATE -> SourceUnavailable, other 4xx -> PermanentError; a spool that cannot
take the file -> SpoolUnavailable. Orthanc drops idle
keep-alive connections: a request failing that way on a reused connection is sent once
more on a fresh one.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from sendqueue.shared.config import OrthancConfig
from sendqueue.shared.errors import (
    InstanceNotFound,
    PermanentError,
    SourceThrottled,
    SourceUnavailable,
)
from sendqueue.shared.orthanc import (
    MAX_FILE_BYTES,
    MIN_DOWNLOAD_RATE,
    SpoolFile,
    spool_write,
)

_BLOCK = 1024 * 1024
#: A dropped idle keep-alive connection shows as one of these on the next request.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


@dataclass
class Fetched:
    size: int
    #: The whole file, when it was small enough to keep in memory.
    data: bytearray | None
    #: Otherwise the spool file holding it.
    path: Path | None


class InstanceFetcher:
    """GET /instances/{id}/file from worker threads, each on its own connection."""

    def __init__(self, config: OrthancConfig, memory_limit: int) -> None:
        url = urlsplit(config.url.rstrip("/"))
        self._https = url.scheme == "https"
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or (443 if self._https else 80)
        self._prefix = url.path
        self._timeout = config.timeout
        self.memory_limit = memory_limit
        self._headers = {"Accept-Encoding": "identity", "Connection": "keep-alive"}
        if config.username:
            token = base64.b64encode(f"{config.username}:{config.password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPConnection] = []

    def fetch(self, orthanc_id: str, spool: Path) -> Fetched:
        # The ID comes from a message: never let it reach another path of the REST API.
        path = f"{self._prefix}/instances/{quote(orthanc_id, safe='')}/file"
        connection, fresh = self._connection()
        try:
            return self._get(connection, path, spool)
        except _STALE:
            if fresh:
                raise self._unreachable(path, "connection dropped") from None
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise self._unreachable(path, repr(exc)) from None
        connection.close()  # one more try on a fresh connection
        try:
            return self._get(connection, path, spool)
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise self._unreachable(path, repr(exc)) from None

    def _get(self, connection: http.client.HTTPConnection, path: str, spool: Path) -> Fetched:
        started = time.monotonic()
        connection.request("GET", path, headers=self._headers)
        response = connection.getresponse()
        if response.status != 200:
            response.read()
            _raise_for_status(response.status, path)
        header = response.getheader("Content-Length")
        expected = int(header) if header is not None and header.isdigit() else None
        if expected is not None and expected > MAX_FILE_BYTES:
            raise SourceUnavailable(f"GET {path}: {expected} bytes is no instance file")
        if expected is not None and expected <= self.memory_limit:
            data = bytearray(expected)
            view, got = memoryview(data), 0
            while got < len(data):
                read = response.readinto(view[got:])
                if not read:
                    raise _cut_short(path, got, expected)
                got += read
                self._check_rate(path, got, started)
            return Fetched(len(data), data, None)
        size = 0
        with SpoolFile(spool) as out:
            while block := response.read(_BLOCK):
                spool_write(out, block, spool)
                size += len(block)
                self._check_rate(path, size, started)
        if expected is not None and size != expected:
            raise _cut_short(path, size, expected)
        return Fetched(size, None, spool)

    def _check_rate(self, path: str, received: int, started: float) -> None:
        # Each read has its own timeout; this bounds the whole download, so that a body
        # dripped a byte at a time cannot hold a worker for hours.
        allowed = self._timeout + received / MIN_DOWNLOAD_RATE
        if time.monotonic() - started > allowed or received > MAX_FILE_BYTES:
            raise SourceUnavailable(
                f"GET {path}: the download is slower than {MIN_DOWNLOAD_RATE} bytes/s",
                reason_class="source-slow",
            )

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, and whether it is new (not yet used)."""
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is not None and connection.sock is not None:
            return connection, False
        if connection is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            connection = kind(self._host, self._port, timeout=self._timeout)
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection, True

    def _unreachable(self, path: str, why: str) -> SourceUnavailable:
        return SourceUnavailable(f"Orthanc unreachable on GET {path}: {why}")

    def close(self) -> None:
        """Close every thread's connection; a download still running fails at once (its
        socket is shut down first: closing alone would not wake a blocked read)."""
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            if connection.sock is not None:
                with contextlib.suppress(OSError):
                    connection.sock.shutdown(socket.SHUT_RDWR)
            connection.close()


def _cut_short(path: str, got: int, expected: int) -> SourceUnavailable:
    return SourceUnavailable(
        f"GET {path}: the file was cut short ({got} of {expected} bytes)",
        reason_class="source-truncated",
    )


def _raise_for_status(status: int, path: str) -> None:
    if status in (408, 429):
        raise SourceThrottled(f"Orthanc asked to slow down (HTTP {status} on GET {path})")
    if status == 404:
        raise InstanceNotFound(f"not found in Orthanc (HTTP 404 on GET {path})")
    if status in (401, 403):
        raise SourceUnavailable(
            f"Orthanc refused the credentials (HTTP {status} on GET {path})",
            reason_class="source-auth",
        )
    if status >= 500:
        raise SourceUnavailable(
            f"Orthanc answered HTTP {status} on GET {path}", reason_class="source-error"
        )
    raise PermanentError(f"Orthanc answered HTTP {status} on GET {path}", reason_class="source-4xx")
