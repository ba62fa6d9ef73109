"""Ingest's metrics; the registry is injected."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.queued = Counter(
            "sendqueue_jobs_queued",
            "Send jobs published to a work queue (one per instance and destination).",
            ["destination", "source"],
            registry=registry,
        )
        self.skipped = Counter(
            "sendqueue_jobs_skipped",
            "Jobs of a series or study change not queued: the instance, unchanged, was"
            " already queued for that destination.",
            ["destination"],
            registry=registry,
        )
        self.changes = Counter(
            "sendqueue_ingest_changes",
            "Orthanc changes read, by change type.",
            ["change_type"],
            registry=registry,
        )
        self.errors = Counter(
            "sendqueue_ingest_errors",
            "Failed ingest rounds (Orthanc or RabbitMQ unavailable), by stage.",
            ["stage"],
            registry=registry,
        )
        self.active = Gauge(
            "sendqueue_ingest_active",
            "1 while this ingest process is the one following Orthanc's changes, 0 while it"
            " waits as a standby.",
            registry=registry,
        )
        self.cursor = Gauge(
            "sendqueue_ingest_cursor_seq",
            "The last Orthanc change sequence number fully queued.",
            registry=registry,
        )
        self.orthanc_last = Gauge(
            "sendqueue_ingest_orthanc_last_seq",
            "Orthanc's newest change sequence number.",
            registry=registry,
        )
        self.lag = Gauge(
            "sendqueue_ingest_lag_changes",
            "Changes Orthanc has that ingest has not queued yet.",
            registry=registry,
        )
        self.orthanc_jobs = Counter(
            "sendqueue_orthanc_jobs",
            "Orthanc's finished store jobs read from its job history, by outcome: captured"
            " (failed, its instances queued), succeeded, unmapped (failed, to a modality or"
            " peer no destination stands for), cancelled.",
            ["outcome"],
            registry=registry,
        )
        self.orthanc_jobs_missed = Counter(
            "sendqueue_orthanc_jobs_missed",
            "Orthanc store jobs that left Orthanc's job history (JobsHistorySize) before"
            " ingest could read how they ended: failures nobody will see.",
            registry=registry,
        )
