"""Operator pause state: kept by the retry service, broadcast to senders.

RabbitMQ holds the truth (the control state queue keeps the newest broadcast), so that a
retry process taking over on another host pauses what the previous one paused.
`paused.json` in state_dir is a local copy, read only when the broker has none (the
first start after an upgrade).

The broadcast at start-up runs in the background until RabbitMQ confirms it: a broker
that blocks publishers (a memory or disk alarm) must not keep the retry service, and the
admin API with it, from starting (under `sendqueue run`, the other services too).

Besides the paused destinations it keeps, per destination, until when an operator's
resume holds it open outside its send window (the window's next opening).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path

from aio_pika.abc import AbstractRobustConnection

from sendqueue.shared.amqp import BROKER_ERRORS, Publisher
from sendqueue.shared.control import broadcast_control, latest_control_state
from sendqueue.shared.files import write_atomic
from sendqueue.shared.schemas import ControlState
from sendqueue.shared.topology import Names

log = logging.getLogger(__name__)

#: Between tries of the start-up broadcast, doubling up to the second value.
_RETRY_FIRST, _RETRY_MAX = 1.0, 30.0


class PauseStore:
    """Which destinations an operator paused; a JSON file, then broadcast whole."""

    def __init__(self, state_dir: str, names: Names, publisher: Publisher) -> None:
        self._path = Path(state_dir) / "paused.json"
        self._names = names
        self._publisher = publisher
        self._paused: set[str] = set()
        self._initial: asyncio.Task[None] | None = None
        self._open_until: dict[str, float] = {}

    @property
    def paused(self) -> set[str]:
        return set(self._paused)

    def open_until(self, destination: str) -> float | None:
        """Until when a resume holds it open outside its send window, if it does now."""
        until = self._open_until.get(destination)
        return until if until is not None and until > time.time() else None

    async def load(self, connection: AbstractRobustConnection) -> None:
        """What the broker last saw; our file only if the broker has nothing. Returns
        before the broadcast is confirmed (module doc)."""
        state = await latest_control_state(connection, self._names)
        if state is not None:
            self._paused = set(state.paused)
            self._open_until = dict(state.window_open_until)
        elif self._path.exists():
            saved = json.loads(self._path.read_text())
            self._paused = set(saved["paused"])
            self._open_until = dict(saved.get("window_open_until", {}))
        self._initial = asyncio.create_task(self._broadcast_until_confirmed())

    async def close(self) -> None:
        if self._initial is not None:
            self._initial.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._initial

    async def _broadcast_until_confirmed(self) -> None:
        pause = _RETRY_FIRST
        while True:
            try:
                await self._broadcast()
                return
            except BROKER_ERRORS as exc:
                log.warning(
                    "cannot broadcast the pause state yet (%r); trying again in %.0f s",
                    exc,
                    pause,
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, _RETRY_MAX)

    async def open_window(self, destination: str, until: float) -> None:
        """An operator's resume outside the destination's send window, until `until`."""
        if self._initial is not None and not self._initial.done():
            self._initial.cancel()  # superseded: this broadcast carries the whole state
        self._open_until[destination] = until
        self._save()
        await self._broadcast()

    async def set(self, destination: str, paused: bool) -> bool:
        """Returns whether anything changed. Broadcasts even if not: a call repeated after
        RabbitMQ was unavailable must still reach the senders."""
        if self._initial is not None and not self._initial.done():
            self._initial.cancel()  # superseded: this broadcast carries the whole state
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
