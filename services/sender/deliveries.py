"""Deliveries of instances bound for deletion, reported to the retry service.

A job whose routes asked for `delete_after_delivery` carries the destinations that must all
deliver it (`delete_when`). Once its destination answered, the sender publishes a
`Delivered` report (persistent, confirmed) before it acks the job: a crash in between sends
the job again and reports again, which is harmless; no report is ever sent for a job that
was not delivered, so nothing is deleted too early.
"""

from __future__ import annotations

from sendqueue.shared.amqp import Publisher
from sendqueue.shared.schemas import Delivered, SendJob, encode
from sendqueue.shared.topology import Names


async def report_delivery(publisher: Publisher, names: Names, job: SendJob) -> None:
    if not job.delete_when:
        return
    report = Delivered(
        orthanc_id=job.orthanc_id,
        destination=job.destination,
        delete_when=list(job.delete_when),
        sop_instance_uid=job.sop_instance_uid,
    )
    headers = {"destination": job.destination, "orthanc_id": job.orthanc_id}
    await publisher.publish(
        names.delivered_exchange, job.destination, encode(report), headers=headers
    )
