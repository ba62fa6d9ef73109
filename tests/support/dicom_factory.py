"""Synthetic DICOM instances: valid Part-10 files with file meta, made with pydicom alone.

Pixel data is a simple ramp built with the standard library (no numpy), so the images are
valid and compress like real ones. Large multi-frame files for memory benchmarks are written
frame by frame and are never held in memory whole.
"""

from __future__ import annotations

import io
import math
import shutil
import struct
import subprocess
import tempfile
from array import array
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    generate_uid,
)

# Transfer syntaxes whose PixelData can be appended raw after the header (little endian,
# native encoding): the only ones write_large_instance() supports.
_RAW_APPENDABLE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}


def _pixel_frame(rows: int, cols: int, bits: int) -> bytes:
    """One frame of a diagonal ramp: cheap to build, not all zeros, compresses like an image."""
    if bits == 8:
        return bytes((r + c) & 0xFF for r in range(rows) for c in range(cols))
    values = array("H", ((r * 7 + c * 3) & 0x0FFF for r in range(rows) for c in range(cols)))
    if values.itemsize != 2:  # pragma: no cover - 'H' is 2 bytes on every platform we run
        raise RuntimeError("array('H') is not 16-bit here")
    return values.tobytes()  # little endian hosts only (x86_64/aarch64)


def build_dataset(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient_id: str = "P1",
    modality: str = "CT",
    rows: int = 64,
    cols: int = 64,
    frames: int = 1,
    bits: int = 16,
    sop_class: str = CTImageStorage,
    transfer_syntax: str = ExplicitVRLittleEndian,
    instance_number: int = 1,
    extra: dict[str, Any] | None = None,
) -> Dataset:
    """A dataset with file meta and every attribute of make_instance(), without PixelData."""
    if bits not in (8, 16):
        raise ValueError("bits must be 8 or 16")
    sop_uid = sop_uid or generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_uid, transfer_syntax)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    _set_patient_study(ds, patient_id, modality, instance_number)
    _set_image_pixel(ds, rows, cols, frames, bits)
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    return ds


def _file_meta(sop_class: str, sop_uid: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.8.498.1")  # pydicom's root
    meta.ImplementationVersionName = "SQ_TEST_1"
    return meta


def _set_patient_study(ds: Dataset, patient_id: str, modality: str, number: int) -> None:
    ds.PatientName = f"Test^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240102"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]


def _set_image_pixel(ds: Dataset, rows: int, cols: int, frames: int, bits: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = bits
    ds.BitsStored = 8 if bits == 8 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1


def to_bytes(ds: Dataset) -> bytes:
    """Encode a dataset with its file meta as a Part-10 file."""
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def make_instance(
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient_id: str = "P1",
    modality: str = "CT",
    rows: int = 64,
    cols: int = 64,
    frames: int = 1,
    sop_class: str = CTImageStorage,
    transfer_syntax: str = ExplicitVRLittleEndian,
    extra: dict[str, Any] | None = None,
    *,
    bits: int = 16,
    instance_number: int = 1,
) -> bytes:
    """A valid uncompressed Part-10 instance (64x64 16-bit CT by default, ~8 KB)."""
    ds = build_dataset(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        patient_id=patient_id,
        modality=modality,
        rows=rows,
        cols=cols,
        frames=frames,
        bits=bits,
        sop_class=sop_class,
        transfer_syntax=transfer_syntax,
        instance_number=instance_number,
        extra=extra,
    )
    ds.PixelData = _pixel_frame(rows, cols, bits) * frames
    return to_bytes(ds)


def make_study(
    n_instances: int,
    study_uid: str | None = None,
    series_uid: str | None = None,
    **kwargs: Any,
) -> list[bytes]:
    """n instances of one study and one series (same patient), numbered 1..n."""
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    return [
        make_instance(study_uid, series_uid, instance_number=i + 1, **kwargs)
        for i in range(n_instances)
    ]


def sop_instance_uid(data: bytes) -> str:
    """SOPInstanceUID of an encoded instance (reads the header only)."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.SOPInstanceUID)


def write_large_instance(
    path: str | Path,
    size_bytes: int,
    *,
    rows: int = 512,
    cols: int = 512,
    transfer_syntax: str = ExplicitVRLittleEndian,
    **kwargs: Any,
) -> str:
    """Write a multi-frame 16-bit instance of about size_bytes to path; returns its UID.

    The header is written with pydicom, then PixelData (the last element) is appended with an
    explicit length, one frame at a time: memory stays at one frame whatever the size.
    """
    if transfer_syntax not in _RAW_APPENDABLE:
        raise ValueError("write_large_instance writes native little-endian pixel data only")
    frame = _pixel_frame(rows, cols, 16)
    frames = max(1, math.ceil(size_bytes / len(frame)))
    if frames * len(frame) >= 0xFFFFFFFF:
        raise ValueError("PixelData over 4 GB needs encapsulation; not supported here")
    kwargs.setdefault("sop_class", MultiFrameGrayscaleWordSecondaryCaptureImageStorage)
    kwargs.setdefault("modality", "OT")
    ds = build_dataset(
        rows=rows, cols=cols, frames=frames, transfer_syntax=transfer_syntax, **kwargs
    )
    with open(path, "wb") as fp:
        pydicom.dcmwrite(fp, ds, enforce_file_format=True)
        _write_pixel_header(fp, frames * len(frame), transfer_syntax)
        for _ in range(frames):
            fp.write(frame)
    return str(ds.SOPInstanceUID)


def _write_pixel_header(fp: BinaryIO, length: int, transfer_syntax: str) -> None:
    tag = struct.pack("<HH", 0x7FE0, 0x0010)
    if transfer_syntax == ImplicitVRLittleEndian:
        fp.write(tag + struct.pack("<I", length))
    else:  # explicit VR: OW has 2 reserved bytes then a 4-byte length
        fp.write(tag + b"OW\x00\x00" + struct.pack("<I", length))


def make_jpeg_instance(*, lossless: bool = False, **kwargs: Any) -> bytes:
    """A JPEG-compressed instance: Baseline (8-bit, .4.50) or Lossless SV1 (.4.70).

    pydicom cannot encode JPEG without extra plugins (pylibjpeg/Pillow/GDCM), so the
    uncompressed instance is transcoded with DCMTK's dcmcjpeg, a package we require anyway.
    """
    if shutil.which("dcmcjpeg") is None:
        raise RuntimeError("dcmcjpeg (Debian package dcmtk) is needed for JPEG instances")
    kwargs.setdefault("bits", 16 if lossless else 8)
    if not lossless and kwargs["bits"] != 8:
        raise ValueError("JPEG Baseline holds 8-bit samples only")
    with tempfile.TemporaryDirectory(prefix="sq-jpeg-") as tmp:
        src, dst = Path(tmp, "in.dcm"), Path(tmp, "out.dcm")
        src.write_bytes(make_instance(**kwargs))
        mode = "+e1" if lossless else "+eb"
        subprocess.run(
            ["dcmcjpeg", mode, str(src), str(dst)], check=True, capture_output=True, timeout=60
        )
        data = dst.read_bytes()
    expected = JPEGLosslessSV1 if lossless else JPEGBaseline8Bit
    ts = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID
    if ts != expected:
        raise RuntimeError(f"dcmcjpeg produced {ts}, expected {expected}")
    return data
