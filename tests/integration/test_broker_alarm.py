"""A memory alarm (RabbitMQ blocks publishers) on the machine's broker, then restored.

While publishers are blocked, a consumer holds the message it is handling: it is neither
returned (a quorum queue up to RabbitMQ 4.2 counts every return towards the delivery
limit) nor copied twice (a publish given up on would still arrive once the alarm ends).
The retry service starts during the alarm. Each test takes the exclusive broker lock and
restores the watermark in a `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import aio_pika
import aiohttp
import pytest

from sendqueue.services.retry.app import run_retry
from sendqueue.shared.amqp import Publisher, blocked
from sendqueue.shared.config import parse_config
from sendqueue.shared.settle import settle
from tests.integration.harness import ADMIN_TOKEN
from tests.support import rabbit
from tests.support.broker_lock import disturbing_broker
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(240)


def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


@contextlib.contextmanager
def memory_alarm() -> Iterator[None]:
    """Raise RabbitMQ's memory alarm (watermark 0); put the old watermark back after."""
    with disturbing_broker():
        before = _rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().")
        restore = ["set_vm_memory_high_watermark"]
        if before.startswith("{absolute"):
            restore += ["absolute", before.strip("{}").split(",")[1].strip()]
        else:
            restore.append(before)
        try:
            _rabbitmqctl("set_vm_memory_high_watermark", "0")
            yield
        finally:
            _rabbitmqctl(*restore)


async def _wait(condition: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.1)


async def test_a_publish_held_by_an_alarm_is_neither_returned_nor_forked(rabbit_vhost):
    # Given a consumer that replaces each message by a publish to another queue (as the
    # sender reports and the retry service reschedules), with a short confirm timeout
    url = rabbit_vhost.amqp_url
    consume = await aio_pika.connect_robust(url)
    publish = await aio_pika.connect_robust(url)
    try:
        channel = await consume.channel()
        source = await channel.declare_queue(
            "source", durable=True, arguments={"x-queue-type": "quorum"}
        )
        target = await channel.declare_queue(
            "target", durable=True, arguments={"x-queue-type": "quorum"}
        )
        await channel.default_exchange.publish(aio_pika.Message(b"job"), routing_key="source")
        publisher = Publisher(publish, timeout=2.0)
        await publisher.open()
        deliveries: list[int] = []

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            deliveries.append(int(str((message.headers or {}).get("x-delivery-count") or 0)))

            async def replace() -> None:
                await publisher.publish("", "target", message.body)

            await settle(message, replace, what="test")

        # When the alarm is raised before the message is handled, and lasts several times
        # the confirm timeout
        with memory_alarm():
            await source.consume(on_message)
            await asyncio.sleep(10)
            held_during_alarm = list(deliveries)
            assert blocked(publish)

        # Then the message was delivered once and held, and once the alarm ended its
        # replacement arrived once, and the original was acked
        await _wait(lambda: rabbit.queue_counts(rabbit_vhost.name, "source").unacked == 0, 60)
        await asyncio.sleep(1)
        assert held_during_alarm == [0]
        assert deliveries == [0]
        counts = rabbit.queue_counts(rabbit_vhost.name, "target", exact=True)
        assert counts.ready == 1
        assert rabbit.queue_counts(rabbit_vhost.name, "source", exact=True).ready == 0
        del target
    finally:
        await publish.close()
        await consume.close()


async def test_the_retry_service_starts_while_publishers_are_blocked(rabbit_vhost, tmp_path: Path):
    # Given a retry service whose pause state must be broadcast at start-up
    port = free_port()
    config = parse_config(
        {
            "amqp": {"url": rabbit_vhost.amqp_url, "prefix": "sq"},
            "orthanc": {"url": f"http://127.0.0.1:{free_port()}"},
            "retry": {
                "state_dir": str(tmp_path / "retry"),
                "listen": f"127.0.0.1:{port}",
                "admin_token": ADMIN_TOKEN,
            },
            "destinations": [{"name": "pacs", "kind": "dicom", "host": "127.0.0.1", "port": 1}],
        },
        environ={},
    )
    (tmp_path / "retry").mkdir()
    (tmp_path / "retry" / "paused.json").write_text('{"paused": ["pacs"]}')
    # (the topology exists already, as after any earlier start)
    connection = await aio_pika.connect_robust(rabbit_vhost.amqp_url)
    from sendqueue.shared.topology import prepare_bus

    await prepare_bus(connection, config)
    await connection.close()
    stop = asyncio.Event()
    with memory_alarm():
        # When it starts during the alarm
        service = asyncio.create_task(run_retry(config, stop))
        try:
            # Then its admin API answers, and it keeps running past the publish timeout
            async with aiohttp.ClientSession() as session:

                async def healthy() -> bool:
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                            return resp.status == 200
                    except aiohttp.ClientError:
                        return False

                async with asyncio.timeout(25):
                    while not await healthy():
                        assert not service.done(), service
                        await asyncio.sleep(0.2)
                await asyncio.sleep(35)
                assert not service.done(), service
                assert await healthy()
        finally:
            stop.set()
    async with asyncio.timeout(60):
        await service
