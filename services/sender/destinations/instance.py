"""What the destinations read from a spooled Part-10 file: its file meta, sometimes its study.

Only the header is read, never the pixel data, so a 500 MB instance costs a few KB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from sendqueue.shared.errors import PermanentError

_STUDY_INSTANCE_UID = Tag(0x0020, 0x000D)


#: Preamble, "DICM", and the (0002,0000) group length element itself.
_META_START = 128 + 4 + 12


@dataclass(frozen=True)
class InstanceMeta:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    #: Where the data set starts in the file (None if the file meta has no group length).
    dataset_offset: int | None = None


def read_meta(path: Path) -> InstanceMeta:
    """The file meta of a Part-10 file; PermanentError when it is not one."""
    try:
        meta = read_file_meta_info(path)
        group_length = meta.get("FileMetaInformationGroupLength")
        return InstanceMeta(
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID),
            _META_START + int(group_length) if group_length is not None else None,
        )
    except Exception as exc:
        raise PermanentError(
            f"the instance file is not valid DICOM Part-10: {exc}", reason_class="invalid-dicom"
        ) from None


def pad_deflated_data_set(path: Path, meta: InstanceMeta) -> None:
    """Make a deflated data set even in length, as the network needs.

    A deflate stream may have any length and files often carry it as is, but data set
    fragments on an association must be even (DCMTK aborts the association on an odd
    one). One trailing NULL byte after the stream is the standard padding: inflaters stop
    at the end of the stream and ignore it. Only our own spool copy is changed.
    """
    if meta.transfer_syntax_uid != DeflatedExplicitVRLittleEndian or meta.dataset_offset is None:
        return
    if (path.stat().st_size - meta.dataset_offset) % 2:
        with open(path, "ab") as spool:
            spool.write(b"\0")


def read_study_uid(path: Path) -> str:
    """StudyInstanceUID of a Part-10 file ("" when absent); stops before the pixel data."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=[_STUDY_INSTANCE_UID])
    except Exception as exc:
        raise PermanentError(
            f"the instance file is not valid DICOM: {exc}", reason_class="invalid-dicom"
        ) from None
    return str(ds.get("StudyInstanceUID", ""))
