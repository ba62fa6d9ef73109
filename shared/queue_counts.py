"""Counts of queues (ready messages, consumers) by passive declare, on one kept channel.

Opening a channel for each look, as the simple way goes, leaks with aio-pika 10: every
channel leaves a callback on its connection for good (measured: 4-16 KB a channel). A
sender refreshing its queue depths every 10 s grew by ~90 MB a day. So the periodic
readers (the sender's status reports, the retry service's depth gauges and parked-index
check) keep one channel, and open another only when RabbitMQ closed it: a passive
declare of a missing queue (404) does.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aio_pika.exceptions import ChannelNotFoundEntity


class QueueCounts:
    def __init__(self, connection: AbstractRobustConnection) -> None:
        self._connection = connection
        self._channel: AbstractRobustChannel | None = None
        # One declare at a time: a 404 would close the channel under another.
        self._lock = asyncio.Lock()

    async def declared(self, name: str) -> aiormq.spec.Queue.DeclareOk | None:
        """The queue's declare-ok (message_count, consumer_count); None if it is missing."""
        async with self._lock:
            channel = await self._open_channel()
            try:
                # robust=False: a robust channel caches passively declared queues and would
                # hand back the first declare's counts forever after.
                queue = await channel.declare_queue(name, passive=True, robust=False)
            except ChannelNotFoundEntity:
                await self._drop_channel()  # the 404 closed it; the next look opens another
                return None
            return queue.declaration_result

    async def _open_channel(self) -> AbstractRobustChannel:
        if self._channel is None or self._channel.is_closed:
            await self._drop_channel()
            self._channel = await self._connection.channel()
        return self._channel

    async def _drop_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()

    async def close(self) -> None:
        await self._drop_channel()
