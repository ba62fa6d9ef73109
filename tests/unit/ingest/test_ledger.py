"""No whole-study resends: a study that grows is queued again only for what is new or
changed, per destination; the ledger survives restarts and stays bounded."""

from __future__ import annotations

from sendqueue.services.ingest.ledger import QueuedLedger
from sendqueue.shared.config import RouteConfig
from tests.unit.fakes import FakeOrthanc

STUDY_ROUTES = [
    RouteConfig(destinations=["pacs", "archive"], level="study"),
]


def _store(orthanc: FakeOrthanc, *ids: str) -> None:
    for orthanc_id in ids:
        orthanc.store(orthanc_id, {"SOPInstanceUID": f"1.2.{orthanc_id}"}, data=orthanc_id.encode())


async def test_a_study_that_grows_queues_only_its_new_and_changed_instances(make_ingest):
    orthanc = FakeOrthanc()
    ingest = await make_ingest(orthanc, start_from="beginning", routes=STUDY_ROUTES)
    # Given a study of two, stable and queued for both destinations
    _store(orthanc, "a", "b")
    orthanc.add_change("StableStudy", "study-1")
    await ingest.run_until(lambda: len(ingest.jobs()) == 4)

    # When it grows by one and is stable again
    _store(orthanc, "c")
    orthanc.add_change("StableStudy", "study-1")
    await ingest.run_until(lambda: len(ingest.jobs()) == 6)
    # Then only the new one was queued, for each destination
    assert sorted(ingest.queued()[4:]) == [("c", "archive"), ("c", "pacs")]

    # When an instance is stored again with other content (Orthanc overwrote it)
    orthanc.files["a"] = b"a, corrected"
    orthanc.add_change("StableStudy", "study-1")
    await ingest.run_until(lambda: len(ingest.jobs()) == 8)
    assert sorted(ingest.queued()[6:]) == [("a", "archive"), ("a", "pacs")]
    skipped = ingest.registry.get_sample_value(
        "sendqueue_jobs_skipped_total", {"destination": "pacs"}
    )
    assert skipped == 2 + 2  # a and b on the 2nd round; b and c on the 3rd
    await ingest.close()

    # And a restarted ingest that re-reads the same changes queues nothing again
    again = await make_ingest(orthanc, start_from="beginning", routes=STUDY_ROUTES, saved_cursor=0)
    orthanc.add_change("StableStudy", "study-1")
    await again.run_until(lambda: again.cursor == orthanc.last)
    assert again.jobs() == []


async def test_instance_routes_are_not_held_back(make_ingest):
    # A NewInstance is Orthanc's news of a file: it is queued, as before.
    orthanc = FakeOrthanc()
    ingest = await make_ingest(orthanc, start_from="beginning")
    _store(orthanc, "a")
    orthanc.add_change("NewInstance", "a")
    await ingest.run_until(lambda: len(ingest.jobs()) == 2)


def test_the_ledger_forgets_by_age_and_by_count(tmp_path):
    now = [1000.0]
    ledger = QueuedLedger(tmp_path / "q.sqlite3", max_age=100, max_entries=2, clock=lambda: now[0])
    ledger.record([("pacs", "1", "m1"), ("pacs", "2", "m2")])
    assert ledger.already_queued("pacs", "1", "m1")
    assert not ledger.already_queued("pacs", "1", "other-content")
    assert not ledger.already_queued("archive", "1", "m1")
    now[0] += 1
    ledger.record([("pacs", "3", "m3")])
    ledger.prune()
    assert ledger.count() == 2 and not ledger.already_queued("pacs", "1", "m1")
    now[0] += 101
    assert not ledger.already_queued("pacs", "3", "m3")  # too old to trust, even unpruned
    ledger.prune()
    assert ledger.count() == 0
    ledger.close()
