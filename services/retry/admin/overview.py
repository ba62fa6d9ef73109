"""GET /api/queues: one picture of every destination's queue, delays and parking."""

from __future__ import annotations

from typing import Any

from sendqueue.services.retry.delays import DelayLedger
from sendqueue.services.retry.parking.index import ParkedIndex
from sendqueue.services.retry.pauses import PauseStore
from sendqueue.services.retry.queue_gauges import QueueStats, Source
from sendqueue.services.retry.status_board import StatusBoard
from sendqueue.shared.config import Config
from sendqueue.shared.durations import format_duration
from sendqueue.shared.topology import Names, jittered_ttls


class QueueOverview:
    def __init__(
        self,
        *,
        config: Config,
        names: Names,
        source: Source,
        index: ParkedIndex,
        pauses: PauseStore,
        board: StatusBoard,
        ledger: DelayLedger,
    ) -> None:
        self._config = config
        self._names = names
        self._source = source
        self._index = index
        self._pauses = pauses
        self._board = board
        self._ledger = ledger

    async def snapshot(self) -> dict[str, Any]:
        stats = {q.name: q for q in await self._source.fetch()}
        parked = self._index.counts_by_destination()
        return {
            "destinations": [
                self._destination(d.name, d.kind, stats, parked) for d in self._config.destinations
            ],
            "delay_tiers": self._tiers(stats),
            "failed": _count(stats.get(self._names.failed_queue)),
            "parked": sum(parked.values()),
        }

    def _destination(
        self, name: str, kind: str, stats: dict[str, QueueStats], parked: dict[str, int]
    ) -> dict[str, Any]:
        queue = stats.get(self._names.work_queue(name))
        status = self._board.get(name)
        state = "paused" if name in self._pauses.paused else (status.state if status else "unknown")
        return {
            "name": name,
            "kind": kind,
            "ready": queue.ready if queue else None,
            "in_flight": queue.unacked
            if queue and queue.unacked is not None
            else (status.in_flight if status else None),
            "delayed": self._ledger.waiting(name),
            "parked": parked.get(name, 0),
            "consumers": queue.consumers if queue else None,
            "state": state,
            "state_reason": status.reason if status else "",
            "oldest_waiting_seconds": status.oldest_waiting_seconds if status else None,
            "send_window": self._send_window(name),
            "window_open_until": self._pauses.open_until(name),
        }

    def _send_window(self, name: str) -> list[str]:
        dest = self._config.destination(name)
        if dest is None or not dest.send_window:
            return []
        window = dest.send_window
        return [window] if isinstance(window, str) else list(window)

    def _tiers(self, stats: dict[str, QueueStats]) -> list[dict[str, Any]]:
        tiers = []
        for delay in self._config.all_delays():
            queues = [
                stats.get(self._names.delay(t))
                for t in jittered_ttls(delay, self._config.retry.jitter)
            ]
            tiers.append(
                {"tier": format_duration(delay), "messages": sum(_count(q) for q in queues)}
            )
        return tiers


def _count(stats: QueueStats | None) -> int:
    if stats is None:
        return 0
    return (stats.ready or 0) + (stats.unacked or 0)
