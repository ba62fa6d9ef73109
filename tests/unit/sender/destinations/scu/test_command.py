"""Command sets: what we encode decodes with pydicom as PS3.7 says; responses decode."""

from __future__ import annotations

import io

import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom.dsutils import encode

from sendqueue.services.sender.destinations.scu import command


def _decoded(raw: bytes) -> Dataset:
    return read_dataset(io.BytesIO(raw), is_implicit_VR=True, is_little_endian=True)


def test_a_c_store_rq_carries_the_uids_and_a_correct_group_length():
    raw = command.c_store_rq(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.45")
    ds = _decoded(raw)
    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.AffectedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ds.AffectedSOPInstanceUID == "1.2.3.45"  # odd length: padded with a NULL
    assert (ds.CommandField, ds.MessageID, ds.Priority) == (0x0001, 7, 0)
    assert ds.CommandDataSetType != 0x0101


def test_a_c_echo_rq_has_no_data_set():
    ds = _decoded(command.c_echo_rq(3))
    assert (ds.CommandField, ds.MessageID, ds.CommandDataSetType) == (0x0030, 3, 0x0101)
    assert ds.AffectedSOPClassUID == command.VERIFICATION


def _response(**elements: object) -> bytes:
    ds = Dataset()
    ds.CommandGroupLength = 0
    ds.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.CommandField = 0x8001
    ds.MessageIDBeingRespondedTo = 7
    ds.CommandDataSetType = 0x0101
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    raw = encode(ds, True, True)
    assert raw is not None
    return raw


def test_a_response_gives_status_comment_and_offending_elements():
    raw = _response(Status=0xA900, ErrorComment="bad", OffendingElement=[0x00100020, 0x00080018])
    response = command.decode_response(raw)
    assert (response.command_field, response.responding_to) == (0x8001, 7)
    assert (response.status, response.has_data_set) == (0xA900, False)
    assert response.detail() == "error comment: bad; offending element: (0010,0020), (0008,0018)"


def test_a_plain_success_has_nothing_more_to_say():
    response = command.decode_response(_response(Status=0))
    assert response.status == 0 and response.detail() == ""


@pytest.mark.parametrize("raw", [b"", b"\x00\x00\x00\x00\x04\x00\x00\x00", b"\x08\x00" * 8])
def test_what_is_not_a_response_is_refused(raw):
    with pytest.raises(ValueError):
        command.decode_response(raw)
