"""DestinationConsumer with a destination that downloads and sends in its worker thread
(`deliver`, as kind "dicom" has): the same decision table as download-then-send."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sendqueue.shared.errors import InstanceNotFound, PermanentError, SourceUnavailable
from tests.unit.fakes import FakeDestination
from tests.unit.sender import test_consumer as base

pytestmark = pytest.mark.timeout(10)


class DeliveringDestination(FakeDestination):
    """Fetches through the consumer's fetcher (here: the fake Orthanc's bytes)."""

    def __init__(self) -> None:
        super().__init__("pacs", concurrency=3)
        self.delivered: list[tuple[Any, str, Path]] = []
        self.fail_with: BaseException | None = None

    async def deliver(self, fetcher: Any, orthanc_id: str, spool: Path) -> tuple[int, str, float]:
        self.delivered.append((fetcher, orthanc_id, spool))
        if self.fail_with is not None:
            raise self.fail_with
        return 7, "Success", 0.01


@pytest.fixture
async def sender(tmp_path, no_publish_pause, monkeypatch):
    destination = DeliveringDestination()
    monkeypatch.setattr(base, "FakeDestination", lambda *a, **k: destination)
    started = await base._start(tmp_path)
    started.consumer._fetcher = fetcher = object()  # what app.py hands every consumer
    started.fetcher = fetcher
    yield started
    await started.consumer.stop(grace=0)


async def test_the_worker_downloads_and_sends_and_the_loop_only_acks(sender):
    await sender.take(base._job())
    [(fetcher, orthanc_id, spool)] = sender.destination.delivered
    assert (fetcher, orthanc_id) == (sender.fetcher, "o1")
    assert spool.parent == sender.spool and not spool.exists()
    assert sender.journal == ["ack"]
    assert sender.metric("sendqueue_jobs_sent_total", protocol="fake") == 1
    assert sender.metric("sendqueue_bytes_sent_total") == 7
    assert sender.metric("sendqueue_send_duration_seconds_sum", protocol="fake") == 0.01


async def test_orthanc_failing_in_the_worker_is_decided_as_before(sender):
    # An instance Orthanc no longer has, while Orthanc answers: a failed attempt, parked
    sender.destination.fail_with = InstanceNotFound("HTTP 404")
    await sender.take(base._job())
    [failure] = sender.failures()
    assert failure.permanent and sender.journal[-1] == "ack"


async def test_orthanc_down_in_the_worker_returns_the_job_and_pauses(sender):
    sender.destination.fail_with = SourceUnavailable("Orthanc unreachable")
    sender.orthanc.up = False
    await sender.take(base._job())
    assert sender.consumer.state == "source-down"
    assert sender.failures() == []


async def test_a_refusal_in_the_worker_is_reported(sender):
    sender.destination.fail_with = PermanentError("0xA900", reason_class="dimse-a9xx")
    await sender.take(base._job())
    [failure] = sender.failures()
    assert (failure.permanent, failure.reason_class) == (True, "dimse-a9xx")
