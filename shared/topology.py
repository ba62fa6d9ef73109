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

Every consumed queue states its delivery limit and where a message goes past it, because
RabbitMQ 4.x gives a quorum queue without one a limit of 20 and then drops the message
(no dead-letter target) or dead-letters it (a target), while 3.x has no limit at all:

    queue        limit              past it, dead-lettered to    so that
    work.<dest>  DELIVERY_LIMIT     failed exchange              retry parks it (crashed sender)
    failed       DELIVERY_LIMIT     parked exchange              it is parked as it is
    unroutable   DELIVERY_LIMIT     failed exchange              retry parks it
    parked       none (-1 on 4.x)   (work exchange: requeue)     never sent without an operator
    delay.<ttl>  none (never consumed; only expiry dead-letters it, to the work exchange)

The parking queue's dead-letter target is the work exchange (a requeue rejects a job
there), so a limit on it would send parked jobs to their destination with nobody asking:
it has none. RabbitMQ 3.x has no default limit and reads -1 as "past the limit at the
first return", so the -1 is declared only to a broker 4.0 or newer. Dead-lettering is
at-least-once with reject-publish overflow everywhere.

An existing queue declared by an older sendqueue with other arguments cannot be changed
by declaring it again (RabbitMQ answers PRECONDITION_FAILED): it is then used as it is,
with an error in the log that names the policy that fixes it (docs/operations.md,
"Upgrading the queue arguments").
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractQueue,
    AbstractRobustConnection,
    ExchangeType,
)
from aiormq.exceptions import ChannelPreconditionFailed

from sendqueue.shared.amqp import Publisher
from sendqueue.shared.config import Config
from sendqueue.shared.durations import format_duration
from sendqueue.shared.errors import ConfigError
from sendqueue.shared.lease import LEASED_SERVICES, seed_token
from sendqueue.shared.register import REGISTER_ARGUMENTS, declare_state_queue

#: A message redelivered this many times without an outcome (the consumer crashed or
#: was killed with it each time) is dead-lettered to the failed queue, then parked.
DELIVERY_LIMIT = 20
#: Delays are spread over this many TTL steps between d and d * (1 + jitter).
JITTER_STEPS = 4
#: RabbitMQ 4.0 and newer read a delivery limit of -1 as "no limit".
UNLIMITED = -1

log = logging.getLogger(__name__)


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
        #: Senders report deliveries of instances bound for deletion; retry deletes them.
        self.delivered_exchange = f"{prefix}.delivered"
        self.delivered_queue = f"{prefix}.delivered"
        #: Storage commitment reports, passed from the sender that received one to all.
        self.commitments_exchange = f"{prefix}.commitments"

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


def broker_major(connection: AbstractConnection) -> int | None:
    """The RabbitMQ major version the connection talks to (None if it does not say)."""
    try:
        properties = connection.transport.connection.server_properties  # type: ignore[union-attr]
        version = properties.get("version", "")
        if isinstance(version, bytes):
            version = version.decode()
        return int(str(version).split(".")[0])
    except (AttributeError, ValueError, TypeError):
        return None


def parked_arguments(names: Names, major: int | None) -> dict[str, Any]:
    """The parking queue: no delivery limit (module doc), a requeue dead-letters to work."""
    limit = {"x-delivery-limit": UNLIMITED} if major is not None and major >= 4 else {}
    return _quorum(**_dead_letter_to(names.work_exchange), **limit)


def limited_arguments(dead_letter_exchange: str) -> dict[str, Any]:
    """A consumed queue whose poison messages go to `dead_letter_exchange`."""
    return _quorum(**_dead_letter_to(dead_letter_exchange), **{"x-delivery-limit": DELIVERY_LIMIT})


async def prepare_bus(connection: AbstractRobustConnection, config: Config) -> Publisher:
    """Declare the whole topology for this config and open a confirming publisher."""
    async with connection.channel() as channel:
        await declare_topology(
            channel,
            Names(config.amqp.prefix),
            [d.name for d in config.destinations],
            config.all_delays(),
            config.retry.jitter,
            reopen=connection.channel,
            major=broker_major(connection),
        )
    publisher = Publisher(connection)
    await publisher.open()
    return publisher


class _Declarer:
    """Declares queues; one that exists with other arguments is used as it is (module doc).

    RabbitMQ closes the channel on PRECONDITION_FAILED: with `reopen`, declaring goes on
    on a new one; without it, the error is raised.
    """

    def __init__(
        self,
        channel: AbstractChannel,
        reopen: Callable[[], Awaitable[AbstractChannel]] | None,
    ) -> None:
        self.channel = channel
        self._reopen = reopen
        self._opened: list[AbstractChannel] = []
        #: Queues whose existing arguments differ from what this version declares.
        self.differing: list[str] = []

    async def queue(self, name: str, arguments: dict[str, Any]) -> AbstractQueue:
        try:
            return await self.channel.declare_queue(name, durable=True, arguments=arguments)
        except ChannelPreconditionFailed as exc:
            if self._reopen is None:
                raise
            self.channel = await self._reopen()
            self._opened.append(self.channel)
            self.differing.append(name)
            log.error(
                "queue %r exists with other arguments than this version declares (%s); it is"
                ' used as it is. Apply the queue policy of docs/operations.md ("Upgrading the'
                ' queue arguments") so that it gets %s',
                name,
                exc,
                {k: v for k, v in arguments.items() if k != "x-queue-type"},
            )
            return await self.channel.declare_queue(name, passive=True)

    async def close(self) -> None:
        for channel in self._opened:
            await channel.close()


async def declare_topology(
    channel: AbstractChannel,
    names: Names,
    destinations: Iterable[str],
    delays: Iterable[float],
    jitter: float,
    *,
    reopen: Callable[[], Awaitable[AbstractChannel]] | None = None,
    major: int | None = None,
) -> list[str]:
    """Declare everything; safe to run from every service at every start.

    Returns the queues that exist with other arguments (only with `reopen`; see _Declarer).
    """
    declarer = _Declarer(channel, reopen)
    try:
        await _declare_all(declarer, names, destinations, delays, jitter, major)
    finally:
        await declarer.close()
    return declarer.differing


async def _declare_all(
    declarer: _Declarer,
    names: Names,
    destinations: Iterable[str],
    delays: Iterable[float],
    jitter: float,
    major: int | None,
) -> None:
    fanout = ExchangeType.FANOUT
    channel = declarer.channel
    unroutable_x = await channel.declare_exchange(names.unroutable_exchange, fanout, durable=True)
    failed_x = await channel.declare_exchange(names.failed_exchange, fanout, durable=True)
    parked_x = await channel.declare_exchange(names.parked_exchange, fanout, durable=True)
    # A message the stray handler cannot settle goes to retry, which parks it (a SendJob
    # on the failed queue is a dead-lettered job), instead of being dropped at 20 tries.
    unroutable = await declarer.queue(
        names.unroutable_queue, limited_arguments(names.failed_exchange)
    )
    await unroutable.bind(unroutable_x)
    work = await declare_work_exchange(declarer.channel, names)
    failed = await declarer.queue(names.failed_queue, limited_arguments(names.parked_exchange))
    await failed.bind(failed_x)
    # A requeue rejects a parked job to this dead-letter target: RabbitMQ moves it to the
    # work exchange under its own routing key (the destination) in one step.
    parked = await declarer.queue(names.parked_queue, parked_arguments(names, major))
    await parked.bind(parked_x)
    await _declare_control(declarer.channel, names)
    for service in LEASED_SERVICES:
        await seed_token(declarer.channel, names.prefix, service)
    captured_x = await declarer.channel.declare_exchange(
        names.captured_exchange, fanout, durable=True
    )
    # Audit records of captured Orthanc jobs (the jobs themselves are queued already): one
    # that cannot be recorded in 20 deliveries is dropped rather than crash-loop the audit.
    captured = await declarer.queue(
        names.captured_queue, _quorum(**{"x-delivery-limit": DELIVERY_LIMIT})
    )
    await captured.bind(captured_x)
    delivered_x = await declarer.channel.declare_exchange(
        names.delivered_exchange, fanout, durable=True
    )
    # Deliveries of instances bound for deletion: one that cannot be handled in 20
    # deliveries is dropped, so its instance stays in Orthanc (never deleted too early).
    delivered = await declarer.queue(
        names.delivered_queue, _quorum(**{"x-delivery-limit": DELIVERY_LIMIT})
    )
    await delivered.bind(delivered_x)
    for destination in destinations:
        await declare_work_queue(declarer.channel, names, destination, work, declarer=declarer)
    for delay in delays:
        for ttl in jittered_ttls(delay, jitter):
            await _declare_delay_tier(declarer, names, ttl)


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
    *,
    declarer: _Declarer | None = None,
) -> aio_pika.abc.AbstractQueue:
    declarer = declarer or _Declarer(channel, None)
    queue = await declarer.queue(
        names.work_queue(destination), limited_arguments(names.failed_exchange)
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


async def _declare_delay_tier(declarer: _Declarer, names: Names, ttl: float) -> None:
    name = names.delay(ttl)
    exchange = await declarer.channel.declare_exchange(name, ExchangeType.FANOUT, durable=True)
    # No x-dead-letter-routing-key: expired messages keep their own routing key (the
    # destination), so one tier serves every destination.
    queue = await declarer.queue(
        name,
        _quorum(**_dead_letter_to(names.work_exchange), **{"x-message-ttl": round(ttl * 1000)}),
    )
    await queue.bind(exchange)
