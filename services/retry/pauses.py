"""Operator pause state: kept by the retry service (paused.json), broadcast to senders."""

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

    @property
    def paused(self) -> set[str]:
        return set(self._paused)

    async def load(self, connection: AbstractRobustConnection) -> None:
        """From our file; on a first start, adopt what the broker last saw."""
        if self._path.exists():
            self._paused = set(json.loads(self._path.read_text())["paused"])
        else:
            self._paused = set((await read_control_state(connection, self._names)).paused)
        await self._broadcast()

    async def set(self, destination: str, paused: bool) -> bool:
        """Returns whether anything changed. Broadcasts even if not: a call repeated after
        RabbitMQ was unavailable must still reach the senders."""
        before = set(self._paused)
        (self._paused.add if paused else self._paused.discard)(destination)
        if before != self._paused:
            self._save()
        await self._broadcast()
        return before != self._paused

    def _save(self) -> None:
        state = {"paused": sorted(self._paused), "updated_at": time.time()}
        write_atomic(self._path, json.dumps(state))

    async def _broadcast(self) -> None:
        await broadcast_control(
            self._publisher, self._names, ControlState(paused=sorted(self._paused))
        )
