"""Follows Orthanc's /changes feed and queues a job per (instance, destination).

The cursor advances only after every job of a page is confirmed by the broker, so a
crash or restart resumes where nothing can have been lost (duplicates are possible).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from services.ingest.cursor import CursorFile
from services.ingest.metrics import IngestMetrics
from services.ingest.routing import CHANGE_FOR_LEVEL, Router
from shared.amqp import PUBLISH_ERRORS, Publisher
from shared.config import IngestConfig
from shared.errors import InstanceNotFound
from shared.jobs import make_job, publish_jobs
from shared.orthanc import OrthancClient, SourceUnavailable
from shared.resolver import InstanceInfo, Resolver
from shared.schemas import SendJob
from shared.topology import Names

log = logging.getLogger(__name__)

_MAX_BACKOFF = 30.0
#: A round that fails with these is retried after a backoff; the cursor stays put.
_ROUND_ERRORS: tuple[type[BaseException], ...] = (SourceUnavailable, *PUBLISH_ERRORS)


class ChangesFeed:
    def __init__(
        self,
        *,
        config: IngestConfig,
        orthanc: OrthancClient,
        resolver: Resolver,
        router: Router,
        publisher: Publisher,
        names: Names,
        metrics: IngestMetrics,
    ) -> None:
        self._config = config
        self._orthanc = orthanc
        self._resolver = resolver
        self._router = router
        self._publisher = publisher
        self._names = names
        self._metrics = metrics
        self._cursor_file = CursorFile(config.state_dir)
        self.healthy = True

    async def run(self, stop: asyncio.Event) -> None:
        backoff: float = self._config.poll_interval
        cursor: int | None = None
        while not stop.is_set():
            try:
                if cursor is None:
                    cursor = await self._initial_cursor()
                cursor, done = await self._one_page(cursor)
                self.healthy = True
                backoff = self._config.poll_interval
                if not done:
                    continue
                wait: float = self._config.poll_interval
            except _ROUND_ERRORS as exc:
                stage = "orthanc" if isinstance(exc, SourceUnavailable) else "amqp"
                self._metrics.errors.labels(stage).inc()
                self.healthy = False
                log.warning("ingest round failed (%s: %r); retrying in %.1fs", stage, exc, backoff)
                wait, backoff = backoff, min(backoff * 2 or 1.0, _MAX_BACKOFF)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)

    def _on_queued(self, job: SendJob) -> None:
        self._metrics.queued.labels(job.destination, "changes").inc()

    async def _initial_cursor(self) -> int:
        saved = self._cursor_file.load()
        if saved is not None:
            log.info("resuming Orthanc changes after seq %d", saved)
            return saved
        if self._config.start_from == "beginning":
            start = 0
        else:
            start = int((await self._orthanc.get_json("/changes", {"last": ""}))["Last"])
        self._cursor_file.save(start)
        log.info("first start: following Orthanc changes after seq %d", start)
        return start

    async def _one_page(self, cursor: int) -> tuple[int, bool]:
        params = {"since": str(cursor), "limit": str(self._config.batch_size)}
        page = await self._orthanc.get_json("/changes", params)
        jobs: list[SendJob] = []
        for change in page.get("Changes", []):
            self._metrics.changes.labels(str(change.get("ChangeType"))).inc()
            jobs.extend(await self._jobs_for(change))
        await publish_jobs(self._publisher, self._names, jobs, self._on_queued)
        last = int(page.get("Last", cursor))
        if last != cursor:
            self._cursor_file.save(last)
        self._metrics.cursor.set(last)
        if page.get("Done", True):
            self._metrics.orthanc_last.set(last)
            self._metrics.lag.set(0)
        else:
            await self._measure_lag(last)
        return last, bool(page.get("Done", True))

    async def _measure_lag(self, cursor: int) -> None:
        newest = int((await self._orthanc.get_json("/changes", {"last": ""}))["Last"])
        self._metrics.orthanc_last.set(newest)
        self._metrics.lag.set(max(0, newest - cursor))

    async def _jobs_for(self, change: dict[str, Any]) -> list[SendJob]:
        level = CHANGE_FOR_LEVEL.get(str(change.get("ChangeType")))
        if level is None or level not in self._router.levels():
            return []
        try:
            infos = await self._instances(level, str(change["ID"]))
            return await self._route(level, infos)
        except InstanceNotFound:
            # Deleted from Orthanc before we read it: there is nothing left to send.
            log.info(
                "change %s: %s %s is gone from Orthanc", change.get("Seq"), level, change.get("ID")
            )
            return []

    async def _instances(self, level: str, orthanc_id: str) -> list[InstanceInfo]:
        if level == "instance":
            return [await self._resolver.instance(orthanc_id)]
        return await self._resolver.instances_of(level, orthanc_id)

    async def _route(self, level: str, infos: list[InstanceInfo]) -> list[SendJob]:
        if not infos:
            return []
        needed = self._router.tags_needed(level)
        # Series and study routes match on the resource: judge by its first instance.
        probe = infos[0]
        if not needed <= probe.tags.keys():
            probe = await self._resolver.with_all_tags(probe)
        targets = (
            [self._router.destinations(level, (await self._full(i, needed)).tags) for i in infos]
            if level == "instance"
            else [self._router.destinations(level, probe.tags)] * len(infos)
        )
        return [
            make_job(info, destination)
            for info, destinations in zip(infos, targets, strict=True)
            for destination in destinations
        ]

    async def _full(self, info: InstanceInfo, needed: set[str]) -> InstanceInfo:
        if needed <= info.tags.keys():
            return info
        return await self._resolver.with_all_tags(info)
