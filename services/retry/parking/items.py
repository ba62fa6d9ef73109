"""Parked items as the index and the admin API see them, read from parked messages."""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec
from aio_pika.abc import AbstractIncomingMessage

from sendqueue.services.retry.parking.index import ParkedItem
from sendqueue.shared.schemas import (
    Failure,
    SendJob,
    decode_bus_message,
    encode,
    fresh,
    job_headers,
)


def job_of(body: bytes) -> SendJob | None:
    """The job a parked message holds: a job, or the job inside a failure report (the
    failed queue dead-letters reports it could not route here, past its delivery limit)."""
    try:
        decoded = decode_bus_message(body)
    except msgspec.DecodeError:
        return None
    if isinstance(decoded, Failure):
        return decoded.job
    return decoded


def is_plain_job(body: bytes) -> bool:
    """Whether the body is a job itself (so the sender can take it as it is)."""
    try:
        return isinstance(decode_bus_message(body), SendJob)
    except msgspec.DecodeError:
        return False


def requeue_body(body: bytes, destination: str) -> tuple[bytes, dict[str, Any]]:
    job = job_of(body)
    if job is None:
        return body, {"destination": destination}  # raw: let the sender judge it again
    job = msgspec.structs.replace(fresh(job), destination=destination)
    return encode(job), job_headers(job)


def plain_headers(headers: Any) -> dict[str, Any]:
    # x- headers belong to the broker; copying them into a new publish confuses it.
    return {k: v for k, v in (headers or {}).items() if not str(k).startswith("x-")}


def item_from_job(item_id: str, job: SendJob) -> ParkedItem:
    return ParkedItem(
        id=item_id,
        destination=job.destination,
        orthanc_id=job.orthanc_id,
        sop_instance_uid=job.sop_instance_uid,
        series_instance_uid=job.series_instance_uid,
        study_instance_uid=job.study_instance_uid,
        patient_id=job.patient_id,
        patient_name=job.patient_name,
        modality=job.modality,
        attempts=job.attempts,
        first_failed_at=job.first_failed_at,
        last_failed_at=job.last_failed_at,
        parked_at=job.parked_at or 0.0,
        reason=job.last_error,
        reason_class=job.reason_class,
        source=job.source,
        orthanc_job=job.orthanc_job.id if job.orthanc_job else "",
        orthanc_job_error=job.orthanc_job.error if job.orthanc_job else "",
        orthanc_job_failed_at=job.orthanc_job.failed_at if job.orthanc_job else None,
        orthanc_job_instances=job.orthanc_job.instances if job.orthanc_job else 0,
    )


def item_from_message(message: AbstractIncomingMessage) -> ParkedItem:
    headers = message.headers or {}
    item_id = message.message_id or uuid.uuid4().hex
    job = job_of(message.body)
    if job is not None and job.parked_at is not None:
        return item_from_job(item_id, job)
    reason, reason_class = _reason_from_headers(headers, job is None)
    destination = str(
        headers.get("destination") or (job.destination if job else "") or message.routing_key or ""
    )
    parked_at = headers.get("parked_at")
    base = item_from_job(item_id, job) if job else ParkedItem(id=item_id, destination="")
    return msgspec.structs.replace(
        base,
        destination=destination,
        reason=reason,
        reason_class=reason_class,
        parked_at=float(parked_at) if isinstance(parked_at, int | float) else time.time(),
    )


def _reason_from_headers(headers: Any, undecodable: bool) -> tuple[str, str]:
    if headers.get("reason"):
        return str(headers["reason"]), str(headers.get("reason_class") or "unknown")
    deaths = headers.get("x-death") or []
    if deaths:
        death = deaths[0]
        why = death.get("reason", "dead-lettered")
        return (
            f"dead-lettered by RabbitMQ ({why}) from {death.get('queue', '?')}",
            "delivery-limit" if why == "delivery_limit" else "dead-lettered",
        )
    if undecodable:
        return "message could not be decoded", "decode-error"
    return "parked without a recorded reason", "unknown"
