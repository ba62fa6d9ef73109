"""Jobs waiting in delay tiers, per destination.

Delay queues are shared by all destinations, so RabbitMQ can only count each tier's
total. The retry service, which puts every job into a tier, remembers when each will
leave it. After a restart of the retry service this undercounts until the tiers drain;
the per-tier totals from RabbitMQ stay exact.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter


class DelayLedger:
    def __init__(self) -> None:
        self._leaving: list[tuple[float, str, str]] = []  # (leaves at, destination, tier)
        self._waiting: Counter[tuple[str, str]] = Counter()

    def add(self, destination: str, tier: str, ttl: float) -> None:
        heapq.heappush(self._leaving, (time.time() + ttl, destination, tier))
        self._waiting[(destination, tier)] += 1

    def waiting(self, destination: str) -> dict[str, int]:
        self._expire()
        return {
            tier: count
            for (dest, tier), count in sorted(self._waiting.items())
            if dest == destination and count
        }

    def _expire(self) -> None:
        now = time.time()
        while self._leaving and self._leaving[0][0] <= now:
            _, destination, tier = heapq.heappop(self._leaving)
            self._waiting[(destination, tier)] -= 1
