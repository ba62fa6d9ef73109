"""One active process among several of a service, by RabbitMQ's single active consumer.

Every process of the service consumes from one quorum queue, `<prefix>.<service>.lease`,
declared with `x-single-active-consumer`: RabbitMQ delivers to one consumer only and, when
its channel goes away (a clean stop, kill -9, a lost host, a lost broker node), makes the
next waiting consumer the active one. The queue holds a token message that the active
process keeps unacknowledged for as long as it is active: holding the token *is* the
lease, and RabbitMQ returns it to the queue (and so to the next consumer) the moment the
holder's connection is gone. No clock, no election of our own.

The lease has its own connection, never restored once lost (a restored connection would
come back as a standby while the process still thought it was active): losing it ends
the lease; the process then stops what it did as the active one and waits again.

A short heartbeat bounds how long RabbitMQ keeps the lease of a host that vanished
without closing its TCP connection; a killed process on a live host is noticed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from sendqueue.shared.amqp import BROKER_ERRORS, connect_once
from sendqueue.shared.register import RETURNS_LIMIT, declare_state_queue, put_state

log = logging.getLogger(__name__)

#: Seconds; RabbitMQ gives a silent host's lease away after about two of these.
LEASE_HEARTBEAT = 5
LEASE_ARGUMENTS: dict[str, Any] = {
    "x-queue-type": "quorum",
    "x-single-active-consumer": True,
    # Each take-over returns the token once: never to be dropped for it.
    "x-delivery-limit": RETURNS_LIMIT,
}
#: The services whose processes take turns.
LEASED_SERVICES = ("ingest", "retry")


async def seed_token(channel: aio_pika.abc.AbstractChannel, prefix: str, service: str) -> None:
    """Declares the lease queue and, on a fresh install, puts the token there (declared
    with the topology, by every service at start, before any process waits for a lease).
    A queue with consumers has its token (held by the active one, or waiting): nothing is
    published then, so a start during a broker alarm is not held up by it. A second token
    would be harmless anyway: only the active consumer ever gets one."""
    queue_name = f"{prefix}.{service}.lease"
    queue = await declare_state_queue(channel, prefix, queue_name, LEASE_ARGUMENTS)
    declared = queue.declaration_result
    if declared.message_count or declared.consumer_count:
        return
    for attempt in range(1, _SEED_TRIES + 1):
        try:
            await put_state(channel, prefix, queue_name, b"lease")
            return
        except aiormq.exceptions.DeliveryError:
            # A quorum queue declared a moment ago may nack while it elects its leader
            # (seen on a loaded machine): try again shortly, then give up loudly.
            if attempt == _SEED_TRIES:
                raise
            log.warning(
                "RabbitMQ refused the %s token (attempt %d); trying again", service, attempt
            )
            await asyncio.sleep(_SEED_PAUSE * attempt)


#: Tries, and the pause between them (times the try's number), of seeding a lease token.
_SEED_TRIES, _SEED_PAUSE = 5, 0.5


#: Wait before a standby whose broker connection failed tries again.
_RECONNECT_WAIT = 2.0
#: The broker went away while this process waited for its turn.
_LOST: tuple[type[BaseException], ...] = (*BROKER_ERRORS, ConnectionError)


def holder_identity() -> str:
    """Who holds a lease, as the standbys and the operator see it."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Lease:
    """`async with lease.held(stop) as lost:` waits until this process is the active one;
    `lost` is set if the lease goes away before the block ends."""

    def __init__(self, url: str, prefix: str, service: str, *, identity: str | None = None) -> None:
        self._url = url
        self._prefix = prefix
        self.queue = f"{prefix}.{service}.lease"
        self.identity = identity or holder_identity()
        self.active = False
        self._connection: AbstractConnection | None = None

    @contextlib.asynccontextmanager
    async def held(self, stop: asyncio.Event) -> AsyncIterator[asyncio.Event]:
        """Enters once active, or once `stop` is set (then `lost` is set already)."""
        lost = await self.acquire(stop)
        try:
            yield lost if lost is not None else _set_event()
        finally:
            await self.release()

    async def acquire(self, stop: asyncio.Event) -> asyncio.Event | None:
        """Waits until this process is the active one; returns the event set when the lease
        is lost, or None if `stop` was set first. release() ends the lease."""
        connection = await self._wait_turn(stop)
        if connection is None:
            return None
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: lost.set())
        if connection.is_closed:
            lost.set()
        self._connection = connection
        self.active = not lost.is_set()
        if self.active:
            log.info("%s: this process (%s) is the active one", self.queue, self.identity)
        return lost

    async def release(self) -> None:
        """Hands the lease on (closing its connection returns the token)."""
        self.active = False
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    async def _wait_turn(self, stop: asyncio.Event) -> AbstractConnection | None:
        """Connects and waits until RabbitMQ makes this process's consumer the active one;
        None if `stop` is set first."""
        while not stop.is_set():
            try:
                connection = await connect_once(
                    self._url, f"lease-{self.queue}-{self.identity}", heartbeat=LEASE_HEARTBEAT
                )
            except BROKER_ERRORS as exc:
                log.warning("%s: cannot reach RabbitMQ (%r); trying again", self.queue, exc)
                await _stopped(stop, _RECONNECT_WAIT)
                continue
            try:
                if await self._consume(connection, stop):
                    return connection
            except _LOST as exc:
                log.warning("%s: lost RabbitMQ while waiting (%r)", self.queue, exc)
            with contextlib.suppress(Exception):
                await connection.close()
            await _stopped(stop, _RECONNECT_WAIT)
        return None

    async def _consume(self, connection: AbstractConnection, stop: asyncio.Event) -> bool:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=1)
        # The token is put there by seed_token(), with the topology: this connection never
        # publishes, so RabbitMQ never blocks it (a memory or disk alarm).
        queue = await declare_state_queue(channel, self._prefix, self.queue, LEASE_ARGUMENTS)
        got: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        await queue.consume(got.put)
        waiter = asyncio.ensure_future(got.get())
        stopper = asyncio.ensure_future(stop.wait())
        closed = asyncio.ensure_future(connection.closed())
        try:
            await asyncio.wait({waiter, stopper, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in (stopper, closed):
                future.cancel()
        if not waiter.done():
            waiter.cancel()
            if closed.done() and not stop.is_set():
                raise ConnectionError("lease connection closed while waiting")
            return False
        # Kept unacknowledged. No publish here: a take-over works while RabbitMQ blocks
        # publishers (a memory or disk alarm).
        waiter.result()
        return True


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


async def _stopped(stop: asyncio.Event, wait: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), wait)
    return stop.is_set()


@contextlib.asynccontextmanager
async def either(*events: asyncio.Event) -> AsyncIterator[asyncio.Event]:
    """An event set as soon as any of these is (for loops that stop on one event)."""
    anyone = asyncio.Event()

    async def watch(event: asyncio.Event) -> None:
        await event.wait()
        anyone.set()

    watchers = [asyncio.create_task(watch(event)) for event in events]
    try:
        yield anyone
    finally:
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
