"""What happens after a failed attempt: retry after a delay, or park. Pure logic."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from sendqueue.shared.durations import format_duration
from sendqueue.shared.topology import jittered_ttls


@dataclass(frozen=True)
class Retry:
    #: The TTL of the delay queue to use (one of the tier's jitter steps).
    ttl: float
    #: The configured ladder step, as a label: "10s", "1m", ...
    tier: str


@dataclass(frozen=True)
class Park:
    reason: str


def decide(
    *,
    attempts: int,
    permanent: bool,
    reason: str,
    max_attempts: int,
    delays: Sequence[float],
    jitter: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> Retry | Park:
    """`attempts` counts the failed attempts including the one just reported."""
    if permanent:
        return Park(reason)
    if attempts >= max_attempts:
        return Park(f"gave up after {attempts} attempts; last error: {reason}")
    delay = delays[min(attempts, len(delays)) - 1]
    if retry_after is not None and retry_after > delay:
        # The peer asked for longer: the shortest configured delay that honours it.
        delay = min((d for d in delays if d >= retry_after), default=max(delays))
    ttl = (rng or random).choice(jittered_ttls(delay, jitter))
    return Retry(ttl=ttl, tier=format_duration(delay))
