"""Ingest wiring: Orthanc client, the changes feed, the submit API, metrics."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from prometheus_client import CollectorRegistry

from sendqueue.services.ingest.feed import ChangesFeed
from sendqueue.services.ingest.ledger import QueuedLedger, Resends
from sendqueue.services.ingest.metrics import IngestMetrics
from sendqueue.services.ingest.routing import Router
from sendqueue.shared.config import Config
from sendqueue.shared.lifecycle import ServiceParts
from sendqueue.shared.metrics_server import make_app
from sendqueue.shared.orthanc import OrthancClient
from sendqueue.shared.resolver import Resolver
from sendqueue.shared.send_api import make_send_handler
from sendqueue.shared.source_health import OrthancHealth
from sendqueue.shared.state_lock import hold_state_dir
from sendqueue.shared.topology import Names, prepare_bus

log = logging.getLogger(__name__)


async def run_ingest(
    config: Config, stop: asyncio.Event, registry: CollectorRegistry | None = None
) -> None:
    with hold_state_dir(config.ingest.state_dir, "ingest"):
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
    ledger = parts.closing(
        QueuedLedger(
            Path(config.ingest.state_dir) / "queued.sqlite3",
            max_age=config.ingest.ledger_max_age,
            max_entries=config.ingest.ledger_max_entries,
        )
    )
    resends = Resends(ledger, resolver, lambda job: metrics.skipped.labels(job.destination).inc())
    feed = ChangesFeed(
        config=config.ingest,
        orthanc=orthanc,
        resolver=resolver,
        router=Router(config.routes),
        publisher=publisher,
        names=names,
        metrics=metrics,
        resends=resends,
    )
    app = make_app(registry, lambda: {"amqp": not conn.is_closed, "orthanc": feed.healthy})
    send = make_send_handler(
        config,
        resolver=resolver,
        publisher=publisher,
        names=names,
        on_queued=lambda job: metrics.queued.labels(job.destination, "api").inc(),
    )
    app.router.add_post("/api/send", send)
    await parts.server(app, config.ingest.listen)
    log.info("ingest running: %d route(s)", len(config.routes))
    await feed.run(stop)
