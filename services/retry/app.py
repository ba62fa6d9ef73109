"""Retry service wiring: failure router, parking queue and index, admin API, operator state.

Several retry processes may run on one config: one at a time, the holder of RabbitMQ's
lease (shared/lease.py), routes failures and serves the admin API; the others wait as
standbys (standby.py) and take over when it goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

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
from sendqueue.services.retry.standby import announce_active, standby_app
from sendqueue.services.retry.status_board import StatusBoard
from sendqueue.services.retry.strays import RemovedDestinations, follow_unroutable
from sendqueue.shared.amqp import BROKER_ERRORS
from sendqueue.shared.cert_expiry import CertificateExpiry
from sendqueue.shared.config import Config
from sendqueue.shared.lease import Lease, either
from sendqueue.shared.lifecycle import ServiceParts
from sendqueue.shared.metrics_server import make_app, start_server
from sendqueue.shared.orthanc import OrthancClient
from sendqueue.shared.register import Registers
from sendqueue.shared.resolver import Resolver
from sendqueue.shared.send_api import make_send_handler
from sendqueue.shared.state_lock import hold_state_dir
from sendqueue.shared.topology import Names, prepare_bus

log = logging.getLogger(__name__)

#: Wait between a term lost and waiting for the lease again (no hot loop while RabbitMQ
#: is failing over).
_TERM_PAUSE = 1.0
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
    registry = registry or CollectorRegistry()
    active = Gauge(
        "sendqueue_retry_active",
        "1 while this retry process is the one routing failures and serving the admin API,"
        " 0 while it waits as a standby.",
        registry=registry,
    )
    lease = Lease(config.amqp.url, config.amqp.prefix, "retry")
    async with ServiceParts() as parts:
        conn = await parts.connection(config.amqp.url, "sendqueue-retry-standby")
        registers = Registers(conn, config.amqp.prefix)
        # The topology (with the lease's token) before the first wait: a fresh install
        # whose retry starts first.
        await prepare_bus(conn, config)
        while not stop.is_set():
            standby = await start_server(standby_app(registry, registers), config.retry.listen, tls)
            try:
                lost = await lease.acquire(stop)
            finally:
                await standby.cleanup()
            if lost is None:
                break
            active.set(1)
            try:
                announcing = asyncio.create_task(
                    announce_active(registers, config.retry.listen, lease.identity, tls=bool(tls))
                )
                try:
                    await _active_term(config, stop, lost, registry, tls)
                finally:
                    announcing.cancel()
            except BROKER_ERRORS as exc:
                # RabbitMQ failed the take-over or the term (a node lost, a queue's leader
                # moving): hand the lease on, wait as a standby, take it again if offered.
                log.warning("retry term ended, RabbitMQ unavailable (%r); waiting again", exc)
                lost.set()
            finally:
                active.set(0)
                await lease.release()
            if lost.is_set() and not stop.is_set():
                log.warning("lost the retry lease (RabbitMQ connection gone); waiting again")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _TERM_PAUSE)


async def _active_term(
    config: Config,
    stop: asyncio.Event,
    lost: asyncio.Event,
    registry: CollectorRegistry,
    tls: ssl.SSLContext | None,
) -> None:
    """Everything the active process does, until stopped or the lease is lost. Its metrics
    live in a registry of the term, so that a later term registers them afresh."""
    term = CollectorRegistry()
    registry.register(term)
    try:
        # The files in state_dir stay local (see docs/architecture.md, "High availability"):
        # two processes on one host share the directory, only the active one opens them.
        with hold_state_dir(config.retry.state_dir, "retry"):
            async with ServiceParts() as parts, either(stop, lost) as until:
                await _serve(parts, config, until, term, exposed=registry, tls=tls)
    finally:
        registry.unregister(term)


async def _serve(
    parts: ServiceParts,
    config: Config,
    stop: asyncio.Event,
    registry: CollectorRegistry,
    *,
    exposed: CollectorRegistry,
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
    # The index is rebuilt from the parking queue at every take-over: the previous active
    # process may have run on another host. The pass also drops a second copy of an item
    # parked twice (a process killed between parking a failure and acking it). A requeue
    # this host's journal says was interrupted is finished before serving, so that the
    # admin API never lists an item already requeued; otherwise the pass runs in the
    # background (it publishes: a broker alarm must not hold up the start).
    rebuild = parking.run_pass(lambda _item: "keep", action="rebuild")
    if index.has_requeued():
        log.info("finishing an interrupted requeue")
        await rebuild
    else:
        log.info("rebuilding the parked index from the parking queue")
        parts.task(_quiet(rebuild), "parked-index-rebuild")
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
    # Registers on a connection of their own: a write held by a broker alarm blocks its
    # connection, which must then be neither the consumers' nor the publisher's.
    state_conn = await parts.connection(config.amqp.url, "sendqueue-retry-state")
    registers = Registers(state_conn, config.amqp.prefix)
    strays = RemovedDestinations(config.retry.state_dir, names, parking, registers)
    await strays.drain(consume_conn, destinations)
    parts.task(strays.remembered, "remember-destinations")
    await follow_unroutable(consume_conn, names, parking)
    await follow_captured(consume_conn, names, audit)
    await cleanup.follow(consume_conn, names)
    parts.task(watch_index(parking, metrics), "parked-index-watch")
    depth = QueueDepthMonitor(config, consume_conn, registry)
    parts.task(depth.run(stop), "queue-gauges")

    def audit_send(_request: web.Request, destination: str, count: int) -> None:
        audit.record(OPERATOR.get(), "send", {"destination": destination}, count)

    app = make_app(exposed, lambda: {"amqp": not consume_conn.is_closed}, max_body=MAX_BODY)
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


async def _quiet(work: Coroutine[Any, Any, Any]) -> None:
    """A background pass whose failure the index watch makes up for (it rebuilds when the
    index and the queue disagree)."""
    try:
        await work
    except BROKER_ERRORS as exc:
        log.warning("rebuilding the parked index failed (%r); the index watch retries", exc)
