"""One destination's consumer: the ONLY place the sender decides what becomes of a job.

    delivered                      -> ack
    PermanentError                 -> report to retry (permanent: parked), ack
    TransientError / I/O error     -> report to retry (retried after a delay), ack
    destination or Orthanc down    -> pause and probe, put the job back untouched, ack
    Orthanc throttling (408, 429)  -> the same: no fault of the job
    spool full, gone, read-only    -> the same, probing the spool: no fault of the job
    anything unexpected            -> report to retry as "internal" (retried, then parked)
    CancelledError (shutdown)      -> leave unacked: the broker redelivers it

Reports and returns are published (confirmed) before the ack, which
sendqueue.shared.settle does for every consumer: a crash at any point loses nothing, at
worst the job is sent twice. The acks go out coalesced (sendqueue.shared.acks): the jobs
that finish in the same loop iteration share one `basic.ack(multiple=True)`, which never
covers a job still in hand or left unacked.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from sendqueue.services.sender.commitment import Commitments, commit_if_asked
from sendqueue.services.sender.deliveries import report_delivery
from sendqueue.services.sender.destinations import Destination
from sendqueue.services.sender.fetch import InstanceFetcher
from sendqueue.services.sender.metrics import SenderMetrics
from sendqueue.services.sender.prepare import fetch_instance
from sendqueue.shared.acks import AckCoalescer
from sendqueue.shared.amqp import Publisher
from sendqueue.shared.config import DestinationConfig, SenderConfig
from sendqueue.shared.errors import (
    TRANSIENT_IO_ERRORS,
    DestinationUnavailable,
    InstanceNotFound,
    PermanentError,
    SendQueueError,
    SourceThrottled,
    SourceUnavailable,
    SpoolUnavailable,
)
from sendqueue.shared.jobs import publish_failure
from sendqueue.shared.logs import job_event
from sendqueue.shared.orthanc import OrthancClient
from sendqueue.shared.schemas import Failure, SendJob, decode_job, encode, fresh, job_headers
from sendqueue.shared.settle import settle
from sendqueue.shared.topology import Names, declare_work_exchange, declare_work_queue

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[None]]
#: Spool file names: job id + a number unique in this process (cheaper than a uuid4; the
#: spool directory is this process's own).
_SPOOL_NAMES = itertools.count()

#: RabbitMQ takes a job back from a consumer that holds it longer than its consumer
#: timeout (30 min by default) and delivers it again, mid-send. Each consumer asks for
#: this much instead (RabbitMQ 3.11.15 and newer; older ones apply their `consumer_timeout`
#: setting, see docs/install.md): sends are bounded by the destinations' own timeouts.
CONSUMER_TIMEOUT_MS = 6 * 3600 * 1000
#: A job in hand longer than this turns /healthz red: something hangs.
STUCK_AFTER = 30 * 60.0
#: Jobs taken per unit of concurrency: one being sent, one waiting for the next free
#: association. With only as many as there are associations, each one idles after every
#: send for the ack to reach RabbitMQ and the next job to come back (a round trip through
#: the event loop and the broker, longer than a small instance's send on a loaded host).
PREFETCH_PER_SEND = 2


class DestinationConsumer:
    def __init__(
        self,
        destination: Destination,
        *,
        names: Names,
        publisher: Publisher,
        orthanc: OrthancClient,
        config: SenderConfig,
        spool_dir: Path,
        metrics: SenderMetrics,
        commitments: Commitments | None = None,
        fetcher: InstanceFetcher | None = None,
    ) -> None:
        self.destination = destination
        self._commitments = commitments
        self.name = destination.name
        self._names = names
        self._publisher = publisher
        self._orthanc = orthanc
        self._config = config
        self._spool = spool_dir
        self._metrics = metrics
        #: Downloads in the destination's worker threads (destinations with `deliver`).
        self._fetcher = fetcher
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        #: Unreachable (or Orthanc is): probing until it answers.
        self._down = False
        self._down_reason = ""
        #: While down: because Orthanc, not the destination, does not answer.
        self._source_down = False
        #: Paused by an operator (admin API); survives restarts via the control state.
        self._operator_paused = False
        #: Outside its send window (services/sender/windows.py): its jobs wait.
        self._window_closed = False
        #: Called after every state change (the status reporter publishes it).
        self.on_change: Callable[[], Awaitable[None]] | None = None
        #: When the newest job we took entered the queue: the head of a FIFO queue is
        #: at least that old, so it is the age of the oldest waiting job while any wait.
        self._head_since = time.time()
        self._stopping = False
        self._probe_task: asyncio.Task[None] | None = None
        self._in_flight = 0
        #: Downloads and sends at once on the path without worker threads.
        self._sends = asyncio.Semaphore(destination.config.concurrency)
        #: When each job in hand was taken (by delivery tag).
        self._taken_at: dict[int, float] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        #: The work queue's acks, one frame for the jobs that finish together.
        self._acks = AckCoalescer(self.name)
        # The hot path's metric children, looked up once rather than per job.
        protocol = destination.protocol
        self._in_flight_gauge = metrics.in_flight.labels(self.name)
        self._sent_count = metrics.sent.labels(self.name, protocol)
        self._send_duration = metrics.duration.labels(self.name, protocol)
        self._sent_bytes = metrics.bytes.labels(self.name)
        self._latency = metrics.latency.labels(self.name)
        metrics.up.labels(self.name).set(1)
        metrics.show_state(self.name, self.state)
        metrics.associations.labels(self.name).set_function(destination.connections_open)

    @property
    def state(self) -> str:
        if self._operator_paused:
            return "paused"
        if self._window_closed:
            return "waiting-for-window"
        if not self._down:
            return "up"
        # Orthanc down is no fault of the destination: named apart, so that neither the
        # operator nor an alert blames the destination (or a missing consumer) for it.
        return "source-down" if self._source_down else "down"

    @property
    def state_reason(self) -> str:
        return self._down_reason if self._down else ""

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def oldest_waiting(self, ready: int) -> float:
        """Age of the oldest waiting job, given the queue's ready count."""
        return max(0.0, time.time() - self._head_since) if ready > 0 else 0.0

    async def start(self, channel: AbstractChannel, *, paused: bool = False) -> None:
        concurrency = self.destination.config.concurrency
        # The sends themselves stay `concurrency` at once: the destination's worker threads
        # (or self._sends) bound them; the jobs beyond wait their turn in this process.
        await channel.set_qos(prefetch_count=concurrency * PREFETCH_PER_SEND)
        work = await declare_work_exchange(channel, self._names)
        self._queue = await declare_work_queue(channel, self._names, self.name, work)
        await self.set_paused(paused)

    async def set_paused(self, paused: bool) -> None:
        """Operator pause: stop taking jobs; they wait in the queue until resumed."""
        self._operator_paused = paused
        self._metrics.paused.labels(self.name).set(1 if paused else 0)
        if paused:
            await self._cancel()
        elif not self._down and not self._stopping and not self._window_closed:
            await self._consume()
        await self._changed()

    @property
    def window_closed(self) -> bool:
        return self._window_closed

    async def set_window_closed(self, closed: bool) -> None:
        """Outside its send window: stop taking jobs, like a pause (no attempt is used)."""
        self._window_closed = closed
        if closed:
            await self._cancel()
        elif self._queue and not (self._down or self._stopping or self._operator_paused):
            await self._consume()
        await self._changed()

    async def _changed(self) -> None:
        self._metrics.show_state(self.name, self.state)
        if self.on_change is not None:
            with contextlib.suppress(Exception):
                await self.on_change()

    async def _consume(self) -> None:
        assert self._queue is not None
        if self._tag is None:
            self._tag = await self._queue.consume(
                self._on_message, arguments={"x-consumer-timeout": CONSUMER_TIMEOUT_MS}
            )

    def stuck(self) -> bool:
        """Whether a job has been in hand longer than any send should take (/healthz)."""
        oldest = min(self._taken_at.values(), default=None)
        return oldest is not None and time.monotonic() - oldest > STUCK_AFTER

    async def _cancel(self) -> None:
        tag, self._tag = self._tag, None
        if tag and self._queue:
            with contextlib.suppress(Exception):
                await self._queue.cancel(tag)

    async def stop(self, grace: float) -> None:
        """Stop pulling, let in-flight sends finish for up to `grace` seconds."""
        self._stopping = True
        if self._probe_task:
            self._probe_task.cancel()
        await self._cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        # Before the channel closes: a finished job not acked would be sent again.
        await self._acks.flush()

    # -- one message ------------------------------------------------------------------
    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._acks.track(message)  # first, before any await: tags are seen in order
        self._in_flight += 1
        taken = id(message)
        self._taken_at[taken] = time.monotonic()
        self._idle.clear()
        if message.timestamp is not None:
            self._head_since = message.timestamp.timestamp()
        self._in_flight_gauge.inc()

        async def report_crash(exc: BaseException) -> None:
            await self._report(_crash_report(self.name, message.body, exc), None)

        try:
            await settle(
                message,
                lambda: self._handle(message),
                what=f"{self.name}: job",
                on_crash=report_crash,
                ack=self._acks.ack,
                nack=self._acks.nack_requeue,
            )
        finally:
            self._taken_at.pop(taken, None)
            self._in_flight -= 1
            self._in_flight_gauge.dec()
            if self._in_flight == 0:
                self._idle.set()

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            job = decode_job(message.body)
        except msgspec.DecodeError as exc:
            failure = Failure(
                destination=self.name,
                raw=message.body,
                permanent=True,
                reason=f"message could not be decoded: {exc}",
                reason_class="decode-error",
            )
            await self._report(failure, None)
            return
        if job.parked_at is not None:
            job = fresh(job)  # moved back from parking by hand: a new start
        if job.destination != self.name:
            job = msgspec.structs.replace(job, destination=self.name)
        await self._attempt(job)

    async def _attempt(self, job: SendJob) -> None:
        path = self._spool / f"{job.id}-{next(_SPOOL_NAMES)}.dcm"
        try:
            size, detail, took = await self._download_and_send(job, path)
            detail = await commit_if_asked(self._commitments, self.destination.config, path, detail)
        except DestinationUnavailable as exc:
            await self._return_and_pause(job, exc)
        except SourceThrottled as exc:
            await self._return_and_pause(job, exc, self._probe_orthanc)
        except SpoolUnavailable as exc:
            await self._return_and_pause(job, exc, self._probe_spool)
        except (InstanceNotFound, SourceUnavailable) as exc:
            await self._source_failed(job, exc)
        except SendQueueError as exc:
            permanent = isinstance(exc, PermanentError)
            retry_after = getattr(exc, "retry_after", None)  # HTTP Retry-After
            failure = _failure(job, str(exc), exc.reason_class, permanent, retry_after)
            await self._report(failure, job)
        except TRANSIENT_IO_ERRORS as exc:
            await self._report(_failure(job, f"I/O error: {exc!r}", "io-error"), job)
        except Exception as exc:
            log.exception("%s: unexpected error sending %s", self.name, job.orthanc_id)
            await self._report(_failure(job, f"internal error: {exc!r}", "internal"), job)
        else:
            await report_delivery(self._publisher, self._names, job)  # confirmed, then acked
            self._delivered(job, size, took, detail)
        finally:
            path.unlink(missing_ok=True)

    async def _download_and_send(self, job: SendJob, path: Path) -> tuple[int, str, float]:
        """(bytes, the peer's answer, seconds sending). The hot path: where the destination
        can, its worker thread downloads and sends (the event loop only hands the job
        over); otherwise download (or have Orthanc prepare the file) here, then send."""
        config = self.destination.config
        deliver = getattr(self.destination, "deliver", None)
        if deliver is not None and self._fetcher is not None and _stored_file_as_is(config):
            size, detail, took = await deliver(self._fetcher, job.orthanc_id, path)
            return int(size), str(detail), float(took)
        async with self._sends:  # no more downloads in the spool than sends at once
            size = await fetch_instance(self._orthanc, config, job.orthanc_id, path)
            started = time.monotonic()
            detail = await self.destination.send(path)
        return size, detail, time.monotonic() - started

    async def _source_failed(self, job: SendJob, exc: SendQueueError) -> None:
        """Orthanc failed on this job: the instance's fault only if Orthanc itself answers.

        Orthanc up but failing on one file (missing from its storage) is a failed attempt,
        so the job ends up parked instead of looping. A 404 or 5xx while GET /system fails
        too means Orthanc is down or the [orthanc] url is wrong: parking every job as
        not-found would invite deleting them all, so the job waits and Orthanc is probed.
        """
        if await self._orthanc.answers():
            permanent = isinstance(exc, PermanentError)
            await self._report(_failure(job, str(exc), exc.reason_class, permanent), job)
        elif isinstance(exc, SourceUnavailable):
            await self._return_and_pause(job, exc)
        else:
            why = SourceUnavailable(f"{exc}, and Orthanc's GET /system fails too")
            await self._return_and_pause(job, why)

    def _delivered(self, job: SendJob, size: int, took: float, detail: str) -> None:
        self._sent_count.inc()
        self._send_duration.observe(took)
        self._sent_bytes.inc(size)
        origin = job.stored_at or job.queued_at
        if origin:
            self._latency.observe(max(0.0, time.time() - origin))
        job_event(
            log,
            "sent",
            destination=self.name,
            orthanc_id=job.orthanc_id,
            sop_instance_uid=job.sop_instance_uid,
            attempt=job.attempts + 1,
            outcome="delivered",
            reason=detail if detail != "Success" else "",
        )

    async def _report(self, failure: Failure, job: SendJob | None) -> None:
        """Hand the failure to the retry service (confirmed; the ack follows)."""
        await publish_failure(self._publisher, self._names, failure)
        self._metrics.failed.labels(
            self.name, self.destination.protocol, failure.reason_class
        ).inc()
        job_event(
            log,
            "failed",
            logging.WARNING,
            destination=self.name,
            orthanc_id=job.orthanc_id if job else "",
            sop_instance_uid=job.sop_instance_uid if job else "",
            attempt=(job.attempts + 1) if job else None,
            outcome="permanent" if failure.permanent else "transient",
            reason=failure.reason,
            reason_class=failure.reason_class,
        )

    async def _return_and_pause(
        self, job: SendJob, exc: SendQueueError, probe: Probe | None = None
    ) -> None:
        """Unreachable: the job was not attempted, so it goes back as it was.

        Paused first: if the return is not confirmed, the job goes back by a nack instead,
        and the paused consumer does not take it again at once.
        """
        if probe is None:
            probe = (
                self._probe_destination
                if isinstance(exc, DestinationUnavailable)
                else self._probe_orthanc
            )
        await self._pause(str(exc), probe)
        await self._publisher.publish(
            self._names.work_exchange, self.name, encode(job), headers=job_headers(job)
        )
        self._metrics.returned.labels(self.name).inc()

    # -- pausing and probing ------------------------------------------------------------
    async def _pause(self, why: str, probe: Probe) -> None:
        if self._down or self._stopping:
            return
        self._down = True
        self._down_reason = why
        self._source_down = probe != self._probe_destination
        # destination_up says whether the destination answers; Orthanc down says nothing
        # about that, so it stays 1 (the state gauge says source-down).
        self._metrics.up.labels(self.name).set(1 if self._source_down else 0)
        log.warning("%s: unavailable, probing until it answers: %s", self.name, why)
        await self._cancel()
        self._probe_task = asyncio.create_task(self._probe_until_up(probe))
        await self._changed()

    async def _probe_until_up(self, probe: Probe) -> None:
        delay: float = self._config.probe_min
        while not self._stopping:
            await asyncio.sleep(delay)
            try:
                await probe()
            except PermanentError as exc:
                # It answers, but refuses us for good (association rejected-permanent):
                # sending resumes, and each job is parked with that answer.
                log.warning("%s: answers but refuses: %s", self.name, exc)
                break
            except Exception as exc:
                log.info("%s: still unavailable: %s", self.name, exc)
                delay = min(delay * 2, self._config.probe_max)
                continue
            break
        if self._stopping:
            return
        self._down = False
        self._metrics.up.labels(self.name).set(1)
        log.warning("%s: available again, resuming", self.name)
        if not self._operator_paused and not self._window_closed:
            await self._consume()
        await self._changed()

    async def _probe_destination(self) -> None:
        await self.destination.probe()

    async def _probe_orthanc(self) -> None:
        if not await self._orthanc.answers():
            raise SourceUnavailable("Orthanc does not answer GET /system")

    async def _probe_spool(self) -> None:
        """The spool takes a file again: it exists (made again if removed) and has room."""
        await asyncio.to_thread(_write_probe, self._spool)


#: Bytes the spool probe writes: room for at least this much is "has room".
_SPOOL_PROBE_BYTES = 1024 * 1024


def _write_probe(spool: Path) -> None:
    spool.mkdir(parents=True, exist_ok=True)
    probe = spool / f".probe-{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "wb") as out:
            out.write(b"\0" * _SPOOL_PROBE_BYTES)
            out.flush()
            os.fsync(out.fileno())
    finally:
        probe.unlink(missing_ok=True)


def _crash_report(destination: str, body: bytes, exc: BaseException) -> Failure:
    """What the retry service gets when handling a job crashed outside the decision table:
    the message verbatim, so it is retried (decodable) or parked, never lost."""
    try:
        job: SendJob | None = decode_job(body)
    except msgspec.DecodeError:
        job = None
    return Failure(
        destination=destination,
        job=job,
        raw=None if job else body,
        permanent=job is None,
        reason=f"internal error: {exc!r}",
        reason_class="internal",
    )


def _failure(
    job: SendJob,
    reason: str,
    reason_class: str,
    permanent: bool = False,
    retry_after: float | None = None,
) -> Failure:
    return Failure(
        destination=job.destination,
        job=job,
        permanent=permanent,
        reason=reason,
        reason_class=reason_class,
        retry_after=retry_after,
    )


def _stored_file_as_is(config: DestinationConfig) -> bool:
    """Whether the stored file goes out as it is, read once: then a worker thread may
    download it (into memory) and send it. A file Orthanc prepares (transfer_syntax,
    modify) comes from another request, and storage commitment reads the spooled file
    again after the send."""
    return config.prepare_body() is None and not getattr(config, "storage_commitment", False)
