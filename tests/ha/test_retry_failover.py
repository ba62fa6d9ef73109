"""Two retry processes on one config: one routes failures, the other takes over on kill -9."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from tests.ha.failover import active_among
from tests.integration.harness import ADMIN_TOKEN, dicom_destination, wait_for, wait_received
from tests.support.dicom_factory import make_study, sop_instance_uid
from tests.support.ports import free_port
from tests.support.scp import always, fail_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ACTIVE = "sendqueue_retry_active"


async def _admin(listen: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"http://{listen}{path}", json=body, headers=headers) as answer,
    ):
        return answer.status, await answer.json(content_type=None)


async def test_kill_9_of_the_active_retry_during_failures_loses_and_doubles_nothing(
    make_pipeline, orthanc, scp
):
    # Given a destination that fails some instances (a transient status: retried, then
    # parked), and two retry processes on the same config
    study = make_study(40)
    failing = {sop_instance_uid(d) for d in study[::4]}
    scp.status_for = fail_for(failing, 0xA700)
    pipeline = make_pipeline(
        destinations=[dicom_destination("pacs", scp.port, scp.aet)],
        retry={"delays": ["1s", "2s"], "max_attempts": 4, "jitter": 0},
    )
    listens = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    for listen in listens:
        pipeline.spawn("retry", "--listen", listen, key=listen)
    active = await active_among(pipeline, listens, ACTIVE, timeout=60)
    standby = next(listen for listen in listens if listen != active)
    await pipeline.start("ingest", "sender")
    # Then the standby answers 503 and names the active one
    status, body = await _admin(standby, "GET", "/api/parked")
    assert status == 503 and body["active"] == f"http://{active}", body
    # When failures are being retried and the active one is killed -9
    for data in study:
        orthanc.upload(data)
    delivered = set(map(sop_instance_uid, study)) - failing
    await wait_received(scp, len(delivered), timeout=60)
    retried = await pipeline.metric_sum(active, "sendqueue_jobs_retried_total")
    assert retried > 0, "no failure was being retried yet"
    pipeline.kill(active)
    killed_at = time.monotonic()
    # Then the standby takes over within seconds
    assert await active_among(pipeline, [standby], ACTIVE, timeout=15) == standby
    assert time.monotonic() - killed_at < 15
    # And every failing instance is parked exactly once, with nothing lost
    parked = await wait_for(
        lambda: _admin(standby, "GET", "/api/parked?limit=1000"),
        lambda answer: answer[0] == 200 and answer[1]["total"] >= len(failing),
        timeout=90,
    )
    items = parked[1]["items"]
    assert sorted(item["sop_instance_uid"] for item in items) == sorted(failing)
    assert scp.stored_uids() == delivered
    # And a requeue on the survivor sends them, once the destination accepts them
    scp.status_for = always(0)
    status, body = await _admin(standby, "POST", "/api/parked/requeue", {"all": True})
    assert status == 200 and body["requeued"] == len(failing), body
    assert await wait_received(scp, len(study), timeout=60) == set(map(sop_instance_uid, study))
    status, body = await _admin(standby, "GET", "/api/parked")
    assert status == 200 and body["total"] == 0
    assert pipeline.terminate(standby) == 0
