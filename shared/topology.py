"""Exchange and queue names, and their idempotent declaration.

    ingest --(work exchange, key=destination)--> work.<dest> --> sender
    sender --(failed exchange)--> failed --> retry
    retry  --(delay.<ttl> exchange, key=destination)--> delay.<ttl>
                 --(TTL expires, dead-lettered with its key)--> work exchange
    retry  --(parked exchange, key=destination)--> parked
    work exchange, no queue for the key --(alternate exchange)--> unroutable --> retry
    ingest --(captured exchange)--> captured --> retry (audit log of captured Orthanc jobs)

Every queue is a durable quorum queue and every message persistent. A delay queue has
one fixed TTL for all its messages: RabbitMQ expires messages only at the queue head,
so mixed per-message TTLs would block short delays behind long ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection, ExchangeType
from aiormq.exceptions import ChannelPreconditionFailed

from sendqueue.shared.amqp import Publisher
from sendqueue.shared.config import Config
from sendqueue.shared.durations import format_duration
from sendqueue.shared.errors import ConfigError
from sendqueue.shared.register import REGISTER_ARGUMENTS, declare_state_queue

#: A message redelivered this many times without an outcome (the consumer crashed or
#: was killed with it each time) is dead-lettered to the failed queue, then parked.
DELIVERY_LIMIT = 20
#: Delays are spread over this many TTL steps between d and d * (1 + jitter).
JITTER_STEPS = 4


class Names:
    """All names under one prefix, shared by the services and the tests."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.work_exchange = f"{prefix}.work"
        self.failed_exchange = f"{prefix}.failed"
        self.failed_queue = f"{prefix}.failed"
        self.parked_exchange = f"{prefix}.parked"
        self.parked_queue = f"{prefix}.parked"
        #: Operator decisions (pause/resume) broadcast to every sender.
        self.control_exchange = f"{prefix}.control"
        #: Holds only the latest control state, so a starting sender can read it.
        self.control_state_queue = f"{prefix}.control.latest"
        #: Where versions before the quorum one kept it (a classic queue): read while the
        #: new one is still empty, on upgrade; delete it once every service is upgraded.
        self.legacy_control_state_queue = f"{prefix}.control.state"
        #: Senders report destination health here (transient, not mandatory).
        self.status_exchange = f"{prefix}.status"
        #: The work exchange's alternate exchange: whatever reaches the work exchange for a
        #: destination without a queue (a removed one, a hand-moved message) lands here.
        self.unroutable_exchange = f"{prefix}.unroutable"
        self.unroutable_queue = f"{prefix}.unroutable"
        #: Ingest's records of the failed Orthanc jobs it captured, for the audit log.
        self.captured_exchange = f"{prefix}.captured"
        self.captured_queue = f"{prefix}.captured"

    def listener(self, what: str) -> str:
        """A private, exclusive queue of one process following a broadcast exchange."""
        return f"{self.prefix}.{what}.listener.{uuid.uuid4().hex[:12]}"

    def work_queue(self, destination: str) -> str:
        return f"{self.prefix}.work.{destination}"

    def delay(self, seconds: float) -> str:
        """Exchange and queue name of the delay tier with this TTL."""
        return f"{self.prefix}.delay.{format_duration(seconds)}"


def jittered_ttls(delay: float, jitter: float) -> list[float]:
    """The TTL steps that serve a configured delay (rounded to whole milliseconds)."""
    if jitter <= 0:
        return [round(delay, 3)]
    steps = {round(delay * (1 + jitter * k / (JITTER_STEPS - 1)), 3) for k in range(JITTER_STEPS)}
    return sorted(steps)


def _quorum(**extra: Any) -> dict[str, Any]:
    return {"x-queue-type": "quorum", **extra}


def _dead_letter_to(exchange: str) -> dict[str, Any]:
    # at-least-once dead-lettering needs reject-publish overflow; the default
    # (drop-head) silently degrades it to at-most-once.
    return {
        "x-dead-letter-exchange": exchange,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


async def prepare_bus(connection: AbstractRobustConnection, config: Config) -> Publisher:
    """Declare the whole topology for this config and open a confirming publisher."""
    async with connection.channel() as channel:
        await declare_topology(
            channel,
            Names(config.amqp.prefix),
            [d.name for d in config.destinations],
            config.all_delays(),
            config.retry.jitter,
        )
    publisher = Publisher(connection)
    await publisher.open()
    return publisher


async def declare_topology(
    channel: AbstractChannel,
    names: Names,
    destinations: Iterable[str],
    delays: Iterable[float],
    jitter: float,
) -> None:
    """Declare everything; safe to run from every service at every start."""
    fanout = ExchangeType.FANOUT
    unroutable_x = await channel.declare_exchange(names.unroutable_exchange, fanout, durable=True)
    unroutable = await channel.declare_queue(
        names.unroutable_queue, arguments=_quorum(), durable=True
    )
    await unroutable.bind(unroutable_x)
    work = await declare_work_exchange(channel, names)
    failed_x = await channel.declare_exchange(names.failed_exchange, fanout, durable=True)
    parked_x = await channel.declare_exchange(names.parked_exchange, fanout, durable=True)
    failed = await channel.declare_queue(
        names.failed_queue,
        arguments=_quorum(
            **_dead_letter_to(names.parked_exchange), **{"x-delivery-limit": DELIVERY_LIMIT}
        ),
        durable=True,
    )
    await failed.bind(failed_x)
    # A requeue rejects a parked job to this dead-letter target: RabbitMQ moves it to the
    # work exchange under its own routing key (the destination) in one step.
    parked = await channel.declare_queue(
        names.parked_queue, arguments=_quorum(**_dead_letter_to(names.work_exchange)), durable=True
    )
    await parked.bind(parked_x)
    await _declare_control(channel, names)
    captured_x = await channel.declare_exchange(names.captured_exchange, fanout, durable=True)
    captured = await channel.declare_queue(names.captured_queue, arguments=_quorum(), durable=True)
    await captured.bind(captured_x)
    for destination in destinations:
        await declare_work_queue(channel, names, destination, work)
    for delay in delays:
        for ttl in jittered_ttls(delay, jitter):
            await _declare_delay_tier(channel, names, ttl)


async def declare_work_exchange(
    channel: AbstractChannel, names: Names
) -> aio_pika.abc.AbstractExchange:
    # Dead-lettered and shovelled messages are published without `mandatory`: without an
    # alternate exchange, one for a destination that has no queue would vanish.
    try:
        return await channel.declare_exchange(
            names.work_exchange,
            ExchangeType.DIRECT,
            durable=True,
            arguments={"alternate-exchange": names.unroutable_exchange},
        )
    except ChannelPreconditionFailed as exc:
        raise ConfigError(
            f"RabbitMQ already has an exchange {names.work_exchange!r} declared differently"
            f" (by an older sendqueue?): {exc}. Use another [amqp] prefix or vhost."
        ) from None


async def declare_work_queue(
    channel: AbstractChannel,
    names: Names,
    destination: str,
    work_exchange: aio_pika.abc.AbstractExchange,
) -> aio_pika.abc.AbstractQueue:
    queue = await channel.declare_queue(
        names.work_queue(destination),
        durable=True,
        arguments=_quorum(
            **_dead_letter_to(names.failed_exchange), **{"x-delivery-limit": DELIVERY_LIMIT}
        ),
    )
    await queue.bind(work_exchange, routing_key=destination)
    return queue


async def _declare_control(channel: AbstractChannel, names: Names) -> None:
    fanout = ExchangeType.FANOUT
    control = await channel.declare_exchange(names.control_exchange, fanout, durable=True)
    await channel.declare_exchange(names.status_exchange, fanout, durable=True)
    # A register (shared/register.py): a replicated queue keeping the newest message only.
    state = await declare_state_queue(
        channel, names.prefix, names.control_state_queue, REGISTER_ARGUMENTS
    )
    await state.bind(control)


async def _declare_delay_tier(channel: AbstractChannel, names: Names, ttl: float) -> None:
    name = names.delay(ttl)
    exchange = await channel.declare_exchange(name, ExchangeType.FANOUT, durable=True)
    # No x-dead-letter-routing-key: expired messages keep their own routing key (the
    # destination), so one tier serves every destination.
    queue = await channel.declare_queue(
        name,
        durable=True,
        arguments=_quorum(
            **_dead_letter_to(names.work_exchange), **{"x-message-ttl": round(ttl * 1000)}
        ),
    )
    await queue.bind(exchange)
