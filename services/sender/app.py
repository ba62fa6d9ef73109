"""Sender wiring: connections, one consumer per destination, HTTP, graceful shutdown."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

from aio_pika.abc import AbstractRobustConnection
from prometheus_client import CollectorRegistry

from sendqueue.services.sender.certificates import watch_destination_certificates
from sendqueue.services.sender.commitment import Commitments, share_reports
from sendqueue.services.sender.consumer import DestinationConsumer
from sendqueue.services.sender.destinations import create_destination
from sendqueue.services.sender.fetch import InstanceFetcher
from sendqueue.services.sender.fleet import warn_about_fleet
from sendqueue.services.sender.metrics import SenderMetrics
from sendqueue.services.sender.status import StatusReporter
from sendqueue.services.sender.windows import Clock, WindowKeeper, utc_now
from sendqueue.shared.amqp import Publisher
from sendqueue.shared.cert_expiry import CertificateExpiry
from sendqueue.shared.config import Config, DicomDestinationConfig
from sendqueue.shared.control import follow_control, read_control_state
from sendqueue.shared.lifecycle import ServiceParts
from sendqueue.shared.metrics_server import make_app
from sendqueue.shared.orthanc import OrthancClient
from sendqueue.shared.schemas import ControlState
from sendqueue.shared.source_health import OrthancHealth
from sendqueue.shared.topology import Names, prepare_bus

log = logging.getLogger(__name__)


def prepare_spool(configured: str) -> Path:
    """A spool dir of our own; leftovers of dead sender processes are removed."""
    root = Path(configured or tempfile.gettempdir()) / "sendqueue-spool"
    root.mkdir(parents=True, exist_ok=True)
    for child in root.iterdir():
        if child.name.isdigit() and not _pid_alive(int(child.name)):
            shutil.rmtree(child, ignore_errors=True)
    own = root / str(os.getpid())
    own.mkdir(exist_ok=True)
    return own


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def run_sender(
    config: Config,
    stop: asyncio.Event,
    registry: CollectorRegistry | None = None,
    clock: Clock = utc_now,
    *,
    listen_socket: socket.socket | None = None,
) -> None:
    """`listen_socket`: serve metrics and health there instead of [sender] listen (a
    sender process under a supervising one, services/sender/processes.py)."""
    async with ServiceParts() as parts:
        await _serve(parts, config, stop, registry or CollectorRegistry(), clock, listen_socket)


async def _serve(
    parts: ServiceParts,
    config: Config,
    stop: asyncio.Event,
    registry: CollectorRegistry,
    clock: Clock,
    listen_socket: socket.socket | None,
) -> None:
    metrics = SenderMetrics(registry)
    expiry = CertificateExpiry(registry, service="sender")
    watch_destination_certificates(expiry, config.destinations)
    names = Names(config.amqp.prefix)
    consume_conn = await parts.connection(config.amqp.url, "sendqueue-sender-consume")
    publish_conn = await parts.connection(config.amqp.url, "sendqueue-sender-publish")
    source_health = OrthancHealth(registry)
    orthanc = parts.closing(OrthancClient(config.orthanc, on_answer=source_health.saw))
    parts.task(source_health.watch(orthanc), "orthanc-health")
    spool = prepare_spool(config.sender.spool_dir)
    parts.callback(shutil.rmtree, spool, ignore_errors=True)
    metrics.watch_spool(spool)
    publisher = await prepare_bus(publish_conn, config)
    await warn_about_fleet(consume_conn, names, config.destinations)
    control = await read_control_state(consume_conn, names)
    commitments = await _commitments(parts, config, consume_conn, publisher, names)
    windows = {d.name: w for d in config.destinations if (w := d.window()) is not None}
    keeper = WindowKeeper(windows, clock)
    keeper.follow(control)
    consumers: list[DestinationConsumer] = []
    memory_limit = config.sender.in_memory_mb * 1024 * 1024
    for dest_config in config.destinations:
        destination = parts.closing(create_destination(dest_config, source=config.orthanc))
        fetcher = InstanceFetcher(config.orthanc, memory_limit)
        parts.callback(fetcher.close)
        consumer = DestinationConsumer(
            destination,
            names=names,
            publisher=publisher,
            orthanc=orthanc,
            config=config.sender,
            spool_dir=spool,
            metrics=metrics,
            commitments=commitments,
            fetcher=fetcher,
        )
        paused = dest_config.name in control.paused
        await keeper.add(consumer)
        await consumer.start(await consume_conn.channel(), paused=paused)
        consumers.append(consumer)
    reporter = StatusReporter(
        connection=consume_conn,
        names=names,
        publisher=publisher,
        consumers=consumers,
        metrics=metrics,
        interval=config.amqp.depth_interval,
    )
    for consumer in consumers:
        consumer.on_change = functools.partial(reporter.report, consumer)
    await follow_control(
        consume_conn, names, functools.partial(_apply, consumers, reporter, keeper)
    )
    parts.task(reporter.run(), "status-reporter")
    parts.task(keeper.run(), "send-windows")

    def health() -> dict[str, bool]:
        return {
            "amqp": not consume_conn.is_closed and not publish_conn.is_closed,
            # A job held past any send's bounds: a hung consumer must not look healthy.
            "consumers": not any(consumer.stuck() for consumer in consumers),
        }

    await parts.server(make_app(registry, health), config.sender.listen, sock=listen_socket)
    log.info("sender running: %d destination(s)", len(consumers))
    await stop.wait()
    log.info("sender stopping: finishing in-flight sends")
    grace = config.sender.shutdown_grace
    await asyncio.gather(*(c.stop(grace) for c in consumers))


async def _commitments(
    parts: ServiceParts,
    config: Config,
    connection: AbstractRobustConnection,
    publisher: Publisher,
    names: Names,
) -> Commitments | None:
    """Storage commitment, when a destination asks for it: the report listener (if this
    process gets the port) and the sharing of reports between sender processes."""
    asking = [
        d
        for d in config.destinations
        if isinstance(d, DicomDestinationConfig) and d.storage_commitment
    ]
    if not asking:
        return None
    commitments = Commitments(listen=config.sender.commitment_listen)
    await commitments.start(asking[0].calling_aet)
    parts.callback(commitments.stop)
    await share_reports(commitments, connection, publisher, names)
    return commitments


async def _apply(
    consumers: list[DestinationConsumer],
    reporter: StatusReporter,
    keeper: WindowKeeper,
    state: ControlState,
) -> None:
    """An operator's pause/resume broadcast by the retry service."""
    keeper.follow(state)
    for consumer in consumers:
        paused = consumer.name in state.paused
        if paused != (consumer.state == "paused"):
            log.warning("%s: %s by an operator", consumer.name, "paused" if paused else "resumed")
            await consumer.set_paused(paused)
    # A broadcast also means a retry service (re)started: tell it how we are.
    for consumer in consumers:
        await reporter.report(consumer)
