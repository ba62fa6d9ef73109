"""Prepare before sending: the copy a destination gets is made by Orthanc (transcoded,
modified), never stored there; what Orthanc cannot make is parked with its words."""

from __future__ import annotations

from io import BytesIO

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1

from tests.integration.harness import dicom_destination, wait_received
from tests.support.dicom_factory import make_study, sop_instance_uid, to_bytes
from tests.support.scp import ScriptedSCP


def with_private_tag(data: bytes) -> bytes:
    ds = dcmread(BytesIO(data))
    block = ds.private_block(0x0009, "SENDQUEUE TEST", create=True)
    block.add_new(0x01, "LO", "private detail")
    return to_bytes(ds)


async def test_orthanc_transcodes_and_modifies_the_copy_it_sends(make_pipeline, orthanc, tmp_path):
    received = tmp_path / "received"
    with ScriptedSCP(
        aet="PREPARED",
        write_dir=received,
        transfer_syntaxes=[JPEGLosslessSV1, ExplicitVRLittleEndian],
    ) as peer:
        # Given a destination that wants JPEG lossless, another institution name, no image
        # comments and no private tags, and one that cannot be served (unknown syntax)
        pipeline = make_pipeline(
            destinations=[
                dicom_destination(
                    "prepared",
                    peer.port,
                    peer.aet,
                    transfer_syntax=JPEGLosslessSV1,
                    modify={
                        "replace": {"InstitutionName": "Main Site"},
                        "remove": ["ImageComments"],
                        "keep_private_tags": False,
                    },
                ),
                dicom_destination("impossible", peer.port, peer.aet, transfer_syntax="1.2.3.4"),
            ],
            retry={"max_attempts": 1},
        )
        await pipeline.start()
        study = [
            with_private_tag(d)
            for d in make_study(2, extra={"ImageComments": "internal", "InstitutionName": "X"})
        ]
        for data in study:
            orthanc.upload(data)
        uids = {sop_instance_uid(d) for d in study}
        assert await wait_received(peer, 2, timeout=30) == uids
        # Then the peer got Orthanc's prepared copy, under the same SOP Instance UID
        for uid in uids:
            ds = dcmread(received / f"{uid}.dcm", force=True)
            assert ds.SOPInstanceUID == uid
            assert ds.InstitutionName == "Main Site" and "ImageComments" not in ds
            assert not any(element.tag.is_private for element in ds)
            assert peer.syntax_of[uid] == JPEGLosslessSV1
        # And Orthanc still holds only the originals, unchanged
        assert len(orthanc.instances()) == 2
        stored = dcmread(BytesIO(orthanc.download(orthanc.instances()[0])))
        assert stored.InstitutionName == "X" and "ImageComments" in stored
        # And what Orthanc cannot prepare is parked with Orthanc's own words
        parked = await pipeline.wait_parked(2, timeout=30)
        assert {i["destination"] for i in parked["items"]} == {"impossible"}
        assert all(i["reason_class"] == "prepare-failed" for i in parked["items"])
        assert all("1.2.3.4" in i["reason"] for i in parked["items"])
        await pipeline.stop()
