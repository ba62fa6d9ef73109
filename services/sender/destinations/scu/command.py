"""DIMSE command sets (PS3.7 section 9 and 9.3.1): always Implicit VR Little Endian.

A C-STORE-RQ is seven elements: encoding them here costs microseconds, where a pydicom
Dataset round trip costs a good fraction of a millisecond per instance.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
NO_DATA_SET = 0x0101
#: Any other value says a data set follows; pynetdicom and DCMTK send 0x0001.
DATA_SET_FOLLOWS = 0x0001
PRIORITY_MEDIUM = 0x0000
VERIFICATION = "1.2.840.10008.1.1"

_ELEMENT = struct.Struct("<HHI")


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0x0000, element, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def _command_set(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return _element(0x0000, struct.pack("<I", len(body))) + body


def c_store_rq(message_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    return _command_set(
        _element(0x0002, _uid(sop_class_uid)),
        _element(0x0100, _us(C_STORE_RQ)),
        _element(0x0110, _us(message_id)),
        _element(0x0700, _us(PRIORITY_MEDIUM)),
        _element(0x0800, _us(DATA_SET_FOLLOWS)),
        _element(0x1000, _uid(sop_instance_uid)),
    )


def c_echo_rq(message_id: int) -> bytes:
    return _command_set(
        _element(0x0002, _uid(VERIFICATION)),
        _element(0x0100, _us(C_ECHO_RQ)),
        _element(0x0110, _us(message_id)),
        _element(0x0800, _us(NO_DATA_SET)),
    )


@dataclass(frozen=True)
class Response:
    """The parts of a DIMSE response the sender acts on."""

    command_field: int
    responding_to: int
    status: int
    has_data_set: bool
    #: (0000,0902) Error Comment, "" when absent.
    error_comment: str = ""
    #: (0000,0901) Offending Element: the tags the peer objected to.
    offending: tuple[int, ...] = ()

    def detail(self) -> str:
        """What the peer said beyond the status, for the job's reason."""
        parts = []
        if self.error_comment:
            parts.append(f"error comment: {self.error_comment}")
        if self.offending:
            tags = ", ".join(f"({t >> 16:04X},{t & 0xFFFF:04X})" for t in self.offending)
            parts.append(f"offending element: {tags}")
        return "; ".join(parts)


def decode_response(command: bytes) -> Response:
    """Decode a response command set; ValueError when it is not one."""
    values: dict[int, bytes] = {}
    at = 0
    while at + 8 <= len(command):
        group, element, length = _ELEMENT.unpack_from(command, at)
        if group != 0x0000 or at + 8 + length > len(command):
            raise ValueError("malformed command set")
        values[element] = command[at + 8 : at + 8 + length]
        at += 8 + length
    try:
        (field,) = struct.unpack("<H", values[0x0100])
        (responding_to,) = struct.unpack("<H", values[0x0120])
        (status,) = struct.unpack("<H", values[0x0900])
    except (KeyError, struct.error):
        raise ValueError("the response lacks Command Field, Message ID or Status") from None
    data_set_type = struct.unpack("<H", values[0x0800])[0] if 0x0800 in values else NO_DATA_SET
    comment = values.get(0x0902, b"").decode("ascii", "replace").strip("\0 ")
    raw = values.get(0x0901, b"")
    offending = tuple(
        (group << 16) | element
        for group, element in struct.iter_unpack("<HH", raw[: len(raw) // 4 * 4])
    )
    return Response(field, responding_to, status, data_set_type != NO_DATA_SET, comment, offending)
