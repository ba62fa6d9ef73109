"""Send windows: outside its `send_window` a destination's consumer is held, like an
operator pause, so its jobs wait in its queue and use no attempt.

One task per sender process keeps every consumer on its schedule. It wakes at the next
opening or closing of any window (and at least every `_RECHECK` seconds, which absorbs a
clock that jumps). An operator's resume outside the window (the control state's
`window_open_until`, set by the retry service) opens it until the window opens anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from sendqueue.services.sender.consumer import DestinationConsumer
from sendqueue.shared.schemas import ControlState
from sendqueue.shared.send_window import SendWindow

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
#: Longest sleep between two looks at the clock.
_RECHECK = 60.0


def utc_now() -> datetime:
    return datetime.now(UTC)


class WindowKeeper:
    def __init__(self, windows: Mapping[str, SendWindow], clock: Clock = utc_now) -> None:
        self._consumers: list[DestinationConsumer] = []
        self._windows = dict(windows)
        self._clock = clock
        self._open_until: dict[str, float] = {}
        self._wake = asyncio.Event()

    def closed_now(self, name: str) -> bool:
        """Whether a destination must wait now (to start its consumer held)."""
        window = self._windows.get(name)
        if window is None:
            return False
        now = self._clock()
        return not window.is_open(now) and self._open_until.get(name, 0.0) <= now.timestamp()

    async def add(self, consumer: DestinationConsumer) -> None:
        """Keeps a consumer on its schedule; call before it starts, so that it starts held
        when its window is closed."""
        if consumer.name in self._windows:
            self._consumers.append(consumer)
            await consumer.set_window_closed(self.closed_now(consumer.name))

    def follow(self, state: ControlState) -> None:
        """An operator's resumes outside the window, from the control state."""
        self._open_until = dict(state.window_open_until)
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            await self.apply()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._sleep())

    async def apply(self) -> None:
        for consumer in self._consumers:
            closed = self.closed_now(consumer.name)
            if closed != consumer.window_closed:
                log.warning(
                    "%s: %s",
                    consumer.name,
                    "outside its send window: waiting"
                    if closed
                    else "inside its send window (or resumed by an operator): sending",
                )
                await consumer.set_window_closed(closed)

    def _sleep(self) -> float:
        now = self._clock()
        changes = [w.next_change(now).timestamp() for w in self._windows.values()]
        changes += [t for t in self._open_until.values() if t > now.timestamp()]
        soonest = min(changes, default=now.timestamp() + _RECHECK)
        return min(_RECHECK, max(0.05, soonest - now.timestamp()))
