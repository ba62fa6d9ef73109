"""The operator link between the retry service and the senders, both halves in one place.

    retry  --(control exchange: the whole ControlState)--> every sender
                 (the state queue keeps the newest one, for senders that start later)
    sender --(status exchange: one DestinationStatus per destination)--> retry

Services never call each other: both directions are RabbitMQ messages. Status reports are
transient and not mandatory (a newer one follows within `depth_interval`); control states
are persistent and confirmed (an operator's pause must not be lost).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import msgspec
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import ChannelClosed

from sendqueue.shared.amqp import Publisher
from sendqueue.shared.schemas import (
    ControlState,
    DestinationStatus,
    decode_control,
    decode_status,
    encode,
)
from sendqueue.shared.settle import settle
from sendqueue.shared.topology import Names

log = logging.getLogger(__name__)

OnState = Callable[[ControlState], Awaitable[None]]
OnStatus = Callable[[DestinationStatus], None]


async def broadcast_control(publisher: Publisher, names: Names, state: ControlState) -> None:
    """To every sender, and to the state queue (confirmed; raises NotConfirmed)."""
    await publisher.publish(names.control_exchange, "", encode(state))


async def read_control_state(connection: AbstractRobustConnection, names: Names) -> ControlState:
    """The newest control state; the empty one if none was ever broadcast."""
    return await latest_control_state(connection, names) or ControlState()


async def latest_control_state(
    connection: AbstractRobustConnection, names: Names
) -> ControlState | None:
    """The newest control state, read without removing it; None if there is none."""
    async with connection.channel() as channel:
        queue = await channel.declare_queue(names.control_state_queue, passive=True)
        message = await queue.get(no_ack=False, fail=False)
        if message is not None:
            # Returned, not republished: this works while publishers are blocked; the
            # queue's delivery limit is out of reach (shared/register.py).
            await message.nack(requeue=True)
    body = message.body if message is not None else await _legacy_state(connection, names)
    if body is None:
        return None
    try:
        return decode_control(body)
    except msgspec.DecodeError:
        log.error("unreadable control state ignored: %r", body[:200])
        return None


async def _legacy_state(connection: AbstractRobustConnection, names: Names) -> bytes | None:
    """The state an older version left in its classic queue, if it is still there."""
    try:
        async with connection.channel() as channel:
            queue = await channel.declare_queue(
                names.legacy_control_state_queue, passive=True, robust=False
            )
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                return None
            await message.nack(requeue=True)  # a classic queue has no delivery limit
            return message.body
    except ChannelClosed:
        return None  # no such queue: a fresh install


async def follow_control(
    connection: AbstractRobustConnection, names: Names, on_state: OnState
) -> None:
    """Apply every control state broadcast from now on (own exclusive queue)."""

    async def on_message(message: AbstractIncomingMessage) -> None:
        async def apply() -> None:
            try:
                state = decode_control(message.body)
            except msgspec.DecodeError:
                log.error("unreadable control message ignored")
            else:
                await on_state(state)

        await settle(message, apply, what="control state", on_crash=_superseded)

    await _follow(connection, names.control_exchange, names.listener("control"), on_message)


async def publish_status(publisher: Publisher, names: Names, status: DestinationStatus) -> None:
    """One destination's health; raises NotConfirmed (callers may ignore it)."""
    await publisher.publish(
        names.status_exchange,
        status.destination,
        encode(status),
        persistent=False,
        mandatory=False,
    )


async def follow_status(
    connection: AbstractRobustConnection, names: Names, on_status: OnStatus
) -> None:
    """Receive every sender's reports from now on (own exclusive queue)."""

    async def on_message(message: AbstractIncomingMessage) -> None:
        async def record() -> None:
            try:
                status = decode_status(message.body)
            except msgspec.DecodeError:
                log.debug("unreadable status report ignored")
            else:
                on_status(status)

        await settle(message, record, what="status report", on_crash=_superseded)

    await _follow(connection, names.status_exchange, names.listener("status"), on_message)


async def _superseded(_exc: BaseException) -> None:
    """Control states and status reports are whole snapshots and a newer one follows (every
    change and every retry start broadcasts; senders report every depth_interval): one that
    failed to apply is dropped rather than redelivered to an exclusive queue forever."""


async def _follow(
    connection: AbstractRobustConnection,
    exchange: str,
    queue_name: str,
    on_message: Callable[[AbstractIncomingMessage], Awaitable[None]],
) -> None:
    channel = await connection.channel()
    # Named under the prefix (not server- or client-generated), so that RabbitMQ
    # permissions on "<prefix>." cover every queue sendqueue declares.
    queue = await channel.declare_queue(queue_name, exclusive=True, auto_delete=True)
    await queue.bind(exchange)
    await queue.consume(on_message)
