"""A small Orthanc REST client (aiohttp) shared by ingest and the sender.

Every answer is read with bounds: a JSON answer up to MAX_JSON_BYTES within
`timeout` seconds in all; a file download with no less than MIN_DOWNLOAD_RATE on
average, and exactly its Content-Length. A peer (or proxy) answering something else
than JSON, or dripping or truncating a file, is an unavailable source, never a hang.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from sendqueue.shared.config import OrthancConfig
from sendqueue.shared.errors import (
    InstanceNotFound,
    PermanentError,
    SourceThrottled,
    SourceUnavailable,
    SpoolUnavailable,
    TransientError,
)

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
#: A connection lost, refused or timed out, or an answer cut short.
_IO_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError)
#: The largest JSON answer read (a /changes page of 10000 changes is about 2 MB).
MAX_JSON_BYTES = 64 * 1024 * 1024
#: A download slower than this on average (after the first `timeout`) is given up.
MIN_DOWNLOAD_RATE = 256 * 1024
#: No instance file is bigger (DICOM lengths are 32-bit; encapsulated data aside).
MAX_FILE_BYTES = 16 * 1024**3


class OrthancClient:
    def __init__(
        self, config: OrthancConfig, *, on_answer: Callable[[bool], None] | None = None
    ) -> None:
        self._config = config
        #: Told what every answers() found (sendqueue.shared.source_health's gauge).
        self._on_answer = on_answer
        self._base = config.url.rstrip("/")
        # Debian's Orthanc gzips responses when asked: ~60x slower for DICOM files.
        headers = {"Accept-Encoding": "identity"}
        if config.username:
            token = base64.b64encode(f"{config.username}:{config.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=config.timeout),
        )

    async def close(self) -> None:
        await self._session.close()

    async def get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        """GET a JSON resource; 404 -> InstanceNotFound, network/5xx -> SourceUnavailable."""
        return await self._json("GET", path, params=params)

    async def post_json(self, path: str, body: Any) -> Any:
        """POST a JSON body to a route that only reads (`/tools/bulk-content`), its JSON
        answer back; errors as get_json's."""
        return await self._json("POST", path, body=json.dumps(body).encode())

    async def _json(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Any:
        async def call() -> Any:
            async with self._session.request(
                method, self._base + path, params=params, data=body
            ) as response:
                _raise_for_status(response, path, method)
                raw = await _read_capped(response, path, self._config.timeout)
            try:
                return json.loads(raw)
            except ValueError:
                # A proxy's HTML page, a truncated answer: not Orthanc's REST API talking.
                raise SourceUnavailable(
                    f"Orthanc answered {method} {path} with something that is not JSON:"
                    f" {raw[:80]!r}",
                    reason_class="source-bad-answer",
                ) from None

        return await self._twice(call, path, method)

    async def post(self, path: str, body: bytes = b"") -> int:
        """POST to an action route (`/jobs/{id}/cancel`); returns the HTTP status (Orthanc
        answers 400 when the action does not apply, e.g. a job already finished)."""
        try:
            async with self._session.post(self._base + path, data=body) as response:
                if response.status >= 500 or response.status in (401, 403):
                    _raise_for_status(response, path)
                return response.status
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise SourceUnavailable(f"Orthanc unreachable on POST {path}: {exc!r}") from None

    async def run_lua(self, script: str) -> str | None:
        """`POST /tools/execute-script`: what the script prints, or None when this Orthanc
        refuses to run scripts (`ExecuteLuaEnabled` off, the default since 1.10)."""
        path = "/tools/execute-script"
        try:
            async with self._session.post(self._base + path, data=script.encode()) as response:
                if response.status in (403, 404):
                    return None
                _raise_for_status(response, path)
                return await response.text()
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise SourceUnavailable(f"Orthanc unreachable on POST {path}: {exc!r}") from None

    async def answers(self) -> bool:
        """Whether Orthanc itself is up: tells "Orthanc is down" from "this resource fails"."""
        try:
            await self.get_json("/system")
        except (TransientError, PermanentError):
            up = False
        else:
            up = True
        if self._on_answer is not None:
            self._on_answer(up)
        return up

    async def exists(self, path: str) -> bool:
        try:
            await self.get_json(path)
        except InstanceNotFound:
            return False
        return True

    async def download_instance(self, orthanc_id: str, target: Path) -> int:
        """Stream /instances/{id}/file into target; memory stays flat. Returns bytes."""
        # The ID comes from a message: never let it reach another path of the REST API.
        path = f"/instances/{quote(orthanc_id, safe='')}/file"
        return int(await self._twice(lambda: self._download(path, target), path))

    async def delete_instance(self, orthanc_id: str) -> bool:
        """DELETE /instances/{id}: True when deleted, False when it was already gone."""
        path = f"/instances/{quote(orthanc_id, safe='')}"

        async def call() -> bool:
            async with self._session.delete(self._base + path) as response:
                if response.status == 404:
                    return False
                _raise_for_status(response, path)
                return True

        return bool(await self._twice(call, path))

    async def download_modified(
        self, orthanc_id: str, body: Mapping[str, object], target: Path
    ) -> int:
        """Stream Orthanc's modified copy (POST /instances/{id}/modify: answered, not
        stored) into target; memory stays flat. A 400 (a transfer syntax Orthanc cannot
        produce, a tag it refuses) is a PermanentError with Orthanc's own words."""
        path = f"/instances/{quote(orthanc_id, safe='')}/modify"
        payload = json.dumps(body)
        return int(await self._twice(lambda: self._post_download(path, payload, target), path))

    async def _post_download(self, path: str, payload: str, target: Path) -> int:
        written = 0
        async with self._session.post(self._base + path, data=payload) as response:
            if response.status == 400:
                details = (await response.text())[:500]
                raise PermanentError(
                    f"Orthanc cannot prepare this instance (HTTP 400 on POST {path}): {details}",
                    reason_class="prepare-failed",
                )
            _raise_for_status(response, path)
            with open(target, "wb") as out:
                async for chunk in response.content.iter_chunked(_CHUNK):
                    out.write(chunk)
                    written += len(chunk)
        return written

    async def _twice(
        self, call: Callable[[], Awaitable[Any]], path: str, method: str = "GET"
    ) -> Any:
        try:
            return await call()
        except aiohttp.ServerDisconnectedError:
            pass  # Orthanc drops idle keep-alive connections: one more try on a fresh one.
        except _IO_ERRORS as exc:
            raise SourceUnavailable(f"Orthanc unreachable on {method} {path}: {exc!r}") from None
        try:
            return await call()
        except _IO_ERRORS as exc:
            raise SourceUnavailable(f"Orthanc unreachable on {method} {path}: {exc!r}") from None

    async def _download(self, path: str, target: Path) -> int:
        written = 0
        started = time.monotonic()
        async with self._session.get(self._base + path) as response:
            _raise_for_status(response, path)
            expected = response.content_length
            if expected is not None and expected > MAX_FILE_BYTES:
                raise SourceUnavailable(f"GET {path}: {expected} bytes is no instance file")
            with SpoolFile(target) as out:
                async for chunk in response.content.iter_chunked(_CHUNK):
                    spool_write(out, chunk, target)
                    written += len(chunk)
                    self._check_rate(path, written, started)
        if expected is not None and written != expected:
            raise SourceUnavailable(
                f"GET {path}: the file was cut short ({written} of {expected} bytes)",
                reason_class="source-truncated",
            )
        return written

    def _check_rate(self, path: str, written: int, started: float) -> None:
        allowed = self._config.timeout + written / MIN_DOWNLOAD_RATE
        if time.monotonic() - started > allowed or written > MAX_FILE_BYTES:
            raise SourceUnavailable(
                f"GET {path}: the download is slower than {MIN_DOWNLOAD_RATE} bytes/s",
                reason_class="source-slow",
            )


class SpoolFile:
    """open(target, "wb"), with the spool's faults raised as SpoolUnavailable."""

    def __init__(self, target: Path) -> None:
        self._target = target
        self._file: Any = None

    def __enter__(self) -> Any:
        try:
            self._file = open(self._target, "wb")
        except OSError as exc:
            raise _spool_fault(exc, self._target) from None
        return self._file

    def __exit__(self, *_exc: object) -> None:
        try:
            self._file.close()
        except OSError as exc:
            raise _spool_fault(exc, self._target) from None


def spool_write(out: Any, chunk: bytes, target: Path) -> None:
    try:
        out.write(chunk)
    except OSError as exc:
        raise _spool_fault(exc, target) from None


def _spool_fault(exc: OSError, target: Path) -> SpoolUnavailable:
    what = {errno.ENOSPC: "is full", errno.ENOENT: "is gone", errno.EROFS: "is read-only"}
    why = what.get(exc.errno or 0, f"cannot be written ({exc.strerror or exc})")
    return SpoolUnavailable(f"the spool {target.parent} {why}")


async def _read_capped(response: aiohttp.ClientResponse, path: str, deadline: float) -> bytes:
    try:
        async with asyncio.timeout(deadline):
            raw = await response.content.read(MAX_JSON_BYTES + 1)
            while len(raw) <= MAX_JSON_BYTES and (
                more := await response.content.read(MAX_JSON_BYTES + 1 - len(raw))
            ):
                raw += more
    except TimeoutError:
        raise SourceUnavailable(
            f"Orthanc's answer to GET {path} did not arrive whole within {deadline:g} s",
            reason_class="source-slow",
        ) from None
    if len(raw) > MAX_JSON_BYTES:
        raise SourceUnavailable(
            f"Orthanc's answer to GET {path} is bigger than {MAX_JSON_BYTES} bytes",
            reason_class="source-bad-answer",
        )
    return raw


def _raise_for_status(response: aiohttp.ClientResponse, path: str, method: str = "GET") -> None:
    status, on = response.status, f"{method} {path}"
    if status == 404:
        raise InstanceNotFound(f"not found in Orthanc (HTTP 404 on {on})")
    if status in (401, 403):
        raise SourceUnavailable(
            f"Orthanc refused the credentials (HTTP {status} on {on})", reason_class="source-auth"
        )
    if status in (408, 429):
        raise SourceThrottled(f"Orthanc asked to slow down (HTTP {status} on {on})")
    if status >= 500:
        raise SourceUnavailable(
            f"Orthanc answered HTTP {status} on {on}", reason_class="source-error"
        )
    if status >= 400:
        raise PermanentError(f"Orthanc answered HTTP {status} on {on}", reason_class="source-4xx")
