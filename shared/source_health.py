"""Whether the source Orthanc answers: `sendqueue_orthanc_up`, for ingest and the sender.

Every `OrthancClient.answers()` call of the service feeds the gauge (the sender asks when a
download fails, and while it probes a source that is down), and `watch()` asks on its own
every few seconds, so that an idle service also tells when Orthanc stops, and when it is
back, without waiting for a job or for ingest's backoff between failed rounds.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Gauge

from sendqueue.shared.orthanc import OrthancClient

#: Seconds between two probes: well under a minute from Orthanc stopping to the alert,
#: at one GET /system per service, which costs Orthanc nothing.
PROBE_INTERVAL = 5.0
#: A probe that hangs longer than this (Orthanc stuck, not refusing) counts as down.
PROBE_TIMEOUT = 10.0


class OrthancHealth:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._up = Gauge(
            "sendqueue_orthanc_up",
            "1 while the source Orthanc answers GET /system, 0 while it does not.",
            registry=registry,
        )
        # Until the first probe (at once when watch() starts): an alert waits for evidence.
        self._up.set(1)

    def saw(self, up: bool) -> None:
        """What one call of OrthancClient.answers() found (its on_answer hook)."""
        self._up.set(1 if up else 0)

    async def watch(
        self,
        orthanc: OrthancClient,
        interval: float = PROBE_INTERVAL,
        timeout: float = PROBE_TIMEOUT,
    ) -> None:
        """Probe Orthanc every `interval` seconds until cancelled."""
        while True:
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for returns a result that
                # arrives as the task is cancelled and drops the cancellation, and the
                # service's shutdown would then wait for this loop forever.
                async with asyncio.timeout(timeout):
                    await orthanc.answers()
            except TimeoutError:
                self.saw(False)
            await asyncio.sleep(interval)
