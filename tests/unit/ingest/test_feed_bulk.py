"""A page's new instances are read in one POST /tools/bulk-content where Orthanc has it,
one GET each where it does not: the same jobs either way."""

from __future__ import annotations

import pytest

from sendqueue.shared.config import RouteConfig
from sendqueue.shared.errors import SourceUnavailable
from tests.unit.fakes import FakeOrthanc
from tests.unit.ingest.test_feed import MakeIngest

pytestmark = pytest.mark.timeout(10)

CT_TO_PACS = [RouteConfig(destinations=["pacs"], match={"Modality": "CT"})]
FROM_CT1 = [RouteConfig(destinations=["pacs"], from_aet="CT1")]


def _orthanc(n: int, *, bulk: bool = True) -> FakeOrthanc:
    orthanc = FakeOrthanc()
    orthanc.bulk_content = bulk
    for i in range(n):
        modality = "CT" if i % 2 == 0 else "MR"
        orthanc.store(f"o{i}", {"SOPInstanceUID": f"1.2.{i}", "Modality": modality})
        orthanc.metadata[f"o{i}"] = {"RemoteAET": "CT1" if i < 3 else "MR1"}
    return orthanc


def _instance_gets(orthanc: FakeOrthanc) -> int:
    return sum(1 for call in orthanc.calls if call.startswith("/instances/"))


async def test_a_page_of_new_instances_is_read_in_one_request_and_routed_as_before(
    make_ingest: MakeIngest,
) -> None:
    # Given an Orthanc with bulk-content, and a route on a tag of the instance
    orthanc = _orthanc(10)
    ingest = await make_ingest(orthanc, start_from="beginning", routes=CT_TO_PACS)

    # When the page is queued
    await ingest.run_until(lambda: ingest.cursor == 10)

    # Then one request read the ten instances, none was read alone
    assert orthanc.asked("/tools/bulk-content") == 1
    assert _instance_gets(orthanc) == 0
    # And the jobs are the CT ones, in the changes' order, with their UIDs
    assert ingest.queued() == [(f"o{i}", "pacs") for i in range(0, 10, 2)]
    assert [job.sop_instance_uid for job in ingest.jobs()] == [f"1.2.{i}" for i in range(0, 10, 2)]


async def test_a_route_on_the_sender_reads_its_metadata_from_the_same_request(
    make_ingest: MakeIngest,
) -> None:
    orthanc = _orthanc(6)
    ingest = await make_ingest(orthanc, start_from="beginning", routes=FROM_CT1)

    await ingest.run_until(lambda: ingest.cursor == 6)

    assert ingest.queued() == [("o0", "pacs"), ("o1", "pacs"), ("o2", "pacs")]
    assert _instance_gets(orthanc) == 0


async def test_an_instance_missing_from_the_answer_is_read_alone(
    make_ingest: MakeIngest,
) -> None:
    # Given an instance the bulk answer leaves out (deleted meanwhile, or an entry Orthanc
    # could not describe): only a GET tells which
    orthanc = _orthanc(4)
    real = orthanc.post_json

    async def without_o1(path: str, body: dict[str, list[str]]) -> list[dict[str, object]]:
        return [entry for entry in await real(path, body) if entry["ID"] != "o1"]

    orthanc.post_json = without_o1  # type: ignore[method-assign]
    ingest = await make_ingest(orthanc, start_from="beginning")

    await ingest.run_until(lambda: ingest.cursor == 4)

    # Then it was read by its own GET and queued like the others
    assert orthanc.asked("/instances/o1") == 1 and _instance_gets(orthanc) == 1
    assert ingest.queued() == [(f"o{i}", "pacs") for i in range(4)]


async def test_an_instance_gone_from_orthanc_is_not_queued(make_ingest: MakeIngest) -> None:
    orthanc = _orthanc(3)
    del orthanc.tags["o1"]  # deleted after its change: both the bulk read and a GET miss it
    ingest = await make_ingest(orthanc, start_from="beginning")

    await ingest.run_until(lambda: ingest.cursor == 3)

    assert ingest.queued() == [("o0", "pacs"), ("o2", "pacs")]


async def test_an_orthanc_without_bulk_content_is_read_one_get_each_and_asked_once(
    make_ingest: MakeIngest,
) -> None:
    # Given an Orthanc older than 1.9.4 (POST /tools/bulk-content answers 404)
    orthanc = _orthanc(6, bulk=False)
    ingest = await make_ingest(orthanc, start_from="beginning", batch_size=3)

    # When two pages are queued
    await ingest.run_until(lambda: ingest.cursor == 6)

    # Then every instance was read alone, and the route was tried once only
    assert ingest.queued() == [(f"o{i}", "pacs") for i in range(6)]
    assert orthanc.asked("/tools/bulk-content") == 1
    assert _instance_gets(orthanc) == 6


async def test_a_failing_bulk_read_fails_the_round_and_the_cursor_stays(
    make_ingest: MakeIngest,
) -> None:
    # Given an Orthanc failing the bulk read (a 503: it is busy or restarting)
    orthanc = _orthanc(4)
    orthanc.errors["/tools/bulk-content"] = SourceUnavailable("HTTP 503 on POST")
    ingest = await make_ingest(orthanc, start_from="beginning")

    # When a round runs
    await ingest.run_until(lambda: ingest.errors("orthanc") >= 1)

    # Then nothing is queued and the cursor did not move
    assert ingest.queued() == [] and ingest.cursor == 0
    # And once Orthanc answers, the page is queued whole, still in one request
    del orthanc.errors["/tools/bulk-content"]
    await ingest.run_until(lambda: ingest.cursor == 4)
    assert ingest.queued() == [(f"o{i}", "pacs") for i in range(4)]
    assert _instance_gets(orthanc) == 0
