"""Operator pause state: kept by the retry service (paused.json), broadcast to senders.

Besides the paused destinations it keeps, per destination, until when an operator's
resume holds it open outside its send window (the window's next opening)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from aio_pika.abc import AbstractRobustConnection

from sendqueue.shared.amqp import Publisher
from sendqueue.shared.control import broadcast_control, read_control_state
from sendqueue.shared.files import write_atomic
from sendqueue.shared.schemas import ControlState
from sendqueue.shared.topology import Names


class PauseStore:
    """Which destinations an operator paused; a JSON file, then broadcast whole."""

    def __init__(self, state_dir: str, names: Names, publisher: Publisher) -> None:
        self._path = Path(state_dir) / "paused.json"
        self._names = names
        self._publisher = publisher
        self._paused: set[str] = set()
        self._open_until: dict[str, float] = {}

    @property
    def paused(self) -> set[str]:
        return set(self._paused)

    def open_until(self, destination: str) -> float | None:
        """Until when a resume holds it open outside its send window, if it does now."""
        until = self._open_until.get(destination)
        return until if until is not None and until > time.time() else None

    async def load(self, connection: AbstractRobustConnection) -> None:
        """From our file; on a first start, adopt what the broker last saw."""
        if self._path.exists():
            saved = json.loads(self._path.read_text())
            self._paused = set(saved["paused"])
            self._open_until = dict(saved.get("window_open_until", {}))
        else:
            state = await read_control_state(connection, self._names)
            self._paused = set(state.paused)
            self._open_until = dict(state.window_open_until)
        await self._broadcast()

    async def open_window(self, destination: str, until: float) -> None:
        """An operator's resume outside the destination's send window, until `until`."""
        self._open_until[destination] = until
        self._save()
        await self._broadcast()

    async def set(self, destination: str, paused: bool) -> bool:
        """Returns whether anything changed. Broadcasts even if not: a call repeated after
        RabbitMQ was unavailable must still reach the senders."""
        before = set(self._paused)
        (self._paused.add if paused else self._paused.discard)(destination)
        # A pause ends a resume outside the window: back to the schedule after it.
        closing = paused and self._open_until.pop(destination, None) is not None
        if before != self._paused or closing:
            self._save()
        await self._broadcast()
        return before != self._paused

    def _save(self) -> None:
        now = time.time()
        self._open_until = {d: t for d, t in self._open_until.items() if t > now}
        state = {
            "paused": sorted(self._paused),
            "window_open_until": self._open_until,
            "updated_at": now,
        }
        write_atomic(self._path, json.dumps(state))

    async def _broadcast(self) -> None:
        state = ControlState(paused=sorted(self._paused), window_open_until=self._open_until)
        await broadcast_control(self._publisher, self._names, state)
