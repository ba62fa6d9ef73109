"""Taking a send out of Orthanc's hands: `POST /api/send {"orthanc_job": ID, "take_over":
true}`, posted by lua/sendqueue-take-over-sends.lua from Orthanc's OnJobSubmitted.

A store job that Orthanc Explorer, a viewer or a script started for a modality or peer a
destination stands for is cancelled in Orthanc, and its instances go through sendqueue
(retries, parking, the console). Orthanc cancels a running job only between two
instances, so the job may still end by itself: succeeded, then Orthanc sent everything
and sendqueue sends nothing; failed or cancelled, then sendqueue queues every instance of
the job (those Orthanc sent already are sent again: a duplicate C-STORE is harmless).
A job of an unmapped modality or peer is left to Orthanc.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import quote

from sendqueue.services.ingest.job_capture import JobCapture
from sendqueue.services.ingest.orthanc_jobs import StoreJob, store_job
from sendqueue.shared.orthanc import OrthancClient

log = logging.getLogger(__name__)

#: How long a cancelled job may take to stop (Orthanc finishes the instance in flight,
#: bounded by the modality's or peer's timeouts).
_SETTLE_TIMEOUT = 600.0


class TakeOver:
    def __init__(self, capture: JobCapture, orthanc: OrthancClient, poll: float) -> None:
        self._capture = capture
        self._orthanc = orthanc
        self._poll = poll

    def soon(self, job_id: str) -> None:
        """In the background: the hook's HTTP call must end before Orthanc answers us."""
        self._capture.taking_over.add(job_id)
        self._capture.run_soon(self._logged(job_id), f"take-over-{job_id}")

    async def _logged(self, job_id: str) -> None:
        try:
            await self._take_over(job_id)
        except Exception as exc:
            # Released below: the history watch then captures the job once it has ended
            # failed or cancelled (recorded as taken over before the cancel).
            log.warning("taking Orthanc job %s over failed: %r", job_id, exc)
        finally:
            self._capture.taking_over.discard(job_id)

    async def _take_over(self, job_id: str) -> None:
        job = await self._read(job_id)
        if job is None or not await self._capture.destinations_of(job):
            return  # not a send sendqueue stands for: Orthanc keeps it
        self._capture.intend_take_over(job_id)
        status = await self._orthanc.post(f"/jobs/{quote(job_id, safe='')}/cancel")
        job = await self._finished(job_id)
        queued = await self._capture.capture_taken_over(job, "succeeded")
        log.info(
            "Orthanc job %s (%s to %s) taken over: cancel answered %d, the job ended %s;"
            " %d instance(s) queued",
            job_id,
            job.type,
            job.target,
            status,
            job.state,
            queued,
        )

    async def _read(self, job_id: str) -> StoreJob | None:
        raw = await self._orthanc.get_json(f"/jobs/{quote(job_id, safe='')}")
        return store_job(raw) if isinstance(raw, dict) else None

    async def _finished(self, job_id: str) -> StoreJob:
        deadline = time.monotonic() + _SETTLE_TIMEOUT
        while True:
            job = await self._read(job_id)
            if job is None:
                raise LookupError(f"Orthanc job {job_id} is no store job")
            if job.finished:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"Orthanc job {job_id} still {job.state} after cancel")
            await asyncio.sleep(self._poll)
