"""kind = "dicomweb" reads the same UIDs from an instance in memory as from its spool file."""

from __future__ import annotations

from pathlib import Path

import pytest

from sendqueue.services.sender.destinations.dicomweb import _read, _read_bytes
from sendqueue.shared.errors import PermanentError
from tests.support.dicom_factory import make_instance


@pytest.mark.parametrize("with_study", [True, False])
def test_memory_and_spool_file_give_the_same_uids(tmp_path: Path, with_study: bool) -> None:
    data = make_instance(study_uid="1.2.3.4", sop_uid="1.2.3.4.5")
    path = tmp_path / "one.dcm"
    path.write_bytes(data)
    expected = ("1.2.3.4.5", "1.2.3.4" if with_study else "", len(data))
    assert _read_bytes(data, with_study) == _read(path, with_study) == expected


def test_bytes_that_are_not_part_10_are_the_instances_fault() -> None:
    with pytest.raises(PermanentError) as failure:
        _read_bytes(b"<html>not DICOM</html>", True)
    assert failure.value.reason_class == "invalid-dicom"
