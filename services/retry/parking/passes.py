"""One pass over the parking queue: requeue, delete or keep each message it holds.

AMQP cannot take one message out of the middle of a queue, so requeue and delete make
one pass over the whole queue: each message is either acted on (published to the work
exchange, or dropped) or published again to the parking queue, and only then acked.
A crash mid-pass loses nothing: unacked messages return to the parking queue, and an
item may at worst be both requeued and still parked (delivered twice, never lost).
Each complete pass also rebuilds the index from what the queue really holds.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from sendqueue.services.retry.metrics import RetryMetrics
from sendqueue.services.retry.parking.index import ParkedIndex, ParkedItem
from sendqueue.services.retry.parking.items import (
    is_plain_job,
    item_from_message,
    plain_headers,
    requeue_body,
)
from sendqueue.shared.amqp import Publisher
from sendqueue.shared.logs import job_event
from sendqueue.shared.topology import Names

log = logging.getLogger(__name__)

Action = Literal["keep", "requeue", "delete"]
Selector = Callable[[ParkedItem], Action]

#: Messages handled per batch during a pass (publishes of a batch are pipelined).
_BATCH = 200
#: A pass ends early when the queue stays silent this long (someone else drained it).
_IDLE_END = 3.0
#: Header carried by what reaches the parking queue while a pass runs (its own copies, jobs
#: parked meanwhile), with the pass's mark: meeting it, the pass has gone past the end.
PASS_MARK = "sendqueue-pass"


@dataclass
class PassResult:
    action: str = "keep"
    #: Messages in the parking queue when the pass began.
    total: int = 0
    done: int = 0
    requeued: int = 0
    deleted: int = 0
    kept: int = 0
    failed: int = 0
    complete: bool = True
    by_destination: dict[str, int] = field(default_factory=dict)


class ParkingPass:
    """One pass, numbered `seq`: index rows it must keep (items parked meanwhile) carry it."""

    def __init__(
        self,
        *,
        names: Names,
        consume_conn: AbstractRobustConnection,
        publisher: Publisher,
        index: ParkedIndex,
        metrics: RetryMetrics,
        destinations: Iterable[str],
        seq: int,
    ) -> None:
        self._names = names
        self._conn = consume_conn
        self._publisher = publisher
        self._index = index
        self._metrics = metrics
        #: Where a requeue may send a job (a dead-letter to anywhere else would be stuck).
        self._destinations = set(destinations)
        self._seq = seq
        #: Stamped on what is published to the parking queue while this pass runs.
        self.mark = uuid.uuid4().hex

    async def run(self, select: Selector, to: str | None, result: PassResult) -> PassResult:
        seq = self._seq
        channel = await self._conn.channel()
        try:
            await channel.set_qos(prefetch_count=_BATCH)
            queue = await channel.declare_queue(self._names.parked_queue, passive=True)
            result.total = remaining = int(queue.declaration_result.message_count or 0)
            async with queue.iterator() as messages:
                while remaining > 0 and result.complete:
                    batch = await _take(messages, min(_BATCH, remaining))
                    if not batch:
                        result.complete = False
                        break
                    mine = [(m.headers or {}).get(PASS_MARK) == self.mark for m in batch]
                    if any(mine):
                        # Published after the pass began: the queue held fewer messages than
                        # it said (someone else took some). What is past the end stays
                        # unacked (closing the channel returns it); the pass ends here.
                        batch, result.complete = batch[: mine.index(True)], False
                    remaining -= len(batch)
                    kept = await self._apply(batch, select, to, result)
                    self._index.add(kept, pass_seq=seq)
                    result.done += len(batch)
        finally:
            await channel.close()
        if result.complete and result.failed == 0:
            self._index.finish_pass(seq)
            self._index.clear_requeued()  # every journaled item has left the queue now
        return result

    async def _apply(
        self,
        batch: list[AbstractIncomingMessage],
        select: Selector,
        to: str | None,
        result: PassResult,
    ) -> list[ParkedItem]:
        items = [item_from_message(m) for m in batch]
        actions = self._actions(items, select)
        outcomes = await asyncio.gather(
            *(self._act(m, i, a, to) for m, i, a in zip(batch, items, actions, strict=True)),
            return_exceptions=True,
        )
        # Copies published to another destination: journaled before the acks, which a
        # crash may lose, so that the next pass drops the parked original.
        copied = [i.id for i, o in zip(items, outcomes, strict=True) if o == "copied"]
        self._index.journal_requeued(copied)
        kept: list[ParkedItem] = []
        removed: list[str] = []
        for message, item, action, outcome in zip(batch, items, actions, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                # Not done: leave it unacked; closing the channel returns it.
                log.warning("parked item %s: %s failed: %r", item.id, action, outcome)
                result.failed += 1
                kept.append(item)
                continue
            if outcome != "dead-lettered":
                await message.ack()
            if action == "keep":
                result.kept += 1
                kept.append(item)
                continue
            removed.append(item.id)
            if action != "drop":
                self._count(result, action, item, to)
        # A second copy dropped must not take the row of the copy this pass kept with it.
        self._index.remove(set(removed) - self._index.seen_in_pass(removed, self._seq))
        return kept

    def _actions(self, items: list[ParkedItem], select: Selector) -> list[Action | Literal["drop"]]:
        """select() for each item, except copies that must go: an item requeued by a pass
        that died before its acks reached the broker, or a second copy of an item (a pass
        that died after re-parking it but before acking the original)."""
        ids = [item.id for item in items]
        gone = self._index.requeued_before(ids) | self._index.seen_in_pass(ids, self._seq)
        actions: list[Action | Literal["drop"]] = []
        for item in items:
            actions.append("drop" if item.id in gone else select(item))
            gone.add(item.id)
        return actions

    def _count(self, result: PassResult, action: Action, item: ParkedItem, to: str | None) -> None:
        destination = to or item.destination
        if action == "requeue":
            result.requeued += 1
            result.by_destination[destination] = result.by_destination.get(destination, 0) + 1
            self._metrics.requeued.labels(destination).inc()
        else:
            result.deleted += 1
            self._metrics.deleted.labels(item.destination).inc()
        job_event(
            log,
            "requeued" if action == "requeue" else "deleted",
            destination=destination,
            orthanc_id=item.orthanc_id,
            sop_instance_uid=item.sop_instance_uid,
            attempt=item.attempts,
            outcome=action,
        )

    async def _act(
        self,
        message: AbstractIncomingMessage,
        item: ParkedItem,
        action: Action | Literal["drop"],
        to: str | None,
    ) -> str:
        """Do it; say how the message was settled ("dead-lettered") or what to ack."""
        if action in ("delete", "drop"):
            return "ack"
        if action == "keep":
            await self._publisher.publish(
                self._names.parked_exchange,
                item.destination,
                message.body,
                headers={**plain_headers(message.headers), PASS_MARK: self.mark},
                message_id=item.id,
            )
            return "ack"
        destination = to or item.destination
        if destination not in self._destinations:
            raise LookupError(f"destination {destination!r} is not configured")
        if destination == item.destination and is_plain_job(message.body):
            # RabbitMQ moves it to the work exchange itself (the parking queue dead-letters
            # there, keeping the routing key): no window in which it exists twice. The
            # sender sees parked_at and starts the job afresh.
            await message.reject(requeue=False)
            return "dead-lettered"
        # Another destination, or a failure report (its job is what goes): a fresh copy.
        body, headers = requeue_body(message.body, destination)
        await self._publisher.publish(self._names.work_exchange, destination, body, headers=headers)
        return "copied"


async def _take(messages: Any, count: int) -> list[AbstractIncomingMessage]:
    batch: list[AbstractIncomingMessage] = []
    while len(batch) < count:
        try:
            batch.append(await asyncio.wait_for(messages.__anext__(), _IDLE_END))
        except (TimeoutError, StopAsyncIteration):
            break
    return batch
