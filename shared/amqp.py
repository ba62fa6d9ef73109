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
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
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


async def connect(url: str, name: str) -> AbstractRobustConnection:
    """A robust connection, named so it is recognisable in the management UI."""
    target = URL(url)
    query = dict(target.query)
    query.setdefault("name", name)
    query.setdefault("heartbeat", "30")
    connection = await aio_pika.connect_robust(str(target.with_query(query)))
    # aio-pika logs the loss (with a traceback); say plainly when it is over.
    connection.reconnect_callbacks.add(
        lambda *_: log.warning("%s: connected to RabbitMQ again", name)
    )
    return connection


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
