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


async def test_per_destination_attempts_delays_and_calling_aet(make_pipeline, orthanc, scp):
    # Given two destinations refusing everything with 0xA700, with their own ladders
    scp.status_for = lambda _uid, _nth: 0xA700
    with ScriptedSCP(aet="PATIENT", status_for=lambda _uid, _nth: 0xA700) as patient:
        pipeline = make_pipeline(
            destinations=[
                dicom_destination(
                    "quick",
                    scp.port,
                    scp.aet,
                    max_attempts=2,
                    delays=["100ms"],
                    calling_aet="EDGE-ONE",
                ),
                dicom_destination(
                    "patient", patient.port, patient.aet, max_attempts=4, delays=["100ms", "200ms"]
                ),
            ],
            retry={"max_attempts": 10, "delays": ["30s"]},
        )
        await pipeline.start()
        [data] = make_study(1)
        uid = sop_instance_uid(data)
        orthanc.upload(data)
        parked = await pipeline.wait_parked(2, timeout=30)
        attempts = {item["destination"]: item["attempts"] for item in parked["items"]}
        # Then each gave up after its own number of attempts, on its own (short) ladder
        assert attempts == {"quick": 2, "patient": 4}
        assert (scp.receive_count(uid), patient.receive_count(uid)) == (2, 4)
        assert scp.calling_aets == {"EDGE-ONE"} and patient.calling_aets == {"SENDQUEUE"}
        await pipeline.stop()
