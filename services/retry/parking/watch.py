"""Keep the parked gauge fresh, and the index true to the parking queue."""

from __future__ import annotations

import asyncio
import logging

from sendqueue.services.retry.metrics import RetryMetrics
from sendqueue.services.retry.parking.queue import Parking

log = logging.getLogger(__name__)

#: How often the parked gauge is refreshed and the index compared with the queue.
CHECK_INTERVAL = 15.0


async def watch_index(parking: Parking, metrics: RetryMetrics) -> None:
    """Keep the gauge fresh; rebuild the index when it disagrees with the queue twice.

    A round during which anything was parked or a pass ran proves nothing (the index
    trails the queue by the parks in flight), so only quiet rounds count.
    """
    mismatches = 0
    parks_before = 0
    while True:
        try:
            depth = await parking.queue_depth()
            quiet = parking.parks == parks_before and not parking.lock.locked()
            parks_before = parking.parks
            if quiet:
                mismatches = mismatches + 1 if depth != parking.index.count() else 0
            if mismatches >= 2 or (mismatches == 1 and depth and not parking.index.count()):
                log.info("parked index differs from the queue (%d messages): rebuilding", depth)
                await parking.run_pass(lambda _item: "keep", action="rebuild")
                mismatches = 0
            counts = parking.index.counts_by_destination()
            metrics.parked_items.clear()
            for destination, count in counts.items():
                metrics.parked_items.labels(destination).set(count)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("parked index check failed: %r", exc)
        await asyncio.sleep(CHECK_INTERVAL if mismatches == 0 else 2.0)
