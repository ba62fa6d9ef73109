"""Send windows on a real pipeline: jobs wait in the queue until the window opens, and an
operator can send outside it by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.integration.harness import dicom_destination, wait_for, wait_queue, wait_received
from tests.support.dicom_factory import make_study, sop_instance_uid
from tests.support.scp import ScriptedSCP

#: The window opens this long after the test computes it: time enough to see jobs wait.
OPENS_IN = timedelta(seconds=12)


def window_from(opens: datetime, length: timedelta) -> str:
    """A daily window in UTC with seconds, e.g. "13:04:05-14:04:05" (may run overnight)."""
    return f"{opens:%H:%M:%S}-{opens + length:%H:%M:%S}"


async def destination_states(pipeline) -> dict[str, str]:
    status, body = await pipeline.admin("GET", "/api/queues")
    assert status == 200, body
    return {d["name"]: d["state"] for d in body["destinations"]}


async def test_jobs_wait_for_the_window_and_are_sent_once_it_opens(make_pipeline, orthanc, scp):
    now = datetime.now(UTC)
    with ScriptedSCP(aet="NIGHTLY") as nightly:
        # Given a destination whose window opens in a few seconds, and one whose window
        # opens only in two hours
        pipeline = make_pipeline(
            destinations=[
                dicom_destination(
                    "soon",
                    scp.port,
                    scp.aet,
                    send_window=window_from(now + OPENS_IN, timedelta(hours=1)),
                    send_window_timezone="UTC",
                ),
                dicom_destination(
                    "tonight",
                    nightly.port,
                    nightly.aet,
                    send_window=[window_from(now + timedelta(hours=2), timedelta(hours=1))],
                    send_window_timezone="UTC",
                ),
            ],
        )
        await pipeline.start()
        study = make_study(3)
        for data in study:
            orthanc.upload(data)
        uids = {sop_instance_uid(d) for d in study}

        # Then, before the window opens, the jobs wait in their queues, nothing is sent, and
        # the console's API, and the metric, say "waiting-for-window"
        await wait_queue(pipeline, "work.soon", ready=3)
        await wait_queue(pipeline, "work.tonight", ready=3)
        states = await destination_states(pipeline)
        assert states == {"soon": "waiting-for-window", "tonight": "waiting-for-window"}
        waiting = await pipeline.metric_sum(
            "sender", "sendqueue_destination_state", state="waiting-for-window"
        )
        assert waiting == 2
        assert datetime.now(UTC) < now + OPENS_IN, "the machine was too slow to see it wait"
        assert scp.stored_uids() == set() and nightly.stored_uids() == set()

        # When the window opens, everything is delivered, with no attempt used
        assert await wait_received(scp, 3, timeout=OPENS_IN.total_seconds() + 30) == uids
        assert all(scp.receive_count(uid) == 1 for uid in uids)
        await wait_for(lambda: destination_states(pipeline), lambda s: s["soon"] == "up", 10)

        # And an operator's resume sends to the other one now, outside its window
        status, body = await pipeline.admin("POST", "/api/destinations/tonight/resume")
        assert status == 200 and body["window_open_until"] > now.timestamp() + 3600
        assert await wait_received(nightly, 3, timeout=30) == uids
        status, audit = await pipeline.admin("GET", "/api/audit")
        resumed = [e for e in audit["items"] if e["action"] == "resume"]
        assert (
            resumed and resumed[0]["details"]["outside_window_until"] == body["window_open_until"]
        )
        # a pause returns it to its schedule: it waits for its window again
        await pipeline.admin("POST", "/api/destinations/tonight/pause")
        await pipeline.admin("POST", "/api/destinations/tonight/resume")
        await wait_for(
            lambda: destination_states(pipeline), lambda s: s["tonight"] == "waiting-for-window", 10
        )
        assert (await pipeline.parked())["total"] == 0
        await pipeline.stop()
