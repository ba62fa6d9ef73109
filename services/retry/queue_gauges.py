"""Queue depth and consumer gauges, refreshed by a background task.

The /metrics handler runs collect() synchronously on the event loop, so it must never wait
on the broker: a task polls every `amqp.depth_interval` and sets plain gauges instead.

Two sources, chosen by `amqp.management_url`:

- the management HTTP API: ready, unacked and consumers of every queue under the prefix, in
  one request. Its numbers are statistics, up to ~5 s old (collect_statistics_interval).
- AMQP passive declares of the queues the config names: current, but ready and consumers
  only (queue.declare-ok does not count unacknowledged messages), so no unacked series.

When a refresh fails the gauges are emptied: no data is better than stale data that looks
current (a stale "0 consumers" or "0 ready" would page, or silence, the wrong alert).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
from aio_pika.abc import AbstractRobustConnection
from prometheus_client import CollectorRegistry, Counter, Gauge
from yarl import URL

from sendqueue.shared.config import Config
from sendqueue.shared.queue_counts import QueueCounts
from sendqueue.shared.topology import Names, jittered_ttls

log = logging.getLogger(__name__)

#: Longest one refresh may take; a broker that is reconnecting would otherwise hold it forever.
_REFRESH_TIMEOUT = 10.0
#: The largest management API answer read (about 200 bytes a queue).
_MAX_ANSWER_BYTES = 32 * 1024 * 1024
#: Rounds in a row without a single count before saying so: a new quorum queue has no
#: statistics for its first few seconds, a broker whose collector is off never has any.
_BLANK_ROUNDS = 6


@dataclass(frozen=True)
class QueueStats:
    name: str
    ready: int | None
    #: None when the source cannot tell (AMQP passive declares).
    unacked: int | None
    consumers: int | None


class Source(Protocol):
    label: str

    async def fetch(self) -> list[QueueStats]: ...

    async def close(self) -> None: ...


def classify(prefix: str, queue: str) -> tuple[str, str] | None:
    """(kind, destination) of one of our queues, None for a queue that is not ours."""
    if queue == f"{prefix}.failed":
        return "failed", ""
    if queue == f"{prefix}.parked":
        return "parked", ""
    if queue.startswith(f"{prefix}.work."):
        return "work", queue.removeprefix(f"{prefix}.work.")
    if queue.startswith(f"{prefix}.delay."):
        return "delay", ""
    return None


def configured_queues(config: Config) -> list[str]:
    """Every queue the topology declares for this config."""
    names = Names(config.amqp.prefix)
    delays = {
        names.delay(ttl)
        for delay in config.all_delays()
        for ttl in jittered_ttls(delay, config.retry.jitter)
    }
    work = [names.work_queue(d.name) for d in config.destinations]
    return [*work, names.failed_queue, names.parked_queue, *sorted(delays)]


def vhost_of(amqp_url: str) -> str:
    """The vhost an AMQP URL names, decoded the way aiormq decodes it."""
    path = URL(amqp_url).path
    return "/" if path in ("", "/") else path[1:].replace("%2F", "/")


class ManagementSource:
    """GET /api/queues/{vhost} of the RabbitMQ management API."""

    label = "management"

    def __init__(self, management_url: str, vhost: str, prefix: str) -> None:
        url = URL(management_url)
        # Credentials go into a header and out of the URL, so that no error message or
        # log line that quotes the URL can carry the password.
        self._headers = {"Authorization": _basic_auth(url.user, url.password)} if url.user else {}
        base = str(url.with_user(None).with_password(None)).rstrip("/")
        self._url = f"{base}/api/queues/{quote(vhost, safe='')}"
        self._prefix = prefix
        self._session: aiohttp.ClientSession | None = None

    async def fetch(self) -> list[QueueStats]:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers)
        params = {"columns": "name,messages_ready,messages_unacknowledged,consumers"}
        timeout = aiohttp.ClientTimeout(total=_REFRESH_TIMEOUT)
        async with self._session.get(self._url, params=params, timeout=timeout) as response:
            response.raise_for_status()
            # Bounded: a proxy or a broker gone wrong must not fill the retry service's
            # memory (the total timeout above bounds the time).
            raw = await response.content.read(_MAX_ANSWER_BYTES + 1)
            while len(raw) <= _MAX_ANSWER_BYTES and (
                more := await response.content.read(_MAX_ANSWER_BYTES + 1 - len(raw))
            ):
                raw += more
        if len(raw) > _MAX_ANSWER_BYTES:
            raise ValueError(f"the management API's answer exceeds {_MAX_ANSWER_BYTES} bytes")
        queues = json.loads(raw)
        if not isinstance(queues, list) or not all(
            isinstance(q, dict) and isinstance(q.get("name"), str) for q in queues
        ):
            raise ValueError(f"the management API answered no queue list: {raw[:80]!r}")
        return [_from_management(q) for q in queues if classify(self._prefix, q["name"])]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _basic_auth(user: str | None, password: str | None) -> str:
    token = base64.b64encode(f"{user or ''}:{password or ''}".encode()).decode()
    return f"Basic {token}"


def _from_management(queue: dict[str, Any]) -> QueueStats:
    # A queue's counters are missing until the broker has emitted its first statistics.
    def count(key: str) -> int | None:
        value = queue.get(key)
        return int(value) if isinstance(value, int) else None

    return QueueStats(
        name=str(queue["name"]),
        ready=count("messages_ready"),
        unacked=count("messages_unacknowledged"),
        consumers=count("consumers"),
    )


class AmqpSource:
    """Passive declares of the configured queues, on a channel of their own."""

    label = "amqp"

    def __init__(self, connection: AbstractRobustConnection, queues: Iterable[str]) -> None:
        self._queues = list(queues)
        self._counts = QueueCounts(connection)

    async def fetch(self) -> list[QueueStats]:
        found: list[QueueStats] = []
        for name in self._queues:
            result = await self._counts.declared(name)
            if result is not None:  # a missing queue is skipped
                found.append(QueueStats(name, result.message_count, None, result.consumer_count))
        return found

    async def close(self) -> None:
        await self._counts.close()


def source_for(config: Config, connection: AbstractRobustConnection) -> Source:
    """The management API when `amqp.management_url` is set, AMQP passive declares otherwise."""
    amqp = config.amqp
    if amqp.management_url:
        return ManagementSource(amqp.management_url, vhost_of(amqp.url), amqp.prefix)
    return AmqpSource(connection, configured_queues(config))


class QueueDepthMonitor:
    """Refreshes sendqueue_queue_messages / sendqueue_queue_consumers until stopped."""

    def __init__(
        self,
        config: Config,
        connection: AbstractRobustConnection,
        registry: CollectorRegistry,
        *,
        source: Source | None = None,
    ) -> None:
        self._prefix = config.amqp.prefix
        self._interval = float(config.amqp.depth_interval)
        self._source = source or source_for(config, connection)
        self._messages = Gauge(
            "sendqueue_queue_messages",
            "Messages in a queue of ours, by state (ready|unacked).",
            ["queue", "kind", "destination", "state"],
            registry=registry,
        )
        self._consumers = Gauge(
            "sendqueue_queue_consumers",
            "Consumers of a queue of ours.",
            ["queue", "kind", "destination"],
            registry=registry,
        )
        self._errors = Counter(
            "sendqueue_queue_stats_errors",
            "Queue statistics refreshes that failed (the queue gauges are empty meanwhile).",
            ["source"],
            registry=registry,
        )
        self._updated = Gauge(
            "sendqueue_queue_stats_timestamp_seconds",
            "Unix time of the last successful queue statistics refresh.",
            registry=registry,
        )
        # From the start, not 0: a scrape before the first refresh must not read as
        # statistics 56 years stale (SendqueueQueueStatsStale counts from here).
        self._updated.set(time.time())
        self._shown: dict[Gauge, set[tuple[str, ...]]] = {
            self._messages: set(),
            self._consumers: set(),
        }
        self._failing = False
        self._blank_rounds = 0

    @property
    def source(self) -> Source:
        return self._source

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.refresh()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._interval)
        finally:
            await self._source.close()

    async def refresh(self) -> None:
        """One round: read every queue's counts and replace the gauges' series."""
        try:
            async with asyncio.timeout(_REFRESH_TIMEOUT):
                stats = await self._source.fetch()
        except Exception as exc:
            self._errors.labels(self._source.label).inc()
            self._show([])
            # Once per outage at WARNING: the broker may stay away for hours.
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "queue statistics (%s) unavailable: %r", self._source.label, exc)
            self._failing = True
            return
        if self._failing:
            log.info("queue statistics (%s) available again", self._source.label)
            self._failing = False
        self._show(stats)
        self._updated.set(time.time())
        self._check_blank(stats)

    def _check_blank(self, stats: list[QueueStats]) -> None:
        if not stats or any(q.ready is not None for q in stats):
            self._blank_rounds = 0
            return
        self._blank_rounds += 1
        if self._blank_rounds == _BLANK_ROUNDS:
            log.warning(
                "queue statistics (%s) list %d queues but no message counts: is the broker's "
                'management_agent.disable_metrics_collector on? Set amqp.management_url = "" '
                "to count through AMQP instead",
                self._source.label,
                len(stats),
            )

    def _show(self, stats: list[QueueStats]) -> None:
        messages: dict[tuple[str, ...], int] = {}
        consumers: dict[tuple[str, ...], int] = {}
        for queue in stats:
            kind, destination = classify(self._prefix, queue.name) or ("", "")
            if not kind:
                continue
            for state, value in (("ready", queue.ready), ("unacked", queue.unacked)):
                if value is not None:
                    messages[(queue.name, kind, destination, state)] = value
            if queue.consumers is not None:
                consumers[(queue.name, kind, destination)] = queue.consumers
        self._replace(self._messages, messages)
        self._replace(self._consumers, consumers)

    def _replace(self, gauge: Gauge, values: dict[tuple[str, ...], int]) -> None:
        # Between two awaits, so a scrape sees the old set or the new one, never a mix.
        for labels in self._shown[gauge] - values.keys():
            gauge.remove(*labels)
        for labels, value in values.items():
            gauge.labels(*labels).set(value)
        self._shown[gauge] = set(values)
