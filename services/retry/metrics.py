"""The retry service's metrics; the registry is injected."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class RetryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.queued = Counter(
            "sendqueue_jobs_queued",
            "Send jobs published to a work queue (here: by POST /api/send on the admin API).",
            ["destination", "source"],
            registry=registry,
        )
        self.instances_deleted = Counter(
            "sendqueue_instances_deleted",
            "Instances deleted from Orthanc once every destination chosen for them delivered"
            " them (delete_after_delivery).",
            registry=registry,
        )
        self.delete_failed = Counter(
            "sendqueue_instance_deletes_failed",
            "Deletions after delivery that Orthanc refused (the instance stays in Orthanc).",
            registry=registry,
        )
        self.retried = Counter(
            "sendqueue_jobs_retried",
            "Jobs scheduled for another attempt, by delay tier.",
            ["destination", "tier"],
            registry=registry,
        )
        self.parked = Counter(
            "sendqueue_jobs_parked",
            "Jobs parked, by reason class.",
            ["destination", "reason"],
            registry=registry,
        )
        self.requeued = Counter(
            "sendqueue_jobs_requeued",
            "Parked jobs sent back to a work queue by an operator.",
            ["destination"],
            registry=registry,
        )
        self.deleted = Counter(
            "sendqueue_jobs_deleted",
            "Parked jobs deleted by an operator.",
            ["destination"],
            registry=registry,
        )
        self.parked_items = Gauge(
            "sendqueue_parked_items",
            "Items in the parking queue's index, by destination.",
            ["destination"],
            registry=registry,
        )
