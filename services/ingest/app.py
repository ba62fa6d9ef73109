"""Ingest wiring: Orthanc client, the changes feed, metrics.

POST /api/send is not served here: the retry service's admin API serves it, behind an
admin token and in the audit log (docs/architecture.md, "The admin surface").
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from sendqueue.services.ingest.feed import ChangesFeed
from sendqueue.services.ingest.job_capture import JobCapture
from sendqueue.services.ingest.job_hook import job_hook
from sendqueue.services.ingest.ledger import QueuedLedger, Resends
from sendqueue.services.ingest.metrics import IngestMetrics
from sendqueue.services.ingest.routing import Router
from sendqueue.services.ingest.take_over import TakeOver
from sendqueue.shared.config import Config
from sendqueue.shared.lifecycle import ServiceParts
from sendqueue.shared.metrics_server import make_app
from sendqueue.shared.orthanc import OrthancClient
from sendqueue.shared.resolver import Resolver
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
    app = make_app(
        registry,
        lambda: {"amqp": not conn.is_closed, "orthanc": feed.healthy and capture.healthy},
    )
    take_over = TakeOver(capture, orthanc, config.ingest.poll_interval)
    app.router.add_post("/api/send", _send_moved)
    app.router.add_post("/api/orthanc-jobs", job_hook(config.retry, capture, take_over))
    await parts.server(app, config.ingest.listen)
    log.info("ingest running: %d route(s)", len(config.routes))
    parts.task(capture.run(stop), "orthanc-jobs")
    await feed.run(stop)


async def _send_moved(_request: web.Request) -> web.Response:
    return web.json_response(
        {
            "error": "POST /api/send is served by the retry service's admin API ([retry]"
            " listen), with an admin token, not by ingest"
        },
        status=410,
    )
