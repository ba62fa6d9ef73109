"""Every queue's delivery limit and dead-letter target is explicit, and holds on the broker.

A message that keeps coming back (its consumer crashes, a pass dies mid-way) must end where
an operator sees it: never dropped (RabbitMQ 4.x drops past its default limit of 20 when a
quorum queue has no dead-letter target), never sent on its own (the parking queue's
dead-letter target is the work exchange).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import quote

import aio_pika
import pytest

from sendqueue.shared.config import parse_config
from sendqueue.shared.schemas import SendJob, encode, new_job_id
from sendqueue.shared.topology import DELIVERY_LIMIT, Names, broker_major, prepare_bus
from tests.support import rabbit

pytestmark = pytest.mark.timeout(120)

PREFIX = "sq"


def _config(amqp_url: str) -> Any:
    return parse_config(
        {
            "amqp": {"url": amqp_url, "prefix": PREFIX},
            "destinations": [{"name": "pacs", "kind": "dicom", "host": "127.0.0.1", "port": 1}],
        },
        environ={},
    )


def make_job(destination: str = "pacs") -> SendJob:
    return SendJob(id=new_job_id(), destination=destination, orthanc_id="abc")


def _arguments(vhost: str, queue: str) -> dict[str, Any]:
    info = rabbit.management_request("GET", f"/api/queues/{quote(vhost, safe='')}/{queue}")
    return dict(info["arguments"])


async def _return_repeatedly(channel: Any, queue_name: str, times: int) -> int:
    """Take the queue's one message and nack it back `times` times; how often it came."""
    queue = await channel.declare_queue(queue_name, passive=True)
    seen = 0
    for _ in range(times):
        message = await _get(queue)
        if message is None:
            break
        seen += 1
        await message.nack(requeue=True)
    return seen


async def _get(queue: Any, wait: float = 3.0) -> Any:
    deadline = asyncio.get_running_loop().time() + wait
    while asyncio.get_running_loop().time() < deadline:
        message = await queue.get(fail=False, no_ack=False)
        if message is not None:
            return message
        await asyncio.sleep(0.05)
    return None


async def test_each_consumed_queue_states_its_limit_and_target(rabbit_vhost):
    config = _config(rabbit_vhost.amqp_url)
    connection = await aio_pika.connect_robust(rabbit_vhost.amqp_url)
    try:
        await prepare_bus(connection, config)
        major = broker_major(connection)
    finally:
        await connection.close()
    names = Names(PREFIX)
    vhost = rabbit_vhost.name
    for queue, target in (
        (names.work_queue("pacs"), names.failed_exchange),
        (names.failed_queue, names.parked_exchange),
        (names.unroutable_queue, names.failed_exchange),
    ):
        args = _arguments(vhost, queue)
        assert args["x-delivery-limit"] == DELIVERY_LIMIT, queue
        assert args["x-dead-letter-exchange"] == target, queue
        assert args["x-dead-letter-strategy"] == "at-least-once", queue
        assert args["x-overflow"] == "reject-publish", queue
    parked = _arguments(vhost, names.parked_queue)
    assert parked["x-dead-letter-exchange"] == names.work_exchange
    assert parked.get("x-delivery-limit") == (-1 if major and major >= 4 else None)


async def test_a_stray_that_keeps_coming_back_is_parked_not_dropped(rabbit_vhost):
    # Given a job on the unroutable queue whose handler fails every time
    config = _config(rabbit_vhost.amqp_url)
    names = Names(PREFIX)
    connection = await aio_pika.connect_robust(rabbit_vhost.amqp_url)
    try:
        publisher = await prepare_bus(connection, config)
        job = make_job(destination="gone")
        await publisher.publish(names.work_exchange, "gone", encode(job))
        channel = await connection.channel()
        # When it is returned more often than the delivery limit
        seen = await _return_repeatedly(channel, names.unroutable_queue, DELIVERY_LIMIT + 5)
        # Then it leaves for the failed queue (retry parks it), it is not dropped
        assert seen == DELIVERY_LIMIT + 1
        failed = await channel.declare_queue(names.failed_queue, passive=True)
        message = await _get(failed, wait=10)
        assert message is not None and message.body == encode(job)
        await message.ack()
    finally:
        await connection.close()


async def test_a_parked_job_returned_again_and_again_stays_parked(rabbit_vhost):
    # Given a parked job whose passes keep dying (every delivery comes back)
    config = _config(rabbit_vhost.amqp_url)
    names = Names(PREFIX)
    connection = await aio_pika.connect_robust(rabbit_vhost.amqp_url)
    try:
        publisher = await prepare_bus(connection, config)
        await publisher.publish(names.parked_exchange, "pacs", encode(make_job()))
        channel = await connection.channel()
        # When it is returned far more often than any delivery limit
        seen = await _return_repeatedly(channel, names.parked_queue, DELIVERY_LIMIT + 10)
        # Then it is still parked, and nothing reached the work queue on its own
        assert seen == DELIVERY_LIMIT + 10
        work = rabbit.queue_counts(rabbit_vhost.name, names.work_queue("pacs"), exact=True)
        assert work.ready == 0
    finally:
        await connection.close()


async def test_queues_of_an_older_version_are_used_as_they_are(rabbit_vhost, caplog):
    # Given the queues as an older sendqueue declared them (quorum, no limit, no target)
    names = Names(PREFIX)
    connection = await aio_pika.connect_robust(rabbit_vhost.amqp_url)
    try:
        channel = await connection.channel()
        for name in (names.unroutable_queue,):
            await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        # When this version starts on them
        with caplog.at_level(logging.ERROR, logger="sendqueue.shared.topology"):
            publisher = await prepare_bus(connection, _config(rabbit_vhost.amqp_url))
        # Then it starts (no PRECONDITION_FAILED), says what to apply, and publishes
        assert "Upgrading the queue arguments" in caplog.text
        assert names.unroutable_queue in caplog.text
        await publisher.publish(names.work_exchange, "pacs", encode(make_job()))
        assert _arguments(rabbit_vhost.name, names.failed_queue)["x-delivery-limit"] == 20
    finally:
        await connection.close()
