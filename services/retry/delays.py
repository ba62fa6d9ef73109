"""Jobs waiting in delay tiers, per destination.

Delay queues are shared by all destinations, so RabbitMQ can only count each tier's
total. The retry service, which puts every job into a tier, remembers when each will
leave it (fixed TTL per queue: first in, first out). The entries are kept in SQLite, so
a restarted retry service still shows what the tiers hold; a purge in the management UI
makes the counts too high until those jobs' delays have passed. The per-tier totals
from RabbitMQ stay exact.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from pathlib import Path

from sendqueue.shared.sqlite_file import open_db


class DelayLedger:
    def __init__(self, path: Path) -> None:
        # Advisory counts: losing the last commits in a power cut only undercounts.
        self._db = open_db(
            path,
            synchronous="NORMAL",
            schema=(
                "CREATE TABLE IF NOT EXISTS leaving (leaves_at REAL, destination TEXT, tier TEXT)",
                "CREATE INDEX IF NOT EXISTS by_leaves_at ON leaving (leaves_at)",
            ),
        )
        self._leaving: list[tuple[float, str, str]] = []  # (leaves at, destination, tier)
        self._waiting: Counter[tuple[str, str]] = Counter()
        self._db.execute("DELETE FROM leaving WHERE leaves_at <= ?", (time.time(),))
        for row in self._db.execute("SELECT leaves_at, destination, tier FROM leaving"):
            self._remember(*row)

    def close(self) -> None:
        self._db.close()

    def add(self, destination: str, tier: str, ttl: float) -> None:
        leaves_at = time.time() + ttl
        self._db.execute(
            "INSERT INTO leaving (leaves_at, destination, tier) VALUES (?, ?, ?)",
            (leaves_at, destination, tier),
        )
        self._remember(leaves_at, destination, tier)
        self._expire()  # keeps the table as small as what the tiers hold

    def remove(self, destination: str, tier: str) -> None:
        """One job of this destination left the tier early (cancelled, or moved)."""
        if self._waiting[(destination, tier)] <= 0:
            return
        found = next((entry for entry in self._leaving if entry[1:] == (destination, tier)), None)
        if found is None:
            return
        self._leaving.remove(found)
        heapq.heapify(self._leaving)
        self._waiting[(destination, tier)] -= 1
        self._db.execute(
            "DELETE FROM leaving WHERE rowid = (SELECT rowid FROM leaving WHERE leaves_at = ?"
            " AND destination = ? AND tier = ? LIMIT 1)",
            found,
        )

    def waiting(self, destination: str) -> dict[str, int]:
        self._expire()
        return {
            tier: count
            for (dest, tier), count in sorted(self._waiting.items())
            if dest == destination and count
        }

    def _remember(self, leaves_at: float, destination: str, tier: str) -> None:
        heapq.heappush(self._leaving, (leaves_at, destination, tier))
        self._waiting[(destination, tier)] += 1

    def _expire(self) -> None:
        now = time.time()
        expired = False
        while self._leaving and self._leaving[0][0] <= now:
            _, destination, tier = heapq.heappop(self._leaving)
            self._waiting[(destination, tier)] -= 1
            expired = True
        if expired:
            self._db.execute("DELETE FROM leaving WHERE leaves_at <= ?", (now,))
