"""kind = "orthanc": POST the spooled file to another Orthanc's /instances.

Orthanc answers 200 with a JSON "Status": "Success" and "AlreadyStored" both mean the peer
has the instance; "FilteredOut" means one of its filters (Lua ReceivedInstanceFilter, a
plugin) refused it, which a retry cannot change. Errors follow http.py's table; a full
peer storage is a 500 there, so it is retried. Any other answer (no JSON, no Status, a
2xx other than 200, a redirect) is not taken for stored: the instance is retried.

`deliver` is the hot path (http.py's module doc): downloaded in the destination's own
thread, posted from memory when small; `send` posts a file the consumer prepared.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sendqueue.services.sender.destinations.http import (
    HttpPeer,
    Part,
    StreamedBody,
    body_part,
    raise_for_http,
    read_answer,
)
from sendqueue.services.sender.fetch import InstanceFetcher
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
        return await self._post(path)

    async def deliver(
        self, fetcher: InstanceFetcher, orthanc_id: str, spool: Path
    ) -> tuple[int, str, float]:
        """Download (own thread) and post: (bytes, the peer's answer, seconds posting).
        A large instance goes through `spool`, which the caller removes."""
        fetched = await self._peer.fetch(fetcher, orthanc_id, spool)
        started = time.monotonic()
        detail = await self._post(body_part(fetched, spool))
        return fetched.size, detail, time.monotonic() - started

    async def _post(self, part: Part) -> str:
        what = f"POST {self._peer.base}/instances"

        def body() -> StreamedBody:
            return StreamedBody([part], "application/dicom", self.config.http_timeout)

        async with self._peer.request("POST", "/instances", body) as resp:
            await raise_for_http(resp, what)
            code = resp.status
            answer = _json(await read_answer(resp, what, self.config.http_timeout))
        status = answer.get("Status") if isinstance(answer, dict) else None
        if code == 200 and status in _STORED:
            return _STORED[status]
        if code == 200 and status == "FilteredOut":
            raise PermanentError(
                f"{what}: the peer's filters refused the instance (Status FilteredOut)",
                reason_class="filtered-out",
            )
        # Not Orthanc's answer (a proxy's page, an empty body, an unknown Status): the
        # instance may or may not be there; ask again later, never count it as stored.
        raise TransientError(
            f"{what}: HTTP {code} without Orthanc's answer: {answer!r:.200}",
            reason_class="http-bad-answer",
        )

    async def probe(self) -> None:
        await self._peer.probe("/system")

    def connections_open(self) -> int:
        return self._peer.in_flight

    async def close(self) -> None:
        await self._peer.close()


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw[:200]
