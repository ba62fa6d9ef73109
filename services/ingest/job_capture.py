"""Catches Orthanc's own failed sends: failed store jobs in `GET /jobs` go into the queue.

A click on "Send to modality", `POST /modalities/{id}/store`, a Lua `SendToModality`:
Orthanc runs these as jobs, and a job that fails is only marked `Failure` in a history of
`JobsHistorySize` entries (no `/changes` entry). This watcher polls that history and
queues every instance of each failed store job for the destination that stands for its
modality or peer, with Orthanc's error as the first attempt's reason. From there the
normal ladder, parking, requeue and removal apply.

A job's ID is marked handled only after the broker confirmed all its instances' jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import Any
from urllib.parse import quote

import msgspec

from sendqueue.services.ingest.handled_jobs import HandledJobs
from sendqueue.services.ingest.job_evidence import LostEvidence
from sendqueue.services.ingest.metrics import IngestMetrics
from sendqueue.services.ingest.orthanc_jobs import (
    CANCELED_JOB,
    STOW_CLIENT,
    JobTargets,
    StoreJob,
    new_failures,
    store_job,
    to_capture,
)
from sendqueue.shared.amqp import BROKER_ERRORS, Publisher
from sendqueue.shared.config import Config
from sendqueue.shared.errors import InstanceNotFound, PermanentError, SourceUnavailable
from sendqueue.shared.jobs import make_job, publish_failure, publish_jobs
from sendqueue.shared.logs import job_event
from sendqueue.shared.orthanc import OrthancClient
from sendqueue.shared.resolver import InstanceInfo, Resolver
from sendqueue.shared.schemas import (
    CapturedJob,
    Failure,
    OrthancJobRef,
    SendJob,
    encode,
    new_job_id,
)
from sendqueue.shared.topology import Names

log = logging.getLogger(__name__)

SOURCE = "orthanc-job"
_MAX_BACKOFF = 30.0
#: A read that fails with these is retried after a backoff (a 4xx: a wrong URL, or an
#: Orthanc without the jobs API, is shown the same way rather than crash the service).
_ROUND_ERRORS: tuple[type[BaseException], ...] = (
    SourceUnavailable,
    PermanentError,
    *BROKER_ERRORS,
)


class JobCapture:
    def __init__(
        self,
        *,
        config: Config,
        orthanc: OrthancClient,
        resolver: Resolver,
        publisher: Publisher,
        names: Names,
        metrics: IngestMetrics,
    ) -> None:
        self._config = config
        self._orthanc = orthanc
        self._resolver = resolver
        self._publisher = publisher
        self._names = names
        self._metrics = metrics
        self._handled = HandledJobs(config.ingest.state_dir)
        self._targets: JobTargets | None = None
        #: Failed, not yet handled, at the previous read (captured at the next one).
        self._failed_before: dict[str, StoreJob] = {}
        self._evidence = LostEvidence(metrics)
        #: One capture at a time: the poll and POST /api/send's Lua hook share the set.
        self._lock = asyncio.Lock()
        #: Captures the hook asked for, still running (a reference keeps each alive).
        self._hooked: set[asyncio.Task[None]] = set()
        #: Jobs services/ingest/take_over.py is cancelling in Orthanc to send them itself.
        self.taking_over: set[str] = set()
        self.healthy = True

    @property
    def enabled(self) -> bool:
        return self._config.ingest.capture_failed_jobs != "off"

    async def run(self, stop: asyncio.Event) -> None:
        if not self.enabled:
            return
        interval: float = self._config.ingest.poll_interval
        backoff = interval
        started = False
        while not stop.is_set():
            try:
                if not started:
                    self._handled.load()
                    await self._evidence.read_history_size(self._orthanc)
                    started = True
                await self.read_history()
                self.healthy, wait, backoff = True, interval, interval
            except _ROUND_ERRORS as exc:
                await self._round_failed(exc, backoff)
                wait, backoff = backoff, min(backoff * 2 or 1.0, _MAX_BACKOFF)
            except Exception as exc:
                # A task of the ingest service: an unforeseen error (a corrupt state file)
                # must show (healthz, the log, the error counter), not end the watch quietly.
                log.exception("reading Orthanc's jobs failed unexpectedly")
                await self._round_failed(exc, backoff)
                wait, backoff = backoff, min(backoff * 2 or 1.0, _MAX_BACKOFF)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)

    async def _round_failed(self, exc: BaseException, backoff: float) -> None:
        self.healthy = False
        if isinstance(exc, SourceUnavailable):
            # As the changes feed does: Orthanc down is counted as stage "orthanc" once
            # sendqueue_orthanc_up says so, and its alert covers it, not the ingest one.
            await self._orthanc.answers()
            stage = "orthanc"
        else:
            stage = "amqp" if isinstance(exc, BROKER_ERRORS) else "orthanc-jobs"
        self._metrics.errors.labels(stage).inc()
        log.warning("reading Orthanc's jobs failed (%r); retrying in %.1fs", exc, backoff)

    # -- the job history ----------------------------------------------------------------

    async def read_history(self) -> None:
        listing = await self._orthanc.get_json("/jobs", {"expand": ""})
        raw_jobs = [j for j in listing if isinstance(j, dict)] if isinstance(listing, list) else []
        jobs = [job for job in map(store_job, raw_jobs) if job is not None]
        listed = {str(j.get("ID")) for j in raw_jobs}
        async with self._lock:
            self._evidence.observe(jobs, raw_jobs, listed, self._handled.ids())
            self._handled.still_listed(listed)
            # A job being taken over from Orthanc is the take-over's to settle.
            jobs = [job for job in jobs if job.id not in self.taking_over]
            taken = self._handled.taken_over()
            for job in jobs:
                if job.finished and not to_capture(job, taken) and job.id not in self._handled:
                    self._handled.add(job.id)
                    outcome = "succeeded" if job.state == "Success" else "cancelled"
                    self._metrics.orthanc_jobs.labels(outcome).inc()
            self._note_uncapturable(raw_jobs)
            for job in new_failures(jobs, self._handled.ids(), set(self._failed_before), taken):
                await self._capture(job)
            for job in self._evicted_failures(listed):
                # Pushed out of the history before its second read: what the first read
                # saw is all there is, and no resubmission can succeed it any more.
                await self._capture(job)
            self._failed_before = {
                j.id: j for j in jobs if to_capture(j, taken) and j.id not in self._handled
            }
            self._handled.save()

    def _evicted_failures(self, listed: set[str]) -> list[StoreJob]:
        return [
            job
            for job_id, job in self._failed_before.items()
            if job_id not in listed
            and job_id not in self._handled
            and job_id not in self.taking_over
        ]

    def _note_uncapturable(self, raw_jobs: Sequence[dict[str, Any]]) -> None:
        """A failed STOW-RS job of the DICOMweb plugin names neither its server nor its
        resources (Orthanc 1.10): it cannot be repaired, but it must not pass unseen."""
        for raw in raw_jobs:
            job_id = str(raw.get("ID"))
            if raw.get("Type") != STOW_CLIENT or raw.get("State") != "Failure":
                continue
            if job_id in self._handled:
                continue
            self._handled.add(job_id)
            self._metrics.orthanc_jobs.labels("uncapturable").inc()
            log.error(
                "Orthanc's DICOMweb STOW-RS job %s failed (%s): the job names neither its"
                " server nor its instances, so sendqueue cannot send them again; use a"
                ' kind = "dicomweb" destination instead (docs/orthanc.md)',
                job_id,
                (raw.get("Content") or {}).get("FunctionErrorDescription")
                or raw.get("ErrorDescription"),
            )

    def capture_soon(self, job_id: str) -> None:
        """Capture one failed job in the background (Orthanc's OnJobFailure hook posted
        its ID). Not while the hook waits: Orthanc holds its Lua lock during the hook's
        HTTP call, and answers nothing that needs Lua (every REST call, when a filter is
        defined) until the call ends."""
        self.run_soon(self._capture_logged(job_id), f"orthanc-job-{job_id}")

    async def _capture_logged(self, job_id: str) -> None:
        try:
            await self.capture_now(job_id)
        except Exception as exc:  # the history watch still finds it while Orthanc lists it
            log.warning("capturing Orthanc job %s from the hook failed: %r", job_id, exc)

    async def capture_now(self, job_id: str) -> int | None:
        """Capture one failed job at once (Orthanc's OnJobFailure Lua hook posts its ID).
        Returns the jobs queued, or None if the job is not a failed store job."""
        raw = await self._orthanc.get_json(f"/jobs/{quote(job_id, safe='')}")
        job = store_job(raw) if isinstance(raw, dict) else None
        if job is None or not job.failed:
            return None
        async with self._lock:
            if job.id in self._handled:
                self._metrics.orthanc_jobs.labels("hook-repeat").inc()
                return 0
            queued = await self._capture(job)
            self._handled.save()
            return queued

    async def close(self) -> None:
        """Stop the hooks' work still running: what it did not finish, the history watch
        does after a restart (a job is marked handled only once its jobs are confirmed)."""
        for task in list(self._hooked):
            task.cancel()
        if self._hooked:
            await asyncio.wait(list(self._hooked), timeout=5)

    def run_soon(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run in the background, kept alive until done (the hooks' work)."""
        task = asyncio.create_task(work, name=name)
        self._hooked.add(task)
        task.add_done_callback(self._hooked.discard)

    def intend_take_over(self, job_id: str) -> None:
        """Recorded (and saved) before Orthanc's job is cancelled: if ingest stops before
        it queued the job, the history watch captures the cancelled job after all."""
        self._handled.take_over(job_id)

    async def destinations_of(self, job: StoreJob) -> list[str]:
        return await self._destinations(job)

    async def capture_taken_over(self, job: StoreJob, outcome: str) -> int:
        """Queue a job Orthanc did not finish sending because sendqueue took it over."""
        async with self._lock:
            if job.id in self._handled:
                return 0
            if job.state == "Success":
                self._handled.add(job.id)
                self._metrics.orthanc_jobs.labels(outcome).inc()
                queued = 0
            else:
                queued = await self._capture(job)
            self._handled.save()
            return queued

    async def _capture(self, job: StoreJob) -> int:
        destinations = await self._destinations(job)
        if not destinations:
            self._metrics.orthanc_jobs.labels("unmapped").inc()
            log.info(
                "Orthanc job %s (%s to %s) failed; no destination stands for %s: not captured",
                job.id,
                job.type,
                job.target,
                job.target,
            )
            self._handled.add(job.id)
            return 0
        queued = 0
        for destination in destinations:
            queued += await self._queue(job, destination)
        self._handled.add(job.id)
        self._metrics.orthanc_jobs.labels("captured").inc()
        return queued

    async def _queue(self, job: StoreJob, destination: str) -> int:
        jobs, gone = await self._jobs_for(job, destination)
        await publish_jobs(self._publisher, self._names, jobs, self._on_queued)
        for failure in gone:
            await publish_failure(self._publisher, self._names, failure)
        record = CapturedJob(
            orthanc_job=_ref(job),
            destination=destination,
            queued=len(jobs),
            not_found=len(gone),
            description=job.description,
        )
        await self._publisher.publish(
            self._names.captured_exchange,
            destination,
            encode(record),
            headers={"orthanc_job": job.id, "destination": destination},
        )
        log.warning(
            "Orthanc job %s (%s, %s) failed at %s: %s; %d instance(s) queued for %s, %d"
            " resource(s) gone from Orthanc parked as not-found",
            job.id,
            job.type,
            job.description or "?",
            _when(job.failed_at),
            job.error or "no error given",
            len(jobs),
            destination,
            len(gone),
            extra={"fields": {"source": SOURCE, "orthanc_job": job.id}},
        )
        return len(jobs)

    def _on_queued(self, job: SendJob) -> None:
        self._metrics.queued.labels(job.destination, SOURCE).inc()

    async def _jobs_for(
        self, job: StoreJob, destination: str
    ) -> tuple[list[SendJob], list[Failure]]:
        ref = _ref(job)
        reason = f"Orthanc's own send (job {job.id}, {job.type}) failed: {job.error or '?'}"
        failed_at = job.failed_at or time.time()
        jobs: dict[str, SendJob] = {}
        gone: list[Failure] = []
        for resource in dict.fromkeys(job.resources):
            try:
                infos = await self._resolver.expand(resource)
            except InstanceNotFound:
                gone.append(_not_found(resource, destination, ref, failed_at))
                continue
            for info in infos:
                if info.orthanc_id in jobs:
                    continue
                if job.error_code == CANCELED_JOB:  # taken over before Orthanc tried
                    jobs[info.orthanc_id] = _taken_over(info, destination, ref)
                else:
                    jobs[info.orthanc_id] = _captured(info, destination, ref, reason, failed_at)
        return list(jobs.values()), gone

    async def _destinations(self, job: StoreJob) -> list[str]:
        if self._targets is None:
            self._targets = await self._read_targets()
        found = self._targets.destinations(job)
        if not found:
            # A modality or peer may have been added to Orthanc (PUT /modalities) since.
            self._targets = await self._read_targets()
            found = self._targets.destinations(job)
        return found

    async def _read_targets(self) -> JobTargets:
        modalities = await self._orthanc.get_json("/modalities", {"expand": ""})
        peers = await self._orthanc.get_json("/peers", {"expand": ""})
        targets = JobTargets(self._config, modalities or {}, peers or {})
        for name in targets.unknown:
            log.error(
                "destination %s names an Orthanc modality or peer that Orthanc does not know:"
                " its failed jobs cannot be captured (see GET /modalities, GET /peers)",
                name,
            )
        return targets


def _ref(job: StoreJob) -> OrthancJobRef:
    return OrthancJobRef(
        id=job.id,
        type=job.type,
        failed_at=job.failed_at,
        error=job.error,
        instances=job.instances,
    )


def _when(at: float | None) -> str:
    if at is None:
        return "?"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _captured(
    info: InstanceInfo, destination: str, ref: OrthancJobRef, reason: str, failed_at: float
) -> SendJob:
    """Orthanc's failed attempt counts as the first one: the ladder goes on from there."""
    return msgspec.structs.replace(
        make_job(info, destination, source=SOURCE),
        attempts=1,
        first_failed_at=failed_at,
        last_failed_at=failed_at,
        last_error=reason,
        reason_class="orthanc-job",
        orthanc_job=ref,
    )


def _taken_over(info: InstanceInfo, destination: str, ref: OrthancJobRef) -> SendJob:
    """A send taken out of Orthanc's hands: no attempt has failed yet."""
    return msgspec.structs.replace(make_job(info, destination, source=SOURCE), orthanc_job=ref)


def _not_found(resource: str, destination: str, ref: OrthancJobRef, failed_at: float) -> Failure:
    job = SendJob(
        id=new_job_id(),
        destination=destination,
        orthanc_id=resource,
        queued_at=time.time(),
        attempts=1,
        first_failed_at=failed_at,
        last_failed_at=failed_at,
        source=SOURCE,
        orthanc_job=ref,
    )
    job_event(
        log,
        "not-found",
        level=logging.WARNING,
        destination=destination,
        orthanc_id=resource,
        outcome="parked",
        reason_class="not-found",
        source=SOURCE,
        orthanc_job=ref.id,
    )
    return Failure(
        destination=destination,
        job=job,
        permanent=True,
        reason=(
            f"Orthanc's own send (job {ref.id}, {ref.type}) failed ({ref.error or '?'}), and"
            f" {resource} is no longer in Orthanc: there is nothing left to send"
        ),
        reason_class="not-found",
    )
