"""Human durations in the config: "250ms", "10s", "5m", "2h", "1d"."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


class Duration(float):
    """Seconds, parsed from a string like "10s" (or a bare number of seconds)."""

    @classmethod
    def parse(cls, value: object) -> Duration:
        if isinstance(value, bool):
            raise ValueError(f"not a duration: {value!r}")
        if isinstance(value, int | float):
            if value < 0:
                raise ValueError(f"duration must not be negative: {value!r}")
            return cls(value)
        if isinstance(value, str):
            match = _PATTERN.match(value)
            if match:
                return cls(float(match.group(1)) * _UNITS[match.group(2)])
        raise ValueError(f'not a duration: {value!r} (use e.g. "250ms", "10s", "5m", "2h")')


def format_duration(seconds: float) -> str:
    """The shortest exact spelling, used in queue names: 10 -> "10s", 90 -> "90s"."""
    millis = round(seconds * 1000)
    for unit, factor in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis >= factor and millis % factor == 0:
            return f"{millis // factor}{unit}"
    return f"{millis}ms"
