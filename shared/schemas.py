"""Messages on the bus: frozen msgspec Structs, JSON-encoded, tagged by kind.

Schema evolution: new fields get defaults; never rename or retype a field; unknown
fields are ignored, so an older service can read a newer message.
"""

from __future__ import annotations

import time
import uuid

import msgspec


class OrthancJobRef(msgspec.Struct, frozen=True, kw_only=True):
    """The failed Orthanc store job a captured send job comes from."""

    #: Orthanc's job ID (`GET /jobs/{id}`).
    id: str
    #: `DicomModalityStore`, `OrthancPeerStore`, ...
    type: str = ""
    #: When the job failed (Orthanc's CompletionTime, epoch seconds), if known.
    failed_at: float | None = None
    #: Orthanc's error: description and details.
    error: str = ""
    #: Instances the Orthanc job was to send.
    instances: int = 0


class SendJob(msgspec.Struct, frozen=True, kw_only=True, tag="job"):
    """One instance to deliver to one destination."""

    #: Stable for the life of the job (retries and requeues keep it).
    id: str
    destination: str
    orthanc_id: str
    sop_instance_uid: str = ""
    series_instance_uid: str = ""
    study_instance_uid: str = ""
    patient_id: str = ""
    modality: str = ""
    #: Shown to operators behind a token (parked items); never a log field or metric label.
    patient_name: str = ""
    #: When ingest queued it (epoch seconds).
    queued_at: float = 0.0
    #: When Orthanc stored the instance, if known (end-to-end latency).
    stored_at: float | None = None
    #: Failed attempts so far; the retry service counts them, requeue resets them.
    attempts: int = 0
    first_failed_at: float | None = None
    last_failed_at: float | None = None
    last_error: str = ""
    reason_class: str = ""
    #: Set while the job sits in the parking queue. A job that arrives on a work queue
    #: with this set was moved back by hand (management UI shovel): it starts afresh.
    parked_at: float | None = None
    #: Who queued it: "changes" (a route), "api" (POST /api/send, `sendqueue send`) or
    #: "orthanc-job" (an Orthanc store job that failed); "" from older services.
    source: str = ""
    #: Set when source is "orthanc-job": the Orthanc job whose failure it repairs.
    orthanc_job: OrthancJobRef | None = None


class Failure(msgspec.Struct, frozen=True, kw_only=True, tag="failure"):
    """The sender's report that one attempt failed; the retry service decides what next."""

    destination: str
    #: The job as it was attempted; None when the work message could not be decoded.
    job: SendJob | None = None
    #: The undecodable work message, kept verbatim so nothing is lost.
    raw: bytes | None = None
    permanent: bool
    reason: str
    reason_class: str
    failed_at: float = msgspec.field(default_factory=time.time)
    #: A delay the destination asked for (HTTP Retry-After), in seconds.
    retry_after: float | None = None


class ControlState(msgspec.Struct, frozen=True, kw_only=True, tag="control"):
    """The operator's decisions, broadcast whole on every change."""

    paused: list[str] = msgspec.field(default_factory=list)
    updated_at: float = msgspec.field(default_factory=time.time)


class DestinationStatus(msgspec.Struct, frozen=True, kw_only=True, tag="status"):
    """A sender's view of one destination, sent on changes and periodically."""

    destination: str
    #: "up", "down" (unreachable, probing), "source-down" (Orthanc does not answer: its
    #: jobs wait, Orthanc is probed) or "paused" (by an operator).
    state: str
    reason: str = ""
    oldest_waiting_seconds: float = 0.0
    in_flight: int = 0
    reported_at: float = msgspec.field(default_factory=time.time)


class CapturedJob(msgspec.Struct, frozen=True, kw_only=True, tag="captured"):
    """Ingest's record that it queued a failed Orthanc store job's instances; the retry
    service writes it to the audit log (the console and `GET /api/audit` show it)."""

    orthanc_job: OrthancJobRef
    destination: str
    #: Instances queued, and resources parked as not-found (deleted from Orthanc since).
    queued: int = 0
    not_found: int = 0
    #: Orthanc's description of who started the job ("REST API", "Lua", ...).
    description: str = ""
    source: str = "orthanc-job"
    captured_at: float = msgspec.field(default_factory=time.time)


BusMessage = SendJob | Failure

_encoder = msgspec.json.Encoder()
_bus_decoder = msgspec.json.Decoder(BusMessage)
_job_decoder = msgspec.json.Decoder(SendJob)


def new_job_id() -> str:
    return uuid.uuid4().hex


_control_decoder = msgspec.json.Decoder(ControlState)
_status_decoder = msgspec.json.Decoder(DestinationStatus)
_captured_decoder = msgspec.json.Decoder(CapturedJob)


def decode_captured(body: bytes) -> CapturedJob:
    return _captured_decoder.decode(body)


def decode_control(body: bytes) -> ControlState:
    return _control_decoder.decode(body)


def decode_status(body: bytes) -> DestinationStatus:
    return _status_decoder.decode(body)


def encode(message: BusMessage | ControlState | DestinationStatus | CapturedJob) -> bytes:
    return _encoder.encode(message)


def decode_job(body: bytes) -> SendJob:
    """Raises msgspec.DecodeError (ValidationError included) for anything else."""
    return _job_decoder.decode(body)


def decode_bus_message(body: bytes) -> BusMessage:
    return _bus_decoder.decode(body)


def job_headers(job: SendJob) -> dict[str, str | int]:
    """Readable AMQP headers, so the management UI's "get messages" view makes sense."""
    headers: dict[str, str | int] = {
        "destination": job.destination,
        "orthanc_id": job.orthanc_id,
        "sop_instance_uid": job.sop_instance_uid,
        "study_instance_uid": job.study_instance_uid,
        "attempts": job.attempts,
    }
    if job.last_error:
        headers["reason"] = job.last_error[:500]
    if job.orthanc_job is not None:
        headers["orthanc_job"] = job.orthanc_job.id
    return headers


def fresh(job: SendJob) -> SendJob:
    """The job as if it had never failed (manual requeue, hand-moved from parking)."""
    return msgspec.structs.replace(
        job,
        attempts=0,
        first_failed_at=None,
        last_failed_at=None,
        last_error="",
        reason_class="",
        parked_at=None,
    )
