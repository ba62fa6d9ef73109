"""AMQP helpers: robust connections and a publisher that never loses a message silently.

Every publish is persistent, mandatory and confirmed; the caller acks what it consumed
only after ``publish`` returned. An unroutable message raises instead of vanishing.
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


class Publisher:
    """Publishes on its own connection (a broker alarm blocks publishers, not consumers)."""

    def __init__(self, connection: AbstractRobustConnection, timeout: float = 30.0) -> None:
        self._connection = connection
        self._timeout = timeout
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
        # reconnects, and publish(timeout=) does not cover that wait.
        try:
            target = await self._exchange(exchange)
            async with asyncio.timeout(self._timeout):
                await target.publish(message, routing_key=routing_key, mandatory=mandatory)
        except _PUBLISH_FAILURES as exc:
            raise NotConfirmed(
                f"RabbitMQ did not confirm the publish to {exchange}: {exc!r}"
            ) from exc
