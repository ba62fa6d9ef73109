"""A file in Orthanc that is not DICOM (a corrupt attachment, a file put there by hand):
the job is parked with a reason that says so, nothing reaches the destination's store
as "delivered", and the sender goes on with the next job."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from sendqueue.services.sender.consumer import DestinationConsumer
from sendqueue.services.sender.destinations import create_destination
from sendqueue.services.sender.metrics import SenderMetrics
from sendqueue.shared.config import SenderConfig
from sendqueue.shared.durations import Duration
from sendqueue.shared.schemas import Failure, SendJob, decode_bus_message, encode, job_headers
from sendqueue.shared.topology import Names
from tests.destinations.conftest import destination_config
from tests.support.ports import free_port
from tests.unit.fakes import FakeConnection, FakeMessage, FakeOrthanc, FakePublisher

pytestmark = pytest.mark.timeout(60)

NAMES = Names("t")
NOT_DICOM = b"%PDF-1.4 this is a scanned referral letter, not an image\n" * 20


@pytest.fixture
async def peer() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A destination that records what it is sent and answers as Orthanc does to a
    file it cannot parse (400)."""
    received: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.json_response({"Message": "Bad file format"}, status=400)

    app = web.Application(client_max_size=1024**2)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", received
    await runner.cleanup()


@pytest.mark.parametrize("kind", ["dicomweb", "orthanc"])
async def test_a_non_dicom_file_is_parked_with_its_reason(kind, peer):
    url, received = peer
    orthanc = FakeOrthanc()
    orthanc.store("o1", data=NOT_DICOM)
    publisher = FakePublisher()
    connection = FakeConnection()
    destination = create_destination(destination_config(kind=kind, url=url, name="pacs"))
    with tempfile.TemporaryDirectory() as spool:
        consumer = DestinationConsumer(
            destination,
            names=NAMES,
            publisher=publisher,
            orthanc=orthanc,
            config=SenderConfig(probe_min=Duration(0.01), probe_max=Duration(0.02)),
            spool_dir=Path(spool),
            metrics=SenderMetrics(CollectorRegistry()),
        )
        await consumer.start(connection.channel())
        queue = connection.queue(NAMES.work_queue("pacs"))
        job = SendJob(id="j1", destination="pacs", orthanc_id="o1")
        message = FakeMessage(encode(job), headers=job_headers(job), routing_key="pacs")
        try:
            await queue.deliver(message)
            # the consumer goes on: still consuming, destination up
            still_consuming = queue.consumer is not None and consumer.state == "up"
        finally:
            await consumer.stop(grace=0)
            await destination.close()

    # Then the job is reported permanent (the retry service parks it at once), acked
    assert message.outcomes == ["ack"]
    [report] = [decode_bus_message(p.body) for p in publisher.to(NAMES.failed_exchange)]
    assert isinstance(report, Failure) and report.permanent
    assert report.job is not None and report.job.id == "j1"
    assert still_consuming
    if kind == "dicomweb":
        assert received == []  # not even sent: it has no SOP Instance UID to report on
