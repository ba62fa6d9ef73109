"""The operator's control state (which destinations are paused), as the broker holds it."""

from __future__ import annotations

import logging

import msgspec
from aio_pika.abc import AbstractRobustConnection

from sendqueue.shared.schemas import ControlState, decode_control
from sendqueue.shared.topology import Names

log = logging.getLogger(__name__)


async def read_control_state(connection: AbstractRobustConnection, names: Names) -> ControlState:
    """The newest control state, read without removing it (get, then requeue)."""
    async with connection.channel() as channel:
        queue = await channel.declare_queue(names.control_state_queue, passive=True)
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            return ControlState()
        await message.nack(requeue=True)
    try:
        return decode_control(message.body)
    except msgspec.DecodeError:
        log.error("unreadable control state ignored: %r", message.body[:200])
        return ControlState()
