"""The fault suite's scenarios (tests/faults/) with large workloads and long faults.

    .venv/bin/python bench/faults.py                                  # every scenario, 500
    .venv/bin/python bench/faults.py --instances 100000 --scenarios kill-sender
    .venv/bin/python bench/faults.py --scenarios destination-flapping --flap-minutes 5
    .venv/bin/python bench/faults.py --scenarios disk-alarm --window 90   # a longer alarm

Each scenario is the one `pytest -m faults` runs (same workload, fault, ledger and
checks), with `--instances` instances: the workload arrives at up to 60 instances/s, so a
fault's window stretches to cover it (100 000 instances: ~35 minutes a scenario). The
figures table (markdown, as in docs/reliability.md) is printed as scenarios finish; the
exit status is 1 if any scenario lost an instance, left one unsettled, saw a service exit
or hang, parked a deliverable instance, or passed its duplicate bound.

The scenarios that disturb the broker (rabbitmq-restart, memory-alarm, disk-alarm) take
the exclusive broker lock for their whole run (tests/support/broker_lock.py): they wait for
running tests, and tests wait for them. spool-full mounts a tmpfs (root only).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT
from tests.faults.ledger import TABLE_HEADER
from tests.faults.runner import ScenarioFailed, check, run_scenario
from tests.faults.scenarios import SCENARIOS


async def bench(
    names: list[str], instances: int, seed: int, flap_minutes: float, window: float
) -> int:
    print(f"seed {seed}, {instances} instances per scenario\n")
    print(TABLE_HEADER, flush=True)
    failed = 0
    for name in names:
        scenario = SCENARIOS[name]
        if window:
            scenario = dataclasses.replace(scenario, window=window)
        if name == "destination-flapping" and flap_minutes:
            scenario = dataclasses.replace(scenario, window=flap_minutes * 60)
        figures, timeline = await run_scenario(scenario, instances=instances, seed=seed)
        print(figures.row(), flush=True)
        try:
            check(figures, scenario)
        except ScenarioFailed as exc:
            failed += 1
            print(f"  ^ {type(exc).__name__}: {exc}", file=sys.stderr)
            print("  " + "\n  ".join(timeline), file=sys.stderr)
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=500, help="workload per scenario")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, of: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 32))
    parser.add_argument(
        "--flap-minutes", type=float, default=0, help="destination-flapping's window"
    )
    parser.add_argument(
        "--window", type=float, default=0, help="every scenario's fault window, seconds"
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    os.chdir(ROOT)
    failed = asyncio.run(bench(names, args.instances, args.seed, args.flap_minutes, args.window))
    print(f"\n{len(names) - failed} of {len(names)} scenarios kept every promise")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
