"""The backoff ladder and the park decision."""

import random

from sendqueue.services.retry.policy import Park, Retry, decide
from sendqueue.shared.topology import jittered_ttls

LADDER = [10, 60, 300]


def _decide(attempts, **kw):
    args = {
        "permanent": False,
        "reason": "boom",
        "max_attempts": 5,
        "delays": LADDER,
        "jitter": 0.0,
        "rng": random.Random(1),
    }
    args.update(kw)
    return decide(attempts=attempts, **args)


def test_each_attempt_climbs_the_ladder_and_the_last_step_repeats():
    assert [_decide(n) for n in (1, 2, 3, 4)] == [
        Retry(10, "10s"),
        Retry(60, "1m"),
        Retry(300, "5m"),
        Retry(300, "5m"),
    ]


def test_attempts_exhausted_parks_with_the_last_error():
    decision = _decide(5)
    assert isinstance(decision, Park)
    assert "5 attempts" in decision.reason and "boom" in decision.reason


def test_permanent_failures_park_at_once():
    assert _decide(1, permanent=True) == Park("boom")


def test_jitter_stays_within_the_spread():
    ttls = {_decide(1, jitter=0.2, rng=random.Random(seed)).ttl for seed in range(50)}
    assert ttls <= set(jittered_ttls(10, 0.2))
    assert min(ttls) >= 10 and max(ttls) <= 12 and len(ttls) > 1


def test_retry_after_picks_a_delay_at_least_as_long():
    assert _decide(1, retry_after=45).tier == "1m"
    assert _decide(1, retry_after=10_000).tier == "5m"
