"""Every instance is delivered or parked with its reason under each fault: none is lost,
no service exits by itself, and duplicates stay within the scenario's bound.

Each scenario runs a workload of SQ_FAULTS_INSTANCES (500 by default) through the three
services as processes; see scenarios.py for what each fault does and why its duplicate
bound holds, and docs/reliability.md for the figures.
"""

from __future__ import annotations

import pytest

from tests.faults.runner import (
    check,
    run_scenario,
)
from tests.faults.scenarios import SCENARIOS

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]

#: A scenario's own deadline is its window + 60 s + 0.1 s per instance; this is the hard
#: stop above it (the broker ones may first wait for the exclusive broker lock).
TIMEOUT = 600

NEEDS_MOUNT = {"spool-full"}


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_nothing_is_lost_under_the_fault(
    name: str, instances: int, seed: int, fault_components: None, request: pytest.FixtureRequest
) -> None:
    if name in NEEDS_MOUNT:
        request.getfixturevalue("mountable")
    scenario = SCENARIOS[name]
    figures, timeline = await run_scenario(scenario, instances=instances, seed=seed)
    print(f"seed {seed}\n" + "\n".join(timeline) + f"\n{figures}")
    check(figures, scenario)
