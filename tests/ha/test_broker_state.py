"""The broker-side pieces HA rests on, against the real RabbitMQ: registers (state any host
can read), the lease (one active process), a URL listing several nodes."""

from __future__ import annotations

import asyncio
import contextlib

import aio_pika
import pytest

from sendqueue.shared.amqp import broker_urls, connect
from sendqueue.shared.lease import Lease, seed_token
from sendqueue.shared.register import Registers, register_queue
from tests.support import rabbit
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(60)


async def _ready(amqp_url: str, queue: str) -> int:
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


async def test_a_register_keeps_the_latest_value_through_any_number_of_reads(amqp_url):
    connection = await connect(amqp_url, "test-registers")
    async with connection:
        registers = Registers(connection, "t")
        assert await registers.read("ingest.changes") is None
        for seq in (b"1", b"2", b"3"):
            await registers.write("ingest.changes", seq)
        # Read from another connection, as a process on another host would, many times
        other = await connect(amqp_url, "test-registers-other")
        async with other:
            for _ in range(25):  # beyond a quorum queue's default delivery limit
                assert await Registers(other, "t").read("ingest.changes") == b"3"
        assert await _ready(amqp_url, register_queue("t", "ingest.changes")) == 1
        # Names do not share values
        assert await registers.read("ingest.jobs") is None


async def _seed(amqp_url: str, service: str) -> None:
    """What the topology's declaration does at every service start."""
    async with await aio_pika.connect(amqp_url) as connection:
        await seed_token(await connection.channel(), "t", service)


async def test_one_lease_holder_at_a_time_and_the_next_takes_over_when_it_goes(amqp_url):
    await _seed(amqp_url, "x")
    stop = asyncio.Event()
    first, second = Lease(amqp_url, "t", "x"), Lease(amqp_url, "t", "x")
    async with first.held(stop) as first_lost:
        assert first.active and not first_lost.is_set()
        # While the first holds it, the second waits
        waiting = asyncio.create_task(_hold(second, stop))
        await asyncio.sleep(1.0)
        assert not second.active
    # When the first lets go, the second becomes active
    async with asyncio.timeout(10):
        while not second.active:
            await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(waiting, 10)
    assert not second.active


async def _hold(lease: Lease, stop: asyncio.Event) -> None:
    async with lease.held(stop) as lost:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 30)
        assert not lost.is_set()


async def test_a_lease_whose_connection_is_lost_says_so(amqp_url, rabbit_vhost):
    await _seed(amqp_url, "y")
    stop = asyncio.Event()
    lease = Lease(amqp_url, "t", "y")
    async with lease.held(stop) as lost:
        assert lease.active
        names = await asyncio.to_thread(
            rabbit.listed_connections, rabbit_vhost.name, 1, "lease-t.y.lease"
        )
        rabbit.close_connections(names)
        await asyncio.wait_for(lost.wait(), 20)


async def test_a_url_listing_several_nodes_reaches_the_first_that_answers(amqp_url):
    dead = amqp_url.replace("127.0.0.1:5672", f"127.0.0.1:{free_port()}")
    connection = await connect(f"{dead}, {amqp_url}", "test-nodes")
    async with connection:
        channel = await connection.channel()
        assert not channel.is_closed
        assert connection.url.port == 5672


def test_a_url_naming_no_broker_is_refused():
    with pytest.raises(ValueError, match="no broker"):
        broker_urls(" , ")
