"""The newest health report of each destination, from the senders (GET /api/queues)."""

from __future__ import annotations

import time

from aio_pika.abc import AbstractRobustConnection

from sendqueue.shared.control import follow_status
from sendqueue.shared.schemas import DestinationStatus
from sendqueue.shared.topology import Names

#: A status older than this many report intervals (and this many seconds) means the
#: sender is not reporting: its state is then "unknown".
_STALE_INTERVALS = 3
_STALE_SECONDS = 30.0


class StatusBoard:
    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._latest: dict[str, DestinationStatus] = {}

    async def follow(self, connection: AbstractRobustConnection, names: Names) -> None:
        await follow_status(connection, names, self.record)

    def record(self, status: DestinationStatus) -> None:
        self._latest[status.destination] = status

    def get(self, destination: str) -> DestinationStatus | None:
        status = self._latest.get(destination)
        if status is None:
            return None
        if time.time() - status.reported_at > max(
            _STALE_INTERVALS * self._interval, _STALE_SECONDS
        ):
            return None
        return status
