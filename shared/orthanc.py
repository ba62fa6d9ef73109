"""A small Orthanc REST client (aiohttp) shared by ingest and the sender."""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from sendqueue.shared.config import OrthancConfig
from sendqueue.shared.errors import (
    InstanceNotFound,
    PermanentError,
    SourceUnavailable,
    TransientError,
)

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024


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

        async def call() -> Any:
            async with self._session.get(self._base + path, params=params) as response:
                _raise_for_status(response, path)
                return await response.json(content_type=None)

        return await self._twice(call, path)

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

    async def _twice(self, call: Callable[[], Awaitable[Any]], path: str) -> Any:
        try:
            return await call()
        except aiohttp.ServerDisconnectedError:
            pass  # Orthanc drops idle keep-alive connections: one more try on a fresh one.
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise SourceUnavailable(f"Orthanc unreachable on GET {path}: {exc!r}") from None
        try:
            return await call()
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise SourceUnavailable(f"Orthanc unreachable on GET {path}: {exc!r}") from None

    async def _download(self, path: str, target: Path) -> int:
        written = 0
        async with self._session.get(self._base + path) as response:
            _raise_for_status(response, path)
            with open(target, "wb") as out:
                async for chunk in response.content.iter_chunked(_CHUNK):
                    out.write(chunk)
                    written += len(chunk)
        return written


def _raise_for_status(response: aiohttp.ClientResponse, path: str) -> None:
    if response.status == 404:
        raise InstanceNotFound(f"not found in Orthanc (HTTP 404 on GET {path})")
    if response.status in (401, 403):
        raise SourceUnavailable(
            f"Orthanc refused the credentials (HTTP {response.status} on GET {path})",
            reason_class="source-auth",
        )
    if response.status >= 500:
        raise SourceUnavailable(
            f"Orthanc answered HTTP {response.status} on GET {path}", reason_class="source-error"
        )
    if response.status >= 400:
        raise PermanentError(
            f"Orthanc answered HTTP {response.status} on GET {path}", reason_class="source-4xx"
        )
