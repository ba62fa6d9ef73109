"""Gateway clean-up: an instance whose routes said `delete_after_delivery` is deleted from
Orthanc once every destination chosen for it has delivered it.

The senders report each delivery (`Delivered`, on the delivered queue); this keeps them in
SQLite until the set is complete, then deletes the instance, records the deletion
(audit log, metric) and forgets it. Only deliveries count: a job that waits, is retried or
is parked reports nothing, so its instance stays. A crash at any point repeats a step, and
each step can be repeated: the delivery rows are keyed by (instance, destination), and
Orthanc answers a second DELETE with 404, which counts as done. While Orthanc does not
answer, the report is held and the deletion retried with a growing pause, not requeued
(a queue's delivery limit would drop it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import msgspec
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from sendqueue.services.retry.admin.audit import AuditLog
from sendqueue.services.retry.metrics import RetryMetrics
from sendqueue.shared.errors import SendQueueError, SourceUnavailable
from sendqueue.shared.orthanc import OrthancClient
from sendqueue.shared.schemas import Delivered, decode_delivered
from sendqueue.shared.settle import settle
from sendqueue.shared.sqlite_file import open_db
from sendqueue.shared.topology import Names

log = logging.getLogger(__name__)

_PREFETCH = 20
_MAX_PAUSE = 30.0
#: Who the audit log names for deletions sendqueue decides itself.
ACTOR = "sendqueue"


class GatewayCleanup:
    def __init__(
        self,
        *,
        path: Path,
        orthanc: OrthancClient,
        audit: AuditLog,
        metrics: RetryMetrics,
        pause: float = 1.0,
    ) -> None:
        self._db = open_db(
            path,
            schema=(
                "CREATE TABLE IF NOT EXISTS delivered (orthanc_id TEXT, destination TEXT,"
                " delivered_at REAL, PRIMARY KEY (orthanc_id, destination))",
            ),
        )
        self._orthanc = orthanc
        self._audit = audit
        self._metrics = metrics
        self._pause = pause

    def close(self) -> None:
        self._db.close()

    async def follow(self, connection: AbstractRobustConnection, names: Names) -> None:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=_PREFETCH)
        queue = await channel.declare_queue(names.delivered_queue, passive=True)
        await queue.consume(self.on_message)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        await settle(message, lambda: self._handle(message.body), what="delivery report")

    async def _handle(self, body: bytes) -> None:
        try:
            report = decode_delivered(body)
        except msgspec.DecodeError:
            log.error("unreadable delivery report dropped (nothing is deleted): %r", body[:200])
            return
        self._db.execute(
            "INSERT OR IGNORE INTO delivered VALUES (?, ?, ?)",
            (report.orthanc_id, report.destination, report.delivered_at),
        )
        if self._delivered_everywhere(report):
            await self._delete(report)

    def _delivered_everywhere(self, report: Delivered) -> bool:
        rows = self._db.execute(
            "SELECT destination FROM delivered WHERE orthanc_id = ?", (report.orthanc_id,)
        )
        return set(report.delete_when) <= {row[0] for row in rows}

    async def _delete(self, report: Delivered) -> None:
        pause = self._pause
        while True:
            try:
                deleted = await self._orthanc.delete_instance(report.orthanc_id)
                break
            except SourceUnavailable as exc:
                log.warning("cannot delete %s yet: %s", report.orthanc_id, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, _MAX_PAUSE)
            except SendQueueError as exc:
                log.error("Orthanc refuses to delete %s: %s", report.orthanc_id, exc)
                self._metrics.delete_failed.inc()
                self._forget(report.orthanc_id)
                return
        if deleted:
            self._metrics.instances_deleted.inc()
            self._audit.record(
                ACTOR,
                "delete-after-delivery",
                {
                    "orthanc_id": report.orthanc_id,
                    "sop_instance_uid": report.sop_instance_uid,
                    "destinations": sorted(report.delete_when),
                },
                1,
            )
            log.info(
                "deleted %s from Orthanc: delivered to %s",
                report.orthanc_id,
                ", ".join(sorted(report.delete_when)),
            )
        self._forget(report.orthanc_id)

    def _forget(self, orthanc_id: str) -> None:
        self._db.execute("DELETE FROM delivered WHERE orthanc_id = ?", (orthanc_id,))

    def prune(self, max_age: float) -> None:
        """Forget deliveries of instances still incomplete after `max_age` (a destination
        that never delivered: parked, deleted by an operator): they are never deleted."""
        self._db.execute("DELETE FROM delivered WHERE delivered_at < ?", (time.time() - max_age,))
