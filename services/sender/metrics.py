"""The sender's metrics; the registry is injected so every test gets a fresh one."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Seconds; from a small instance on loopback to a large one over a slow WAN.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
LATENCY_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 7200, 21600, 86400)
#: Values of sendqueue_destination_state's `state` label (DestinationConsumer.state).
DESTINATION_STATES = ("up", "down", "source-down", "paused", "waiting-for-window")


class SenderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        dest = ["destination"]
        proto = ["destination", "protocol"]
        self.sent = Counter(
            "sendqueue_jobs_sent", "Jobs delivered to their destination.", proto, registry=registry
        )
        self.failed = Counter(
            "sendqueue_jobs_failed",
            "Send attempts that failed, by failure class (the retry service decides what next).",
            [*proto, "class"],
            registry=registry,
        )
        self.returned = Counter(
            "sendqueue_jobs_returned",
            "Jobs put back unattempted because the destination or Orthanc was unavailable.",
            dest,
            registry=registry,
        )
        self.duration = Histogram(
            "sendqueue_send_duration_seconds",
            "Time to send one instance (download from Orthanc excluded).",
            proto,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "sendqueue_end_to_end_latency_seconds",
            "From stored in Orthanc (or queued, when unknown) to delivered.",
            dest,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.bytes = Counter(
            "sendqueue_bytes_sent", "Bytes of instances delivered.", dest, registry=registry
        )
        self.in_flight = Gauge(
            "sendqueue_sends_in_flight", "Jobs being sent right now.", dest, registry=registry
        )
        self.up = Gauge(
            "sendqueue_destination_up",
            "1 when the destination answers, 0 while it is paused and probed.",
            dest,
            registry=registry,
        )
        self.state = Gauge(
            "sendqueue_destination_state",
            "1 for the destination's state (up, down, source-down, paused, waiting-for-window),"
            " 0 for the others.",
            [*dest, "state"],
            registry=registry,
        )
        self.paused = Gauge(
            "sendqueue_destination_paused",
            "1 while an operator has paused the destination (jobs wait in its queue).",
            dest,
            registry=registry,
        )
        self.oldest_waiting = Gauge(
            "sendqueue_oldest_waiting_seconds",
            "Age of the oldest job waiting in the destination's work queue.",
            dest,
            registry=registry,
        )
        self.queue_ready = Gauge(
            "sendqueue_work_queue_ready",
            "Jobs ready in the destination's work queue (as last seen by the sender).",
            dest,
            registry=registry,
        )
        self.associations = Gauge(
            "sendqueue_associations_open",
            "Open DICOM associations.",
            dest,
            registry=registry,
        )
        self.spool_free = Gauge(
            "sendqueue_spool_filesystem_free_bytes",
            "Bytes free for the sender on the filesystem of its spool directory.",
            registry=registry,
        )
        self.spool_size = Gauge(
            "sendqueue_spool_filesystem_size_bytes",
            "Size in bytes of the filesystem of the sender's spool directory.",
            registry=registry,
        )

    def show_state(self, destination: str, current: str) -> None:
        for state in DESTINATION_STATES:
            self.state.labels(destination, state).set(1 if state == current else 0)

    def watch_spool(self, spool: Path) -> None:
        """Free and total bytes of the spool's filesystem, read at each scrape (a statvfs
        costs microseconds, and a number read earlier could hide a disk filling now)."""
        self.spool_free.set_function(lambda: _statvfs(spool, free=True))
        self.spool_size.set_function(lambda: _statvfs(spool, free=False))


def _statvfs(path: Path, *, free: bool) -> float:
    try:
        stats = os.statvfs(path)
    except OSError:
        return float("nan")  # the directory is gone: no number rather than a wrong one
    # f_bavail, not f_bfree: the blocks reserved for root are no use to the sender.
    return float((stats.f_bavail if free else stats.f_blocks) * stats.f_frsize)
