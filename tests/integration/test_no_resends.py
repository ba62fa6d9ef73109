"""No whole-study resends: a study that grows after it was sent reaches the destination
with each instance once; a changed instance is sent again; a manual send still resends."""

from __future__ import annotations

import asyncio

from tests.integration.harness import Pipeline, dicom_destination, wait_for, wait_received
from tests.support.dicom_factory import make_instance, make_study, sop_instance_uid
from tests.support.orthanc import OrthancProcess


async def test_a_study_that_grows_after_being_sent_is_not_sent_twice(
    amqp_url, require_orthanc, tmp_path, scp
):
    # Given an Orthanc that keeps the newest copy of an instance stored twice, and a route
    # that sends each study once it is stable
    with OrthancProcess(extra_config={"OverwriteInstances": True}) as orthanc:
        pipeline = Pipeline(
            amqp_url=amqp_url,
            orthanc=orthanc,
            tmp=tmp_path,
            destinations=[dicom_destination("pacs", scp.port, scp.aet)],
            routes=[{"destinations": ["pacs"], "level": "study"}],
        )
        try:
            await pipeline.start()
            first = make_study(4)
            for data in first:
                orthanc.upload(data)
            assert len(await wait_received(scp, 4, timeout=30)) == 4

            # When the study grows by three and is stable again
            study_uid, series_uid = _uids(first[0])
            more = [make_instance(study_uid, series_uid, instance_number=n) for n in range(5, 8)]
            for data in more:
                orthanc.upload(data)
            # Then only the three new instances are sent: no instance is received twice
            uids = {sop_instance_uid(d) for d in first + more}
            assert await wait_received(scp, 7, timeout=30) == uids
            await asyncio.sleep(orthanc.stable_age + 2)
            assert {uid: scp.receive_count(uid) for uid in uids} == dict.fromkeys(uids, 1)
            skipped = await pipeline.metric_sum("ingest", "sendqueue_jobs_skipped_total")
            assert skipped == 4

            # When one instance is stored again with other content
            changed_uid = sop_instance_uid(first[0])
            changed = make_instance(
                study_uid,
                series_uid,
                sop_uid=changed_uid,
                instance_number=1,
                extra={"ImageComments": "corrected"},
            )
            orthanc.upload(changed)
            # Then that one alone is sent again
            await wait_for(
                lambda: _async(scp.receive_count(changed_uid)), lambda n: n == 2, timeout=30
            )
            await asyncio.sleep(orthanc.stable_age + 2)
            assert sum(scp.receive_count(uid) for uid in uids) == 8

            # And an explicit send of the study still sends it whole
            [study_id] = orthanc.get_json("/studies")
            status, body = await pipeline.admin(
                "POST", "/api/send", {"destination": "pacs", "resources": [study_id]}
            )
            assert (status, body["queued"]) == (200, 7), body
            await wait_for(
                lambda: _async(sum(scp.receive_count(uid) for uid in uids)),
                lambda n: n == 15,
                timeout=30,
            )
        finally:
            await pipeline.stop()


async def _async(value: int) -> int:
    return value


def _uids(data: bytes) -> tuple[str, str]:
    from io import BytesIO

    from pydicom import dcmread

    ds = dcmread(BytesIO(data), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
