"""Upper layer PDUs (PS3.8 section 9.3): framing, and the association negotiation.

The A-ASSOCIATE-RQ is built and the AC/RJ decoded with pynetdicom's PDU classes (plain
codecs, no threads); P-DATA-TF, release and abort are a few fixed bytes written here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = 0x04, 0x05, 0x06, 0x07

#: The DICOM application context name (PS3.7 A.2.1).
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_VERSION = "SENDQUEUE"
#: Largest P-DATA-TF we accept: responses are a few hundred bytes.
OUR_MAX_PDU = 16382

#: PDU type, reserved, PDU length; then one PDV: item length, context ID, control header.
_PDATA_HEADER = struct.Struct(">BBIIBB")
PDATA_HEADER_SIZE = _PDATA_HEADER.size
_PDU_HEADER = struct.Struct(">BBI")
PDU_HEADER_SIZE = _PDU_HEADER.size

RELEASE_RQ_PDU = bytes((RELEASE_RQ, 0, 0, 0, 0, 4, 0, 0, 0, 0))
RELEASE_RP_PDU = bytes((RELEASE_RP, 0, 0, 0, 0, 4, 0, 0, 0, 0))
#: A-ABORT, source 0 (service-user), reason 0 (not significant).
ABORT_PDU = bytes((ABORT, 0, 0, 0, 0, 4, 0, 0, 0, 0))

#: Message control header bits (PS3.8 E.2).
COMMAND, LAST = 0x01, 0x02

Proposal = tuple[str, list[str]]  # (abstract syntax, transfer syntaxes)


def pdata_header(context_id: int, control: int, length: int) -> bytes:
    """Header of a P-DATA-TF PDU carrying one PDV of `length` bytes of data."""
    return _PDATA_HEADER.pack(P_DATA_TF, 0, length + 6, length + 2, context_id, control)


def parse_pdu_header(header: bytes) -> tuple[int, int]:
    """(PDU type, length of what follows)."""
    kind, _, length = _PDU_HEADER.unpack(header)
    return kind, length


def iter_pdvs(body: bytes) -> list[tuple[int, int, memoryview]]:
    """The PDVs of a P-DATA-TF body: (context ID, control header, fragment)."""
    view, pdvs, at = memoryview(body), [], 0
    while at + 6 <= len(view):
        (length,) = struct.unpack_from(">I", view, at)
        if length < 2 or at + 4 + length > len(view):
            raise ValueError(f"malformed PDV item (length {length})")
        pdvs.append((view[at + 4], view[at + 5], view[at + 6 : at + 4 + length]))
        at += 4 + length
    return pdvs


def associate_rq(calling_aet: str, called_aet: str, proposals: list[Proposal]) -> bytes:
    """An encoded A-ASSOCIATE-RQ proposing each (abstract syntax, syntaxes) in order."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = calling_aet
    primitive.called_ae_title = called_aet
    contexts = []
    for index, (abstract, syntaxes) in enumerate(proposals):
        context = PresentationContext()
        context.context_id = 2 * index + 1
        context.abstract_syntax = abstract
        context.transfer_syntax = list(syntaxes)
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = OUR_MAX_PDU
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION
    primitive.user_information = [max_length, class_uid, version]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


@dataclass(frozen=True)
class Accepted:
    """What the peer's A-ASSOCIATE-AC grants."""

    #: (abstract syntax, transfer syntax) -> presentation context ID.
    contexts: dict[tuple[str, str], int]
    #: Largest P-DATA-TF variable field the peer takes; 0 means no limit.
    max_pdu: int


def _whole(kind: int, body: bytes) -> bytes:
    return _PDU_HEADER.pack(kind, 0, len(body)) + body


def decode_ac(body: bytes, proposals: list[Proposal]) -> Accepted:
    """The accepted contexts of an A-ASSOCIATE-AC (the AC names only IDs: the abstract
    syntax is the one we proposed under that ID). body: the PDU after its header."""
    ac = A_ASSOCIATE_AC()
    ac.decode(_whole(ASSOCIATE_AC, body))
    primitive = ac.to_primitive()
    contexts: dict[tuple[str, str], int] = {}
    for result in primitive.presentation_context_definition_results_list:
        context_id = int(result.context_id or 0)
        index = (context_id - 1) // 2
        if result.result != 0 or not result.transfer_syntax or not 0 <= index < len(proposals):
            continue
        abstract = proposals[index][0]
        contexts.setdefault((abstract, str(result.transfer_syntax[0])), context_id)
    return Accepted(contexts, int(primitive.maximum_length_received or 0))


@dataclass(frozen=True)
class Rejection:
    permanent: bool
    text: str


def decode_rj(body: bytes) -> Rejection:
    rj = A_ASSOCIATE_RJ()
    rj.decode(_whole(ASSOCIATE_RJ, body))
    permanent = rj.result == 1
    kind = "permanent" if permanent else "transient"
    return Rejection(permanent, f"rejected-{kind}: {rj.source_str}, {rj.reason_str}")
