"""A destination's warnings policy on real C-STOREs: a warning delivered, or retried and
parked with the peer's status."""

from __future__ import annotations

from tests.integration.harness import dicom_destination, wait_received
from tests.support.dicom_factory import make_study, sop_instance_uid
from tests.support.scp import ScriptedSCP, always


async def test_a_warning_is_delivered_by_default_and_retried_then_parked_when_asked(
    make_pipeline, orthanc
):
    # Given two peers that store everything with "coercion of data elements" (0xB000)
    with (
        ScriptedSCP(aet="LENIENT", status_for=always(0xB000)) as lenient,
        ScriptedSCP(aet="STRICT", status_for=always(0xB000)) as strict,
    ):
        pipeline = make_pipeline(
            destinations=[
                dicom_destination("lenient", lenient.port, lenient.aet),
                dicom_destination(
                    "strict",
                    strict.port,
                    strict.aet,
                    warnings="retry",
                    max_attempts=2,
                    delays=["100ms"],
                ),
            ],
        )
        await pipeline.start()
        [data] = make_study(1)
        uid = sop_instance_uid(data)
        orthanc.upload(data)
        # Then the lenient destination counts it delivered once; the strict one retries it
        # and parks it with the status once its attempts are used up
        parked = await pipeline.wait_parked(1, timeout=30)
        [item] = parked["items"]
        assert (item["destination"], item["attempts"]) == ("strict", 2)
        assert item["reason_class"] == "dimse-b000" and "0xB000" in item["reason"]
        assert strict.receive_count(uid) == 2
        assert await wait_received(lenient, 1) == {uid} and lenient.receive_count(uid) == 1
        assert await pipeline.metric_sum("sender", "sendqueue_jobs_sent_total") == 1
        await pipeline.stop()
