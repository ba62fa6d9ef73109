"""Cancel jobs that still wait: queued in a destination's work queue, or delayed in a
retry tier. They are parked with reason class `cancelled`, so a mistake is undone by a
requeue.

AMQP cannot take one message from the middle of a queue, so, like the parking pass, a
cancel makes one pass over each queue that may hold such jobs: every message is taken
(`basic.get`, one at a time: memory stays flat), and either parked (confirmed) or
published again where it was, then acked. A crash in between duplicates a job, never
loses one.

- Work queues: a job kept goes to the back of its queue. The sender goes on consuming
  meanwhile; it may send a job the pass has not reached yet (it was not waiting anymore).
- Delay tiers: a job kept is published to the shortest tier not shorter than what was
  left of its delay (from the message's timestamp), so it comes back no earlier than
  planned and at most one tier step later.

Every message the pass publishes carries its mark: meeting one again means the pass has
gone round the whole queue (others took messages meanwhile), and it stops there.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from sendqueue.services.retry.delays import DelayLedger
from sendqueue.services.retry.parking.passes import PassResult
from sendqueue.services.retry.parking.queue import Parking
from sendqueue.shared.amqp import Publisher
from sendqueue.shared.config import Config
from sendqueue.shared.durations import format_duration
from sendqueue.shared.schemas import SendJob, decode_job, job_headers
from sendqueue.shared.topology import Names, jittered_ttls

log = logging.getLogger(__name__)

#: The header that marks what a cancel pass published.
CANCEL_MARK = "sendqueue-cancel-pass"
REASON_CLASS = "cancelled"


@dataclass(frozen=True)
class CancelFilter:
    """Which waiting jobs to cancel: every given field must match."""

    destination: str | None = None
    study: str | None = None
    patient: str | None = None
    #: Queued by ingest (or the send API) before this time (epoch seconds).
    queued_before: float | None = None

    def matches(self, job: SendJob) -> bool:
        return (
            (self.destination is None or job.destination == self.destination)
            and (self.study is None or job.study_instance_uid == self.study)
            and (self.patient is None or job.patient_id == self.patient)
            and (self.queued_before is None or job.queued_at < self.queued_before)
        )


@dataclass
class CancelResult:
    cancelled: int = 0
    kept: int = 0
    failed: int = 0
    by_destination: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Tier:
    ttl: float
    label: str


class Canceller:
    def __init__(
        self,
        *,
        config: Config,
        names: Names,
        consume_conn: AbstractRobustConnection,
        publisher: Publisher,
        parking: Parking,
        ledger: DelayLedger,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._names = names
        self._conn = consume_conn
        self._publisher = publisher
        self._parking = parking
        self._ledger = ledger
        self._clock = clock
        self._tiers = sorted(
            (
                _Tier(ttl, format_duration(delay))
                for delay in config.all_delays()
                for ttl in jittered_ttls(delay, config.retry.jitter)
            ),
            key=lambda tier: tier.ttl,
        )

    async def cancel(self, select: CancelFilter, operator: str) -> CancelResult:
        """One pass over each queue that may hold matching jobs. Runs under the parking
        lock (one bulk operation at a time), with its progress in `parking.current`."""
        result = CancelResult()
        reason = f"cancelled by {operator} while waiting to be sent"
        async with self._parking.lock:
            progress = self._parking.current = PassResult(action="cancel")
            try:
                async with self._conn.channel() as channel:
                    for queue in self._work_queues(select):
                        await self._pass(channel, queue, None, select, reason, result, progress)
                    for tier in self._tiers:
                        await self._pass(
                            channel,
                            self._names.delay(tier.ttl),
                            tier,
                            select,
                            reason,
                            result,
                            progress,
                        )
            finally:
                self._parking.current = None
        return result

    def _work_queues(self, select: CancelFilter) -> list[str]:
        names = [d.name for d in self._config.destinations]
        if select.destination is not None:
            names = [n for n in names if n == select.destination]
        return [self._names.work_queue(name) for name in names]

    async def _pass(
        self,
        channel: AbstractChannel,
        queue_name: str,
        tier: _Tier | None,
        select: CancelFilter,
        reason: str,
        result: CancelResult,
        progress: PassResult,
    ) -> None:
        queue = await channel.declare_queue(queue_name, passive=True)
        count = int(queue.declaration_result.message_count or 0)
        progress.total += count
        mark = uuid.uuid4().hex
        for _ in range(count):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            if (message.headers or {}).get(CANCEL_MARK) == mark:
                await message.nack(requeue=True)  # gone round: the rest was taken by others
                break
            try:
                await self._one(message, tier, select, reason, mark, result)
            except Exception:
                # Not confirmed or not decodable as ours to judge: it goes back untouched.
                log.exception("cancel pass: a message of %s goes back untouched", queue_name)
                result.failed += 1
                await message.nack(requeue=True)
                continue
            await message.ack()
            progress.done += 1

    async def _one(
        self,
        message: AbstractIncomingMessage,
        tier: _Tier | None,
        select: CancelFilter,
        reason: str,
        mark: str,
        result: CancelResult,
    ) -> None:
        try:
            job = decode_job(message.body)
        except msgspec.DecodeError:
            job = None
        if job is not None and select.matches(job):
            await self._parking.park(
                job,
                raw=None,
                destination=job.destination,
                reason=reason,
                reason_class=REASON_CLASS,
            )
            if tier is not None:
                self._ledger.remove(job.destination, tier.label)
            result.cancelled += 1
            result.by_destination[job.destination] = (
                result.by_destination.get(job.destination, 0) + 1
            )
            return
        await self._keep(message, job, tier, mark)
        result.kept += 1

    async def _keep(
        self,
        message: AbstractIncomingMessage,
        job: SendJob | None,
        tier: _Tier | None,
        mark: str,
    ) -> None:
        """Publish it again where it waited (confirmed), marked as seen by this pass."""
        headers = {**(message.headers or {}), CANCEL_MARK: mark}
        routing_key = message.routing_key or ""
        if tier is None:
            exchange = self._names.work_exchange
        else:
            left = self._left(message, tier)
            target = next((t for t in self._tiers if t.ttl >= left), tier)
            exchange = self._names.delay(target.ttl)
            if job is not None and target.label != tier.label:
                self._ledger.remove(job.destination, tier.label)
                self._ledger.add(job.destination, target.label, target.ttl)
        if job is not None:
            headers = {**job_headers(job), CANCEL_MARK: mark}
            routing_key = job.destination
        await self._publisher.publish(exchange, routing_key, message.body, headers=headers)

    def _left(self, message: AbstractIncomingMessage, tier: _Tier) -> float:
        """What was left of its delay when taken (its whole TTL if its age is unknown)."""
        if message.timestamp is None:
            return tier.ttl
        waited = self._clock() - message.timestamp.timestamp()
        return max(0.0, tier.ttl - waited)
