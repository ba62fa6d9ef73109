"""Consumes reported failures: the ONLY place the retry service decides retry or park.

    decodable failure, attempts left   -> publish to the delay tier, ack
    permanent, or attempts exhausted   -> park (with the reason), ack
    dead-lettered job (delivery limit) -> park: it crashed its consumer repeatedly
    undecodable message                -> park verbatim
    anything unexpected                -> park verbatim, with the error as the reason
Publish first, ack after (sendqueue.shared.settle): a crash in between only duplicates.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from typing import Any

import msgspec
from aio_pika.abc import AbstractIncomingMessage

from sendqueue.services.retry.delays import DelayLedger
from sendqueue.services.retry.metrics import RetryMetrics
from sendqueue.services.retry.parking.queue import Parking
from sendqueue.services.retry.policy import Park, decide
from sendqueue.shared.amqp import Publisher
from sendqueue.shared.config import Config
from sendqueue.shared.logs import job_event
from sendqueue.shared.schemas import Failure, SendJob, decode_bus_message, encode, job_headers
from sendqueue.shared.settle import settle
from sendqueue.shared.topology import Names

log = logging.getLogger(__name__)


class FailureRouter:
    def __init__(
        self,
        *,
        config: Config,
        names: Names,
        publisher: Publisher,
        parking: Parking,
        metrics: RetryMetrics,
        ledger: DelayLedger,
    ) -> None:
        self._config = config
        self._names = names
        self._publisher = publisher
        self._parking = parking
        self._metrics = metrics
        self.ledger = ledger

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        async def park_verbatim(exc: BaseException) -> None:
            await self._parking.park(
                None,
                raw=message.body,
                destination=_destination_of(message),
                reason=f"internal error while routing this failure: {exc!r}",
                reason_class="internal",
                item_id=parked_id(message),
            )

        await settle(
            message, lambda: self._route(message), what="failure report", on_crash=park_verbatim
        )

    async def _route(self, message: AbstractIncomingMessage) -> None:
        destination = _destination_of(message)
        item_id = parked_id(message)
        try:
            decoded = decode_bus_message(message.body)
        except msgspec.DecodeError as exc:
            await self._parking.park(
                None,
                raw=message.body,
                destination=destination,
                reason=f"undecodable message on the failed queue: {exc}",
                reason_class="decode-error",
                item_id=item_id,
            )
            return
        if isinstance(decoded, SendJob):
            await self._park_dead_lettered(decoded, message, item_id)
        elif decoded.job is None:
            await self._parking.park(
                None,
                raw=decoded.raw,
                destination=decoded.destination,
                reason=decoded.reason,
                reason_class=decoded.reason_class,
                item_id=item_id,
            )
        else:
            await self._retry_or_park(decoded, decoded.job, item_id)

    async def _park_dead_lettered(
        self, job: SendJob, message: AbstractIncomingMessage, item_id: str | None
    ) -> None:
        deaths: Any = (message.headers or {}).get("x-death") or [{}]
        why = str(deaths[0].get("reason", "dead-lettered")) if isinstance(deaths, list) else "?"
        reason = (
            f"dead-lettered by RabbitMQ ({why}): delivered repeatedly without an "
            "outcome (the sender crashed or was stopped while sending it)"
        )
        now = time.time()
        job = msgspec.structs.replace(
            job, last_failed_at=now, first_failed_at=job.first_failed_at or now
        )
        await self._parking.park(
            job,
            raw=None,
            destination=job.destination,
            reason=reason,
            reason_class="delivery-limit",
            item_id=item_id,
        )

    async def _retry_or_park(self, failure: Failure, job: SendJob, item_id: str | None) -> None:
        if self._config.destination(job.destination) is None:
            # A delay tier would dead-letter it to a work queue nobody has declared.
            await self._parking.park(
                job,
                raw=None,
                destination=job.destination,
                reason=f"unknown destination {job.destination!r}",
                reason_class="unknown-destination",
                item_id=item_id,
            )
            return
        attempts = job.attempts + 1
        job = msgspec.structs.replace(
            job,
            attempts=attempts,
            first_failed_at=job.first_failed_at or failure.failed_at,
            last_failed_at=failure.failed_at,
            last_error=failure.reason,
            reason_class=failure.reason_class,
        )
        decision = decide(
            attempts=attempts,
            permanent=failure.permanent,
            reason=failure.reason,
            max_attempts=self._config.max_attempts_for(job.destination),
            delays=self._config.delays_for(job.destination),
            jitter=self._config.retry.jitter,
            retry_after=failure.retry_after,
        )
        if isinstance(decision, Park):
            await self._parking.park(
                job,
                raw=None,
                destination=job.destination,
                reason=decision.reason,
                reason_class=failure.reason_class,
                item_id=item_id,
            )
            return
        await self._publisher.publish(
            self._names.delay(decision.ttl),
            job.destination,
            encode(job),
            headers=job_headers(job),
        )
        self._metrics.retried.labels(job.destination, decision.tier).inc()
        try:
            self.ledger.add(job.destination, decision.tier, decision.ttl)
        except sqlite3.Error as exc:
            # Scheduled (confirmed): failing now would schedule it twice. The ledger only
            # says when waiting jobs leave their tiers; it misses this one.
            log.error("retry of %s scheduled, but the delay ledger failed: %s", job.id, exc)
        job_event(
            log,
            "retry scheduled",
            destination=job.destination,
            orthanc_id=job.orthanc_id,
            sop_instance_uid=job.sop_instance_uid,
            attempt=attempts,
            outcome="retry",
            delay=decision.tier,
            reason=failure.reason,
            reason_class=failure.reason_class,
        )


def parked_id(message: AbstractIncomingMessage) -> str | None:
    """The parked item's id, the same for every delivery of one failure report."""
    if not message.message_id:
        return None
    return uuid.uuid5(_PARKED_IDS, message.message_id).hex


#: Namespace of parked item ids derived from failure reports' message ids.
_PARKED_IDS = uuid.UUID("7d1c3a51-4c3e-4f7e-9a51-0b1f5d4e2c10")


def _destination_of(message: AbstractIncomingMessage) -> str:
    return str((message.headers or {}).get("destination") or message.routing_key)
