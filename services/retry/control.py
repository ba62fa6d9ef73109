"""Operator pause state (kept here, broadcast to senders) and the senders' health reports."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import msgspec
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from sendqueue.shared.amqp import Publisher, safe_ack
from sendqueue.shared.control_state import read_control_state
from sendqueue.shared.files import write_atomic
from sendqueue.shared.schemas import ControlState, DestinationStatus, decode_status, encode
from sendqueue.shared.topology import Names

log = logging.getLogger(__name__)

#: A status older than this many report intervals (and this many seconds) means the
#: sender is not reporting: its state is then "unknown".
_STALE_INTERVALS = 3
_STALE_SECONDS = 30.0


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
        state = ControlState(paused=sorted(self._paused))
        await self._publisher.publish(self._names.control_exchange, "", encode(state))


class StatusBoard:
    """The newest health report of each destination, from the senders."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._latest: dict[str, DestinationStatus] = {}

    async def follow(self, connection: AbstractRobustConnection, names: Names) -> None:
        channel = await connection.channel()
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        await queue.bind(names.status_exchange)
        await queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            status = decode_status(message.body)
        except msgspec.DecodeError:
            log.debug("unreadable status report ignored")
        else:
            self._latest[status.destination] = status
        await safe_ack(message)

    def get(self, destination: str) -> DestinationStatus | None:
        status = self._latest.get(destination)
        if status is None:
            return None
        if time.time() - status.reported_at > max(
            _STALE_INTERVALS * self._interval, _STALE_SECONDS
        ):
            return None
        return status
