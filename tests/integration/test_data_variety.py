"""Instances of many kinds arrive as they were stored: transfer syntaxes, SOP classes
without pixels, non-ASCII names, private tags."""

from __future__ import annotations

import asyncio
import io
import subprocess
import tempfile
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from tests.integration.harness import dicom_destination, wait_received
from tests.support.dicom_factory import (
    make_instance,
    make_jpeg_instance,
    sop_instance_uid,
    to_bytes,
)
from tests.support.scp import ScriptedSCP, StorescpProcess

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def _dcmtk(tool: str, *args: str, data: bytes) -> bytes:
    """Convert with a DCMTK tool (dcmconv, dcmcrle, dcmcjpls): the encoders real sites use."""
    with tempfile.TemporaryDirectory(prefix="sq-variety-") as tmp:
        src, dst = Path(tmp, "in.dcm"), Path(tmp, "out.dcm")
        src.write_bytes(data)
        subprocess.run(
            [tool, *args, str(src), str(dst)], check=True, capture_output=True, timeout=60
        )
        return dst.read_bytes()


def _document(sop_class: str | pydicom.uid.UID, **elements: object) -> bytes:
    """A pixel-less instance (structured report, encapsulated PDF)."""
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID(sop_class)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName = "DOC-1", "Doc^Ument"
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return to_bytes(ds)


def _odd_deflated() -> bytes:
    """A deflated file whose deflate stream has an odd length, as DCMTK writes them."""
    for _ in range(50):
        data = _dcmtk("dcmconv", "+td", data=make_instance())
        meta_end = 132 + 12 + int(pydicom.dcmread(io.BytesIO(data)).file_meta[0x00020000].value)
        if (len(data) - meta_end) % 2:
            return data
    raise AssertionError("dcmconv made no odd-length deflate stream in 50 tries")


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


def _variety() -> dict[str, bytes]:
    private = make_instance(patient_id="PRIV")
    ds = pydicom.dcmread(io.BytesIO(private))
    block = ds.private_block(0x0099, "SENDQUEUE TEST", create=True)
    block.add_new(0x01, "LO", "private value")
    return {
        "implicit": make_instance(transfer_syntax=ImplicitVRLittleEndian),
        "big-endian": _dcmtk("dcmconv", "+te", "+tb", data=make_instance()),
        "deflated": _odd_deflated(),
        "rle": _dcmtk("dcmcrle", data=make_instance()),
        "jpeg-ls": _dcmtk("dcmcjpls", data=make_instance()),
        "jpeg": make_jpeg_instance(),
        "multi-frame": make_instance(frames=5, sop_class="1.2.840.10008.5.1.4.1.1.7.3"),
        "utf-8 names": make_instance(
            patient_id="ÄÖ-1",
            extra={"SpecificCharacterSet": "ISO_IR 192", "PatientName": "Müller^Jürgen=山田^太郎"},
        ),
        "private tags": to_bytes(ds),
        "structured report": _document(BASIC_TEXT_SR, Modality="SR"),
        "pdf": _document(
            ENCAPSULATED_PDF,
            Modality="DOC",
            MIMETypeOfEncapsulatedDocument="application/pdf",
            EncapsulatedDocument=b"%PDF-1.4\n%%EOF\n",
        ),
    }


@pytest.mark.parametrize("peer", ["pynetdicom", "storescp"])
async def test_every_kind_of_instance_arrives_as_stored(make_pipeline, orthanc, tmp_path, peer):
    instances = _variety()
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
        receiver = StorescpProcess(output_dir=out, aet="VARIETY")
    with receiver:
        pipeline = make_pipeline(
            destinations=[dicom_destination("pacs", receiver.port, receiver.aet)]
        )
        await pipeline.start()
        for data in instances.values():
            orthanc.upload(data)
        uids = {sop_instance_uid(d): name for name, d in instances.items()}
        await _all_received(receiver, pipeline, uids)
        assert (await pipeline.parked())["total"] == 0
    received = {}
    for path in out.rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path)
            received[str(ds.SOPInstanceUID)] = ds
    assert set(received) == set(uids)
    for uid, name in uids.items():
        sent = pydicom.dcmread(io.BytesIO(instances[name]))
        got = received[uid]
        # as stored in Orthanc: no transcoding for a peer that accepts the syntax
        assert got.file_meta.TransferSyntaxUID == syntaxes[name], name
        for keyword in ("PatientName", "PatientID", "PixelData", "EncapsulatedDocument"):
            assert got.get(keyword) == sent.get(keyword), (name, keyword)
    private = next(ds for ds in received.values() if ds.PatientID == "PRIV")
    assert private.get_private_item(0x0099, 0x01, "SENDQUEUE TEST").value == "private value"
