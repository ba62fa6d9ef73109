"""Gateway clean-up: an instance is deleted from Orthanc once every destination chosen
for it delivered it, and not before, even while one of them is down for a while."""

from __future__ import annotations

import asyncio

from tests.integration.harness import dicom_destination, wait_for, wait_received
from tests.support.dicom_factory import make_study, sop_instance_uid
from tests.support.scp import ScriptedSCP, always

#: How long the second destination refuses every association.
OUTAGE = 8.0


async def test_nothing_is_deleted_until_every_destination_delivered(make_pipeline, orthanc, scp):
    with (
        ScriptedSCP(aet="BACKUP") as backup,
        ScriptedSCP(aet="NEVER", status_for=always(0xA900)) as refusing,
    ):
        # Given a route that deletes what it sent to the PACS and the backup, the backup
        # down for a while; and a route whose destination refuses everything for good
        pipeline = make_pipeline(
            destinations=[
                dicom_destination("pacs", scp.port, scp.aet),
                dicom_destination("backup", backup.port, backup.aet),
                dicom_destination("refusing", refusing.port, refusing.aet),
            ],
            routes=[
                {
                    "destinations": ["pacs", "backup"],
                    "match": {"Modality": "CT"},
                    "delete_after_delivery": True,
                },
                {
                    "destinations": ["refusing"],
                    "match": {"Modality": "MR"},
                    "delete_after_delivery": True,
                },
            ],
        )
        backup.refuse_associations(OUTAGE)
        await pipeline.start()
        ct = make_study(3, modality="CT")
        [mr] = make_study(1, modality="MR")
        for data in [*ct, mr]:
            orthanc.upload(data)
        uids = {sop_instance_uid(d) for d in ct}

        # Then while the backup is down the PACS has everything and Orthanc still holds it
        assert await wait_received(scp, 3, timeout=30) == uids
        await asyncio.sleep(2)
        assert backup.stored_uids() == set()
        assert len(orthanc.instances()) == 4

        # When the backup comes back, it gets everything, and only then is it deleted
        assert await wait_received(backup, 3, timeout=OUTAGE + 30) == uids
        await wait_for(lambda: _now(len(orthanc.instances())), lambda n: n == 1, timeout=30)
        # The MR instance, parked for its only destination, stays
        parked = await pipeline.wait_parked(1)
        assert parked["items"][0]["destination"] == "refusing"
        [remaining] = orthanc.instances()
        sop = orthanc.get_json(f"/instances/{remaining}")["MainDicomTags"]["SOPInstanceUID"]
        assert sop == sop_instance_uid(mr)

        # And each deletion is counted and audited, once
        assert await pipeline.metric_sum("retry", "sendqueue_instances_deleted_total") == 3
        _, audit = await pipeline.admin("GET", "/api/audit")
        deletions = [e for e in audit["items"] if e["action"] == "delete-after-delivery"]
        assert len(deletions) == 3 and {e["who"] for e in deletions} == {"sendqueue"}
        assert {e["details"]["sop_instance_uid"] for e in deletions} == uids
        assert all(e["details"]["destinations"] == ["backup", "pacs"] for e in deletions)
        await pipeline.stop()


async def _now(value: int) -> int:
    return value
