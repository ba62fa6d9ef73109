"""Turning instances into send jobs and publishing them (confirmed, pipelined)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from sendqueue.shared.amqp import Publisher
from sendqueue.shared.logs import job_event
from sendqueue.shared.resolver import InstanceInfo
from sendqueue.shared.schemas import Failure, SendJob, encode, job_headers, new_job_id
from sendqueue.shared.topology import Names

log = logging.getLogger(__name__)

#: Publishes awaiting their confirm at once: one at a time costs ~1.5 ms each. RabbitMQ
#: confirms persistent messages once its disk write is synced, and a loaded disk takes
#: tens of ms for that: a window of 64 held a page of 100 jobs for two or more syncs
#: (0.4 s a page, 250 jobs/s, here). A page's jobs are small (~1 KB each).
_WINDOW = 1024


def make_job(
    info: InstanceInfo,
    destination: str,
    stored_at: float | None = None,
    source: str = "",
    delete_when: list[str] | None = None,
) -> SendJob:
    return SendJob(
        id=new_job_id(),
        destination=destination,
        orthanc_id=info.orthanc_id,
        sop_instance_uid=info.tag("SOPInstanceUID"),
        series_instance_uid=info.tag("SeriesInstanceUID"),
        study_instance_uid=info.tag("StudyInstanceUID"),
        patient_id=info.tag("PatientID"),
        modality=info.tag("Modality"),
        patient_name=info.tag("PatientName"),
        queued_at=time.time(),
        stored_at=stored_at,
        source=source,
        delete_when=list(delete_when or []),
    )


async def publish_jobs(
    publisher: Publisher,
    names: Names,
    jobs: Sequence[SendJob],
    on_queued: Callable[[SendJob], None],
) -> None:
    """Returns when every job is confirmed by the broker; raises if any is not."""
    window = asyncio.Semaphore(_WINDOW)

    async def one(job: SendJob) -> None:
        async with window:
            await publisher.publish(
                names.work_exchange, job.destination, encode(job), headers=job_headers(job)
            )
        on_queued(job)
        job_event(
            log,
            "queued",
            destination=job.destination,
            orthanc_id=job.orthanc_id,
            sop_instance_uid=job.sop_instance_uid,
            attempt=job.attempts + 1,
            outcome="queued",
            source=job.source,
            orthanc_job=job.orthanc_job.id if job.orthanc_job else "",
        )

    results = await asyncio.gather(*(one(job) for job in jobs), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]


async def publish_failure(publisher: Publisher, names: Names, failure: Failure) -> None:
    """Hand one failure to the retry service (confirmed); it retries or parks the job."""
    job = failure.job
    headers = job_headers(job) if job else {"destination": failure.destination}
    headers["reason"] = failure.reason[:500]
    await publisher.publish(
        names.failed_exchange, failure.destination, encode(failure), headers=headers
    )
