"""A small Orthanc REST client (aiohttp) shared by ingest and the sender."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
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
