"""Transfer-syntax fallback: a JPEG instance to an SCP that takes only Explicit VR LE."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from sendqueue.services.sender.destinations.dicom import DicomDestination
from sendqueue.shared.errors import PermanentError
from tests.destinations.conftest import destination_config, source_config
from tests.support.availability import unavailable
from tests.support.dicom_factory import make_jpeg_instance, sop_instance_uid
from tests.support.scp import ScriptedSCP

pytestmark = pytest.mark.usefixtures("require_dcmcjpeg")


@pytest.fixture
def require_dcmcjpeg() -> None:
    import shutil

    if shutil.which("dcmcjpeg") is None:
        unavailable("dcmcjpeg (dcmtk) makes the JPEG instances")


@pytest.fixture
def uncompressed_scp() -> Iterator[ScriptedSCP]:
    """An SCP accepting only Explicit VR Little Endian, keeping what it receives."""
    with (
        tempfile.TemporaryDirectory(prefix="sq-scp-") as received,
        ScriptedSCP(
            aet="PLAINSCP", transfer_syntaxes=[ExplicitVRLittleEndian], write_dir=received
        ) as scp,
    ):
        yield scp


def scp_config(scp: ScriptedSCP, **keys: Any) -> Any:
    return destination_config(host="127.0.0.1", port=scp.port, called_aet=scp.aet, **keys)


def received(scp: ScriptedSCP, uid: str) -> pydicom.Dataset:
    assert scp.write_dir is not None
    return pydicom.dcmread(Path(scp.write_dir, f"{uid}.dcm"))


def assert_decoded_copy(scp: ScriptedSCP, original: bytes) -> None:
    uid = sop_instance_uid(original)
    got = received(scp, uid)
    source = pydicom.dcmread(io.BytesIO(original))
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert got.SOPInstanceUID == uid and got.StudyInstanceUID == source.StudyInstanceUID
    # Same image: decoders of lossy JPEG (DCMTK, Pillow) may differ by a grey level or two.
    difference = got.pixel_array.astype(int) - source.pixel_array.astype(int)
    assert abs(difference).max() <= 2


async def test_jpeg_is_decoded_locally_without_a_source_orthanc(
    uncompressed_scp, make_destination, spool
):
    destination = make_destination(scp_config(uncompressed_scp))
    data = make_jpeg_instance()
    detail = await destination.send(spool(data))
    assert detail == "Success (transcoded to Explicit VR Little Endian by pydicom)"
    assert_decoded_copy(uncompressed_scp, data)


async def test_jpeg_lossless_is_decoded_locally(uncompressed_scp, make_destination, spool):
    destination = make_destination(scp_config(uncompressed_scp))
    data = make_jpeg_instance(lossless=True)
    assert "by pydicom" in await destination.send(spool(data))
    assert_decoded_copy(uncompressed_scp, data)


async def test_jpeg_is_transcoded_by_the_source_orthanc(
    orthanc, uncompressed_scp, make_destination, spool
):
    data = make_jpeg_instance()
    orthanc.upload(data)
    destination = make_destination(scp_config(uncompressed_scp), source=source_config(orthanc))
    detail = await destination.send(spool(data))
    assert detail == "Success (transcoded to Explicit VR Little Endian by Orthanc)"
    assert_decoded_copy(uncompressed_scp, data)
    assert len(orthanc.instances()) == 1  # /modify answered the copy without storing it


async def test_no_transcoding_when_forbidden_parks_with_the_reason(
    uncompressed_scp, make_destination, spool
):
    destination = make_destination(scp_config(uncompressed_scp, transcode=False))
    with pytest.raises(PermanentError) as failure:
        await destination.send(spool(make_jpeg_instance()))
    assert failure.value.reason_class == "transcode-forbidden"
    assert "only as Explicit VR Little Endian" in str(failure.value)
    assert "transcode = false" in str(failure.value)
    assert uncompressed_scp.received == []


async def test_a_peer_accepting_jpeg_gets_the_file_unchanged(make_destination, spool):
    with tempfile.TemporaryDirectory() as kept, ScriptedSCP(write_dir=kept) as scp:
        destination = make_destination(scp_config(scp))
        data = make_jpeg_instance()
        assert await destination.send(spool(data)) == "Success"
        assert received(scp, sop_instance_uid(data)).file_meta.TransferSyntaxUID == (
            JPEGBaseline8Bit
        )


async def test_implicit_only_peer_gets_implicit_vr(make_destination, spool):
    with (
        tempfile.TemporaryDirectory() as kept,
        ScriptedSCP(transfer_syntaxes=[ImplicitVRLittleEndian], write_dir=kept) as scp,
    ):
        destination = make_destination(scp_config(scp))
        data = make_jpeg_instance()
        assert "Implicit VR Little Endian" in await destination.send(spool(data))
        got = received(scp, sop_instance_uid(data))
        assert got.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian


def test_fallback_contexts_survive_the_128_context_limit():
    from sendqueue.services.sender.destinations.dicom import _proposals

    contexts = [(f"1.2.3.{i}", JPEGBaseline8Bit) for i in range(100)]
    proposals = _proposals(contexts)
    assert len(proposals) <= 127
    assert proposals[0] == ("1.2.3.0", [JPEGBaseline8Bit])
    assert proposals[1] == ("1.2.3.0", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assert isinstance(DicomDestination, type)
