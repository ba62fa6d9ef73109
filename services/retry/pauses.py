"""Operator pause state: kept by the retry service, broadcast to senders.

RabbitMQ holds the truth (the control state queue keeps the newest broadcast), so that a
retry process taking over on another host pauses what the previous one paused.
`paused.json` in state_dir is a local copy, read only when the broker has none (the
first start after an upgrade).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from aio_pika.abc import AbstractRobustConnection

from sendqueue.shared.amqp import Publisher
from sendqueue.shared.control import broadcast_control, latest_control_state
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
        """What the broker last saw; our file only if the broker has nothing."""
        state = await latest_control_state(connection, self._names)
        if state is not None:
            self._paused = set(state.paused)
        elif self._path.exists():
            self._paused = set(json.loads(self._path.read_text())["paused"])
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
