"""Named registers in RabbitMQ: the latest value of a small piece of state, replicated.

A register is a quorum queue of length one, `<prefix>.state.<name>`: writing publishes the
new value (confirmed), and RabbitMQ drops the older one from the head (`x-max-length` 1,
overflow `drop-head`). Being a quorum queue it is replicated to every node of a cluster,
so any process on any host can read what another wrote: this is how a standby ingest
resumes the changes cursor of the one that died.

Reading takes the value (basic.get) and returns it to the queue (nack with requeue): no
publish, so a read works while RabbitMQ blocks publishers (a memory or disk alarm). Each
return counts against a quorum queue's delivery limit, so registers declare a limit no
run of reads reaches (RabbitMQ 4 would otherwise drop the value after 20 reads).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection

from sendqueue.shared.amqp import _PUBLISH_FAILURES
from sendqueue.shared.errors import NotConfirmed

log = logging.getLogger(__name__)

#: Reads of a register (or take-overs of a lease) that may return its message before
#: RabbitMQ would drop it: far beyond any real count (RabbitMQ 3.x has no "unlimited").
RETURNS_LIMIT = 1_000_000
REGISTER_ARGUMENTS: dict[str, Any] = {
    "x-queue-type": "quorum",
    "x-max-length": 1,
    "x-overflow": "drop-head",
    "x-delivery-limit": RETURNS_LIMIT,
}


def register_queue(prefix: str, name: str) -> str:
    return f"{prefix}.state.{name}"


def state_exchange(prefix: str) -> str:
    """A direct exchange to which registers and leases are bound under their queue's name:
    the default exchange would need permissions beyond `<prefix>.*`."""
    return f"{prefix}.state"


async def declare_state_queue(
    channel: AbstractChannel, prefix: str, queue: str, arguments: dict[str, Any]
) -> AbstractQueue:
    """A durable queue reachable through the state exchange under its own name."""
    exchange = await channel.declare_exchange(
        state_exchange(prefix), aio_pika.ExchangeType.DIRECT, durable=True
    )
    declared = await channel.declare_queue(queue, durable=True, arguments=arguments)
    await declared.bind(exchange, routing_key=queue)
    return declared


async def put_state(channel: AbstractChannel, prefix: str, queue: str, value: bytes) -> None:
    """Publishes (persistent, mandatory) to a queue declared by declare_state_queue."""
    exchange = await channel.get_exchange(state_exchange(prefix), ensure=False)
    await exchange.publish(
        aio_pika.Message(value, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key=queue,
        mandatory=True,
    )


class Registers:
    """The registers of one install (one prefix), on one confirming channel."""

    def __init__(
        self, connection: AbstractRobustConnection, prefix: str, *, timeout: float = 30.0
    ) -> None:
        self._connection = connection
        self._prefix = prefix
        self._timeout = timeout
        self._channel: AbstractChannel | None = None
        self._queues: dict[str, AbstractQueue] = {}

    async def _queue(self, name: str) -> AbstractQueue:
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.channel(publisher_confirms=True)
            self._queues.clear()
        if name not in self._queues:
            self._queues[name] = await declare_state_queue(
                self._channel, self._prefix, register_queue(self._prefix, name), REGISTER_ARGUMENTS
            )
        return self._queues[name]

    async def read(self, name: str) -> bytes | None:
        """The latest value written, or None if none ever was; raises NotConfirmed if
        RabbitMQ does not answer."""
        try:
            async with asyncio.timeout(self._timeout):
                queue = await self._queue(name)
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    return None
                await message.nack(requeue=True)
                return message.body
        except _PUBLISH_FAILURES as exc:
            raise NotConfirmed(f"RabbitMQ did not answer reading register {name}: {exc!r}") from exc

    async def write(self, name: str, value: bytes) -> None:
        """Returns once RabbitMQ confirmed; raises NotConfirmed otherwise."""
        try:
            async with asyncio.timeout(self._timeout):
                queue = await self._queue(name)
                await self._put(queue.name, value)
        except _PUBLISH_FAILURES as exc:
            raise NotConfirmed(f"RabbitMQ did not confirm register {name}: {exc!r}") from exc

    async def _put(self, queue: str, value: bytes) -> None:
        assert self._channel is not None
        await put_state(self._channel, self._prefix, queue, value)
