"""The ledger's arithmetic, on hand-made receipts: a ledger that miscounts would let the
fault suite pass while it loses instances. Fast: no broker, no Orthanc."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.faults.ledger import QueueContents, failed_attempts, reckon
from tests.faults.workload import Plan, Workload, plan_of

pytestmark = pytest.mark.faults

PLANS = {
    "1.1": Plan.DELIVER,
    "1.2": Plan.DELIVER,
    "1.3": Plan.REFUSED_ONCE,
    "1.4": Plan.REFUSED_FOR_GOOD,
    "1.5": Plan.DELIVER,
}


def _reckon(received, contents):
    return reckon("t", PLANS, received, contents, started=0.0, faults={})


def test_everything_delivered_or_parked_with_its_reason_is_not_lost():
    received = [("1.1", 0), ("1.2", 0), ("1.3", 0xA700), ("1.3", 0), ("1.5", 0xB000)]
    contents = QueueContents(parked={"1.4": [("refused", "dimse-a9xx")]})
    figures = _reckon(received, contents)
    assert (figures.delivered, figures.parked, figures.lost, figures.duplicates) == (4, 1, 0, 0)
    assert figures.parked_unplanned == 0 and figures.cstores == 5
    assert figures.parked_reasons == {"dimse-a9xx": 1}


def test_an_instance_nowhere_is_lost_and_one_still_queued_is_waiting():
    received = [("1.1", 0), ("1.3", 0xA700), ("1.4", 0xA900)]  # refusals store nothing
    contents = QueueContents(waiting=Counter({"1.2": 1}))
    figures = _reckon(received, contents)
    assert figures.lost == 3 and set(figures.lost_uids) == {"1.3", "1.4", "1.5"}
    assert figures.waiting == 1 and figures.delivered == 1


def test_parked_without_a_reason_does_not_count_as_parked():
    received = [("1.1", 0), ("1.2", 0), ("1.3", 0), ("1.5", 0)]
    figures = _reckon(received, QueueContents(parked={"1.4": [("", "")]}))
    assert figures.parked == 0 and figures.parked_without_reason == 1 and figures.lost == 1


def test_every_send_beyond_the_first_is_a_duplicate_stored_or_still_queued():
    received = [("1.1", 0), ("1.1", 0), ("1.1", 0xB000), ("1.2", 0), ("1.3", 0), ("1.5", 0)]
    contents = QueueContents(
        parked={"1.4": [("r", "c"), ("r", "c")], "1.5": [("r", "no-response")]},
        waiting=Counter({"1.2": 1}),
    )
    figures = _reckon(received, contents)
    # 1.1 stored 3 times (+2), 1.2 queued again (+1), 1.4 parked twice (+1), 1.5 parked
    # though delivered (+1)
    assert figures.duplicates == 5
    assert figures.delivered == 4 and figures.parked == 1 and figures.lost == 0


def test_a_deliverable_instance_parked_is_unplanned():
    received = [("1.1", 0), ("1.3", 0), ("1.5", 0)]
    contents = QueueContents(parked={"1.2": [("ENOSPC", "internal")], "1.4": [("r", "c")]})
    figures = _reckon(received, contents)
    assert figures.parked == 2 and figures.parked_unplanned == 1 and figures.lost == 0


def test_the_workload_plans_refusals_and_answers_by_them():
    workload = Workload(50)
    assert len(list(workload.instances())) == 50
    assert Counter(workload.plans.values()) == Counter(plan_of(i) for i in range(50))
    status = workload.status_for()
    [once] = sorted(workload.uids(Plan.REFUSED_ONCE))[:1]
    [never] = sorted(workload.uids(Plan.REFUSED_FOR_GOOD))[:1]
    assert (status(once, 1), status(once, 2)) == (0xA700, 0)
    assert (status(never, 1), status(never, 5)) == (0xA900, 0xA900)


def test_failed_attempts_are_counted_by_class_from_the_sender_log():
    log = (
        "2026-01-01 WARNING sendqueue.services.sender.consumer: failed event=failed"
        " destination=pacs attempt=1 outcome=transient reason=internal error: OSError(28,"
        " 'No space left on device') reason_class=internal\n"
        "2026-01-01 INFO sendqueue.services.sender.consumer: sent event=sent destination=pacs\n"
        "2026-01-01 WARNING x: failed event=failed reason=DIMSE 0xA700 reason_class=dimse-a7xx\n"
        "2026-01-01 WARNING x: failed event=failed reason=x reason_class=internal\n"
    )
    counts = failed_attempts(log)
    assert counts == {"internal": 2, "dimse-a7xx": 1}
    figures = reckon("t", {}, [], QueueContents(), started=0.0, faults={}, failed_attempts=counts)
    assert figures.unplanned_attempts == 2
