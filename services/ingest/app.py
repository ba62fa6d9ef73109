"""Ingest wiring: Orthanc client, the changes feed, the watch of Orthanc's jobs, metrics.

Several ingest processes may run on one config (on one host or several): one of them at
a time, the holder of RabbitMQ's lease (shared/lease.py), follows Orthanc's /changes from
the cursor kept in RabbitMQ (cursor.py) and watches Orthanc's jobs; the others wait and
take over when it goes away. Every one of them answers Orthanc's job hook.

POST /api/send is not served here: the retry service's admin API serves it, behind an
admin token and in the audit log (docs/architecture.md, "The admin surface").
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from sendqueue.services.ingest.cursor import BrokerCursors, Cursor
from sendqueue.services.ingest.feed import ChangesFeed
from sendqueue.services.ingest.job_capture import JobCapture
from sendqueue.services.ingest.job_hook import job_hook
from sendqueue.services.ingest.ledger import QueuedLedger, Resends
from sendqueue.services.ingest.metrics import IngestMetrics
from sendqueue.services.ingest.routing import Router
from sendqueue.services.ingest.take_over import TakeOver
from sendqueue.shared.config import Config
from sendqueue.shared.lease import Lease, either
from sendqueue.shared.lifecycle import ServiceParts
from sendqueue.shared.metrics_server import make_app
from sendqueue.shared.orthanc import OrthancClient
from sendqueue.shared.register import Registers
from sendqueue.shared.resolver import Resolver
from sendqueue.shared.source_health import OrthancHealth
from sendqueue.shared.topology import Names, prepare_bus

log = logging.getLogger(__name__)


async def run_ingest(
    config: Config, stop: asyncio.Event, registry: CollectorRegistry | None = None
) -> None:
    # No lock on state_dir: what ingest keeps there (the handled Orthanc job IDs, the
    # cursor file of an older version) is written by the active process only, so the
    # processes of one install on one host may share it.
    async with ServiceParts() as parts:
        await _serve(parts, config, stop, registry or CollectorRegistry())


async def _serve(
    parts: ServiceParts, config: Config, stop: asyncio.Event, registry: CollectorRegistry
) -> None:
    metrics = IngestMetrics(registry)
    names = Names(config.amqp.prefix)
    conn = await parts.connection(config.amqp.url, "sendqueue-ingest")
    source_health = OrthancHealth(registry)
    orthanc = parts.closing(OrthancClient(config.orthanc, on_answer=source_health.saw))
    parts.task(source_health.watch(orthanc), "orthanc-health")
    publisher = await prepare_bus(conn, config)
    resolver = Resolver(orthanc)
    cursors = BrokerCursors(Registers(conn, config.amqp.prefix), config.ingest.state_dir)
    router = Router(config.routes)
    # What was queued per destination (no whole-study resends): a local SQLite file, so a
    # take-over on another host starts without it (a study's next growth is resent once).
    ledger = parts.closing(
        QueuedLedger(
            Path(config.ingest.state_dir) / "queued.sqlite3",
            max_age=config.ingest.ledger_max_age,
            max_entries=config.ingest.ledger_max_entries,
        )
    )
    resends = Resends(ledger, resolver, lambda job: metrics.skipped.labels(job.destination).inc())

    def new_feed() -> ChangesFeed:
        return ChangesFeed(
            config=config.ingest,
            orthanc=orthanc,
            resolver=resolver,
            router=router,
            publisher=publisher,
            names=names,
            metrics=metrics,
            cursor=Cursor(cursors, "changes"),
            resends=resends,
        )

    capture = parts.closing(
        JobCapture(
            config=config,
            orthanc=orthanc,
            resolver=resolver,
            publisher=publisher,
            names=names,
            metrics=metrics,
        )
    )
    feeds: list[ChangesFeed] = []
    app = make_app(
        registry,
        lambda: {
            "amqp": not conn.is_closed,
            "orthanc": all(f.healthy for f in feeds[-1:]) and capture.healthy,
        },
    )
    take_over = TakeOver(capture, orthanc, config.ingest.poll_interval)
    app.router.add_post("/api/send", _send_moved)
    app.router.add_post("/api/orthanc-jobs", job_hook(config.retry, capture, take_over))
    await parts.server(app, config.ingest.listen)
    log.info("ingest running: %d route(s); waiting for the changes lease", len(config.routes))
    lease = Lease(config.amqp.url, config.amqp.prefix, "ingest")
    while not stop.is_set():
        async with lease.held(stop) as lost:
            if not lease.active:
                continue
            metrics.active.set(1)
            feeds[:] = [new_feed()]
            try:
                async with either(stop, lost) as until:
                    await asyncio.gather(feeds[0].run(until), capture.run(until))
            finally:
                metrics.active.set(0)
            if lost.is_set() and not stop.is_set():
                log.warning("lost the changes lease (RabbitMQ connection gone); waiting again")


async def _send_moved(_request: web.Request) -> web.Response:
    return web.json_response(
        {
            "error": "POST /api/send is served by the retry service's admin API ([retry]"
            " listen), with an admin token, not by ingest"
        },
        status=410,
    )
