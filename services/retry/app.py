"""Retry service wiring: failure router, parking queue and index, admin API, operator state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from sendqueue.services.retry.admin import MAX_BODY, OPERATOR, AdminApi
from sendqueue.services.retry.audit import AuditLog
from sendqueue.services.retry.control import PauseStore, StatusBoard
from sendqueue.services.retry.depth import QueueDepthMonitor
from sendqueue.services.retry.index import ParkedIndex
from sendqueue.services.retry.ledger import DelayLedger
from sendqueue.services.retry.metrics import RetryMetrics
from sendqueue.services.retry.parking import Parking
from sendqueue.services.retry.queues import QueueOverview
from sendqueue.services.retry.removed import RemovedDestinations, follow_unroutable
from sendqueue.services.retry.router import FailureRouter
from sendqueue.shared.amqp import connect
from sendqueue.shared.config import Config, is_loopback, parse_listen
from sendqueue.shared.errors import ConfigError
from sendqueue.shared.http import make_app, start_server
from sendqueue.shared.orthanc import OrthancClient
from sendqueue.shared.resolver import Resolver
from sendqueue.shared.send_api import make_send_handler
from sendqueue.shared.state_lock import hold_state_dir
from sendqueue.shared.topology import Names, prepare_bus

log = logging.getLogger(__name__)

#: How often the parked gauge is refreshed and the index compared with the queue.
_CHECK_INTERVAL = 15.0


def check_admin_exposure(config: Config) -> None:
    host, _ = parse_listen(config.retry.listen)
    if not config.retry.tokens() and not is_loopback(host):
        raise ConfigError(
            f"retry.listen is {config.retry.listen!r}, not a loopback address, and no "
            "admin token is set: refusing to expose the admin API without authentication "
            "(set retry.admin_token, retry.admin_tokens or SENDQUEUE_ADMIN_TOKEN)"
        )


async def run_retry(
    config: Config, stop: asyncio.Event, registry: CollectorRegistry | None = None
) -> None:
    check_admin_exposure(config)
    with hold_state_dir(config.retry.state_dir, "retry"):
        await _serve(config, stop, registry)


async def _serve(config: Config, stop: asyncio.Event, registry: CollectorRegistry | None) -> None:
    registry = registry or CollectorRegistry()
    metrics = RetryMetrics(registry)
    names = Names(config.amqp.prefix)
    state_dir = Path(config.retry.state_dir)
    consume_conn = await connect(config.amqp.url, "sendqueue-retry-consume")
    publish_conn = await connect(config.amqp.url, "sendqueue-retry-publish")
    index = ParkedIndex(state_dir / "parked.sqlite3")
    audit = AuditLog(state_dir / "audit.sqlite3")
    ledger = DelayLedger(state_dir / "delays.sqlite3")
    orthanc = OrthancClient(config.orthanc)
    runner = None
    tasks: list[asyncio.Task[None]] = []
    try:
        publisher = await prepare_bus(publish_conn, config)
        # Follow the senders' reports before broadcasting the control state: senders
        # answer each broadcast with a fresh report, so the status is known at once.
        board = StatusBoard(config.amqp.depth_interval)
        await board.follow(consume_conn, names)
        pauses = PauseStore(config.retry.state_dir, names, publisher)
        await pauses.load(consume_conn)
        parking = Parking(
            names=names,
            consume_conn=consume_conn,
            publisher=publisher,
            index=index,
            metrics=metrics,
            destinations=[d.name for d in config.destinations],
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
        await channel.set_qos(prefetch_count=32)
        failed = await channel.declare_queue(names.failed_queue, passive=True)
        tag = await failed.consume(router.on_message)
        removed = RemovedDestinations(config.retry.state_dir, names, parking)
        await removed.drain(consume_conn, [d.name for d in config.destinations])
        await follow_unroutable(consume_conn, names, parking)
        tasks.append(asyncio.create_task(_watch_index(parking, metrics)))
        depth = QueueDepthMonitor(config, consume_conn, registry)
        tasks.append(asyncio.create_task(depth.run(stop)))

        def audit_send(request: web.Request, destination: str, count: int) -> None:
            audit.record(OPERATOR.get(), "send", {"destination": destination}, count)

        send = make_send_handler(
            config,
            on_done=audit_send,
            resolver=Resolver(orthanc),
            publisher=publisher,
            names=names,
            on_queued=lambda job: metrics.queued.labels(job.destination, "admin").inc(),
        )
        overview = QueueOverview(
            config=config,
            names=names,
            source=depth.source,
            index=index,
            pauses=pauses,
            board=board,
            ledger=ledger,
        )
        app = make_app(registry, lambda: {"amqp": not consume_conn.is_closed}, max_body=MAX_BODY)
        AdminApi(
            config=config, parking=parking, audit=audit, pauses=pauses, overview=overview, send=send
        ).register(app)
        runner = await start_server(app, config.retry.listen)
        log.info("retry running; admin API on http://%s/", config.retry.listen)
        await stop.wait()
        with contextlib.suppress(Exception):
            await failed.cancel(tag)
    finally:
        for task in tasks:
            task.cancel()
        # Let the tasks finish their cleanup (the depth monitor closes its HTTP session).
        await asyncio.gather(*tasks, return_exceptions=True)
        if runner:
            await runner.cleanup()
        await orthanc.close()
        for conn in (consume_conn, publish_conn):
            with contextlib.suppress(Exception):
                await conn.close()
        index.close()
        audit.close()
        ledger.close()


async def _watch_index(parking: Parking, metrics: RetryMetrics) -> None:
    """Keep the gauge fresh; rebuild the index when it disagrees with the queue twice.

    A round during which anything was parked or a pass ran proves nothing (the index
    trails the queue by the parks in flight), so only quiet rounds count.
    """
    mismatches = 0
    parks_before = 0
    while True:
        try:
            depth = await parking.queue_depth()
            quiet = parking.parks == parks_before and not parking.lock.locked()
            parks_before = parking.parks
            if quiet:
                mismatches = mismatches + 1 if depth != parking.index.count() else 0
            if mismatches >= 2 or (mismatches == 1 and depth and not parking.index.count()):
                log.info("parked index differs from the queue (%d messages): rebuilding", depth)
                await parking.run_pass(lambda _item: "keep", action="rebuild")
                mismatches = 0
            counts = parking.index.counts_by_destination()
            metrics.parked_items.clear()
            for destination, count in counts.items():
                metrics.parked_items.labels(destination).set(count)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("parked index check failed: %r", exc)
        await asyncio.sleep(_CHECK_INTERVAL if mismatches == 0 else 2.0)
