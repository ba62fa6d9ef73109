"""What the SCU needs from a Part-10 file, read from its first bytes without pydicom.

The command's Affected SOP Class and Instance UIDs are the data set's own (0008,0016) and
(0008,0018), as Orthanc sends them, even where the file meta says otherwise. They sit in
the first few hundred bytes; anything unusual on the way (an undefined length, a value
past the bytes read) falls back to pydicom, which reads only up to the pixel data.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from sendqueue.shared.errors import PermanentError

#: Bytes read to find the UIDs (a header this long without them goes to pydicom).
HEAD_SIZE = 64 * 1024
_PREAMBLE = 128
#: VRs whose explicit length field is 4 bytes after 2 reserved ones (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
_SOP_CLASS, _SOP_INSTANCE = 0x00080016, 0x00080018
_UNDEFINED = 0xFFFFFFFF


@dataclass(frozen=True)
class Part10:
    #: The data set's (0008,0016) and (0008,0018); the file meta's where it has none.
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    #: Where the data set starts in the file.
    dataset_offset: int


class _Unusual(Exception):
    """The quick reader gives up; pydicom reads instead."""


def read_part10(head: bytes, whole: Callable[[], bytes | str]) -> Part10:
    """Parse head (the file's first HEAD_SIZE bytes or all of it); `whole` gives the file
    (bytes, or a path name) for the pydicom fallback. PermanentError when not Part-10."""
    try:
        meta, offset = _file_meta(head)
    except _Unusual as why:
        raise PermanentError(
            f"the instance file is not valid DICOM Part-10: {why}", reason_class="invalid-dicom"
        ) from None
    syntax = meta.get(0x00020010, "")
    try:
        uids = _data_set_uids(head[offset:], syntax)
    except (_Unusual, zlib.error, struct.error):
        uids = _uids_by_pydicom(whole())
    return Part10(
        uids.get(_SOP_CLASS) or meta.get(0x00020002, ""),
        uids.get(_SOP_INSTANCE) or meta.get(0x00020003, ""),
        syntax,
        offset,
    )


def _file_meta(head: bytes) -> tuple[dict[int, str], int]:
    """Group 0002 (always explicit VR little endian) and where the data set starts."""
    if head[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
        raise _Unusual("no DICM prefix")
    values, at = _elements(head, _PREAMBLE + 4, "<", explicit=True, last=0x0002FFFF)
    if 0x00020010 not in values:
        raise _Unusual("no Transfer Syntax UID in the file meta")
    return values, at


def _data_set_uids(data: bytes, syntax: str) -> dict[int, str]:
    if syntax == DeflatedExplicitVRLittleEndian:
        data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data, HEAD_SIZE)
    order = ">" if syntax == ExplicitVRBigEndian else "<"
    values, _ = _elements(
        data, 0, order, explicit=syntax != ImplicitVRLittleEndian, last=_SOP_INSTANCE
    )
    return values


def _elements(
    data: bytes, at: int, order: str, *, explicit: bool, last: int
) -> tuple[dict[int, str], int]:
    """Text values of the elements up to tag `last`, and where reading stopped."""
    tag_format = struct.Struct(order + "HH")
    short, long = struct.Struct(order + "H"), struct.Struct(order + "I")
    values: dict[int, str] = {}
    while at + 8 <= len(data):
        group, element = tag_format.unpack_from(data, at)
        tag = (group << 16) | element
        if tag > last:
            return values, at
        vr = data[at + 4 : at + 6]
        if not explicit:
            (length,), start = long.unpack_from(data, at + 4), at + 8
        elif vr in _LONG_VRS:
            (length,), start = long.unpack_from(data, at + 8), at + 12
        else:
            (length,), start = short.unpack_from(data, at + 6), at + 8
        if length == _UNDEFINED or start + length > len(data):
            raise _Unusual(f"element ({group:04X},{element:04X}) cannot be read quickly")
        if (group == 0x0002 and not explicit) or (explicit and not vr.isalpha()):
            raise _Unusual("not a valid element header")
        if tag in (0x00020002, 0x00020003, 0x00020010, _SOP_CLASS, _SOP_INSTANCE):
            values[tag] = data[start : start + length].decode("ascii").rstrip("\0 ")
        at = start + length
    if last == _SOP_INSTANCE and len(data) < HEAD_SIZE:
        return values, at  # the whole data set was read: it lacks the UIDs
    raise _Unusual("the header goes past the bytes read")


def _uids_by_pydicom(whole: bytes | str) -> dict[int, str]:
    source = io.BytesIO(whole) if isinstance(whole, bytes) else whole
    try:
        ds = dcmread(source, stop_before_pixels=True, specific_tags=[_SOP_CLASS, _SOP_INSTANCE])
    except Exception as exc:
        raise PermanentError(
            f"the instance file is not valid DICOM: {exc}", reason_class="invalid-dicom"
        ) from None
    return {tag: str(ds[tag].value) for tag in (_SOP_CLASS, _SOP_INSTANCE) if tag in ds}
