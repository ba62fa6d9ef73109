"""kind = "orthanc": POST the spooled file to another Orthanc's /instances.

Orthanc answers 200 with a JSON "Status": "Success" and "AlreadyStored" both mean the peer
has the instance; "FilteredOut" means one of its filters (Lua ReceivedInstanceFilter, a
plugin) refused it, which a retry cannot change. Errors follow http.py's table; a full
peer storage is a 500 there, so it is retried.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from sendqueue.services.sender.destinations.http import HttpPeer, StreamedBody, raise_for_http
from sendqueue.shared.config import OrthancDestinationConfig
from sendqueue.shared.errors import PermanentError, TransientError

_STORED = {"Success": "Success", "AlreadyStored": "Already stored"}


class OrthancPeerDestination:
    protocol = "orthanc"

    def __init__(self, config: OrthancDestinationConfig) -> None:
        self.config = config
        self.name = config.name
        self._peer = HttpPeer(config)

    async def send(self, path: Path) -> str:
        what = f"POST {self._peer.base}/instances"

        def body() -> StreamedBody:
            return StreamedBody([path], "application/dicom", self.config.http_timeout)

        async with self._peer.request("POST", "/instances", body) as resp:
            await raise_for_http(resp, what)
            answer = await _json(resp, what)
        status = answer.get("Status") if isinstance(answer, dict) else None
        if status in _STORED:
            return _STORED[status]
        if status == "FilteredOut":
            raise PermanentError(
                f"{what}: the peer's filters refused the instance (Status FilteredOut)",
                reason_class="filtered-out",
            )
        raise PermanentError(f"{what}: unexpected answer {answer!r:.200}", reason_class="http-200")

    async def probe(self) -> None:
        await self._peer.probe("/system")

    def connections_open(self) -> int:
        return self._peer.in_flight

    async def close(self) -> None:
        await self._peer.close()


async def _json(resp: aiohttp.ClientResponse, what: str) -> Any:
    try:
        return await resp.json(content_type=None)
    except ValueError:
        # A 200 we cannot read: the instance may or may not be there; ask again later.
        raise TransientError(f"{what}: unreadable answer", reason_class="http-bad-answer") from None
