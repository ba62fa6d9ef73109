"""AMQP helpers: robust connections and a publisher that never loses a message silently.

Every publish is persistent, mandatory and confirmed; the caller acks what it consumed
only after ``publish`` returned. An unroutable message raises instead of vanishing.

A broker that blocks publishers (a memory or disk alarm) is waited out, not reported as
"not confirmed": the caller would put back what the publish replaces (a nack, which a
quorum queue up to RabbitMQ 4.2 counts towards its delivery limit), while the publish,
already in the socket, still arrives once the alarm ends: two copies of one job, each
going its own way. So a publish on a blocked connection waits for the alarm to end
before sending (up to `blocked_patience`, then NotConfirmed: nothing was sent), and a
publish once sent is waited for until its confirm, a nack or the loss of the connection
(bounded by the same patience), never given up on by a timer alone. The consumer
meanwhile holds its message: unacked, not returned, not counted.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractExchange, AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError, PublishError
from yarl import URL

from sendqueue.shared.errors import NotConfirmed

log = logging.getLogger(__name__)

#: What aio-pika raises for a publish that was not confirmed; Publisher.publish turns
#: each into NotConfirmed, so that nothing else (an OSError of a file, a RuntimeError of a
#: bug) is ever taken for "the broker did not confirm".
_PUBLISH_FAILURES: tuple[type[BaseException], ...] = (
    *CONNECTION_EXCEPTIONS,
    DeliveryError,
    PublishError,
    asyncio.TimeoutError,
)
#: RabbitMQ unavailable, for callers that talk to it beyond publishing (declares, passes):
#: a publish not confirmed, or the connection's own errors.
BROKER_ERRORS: tuple[type[BaseException], ...] = (NotConfirmed, *CONNECTION_EXCEPTIONS)


def broker_urls(url: str) -> list[str]:
    """`[amqp] url` names one broker or several (a cluster's nodes), comma-separated."""
    urls = [part.strip() for part in url.split(",") if part.strip()]
    if not urls:
        raise ValueError("amqp url names no broker")
    return urls


def _named(url: str, name: str, heartbeat: int) -> URL:
    target = URL(url)
    query = dict(target.query)
    query.setdefault("name", name)
    query.setdefault("heartbeat", str(heartbeat))
    return target.with_query(query)


class ClusterConnection(aio_pika.RobustConnection):
    """A robust connection that knows every node of a RabbitMQ cluster.

    Each (re)connection tries the nodes in order, starting with the one it last reached, so
    the loss of that node moves the connection to the next one instead of retrying a dead
    address forever. Channels and consumers are restored by aio-pika as usual.
    """

    nodes: list[URL] = []

    # aio-pika's reconnect loop calls this private method for the initial connection and
    # for every reconnection: the one place where the address can change between attempts.
    # (tests/unit/shared/test_amqp_urls.py fails if an aio-pika upgrade renames it.)
    async def _RobustConnection__connect_transport(self) -> None:
        start = self.nodes.index(self.url) if self.url in self.nodes else 0
        failure: BaseException | None = None
        for step in range(len(self.nodes)):
            self.url = self.nodes[(start + step) % len(self.nodes)]
            try:
                await super()._RobustConnection__connect_transport()  # type: ignore[misc]
                return
            except CONNECTION_EXCEPTIONS as exc:
                failure = exc
                log.info("RabbitMQ node %s unreachable (%r)", mask_node(self.url), exc)
        assert failure is not None
        raise failure


def mask_node(url: URL) -> str:
    return f"{url.host}:{url.port}"


async def connect(
    url: str, name: str, *, heartbeat: int = 30, timeout: float = 15.0
) -> AbstractRobustConnection:
    """A robust connection, named so it is recognisable in the management UI.

    `url` may list several nodes of one cluster (comma-separated): tried in order.
    """
    nodes = [_named(node, name, heartbeat) for node in broker_urls(url)]
    connection_class = type("ClusterConnection", (ClusterConnection,), {"nodes": nodes})
    connection = cast(
        ClusterConnection,
        await aio_pika.connect_robust(nodes[0], connection_class=connection_class, timeout=timeout),
    )
    # aio-pika logs the loss (with a traceback); say plainly when it is over.
    connection.reconnect_callbacks.add(
        lambda *_: log.warning(
            "%s: connected to RabbitMQ again (%s)", name, mask_node(connection.url)
        )
    )
    return connection


async def connect_once(
    url: str, name: str, *, heartbeat: int = 5, timeout: float = 10.0
) -> AbstractConnection:
    """A plain connection that is not restored once lost (for leases: losing the connection
    must mean losing the lease). The first node of `url` that answers."""
    failure: BaseException | None = None
    for node in broker_urls(url):
        try:
            return await aio_pika.connect(_named(node, name, heartbeat), timeout=timeout)
        except CONNECTION_EXCEPTIONS as exc:
            failure = exc
    assert failure is not None
    raise failure


def blocked(connection: AbstractRobustConnection) -> bool:
    """Whether RabbitMQ told this connection that it blocks its publishes (an alarm).

    aiormq tracks connection.blocked/unblocked in an event it keeps to itself.
    """
    underlying = getattr(getattr(connection, "transport", None), "connection", None)
    unblocked = getattr(underlying, "_Connection__connection_unblocked", None)
    return isinstance(unblocked, asyncio.Event) and not unblocked.is_set()


#: How often a publish waiting out an alarm looks again.
_BLOCKED_POLL = 0.2


class Publisher:
    """Publishes on its own connection (a broker alarm blocks publishers, not consumers)."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        timeout: float = 30.0,
        blocked_patience: float = 20 * 60.0,
    ) -> None:
        self._connection = connection
        self._timeout = timeout
        #: Below RabbitMQ's default consumer timeout (30 min): a consumer holding its
        #: message that long would have it taken back.
        self._blocked_patience = blocked_patience
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}

    async def open(self) -> None:
        self._channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )

    async def _exchange(self, name: str) -> AbstractExchange:
        if name not in self._exchanges:
            assert self._channel is not None, "Publisher.open() first"
            self._exchanges[name] = await self._channel.get_exchange(name, ensure=False)
        return self._exchanges[name]

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        persistent: bool = True,
        mandatory: bool = True,
    ) -> None:
        """Returns once the broker confirmed; raises NotConfirmed otherwise."""
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=(
                aio_pika.DeliveryMode.PERSISTENT
                if persistent
                else aio_pika.DeliveryMode.NOT_PERSISTENT
            ),
            # When it entered its queue: the age of a waiting job is measured from here.
            timestamp=datetime.now(UTC),
            # Unique per publish: aiormq matches returned messages by message_id.
            message_id=message_id or uuid.uuid4().hex,
            headers=dict(headers or {}),
        )
        # The whole call is bounded: a robust channel waits without limit while it
        # reconnects, and publish(timeout=) does not cover that wait. A blocked
        # connection is waited out instead (module doc).
        try:
            await self._until_unblocked(exchange)
            target = await self._exchange(exchange)
            if self._channel is not None:
                # Before anything is sent: a reconnecting channel is waited for, bounded.
                async with asyncio.timeout(self._timeout):
                    await self._channel.get_underlay_channel()
            sending = asyncio.ensure_future(
                target.publish(message, routing_key=routing_key, mandatory=mandatory)
            )
            try:
                await self._confirmed(sending)
            finally:
                if not sending.done():
                    sending.cancel()
        except _PUBLISH_FAILURES as exc:
            raise NotConfirmed(
                f"RabbitMQ did not confirm the publish to {exchange}: {exc!r}"
            ) from exc

    async def _until_unblocked(self, exchange: str) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._blocked_patience
        if blocked(self._connection):
            log.warning("RabbitMQ blocks publishers (an alarm): waiting to publish")
        while blocked(self._connection):
            if loop.time() > give_up:
                raise NotConfirmed(
                    f"RabbitMQ blocked publishers for {self._blocked_patience:g} s:"
                    f" nothing was published to {exchange}"
                )
            await asyncio.sleep(_BLOCKED_POLL)

    async def _confirmed(self, sending: asyncio.Future[Any]) -> None:
        """Wait for the confirm of what was sent: it comes, or a nack, or the channel's or
        connection's loss (heartbeats notice a dead one) ends the wait. Giving up earlier
        would have the caller put back what the publish replaces while the publish still
        arrives: two copies of one job (module doc). Bounded all the same, by the patience,
        for a broker that keeps the connection but never confirms (a quorum lost)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + max(self._blocked_patience, self._timeout)
        warned = False
        while True:
            done, _ = await asyncio.wait({sending}, timeout=self._timeout)
            if done:
                sending.result()
                return
            if loop.time() > give_up:
                raise TimeoutError(f"no confirm within {self._blocked_patience:g} s")
            if not warned:
                why = "RabbitMQ blocks publishers" if blocked(self._connection) else "slow"
                log.warning("a publish is not confirmed yet (%s): waiting for it", why)
                warned = True
