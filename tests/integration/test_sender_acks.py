"""The sender's coalesced acks on a real RabbitMQ: every job of a burst is acked, in fewer
basic.ack frames than jobs, and a channel lost mid-burst loses no job."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest

from sendqueue.services.sender.consumer import DestinationConsumer
from sendqueue.shared.config import SenderConfig
from sendqueue.shared.durations import Duration
from sendqueue.shared.schemas import SendJob, encode
from sendqueue.shared.topology import Names
from tests.support import rabbit
from tests.unit.fakes import (
    FakeDestination,
    FakeOrthanc,
    consumer_with_fakes,
    eventually,
)

pytestmark = pytest.mark.timeout(60)

NAMES = Names("t")
QUEUE = NAMES.work_queue("pacs")
JOBS = 300


@dataclass
class Sender:
    consumer: DestinationConsumer
    destination: FakeDestination
    connection: aio_pika.abc.AbstractRobustConnection
    channel: aio_pika.abc.AbstractRobustChannel
    #: basic.ack frames this process sent.
    frames: list[tuple[int, bool]]

    def delivered(self) -> set[bytes]:
        return set(self.destination.received)


@pytest.fixture
async def sender(amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Sender]:
    """One destination's consumer (concurrency 4: prefetch 8) on a real channel, sending
    to an in-memory destination the instances of an in-memory Orthanc."""
    frames: list[tuple[int, bool]] = []
    basic_ack = aiormq.Channel.basic_ack

    async def counting(self: Any, delivery_tag: int, multiple: bool = False, **kw: Any) -> None:
        frames.append((delivery_tag, multiple))
        await basic_ack(self, delivery_tag, multiple, **kw)

    monkeypatch.setattr(aiormq.Channel, "basic_ack", counting)
    orthanc = FakeOrthanc()
    for n in range(JOBS):
        orthanc.store(f"o{n}", data=f"DICM-o{n}".encode())
    destination = FakeDestination("pacs", concurrency=4)
    connection = await aio_pika.connect_robust(amqp_url + "?reconnect_interval=0.2")
    with tempfile.TemporaryDirectory() as spool:
        config = SenderConfig(probe_min=Duration(0.05), probe_max=Duration(0.1))
        consumer = consumer_with_fakes(
            destination, orthanc, Path(spool), names=NAMES, config=config
        )
        channel = await connection.channel()
        assert isinstance(channel, aio_pika.abc.AbstractRobustChannel)
        await consumer.start(channel, paused=True)
        try:
            yield Sender(consumer, destination, connection, channel, frames)
        finally:
            await consumer.stop(grace=5)
            await connection.close()


async def _queue_burst(connection: aio_pika.abc.AbstractConnection) -> None:
    async with connection.channel() as channel:
        jobs = [SendJob(id=f"job-{n}", destination="pacs", orthanc_id=f"o{n}") for n in range(JOBS)]
        await asyncio.gather(
            *(
                channel.default_exchange.publish(aio_pika.Message(encode(job)), routing_key=QUEUE)
                for job in jobs
            )
        )


async def _settled_on_the_broker(vhost: str) -> None:
    await asyncio.to_thread(
        rabbit.wait_queue_counts, vhost, QUEUE, ready=0, unacked=0, exact=True, timeout=15
    )


async def _left_in_queue(sender: Sender) -> int:
    """Ready jobs once the consumer's channel is closed (unacked ones are ready again)."""
    await sender.consumer.stop(grace=5)
    await sender.channel.close()
    async with sender.connection.channel() as channel:
        queue = await channel.declare_queue(QUEUE, passive=True)
        return int(queue.declaration_result.message_count or 0)


async def test_a_burst_is_all_acked_in_fewer_frames_than_jobs(sender, rabbit_vhost):
    # Given a burst of jobs waiting
    await _queue_burst(sender.connection)

    # When the sender takes them
    await sender.consumer.set_paused(False)
    await eventually(lambda: len(sender.destination.received) >= JOBS, timeout=30)

    # Then every job was delivered once and acked on the open channel: nothing is left
    # ready or unacked (asked of the broker itself, not its lagging statistics), nor
    # comes back when the channel closes
    assert len(sender.destination.received) == JOBS == len(sender.delivered())
    await _settled_on_the_broker(rabbit_vhost.name)
    assert await _left_in_queue(sender) == 0
    # And the acks took fewer basic.ack frames than there were jobs
    assert 0 < len(sender.frames) < JOBS
    assert any(multiple for _, multiple in sender.frames)


async def test_a_channel_lost_mid_burst_loses_no_job(sender, rabbit_vhost):
    # Given a burst being sent
    await _queue_burst(sender.connection)
    await sender.consumer.set_paused(False)
    await eventually(lambda: len(sender.destination.received) >= JOBS // 3, timeout=30)

    # When the broker closes the consumer's channel (an ack of a tag it never delivered is
    # a channel error) and aio-pika's robust channel opens a new one
    underlay = await sender.channel.get_underlay_channel()
    await underlay.basic_ack(delivery_tag=10**9)
    await eventually(lambda: underlay.is_closed, timeout=10)

    # Then every job is delivered (some twice: at least once) and none is left in the queue
    await eventually(lambda: len(sender.delivered()) == JOBS, timeout=30)
    assert await sender.channel.get_underlay_channel() is not underlay
    await _settled_on_the_broker(rabbit_vhost.name)
    assert await _left_in_queue(sender) == 0
