"""What the destinations read from a spooled Part-10 file: its file meta, sometimes its study.

Only the header is read, never the pixel data, so a 500 MB instance costs a few KB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.tag import Tag

from shared.errors import PermanentError

_STUDY_INSTANCE_UID = Tag(0x0020, 0x000D)


@dataclass(frozen=True)
class InstanceMeta:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def read_meta(path: Path) -> InstanceMeta:
    """The file meta of a Part-10 file; PermanentError when it is not one."""
    try:
        meta = read_file_meta_info(path)
        return InstanceMeta(
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID),
        )
    except Exception as exc:
        raise PermanentError(
            f"the instance file is not valid DICOM Part-10: {exc}", reason_class="invalid-dicom"
        ) from None


def read_study_uid(path: Path) -> str:
    """StudyInstanceUID of a Part-10 file ("" when absent); stops before the pixel data."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=[_STUDY_INSTANCE_UID])
    except Exception as exc:
        raise PermanentError(
            f"the instance file is not valid DICOM: {exc}", reason_class="invalid-dicom"
        ) from None
    return str(ds.get("StudyInstanceUID", ""))
