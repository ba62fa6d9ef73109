"""A client of the retry service's admin HTTP API, as the `sendqueue` admin commands use it.

Two failures are kept apart because an operator acts on them differently: the API answered
no (AdminApiError, with the API's own {"error": ...} words), or nothing answered at all
(AdminUnreachable: wrong URL, service down, firewall).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from sendqueue.shared.config import parse_listen
from sendqueue.shared.errors import AdminApiError, AdminUnreachable

#: A GET that takes longer than this is treated as "the admin API does not answer".
QUERY_TIMEOUT = 30.0
#: Bulk requeue/delete answer when the pass is done: ~1 min per 100k items, so wait long.
BULK_TIMEOUT = 3600.0
#: Connecting is quick on any network an operator can use; fail fast when nothing listens.
CONNECT_TIMEOUT = 5.0


def url_from_listen(listen: str, tls: bool = False) -> str:
    """The URL of a service listening on [retry] listen ("0.0.0.0:8102" -> loopback)."""
    host, port = parse_listen(listen)
    if host in ("0.0.0.0", "::", ""):
        host = "::1" if host == "::" else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


class AdminClient:
    """One session to the admin API; use as `async with AdminClient(url, token) as api`."""

    def __init__(self, base_url: str, token: str = "", *, ca_file: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._ca_file = ca_file
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AdminClient:
        context = ssl.create_default_context()
        if self._ca_file:
            # The admin listen's own certificate (self-signed, typically) is trusted too.
            context.load_verify_locations(self._ca_file)
            # ... as the anchor itself, even when it is a leaf issued by a private CA.
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the calls ------------------------------------------------------------------------
    async def queues(self) -> dict[str, Any]:
        return await self._json("GET", "/api/queues")

    async def parked(
        self, query: Mapping[str, str], limit: int, cursor: str | None = None
    ) -> dict[str, Any]:
        params = {**query, "limit": str(limit), **({"cursor": cursor} if cursor else {})}
        return await self._json("GET", "/api/parked", params=params)

    async def requeue(self, selection: Mapping[str, Any]) -> dict[str, Any]:
        return await self._json("POST", "/api/parked/requeue", body=selection, bulk=True)

    async def delete(self, selection: Mapping[str, Any]) -> dict[str, Any]:
        return await self._json("POST", "/api/parked/delete", body=selection, bulk=True)

    async def operation(self) -> dict[str, Any] | None:
        """The bulk operation running now; None when this API version cannot tell."""
        try:
            return await self._json("GET", "/api/operations/current")
        except AdminApiError as exc:
            if exc.status in (404, 405):
                return None
            raise

    async def pause(self, destination: str) -> dict[str, Any]:
        return await self._json("POST", _destination_path(destination, "pause"), body={})

    async def resume(self, destination: str) -> dict[str, Any]:
        return await self._json("POST", _destination_path(destination, "resume"), body={})

    # -- transport --------------------------------------------------------------------------
    async def _json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        bulk: bool = False,
    ) -> Any:
        if self._session is None:
            raise RuntimeError("use AdminClient in an 'async with' block")
        timeout = aiohttp.ClientTimeout(
            total=BULK_TIMEOUT if bulk else QUERY_TIMEOUT, connect=CONNECT_TIMEOUT
        )
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        url = self.base_url + path
        try:
            async with self._session.request(
                method, url, params=params, json=body, headers=headers, timeout=timeout
            ) as response:
                text = await response.text()
                status = response.status
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            raise AdminUnreachable(f"cannot reach the admin API at {url}: {_why(exc)}") from None
        return _decode(status, text, method, path)


def _destination_path(destination: str, verb: str) -> str:
    return f"/api/destinations/{quote(destination, safe='')}/{verb}"


def _decode(status: int, text: str, method: str, path: str) -> Any:
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    if status >= 400:
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            raise AdminApiError(status, data["error"])
        raise AdminApiError(status, f"{method} {path}: HTTP {status} {text.strip()[:200]}")
    if data is None and text:
        raise AdminApiError(status, f"{method} {path}: the answer is not JSON: {text[:200]!r}")
    return data


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__
