"""The sender's half of the operator link: each destination's health, reported to the
retry service (the protocol is sendqueue.shared.control)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aio_pika.abc import AbstractRobustConnection

from sendqueue.services.sender.consumer import DestinationConsumer
from sendqueue.services.sender.metrics import SenderMetrics
from sendqueue.shared.amqp import Publisher
from sendqueue.shared.control import publish_status
from sendqueue.shared.errors import NotConfirmed
from sendqueue.shared.queue_counts import QueueCounts
from sendqueue.shared.schemas import DestinationStatus
from sendqueue.shared.topology import Names

log = logging.getLogger(__name__)


class StatusReporter:
    """Publishes each destination's state and queue age; refreshes the sender's gauges."""

    def __init__(
        self,
        *,
        connection: AbstractRobustConnection,
        names: Names,
        publisher: Publisher,
        consumers: Sequence[DestinationConsumer],
        metrics: SenderMetrics,
        interval: float,
    ) -> None:
        self._connection = connection
        self._names = names
        self._publisher = publisher
        self._consumers = consumers
        self._metrics = metrics
        self._interval = interval
        self._ready: dict[str, int] = {}
        self._counts = QueueCounts(connection)

    async def run(self) -> None:
        while True:
            try:
                await self._refresh_ready()
            except Exception:
                # aio-pika may report a cancellation as a channel error: do not loop on.
                if _being_cancelled():
                    raise asyncio.CancelledError from None
            for consumer in self._consumers:
                await self.report(consumer)
            await asyncio.sleep(self._interval)

    async def _refresh_ready(self) -> None:
        for consumer in self._consumers:
            declared = await self._counts.declared(self._names.work_queue(consumer.name))
            if declared is None:
                continue  # not declared (yet): its gauge keeps its last value
            ready = int(declared.message_count or 0)
            self._ready[consumer.name] = ready
            self._metrics.queue_ready.labels(consumer.name).set(ready)

    async def report(self, consumer: DestinationConsumer) -> None:
        oldest = consumer.oldest_waiting(self._ready.get(consumer.name, 0))
        self._metrics.oldest_waiting.labels(consumer.name).set(oldest)
        status = DestinationStatus(
            destination=consumer.name,
            state=consumer.state,
            reason=consumer.state_reason,
            oldest_waiting_seconds=oldest,
            in_flight=consumer.in_flight,
        )
        try:
            await publish_status(self._publisher, self._names, status)
        except NotConfirmed as exc:
            log.debug("status report not sent: %r", exc)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
