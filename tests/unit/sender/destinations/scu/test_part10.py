"""Reading a Part-10 header without pydicom, and its pydicom fallback."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.uid import generate_uid

from sendqueue.services.sender.destinations.scu.part10 import HEAD_SIZE, read_part10
from sendqueue.shared.errors import PermanentError
from tests.support.dicom_factory import make_instance, to_bytes
from tests.support.variety import variety


def _read(data: bytes):
    return read_part10(data[:HEAD_SIZE], lambda: data)


@pytest.mark.parametrize("name", list(variety()))
def test_every_kind_of_file_gives_its_uids_syntax_and_data_set_offset(name):
    data = variety()[name]
    ds = pydicom.dcmread(io.BytesIO(data))
    got = _read(data)
    assert got.sop_class_uid == ds.SOPClassUID
    assert got.sop_instance_uid == ds.SOPInstanceUID
    assert got.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert got.dataset_offset == 144 + ds.file_meta.FileMetaInformationGroupLength


def test_the_data_sets_uids_win_over_a_disagreeing_file_meta():
    ds = pydicom.dcmread(io.BytesIO(make_instance()))
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    got = _read(to_bytes(ds))
    assert got.sop_instance_uid == ds.SOPInstanceUID


def test_a_header_the_quick_reader_cannot_walk_goes_to_pydicom():
    # An undefined-length sequence before (0008,0016): the quick reader gives up
    ds = pydicom.dcmread(io.BytesIO(make_instance()))
    item = pydicom.Dataset()
    item.CodeValue = "eng"
    ds.LanguageCodeSequence = [item]
    ds["LanguageCodeSequence"].is_undefined_length = True
    data = to_bytes(ds)
    assert _read(data).sop_instance_uid == ds.SOPInstanceUID


def test_a_data_set_without_uids_keeps_the_file_metas():
    ds = pydicom.dcmread(io.BytesIO(make_instance()))
    meta_uid = ds.file_meta.MediaStorageSOPInstanceUID
    del ds.SOPInstanceUID
    assert _read(to_bytes(ds)).sop_instance_uid == meta_uid


@pytest.mark.parametrize("data", [b"", b"\0" * 200, b"\0" * 128 + b"DICM" + b"\x02\x00"])
def test_what_is_not_part10_is_a_permanent_error(data):
    with pytest.raises(PermanentError) as failure:
        _read(data)
    assert failure.value.reason_class == "invalid-dicom"
