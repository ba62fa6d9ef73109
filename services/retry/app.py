"""Retry service wiring: failure router, parking queue and index, admin API, operator state."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from sendqueue.services.retry.admin.api import MAX_BODY, add_admin_api
from sendqueue.services.retry.admin.audit import AuditLog
from sendqueue.services.retry.admin.auth import OPERATOR, check_admin_exposure
from sendqueue.services.retry.admin.console_page import check_console_files
from sendqueue.services.retry.admin.hardening import tls_context
from sendqueue.services.retry.admin.overview import QueueOverview
from sendqueue.services.retry.cancel import Canceller
from sendqueue.services.retry.captured import follow_captured
from sendqueue.services.retry.cleanup import GatewayCleanup
from sendqueue.services.retry.delays import DelayLedger
from sendqueue.services.retry.failures import FailureRouter
from sendqueue.services.retry.metrics import RetryMetrics
from sendqueue.services.retry.parking.index import ParkedIndex
from sendqueue.services.retry.parking.queue import Parking
from sendqueue.services.retry.parking.watch import watch_index
from sendqueue.services.retry.pauses import PauseStore
from sendqueue.services.retry.queue_gauges import QueueDepthMonitor
from sendqueue.services.retry.status_board import StatusBoard
from sendqueue.services.retry.strays import RemovedDestinations, follow_unroutable
from sendqueue.shared.cert_expiry import CertificateExpiry
from sendqueue.shared.config import Config
from sendqueue.shared.lifecycle import ServiceParts
from sendqueue.shared.metrics_server import make_app
from sendqueue.shared.orthanc import OrthancClient
from sendqueue.shared.resolver import Resolver
from sendqueue.shared.send_api import make_send_handler
from sendqueue.shared.state_lock import hold_state_dir
from sendqueue.shared.topology import Names, prepare_bus

log = logging.getLogger(__name__)

#: Failure reports taken at once: routing one is a publish and a SQLite write at most.
_PREFETCH = 32
#: Deliveries of an instance still incomplete after this long are forgotten (never deleted).
_CLEANUP_MEMORY = 90 * 86_400.0


async def run_retry(
    config: Config, stop: asyncio.Event, registry: CollectorRegistry | None = None
) -> None:
    check_admin_exposure(config)
    check_console_files()
    tls = tls_context(config.retry)  # an unreadable certificate stops the start-up here
    with hold_state_dir(config.retry.state_dir, "retry"):
        async with ServiceParts() as parts:
            await _serve(parts, config, stop, registry or CollectorRegistry(), tls)


async def _serve(
    parts: ServiceParts,
    config: Config,
    stop: asyncio.Event,
    registry: CollectorRegistry,
    tls: ssl.SSLContext | None,
) -> None:
    metrics = RetryMetrics(registry)
    if config.retry.tls_cert:
        # The admin listen's certificate expires like any other: the same gauge and alert.
        expiry = CertificateExpiry(registry, service="retry")
        expiry.watch(config.retry.tls_cert, cert="admin-listen")
    names = Names(config.amqp.prefix)
    state_dir = Path(config.retry.state_dir)
    destinations = [d.name for d in config.destinations]
    # Opened before the connections, so closed after them: no consumer is left running
    # against a closed database.
    index = parts.closing(ParkedIndex(state_dir / "parked.sqlite3"))
    audit = parts.closing(AuditLog(state_dir / "audit.sqlite3"))
    ledger = parts.closing(DelayLedger(state_dir / "delays.sqlite3"))
    orthanc = parts.closing(OrthancClient(config.orthanc))
    cleanup = parts.closing(
        GatewayCleanup(
            path=state_dir / "cleanup.sqlite3", orthanc=orthanc, audit=audit, metrics=metrics
        )
    )
    cleanup.prune(_CLEANUP_MEMORY)
    consume_conn = await parts.connection(config.amqp.url, "sendqueue-retry-consume")
    publish_conn = await parts.connection(config.amqp.url, "sendqueue-retry-publish")
    publisher = await prepare_bus(publish_conn, config)
    # Follow the senders' reports before broadcasting the control state: senders
    # answer each broadcast with a fresh report, so the status is known at once.
    board = StatusBoard(config.amqp.depth_interval)
    await board.follow(consume_conn, names)
    pauses = parts.closing(PauseStore(config.retry.state_dir, names, publisher))
    await pauses.load(consume_conn)
    parking = Parking(
        names=names,
        consume_conn=consume_conn,
        publisher=publisher,
        index=index,
        metrics=metrics,
        destinations=destinations,
    )
    if index.has_requeued():
        # The last pass died after its requeues were confirmed, maybe before the
        # parked originals were acked: finish it before serving, so that nothing is
        # sent twice and the admin API never lists an item already requeued.
        log.info("finishing an interrupted requeue")
        await parking.run_pass(lambda _item: "keep", action="rebuild")
    router = FailureRouter(
        config=config,
        names=names,
        publisher=publisher,
        parking=parking,
        metrics=metrics,
        ledger=ledger,
    )
    channel = await consume_conn.channel()
    await channel.set_qos(prefetch_count=_PREFETCH)
    failed = await channel.declare_queue(names.failed_queue, passive=True)
    await failed.consume(router.on_message)
    await RemovedDestinations(config.retry.state_dir, names, parking).drain(
        consume_conn, destinations
    )
    await follow_unroutable(consume_conn, names, parking)
    await follow_captured(consume_conn, names, audit)
    await cleanup.follow(consume_conn, names)
    parts.task(watch_index(parking, metrics), "parked-index-watch")
    depth = QueueDepthMonitor(config, consume_conn, registry)
    parts.task(depth.run(stop), "queue-gauges")

    def audit_send(_request: web.Request, destination: str, count: int) -> None:
        audit.record(OPERATOR.get(), "send", {"destination": destination}, count)

    app = make_app(registry, lambda: {"amqp": not consume_conn.is_closed}, max_body=MAX_BODY)
    add_admin_api(
        app,
        config=config,
        parking=parking,
        audit=audit,
        pauses=pauses,
        overview=QueueOverview(
            config=config,
            names=names,
            source=depth.source,
            index=index,
            pauses=pauses,
            board=board,
            ledger=ledger,
        ),
        send=make_send_handler(
            config,
            on_done=audit_send,
            resolver=Resolver(orthanc),
            publisher=publisher,
            names=names,
            on_queued=lambda job: metrics.queued.labels(job.destination, "admin").inc(),
        ),
        canceller=Canceller(
            config=config,
            names=names,
            consume_conn=consume_conn,
            publisher=publisher,
            parking=parking,
            ledger=ledger,
        ),
    )
    await parts.server(app, config.retry.listen, tls)
    scheme = "https" if tls else "http"
    log.info("retry running; admin API on %s://%s/", scheme, config.retry.listen)
    await stop.wait()
