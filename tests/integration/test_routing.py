"""Routing rules on a real Orthanc: levels, tag globs, tags Orthanc does not index."""

from __future__ import annotations

import asyncio

from tests.integration.harness import dicom_destination, wait_received
from tests.support.dicom_factory import make_study, sop_instance_uid
from tests.support.scp import ScriptedSCP


async def test_routes_by_level_and_tags_send_each_instance_where_it_belongs(
    make_pipeline, orthanc, scp
):
    # Given an archive for every MR series once stable, and a CT reading room that only
    # wants thin slices (SliceThickness is not one of Orthanc's indexed tags)
    with ScriptedSCP(aet="ARCHIVE") as archive:
        pipeline = make_pipeline(
            destinations=[
                dicom_destination("archive", archive.port, archive.aet),
                dicom_destination("reading", scp.port, scp.aet),
            ],
            routes=[
                {"destinations": ["archive"], "level": "series", "match": {"Modality": "MR"}},
                {
                    "destinations": ["reading"],
                    "match": {"Modality": "CT", "SliceThickness": "0.*|1"},
                },
            ],
        )
        await pipeline.start()
        mr = make_study(3, modality="MR")
        thin = make_study(2, modality="CT", extra={"SliceThickness": "0.625"})
        thick = make_study(2, modality="CT", extra={"SliceThickness": "5"})
        for data in mr + thin + thick:
            orthanc.upload(data)
        # Then the MR series reaches the archive once stable (StableAge 2 s), in one go,
        # and only the thin CT slices reach the reading room
        assert await wait_received(archive, 3, timeout=30) == {sop_instance_uid(d) for d in mr}
        assert await wait_received(scp, 2) == {sop_instance_uid(d) for d in thin}
        await asyncio.sleep(3)
        assert scp.stored_uids() == {sop_instance_uid(d) for d in thin}
        assert archive.stored_uids() == {sop_instance_uid(d) for d in mr}
        await pipeline.stop()
