"""When a destination may be sent to: `send_window = "Mon-Fri 19:00-07:00"`. Pure logic.

A window is `[DAYS] HH:MM[:SS]-HH:MM[:SS]`. DAYS is a comma list of days (`Mon`, `Sat,Sun`)
and ranges (`Mon-Fri`, `Fri-Mon`), or nothing for every day; a range whose end is not
after its start runs overnight, into the next day (`Mon-Fri 19:00-07:00` is open from
Monday 19:00 to Tuesday 07:00, ..., Friday 19:00 to Saturday 07:00): the days name the
day a window opens. `24:00` ends a window at midnight. Several windows are a union.

Times are wall-clock times in one time zone (the machine's local time unless a zone is
named). Everything is computed on naive wall-clock datetimes, so a window means the
same hours on both sides of a daylight-saving change; callers re-evaluate at least every
minute, which also absorbs a clock that jumps.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_SECONDS = 86_400
_WINDOW = re.compile(
    r"^\s*(?:(?P<days>[A-Za-z,\s-]+?)\s+)?"
    r"(?P<start>\d{1,2}:\d{2}(?::\d{2})?)\s*-\s*(?P<end>\d{1,2}:\d{2}(?::\d{2})?)\s*$"
)


@dataclass(frozen=True)
class _Window:
    #: The weekdays (0 = Monday) on which the window opens.
    days: frozenset[int]
    #: Opening time and length, in seconds.
    start: int
    length: int

    def spans(self, around: datetime) -> list[tuple[datetime, datetime]]:
        """Its openings from the day before `around` to a week after (naive times)."""
        midnight = around.replace(hour=0, minute=0, second=0, microsecond=0)
        found = []
        for offset in range(-1, 9):
            day = midnight + timedelta(days=offset)
            if day.weekday() in self.days:
                opens = day + timedelta(seconds=self.start)
                found.append((opens, opens + timedelta(seconds=self.length)))
        return found


class SendWindow:
    """One destination's windows in one time zone."""

    def __init__(self, windows: Sequence[_Window], zone: zoneinfo.ZoneInfo | None) -> None:
        self._windows = tuple(windows)
        self._zone = zone

    @classmethod
    def parse(cls, specs: str | Sequence[str], timezone: str = "") -> SendWindow:
        """Raises ValueError naming what is wrong."""
        texts = [specs] if isinstance(specs, str) else list(specs)
        if not texts:
            raise ValueError("send_window needs at least one window")
        return cls([_parse_window(text) for text in texts], _zone(timezone))

    def is_open(self, at: datetime) -> bool:
        return self._open_local(self._local(at))

    def next_change(self, at: datetime) -> datetime:
        """The first moment after `at` at which is_open() turns the other way."""
        local = self._local(at)
        now_open = self.is_open(at)
        edges = sorted(
            {
                edge
                for window in self._windows
                for span in window.spans(local)
                for edge in span
                if edge > local
            }
        )
        for edge in edges:
            if self._open_local(edge) != now_open:
                return self._aware(edge)
        # Always open (windows covering every hour) or never: nothing changes this week.
        return at + timedelta(days=7)

    def _open_local(self, local: datetime) -> bool:
        return any(
            opens <= local < closes
            for window in self._windows
            for opens, closes in window.spans(local)
        )

    def _local(self, at: datetime) -> datetime:
        return at.astimezone(self._zone).replace(tzinfo=None)

    def _aware(self, local: datetime) -> datetime:
        if self._zone is None:
            return local.astimezone()  # a naive time is read as the machine's local time
        return local.replace(tzinfo=self._zone)


def _zone(name: str) -> zoneinfo.ZoneInfo | None:
    if not name:
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (an IANA name such as Europe/Paris)"
        ) from None


def _parse_window(text: str) -> _Window:
    found = _WINDOW.match(text)
    if not found:
        raise ValueError(
            f'send_window {text!r} is not "[DAYS] HH:MM-HH:MM" (e.g. "Mon-Fri 19:00-07:00")'
        )
    start = _seconds(found["start"], text)
    end = _seconds(found["end"], text)
    if start >= _DAY_SECONDS:
        raise ValueError(f"send_window {text!r}: a window cannot open at 24:00")
    if start == end:
        raise ValueError(f"send_window {text!r}: opens and closes at the same time")
    length = end - start if end > start else end + _DAY_SECONDS - start
    days = _days(found["days"], text) if found["days"] else frozenset(range(7))
    return _Window(days, start, length)


def _seconds(clock: str, text: str) -> int:
    parts = [int(p) for p in clock.split(":")]
    hours, minutes, seconds = [*parts, 0][:3]
    total = hours * 3600 + minutes * 60 + seconds
    if minutes > 59 or seconds > 59 or total > _DAY_SECONDS:
        raise ValueError(f"send_window {text!r}: {clock} is not a time of day")
    return total


def _days(spec: str, text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in spec.replace(" ", "").lower().split(","):
        first, _, last = part.partition("-")
        if first not in DAY_NAMES or (last and last not in DAY_NAMES):
            raise ValueError(f"send_window {text!r}: {part!r} is not a day or range of days")
        begin = DAY_NAMES.index(first)
        stop = DAY_NAMES.index(last) if last else begin
        days.update((begin + i) % 7 for i in range((stop - begin) % 7 + 1))
    return frozenset(days)
