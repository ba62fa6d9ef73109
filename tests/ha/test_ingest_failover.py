"""Two ingest processes on one config: one follows Orthanc, the other takes over on kill -9."""

from __future__ import annotations

import time

import pytest

from tests.ha.failover import Uploads, active_among
from tests.integration.harness import dicom_destination, wait_received
from tests.support.dicom_factory import sop_instance_uid
from tests.support.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ACTIVE = "sendqueue_ingest_active"
#: RabbitMQ hands the lease on as soon as the killed process's connection drops.
TAKE_OVER_WITHIN = 15.0


async def test_kill_9_of_the_active_ingest_twice_during_uploads_loses_nothing(
    make_pipeline, orthanc, scp
):
    # Given sender and retry, and two ingest processes on the same config
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    await pipeline.start("sender", "retry")
    listens = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    for listen in listens:
        pipeline.spawn("ingest", "--listen", listen, key=listen)
    await pipeline.wait_healthy(*listens, timeout=60)
    # And uploads that keep coming while ingests are killed
    uploads = Uploads(orthanc, studies=4, per_study=30)
    uploads.start(pause=0.05)
    for _ in range(2):
        # When the active ingest is killed -9 mid-stream
        active = await active_among(pipeline, listens, ACTIVE)
        await wait_received(scp, len(scp.stored_uids()) + 5, timeout=60)
        assert uploads.running, "the uploads ended before the kill: make them longer"
        pipeline.kill(active)
        killed_at = time.monotonic()
        # Then the other one takes over within seconds
        standby = next(listen for listen in listens if listen != active)
        assert await active_among(pipeline, [standby], ACTIVE, TAKE_OVER_WITHIN) == standby
        assert time.monotonic() - killed_at < TAKE_OVER_WITHIN
        # And the killed one comes back as the standby
        pipeline.spawn("ingest", "--listen", active, key=active)
        await pipeline.wait_healthy(active, timeout=60)
        assert await pipeline.metric_sum(active, ACTIVE) == 0
    await uploads.finish()
    # Then every instance is delivered, nothing is parked, and few were sent twice
    expected = {sop_instance_uid(d) for d in uploads.data}
    assert await wait_received(scp, len(expected), timeout=120) == expected
    assert (await pipeline.parked())["total"] == 0
    sent = sum(scp.receive_count(uid) for uid in expected)
    assert sent - len(expected) < 0.1 * len(expected), f"{sent} C-STOREs for {len(expected)}"
    for listen in listens:
        assert pipeline.terminate(listen) == 0
