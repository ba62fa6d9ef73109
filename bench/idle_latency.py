"""Idle latency: from an instance stored in Orthanc to the receiver holding it, one at a time.

    .venv/bin/python bench/idle_latency.py                 # 60 instances, one every 0.5 s
    .venv/bin/python bench/idle_latency.py --instances 200 --interval 0.3

`sendqueue run` with its defaults (ingest's poll_interval 250 ms, the sender in a process of
its own, concurrency 4) runs against a source Orthanc and DCMTK storescp. Each instance is
uploaded to Orthanc on its own, after the previous one arrived and a pause (jittered, so
that uploads fall at every phase of ingest's poll); its latency is
the time from the end of its upload (Orthanc has stored it) until storescp lists its file.
Prints p50, p95 and the maximum; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, bench_vhost, wait_until


async def measure(instances: int, interval: float) -> dict[str, float]:
    from tests.integration.harness import Pipeline, dicom_destination
    from tests.support.dicom_factory import make_instance, sop_instance_uid
    from tests.support.orthanc import OrthancProcess
    from tests.support.scp import StorescpProcess

    latencies: list[float] = []
    with tempfile.TemporaryDirectory(prefix="sq-latency-") as name, ExitStack() as stack:
        tmp = Path(name)
        source = stack.enter_context(OrthancProcess(aet="SOURCE", start_timeout=60))
        scp = stack.enter_context(StorescpProcess(output_dir=tmp / "storescp"))
        vhost = stack.enter_context(bench_vhost())
        pipeline = Pipeline(
            amqp_url=vhost.amqp_url,
            orthanc=source,
            tmp=tmp,
            destinations=[dicom_destination("storescp", scp.port, scp.aet, concurrency=4)],
            ingest={"start_from": "now", "poll_interval": "250ms"},
            sender={"processes": "auto"},
        )
        try:
            pipeline.spawn("run")
            await pipeline.wait_healthy("ingest", "sender", "retry", timeout=60)
            for _ in range(instances):
                data = make_instance(rows=512, cols=512)
                uid = sop_instance_uid(data)
                await asyncio.to_thread(source.upload, data)
                stored = time.monotonic()
                arrived = await wait_until(
                    lambda uid=uid: uid in scp.received_sop_uids(),
                    timeout=30,
                    interval=0.005,
                    what=f"instance {uid} at storescp",
                )
                latencies.append(arrived - stored)
                # Jittered: a fixed pause would lock every upload to one phase of the poll.
                await asyncio.sleep(interval * random.uniform(0.5, 1.5))
        finally:
            await pipeline.stop()
    ordered = sorted(latencies)
    return {
        "instances": len(ordered),
        "p50_s": statistics.median(ordered),
        "p95_s": ordered[max(0, round(0.95 * len(ordered)) - 1)],
        "max_s": ordered[-1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=60)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between sends")
    args = parser.parse_args()
    os.chdir(ROOT)
    result = asyncio.run(measure(args.instances, args.interval))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{result['instances']} instances one at a time: stored -> at the receiver"
        f" p50 {result['p50_s']:.3f} s, p95 {result['p95_s']:.3f} s,"
        f" max {result['max_s']:.3f} s (load average {load})"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
