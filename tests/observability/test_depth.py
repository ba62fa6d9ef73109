"""The queue-depth monitor reads real RabbitMQ queues, through either source."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection
from prometheus_client import CollectorRegistry

from sendqueue.services.retry.queue_gauges import (
    ManagementSource,
    QueueDepthMonitor,
    QueueStats,
    classify,
    configured_queues,
    vhost_of,
)
from sendqueue.shared.amqp import connect
from sendqueue.shared.config import Config, parse_config
from sendqueue.shared.topology import Names, declare_topology
from tests.support import rabbit
from tests.support.ports import free_port

PREFIX = "sqd"


def make_config(amqp_url: str, management_url: str = "", destinations: int = 1) -> Config:
    return parse_config(
        {
            "amqp": {
                "url": amqp_url,
                "prefix": PREFIX,
                "management_url": management_url,
                "depth_interval": "1s",
            },
            "retry": {"delays": ["1s", "5s"], "jitter": 0},
            "destinations": [
                {"name": f"pacs{i}", "host": "127.0.0.1"} for i in range(1, destinations + 1)
            ],
        },
        environ={},
    )


def test_classify_names_kind_and_destination_of_our_queues_only() -> None:
    assert classify("sq", "sq.work.pacs-1") == ("work", "pacs-1")
    assert classify("sq", "sq.delay.10s") == ("delay", "")
    assert classify("sq", "sq.failed") == ("failed", "")
    assert classify("sq", "sq.parked") == ("parked", "")
    assert classify("sq", "sq2.work.pacs") is None
    assert classify("sq", "other") is None


def test_vhost_of_decodes_like_aiormq() -> None:
    assert vhost_of("amqp://u:p@h:5672/") == "/"
    assert vhost_of("amqp://u:p@h:5672") == "/"
    assert vhost_of("amqp://u:p@h/%2F") == "/"
    assert vhost_of("amqp://u:p@h/sq-test-1") == "sq-test-1"


def test_configured_queues_name_every_declared_queue() -> None:
    config = make_config("amqp://g:g@h/", destinations=2)
    assert configured_queues(config) == [
        f"{PREFIX}.work.pacs1",
        f"{PREFIX}.work.pacs2",
        f"{PREFIX}.failed",
        f"{PREFIX}.parked",
        f"{PREFIX}.delay.1s",
        f"{PREFIX}.delay.5s",
    ]


@pytest.fixture
async def connection(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    conn = await connect(amqp_url, "sq-test-depth")
    try:
        yield conn
    finally:
        await conn.close()


async def _declare_and_fill(conn: AbstractRobustConnection, config: Config, ready: int) -> None:
    """Topology for pacs1 only (pacs2's work queue stays undeclared), `ready` jobs in it."""
    names = Names(PREFIX)
    async with conn.channel() as channel:
        await declare_topology(channel, names, ["pacs1"], config.all_delays(), 0)
        exchange = await channel.get_exchange(names.work_exchange)
        for i in range(ready):
            await exchange.publish(aio_pika.Message(str(i).encode()), routing_key="pacs1")


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def work(state: str | None = None) -> dict[str, str]:
    labels = {"queue": f"{PREFIX}.work.pacs1", "kind": "work", "destination": "pacs1"}
    return {**labels, "state": state} if state else labels


async def test_amqp_source_reports_ready_and_consumers_and_skips_missing_queues(
    connection: AbstractRobustConnection, amqp_url: str
) -> None:
    # Given pacs2 configured but its queue not declared, and 3 jobs for pacs1
    config = make_config(amqp_url, destinations=2)
    await _declare_and_fill(connection, config, ready=3)
    registry = CollectorRegistry()
    monitor = QueueDepthMonitor(config, connection, registry)
    assert monitor.source.label == "amqp"
    try:
        # When it refreshes twice (the robust channel must not cache the first counts)
        await monitor.refresh()
        assert _value(registry, "sendqueue_queue_messages", **work("ready")) == 3
        async with connection.channel() as channel:
            exchange = await channel.get_exchange(Names(PREFIX).work_exchange)
            await exchange.publish(aio_pika.Message(b"x"), routing_key="pacs1")
        await monitor.refresh()
    finally:
        await monitor.source.close()
    # Then the counts are current, the missing queue is skipped and later queues still read
    assert _value(registry, "sendqueue_queue_messages", **work("ready")) == 4
    assert _value(registry, "sendqueue_queue_consumers", **work()) == 0
    assert _value(registry, "sendqueue_queue_messages", **work("unacked")) is None
    parked = {"queue": f"{PREFIX}.parked", "kind": "parked", "destination": ""}
    assert _value(registry, "sendqueue_queue_messages", **parked, state="ready") == 0
    delay = {"queue": f"{PREFIX}.delay.5s", "kind": "delay", "destination": ""}
    assert _value(registry, "sendqueue_queue_consumers", **delay) == 0
    missing = {"queue": f"{PREFIX}.work.pacs2", "kind": "work", "destination": "pacs2"}
    assert _value(registry, "sendqueue_queue_consumers", **missing) is None
    assert _value(registry, "sendqueue_queue_stats_timestamp_seconds") is not None


async def test_management_source_reports_unacked_and_consumers(
    connection: AbstractRobustConnection, amqp_url: str
) -> None:
    # Given 3 jobs, one of them delivered to a consumer and not acked
    config = make_config(amqp_url, management_url=f"http://guest:guest@{_mgmt_host()}")
    await _declare_and_fill(connection, config, ready=3)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1)
    queue = await channel.declare_queue(f"{PREFIX}.work.pacs1", passive=True)
    held: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
    await queue.consume(held.put)
    await asyncio.wait_for(held.get(), 10)
    registry = CollectorRegistry()
    monitor = QueueDepthMonitor(config, connection, registry)
    assert monitor.source.label == "management"
    # When it refreshes until the broker's statistics caught up (~5 s)
    try:
        deadline = time.monotonic() + 20
        while True:
            await monitor.refresh()
            if _value(registry, "sendqueue_queue_messages", **work("unacked")) == 1:
                break
            assert time.monotonic() < deadline, "management statistics never showed 1 unacked"
            await asyncio.sleep(0.5)
    finally:
        await monitor.source.close()
        await channel.close()
    # Then ready, unacked and consumers all show
    assert _value(registry, "sendqueue_queue_messages", **work("ready")) == 2
    assert _value(registry, "sendqueue_queue_consumers", **work()) == 1
    failed = {"queue": f"{PREFIX}.failed", "kind": "failed", "destination": ""}
    assert _value(registry, "sendqueue_queue_messages", **failed, state="unacked") == 0


class FakeSource:
    """Gives its answers in turn (an exception is raised), then repeats the last one."""

    label = "fake"

    def __init__(self, *answers: list[QueueStats] | Exception) -> None:
        self._answers = list(answers)

    async def fetch(self) -> list[QueueStats]:
        answer = self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def close(self) -> None:
        pass


async def test_a_failed_refresh_empties_the_gauges_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a monitor that has shown numbers once
    config = make_config("amqp://g:g@127.0.0.1/")
    registry = CollectorRegistry()
    source = FakeSource([QueueStats(f"{PREFIX}.work.pacs1", 5, 1, 2)], ConnectionError("gone"))
    monitor = QueueDepthMonitor(config, None, registry, source=source)  # type: ignore[arg-type]
    await monitor.refresh()
    assert _value(registry, "sendqueue_queue_messages", **work("ready")) == 5
    assert _value(registry, "sendqueue_queue_consumers", **work()) == 2
    # When the next two refreshes fail
    caplog.set_level(logging.DEBUG, logger="sendqueue.services.retry.queue_gauges")
    await monitor.refresh()
    await monitor.refresh()
    # Then no stale series remain, both failures are counted, and one warning is logged
    assert _value(registry, "sendqueue_queue_messages", **work("ready")) is None
    assert _value(registry, "sendqueue_queue_consumers", **work()) is None
    assert _value(registry, "sendqueue_queue_stats_errors_total", source="fake") == 2
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


async def test_a_broker_without_statistics_is_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a management API that lists queues but never their counts (collector off)
    config = make_config("amqp://g:g@127.0.0.1/")
    blank = FakeSource([QueueStats(f"{PREFIX}.work.pacs1", None, None, None)])
    monitor = QueueDepthMonitor(config, None, CollectorRegistry(), source=blank)  # type: ignore[arg-type]
    caplog.set_level(logging.WARNING, logger="sendqueue.services.retry.queue_gauges")
    # When it refreshes for a while
    for _ in range(10):
        await monitor.refresh()
    # Then it says why the gauges stay empty, once
    (warning,) = caplog.records
    assert "disable_metrics_collector" in warning.getMessage()


@pytest.mark.usefixtures("require_rabbitmq")
async def test_the_default_vhost_is_addressed_as_percent_2f() -> None:
    # "/" must reach the API as %2F: a 404 (vhost not found) would raise here
    source = ManagementSource(f"http://guest:guest@{_mgmt_host()}", "/", "no-such-prefix")
    try:
        assert await source.fetch() == []
    finally:
        await source.close()


async def test_management_errors_never_carry_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a management URL with a secret, where nothing listens
    secret = "depth-Secret-4711"
    url = f"http://monitor:{secret}@127.0.0.1:{free_port()}"
    config = make_config("amqp://g:g@127.0.0.1/", management_url=url)
    registry = CollectorRegistry()
    monitor = QueueDepthMonitor(config, None, registry)  # type: ignore[arg-type]
    caplog.set_level(logging.DEBUG)
    # When a refresh fails
    stop = asyncio.Event()
    stop.set()
    await monitor.refresh()
    await monitor.run(stop)  # stopped already: only closes its HTTP session
    # Then the failure is logged and counted, without the secret
    assert _value(registry, "sendqueue_queue_stats_errors_total", source="management") == 1
    assert "queue statistics (management) unavailable" in caplog.text
    assert secret not in caplog.text


async def test_run_refreshes_until_stopped(
    connection: AbstractRobustConnection, amqp_url: str
) -> None:
    config = make_config(amqp_url)
    await _declare_and_fill(connection, config, ready=2)
    registry = CollectorRegistry()
    stop = asyncio.Event()
    task = asyncio.create_task(QueueDepthMonitor(config, connection, registry).run(stop))
    deadline = time.monotonic() + 10
    while _value(registry, "sendqueue_queue_messages", **work("ready")) != 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(task, 5)


def _mgmt_host() -> str:
    return rabbit.MGMT_URL.split("//", 1)[1]


def _count_channels(connection: AbstractRobustConnection) -> list[int]:
    """Counts the channels opened on the connection from now on (in the list's one item)."""
    opened = [0]
    open_channel = connection.channel

    def counting_channel(*args: object, **kwargs: object) -> object:
        opened[0] += 1
        return open_channel(*args, **kwargs)  # type: ignore[arg-type]

    connection.channel = counting_channel  # type: ignore[assignment]
    return opened


async def test_the_senders_status_refreshes_keep_one_channel(
    connection: AbstractRobustConnection, amqp_url: str
) -> None:
    from types import SimpleNamespace

    from sendqueue.services.sender.metrics import SenderMetrics
    from sendqueue.services.sender.status import StatusReporter

    # Given the sender's status reporter over a work queue holding 1 job, and the channels
    # opened on its connection counted: aio-pika 10 keeps a callback of every channel ever
    # opened on its connection (4-16 KB each), and a channel a refresh grew an idle sender
    # by ~1 KB/s
    config = make_config(amqp_url)
    await _declare_and_fill(connection, config, ready=1)
    opened = _count_channels(connection)
    registry = CollectorRegistry()
    reporter = StatusReporter(
        connection=connection,
        names=Names(PREFIX),
        publisher=None,  # type: ignore[arg-type]  # not used by a refresh
        consumers=[SimpleNamespace(name="pacs1")],  # type: ignore[list-item]
        metrics=SenderMetrics(registry),
        interval=1.0,
    )
    # When it refreshes the queue's depth 50 times
    for _ in range(50):
        await reporter._refresh_ready()
    # Then one channel served them all, and the gauge is current
    assert opened[0] == 1
    assert registry.get_sample_value("sendqueue_work_queue_ready", {"destination": "pacs1"}) == 1


async def test_queue_counts_reuse_one_channel_for_present_queues(
    connection: AbstractRobustConnection, amqp_url: str
) -> None:
    from sendqueue.shared.queue_counts import QueueCounts

    config = make_config(amqp_url)
    await _declare_and_fill(connection, config, ready=2)
    opened = _count_channels(connection)
    counts = QueueCounts(connection)
    try:
        # When a queue is counted 200 times, then a missing one, then the first again
        results = [await counts.declared(f"{PREFIX}.work.pacs1") for _ in range(200)]
        missing = await counts.declared(f"{PREFIX}.work.nowhere")
        again = await counts.declared(f"{PREFIX}.work.pacs1")
    finally:
        await counts.close()
    # Then every count is current, the missing one is None, and two channels were opened:
    # the first, and one after the 404 closed it
    assert {r.message_count for r in results if r is not None} == {2} and None not in results
    assert missing is None and again is not None and again.message_count == 2
    assert opened[0] == 2


async def test_the_stats_timestamp_starts_at_the_services_start_not_0() -> None:
    # A scrape before the first refresh must not read as statistics stale since 1970
    # (SendqueueQueueStatsStale would blame the broker for a retry service starting).
    config = make_config("amqp://g:g@127.0.0.1/")
    registry = CollectorRegistry()
    before = time.time()
    QueueDepthMonitor(config, None, registry, source=FakeSource())  # type: ignore[arg-type]
    stamp = _value(registry, "sendqueue_queue_stats_timestamp_seconds")
    assert stamp is not None and before <= stamp <= time.time()
