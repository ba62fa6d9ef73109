"""Cancelling jobs that still wait: queued in a paused destination's queue, or delayed in
a retry tier. They are parked as `cancelled`, the rest keep waiting, and a requeue undoes it."""

from __future__ import annotations

from tests.integration.harness import dicom_destination, wait_for, wait_queue, wait_received
from tests.support.dicom_factory import make_study, sop_instance_uid
from tests.support.scp import ScriptedSCP, always


async def delayed(pipeline, destination: str) -> int:
    status, body = await pipeline.admin("GET", "/api/queues")
    assert status == 200, body
    [dest] = [d for d in body["destinations"] if d["name"] == destination]
    return sum(dest["delayed"].values())


async def test_cancel_waiting_jobs_by_study_then_by_destination_and_undo(
    make_pipeline, orthanc, scp
):
    # Given a destination paused by an operator (its jobs queue up), and one that answers
    # "out of resources" (its jobs wait in a 30 s retry tier)
    with ScriptedSCP(aet="BUSY", status_for=always(0xA700)) as busy:
        pipeline = make_pipeline(
            destinations=[
                dicom_destination("held", scp.port, scp.aet),
                dicom_destination("busy", busy.port, busy.aet),
            ],
            retry={"delays": ["30s"], "max_attempts": 5},
        )
        await pipeline.start()
        status, _ = await pipeline.admin("POST", "/api/destinations/held/pause")
        assert status == 200
        study_a = make_study(2)
        study_b = make_study(1)
        for data in study_a + study_b:
            orthanc.upload(data)
        await wait_queue(pipeline, "work.held", ready=3)
        await wait_for(lambda: delayed(pipeline, "busy"), lambda n: n == 3, 20)

        # When an operator cancels study A's waiting jobs
        study_uid = make_study_uid(study_a)
        status, result = await pipeline.admin("POST", "/api/jobs/cancel", {"study": study_uid})
        # Then its jobs for both destinations are parked as cancelled; study B's still wait,
        # where they waited
        assert status == 200, result
        assert (result["cancelled"], result["failed"]) == (4, 0)
        assert result["by_destination"] == {"held": 2, "busy": 2}
        parked = await pipeline.parked(reason="cancelled")
        assert parked["total"] == 4
        assert {i["study_instance_uid"] for i in parked["items"]} == {study_uid}
        assert all("cancelled by admin" in i["reason"] for i in parked["items"])
        await wait_queue(pipeline, "work.held", ready=1)
        assert await delayed(pipeline, "busy") == 1
        assert busy.receive_count(sop_instance_uid(study_b[0])) == 1  # not sent again early

        # And a cancel by destination takes the rest of the held queue
        status, result = await pipeline.admin("POST", "/api/jobs/cancel", {"destination": "held"})
        assert (status, result["cancelled"]) == (200, 1)
        await wait_queue(pipeline, "work.held", ready=0)

        # And the audit log records both, with their counts
        _, audit = await pipeline.admin("GET", "/api/audit")
        cancels = [e for e in audit["items"] if e["action"] == "cancel"]
        assert sorted(e["count"] for e in cancels) == [1, 4]

        # When the operator undoes it for the held destination, resumed
        await pipeline.admin("POST", "/api/destinations/held/resume")
        status, result = await pipeline.admin(
            "POST", "/api/parked/requeue", {"destination": "held", "reason": "cancelled"}
        )
        assert (status, result["requeued"]) == (200, 3)
        # Then every instance reaches it
        expected = {sop_instance_uid(d) for d in study_a + study_b}
        assert await wait_received(scp, 3, timeout=30) == expected
        await pipeline.stop()


async def test_a_cancel_must_say_what_it_selects(make_pipeline, orthanc, scp):
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    await pipeline.start("retry")
    for body, words in (
        ({}, "say what to cancel"),
        ({"destination": "nowhere"}, "unknown destination"),
        ({"all": True, "study": "1.2"}, "'all' must be true, and alone"),
        ({"colour": "red"}, "unknown field(s): colour"),
    ):
        status, answer = await pipeline.admin("POST", "/api/jobs/cancel", body)
        assert status == 400 and words in answer["error"], (body, answer)
    # And only an admin token may cancel
    status, _ = await pipeline.admin("POST", "/api/jobs/cancel", {"all": True}, token="wrong")
    assert status == 401
    await pipeline.stop()


def make_study_uid(study: list[bytes]) -> str:
    from io import BytesIO

    from pydicom import dcmread

    return str(dcmread(BytesIO(study[0]), stop_before_pixels=True).StudyInstanceUID)
