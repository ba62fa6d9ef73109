"""Storage commitment reports: read from the N-EVENT-REPORT, matched by transaction, and
turned into delivered / retried / parked."""

from __future__ import annotations

import asyncio

import pytest
from pydicom.dataset import Dataset

from sendqueue.services.sender.commitment import (
    CommitmentReport,
    Commitments,
    _outcome,
    _report,
)
from sendqueue.shared.errors import PermanentError, TransientError


def _item(uid: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = uid
    if reason is not None:
        item.FailureReason = reason
    return item


def test_a_report_lists_what_was_committed_and_what_failed_with_its_reason():
    info = Dataset()
    info.TransactionUID = "1.2.3"
    info.ReferencedSOPSequence = [_item("1.1")]
    info.FailedSOPSequence = [_item("1.2", 0x0112), _item("1.3", 0x0122)]
    report = _report(info)
    assert report == CommitmentReport(
        transaction_uid="1.2.3", committed=["1.1"], failed={"1.2": 0x0112, "1.3": 0x0122}
    )
    assert _outcome(report, "1.1") == "committed"
    with pytest.raises(TransientError, match=r"0x0112 \(no such object instance\)"):
        _outcome(report, "1.2")
    with pytest.raises(PermanentError, match="SOP class not supported"):
        _outcome(report, "1.3")
    with pytest.raises(TransientError, match="0x0110"):
        _outcome(report, "1.4")  # neither committed nor listed: not kept


async def test_a_report_wakes_only_the_waiter_of_its_transaction():
    commitments = Commitments()
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[CommitmentReport] = loop.create_future()
    commitments._waiting["1.2.3"] = waiter
    commitments.received(CommitmentReport(transaction_uid="9.9"))
    assert not waiter.done()
    commitments.received(CommitmentReport(transaction_uid="1.2.3", committed=["1.1"]))
    assert waiter.result().committed == ["1.1"]
