"""A corpus of instances of many kinds: every transfer syntax the tests know, SOP classes
without pixels, non-ASCII names, private tags. Used wherever "every kind of instance" must
arrive as it was stored."""

from __future__ import annotations

import io
import subprocess
import tempfile
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from tests.support.dicom_factory import make_instance, make_jpeg_instance, to_bytes

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def jpeg2000_instance() -> bytes:
    """An 8-bit instance with JPEG 2000 (lossless) pixel data: Pillow's OpenJPEG encodes the
    codestream, pydicom encapsulates it (DCMTK has no JPEG 2000 codec)."""
    from PIL import Image

    ds = pydicom.dcmread(io.BytesIO(make_instance(bits=8)))
    image = Image.frombytes("L", (ds.Columns, ds.Rows), ds.PixelData)
    out = io.BytesIO()
    image.save(out, "JPEG2000", irreversible=False, no_jp2=True)
    ds.PixelData = pydicom.encaps.encapsulate([out.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    return to_bytes(ds)


def data_set_bytes(data: bytes) -> bytes:
    """A Part-10 file's data set as encoded, after the file meta."""
    meta_length = int(pydicom.dcmread(io.BytesIO(data)).file_meta[0x00020000].value)
    return data[132 + 12 + meta_length :]


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


def variety() -> dict[str, bytes]:
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
        "jpeg 2000": jpeg2000_instance(),
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
