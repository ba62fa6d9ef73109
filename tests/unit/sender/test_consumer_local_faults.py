"""Faults that are not the job's: a spool that cannot take the file, an Orthanc that asks
to slow down. The job goes back untouched (no attempt used) and the consumer pauses and
probes, instead of burning attempts until everything is parked."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest

from sendqueue.shared.errors import SourceThrottled, SpoolUnavailable
from tests.unit.fakes import eventually
from tests.unit.sender.test_consumer import WORK, Sender, _job, _start

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
async def sender(tmp_path, no_publish_pause) -> AsyncIterator[Sender]:
    started = await _start(tmp_path)
    yield started
    await started.consumer.stop(grace=1)


async def test_a_vanished_spool_returns_the_job_untouched_and_is_made_again(sender):
    # Given a spool directory removed under the running sender
    shutil.rmtree(sender.spool)
    message = sender.message(_job(attempts=2))

    # When a job is consumed
    await sender.queue.deliver(message)

    # Then it goes back untouched, no attempt used, no failure reported, and consuming
    # pauses with the spool named as the reason
    assert sender.journal == ["cancel", f"publish {WORK} pacs", "ack"]
    (returned,) = sender.publisher.to(WORK)
    assert returned.body == message.body and returned.headers["attempts"] == 2
    assert sender.failures() == []
    assert "spool" in sender.consumer.state_reason
    assert sender.consumer.state != "up"

    # And the probe makes the spool again, and consuming resumes
    await eventually(lambda: sender.queue.consumer is not None)
    assert sender.spool.is_dir() and sender.consumer.state == "up"
    delivered = await sender.take(_job(id="job-2"))
    assert delivered.outcomes == ["ack"] and sender.failures() == []


@pytest.mark.parametrize(
    "fault",
    [
        SpoolUnavailable("the spool /var/spool/sendqueue is full"),
        SourceThrottled("Orthanc asked to slow down (HTTP 429 on GET /instances/o1/file)"),
        SourceThrottled("Orthanc asked to slow down (HTTP 408 on GET /instances/o1/file)"),
    ],
    ids=["spool-full", "orthanc-429", "orthanc-408"],
)
async def test_a_fault_that_is_not_the_jobs_uses_no_attempt(sender, fault):
    # Given a download that fails with a fault of this machine or a throttling Orthanc,
    # once
    sender.orthanc.errors["/instances/o1/file"] = fault
    message = sender.message(_job(attempts=4))

    # When a job is consumed
    await sender.queue.deliver(message)

    # Then the job goes back untouched and nothing is reported (so nothing is parked)
    (returned,) = sender.publisher.to(WORK)
    assert returned.body == message.body and returned.headers["attempts"] == 4
    assert sender.failures() == []
    assert message.outcomes == ["ack"]

    # And once the fault is gone, consuming resumes and the job is delivered
    del sender.orthanc.errors["/instances/o1/file"]
    await eventually(lambda: sender.queue.consumer is not None)
    again = await sender.take(_job())
    assert again.outcomes == ["ack"] and sender.failures() == []
    assert sender.destination.received == [b"DICM-o1"]


async def test_a_job_held_too_long_turns_the_consumer_stuck(sender, monkeypatch):
    # Given a send that hangs
    import asyncio

    from sendqueue.services.sender import consumer as consumer_module

    monkeypatch.setattr(consumer_module, "STUCK_AFTER", 0.05)
    sender.destination.gate = asyncio.Event()
    message = sender.message(_job())
    delivery = asyncio.create_task(sender.queue.deliver(message))

    # Then the consumer says it is stuck (the sender's /healthz turns red), until it is not
    await eventually(lambda: sender.consumer.stuck())
    sender.destination.gate.set()
    await delivery
    assert not sender.consumer.stuck() and message.outcomes == ["ack"]
