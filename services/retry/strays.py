"""Jobs with nowhere to go are parked, not stranded or dropped.

Two cases: the work queues of destinations removed from the config, and whatever the work
exchange cannot route (its alternate exchange's queue, `<prefix>.unroutable`).

A work queue outlives its destination's removal from the config, and jobs still waiting
in a delay tier come back to it. Nobody would consume them, and the admin API would not
show them. So the retry service remembers every destination it was ever configured with
(in the RabbitMQ register `retry.destinations`, so that a retry process on another host
knows them too; `destinations.json` in state_dir is read on upgrade) and consumes the
work queue of each removed one, parking every job there as `unknown-destination`:
visible, and requeued from there to another destination (or deleted) by an operator. If
the destination is configured again, its sender consumes the queue as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import msgspec
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import ChannelClosed

from sendqueue.services.retry.parking.queue import Parking
from sendqueue.shared.amqp import BROKER_ERRORS
from sendqueue.shared.register import Registers
from sendqueue.shared.schemas import decode_job
from sendqueue.shared.settle import settle
from sendqueue.shared.topology import Names

log = logging.getLogger(__name__)

_PREFETCH = 32


_KNOWN = "retry.destinations"


class RemovedDestinations:
    def __init__(
        self, state_dir: str, names: Names, parking: Parking, registers: Registers
    ) -> None:
        self._path = Path(state_dir) / "destinations.json"
        self._names = names
        self._parking = parking
        self._registers = registers

    async def drain(
        self, connection: AbstractRobustConnection, configured: Iterable[str]
    ) -> list[str]:
        """Start parking what reaches removed destinations' queues; returns their names."""
        configured = set(configured)
        removed = sorted(await self._known() - configured)
        draining = [name for name in removed if await self._queue_exists(connection, name)]
        self.remembered = self._save(configured | set(draining))
        for name in draining:
            reason = (
                f"destination {name!r} was removed from the configuration; requeue to another"
                " destination, or delete"
            )
            handler = parker(self._parking, reason, destination=name)
            await _consume(connection, self._names.work_queue(name), handler)
            log.warning(
                "destination %r is no longer configured: jobs in its queue are parked as"
                " unknown-destination (requeue them to another destination, or delete them)",
                name,
            )
        return draining

    async def _known(self) -> set[str]:
        raw = await self._registers.read(_KNOWN)
        if raw is not None:
            return set(json.loads(raw)["destinations"])
        try:  # the first start after an upgrade: what this host's file says
            return set(json.loads(self._path.read_text())["destinations"])
        except FileNotFoundError:
            return set()

    async def _save(self, names: set[str]) -> None:
        """Run by the caller in the background (module doc of app.py: a broker alarm must
        not hold up the start); retried until RabbitMQ confirms."""
        pause = 1.0
        while True:
            try:
                await self._registers.write(
                    _KNOWN, json.dumps({"destinations": sorted(names)}).encode()
                )
                return
            except BROKER_ERRORS as exc:
                log.warning("cannot record the configured destinations yet (%r)", exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 60.0)

    async def _queue_exists(self, connection: AbstractRobustConnection, name: str) -> bool:
        # A passive declare of a missing queue closes its channel: use a throw-away one.
        try:
            async with connection.channel() as channel:
                await channel.declare_queue(
                    self._names.work_queue(name), passive=True, robust=False
                )
        except ChannelClosed:
            return False
        return True


async def follow_unroutable(
    connection: AbstractRobustConnection, names: Names, parking: Parking
) -> None:
    """Park what the work exchange could not route (its alternate exchange's queue)."""
    handler = parker(
        parking,
        "no work queue exists for this destination (it is not configured, or its queue"
        " was deleted); requeue to another destination, or delete",
    )
    await _consume(connection, names.unroutable_queue, handler)


async def _consume(
    connection: AbstractRobustConnection,
    queue_name: str,
    handler: Callable[[AbstractIncomingMessage], Awaitable[None]],
) -> None:
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=_PREFETCH)
    queue = await channel.declare_queue(queue_name, passive=True)
    await queue.consume(handler)


def parker(
    parking: Parking, reason: str, destination: str | None = None
) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
    """A consumer that parks every message it gets as `unknown-destination`, for
    `destination` (default: the message's routing key, which names its destination)."""

    async def park(message: AbstractIncomingMessage) -> None:
        for_destination = destination or str(message.routing_key or "?")
        try:
            job = decode_job(message.body)
        except msgspec.DecodeError:
            job = None

        async def park_it() -> None:
            await parking.park(
                job,
                raw=None if job else message.body,
                destination=for_destination,
                reason=reason,
                reason_class="unknown-destination",
            )

        # No fallback: parking is the fallback. If it keeps failing, the queue's delivery
        # limit dead-letters the message (docs/architecture.md, "Topology").
        await settle(message, park_it, what=f"{for_destination}: job with nowhere to go")

    return park
