"""Routes on how instances reached Orthanc: the sending modality, the called AE title, the
way in (C-STORE or REST), and tag rules that must not match."""

from __future__ import annotations

import asyncio

from tests.integration.harness import dicom_destination, wait_received
from tests.support.dicom_factory import make_study, sop_instance_uid
from tests.support.modality import c_store
from tests.support.scp import ScriptedSCP


async def test_routes_by_sending_modality_called_aet_and_origin(make_pipeline, orthanc, scp):
    # Given a CT reading room fed by the CT modalities only, a gateway destination fed by
    # what was sent to Orthanc as "GATEWAY", and an archive of everything but REST uploads
    with ScriptedSCP(aet="GATEWAYDEST") as gateway, ScriptedSCP(aet="ARCHIVE") as archive:
        pipeline = make_pipeline(
            destinations=[
                dicom_destination("reading", scp.port, scp.aet),
                dicom_destination("gateway", gateway.port, gateway.aet),
                dicom_destination("archive", archive.port, archive.aet),
            ],
            routes=[
                {"destinations": ["reading"], "from_aet": "CT_ROOM1|CT_ROOM2"},
                {"destinations": ["gateway"], "called_aet_in": "GATEWAY"},
                {"destinations": ["archive"], "origin": "!RestApi"},
            ],
        )
        await pipeline.start()
        from_ct = make_study(2, modality="CT")
        from_mr = make_study(2, modality="MR")
        by_rest = make_study(1, modality="CT")
        # When two modalities C-STORE into Orthanc under their own AE titles, and a file
        # is uploaded by REST
        assert await asyncio.to_thread(
            c_store, orthanc.dicom_port, from_ct, calling_aet="CT_ROOM2"
        ) == [0, 0]
        assert await asyncio.to_thread(
            c_store, orthanc.dicom_port, from_mr, calling_aet="MR_3T", called_aet="GATEWAY"
        ) == [0, 0]
        orthanc.upload(by_rest[0])
        # Then each destination receives exactly what its route chose
        ct_uids = {sop_instance_uid(d) for d in from_ct}
        mr_uids = {sop_instance_uid(d) for d in from_mr}
        assert await wait_received(scp, 2, timeout=30) == ct_uids
        assert await wait_received(gateway, 2, timeout=30) == mr_uids
        assert await wait_received(archive, 4, timeout=30) == ct_uids | mr_uids
        await asyncio.sleep(2)  # nothing more arrives: the REST upload went nowhere
        assert scp.stored_uids() == ct_uids
        assert gateway.stored_uids() == mr_uids
        assert archive.stored_uids() == ct_uids | mr_uids
        await pipeline.stop()


async def test_negated_and_combined_tag_rules(make_pipeline, orthanc, scp):
    # Given a destination that takes no structured reports or presentation states, and only
    # chest studies that are not paediatric
    pipeline = make_pipeline(
        destinations=[dicom_destination("pacs", scp.port, scp.aet)],
        routes=[
            {
                "destinations": ["pacs"],
                "match": {
                    "Modality": "!SR|PR",
                    "StudyDescription": ["*CHEST*", "!*PEDS*"],
                },
            }
        ],
    )
    await pipeline.start()
    wanted = make_study(2, modality="CT", extra={"StudyDescription": "CT Chest"})
    unwanted = [
        *make_study(1, modality="SR", extra={"StudyDescription": "CT Chest"}),
        *make_study(1, modality="CT", extra={"StudyDescription": "Peds chest"}),
        *make_study(1, modality="CT", extra={"StudyDescription": "Head"}),
    ]
    for data in unwanted + wanted:
        orthanc.upload(data)
    assert await wait_received(scp, 2, timeout=30) == {sop_instance_uid(d) for d in wanted}
    await asyncio.sleep(2)
    assert scp.stored_uids() == {sop_instance_uid(d) for d in wanted}
    await pipeline.stop()
