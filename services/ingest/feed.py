"""Follows Orthanc's /changes feed and queues a job per (instance, destination).

The cursor advances only after every job of a page is confirmed by the broker, so a
crash or restart resumes where nothing can have been lost (duplicates are possible).
Every round re-reads a look-back window below the cursor (lookback.py), so a change
that becomes visible after a later one, or a restored database that renumbered changes
past the cursor, is queued too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from sendqueue.services.ingest.cursor import Cursor
from sendqueue.services.ingest.ledger import Resends
from sendqueue.services.ingest.lookback import LookBack, seq_of
from sendqueue.services.ingest.metrics import IngestMetrics
from sendqueue.services.ingest.routing import CHANGE_FOR_LEVEL, UNKNOWN_ORIGIN, Origin, Router
from sendqueue.shared.amqp import BROKER_ERRORS, Publisher
from sendqueue.shared.config import IngestConfig
from sendqueue.shared.errors import (
    InstanceNotFound,
    PermanentError,
    SourceThrottled,
    SourceUnavailable,
)
from sendqueue.shared.jobs import make_job, publish_failure, publish_jobs
from sendqueue.shared.orthanc import OrthancClient
from sendqueue.shared.resolver import BulkInstance, InstanceInfo, Resolver
from sendqueue.shared.schemas import Failure, SendJob
from sendqueue.shared.topology import Names

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: Jobs to queue, and jobs to park at once (with the reason).
Routed = tuple[list[SendJob], list[Failure]]
#: A change's level ("" if no route of it), and its routed jobs and failures.
Resolved = tuple[str, list[SendJob], list[Failure]]


class StateUnwritable(Exception):
    """The state dir cannot take the cursor (full, read-only, removed)."""


_MAX_BACKOFF = 30.0
#: Rounds an unreadable file is retried before its jobs are parked.
_UNREADABLE_ROUNDS = 3
#: Changes of a page resolved at once. Each costs Orthanc one or more REST round trips
#: (its tags; its metadata when a route looks at the origin): one after the other, ingest
#: published at the pace of those round trips (77-150 jobs/s under load), far below
#: what the sender sends. Bounded so that a large page does not flood Orthanc.
_RESOLVING = 16
#: A round that fails with these is retried after a backoff; the cursor stays put.
_ROUND_ERRORS: tuple[type[BaseException], ...] = (
    SourceUnavailable,
    *BROKER_ERRORS,
    StateUnwritable,
)


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
        cursor: Cursor,
        resends: Resends,
    ) -> None:
        self._config = config
        self._orthanc = orthanc
        self._resolver = resolver
        #: The new instances of the page being resolved, read in one request.
        self._read_ahead: dict[str, BulkInstance] = {}
        self._router = router
        self._publisher = publisher
        self._names = names
        self._metrics = metrics
        self._resends = resends
        #: The cursor and the look-back window, in RabbitMQ (cursor.py): loaded when the
        #: feed starts, so that a take-over on another host resumes with both.
        self._cursor_file = cursor
        self._window = LookBack(None)
        #: Rounds in which Orthanc, though up, failed to read an instance's file.
        self._unreadable: dict[str, int] = {}
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
                await self._round_failed(exc, backoff)
                wait, backoff = backoff, min(backoff * 2 or 1.0, _MAX_BACKOFF)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)

    async def _round_failed(self, exc: BaseException, backoff: float) -> None:
        stage = (
            "orthanc"
            if isinstance(exc, SourceUnavailable)
            else "state"
            if isinstance(exc, StateUnwritable)
            else "amqp"
        )
        if stage == "orthanc":
            # Asked before the error is counted, so sendqueue_orthanc_up is 0 by then when
            # Orthanc is down: the alert on ingest errors leaves that to the Orthanc alert.
            await self._orthanc.answers()
        self._metrics.errors.labels(stage).inc()
        self.healthy = False
        log.warning("ingest round failed (%s: %r); retrying in %.1fs", stage, exc, backoff)

    def _on_queued(self, job: SendJob) -> None:
        self._metrics.queued.labels(job.destination, "changes").inc()

    async def _initial_cursor(self) -> int:
        self._window = LookBack(await self._cursor_file.load_window())
        saved = await self._cursor_file.load()
        if saved is not None:
            log.info("resuming Orthanc changes after seq %d", saved)
            return saved
        if self._config.start_from == "beginning":
            start = 0
        else:
            start = int((await self._changes({"last": ""}))["Last"])
        await self._save(lambda: self._cursor_file.save(start))
        log.info("first start: following Orthanc changes after seq %d", start)
        return start

    async def _one_page(self, cursor: int) -> tuple[int, bool]:
        since = self._window.since(cursor)
        # The window's changes come on top of a page of new ones.
        limit = self._config.batch_size + (cursor - since)
        params = {"since": str(since), "limit": str(limit)}
        page = await self._changes(params)
        changes = [c for c in page.get("Changes", []) if isinstance(c, dict) and "Seq" in c]
        newest = max((seq_of(c) for c in changes), default=int(page.get("Last", cursor)))
        done = bool(page.get("Done", True))
        window = self._window.sort(changes, cursor)
        if window.replaced or (done and newest < cursor):
            return await self._replaced(newest, cursor)
        self._resends.begin_page()
        jobs: list[SendJob] = []
        unroutable: list[Failure] = []
        for change in window.fresh:
            self._metrics.changes.labels(str(change.get("ChangeType"))).inc()
        for level, routed, failed in await self._resolve(window.fresh):
            if level != "instance":
                # A series or study that grew is stable again: only what is new or
                # changed. In seq order, one change after the other, as the ledger reads
                # what the page already holds.
                routed = await self._resends.new_only(routed)
            jobs += routed
            unroutable += failed
        await publish_jobs(self._publisher, self._names, jobs, self._on_queued)
        self._resends.confirmed(jobs)  # before the cursor moves past their changes
        for failure in unroutable:
            await publish_failure(self._publisher, self._names, failure)
            log.error("%s: %s", failure.destination, failure.reason)
        last = max(cursor, newest)
        self._window.remember(window.fresh, last)
        if window.fresh:
            await self._save(lambda: self._cursor_file.save_window(self._window.remembered))
        if last != cursor:
            await self._save(lambda: self._cursor_file.save(last))
        self._unreadable.clear()  # only the page being retried needs counting
        self._metrics.cursor.set(last)
        if done:
            self._metrics.orthanc_last.set(last)
            self._metrics.lag.set(0)
        else:
            # Only a metric. The page is queued and the cursor saved: failing the round
            # now would leave the caller's cursor behind and queue the page again.
            with contextlib.suppress(SourceUnavailable):
                await self._measure_lag(last)
        return last, done

    async def _replaced(self, newest: int, cursor: int) -> tuple[int, bool]:
        # Orthanc's change log is not the one we followed: its database was reset or
        # replaced (restored from a backup). What it holds may have been stored after
        # that, so follow it from the start (duplicates are possible, loss is not).
        log.warning(
            "Orthanc's changes differ from what was read before (its last change %d, our"
            " cursor %d): its database was reset or replaced; following its changes from"
            " the beginning",
            newest,
            cursor,
        )
        self._window.forget()
        await self._save(lambda: self._cursor_file.save_window({}))
        await self._save(lambda: self._cursor_file.save(0))
        self._metrics.cursor.set(0)
        return 0, False

    @staticmethod
    async def _save(write: Callable[[], Awaitable[None]]) -> None:
        try:
            await write()
        except OSError as exc:
            # The state dir is full, read-only or gone. Whatever was queued stays queued;
            # the round is read again later (duplicates, no loss).
            raise StateUnwritable(f"cannot save the /changes cursor: {exc}") from exc

    async def _changes(self, params: dict[str, str]) -> Any:
        try:
            return await self._orthanc.get_json("/changes", params)
        except PermanentError as exc:
            # A 404 or another 4xx on /changes is no bad resource but a wrong [orthanc] url
            # (or an Orthanc without this API): keep retrying, visibly, rather than crash.
            raise SourceUnavailable(
                f"{exc}: is [orthanc] url right?", reason_class="source-misconfigured"
            ) from None

    async def _measure_lag(self, cursor: int) -> None:
        newest = int((await self._changes({"last": ""}))["Last"])
        self._metrics.orthanc_last.set(newest)
        self._metrics.lag.set(max(0, newest - cursor))

    async def _resolve(self, changes: list[dict[str, Any]]) -> list[Resolved]:
        """(level, jobs, failures) of each change, in the changes' order. The first
        failure fails the round: nothing of the page is published, the cursor stays."""
        self._read_ahead = await self._read_new_instances(changes)
        try:
            return await _bounded(self._jobs_for, changes)
        finally:
            self._read_ahead = {}

    async def _read_new_instances(self, changes: list[dict[str, Any]]) -> dict[str, BulkInstance]:
        """The page's new instances, read together (a request for the page rather than
        one each: a fifth of ingest's CPU went to those GETs). What is not there is read
        one by one, as before."""
        if "instance" not in self._router.levels():
            return {}
        ids = [
            str(change["ID"])
            for change in changes
            if CHANGE_FOR_LEVEL.get(str(change.get("ChangeType"))) == "instance"
        ]
        if len(ids) < 2:
            return {}
        return await self._resolver.instances_in_bulk(ids) or {}

    async def _jobs_for(self, change: dict[str, Any]) -> Resolved:
        level = CHANGE_FOR_LEVEL.get(str(change.get("ChangeType")))
        if level is None or level not in self._router.levels():
            return "", [], []
        try:
            infos = await self._instances(level, str(change["ID"]))
            jobs, failures = await self._route(level, infos)
            return level, jobs, failures
        except InstanceNotFound:
            # Deleted from Orthanc before we read it: there is nothing left to send.
            log.info(
                "change %s: %s %s is gone from Orthanc", change.get("Seq"), level, change.get("ID")
            )
            return level, [], []

    async def _instances(self, level: str, orthanc_id: str) -> list[InstanceInfo]:
        if level == "instance":
            ahead = self._read_ahead.get(orthanc_id)
            return [ahead.info if ahead else await self._resolver.instance(orthanc_id)]
        return await self._resolver.instances_of(level, orthanc_id)

    async def _route(self, level: str, infos: list[InstanceInfo]) -> Routed:
        if not infos:
            return [], []
        needed = self._router.tags_needed(level)
        if level == "instance":
            routed = [(info, await self._tags(info, needed)) for info in infos]
        else:
            # Series and study routes match on the resource: judge by one of its instances.
            tags = await self._resource_tags(infos, needed)
            routed = [(info, tags) for info in infos]
        jobs: list[SendJob] = []
        unroutable: list[Failure] = []
        # How it reached Orthanc is the instance's own, at every level.
        origins = await self._origins(level, infos)
        for (info, tags), origin in zip(routed, origins, strict=True):
            if tags is not None:
                destinations = self._router.destinations(level, tags, origin)
                # Deleted from Orthanc once every one of them delivered it.
                group = destinations if self._router.deletes_after(level, tags, origin) else []
                jobs += [
                    make_job(info, d, source="changes", delete_when=group) for d in destinations
                ]
            else:
                unroutable += [
                    _unreadable(info, destination)
                    for destination in self._router.possible_destinations(level, info.tags, origin)
                ]
        return jobs, unroutable

    async def _origins(self, level: str, infos: list[InstanceInfo]) -> list[Origin]:
        """Their metadata, only when a route of the level asks (one GET per instance,
        `_RESOLVING` at a time: a study's instances are many)."""
        if not self._router.needs_origin(level):
            return [UNKNOWN_ORIGIN] * len(infos)

        async def origin(info: InstanceInfo) -> Origin:
            ahead = self._read_ahead.get(info.orthanc_id)
            if ahead is not None and ahead.metadata is not None:
                return Origin.from_metadata(ahead.metadata)
            return Origin.from_metadata(await self._resolver.metadata(info.orthanc_id))

        return await _bounded(origin, infos)

    async def _resource_tags(
        self, infos: list[InstanceInfo], needed: set[str]
    ) -> dict[str, str] | None:
        for info in infos:
            tags = await self._tags(info, needed)
            if tags is not None:
                return tags
        return None

    async def _tags(self, info: InstanceInfo, needed: set[str]) -> dict[str, str] | None:
        """The tags the routes need; None if Orthanc, though up, cannot read the file."""
        if needed <= info.tags.keys():
            return info.tags
        if self._unreadable.get(info.orthanc_id, 0) >= _UNREADABLE_ROUNDS:
            return None
        try:
            return (await self._resolver.with_all_tags(info)).tags
        except SourceThrottled:
            raise  # Orthanc asked to slow down: no fault of the file, the round waits
        except SourceUnavailable:
            if not await self._orthanc.answers():
                raise  # Orthanc is down: the round is retried, however long that takes
            # Orthanc is up but fails on this file: retry the round a few times (it may
            # pass), then park instead of holding up every change behind it.
            rounds = self._unreadable.get(info.orthanc_id, 0) + 1
            self._unreadable[info.orthanc_id] = rounds
            if rounds < _UNREADABLE_ROUNDS:
                raise
            return None


async def _bounded(work: Callable[[T], Awaitable[R]], items: Sequence[T]) -> list[R]:
    """`work` on every item, `_RESOLVING` at a time; the results in the items' order.
    The first failure is raised once the others are cancelled (no request outlives it)."""
    gate = asyncio.Semaphore(_RESOLVING)

    async def one(item: T) -> R:
        async with gate:
            return await work(item)

    tasks = [asyncio.create_task(one(item)) for item in items]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _unreadable(info: InstanceInfo, destination: str) -> Failure:
    return Failure(
        destination=destination,
        job=make_job(info, destination),
        permanent=True,
        reason=(
            "Orthanc could not read this instance's file to evaluate the routing rules (HTTP"
            " 5xx on its tags); parked for each destination whose rules it might match:"
            " requeue sends it there once Orthanc can read it, delete drops it"
        ),
        reason_class="source-unreadable",
    )
