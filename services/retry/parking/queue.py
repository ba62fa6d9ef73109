"""The parking queue: park a job (confirmed, then indexed), and run passes over it.

Parking goes on while a pass runs; passes run one at a time (`lock`), and `current`
reports the progress of the one under way.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterable

import msgspec
from aio_pika.abc import AbstractRobustConnection

from sendqueue.services.retry.metrics import RetryMetrics
from sendqueue.services.retry.parking.index import ParkedIndex, ParkedItem
from sendqueue.services.retry.parking.items import item_from_job
from sendqueue.services.retry.parking.passes import PASS_MARK, ParkingPass, PassResult, Selector
from sendqueue.shared.amqp import Publisher
from sendqueue.shared.logs import job_event
from sendqueue.shared.queue_counts import QueueCounts
from sendqueue.shared.schemas import SendJob, encode, job_headers
from sendqueue.shared.topology import Names

log = logging.getLogger(__name__)


class Parking:
    def __init__(
        self,
        *,
        names: Names,
        consume_conn: AbstractRobustConnection,
        publisher: Publisher,
        index: ParkedIndex,
        metrics: RetryMetrics,
        destinations: Iterable[str],
    ) -> None:
        self._names = names
        self._conn = consume_conn
        self._counts = QueueCounts(consume_conn)
        self._publisher = publisher
        self._index = index
        self._metrics = metrics
        #: Where a requeue may send a job (a dead-letter to anywhere else would be stuck).
        self._destinations = set(destinations)
        #: One pass over the parking queue at a time.
        self.lock = asyncio.Lock()
        #: The pass under way, for progress reports.
        self.current: PassResult | None = None
        #: Its number (0 when none runs): rows it must keep carry it.
        self._active_seq = 0
        #: Its mark ("" when none runs): messages parked meanwhile carry it.
        self._active_mark = ""
        #: Items parked since start (the index check skips a round with parks in it).
        self.parks = 0

    @property
    def index(self) -> ParkedIndex:
        return self._index

    async def park(
        self,
        job: SendJob | None,
        *,
        raw: bytes | None,
        destination: str,
        reason: str,
        reason_class: str,
        item_id: str | None = None,
    ) -> ParkedItem:
        """Publish to the parking queue (confirmed), then index it. Raises NotConfirmed.

        `item_id` derived from what is parked makes parking it twice (a redelivery after a
        crash between the publish and the ack) leave two copies of one item, of which the
        next pass over the queue keeps one."""
        now = time.time()
        item_id = item_id or uuid.uuid4().hex
        if job is not None:
            job = msgspec.structs.replace(
                job, parked_at=now, last_error=reason, reason_class=reason_class
            )
            body = encode(job)
            item = item_from_job(item_id, job)
        else:
            body = raw or b""
            item = ParkedItem(
                id=item_id,
                destination=destination,
                parked_at=now,
                reason=reason,
                reason_class=reason_class,
            )
        headers = {
            **(job_headers(job) if job else {"destination": destination}),
            "reason": reason[:500],
            "reason_class": reason_class,
            "parked_at": now,
        }
        if self._active_mark:
            headers[PASS_MARK] = self._active_mark
        # No lock: parking goes on during a pass. The new message lands behind the pass's
        # end, and its row carries the pass's number so the pass does not drop it.
        await self._publisher.publish(
            self._names.parked_exchange,
            destination,
            body,
            headers=headers,
            message_id=item_id,
        )
        try:
            self._index.add([item], pass_seq=self._active_seq)
        except sqlite3.Error as exc:
            # The job is parked (confirmed): failing now would park it twice. The index
            # trails the queue until the watcher finds them different and rebuilds it.
            log.error("parked %s, but the index cannot record it (%s): rebuilt later", item_id, exc)
        self.parks += 1
        self._metrics.parked.labels(destination, reason_class).inc()
        job_event(
            log,
            "parked",
            logging.WARNING,
            destination=destination,
            orthanc_id=item.orthanc_id,
            sop_instance_uid=item.sop_instance_uid,
            attempt=item.attempts,
            outcome="parked",
            reason=reason,
            reason_class=reason_class,
        )
        return item

    async def queue_depth(self) -> int:
        declared = await self._counts.declared(self._names.parked_queue)
        if declared is None:
            raise LookupError(f"the parking queue {self._names.parked_queue} is missing")
        return int(declared.message_count or 0)

    async def run_pass(self, select: Selector, *, action: str, to: str | None = None) -> PassResult:
        """One pass over the parking queue, applying `select` to every message.

        Memory stays flat whatever the queue holds: a batch at a time, straight into the
        index (a 100k-item pass keeps ~200 messages in hand).
        """
        async with self.lock:
            self.current = PassResult(action=action)
            try:
                return await self._pass(select, to, self.current)
            finally:
                self.current = None

    async def _pass(self, select: Selector, to: str | None, result: PassResult) -> PassResult:
        seq = self._active_seq = self._index.next_pass()
        one_pass = ParkingPass(
            names=self._names,
            consume_conn=self._conn,
            publisher=self._publisher,
            index=self._index,
            metrics=self._metrics,
            destinations=self._destinations,
            seq=seq,
        )
        self._active_mark = one_pass.mark
        try:
            return await one_pass.run(select, to, result)
        finally:
            self._active_seq = 0
            self._active_mark = ""
