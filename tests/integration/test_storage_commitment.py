"""Storage commitment against Orthanc as the Storage Commitment SCP: an instance counts as
delivered once Orthanc commits to it (its report comes on a new association, to
`[sender] commitment_listen`); one Orthanc does not keep is retried, then parked with
Orthanc's reason."""

from __future__ import annotations

from tests.integration.harness import dicom_destination, wait_for
from tests.support.dicom_factory import make_instance, make_study, sop_instance_uid
from tests.support.orthanc import OrthancProcess
from tests.support.ports import free_port

#: Orthanc keeps nothing of this patient (its C-STORE still answers success).
DROPPED_PATIENT = "NOCOMMIT"
FILTER = f"""
function ReceivedInstanceFilter(dicom, origin, info)
  return dicom.PatientID ~= "{DROPPED_PATIENT}"
end
"""


async def test_delivered_once_committed_and_parked_with_the_reason_when_not(
    make_pipeline, orthanc, tmp_path
):
    listen_port = free_port()
    lua = tmp_path / "filter.lua"
    lua.write_text(FILTER)
    archive_config = {
        # Orthanc sends its reports to the modality that asked, by AE title.
        "DicomModalities": {"sendqueue": ["SENDQUEUE", "127.0.0.1", listen_port]},
        "LuaScripts": [str(lua)],
    }
    with OrthancProcess(aet="ARCHIVE", extra_config=archive_config) as archive:
        pipeline = make_pipeline(
            destinations=[
                dicom_destination(
                    "archive",
                    archive.dicom_port,
                    archive.aet,
                    storage_commitment=True,
                    commitment_timeout="10s",
                    max_attempts=2,
                    delays=["200ms"],
                )
            ],
            sender={"commitment_listen": f"127.0.0.1:{listen_port}"},
        )
        await pipeline.start()
        kept = make_study(2)
        [dropped] = [make_instance(patient_id=DROPPED_PATIENT)]
        for data in [*kept, dropped]:
            orthanc.upload(data)

        # Then the instances Orthanc keeps are delivered, committed
        await wait_for(
            lambda: pipeline.metric_sum("sender", "sendqueue_jobs_sent_total"),
            lambda n: n == 2,
            timeout=60,
        )
        assert len(archive.instances()) == 2
        # and the one it dropped is retried, then parked with Orthanc's reason
        parked = await pipeline.wait_parked(1, timeout=60)
        [item] = parked["items"]
        assert item["sop_instance_uid"] == sop_instance_uid(dropped)
        assert item["reason_class"] == "commitment-failed" and item["attempts"] == 2
        assert "0x0112" in item["reason"] and "no such object instance" in item["reason"]
        await pipeline.stop()


async def test_a_report_on_the_same_association_counts_too(make_pipeline, orthanc):
    from tests.support.commitment_scp import CommittingSCP

    kept = make_study(2)
    [lost] = make_study(1)
    # Given a PACS that answers on the requesting association, and loses one instance
    with CommittingSCP(forget={sop_instance_uid(lost)}) as pacs:
        pipeline = make_pipeline(
            destinations=[
                dicom_destination(
                    "pacs",
                    pacs.port,
                    pacs.aet,
                    storage_commitment=True,
                    commitment_timeout="10s",
                    max_attempts=2,
                    delays=["200ms"],
                )
            ],
        )
        await pipeline.start()
        for data in [*kept, lost]:
            orthanc.upload(data)
        # Then what it kept is delivered, and what it lost is parked with its reason
        parked = await pipeline.wait_parked(1, timeout=60)
        [item] = parked["items"]
        assert item["sop_instance_uid"] == sop_instance_uid(lost)
        assert item["reason_class"] == "commitment-failed" and "0x0112" in item["reason"]
        await wait_for(
            lambda: pipeline.metric_sum("sender", "sendqueue_jobs_sent_total"),
            lambda n: n == 2,
            timeout=30,
        )
        assert pacs.reports == 2 + 2  # each kept one once, the lost one on both attempts
        await pipeline.stop()
