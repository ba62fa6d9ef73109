"""DestinationConsumer: the sender's decision table for one job, row by row."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sendqueue.services.sender.consumer import DestinationConsumer
from sendqueue.shared.config import SenderConfig
from sendqueue.shared.durations import Duration
from sendqueue.shared.errors import (
    AssociationRejected,
    DestinationUnavailable,
    InstanceNotFound,
    PermanentError,
    SourceUnavailable,
    TransientError,
)
from sendqueue.shared.schemas import Failure, SendJob, decode_bus_message, encode, job_headers
from sendqueue.shared.topology import Names
from tests.unit.fakes import (
    FakeChannel,
    FakeConnection,
    FakeDestination,
    FakeMessage,
    FakeOrthanc,
    FakePublisher,
    FakeQueue,
    consumer_with_fakes,
    eventually,
)

pytestmark = pytest.mark.timeout(10)

NAMES = Names("t")
FAILED = NAMES.failed_exchange
WORK = NAMES.work_exchange
QUEUED_AT = time.time() - 5


@dataclass
class Sender:
    """One destination's consumer, started on fakes; the journal shows the order of events."""

    consumer: DestinationConsumer
    destination: FakeDestination
    orthanc: FakeOrthanc
    publisher: FakePublisher
    queue: FakeQueue
    channel: FakeChannel
    registry: CollectorRegistry
    spool: Path
    journal: list[str]
    states: list[str] = field(default_factory=list)

    async def take(self, body: bytes | SendJob) -> FakeMessage:
        """The broker delivers one work message; returns it once the consumer is done."""
        message = self.message(body)
        await self.queue.deliver(message)
        return message

    def message(self, body: bytes | SendJob) -> FakeMessage:
        if isinstance(body, SendJob):
            return FakeMessage(
                encode(body), headers=job_headers(body), routing_key="pacs", journal=self.journal
            )
        return FakeMessage(body, routing_key="pacs", journal=self.journal)

    def failures(self) -> list[Failure]:
        decoded = [decode_bus_message(p.body) for p in self.publisher.to(FAILED)]
        assert all(isinstance(f, Failure) for f in decoded)
        return [f for f in decoded if isinstance(f, Failure)]

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, {"destination": "pacs", **labels})


def _job(**changes) -> SendJob:
    fields = {
        "id": "job-1",
        "destination": "pacs",
        "orthanc_id": "o1",
        "sop_instance_uid": "1.2.3.4",
        "queued_at": QUEUED_AT,
    }
    return SendJob(**{**fields, **changes})


async def _start(tmp_path: Path, *, paused: bool = False) -> Sender:
    journal: list[str] = []
    connection = FakeConnection(journal)
    destination = FakeDestination("pacs", concurrency=3)
    orthanc = FakeOrthanc()
    orthanc.store("o1", data=b"DICM-o1")
    publisher = FakePublisher(journal)
    registry = CollectorRegistry()
    spool = tmp_path / "spool"
    spool.mkdir()
    config = SenderConfig(probe_min=Duration(0.01), probe_max=Duration(0.02))
    consumer = consumer_with_fakes(
        destination,
        orthanc,
        spool,
        names=NAMES,
        publisher=publisher,
        config=config,
        registry=registry,
    )
    channel = connection.channel()
    sender = Sender(
        consumer=consumer,
        destination=destination,
        orthanc=orthanc,
        publisher=publisher,
        queue=connection.queue(NAMES.work_queue("pacs")),
        channel=channel,
        registry=registry,
        spool=spool,
        journal=journal,
    )

    async def changed() -> None:
        sender.states.append(consumer.state)

    consumer.on_change = changed
    await consumer.start(channel, paused=paused)  # type: ignore[arg-type]
    sender.states.clear()
    journal.clear()
    return sender


@pytest.fixture
async def sender(tmp_path, no_publish_pause) -> AsyncIterator[Sender]:
    started = await _start(tmp_path)
    yield started
    await started.consumer.stop(grace=0)


# -- delivered ------------------------------------------------------------------------------


async def test_a_delivered_job_is_acked_and_counted(sender):
    # Given a destination that accepts the instance
    job = _job()

    # When the job is consumed
    message = await sender.take(job)

    # Then the file reached the destination, the job is acked and nothing else published
    assert sender.destination.received == [b"DICM-o1"]
    assert sender.journal == ["ack"]
    assert sender.metric("sendqueue_jobs_sent_total", protocol="fake") == 1
    assert sender.metric("sendqueue_bytes_sent_total") == len(b"DICM-o1")
    assert sender.metric("sendqueue_send_duration_seconds_count", protocol="fake") == 1
    assert sender.metric("sendqueue_end_to_end_latency_seconds_count") == 1
    assert sender.metric("sendqueue_sends_in_flight") == 0
    # and the spooled file is gone
    assert message.outcomes == ["ack"] and list(sender.spool.iterdir()) == []


# -- failed attempts: reported to the retry service, then acked -----------------------------


async def test_a_permanent_refusal_is_reported_permanent_then_acked(sender):
    # Given a destination that refuses the instance for good
    sender.destination.answer(PermanentError("C-STORE 0xA900", reason_class="dimse-a9xx"))
    job = _job()

    # When the job is consumed
    await sender.take(job)

    # Then a permanent failure with the job as attempted is confirmed, and only then the ack
    assert sender.journal == [f"publish {FAILED} pacs", "ack"]
    (failure,) = sender.failures()
    assert (failure.permanent, failure.reason_class, failure.reason) == (
        True,
        "dimse-a9xx",
        "C-STORE 0xA900",
    )
    assert failure.job == job and failure.destination == "pacs"
    assert sender.publisher.to(FAILED)[0].headers["reason"] == "C-STORE 0xA900"
    labels = {"protocol": "fake", "class": "dimse-a9xx"}
    assert sender.metric("sendqueue_jobs_failed_total", **labels) == 1
    assert sender.destination.received == []


@pytest.mark.parametrize(
    ("error", "reason_class", "retry_after"),
    [
        (TransientError("C-STORE 0xA700", reason_class="dimse-a7xx"), "dimse-a7xx", None),
        (TransientError("HTTP 503", reason_class="http-5xx", retry_after=120), "http-5xx", 120),
        (ConnectionResetError("reset by peer"), "io-error", None),
        (TimeoutError(), "io-error", None),
    ],
    ids=["transient", "transient-retry-after", "connection-reset", "timeout"],
)
async def test_a_transient_failure_is_reported_for_a_retry_then_acked(
    sender, error, reason_class, retry_after
):
    # Given a destination that fails this attempt in a way worth retrying
    sender.destination.answer(error)

    # When the job is consumed
    await sender.take(_job())

    # Then a transient failure is confirmed, then the job acked; the destination stays up
    assert sender.journal == [f"publish {FAILED} pacs", "ack"]
    (failure,) = sender.failures()
    assert (failure.permanent, failure.reason_class) == (False, reason_class)
    assert failure.retry_after == retry_after
    assert sender.consumer.state == "up" and sender.queue.consumer is not None


async def test_an_unexpected_error_while_sending_is_reported_as_internal(sender):
    # Given a destination whose code fails in a way nobody foresaw
    sender.destination.answer(ZeroDivisionError("division by zero"))

    # When the job is consumed
    await sender.take(_job())

    # Then it is reported as "internal": retried, then parked, never lost
    assert sender.journal == [f"publish {FAILED} pacs", "ack"]
    (failure,) = sender.failures()
    assert (failure.permanent, failure.reason_class) == (False, "internal")
    assert "ZeroDivisionError" in failure.reason and failure.job == _job()


async def test_an_unexpected_error_outside_the_table_is_reported_as_internal_with_the_job(
    sender,
):
    # Given an instance Orthanc lost, and a /system that answers something other than JSON
    sender.orthanc.errors["/instances/o1/file"] = InstanceNotFound("HTTP 404 on GET /file")
    sender.orthanc.errors["/system"] = json.JSONDecodeError("Expecting value", "<html>", 0)
    job = _job()

    # When the job is consumed
    message = await sender.take(job)

    # Then the crash is reported as "internal" with the job (retried, then parked), then acked
    assert message.outcomes == ["ack"]
    (failure,) = sender.failures()
    assert (failure.permanent, failure.reason_class, failure.job) == (False, "internal", job)
    assert "JSONDecodeError" in failure.reason


async def test_an_undecodable_message_is_reported_with_its_raw_body_then_acked(sender):
    # Given a work message that is no job
    body = b"not a job at all"

    # When it is consumed
    await sender.take(body)

    # Then it is reported permanent with the body verbatim, then acked
    assert sender.journal == [f"publish {FAILED} pacs", "ack"]
    (failure,) = sender.failures()
    assert (failure.job, failure.raw, failure.permanent) == (None, body, True)
    assert failure.reason_class == "decode-error"
    assert sender.publisher.to(FAILED)[0].headers["destination"] == "pacs"


# -- the job as it arrives ------------------------------------------------------------------


async def test_a_job_moved_back_from_parking_by_hand_starts_afresh(sender):
    # Given a parked job (4 failed attempts) moved back to the work queue by a shovel
    job = _job(
        attempts=4,
        parked_at=time.time() - 60,
        first_failed_at=1.0,
        last_failed_at=2.0,
        last_error="C-STORE 0xA700",
        reason_class="dimse-a7xx",
    )
    sender.destination.answer(TransientError("still busy", reason_class="dimse-a7xx"))

    # When it is consumed and fails once more
    await sender.take(job)

    # Then the failure reports it as a first attempt of a job never parked
    (failure,) = sender.failures()
    assert failure.job is not None
    assert (failure.job.attempts, failure.job.parked_at, failure.job.first_failed_at) == (
        0,
        None,
        None,
    )
    assert failure.job.last_error == ""


async def test_a_job_addressed_to_another_destination_is_readdressed_to_this_queue(sender):
    # Given a job whose destination field names another destination (hand-moved)
    sender.destination.answer(TransientError("busy", reason_class="dimse-a7xx"))

    # When it is consumed from this destination's queue
    await sender.take(_job(destination="old-pacs"))

    # Then it was attempted here, and its failure is this destination's
    (failure,) = sender.failures()
    assert failure.destination == "pacs" and failure.job is not None
    assert failure.job.destination == "pacs"
    assert sender.publisher.to(FAILED)[0].routing_key == "pacs"


# -- unreachable: pause, return the job untouched, probe ------------------------------------


async def test_an_unreachable_destination_is_paused_the_job_returned_untouched_and_probed(
    sender,
):
    # Given a destination that refuses connections, and answers again at the second probe
    sender.destination.answer(DestinationUnavailable("connection refused"))
    sender.destination.probe_answers.append(DestinationUnavailable("still refused"))
    message = sender.message(_job(attempts=2))

    # When a job is consumed
    await sender.queue.deliver(message)

    # Then consuming stops before the job goes back untouched (no attempt used), then the ack
    assert sender.journal == ["cancel", f"publish {WORK} pacs", "ack"]
    (returned,) = sender.publisher.to(WORK)
    assert returned.body == message.body and returned.headers["attempts"] == 2
    assert sender.failures() == []
    assert (sender.consumer.state, sender.consumer.state_reason) == ("down", "connection refused")
    assert sender.metric("sendqueue_destination_up") == 0
    assert sender.metric("sendqueue_jobs_returned_total") == 1

    # And when the probe answers, consuming resumes
    await eventually(lambda: sender.queue.consumer is not None)
    assert sender.destination.probes == 2
    assert sender.consumer.state == "up" and sender.metric("sendqueue_destination_up") == 1
    assert sender.states == ["down", "up"]


async def test_a_probe_refused_for_good_resumes_so_that_each_job_is_parked(sender):
    # Given a destination down for a while, whose probe then gets a permanent rejection
    sender.destination.answer(DestinationUnavailable("association rejected (transient)"))
    sender.destination.probe_answers.append(AssociationRejected("rejected-permanent: bad AET"))
    await sender.take(_job())

    # When the probe gets that answer
    await eventually(lambda: sender.queue.consumer is not None)

    # Then consuming resumes, and the next job is reported permanent with the peer's answer
    assert sender.consumer.state == "up" and sender.destination.probes == 1
    sender.destination.answer(AssociationRejected("rejected-permanent: bad AET"))
    await sender.take(_job(id="job-2"))
    (failure,) = sender.failures()
    assert failure.permanent and "bad AET" in failure.reason


@pytest.mark.parametrize(
    ("error", "reason_class", "permanent"),
    [
        (InstanceNotFound("not found in Orthanc (HTTP 404)"), "not-found", True),
        (SourceUnavailable("Orthanc answered HTTP 500", reason_class="source-error"), None, False),
    ],
    ids=["not-found", "http-5xx"],
)
async def test_orthanc_failing_on_one_file_while_it_answers_is_a_failed_attempt(
    sender, error, reason_class, permanent
):
    # Given Orthanc answering GET /system but failing on this instance's file
    sender.orthanc.errors["/instances/o1/file"] = error

    # When the job is consumed
    await sender.take(_job())

    # Then the failure is reported (the instance's fault), acked, and nothing pauses
    assert sender.journal == [f"publish {FAILED} pacs", "ack"]
    (failure,) = sender.failures()
    assert failure.reason_class == (reason_class or "source-error")
    assert failure.permanent is permanent
    assert sender.consumer.state == "up" and sender.orthanc.asked("/system") == 1


async def test_a_not_found_while_orthanc_does_not_answer_returns_the_job_and_probes_orthanc(
    sender,
):
    # Given a wrong Orthanc URL: the file and /system both answer 404
    sender.orthanc.errors["/instances/o1/file"] = InstanceNotFound("HTTP 404 on GET /file")
    sender.orthanc.errors["/system"] = InstanceNotFound("HTTP 404 on GET /system")
    message = sender.message(_job())

    # When a job is consumed
    await sender.queue.deliver(message)

    # Then it is not parked as not-found: it goes back untouched and Orthanc is probed
    assert sender.journal == ["cancel", f"publish {WORK} pacs", "ack"]
    assert sender.failures() == [] and sender.publisher.to(WORK)[0].body == message.body
    assert sender.consumer.state == "source-down"
    assert "GET /system fails too" in sender.consumer.state_reason
    # the destination itself is not the one down
    assert sender.metric("sendqueue_destination_up") == 1
    await eventually(lambda: sender.orthanc.asked("/system") >= 3)
    assert sender.queue.consumer is None

    # And when Orthanc answers again, consuming resumes
    del sender.orthanc.errors["/system"]
    await eventually(lambda: sender.queue.consumer is not None)
    assert sender.consumer.state == "up"


async def test_orthanc_unreachable_returns_the_job_and_consuming_resumes_when_it_is_back(sender):
    # Given an Orthanc that is down
    sender.orthanc.up = False
    message = sender.message(_job())

    # When a job is consumed
    await sender.queue.deliver(message)

    # Then it goes back untouched and the consumer waits for Orthanc: source-down, named
    # apart from the destination being down
    assert sender.journal == ["cancel", f"publish {WORK} pacs", "ack"]
    assert sender.failures() == [] and sender.consumer.state == "source-down"
    assert sender.destination.probes == 0
    assert sender.metric("sendqueue_destination_up") == 1
    assert sender.metric("sendqueue_destination_state", state="source-down") == 1
    assert sender.metric("sendqueue_destination_state", state="down") == 0

    # And when Orthanc is back, consuming resumes
    sender.orthanc.up = True
    await eventually(lambda: sender.queue.consumer is not None)
    assert sender.consumer.state == "up"


# -- publishes not confirmed ----------------------------------------------------------------


async def test_a_failure_report_not_confirmed_sends_the_job_back_with_a_nack(sender):
    # Given a broker that does not confirm publishes, and a failing attempt
    sender.publisher.refuse()
    sender.destination.answer(TransientError("busy", reason_class="dimse-a7xx"))

    # When the job is consumed
    message = await sender.take(_job())

    # Then it goes back to its queue by a nack, never acked
    assert sender.journal == [f"refused {FAILED}", "nack requeue"]
    assert message.outcomes == ["nack requeue"]


async def test_a_return_not_confirmed_sends_the_job_back_with_a_nack_and_stays_paused(sender):
    # Given an unreachable destination and a broker that does not confirm publishes
    sender.publisher.refuse()
    sender.destination.answer(DestinationUnavailable("connection refused"))
    sender.destination.probe_answers.extend(DestinationUnavailable("down") for _ in range(500))

    # When a job is consumed
    message = await sender.take(_job())

    # Then it goes back by a nack, and the paused consumer does not take it again
    assert sender.journal == ["cancel", f"refused {WORK}", "nack requeue"]
    assert message.outcomes == ["nack requeue"]
    assert sender.consumer.state == "down" and sender.queue.consumer is None


# -- operator pause -------------------------------------------------------------------------


async def test_an_operator_pause_stops_consuming_until_resumed(sender):
    # When an operator pauses the destination
    await sender.consumer.set_paused(True)

    # Then it takes no job, and says so
    assert sender.queue.consumer is None and sender.consumer.state == "paused"
    assert sender.metric("sendqueue_destination_paused") == 1

    # And when resumed, it consumes again
    await sender.consumer.set_paused(False)
    assert sender.queue.consumer is not None and sender.consumer.state == "up"
    assert sender.metric("sendqueue_destination_paused") == 0
    assert sender.states == ["paused", "up"]


async def test_a_destination_paused_by_an_operator_stays_paused_when_its_probe_answers(sender):
    # Given an unreachable destination, paused by an operator while it is probed
    sender.destination.answer(DestinationUnavailable("connection refused"))
    sender.destination.probe_answers.extend(DestinationUnavailable("down") for _ in range(3))
    await sender.take(_job())
    await sender.consumer.set_paused(True)

    # When the probe answers
    await eventually(lambda: len(sender.states) == 3)

    # Then it does not consume until the operator resumes it
    assert sender.destination.probes == 4 and sender.states == ["down", "paused", "paused"]
    assert sender.queue.consumer is None and sender.consumer.state == "paused"
    await sender.consumer.set_paused(False)
    assert sender.queue.consumer is not None


async def test_start_sets_the_prefetch_to_twice_the_concurrency_and_a_paused_start_consumes_nothing(
    tmp_path,
):
    # When a consumer starts paused (the control state says so)
    sender = await _start(tmp_path, paused=True)

    # Then it takes no job, and its prefetch is twice the destination's concurrency (a job
    # waits ready for each association)
    try:
        assert sender.queue.consumer is None and sender.consumer.state == "paused"
        assert sender.destination.config.concurrency == 3
        assert sender.channel.prefetch_count == 6
        assert sender.queue.bindings == [(WORK, "pacs")]
    finally:
        await sender.consumer.stop(grace=0)


# -- shutdown -------------------------------------------------------------------------------


async def test_jobs_beyond_the_concurrency_wait_their_turn_and_all_are_delivered(sender):
    # Given the prefetch's worth of jobs in hand (twice the concurrency of 3) and sends
    # that hang until let go
    sender.destination.gate = asyncio.Event()
    sending = 0
    most = 0
    original = sender.destination.send

    async def counting_send(path: Path) -> str:
        nonlocal sending, most
        sending += 1
        most = max(most, sending)
        try:
            return await original(path)
        finally:
            sending -= 1

    sender.destination.send = counting_send
    for n in range(6):
        sender.orthanc.store(f"o{n}", data=f"DICM-o{n}".encode())
    messages = [sender.message(_job(id=f"job-{n}", orthanc_id=f"o{n}")) for n in range(6)]
    deliveries = [asyncio.create_task(sender.queue.deliver(m)) for m in messages]
    await eventually(lambda: sender.consumer.in_flight == 6)
    await asyncio.sleep(0.05)

    # Then only `concurrency` of them download and send at once
    assert sending == 3
    # And once the sends go through, every job is delivered and acked
    sender.destination.gate.set()
    await asyncio.gather(*deliveries)
    assert most == 3
    assert [m.outcomes for m in messages] == [["ack"]] * 6
    assert sorted(sender.destination.received) == sorted(f"DICM-o{n}".encode() for n in range(6))


async def test_jobs_that_end_together_share_one_ack(sender):
    # Given three jobs sending at once
    sender.destination.gate = asyncio.Event()
    for n in range(3):
        sender.orthanc.store(f"o{n}", data=f"DICM-o{n}".encode())
    messages = [sender.message(_job(id=f"job-{n}", orthanc_id=f"o{n}")) for n in range(3)]
    deliveries = [asyncio.create_task(sender.queue.deliver(m)) for m in messages]
    await eventually(lambda: sender.consumer.in_flight == 3)

    # When their sends end together
    sender.destination.gate.set()
    await asyncio.gather(*deliveries)

    # Then all three are acked, in fewer frames than jobs
    assert [m.outcomes for m in messages] == [["ack"]] * 3
    assert len(sender.queue.tags.frames) < 3, sender.queue.tags.frames
    assert not sender.queue.tags.unsettled


async def test_an_ack_never_covers_a_longer_send_nor_waits_for_it(sender):
    # Given four jobs in hand, the first a long send
    long_send = asyncio.Event()
    original = sender.destination.send

    async def send(path: Path) -> str:
        if path.name.startswith("job-0-"):
            await long_send.wait()
        return await original(path)

    sender.destination.send = send
    for n in range(4):
        sender.orthanc.store(f"o{n}", data=f"DICM-o{n}".encode())
    messages = [sender.message(_job(id=f"job-{n}", orthanc_id=f"o{n}")) for n in range(4)]
    deliveries = [asyncio.create_task(sender.queue.deliver(m)) for m in messages]

    # When the three others are delivered
    await asyncio.gather(*deliveries[1:])

    # Then they are acked, one by one (a multiple ack would cover the long send), and the
    # long send is not
    tags = sender.queue.tags
    assert [m.outcomes for m in messages] == [[], ["ack"], ["ack"], ["ack"]]
    assert sorted(tags.frames) == ["ack 2", "ack 3", "ack 4"] and list(tags.unsettled) == [1]
    # And once it ends, it is acked alone
    long_send.set()
    await deliveries[0]
    assert tags.frames[-1] == "ack 1" and not tags.unsettled


async def test_stop_waits_for_the_send_in_flight_and_it_is_acked(sender):
    # Given a send under way
    sender.destination.gate = asyncio.Event()
    message = sender.message(_job())
    delivery = asyncio.create_task(sender.queue.deliver(message))
    await eventually(lambda: sender.consumer.in_flight == 1)

    # When the consumer is stopped with a grace longer than the send
    stopping = asyncio.create_task(sender.consumer.stop(grace=5))
    await asyncio.sleep(0.05)

    # Then it stops consuming at once, but returns only once the send ended and was acked
    assert sender.queue.consumer is None and not stopping.done()
    sender.destination.gate.set()
    await stopping
    assert message.outcomes == ["ack"] and sender.destination.received == [b"DICM-o1"]
    await delivery


async def test_stop_gives_up_after_the_grace_and_leaves_the_job_unacked(sender):
    # Given a send that does not end
    sender.destination.gate = asyncio.Event()
    message = sender.message(_job())
    delivery = asyncio.create_task(sender.queue.deliver(message))
    await eventually(lambda: sender.consumer.in_flight == 1)

    # When the consumer is stopped with a short grace
    started = time.monotonic()
    await sender.consumer.stop(grace=0.1)

    # Then it returns after the grace, and the job, cancelled, is neither acked nor reported
    assert 0.1 <= time.monotonic() - started < 3
    delivery.cancel()
    with pytest.raises(asyncio.CancelledError):
        await delivery
    assert not message.settled and sender.publisher.published == []


async def test_a_stopped_consumer_does_not_resume_when_its_probe_would_answer(sender):
    # Given an unreachable destination being probed
    sender.destination.answer(DestinationUnavailable("connection refused"))
    sender.destination.probe_answers.extend(DestinationUnavailable("down") for _ in range(500))
    await sender.take(_job())

    # When the consumer is stopped
    await sender.consumer.stop(grace=0)
    probes = sender.destination.probes
    await asyncio.sleep(0.1)

    # Then probing ended and nothing consumes
    assert sender.destination.probes == probes and sender.queue.consumer is None
