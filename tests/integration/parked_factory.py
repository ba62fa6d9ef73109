"""Fill a parking queue directly, the way the retry service parks (for volume tests)."""

from __future__ import annotations

import asyncio
import time
import uuid

import aio_pika

from sendqueue.shared.schemas import SendJob, encode, job_headers


def parked_job(index: int, destination: str, **fields: object) -> SendJob:
    now = time.time()
    defaults: dict[str, object] = {
        "id": uuid.uuid4().hex,
        "destination": destination,
        "orthanc_id": f"orthanc-{index:06d}",
        "sop_instance_uid": f"1.2.826.0.1.9999.{index}",
        "study_instance_uid": f"1.2.826.0.1.9999.study.{index % 10}",
        "patient_id": f"P{index % 5}",
        "modality": "CT",
        "attempts": 3,
        "first_failed_at": now - 60,
        "last_failed_at": now,
        "last_error": "C-STORE failed: DIMSE status 0xA900 (test)",
        "reason_class": "dimse-a9xx",
        "parked_at": now,
    }
    defaults.update(fields)
    return SendJob(**defaults)  # type: ignore[arg-type]


async def fill_parked(amqp_url: str, prefix: str, jobs: list[SendJob], window: int = 200) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(f"{prefix}.parked")
        for start in range(0, len(jobs), window):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            encode(job),
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            message_id=uuid.uuid4().hex,
                            headers={
                                **job_headers(job),
                                "reason_class": job.reason_class,
                                "parked_at": job.parked_at,
                            },
                        ),
                        routing_key=job.destination,
                    )
                    for job in jobs[start : start + window]
                )
            )


async def drain_job_ids(amqp_url: str, queue_name: str) -> list[str]:
    """Every SendJob id in a queue (consumed and acked)."""
    from sendqueue.shared.schemas import decode_job

    ids: list[str] = []
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        while True:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                return ids
            ids.append(decode_job(message.body).id)
