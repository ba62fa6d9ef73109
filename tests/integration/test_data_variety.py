"""Instances of many kinds arrive as they were stored: transfer syntaxes, SOP classes
without pixels, non-ASCII names, private tags."""

from __future__ import annotations

import asyncio
import io

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLSLossless,
    RLELossless,
)

from tests.integration.harness import dicom_destination, wait_received
from tests.support.dicom_factory import sop_instance_uid
from tests.support.scp import ScriptedSCP, StorescpProcess
from tests.support.variety import data_set_bytes, variety


async def _all_received(receiver, pipeline, uids: dict[str, str]) -> None:
    try:
        if isinstance(receiver, ScriptedSCP):
            await wait_received(receiver, len(uids))
        else:
            await asyncio.to_thread(receiver.wait_for, len(uids), 60)
    except TimeoutError:
        parked = (await pipeline.parked())["items"]
        why = [(uids.get(i["sop_instance_uid"]), i["reason"]) for i in parked]
        raise AssertionError(f"not everything arrived; parked: {why}") from None


@pytest.mark.parametrize("data_path", ["fast", "pynetdicom"])
@pytest.mark.parametrize("peer", ["pynetdicom", "storescp"])
async def test_every_kind_of_instance_arrives_as_stored(
    make_pipeline, orthanc, tmp_path, peer, data_path
):
    instances = variety()
    syntaxes = {
        name: str(pydicom.dcmread(io.BytesIO(d)).file_meta.TransferSyntaxUID)
        for name, d in instances.items()
    }
    assert syntaxes["big-endian"] == ExplicitVRBigEndian
    assert syntaxes["deflated"] == DeflatedExplicitVRLittleEndian
    assert (syntaxes["rle"], syntaxes["jpeg-ls"]) == (RLELossless, JPEGLSLossless)
    out = tmp_path / "received"
    if peer == "pynetdicom":
        receiver = ScriptedSCP(aet="VARIETY", write_dir=out)
    else:
        # +B: storescp writes the data set exactly as it came off the wire
        receiver = StorescpProcess(output_dir=out, aet="VARIETY", extra_args=("+B",))
    with receiver:
        pipeline = make_pipeline(
            destinations=[
                dicom_destination("pacs", receiver.port, receiver.aet, data_path=data_path)
            ]
        )
        await pipeline.start()
        for data in instances.values():
            orthanc.upload(data)
        uids = {sop_instance_uid(d): name for name, d in instances.items()}
        await _all_received(receiver, pipeline, uids)
        assert (await pipeline.parked())["total"] == 0
    received, wire = {}, {}
    for path in out.rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            ds = pydicom.dcmread(io.BytesIO(raw))
            received[str(ds.SOPInstanceUID)] = ds
            wire[str(ds.SOPInstanceUID)] = data_set_bytes(raw)
    assert set(received) == set(uids)
    for uid, name in uids.items():
        # byte for byte the data set Orthanc holds; a deflate stream of odd length gets
        # the one NULL the network needs
        source = data_set_bytes(instances[name])
        expected = source + b"\0" if name == "deflated" and len(source) % 2 else source
        assert wire[uid] == expected, name
    for uid, name in uids.items():
        sent = pydicom.dcmread(io.BytesIO(instances[name]))
        got = received[uid]
        # as stored in Orthanc: no transcoding for a peer that accepts the syntax
        assert got.file_meta.TransferSyntaxUID == syntaxes[name], name
        for keyword in ("PatientName", "PatientID", "PixelData", "EncapsulatedDocument"):
            assert got.get(keyword) == sent.get(keyword), (name, keyword)
    private = next(ds for ds in received.values() if ds.PatientID == "PRIV")
    assert private.get_private_item(0x0099, 0x01, "SENDQUEUE TEST").value == "private value"
