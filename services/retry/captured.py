"""The audit log's record of Orthanc's failed sends that ingest captured.

Ingest publishes one CapturedJob per failed Orthanc store job and destination, once the
job's instances are queued; this consumer writes it to the audit log as action "capture"
by "orthanc", so the console and `GET /api/audit` show which Orthanc job failed, when,
why, and how many instances it put in the queue.
"""

from __future__ import annotations

import logging

import msgspec
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from sendqueue.services.retry.admin.audit import AuditLog
from sendqueue.shared.schemas import CapturedJob, decode_captured
from sendqueue.shared.settle import settle
from sendqueue.shared.topology import Names

log = logging.getLogger(__name__)

_PREFETCH = 16


def audit_details(record: CapturedJob) -> dict[str, object]:
    job = record.orthanc_job
    return {
        "source": record.source,
        "orthanc_job": job.id,
        "type": job.type,
        "started_by": record.description,
        "failed_at": job.failed_at,
        "error": job.error,
        "instances": job.instances,
        "destination": record.destination,
        "not_found": record.not_found,
    }


async def follow_captured(
    connection: AbstractRobustConnection, names: Names, audit: AuditLog
) -> None:
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=_PREFETCH)
    queue = await channel.declare_queue(names.captured_queue, passive=True)

    async def on_message(message: AbstractIncomingMessage) -> None:
        async def record() -> None:
            try:
                captured = decode_captured(message.body)
            except msgspec.DecodeError as exc:
                # A record only: the instances themselves are queued already.
                log.error("an undecodable capture record was dropped: %s", exc)
                return
            audit.record("orthanc", "capture", audit_details(captured), captured.queued)

        await settle(message, record, what="capture record")

    await queue.consume(on_message)
